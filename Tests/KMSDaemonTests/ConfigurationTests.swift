import Foundation
@testable import KMSDaemon
import KMSDev
import KMSServer
import KMSService
import KMSRotation
import KMSState
import KMSAudit
import Testing
import X509
import SwiftASN1

@Suite("Configuration and production mode")
struct ConfigurationTests {
    /// A directory with the files a safe production configuration points at.
    static func files() throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("config-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let pki = try DevPKI()
        try Data(pki.caPEM.utf8).write(to: directory.appendingPathComponent("ca.pem"))
        try DevPKI.write(try pki.issue(.server(hosts: ["kms.internal"])), name: "server", to: directory)
        for name in ["module.so", "crl.pem"] {
            try Data().write(to: directory.appendingPathComponent(name))
        }
        try FileAuditSigner.createIfMissing(path: directory.appendingPathComponent("audit-key.pem").path)
        let pin = directory.appendingPathComponent("pin")
        try Data("1234".utf8).write(to: pin)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: pin.path)
        return directory
    }

    static let safe = """
        mode: production
        listen: { api: "10.0.0.5:8443" }
        tls: { cert: server.pem, key: server-key.pem, client_ca: ca.pem, crl: crl.pem, min_version: "1.3" }
        providers:
          hsm: { type: pkcs11, module: module.so, token: "pkcs11:token=kms", pin: { file: pin }, profile: thales-luna }
        keys:
          orders: { provider: hsm, allow: ["uri:spiffe://prod/storage/*"] }
        admin: { identities: ["cn:security-*"] }
        audit: { file: audit/audit.jsonl, sign: { file: audit-key.pem } }
        log_level: info
        """

    func parse(_ yaml: String, in directory: URL) throws -> Configuration {
        try Configuration.parse(yaml: yaml, source: directory.appendingPathComponent("kmsd.yaml").path)
    }

    @Test func aSafeProductionConfigurationPasses() throws {
        let directory = try Self.files()
        let configuration = try parse(Self.safe, in: directory)
        let checklist = HardeningChecklist(configuration)
        #expect(checklist.violations.isEmpty, "\(checklist.table)")
        try Daemon(configuration).checkMode()
    }

    @Test(arguments: [
        ("SoftHSM module", "module: module.so", "module: libsofthsm2.so", "hardware module"),
        ("plaintext listener", "tls: { cert: server.pem, key: server-key.pem, client_ca: ca.pem, crl: crl.pem, min_version: \"1.3\" }\n", "", "TLS listener"),
        ("optional client certificates", "min_version: \"1.3\" }", "min_version: \"1.3\", client_auth: optional }", "client certificates are required"),
        ("admin without authentication", "admin: { identities: [\"cn:security-*\"] }", "admin: {}", "admin API requires authentication"),
        ("inline PIN", "pin: { file: pin }", "pin: \"1234\"", "PIN is not written in the file"),
        ("wildcard bind", "api: \"10.0.0.5:8443\"", "api: \"0.0.0.0:8443\"", "wildcard bind"),
        ("debug flags", "log_level: info", "log_level: debug", "no debug flags"),
        ("no audit log", "audit: { file: audit/audit.jsonl, sign: { file: audit-key.pem } }\n", "", "audit log configured"),
        ("audit not failing closed", "sign: { file: audit-key.pem } }", "sign: { file: audit-key.pem }, fail_closed: false }", "audit fails closed"),
        ("unsigned audit checkpoints", "audit: { file: audit/audit.jsonl, sign: { file: audit-key.pem } }", "audit: { file: audit/audit.jsonl }", "audit checkpoints are signed"),
        ("weak TLS 1.2 ciphers", "min_version: \"1.3\" }", "min_version: \"1.2\", ciphers: \"ECDHE+AESGCM:AES256-SHA\" }", "ciphers are ECDHE with AEAD"),
        ("public metrics listener", "api: \"10.0.0.5:8443\"", "api: \"10.0.0.5:8443\", metrics: \"0.0.0.0:9464\"", "metrics listener on loopback"),
        ("plaintext state database", "log_level: info", "log_level: info\nstate: { postgres: { host: db.internal, database: kmsd, user: kmsd, password: { file: pin } } }",
         "state store reached over TLS"),
        ("plaintext state database behind a name that looks like loopback", "log_level: info",
         "log_level: info\nstate: { postgres: { host: 127.db.example, database: kmsd, user: kmsd, password: { file: pin } } }",
         "state store reached over TLS"),
        ("inline state database password", "log_level: info",
         "log_level: info\nstate: { postgres: { host: db.internal, database: kmsd, user: kmsd, password: hunter2, tls: { ca: ca.pem } } }",
         "state store password is not written in the file"),
    ])
    func productionRefusesEachUnsafeSetting(label: String, original: String, replacement: String, item: String) throws {
        let directory = try Self.files()
        if label == "SoftHSM module" { try Data().write(to: directory.appendingPathComponent("libsofthsm2.so")) }
        let yaml = Self.safe.replacingOccurrences(of: original, with: replacement)
        #expect(yaml != Self.safe)
        let configuration = try parse(yaml, in: directory)
        let violations = HardeningChecklist(configuration).violations
        #expect(violations.map(\.title).contains { $0.contains(item) }, "\(label): \(violations.map(\.title))")
        #expect(throws: ConfigurationError.self) { try Daemon(configuration).checkMode() }
        // Development mode starts with the same file (it only warns through check-config).
        var development = configuration
        development.mode = .development
        try Daemon(development).checkMode()
    }

    @Test func aPublicMetricsListenerPassesOnlyWhenAllowedExplicitly() throws {
        let directory = try Self.files()
        let yaml = Self.safe.replacingOccurrences(of: "api: \"10.0.0.5:8443\"", with: "api: \"10.0.0.5:8443\", metrics: \"10.0.0.5:9464\", allow_public_metrics: true")
        #expect(HardeningChecklist(try parse(yaml, in: directory)).violations.isEmpty)
        let loopback = Self.safe.replacingOccurrences(of: "api: \"10.0.0.5:8443\"", with: "api: \"10.0.0.5:8443\", metrics: \"127.0.0.1:9464\"")
        #expect(HardeningChecklist(try parse(loopback, in: directory)).violations.isEmpty)
    }

    /// Numbers too large for kmsd's types are configuration errors, never a trap (a SIGHUP with such a typo would
    /// otherwise kill a running kmsd).
    @Test(arguments: [
        "limits: { request_timeout: 1e300s }", "limits: { idle_timeout: 1e300w }", "limits: { handshake_timeout: 99999999999999999d }",
        "limits: { max_connection_age: 1e20s }", "limits: { max_connections: 99999999999999 }", "limits: { burst: 10000000000000 }",
        "audit: { file: a.jsonl, checkpoint_interval: 1e300s }", "audit: { file: a.jsonl, max_queue: 1000000000000 }",
    ])
    func overflowingNumbersAreErrorsNotTraps(_ line: String) throws {
        let directory = try Self.files()
        let yaml = Self.safe.replacingOccurrences(of: "log_level: info", with: "log_level: info\n" + line)
            .replacingOccurrences(of: "audit: { file: audit/audit.jsonl, sign: { file: audit-key.pem } }\n", with: line.hasPrefix("audit") ? "" : "audit: { file: audit/audit.jsonl, sign: { file: audit-key.pem } }\n")
        #expect(throws: ConfigurationError.self) { try parse(yaml, in: directory) }
    }

    /// The key that seals KMIP's objects is kmsd's alone, in every mode: a node allowed on it (or transit serving
    /// it) could open a copied database's objects with the API's unwrap.
    @Test func theKMIPWrappingKeyMayBeUsedByNoNodeAndNoTransitMapping() throws {
        let directory = try Self.files()
        let kek = Self.safe.replacingOccurrences(of: "keys:\n", with: "keys:\n  kmip-kek: { provider: hsm, allow: [] }\n")
        let kmip = "\nkmip: { allow: [\"uri:spiffe://prod/storage/*\"], wrapping_key: kmip-kek }"
        _ = try parse(kek + kmip, in: directory)
        for mode in ["production", "development"] {
            let shared = Self.safe.replacingOccurrences(of: "mode: production", with: "mode: \(mode)")
                + "\nkmip: { allow: [\"uri:spiffe://prod/storage/*\"], wrapping_key: orders }"
            do {
                _ = try parse(shared, in: directory)
                Issue.record("\(mode): a wrapping key that nodes may use was accepted")
            } catch let error as ConfigurationError {
                #expect(error.description.contains("keys.orders.allow") && error.description.contains("kmip.wrapping_key"), "\(error)")
            }
        }
        let mapped = kek + kmip + "\ntransit: { keys: { secrets: kmip-kek } }"
        do {
            _ = try parse(mapped, in: directory)
            Issue.record("a wrapping key served by transit was accepted")
        } catch let error as ConfigurationError {
            #expect(error.description.contains("transit.keys.secrets"), "\(error)")
        }
    }

    /// Every spelling of the unspecified address binds every interface, so each is a wildcard bind.
    @Test func everySpellingOfTheUnspecifiedAddressIsAWildcard() throws {
        for host in ["0.0.0.0", "0", "0.0", "0x0", "000.0.0.0", "::", "::0", "0:0:0:0:0:0:0:0", "[::]", "::ffff:0.0.0.0", "*", "", " 0 "] {
            #expect(HardeningChecklist.isWildcard(host), "\(host) was not taken for a wildcard")
        }
        for host in ["127.0.0.1", "10.0.0.5", "::1", "localhost", "kms.example", "0.0.0.1", "fe80::1"] {
            #expect(!HardeningChecklist.isWildcard(host), "\(host) was taken for a wildcard")
        }
        let directory = try Self.files()
        let yaml = Self.safe.replacingOccurrences(of: "api: \"10.0.0.5:8443\"", with: "api: \"[::0]:8443\"")
        #expect(HardeningChecklist(try parse(yaml, in: directory)).violations.map(\.title).contains { $0.contains("wildcard bind") })
    }

    @Test func connectionLimitsHaveSafeDefaultsAndAreChecked() throws {
        let directory = try Self.files()
        let limits = try parse(Self.safe, in: directory).limits
        #expect(limits.maxConnections == 1024 && limits.maxConnectionsPerSource == 64)
        #expect(limits.maxUnauthenticated == 256 && limits.maxUnauthenticatedPerSource == 16)
        #expect(limits.handshakeTimeout == .seconds(10) && limits.idleTimeout == .seconds(60) && limits.maxConnectionAge == .seconds(3600))
        #expect(limits.requestReadTimeout == .seconds(10) && limits.writeTimeout == .seconds(10))
        let tooMany = Self.safe + "\nlimits: { max_connections: 100, max_unauthenticated: 200 }"
        #expect(throws: ConfigurationError.self) { try parse(tooMany, in: directory) }
        // Rotated audit files are all kept unless audit.keep_files says otherwise.
        #expect(try parse(Self.safe, in: directory).audit?.keepFiles == nil)
        let keep = Self.safe.replacingOccurrences(of: "sign: { file: audit-key.pem } }", with: "sign: { file: audit-key.pem }, keep_files: 3 }")
        #expect(try parse(keep, in: directory).audit?.keepFiles == 3)
        let none = Self.safe.replacingOccurrences(of: "sign: { file: audit-key.pem } }", with: "sign: { file: audit-key.pem }, keep_files: 0 }")
        #expect(throws: ConfigurationError.self) { try parse(none, in: directory) }
    }

    @Test func secretFilesReadableByOthersAndTLSKeysReadableByOthersAreRefused() throws {
        let directory = try Self.files()
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: directory.appendingPathComponent("pin").path)
        #expect(throws: ConfigurationError.self) { try parse(Self.safe, in: directory) }
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: directory.appendingPathComponent("pin").path)
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: directory.appendingPathComponent("server-key.pem").path)
        let violations = HardeningChecklist(try parse(Self.safe, in: directory)).violations
        #expect(violations.map(\.title) == ["TLS private key is private"])
    }

    @Test func everyProblemIsListedWithItsKeyPath() throws {
        let directory = try Self.files()
        let yaml = """
            mode: prod
            listen: { api: "nowhere" }
            tls: { cert: missing.pem, key: server-key.pem, client_ca: ca.pem, min_version: "1.0" }
            providers:
              hsm: { type: pkcs11, module: module.so, token: "token=kms", pin: { env: PIN }, profile: x, sesions: 4 }
              v: { type: vault-transit, address: "vault:8200" }
            keys:
              "bad name!": { provider: hsm }
              orders: { provider: nowhere, allow: [] }
            admin: { token_hashes: ["abc"] }
            colour: blue
            """
        do {
            _ = try parse(yaml, in: directory)
            Issue.record("accepted")
        } catch let error as ConfigurationError {
            let text = error.problems.joined(separator: "\n")
            for expected in ["mode:", "listen.api:", "tls.cert:", "tls.min_version:", "providers.hsm.token:",
                             "providers.hsm.sesions: unknown key", "providers.v.address:", "providers.v.auth:",
                             "keys.bad name!:", "keys.orders.provider:", "admin.token_hashes:", "config.colour: unknown key"] {
                #expect(text.contains(expected), "missing \(expected) in:\n\(text)")
            }
            #expect(!text.contains("1234"))
        }
    }

    @Test func theStateStoreIsSQLiteByDefaultOrTheConfiguredPostgreSQLWithEveryKeyChecked() throws {
        let directory = try Self.files()
        guard case .sqlite(nil) = try parse(Self.safe, in: directory).state else { Issue.record("the default is not SQLite"); return }
        let sqlite = try parse(Self.safe + "\nstate: { sqlite: { path: state/kmsd.sqlite } }", in: directory)
        guard case .sqlite(let path?) = sqlite.state else { Issue.record("state.sqlite.path ignored"); return }
        #expect(path == directory.appendingPathComponent("state/kmsd.sqlite").path)
        #expect(Daemon(sqlite).stateStorePath == path)
        let postgres = try parse(Self.safe + """

            state:
              postgres: { host: db.internal, port: 6432, database: kmsd, user: kmsd_app, password: { file: pin },
                          tls: { ca: ca.pem, cert: server.pem, key: server-key.pem }, connect_timeout: 2s, timeout: 3s, max_connections: 4 }
            """, in: directory)
        guard case .postgres(let section) = postgres.state else { Issue.record("state.postgres ignored"); return }
        let settings = section.store
        #expect(settings.host == "db.internal" && settings.port == 6432 && settings.database == "kmsd" && settings.user == "kmsd_app")
        #expect(settings.tls?.caFile == directory.appendingPathComponent("ca.pem").path && settings.tls?.keyFile != nil)
        #expect(settings.connectTimeout == .seconds(2) && settings.operationTimeout == .seconds(3) && settings.maxConnections == 4)
        #expect(HardeningChecklist(postgres).violations.isEmpty, "\(HardeningChecklist(postgres).table)")
        let bad = Self.safe + """

            state:
              sqlite: {}
              postgres: { host: "db internal", port: 70000, user: kmsd, password: { file: nowhere },
                          tls: { ca: missing.pem, cert: server.pem }, timeout: soon, colour: blue }
            """
        do {
            _ = try parse(bad, in: directory)
            Issue.record("accepted")
        } catch let error as ConfigurationError {
            let text = error.problems.joined(separator: "\n")
            #expect(text.contains("state: give exactly one of sqlite or postgres"), "\(text)")
        }
        do {
            _ = try parse(bad.replacingOccurrences(of: "  sqlite: {}\n", with: ""), in: directory)
            Issue.record("accepted")
        } catch let error as ConfigurationError {
            let text = error.problems.joined(separator: "\n")
            for expected in ["state.postgres.database:", "state.postgres.host: must not contain spaces", "state.postgres.port:",
                             "state.postgres.password:", "state.postgres.tls: give cert and key together", "state.postgres.tls.ca:",
                             "state.postgres.timeout:", "state.postgres.colour: unknown key"] {
                #expect(text.contains(expected), "missing \(expected) in:\n\(text)")
            }
        }
    }

    @Test func rotationSettingsAreParsedAndCheckedWithTheirKeyPaths() throws {
        let directory = try Self.files()
        let good = Self.safe.replacingOccurrences(
            of: #"orders: { provider: hsm, allow: ["uri:spiffe://prod/storage/*"] }"#,
            with: #"orders: { provider: hsm, allow: ["uri:spiffe://prod/storage/*"], rotation: { period: 90d, notice: 1w, max_wraps: 1000000, max_age: 120d, retire_quiet_period: 14d } }"#)
        let policy = try #require(try parse(good, in: directory).keys.values.first?.rotation)
        #expect(policy.period == 90 * 86400 && policy.notice == 7 * 86400 && policy.maxWraps == 1_000_000)
        #expect(policy.maxAge == 120 * 86400 && policy.retireQuietPeriod == 14 * 86400)
        let defaults = try #require(try parse(Self.safe, in: directory).keys.values.first?.rotation)
        #expect(defaults.period == nil && defaults.maxWraps == RotationPolicy.defaultMaxWraps && defaults.retireQuietPeriod == 7 * 86400)

        let bad = Self.safe.replacingOccurrences(
            of: #"orders: { provider: hsm, allow: ["uri:spiffe://prod/storage/*"] }"#,
            with: #"orders: { provider: hsm, allow: ["x"], rotation: { period: soon, notice: 100d, max_wraps: 8589934592, max_age: 1h, every: 2 } }"#)
        do {
            _ = try parse(bad.replacingOccurrences(of: "period: soon", with: "period: 90d"), in: directory)
            Issue.record("accepted")
        } catch let error as ConfigurationError {
            let text = error.problems.joined(separator: "\n")
            for expected in ["keys.orders.rotation.every: unknown key", "keys.orders.rotation.notice: must be shorter than period",
                             "keys.orders.rotation.max_wraps:", "keys.orders.rotation.max_age: must be longer than period"] {
                #expect(text.contains(expected), "missing \(expected) in:\n\(text)")
            }
        }
        #expect(throws: ConfigurationError.self) { try parse(bad, in: directory) }
    }

    /// Found by ci/fuzz: both used to stop the process inside Yams.
    @Test func yamlThatCrashedTheParserIsAClearError() throws {
        let directory = try Self.files()
        do {
            _ = try parse("{{}}", in: directory)
            Issue.record("accepted")
        } catch let error as ConfigurationError {
            #expect(error.description.contains("mapping key must be plain text"))
        }
        #expect(throws: ConfigurationError.self) { try parse("4:4:44:4:4:44:44:4:4:4:4:4", in: directory) }
        do {
            _ = try parse("mode: development\nmode: production\n", in: directory)
            Issue.record("accepted a repeated key")
        } catch let error as ConfigurationError {
            #expect(error.description.contains("duplicated key"))
        }
        // A syntax error on the line of an inline secret names the position, never the line's text.
        do {
            _ = try parse("mode: development\nproviders:\n  hsm: { pin: \"s3cret-pin-value }\n", in: directory)
            Issue.record("accepted an unterminated string")
        } catch let error as ConfigurationError {
            #expect(!error.description.contains("s3cret"), "\(error)")
            #expect(error.description.contains("line 3"), "\(error)")
        }
    }

    @Test func aReplicaNamesItsAuditFileAndRecordsWhileASingleKMSDDoesNot() throws {
        let directory = try Self.files()
        let postgres = "\nstate: { postgres: { host: 127.0.0.1, database: kmsd, user: kmsd, password: { file: pin } } }"
        let single = try parse(Self.safe, in: directory)
        #expect(single.replica == nil && single.auditPath == single.audit?.file, "SQLite: one kmsd, the file as configured")
        let named = try parse(Self.safe + postgres + "\nreplica_id: kms-1", in: directory)
        let file = try #require(named.audit?.file)
        #expect(named.replica == "kms-1")
        #expect(named.auditPath == URL(fileURLWithPath: file).deletingPathExtension().path + "-kms-1.jsonl", "\(named.auditPath ?? "-")")
        let unnamed = try parse(Self.safe + postgres, in: directory)
        #expect(unnamed.replica == "\(ProcessInfo.processInfo.hostName):\(unnamed.listen.port)")
        #expect(unnamed.auditPath?.hasSuffix("_\(unnamed.listen.port).jsonl") == true, "the ':' is not in the file name")
        for bad in ["\"\"", "\"kms 1\"", "\"kms/1\"", String(repeating: "k", count: 65)] {
            #expect(throws: ConfigurationError.self, "replica_id: \(bad)") { try parse(Self.safe + postgres + "\nreplica_id: \(bad)", in: directory) }
        }
    }

    @Test func environmentOverridesApply() throws {
        let directory = try Self.files()
        let yaml = Self.safe.replacingOccurrences(of: "mode: production\n", with: "")
        let configuration = try Configuration.parse(
            yaml: yaml, source: directory.appendingPathComponent("kmsd.yaml").path,
            environment: ["KMSD_PRODUCTION_MODE": "1", "KMSD_LISTEN_API": "127.0.0.1:9000"])
        #expect(configuration.mode == .production)
        #expect(configuration.listen.port == 9000)
    }

    @Test func theInMemoryProviderIsNotAConfigurationChoice() throws {
        let directory = try Self.files()
        let yaml = Self.safe.replacingOccurrences(
            of: "type: pkcs11, module: module.so, token: \"pkcs11:token=kms\", pin: { file: pin }, profile: thales-luna", with: "type: in-memory")
        for mode in ["production", "development"] {
            do {
                _ = try parse(yaml.replacingOccurrences(of: "mode: production", with: "mode: \(mode)"), in: directory)
                Issue.record("in-memory accepted in \(mode) mode")
            } catch let error as ConfigurationError {
                #expect(error.description.contains("providers.hsm.type") && error.description.contains("only in kmsd's tests"))
            }
        }
    }

    @Test func productionRequiresACRLUnlessNoneIsWrittenExplicitly() throws {
        let directory = try Self.files()
        let without = try parse(Self.safe.replacingOccurrences(of: "crl: crl.pem, ", with: ""), in: directory)
        let missing = HardeningChecklist(without).violations.map(\.title)
        #expect(missing.contains("client certificates are checked against a CRL"))
        let none = try parse(Self.safe.replacingOccurrences(of: "crl: crl.pem, ", with: "crl: none, "), in: directory)
        let checklist = HardeningChecklist(none)
        #expect(checklist.violations.isEmpty, "\(checklist.table)")
        #expect(checklist.table.contains("⚠️ client certificates are checked against a CRL — tls.crl: none"))
        #expect(none.tls?.crl == nil)
        let tuned = try parse(Self.safe.replacingOccurrences(of: "crl: crl.pem, ", with: "crl: crl.pem, crl_refresh: 1m, crl_grace: 2h, "), in: directory)
        #expect(tuned.tls?.crlRefresh == .seconds(60))
        #expect(tuned.tls?.crlGrace == .seconds(7200))
        #expect(throws: ConfigurationError.self) {
            try parse(Self.safe.replacingOccurrences(of: "crl: crl.pem, ", with: "crl: crl.pem, crl_grace: forever, "), in: directory)
        }
    }

    @Test func theModeIsOneWayTheEnvironmentAndAReloadMayRaiseItNeverLowerIt() throws {
        let directory = try Self.files()
        let source = directory.appendingPathComponent("kmsd.yaml").path
        for environment in [["KMSD_MODE": "development"], ["KMSD_MODE": "anything"]] {
            do {
                _ = try Configuration.parse(yaml: Self.safe, source: source, environment: environment)
                Issue.record("the environment lowered production mode: \(environment)")
            } catch let error as ConfigurationError {
                #expect(error.description.contains("never lower"))
            }
        }
        #expect(try Configuration.parse(yaml: Self.safe, source: source, environment: ["KMSD_MODE": "production"]).mode == .production)

        let running = Daemon(try parse(Self.safe, in: directory))
        try running.checkReplacement(by: try parse(Self.safe, in: directory))
        let lowered = try parse(Self.safe.replacingOccurrences(of: "mode: production", with: "mode: development"), in: directory)
        do {
            try running.checkReplacement(by: lowered)
            Issue.record("a reload lowered production mode")
        } catch let error as ConfigurationError {
            #expect(error.description.contains("cannot lower"))
        }
        let weakened = try parse(Self.safe.replacingOccurrences(of: "pin: { file: pin }", with: "pin: \"1234\""), in: directory)
        #expect(throws: ConfigurationError.self) { try running.checkReplacement(by: weakened) }
        // A development kmsd may be reloaded into either mode (the production one must pass the checklist).
        let development = Daemon(lowered)
        try development.checkReplacement(by: lowered)
        try development.checkReplacement(by: try parse(Self.safe, in: directory))
    }
}

