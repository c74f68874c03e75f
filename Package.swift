// swift-tools-version:6.1
import PackageDescription

/// Settings every Swift target of kmsd shares: Swift 6 language mode (the tools default) plus the upcoming
/// features STYLE.md asks for.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

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
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
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
        .target(
            name: "PKCS11",
            dependencies: ["CPKCS11"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "KMSCore",
            dependencies: [
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The YAML reader for kmsd's own files: the configuration and HSM profiles.
        .target(
            name: "KMSYAML",
            dependencies: [.product(name: "Yams", package: "Yams")],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "KMSProviderPKCS11",
            dependencies: [
                "KMSCore", "PKCS11", "KMSYAML",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "KMSProviderVault",
            dependencies: [
                "KMSCore",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(name: "KMSAPI", swiftSettings: swiftSettings),
        // The hash-chained audit log, checkpoint signing and offline verification.
        .target(
            name: "KMSAudit",
            dependencies: [
                "KMSCore",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: swiftSettings
        ),
        // Rotation planner and scheduler, usage counters and the embedded state store (SQLite through GRDB).
        .target(
            name: "KMSRotation",
            dependencies: [
                "KMSCore",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The operations under every front end: policy, limits, provider calls, audit records; no wire protocol.
        .target(
            name: "KMSService",
            dependencies: [
                "KMSCore", "KMSAPI", "KMSRotation", "KMSAudit",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "KMSServer",
            dependencies: [
                "KMSCore", "KMSAPI", "KMSRotation", "KMSAudit", "KMSService", "CTLSOptions",
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "KMSDaemon",
            dependencies: [
                "KMSCore", "KMSAPI", "KMSServer", "KMSService", "KMSProviderPKCS11", "KMSProviderVault", "KMSRotation", "KMSAudit", "KMSYAML",
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // Development only: the dev PKI and `kmsd dev-init`'s files. The daemon's request path never imports it; the kmsd
        // executable links it for dev-init, tests and benchmarks for their fixtures.
        .target(
            name: "KMSDev",
            dependencies: [
                "KMSAudit",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "kmsd",
            dependencies: [
                "KMSDaemon", "KMSCore", "KMSDev",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "KMSClient",
            dependencies: [
                "KMSAPI",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "kmsctl",
            dependencies: [
                "KMSClient", "KMSAPI", "KMSAudit", "KMSCore", "KMSDaemon",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        // examples/storage-node: how a storage node uses KMSClient (built and run by the tests).
        .executableTarget(
            name: "storage-node-example",
            dependencies: [
                "KMSClient", "KMSAPI",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "examples/storage-node",
            exclude: ["README.md"],
            swiftSettings: swiftSettings
        ),
        // The transit-compatible development server (tests and development only; production uses a real Vault).
        .target(
            name: "VaultDev",
            dependencies: [
                "KMSCore",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTLS", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "vault-dev",
            dependencies: [
                "VaultDev",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "KMSTestSupport",
            dependencies: [
                "KMSCore", "PKCS11", "KMSService", "KMSRotation", "KMSAudit",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "kms-probe",
            dependencies: [
                "KMSCore", "PKCS11", "KMSProviderPKCS11",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "kms-bench",
            dependencies: [
                "KMSCore", "PKCS11", "KMSProviderPKCS11", "KMSTestSupport", "KMSRotation", "KMSDaemon", "KMSAudit", "KMSDev",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),
        // libFuzzer targets (ci/fuzz builds them with -sanitize=fuzzer); normal builds replay the committed corpus.
        .target(name: "FuzzSupport", swiftSettings: swiftSettings),
        .executableTarget(name: "fuzz-envelope", dependencies: ["KMSCore", "FuzzSupport"], swiftSettings: swiftSettings),
        .executableTarget(name: "fuzz-pkcs11-uri", dependencies: ["PKCS11", "FuzzSupport"], swiftSettings: swiftSettings),
        .executableTarget(name: "fuzz-api-request", dependencies: ["KMSAPI", "KMSCore", "FuzzSupport"], swiftSettings: swiftSettings),
        .executableTarget(name: "fuzz-config", dependencies: ["KMSDaemon", "FuzzSupport"], swiftSettings: swiftSettings),
        // The service layer over an in-memory provider: no HSM, no HTTP.
        .testTarget(
            name: "KMSServiceTests",
            dependencies: ["KMSService", "KMSTestSupport", "KMSCore", "KMSRotation", "KMSAudit", "KMSAPI"],
            swiftSettings: swiftSettings
        ),
        // The HTTP routes through Hummingbird's test client over the in-memory provider: no HSM, no TLS, in parallel.
        .testTarget(
            name: "KMSServerTests",
            dependencies: [
                "KMSServer", "KMSService", "KMSTestSupport", "KMSCore", "KMSRotation", "KMSAudit", "KMSAPI",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        // KMSClient (retries, the DEK cache) against the real listener (mutual TLS) over the in-memory provider.
        .testTarget(
            name: "KMSClientTests",
            dependencies: [
                "KMSClient", "KMSServer", "KMSService", "KMSTestSupport", "KMSCore", "KMSAPI", "KMSDev",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PKCS11Tests",
            dependencies: ["PKCS11", "CPKCS11", "KMSTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "KMSCoreTests",
            dependencies: [
                "KMSCore",
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            resources: [.copy("Vectors")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "KMSProviderPKCS11Tests",
            dependencies: ["KMSProviderPKCS11", "KMSCore", "PKCS11", "CPKCS11", "KMSTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "KMSDaemonTests",
            dependencies: [
                "KMSDaemon", "KMSDev", "KMSServer", "KMSService", "KMSAPI", "KMSCore", "KMSTestSupport", "KMSProviderPKCS11", "KMSClient", "KMSRotation", "KMSAudit",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "X509", package: "swift-certificates"),
                .product(name: "SwiftASN1", package: "swift-asn1"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "KMSAuditTests",
            dependencies: ["KMSAudit", "KMSCore", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "KMSRotationTests",
            dependencies: ["KMSRotation", "KMSCore", "KMSTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "KMSProviderVaultTests",
            dependencies: [
                "KMSProviderVault", "KMSProviderPKCS11", "KMSCore", "KMSTestSupport", "VaultDev",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)
