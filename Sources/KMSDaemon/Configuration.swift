import Foundation
public import KMSCore
public import KMSState
public import KMSRotation
public import KMSService
public import KMSTransit
public import KMSKMIP

/// kmsd's validated configuration. Made only by `Configuration.load` / `parse`, which read the YAML file, apply
/// `KMSD_*` environment overrides, and check everything in one step, listing every problem with its key path.
///
/// File keys (see docs/configuration.md): `mode`, `listen.{api,allow_public_bind}`, `tls.{cert,key,client_ca,crl,
/// min_version,client_auth}`, `providers.<name>.{type,…}`, `keys.<name>.{provider,allow,rotation}`,
/// `admin.{identities,token_hashes}`, `limits.{max_connections,max_body_bytes,request_timeout,rate_per_second,burst}`,
/// `log_level`, `debug`, `data_dir`.
public struct Configuration: Sendable {
    public enum Mode: String, Sendable { case development, production }

    public struct Listen: Sendable {
        public var host: String
        public var port: Int
        public var allowPublicBind: Bool
        /// The Prometheus listener (`listen.metrics`, plain HTTP); nil when not configured.
        public var metrics: (host: String, port: Int)?
        /// `listen.allow_public_metrics`: the metrics listener may bind a non-loopback address in production.
        public var allowPublicMetrics: Bool
        /// The Vault transit listener (`listen.transit`, HTTPS); nil when not configured.
        public var transit: (host: String, port: Int)?
        /// The KMIP listener (`listen.kmip`, mutual TLS; 127.0.0.1:5696 when the kmip section is given without it).
        public var kmip: (host: String, port: Int)?
    }

    /// `audit`: the hash-chained audit log (see docs/audit.md).
    public struct Audit: Sendable {
        public enum Signing: Sendable {
            /// A PEM P-256 private key file (0600).
            case file(String)
            /// A P-256 key pair on the token of a PKCS#11 provider, found (or created) by label.
            case hsm(provider: String, label: String)
        }
        public struct Syslog: Sendable {
            public var host: String
            public var port: Int
            public var tls: Bool
            public var caCertificate: String?
        }
        public var file: String
        public var maxFileBytes: Int
        public var checkpointEvery: Int
        public var checkpointInterval: Duration
        public var failClosed: Bool
        public var signing: Signing?
        public var syslog: Syslog?
        /// Records waiting for the writer, at most; beyond it key operations get 503 `audit_unavailable`.
        public var maxQueue: Int
        /// Rotated audit files to keep (nil: keep all).
        public var keepFiles: Int?
        /// Failed TLS handshakes are summarized per source address over this interval: one record each.
        public var handshakeSummaryInterval: Duration
    }

    public struct TLS: Sendable {
        /// ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 only: forward secrecy and AEAD, no CBC.
        public static let defaultCiphers = "ECDHE+AESGCM:ECDHE+CHACHA20"
        public enum ClientAuth: String, Sendable { case required, optional }
        public var certificate: String
        public var key: String
        public var clientCA: String
        public var crl: String?
        /// `tls.crl: none`: the operator chose to run without a CRL (production shows it as ⚠ instead of ❌).
        public var crlDisabled = false
        /// `tls.identity`: every typed name of the certificate (`names`, default), or its one SPIFFE ID (`spiffe`).
        public var identity: ClientIdentity.Mode = .names
        /// How often the CRL file is read again on its own (`tls.crl_refresh`, default 5 min), besides SIGHUP.
        public var crlRefresh: Duration = .seconds(300)
        /// How long past its `nextUpdate` a CRL is still trusted (`tls.crl_grace`, default 1 h); after that, requests
        /// from certificates of its CA get 401 `revocation_unavailable`.
        public var crlGrace: Duration = .seconds(3600)
        /// "1.2" or "1.3" (older versions are refused by the parser).
        public var minimumVersion: String
        public var clientAuth: ClientAuth
        /// TLS 1.2 cipher suites (OpenSSL syntax); TLS 1.3's are all AEAD and fixed.
        public var ciphers: String
    }

    /// Where a secret comes from. `inline` exists only so production mode can name it as a violation.
    public enum SecretSource: Sendable, CustomStringConvertible {
        case environment(String)
        case file(String)
        case inline(SecretBytes)

        public var description: String {
            switch self {
            case .environment(let name): "env \(name)"
            case .file(let path): "file \(path)"
            case .inline: "inline <redacted>"
            }
        }
    }

    public enum Provider: Sendable {
        case pkcs11(PKCS11Settings)
        case vault(VaultSettings)

        public var kind: String {
            switch self {
            case .pkcs11: "pkcs11"
            case .vault: "vault-transit"
            }
        }
    }

    public struct PKCS11Settings: Sendable {
        public var module: String
        public var token: String
        public var pin: SecretSource
        public var profile: String
        public var profilesDirectory: String
        public var sessions: Int
        public var callTimeout: Duration
        public var checkoutWait: Duration
    }

    public struct VaultSettings: Sendable {
        public enum Auth: Sendable {
            case token(SecretSource)
            case tokenFile(String)
            case appRole(roleID: String, secretID: SecretSource)
        }
        public var address: String
        public var mount: String
        public var namespace: String?
        public var caCertificate: String?
        public var auth: Auth
        public var requestTimeout: Duration
    }

