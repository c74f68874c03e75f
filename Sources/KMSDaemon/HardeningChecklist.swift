import Foundation
#if canImport(Glibc)
import Glibc
#endif
import KMSCore
import KMSState
import KMSTransit

/// The production hardening checklist: what `kmsd check-config` prints and what production mode enforces. In
/// production, kmsd refuses to start while any item fails and names every failing item.
public struct HardeningChecklist: Sendable {
    public struct Item: Sendable, Equatable {
        public let title: String
        public let passed: Bool
        public let detail: String
        /// Passes, but is a choice the operator made against the default (shown as ⚠).
        public var warning = false
    }

    public let items: [Item]
    public var violations: [Item] { items.filter { !$0.passed } }

    /// The entries of an OpenSSL cipher string that may add something other than ECDHE key exchange with an AEAD
    /// (AES-GCM or ChaCha20-Poly1305). Removals (`!X`, `-X`) and `@STRENGTH`-style directives add nothing.
    static func weakCipherEntries(_ ciphers: String) -> [String] {
        ciphers.split(whereSeparator: { ":, ".contains($0) }).map(String.init).filter { entry in
            if entry.hasPrefix("!") || entry.hasPrefix("-") || entry.hasPrefix("@") { return false }
            let upper = entry.uppercased().trimmingCharacters(in: CharacterSet(charactersIn: "+"))
            let ecdhe = upper.contains("ECDHE")
            let aead = upper.contains("GCM") || upper.contains("CHACHA20")
            let weak = ["CBC", "SHA1", "RC4", "DES", "NULL", "EXPORT", "MD5", "ANULL", "ALL", "DEFAULT", "COMPLEMENTOF"].contains { upper.contains($0) }
            return !(ecdhe && aead) || weak
        }
    }

