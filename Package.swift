// swift-tools-version:6.1
import PackageDescription

/// Settings every Swift target of kmsd shares: Swift 6 language mode (the tools default) plus the upcoming
/// features STYLE.md asks for.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

/// The products kmsd uses from its package dependencies, by short name.
enum External {
    static let argumentParser: Target.Dependency = .product(name: "ArgumentParser", package: "swift-argument-parser")
    static let asyncHTTPClient: Target.Dependency = .product(name: "AsyncHTTPClient", package: "async-http-client")
    static let coreMetrics: Target.Dependency = .product(name: "CoreMetrics", package: "swift-metrics")
    static let crypto: Target.Dependency = .product(name: "Crypto", package: "swift-crypto")
    static let grdb: Target.Dependency = .product(name: "GRDB", package: "GRDB.swift")
    static let histogram: Target.Dependency = .product(name: "Histogram", package: "hdrhistogram-swift")
    static let hummingbird: Target.Dependency = .product(name: "Hummingbird", package: "hummingbird")
    static let hummingbirdCore: Target.Dependency = .product(name: "HummingbirdCore", package: "hummingbird")
    static let hummingbirdTesting: Target.Dependency = .product(name: "HummingbirdTesting", package: "hummingbird")
    static let hummingbirdTLS: Target.Dependency = .product(name: "HummingbirdTLS", package: "hummingbird")
    static let logging: Target.Dependency = .product(name: "Logging", package: "swift-log")
    static let nioCore: Target.Dependency = .product(name: "NIOCore", package: "swift-nio")
    static let nioFoundationCompat: Target.Dependency = .product(name: "NIOFoundationCompat", package: "swift-nio")
    static let nioHTTP1: Target.Dependency = .product(name: "NIOHTTP1", package: "swift-nio")
    static let nioHTTPTypes: Target.Dependency = .product(name: "NIOHTTPTypes", package: "swift-nio-extras")
    static let nioEmbedded: Target.Dependency = .product(name: "NIOEmbedded", package: "swift-nio")
    static let nioPosix: Target.Dependency = .product(name: "NIOPosix", package: "swift-nio")
    static let nioSSL: Target.Dependency = .product(name: "NIOSSL", package: "swift-nio-ssl")
    static let nioTLS: Target.Dependency = .product(name: "NIOTLS", package: "swift-nio")
    static let postgres: Target.Dependency = .product(name: "PostgresNIO", package: "postgres-nio")
    static let prometheus: Target.Dependency = .product(name: "Prometheus", package: "swift-prometheus")
    static let serviceLifecycle: Target.Dependency = .product(name: "ServiceLifecycle", package: "swift-service-lifecycle")
    static let swiftASN1: Target.Dependency = .product(name: "SwiftASN1", package: "swift-asn1")
    static let unixSignals: Target.Dependency = .product(name: "UnixSignals", package: "swift-service-lifecycle")
    static let x509: Target.Dependency = .product(name: "X509", package: "swift-certificates")
    static let yams: Target.Dependency = .product(name: "Yams", package: "Yams")
}

/// A library target with the shared settings.
func module(_ name: String, _ dependencies: [Target.Dependency]) -> Target {
    .target(name: name, dependencies: dependencies, swiftSettings: swiftSettings)
}

/// An executable target with the shared settings.
func executable(_ name: String, _ dependencies: [Target.Dependency]) -> Target {
    .executableTarget(name: name, dependencies: dependencies, swiftSettings: swiftSettings)
}

/// A test target with the shared settings.
func tests(_ name: String, _ dependencies: [Target.Dependency], resources: [Resource]? = nil) -> Target {
    .testTarget(name: name, dependencies: dependencies, resources: resources, swiftSettings: swiftSettings)
}