    public struct Key: Sendable {
        public var name: KeyName
        public var provider: String
        /// Identity patterns allowed to use the key (`*` matches any run of characters).
        public var allow: [String]
        /// When the key rotates (period, notice, usage bound, max age) and how retirement is guarded.
        public var rotation: RotationPolicy
    }

    public struct Admin: Sendable {
        /// Typed identity patterns (`uri:`, `dns:`, `cn:`).
        public var identities: [String]
        /// Lower-case hex SHA-256 of each admin token.
        public var tokenHashes: [String]
        /// `admin.client_ca`: when set, admin identities count only on certificates issued by these CAs, and storage
        /// nodes only on certificates issued by `tls.client_ca`. Both bundles are trusted in the handshake.
        public var clientCA: String?
    }

    public struct Limits: Sendable {
        public var maxConnections: Int
        /// Open connections from one source address, at most.
        public var maxConnectionsPerSource: Int
        /// Connections without a completed, client-authenticated TLS handshake, at most: in all and per source address.
        public var maxUnauthenticated: Int
        public var maxUnauthenticatedPerSource: Int
        /// From accept to a completed TLS handshake.
        public var handshakeTimeout: Duration
        /// A keep-alive connection with no request in progress is closed after this long.
        public var idleTimeout: Duration
        /// A connection is closed after its request in progress once it is this old (reloads reach every connection).
        public var maxConnectionAge: Duration
        /// A whole request (headers and body) must arrive within this of its first byte (every HTTP listener).
        public var requestReadTimeout: Duration
        /// An answer the peer does not take within this closes its connection (every listener).
        public var writeTimeout: Duration
        /// Open connections to the metrics listener, at most.
        public var metricsMaxConnections: Int
        public var maxBodyBytes: Int
        public var requestTimeout: Duration
        public var ratePerSecond: Double
        public var burst: Int
    }

    public var mode: Mode
    public var listen: Listen
    public var tls: TLS?
    public var providers: [String: Provider]
    public var keys: [KeyName: Key]
    public var admin: Admin
    public var limits: Limits
    public var logLevel: String
    public var debug: Bool
    public var dataDirectory: String?
    /// `state`: where kmsd keeps its own state (docs/replicas.md).
    public var state: State = .sqlite(path: nil)
    /// nil: no audit log (refused in production).
    public var audit: Audit?
    /// `transit`: the Vault transit front end; nil when not configured.
    public var transit: TransitConfiguration?
    /// `kmip`: the KMIP front end; nil when not configured.
    public var kmip: KMIPConfiguration?
    /// `log_format: json` writes one JSON object per log line.
    public var logFormat: KMSDLogging.Format
    /// The file the configuration came from (for relative paths and messages).
    public var source: String
    /// Accepted but deprecated settings (old identity spellings), for the log at start and `check-config`.
    public var warnings: [String] = []
    /// `replica_id`: this kmsd among the replicas sharing a PostgreSQL state store (status, audit records and file
    /// name). Default: `<host name>:<API port>`.
    public var replicaID: String?

    /// This kmsd's id among replicas sharing a PostgreSQL store, for its heartbeat, audit records and audit file name;
    /// nil for SQLite (one process, nothing to tell apart).
    public var replica: String? {
        guard case .postgres = state else { return nil }
        return replicaID ?? "\(ProcessInfo.processInfo.hostName):\(listen.port)"
    }

    /// The audit file this kmsd writes: `audit.file`, or for a replica `audit.file` with `-<replica id>` before its
    /// extension (characters other than letters, digits, '.', '_' and '-' as '_'), so replicas sharing a directory
    /// never share a chain.
    public var auditPath: String? {
        guard let file = audit?.file else { return nil }
        guard let replica else { return file }
        let safe = String(replica.unicodeScalars.map { scalar -> Character in
            scalar.isASCII && (CharacterSet.alphanumerics.contains(scalar) || "._-".unicodeScalars.contains(scalar)) ? Character(scalar) : "_"
        })
        let url = URL(fileURLWithPath: file)
        let ext = url.pathExtension
        let base = url.deletingPathExtension().lastPathComponent
        return url.deletingLastPathComponent().appendingPathComponent(base + "-" + safe + (ext.isEmpty ? "" : "." + ext)).path
    }
}

extension Configuration {
    /// `state: {sqlite: {path}}` (the default, one process) or `state: {postgres: {…}}` (replicas sharing a database).
    public enum State: Sendable {
        /// nil: `<data_dir>/rotation.sqlite`.
        case sqlite(path: String?)
        case postgres(Postgres)
    }

    /// `state.postgres`: the store's settings, with the password still where the file says it is (read at start).
    public struct Postgres: Sendable {
        /// Everything but the password (`password` is nil here).
        public var store: PostgresStoreSettings
        public var password: SecretSource?

        /// A loopback host: the only place a plaintext connection to the database is accepted in production.
        public var isLoopback: Bool {
            if store.host == "localhost" || store.host == "::1" { return true }
            var address = in_addr()
            return inet_pton(AF_INET, store.host, &address) == 1 && UInt32(bigEndian: address.s_addr) >> 24 == 127
        }
    }
}

/// Every problem found in a configuration, each with its key path.
public struct ConfigurationError: Error, CustomStringConvertible, Sendable {
    public var problems: [String]
    public init(_ problems: [String]) { self.problems = problems }
    public var description: String {
        "the configuration has \(problems.count) problem(s):\n" + problems.map { "  - \($0)" }.joined(separator: "\n")
    }
}