    public init(_ configuration: Configuration) {
        var items: [Item] = []
        func check(_ title: String, _ passed: Bool, _ detail: String, warning: Bool = false) {
            items.append(Item(title: title, passed: passed, detail: detail, warning: warning))
        }

        for (name, provider) in configuration.providers.sorted(by: { $0.key < $1.key }) {
            switch provider {
            case .pkcs11(let settings):
                let soft = settings.module.lowercased().contains("softhsm")
                check("provider \(name) uses a hardware module", !soft,
                      soft ? "\(settings.module) is SoftHSM, a software token" : settings.module)
                check("provider \(name) PIN is not written in the file", !Self.isInline(settings.pin),
                      Self.isInline(settings.pin) ? "give the PIN as {env: NAME} or {file: PATH}" : settings.pin.description)
            case .vault(let settings):
                let tls = settings.address.hasPrefix("https://")
                check("provider \(name) reaches Vault over TLS", tls, settings.address)
                switch settings.auth {
                case .token(let source):
                    check("provider \(name) Vault token is not written in the file", !Self.isInline(source),
                          Self.isInline(source) ? "give the token as {env: NAME} or {file: PATH}" : source.description)
                case .appRole(_, let secret):
                    check("provider \(name) AppRole secret_id is not written in the file", !Self.isInline(secret),
                          Self.isInline(secret) ? "give the secret_id as {env: NAME} or {file: PATH}" : secret.description)
                case .tokenFile(let path):
                    check("provider \(name) token file is private", Self.isPrivate(path), "\(path) must not be readable by group or others")
                }
            }
        }
        if case .postgres(let postgres) = configuration.state {
            let address = postgres.store.description
            let tls = postgres.store.tls
            check("state store reached over TLS (or on loopback)", tls != nil || postgres.isLoopback,
                  tls != nil ? "\(address), server checked against \(tls?.caFile ?? "")"
                                      : postgres.isLoopback ? "\(address), plaintext on loopback"
                                                            : "\(address) in plaintext: set state.postgres.tls (at least its ca)")
            if let password = postgres.password {
                check("state store password is not written in the file", !Self.isInline(password),
                      Self.isInline(password) ? "give the password as {env: NAME} or {file: PATH}" : password.description)
            }
        }
        if let tls = configuration.tls {
            check("TLS listener", true, "\(configuration.listen.host):\(configuration.listen.port)")
            check("client certificates are required", tls.clientAuth == .required,
                  tls.clientAuth == .required ? "every connection presents a certificate from \(tls.clientCA)" : "tls.client_auth is optional")
            check("TLS 1.2 or newer", ["1.2", "1.3"].contains(tls.minimumVersion), "minimum \(tls.minimumVersion)")
            check("TLS private key is private", Self.isPrivate(tls.key), "\(tls.key) must not be readable by group or others")
            if let crl = tls.crl {
                check("client certificates are checked against a CRL", true, crl)
            } else {
                check("client certificates are checked against a CRL", tls.crlDisabled,
                      tls.crlDisabled ? "tls.crl: none — revoked certificates are not refused" : "set tls.crl (or tls.crl: none explicitly)",
                      warning: tls.crlDisabled)
            }
            let weak = Self.weakCipherEntries(tls.ciphers)
            check("TLS 1.2 ciphers are ECDHE with AEAD", tls.minimumVersion == "1.3" || weak.isEmpty,
                  weak.isEmpty || tls.minimumVersion == "1.3" ? tls.ciphers
                               : "tls.ciphers admits more than ECDHE with AES-GCM or ChaCha20-Poly1305: \(weak.joined(separator: ":"))")
        } else {
            check("TLS listener", false, "no tls section: the API would listen in plaintext")
        }
        let adminAuth = !configuration.admin.identities.isEmpty || !configuration.admin.tokenHashes.isEmpty
        check("admin API requires authentication", adminAuth,
              adminAuth ? "\(configuration.admin.identities.count) identity pattern(s), \(configuration.admin.tokenHashes.count) token hash(es)"
                        : "set admin.identities and/or admin.token_hashes")
        let wildcard = Self.isWildcard(configuration.listen.host)
        check("no wildcard bind (or allow_public_bind set)", !wildcard || configuration.listen.allowPublicBind,
              wildcard ? "listen.api binds \(configuration.listen.host); set listen.allow_public_bind: true if intended" : configuration.listen.host)
        if let transit = configuration.listen.transit {
            let wildcard = Self.isWildcard(transit.host)
            check("transit listener: no wildcard bind (or allow_public_bind set)", !wildcard || configuration.listen.allowPublicBind,
                  wildcard ? "listen.transit binds \(transit.host); set listen.allow_public_bind: true if intended" : "\(transit.host):\(transit.port)")
        }
        if let kmip = configuration.listen.kmip {
            let wildcard = Self.isWildcard(kmip.host)
            check("KMIP listener: no wildcard bind (or allow_public_bind set)", !wildcard || configuration.listen.allowPublicBind,
                  wildcard ? "listen.kmip binds \(kmip.host); set listen.allow_public_bind: true if intended" : "\(kmip.host):\(kmip.port)")
        }
        if let transit = configuration.transit {
            let tokens = transit.tokens.count
            check("transit clients authenticate with certificates", true,
                  tokens == 0 ? "no static tokens (certificates and auth/cert/login only)"
                              : "\(tokens) static token(s) in transit.tokens: bearer secrets that anyone holding them can use until they expire; prefer client certificates",
                  warning: tokens > 0)
        }
        if let metrics = configuration.listen.metrics {
            let loopback = metrics.host == "localhost" || metrics.host == "::1" || metrics.host.hasPrefix("127.")
            check("metrics listener on loopback (or allow_public_metrics set)", loopback || configuration.listen.allowPublicMetrics,
                  loopback ? "\(metrics.host):\(metrics.port)"
                           : "listen.metrics binds \(metrics.host) (plain HTTP, no authentication); set listen.allow_public_metrics: true if intended")
        }
        let debug = configuration.debug || ["trace", "debug"].contains(configuration.logLevel)
        check("no debug flags", !debug, debug ? "debug: \(configuration.debug), log_level: \(configuration.logLevel)" : "log_level \(configuration.logLevel)")
        let openKeys = configuration.keys.values.filter { $0.allow.isEmpty }.map(\.name.rawValue).sorted()
        check("every key names who may use it", openKeys.isEmpty,
              openKeys.isEmpty ? "\(configuration.keys.count) key(s)" : "no allow list: \(openKeys.joined(separator: ", "))")
        if let audit = configuration.audit {
            check("audit log configured", true, audit.file)
            check("audit fails closed", audit.failClosed,
                  audit.failClosed ? "key operations stop when the audit log cannot be written" : "audit.fail_closed is false")
            switch audit.signing {
            case .hsm(let provider, let label):
                check("audit checkpoints are signed", true, "key \(label) on provider \(provider)")
            case .file(let path):
                check("audit checkpoints are signed", true, "key file \(path)")
                check("audit signing key file is private", Self.isPrivate(path), "\(path) must not be readable by group or others")
            case nil:
                check("audit checkpoints are signed", false, "set audit.sign ({hsm: PROVIDER} or {file: PATH})")
            }
        } else {
            check("audit log configured", false, "set audit.file: key operations would leave no tamper-evident record")
        }
        self.items = items
    }

    /// A bind address that listens on every interface, however it is spelled: the unspecified IPv4 address in any
    /// form the resolver reads (`0.0.0.0`, `0`, `0.0`, `0x0`, `000.0.0.0`), the unspecified IPv6 address (`::`,
    /// `::0`, `0:0:0:0:0:0:0:0`, `[::]`, `::ffff:0.0.0.0`), `*` and the empty host.
    static func isWildcard(_ host: String) -> Bool {
        var text = host.trimmingCharacters(in: .whitespaces)
        if text.hasPrefix("[") && text.hasSuffix("]") { text = String(text.dropFirst().dropLast()) }
        if text.isEmpty || text == "*" { return true }
        var v4 = in_addr()
        // inet_aton reads the numeric forms getaddrinfo accepts (one to four parts, octal and hex).
        if inet_aton(text, &v4) != 0 { return v4.s_addr == 0 }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            let bytes = withUnsafeBytes(of: v6) { Array($0) }
            let mappedZero = bytes[0..<10].allSatisfy { $0 == 0 } && bytes[10] == 0xff && bytes[11] == 0xff && bytes[12...].allSatisfy { $0 == 0 }
            return bytes.allSatisfy { $0 == 0 } || mappedZero
        }
        return false
    }

    static func isInline(_ source: Configuration.SecretSource) -> Bool {
        if case .inline = source { return true }
        return false
    }

    static func isPrivate(_ path: String) -> Bool {
        guard let mode = (try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? Int else { return false }
        return mode & 0o077 == 0
    }

    /// ✅/❌ lines.
    public var table: String {
        items.map { "\($0.passed ? ($0.warning ? "⚠️" : "✅") : "❌") \($0.title) — \($0.detail)" }.joined(separator: "\n")
    }
}