@Suite("Revocation lists")
struct RevocationListTests {
    @Test func aCRLFromTheDevPKIListsTheRevokedCertificateAndVerifiesOnlyWithItsCA() throws {
        let pki = try DevPKI()
        let revoked = try pki.issue(.client(uri: "spiffe://x/revoked", commonName: "revoked"))
        let kept = try pki.issue(.client(uri: "spiffe://x/kept", commonName: "kept"))
        let crl = try pki.revocationList(revoking: [revoked.certificatePEM])
        let ca = try Certificate(pemEncoded: pki.caPEM)
        let list = try RevocationList(data: Data(crl.utf8), issuers: [ca])
        #expect(list.isRevoked(try Certificate(pemEncoded: revoked.certificatePEM)))
        #expect(!list.isRevoked(try Certificate(pemEncoded: kept.certificatePEM)))
        #expect(list.nextUpdate != nil)
        #expect(list.thisUpdate < Date())
        // Matched by issuer and serial: the same serial from another CA is not revoked by this CA's list.
        let revokedCertificate = try Certificate(pemEncoded: revoked.certificatePEM)
        #expect(list.isRevoked(serial: Array(revokedCertificate.serialNumber.bytes), issuer: ca.subject))
        #expect(!list.isRevoked(serial: Array(revokedCertificate.serialNumber.bytes), issuer: try Certificate(pemEncoded: try DevPKI(name: "other").caPEM).subject))
        #expect(!list.isStale(at: Date(), grace: .seconds(0)))
        #expect(list.isStale(at: Date().addingTimeInterval(86400 + 3601), grace: .seconds(3600)))
        #expect(!list.isStale(at: Date().addingTimeInterval(86400 + 3500), grace: .seconds(3600)))
        let other = try Certificate(pemEncoded: try DevPKI(name: "other").caPEM)
        #expect(throws: RevocationList.ParseError.self) { try RevocationList(data: Data(crl.utf8), issuers: [other]) }
        #expect(throws: (any Error).self) { try RevocationList(data: Data("garbage".utf8), issuers: [ca]) }
    }
}