let package = Package(
    name: "kmsd",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "KMSCore", targets: ["KMSCore"]),
        .library(name: "PKCS11", targets: ["PKCS11"]),
        .library(name: "KMSProviderPKCS11", targets: ["KMSProviderPKCS11"]),
        .library(name: "KMSProviderVault", targets: ["KMSProviderVault"]),
        .library(name: "KMSAPI", targets: ["KMSAPI"]),
        .executable(name: "kmsd", targets: ["kmsd"]),
        .executable(name: "kmsctl", targets: ["kmsctl"]),
        .library(name: "KMSClient", targets: ["KMSClient"]),
        .executable(name: "vault-dev", targets: ["vault-dev"]),
        .executable(name: "kms-bench", targets: ["kms-bench"]),
        .executable(name: "kms-probe", targets: ["kms-probe"]),
        // Loaded by tests with dlopen in front of SoftHSM; never linked into kmsd.
        .library(name: "PKCS11FaultShim", type: .dynamic, targets: ["PKCS11FaultShim"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        // Up to the next minor only: ReloadableTLS reads NIOSSLContext's private `sslContext` property to turn TLS
        // session tickets and the session cache off (swift-nio-ssl has no setting for it); a new minor may store it
        // differently. kmsd refuses to start rather than serve with resumption if it does (TLSContextBox.makeContext).
        .package(url: "https://github.com/apple/swift-nio-ssl.git", .upToNextMinor(from: "2.37.6")),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        // HTTP parts as Hummingbird's pipeline carries them (NIOHTTPTypes), for a handler between its codec and its
        // connection state handler (RecycleAtMaxAge).
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift.git", from: "0.2.0"),
    ],
    targets: [
        // The PKCS#11 header (Debian's libp11-kit-dev) and a few helpers for what Swift cannot import.
        .target(name: "CPKCS11"),
        // One BoringSSL call swift-nio-ssl does not offer (no TLS session tickets).
        .target(name: "CTLSOptions"),
        // A pass-through PKCS#11 module that injects faults on command (tests only).
        .target(name: "PKCS11FaultShim", linkerSettings: [.linkedLibrary("dl"), .linkedLibrary("pthread")]),
        module("PKCS11", ["CPKCS11"]),
        module("KMSCore", [External.crypto, External.logging]),
        // The YAML reader for kmsd's own files: the configuration and HSM profiles.
        module("KMSYAML", [External.yams]),
        module("KMSProviderPKCS11", [
            "KMSCore", "PKCS11", "KMSYAML", External.crypto, External.nioCore, External.nioPosix, External.logging
        ]),
        module("KMSProviderVault", [
            "KMSCore", External.asyncHTTPClient, External.nioCore, External.nioHTTP1, External.nioFoundationCompat,
            External.nioSSL, External.logging
        ]),
        .target(name: "KMSAPI", swiftSettings: swiftSettings),
        // The hash-chained audit log, checkpoint signing and offline verification.
        module("KMSAudit", [
            "KMSCore", External.crypto, External.logging, External.nioCore, External.nioPosix, External.nioSSL
        ]),
        // kmsd's own state (usage, creation times, journal, leases): the store protocol, SQLite through GRDB for one process
        // (the default), PostgreSQL through postgres-nio for replicas.
        module("KMSState", ["KMSCore", External.grdb, External.postgres, External.nioCore, External.nioSSL, External.logging]),
        // Rotation planner and scheduler, usage counters.
        module("KMSRotation", ["KMSCore", "KMSState", External.logging, External.serviceLifecycle]),
        // The operations under every front end: policy, limits, provider calls, audit records; no wire protocol.
        module("KMSService", [
            "KMSCore", "KMSAPI", "KMSRotation", "KMSState", "KMSAudit", External.x509, External.swiftASN1, External.crypto,
            External.logging
        ]),
        module("KMSServer", [
            "KMSCore", "KMSAPI", "KMSRotation", "KMSState", "KMSAudit", "KMSService", "CTLSOptions", External.nioHTTPTypes, External.coreMetrics,
            External.nioTLS, External.prometheus, External.hummingbird, External.hummingbirdCore, External.hummingbirdTLS,
            External.nioCore, External.nioSSL, External.x509, External.swiftASN1, External.nioFoundationCompat,
            External.crypto, External.logging
        ]),
        // The Vault transit front end: Vault's transit wire protocol over the service layer (docs/transit-frontend.md).
        module("KMSTransit", [
            "KMSCore", "KMSAPI", "KMSService", "KMSAudit", "KMSRotation", "VaultWire", External.hummingbird, External.nioCore
        ]),
        // KMIP's TTLV encoding and the specification's tag and enumeration tables: no NIO, no HSM, no keys.
        .target(name: "KMIPTTLV", swiftSettings: swiftSettings),
        // The KMIP front end: request and response messages, the operations over the service layer, the listener.
        module("KMSKMIP", [
            "KMIPTTLV", "KMSCore", "KMSService", "KMSServer", "KMSAudit", External.crypto, External.nioCore, External.nioPosix,
            External.nioSSL, External.logging, External.serviceLifecycle
        ]),
        module("KMSDaemon", [
            "KMSCore", "KMSKMIP", "KMSAPI", "KMSServer", "KMSTransit", "VaultWire", "KMSService", "KMSProviderPKCS11", "KMSProviderVault", "KMSRotation",
            "KMSState", "KMSAudit", "KMSYAML", External.x509, External.swiftASN1, External.crypto, External.logging,
            External.serviceLifecycle, External.unixSignals
        ]),
        // Development only: the dev PKI and `kmsd dev-init`'s files. The daemon's request path never imports it; the kmsd
        // executable links it for dev-init, tests and benchmarks for their fixtures.
        module("KMSDev", ["KMSAudit", "KMSCore", External.crypto, External.x509, External.swiftASN1]),
        executable("kmsd", ["KMSDaemon", "KMSCore", "KMSDev", External.argumentParser, External.logging]),
        module("KMSClient", [
            "KMSAPI", External.asyncHTTPClient, External.nioCore, External.nioHTTP1, External.nioFoundationCompat,
            External.nioSSL
        ]),
        executable("kmsctl", [
            "KMSClient", "KMSAPI", "KMSAudit", "KMSCore", "KMSDaemon", "KMSState", External.logging, External.argumentParser
        ]),
        // examples/storage-node: how a storage node uses KMSClient (built and run by the tests).
        .executableTarget(
            name: "storage-node-example", dependencies: ["KMSClient", "KMSAPI", External.crypto, External.argumentParser],
            path: "examples/storage-node", exclude: ["README.md"], swiftSettings: swiftSettings
        ),
        // Vault's wire shapes (errors, loose parameters, ciphertext text, LIST), shared by vault-dev and the transit front end.
        module("VaultWire", ["KMSCore", "KMSAPI", External.nioCore]),
        // The transit-compatible development server (tests and development only; production uses a real Vault).
        module("VaultDev", [
            "KMSCore", "VaultWire", External.hummingbird, External.hummingbirdTLS, External.hummingbirdCore, External.nioSSL,
            External.nioCore, External.crypto, External.logging
        ]),
        executable("vault-dev", ["VaultDev", External.argumentParser]),
        module("KMSTestSupport", ["KMSCore", "PKCS11", "KMSService", "KMSRotation", "KMSState", "KMSAudit", External.crypto]),
        // A lean load generator (mutual TLS, keep-alive, closed or open loop) on raw NIO, for measuring kmsd alone.
        executable("kms-load", [External.nioCore, External.nioPosix, External.nioSSL, External.nioTLS, External.histogram]),
        executable("kms-probe", ["KMSCore", "PKCS11", "KMSProviderPKCS11", External.argumentParser]),
        executable("kms-bench", [
            "KMSCore", "KMIPTTLV", "PKCS11", "KMSProviderPKCS11", "KMSTestSupport", "KMSRotation", "KMSState", "KMSDaemon", "KMSAudit",
            "KMSDev", External.asyncHTTPClient, External.nioCore, External.nioHTTP1, External.nioSSL,
            External.argumentParser
        ]),
        // libFuzzer targets (ci/fuzz builds them with -sanitize=fuzzer); normal builds replay the committed corpus.
        .target(name: "FuzzSupport", swiftSettings: swiftSettings),
        .executableTarget(name: "fuzz-envelope", dependencies: ["KMSCore", "FuzzSupport"], swiftSettings: swiftSettings),
        .executableTarget(name: "fuzz-pkcs11-uri", dependencies: ["PKCS11", "FuzzSupport"], swiftSettings: swiftSettings),
        .executableTarget(name: "fuzz-api-request", dependencies: ["KMSAPI", "KMSCore", "FuzzSupport"], swiftSettings: swiftSettings),
        .executableTarget(name: "fuzz-kmip-ttlv", dependencies: ["KMIPTTLV", "FuzzSupport"], swiftSettings: swiftSettings),
        .executableTarget(name: "fuzz-config", dependencies: ["KMSDaemon", "FuzzSupport"], swiftSettings: swiftSettings),
        // The service layer over an in-memory provider: no HSM, no HTTP.
        tests("KMSServiceTests", ["KMSService", "KMSTestSupport", "KMSCore", "KMSRotation", "KMSAudit", "KMSAPI", "KMSState"]),
        // The HTTP routes through Hummingbird's test client over the in-memory provider: no HSM, no TLS, in parallel.
        tests("KMSServerTests", [
            "KMSServer", "KMSService", "KMSTestSupport", "KMSCore", "KMSRotation", "KMSAudit", "KMSAPI",
            External.hummingbird, External.hummingbirdTesting, External.nioCore, External.nioEmbedded, External.nioHTTPTypes
        ]),
        // KMSClient (retries, the DEK cache) against the real listener (mutual TLS) over the in-memory provider.
        tests("KMSClientTests", [
            "KMSClient", "KMSServer", "KMSService", "KMSTestSupport", "KMSCore", "KMSAPI", "KMSDev",
            External.hummingbird, External.hummingbirdCore, External.nioSSL, External.nioCore, External.nioPosix
        ]),
        tests("PKCS11Tests", ["PKCS11", "CPKCS11", "KMSTestSupport"]),
        tests("KMSCoreTests", ["KMSCore", External.crypto], resources: [.copy("Vectors")]),
        tests("KMSProviderPKCS11Tests", ["KMSProviderPKCS11", "KMSCore", "PKCS11", "CPKCS11", "KMSTestSupport"]),
        tests("KMSDaemonTests", [
            "KMSDaemon", "KMSDev", "KMSServer", "KMSService", "KMSAPI", "KMSCore", "KMSTestSupport",
            "KMSProviderPKCS11", "KMSClient", "KMSRotation", "KMSState", "KMSAudit", "KMIPTTLV", External.hummingbird,
            External.asyncHTTPClient, External.nioSSL, External.nioCore, External.nioPosix, External.nioHTTP1, External.serviceLifecycle,
            External.x509, External.swiftASN1, External.crypto
        ]),
        tests("KMIPTTLVTests", ["KMIPTTLV"]),
        // The KMIP front end over the service and an in-memory provider (message bytes in and out; the listener and
        // PyKMIP are ci/kmip-conformance's).
        tests("KMSKMIPTests", ["KMSKMIP", "KMIPTTLV", "KMSCore", "KMSService", "KMSTestSupport", "KMSState", "KMSRotation", External.grdb]),
        tests("KMSAuditTests", ["KMSAudit", "KMSCore", "KMSTestSupport", External.crypto]),
        tests("KMSRotationTests", ["KMSRotation", "KMSState", "KMSCore", "KMSTestSupport"]),
        // The state store contract, run against SQLite and a throwaway PostgreSQL cluster.
        tests("KMSStateTests", ["KMSState", "KMSCore", "KMSTestSupport", External.grdb]),
        tests("KMSProviderVaultTests", [
            "KMSProviderVault", "KMSProviderPKCS11", "KMSCore", "KMSTestSupport", "VaultDev", "VaultWire", "KMSDaemon", "KMSDev",
            "KMSService", External.serviceLifecycle, External.logging, External.crypto,
            External.hummingbird
        ]),
    ]
)
