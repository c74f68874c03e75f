public import Foundation
import KMSKMIP
import KMSTransit
import KMSRotation
import KMSCore
import KMSState
import KMSYAML
import KMSService

extension Configuration {
    /// Reads `path`, applies `KMSD_*` overrides from `environment`, validates. Throws `ConfigurationError` listing
    /// every problem.
    public static func load(path: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Configuration {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigurationError(["\(path): cannot be read"])
        }
        return try parse(yaml: String(decoding: data, as: UTF8.self), source: path, environment: environment)
    }

    /// Environment overrides: `KMSD_PRODUCTION_MODE=1` (mode: production), `KMSD_MODE`, `KMSD_LISTEN_API`,
    /// `KMSD_LOG_LEVEL`, `KMSD_DATA_DIR`.
    public static func parse(yaml: String, source: String, environment: [String: String] = [:]) throws -> Configuration {
        let document: Any?
        do {
            document = try PlainYAML.load(yaml)
        } catch {
            throw ConfigurationError(["\(source): not valid YAML: \(error)"])
        }
        guard var root = document as? [String: Any] else {
            throw ConfigurationError(["\(source): expected a mapping at the top level"])
        }
        // The environment may raise the mode, never lower it: a stray KMSD_MODE=development in a unit file must not
        // switch off the production checks that the file asks for.
        var environmentMode = environment["KMSD_MODE"]
        if let flag = environment["KMSD_PRODUCTION_MODE"], ["1", "true", "yes"].contains(flag.lowercased()) { environmentMode = "production" }
        if let mode = environmentMode {
            if (root["mode"] as? String) == Configuration.Mode.production.rawValue, mode != Configuration.Mode.production.rawValue {
                throw ConfigurationError(["mode: the file says production and KMSD_MODE says '\(mode)'; the environment may raise the mode, never lower it"])
            }
            root["mode"] = mode
        }
        if let api = environment["KMSD_LISTEN_API"] {
            var listen = root["listen"] as? [String: Any] ?? [:]
            listen["api"] = api
            root["listen"] = listen
        }
        if let level = environment["KMSD_LOG_LEVEL"] { root["log_level"] = level }
        if let directory = environment["KMSD_DATA_DIR"] { root["data_dir"] = directory }
        var reader = Reader(base: URL(fileURLWithPath: source).deletingLastPathComponent().path)
        guard var configuration = reader.configuration(root, source: source), reader.problems.isEmpty else {
            throw ConfigurationError(reader.problems)
        }
        configuration.warnings = reader.warnings
        return configuration
    }
}

/// Walks the raw YAML, collecting problems instead of stopping at the first.
struct Reader {
    let base: String
    var problems: [String] = []
    /// Accepted, but worth an operator's attention (old spellings): logged at start, printed by check-config.
    var warnings: [String] = []

    mutating func problem(_ path: String, _ message: String) { problems.append("\(path): \(message)") }

    /// A list of identity patterns, each typed (`uri:`, `dns:`, `cn:`). Old spellings (`CN=…`, a bare URI) are read
    /// with a deprecation warning, since their `*` now stays within one segment.
    mutating func identityPatterns(_ map: [String: Any]?, _ key: String, _ path: String) -> [String] {
        strings(map, key, path).compactMap { identityPattern($0, "\(path).\(key)") }
    }

    /// One identity pattern, typed; nil (with the problem noted) when it names no kind.
    mutating func identityPattern(_ text: String, _ path: String) -> String? {
        guard let (pattern, renamed) = ClientIdentity.typedPattern(text) else {
            problem(path, "'\(text.prefix(80))' names no kind: write uri:…, dns:… or cn:… (e.g. uri:spiffe://prod/storage/*)")
            return nil
        }
        if renamed {
            warnings.append("\(path): '\(text)' is an old spelling, read as '\(pattern)'; write it so (note: * matches within one segment, ** across)")
        }
        return pattern
    }

    /// Relative paths are relative to the configuration file's directory.
    func resolve(_ path: String) -> String {
        path.hasPrefix("/") ? path : URL(fileURLWithPath: base).appendingPathComponent(path).standardizedFileURL.path
    }

    mutating func map(_ value: Any?, _ path: String, known: Set<String>) -> [String: Any]? {
        guard let value else { return nil }
        guard let map = value as? [String: Any] else {
            problem(path, "expected a mapping")
            return nil
        }
        for key in map.keys.sorted() where !known.contains(key) {
            problem("\(path).\(key)", "unknown key (known: \(known.sorted().joined(separator: ", ")))")
        }
        return map
    }

    mutating func string(_ map: [String: Any]?, _ key: String, _ path: String, required: Bool = false) -> String? {
        guard let value = map?[key], !(value is NSNull) else {
            if required { problem("\(path).\(key)", "is required") }
            return nil
        }
        if let text = value as? String, !text.isEmpty { return text }
        if let number = value as? Int { return String(number) }
        problem("\(path).\(key)", "expected text")
        return nil
    }

    mutating func int(_ map: [String: Any]?, _ key: String, _ path: String, default fallback: Int, range: ClosedRange<Int>) -> Int {
        guard let value = map?[key], !(value is NSNull) else { return fallback }
        guard let number = value as? Int, range.contains(number) else {
            problem("\(path).\(key)", "expected an integer in \(range.lowerBound)...\(range.upperBound)")
            return fallback
        }
        return number
    }

    /// An integer in `range`, or nil when the key is absent (a bad value is a problem).
    mutating func optionalInt(_ map: [String: Any]?, _ key: String, _ path: String, range: ClosedRange<Int>) -> Int? {
        guard let value = map?[key], !(value is NSNull) else { return nil }
        return int(map, key, path, default: range.lowerBound, range: range)
    }

    mutating func bool(_ map: [String: Any]?, _ key: String, _ path: String, default fallback: Bool) -> Bool {
        guard let value = map?[key], !(value is NSNull) else { return fallback }
        guard let flag = value as? Bool else {
            problem("\(path).\(key)", "expected true or false")
            return fallback
        }
        return flag
    }

    mutating func strings(_ map: [String: Any]?, _ key: String, _ path: String) -> [String] {
        guard let value = map?[key], !(value is NSNull) else { return [] }
        guard let list = value as? [Any], list.allSatisfy({ $0 is String }) else {
            problem("\(path).\(key)", "expected a list of text")
            return []
        }
        return list.compactMap { $0 as? String }
    }

    /// `500ms`, `1s`, `5m`, `1h`, `90d`, `2w`, or a number of seconds; nil when absent (a bad value is a problem).
    mutating func seconds(_ map: [String: Any]?, _ key: String, _ path: String) -> TimeInterval? {
        guard let value = map?[key], !(value is NSNull) else { return nil }
        // At most about 100 years: a typo such as 1e300s is refused here rather than overflowing a Duration later.
        let longest: TimeInterval = 100 * 366 * 86400
        if let seconds = value as? Int, seconds > 0, TimeInterval(seconds) <= longest { return TimeInterval(seconds) }
        if let text = value as? String, let parsed = DurationText.parse(text), parsed.isFinite, parsed <= longest { return parsed }
        problem("\(path).\(key)", "expected a duration such as 500ms, 1s, 5m, 1h, 90d, 2w (at most 100 years)")
        return nil
    }

    mutating func duration(_ map: [String: Any]?, _ key: String, _ path: String, default fallback: Duration) -> Duration {
        optionalDuration(map, key, path) ?? fallback
    }

    mutating func optionalDuration(_ map: [String: Any]?, _ key: String, _ path: String) -> Duration? {
        seconds(map, key, path).map { .milliseconds(Int64(($0 * 1000).rounded())) }
    }

    /// `keys.<name>.rotation`: `{period, notice, max_wraps, max_age, retire_quiet_period}`; all optional.
    mutating func rotationPolicy(_ value: Any?, _ path: String) -> RotationPolicy {
        var policy = RotationPolicy()
        guard let map = map(value, path, known: ["period", "notice", "max_wraps", "max_age", "retire_quiet_period"]) else { return policy }
        policy.period = seconds(map, "period", path)
        policy.notice = seconds(map, "notice", path)
        policy.maxAge = seconds(map, "max_age", path)
        if let quiet = seconds(map, "retire_quiet_period", path) { policy.retireQuietPeriod = quiet }
        if let value = map["max_wraps"], !(value is NSNull) {
            if let wraps = value as? Int, wraps > 0 { policy.maxWraps = UInt64(wraps) }
            else { problem("\(path).max_wraps", "expected a positive whole number") }
        }
        for problem in policy.problems { self.problem(path + "." + problem.prefix { $0 != ":" }, String(problem.drop { $0 != ":" }.dropFirst(2))) }
        return policy
    }

    /// A secret: `{env: NAME}`, `{file: PATH}` (not readable by group or others), or inline text (refused in
    /// production).
    mutating func secret(_ value: Any?, _ path: String) -> Configuration.SecretSource? {
        guard let value, !(value is NSNull) else {
            problem(path, "is required ({env: NAME} or {file: PATH})")
            return nil
        }
        if let text = value as? String { return .inline(SecretBytes(utf8: text)) }
        if let number = value as? Int { return .inline(SecretBytes(utf8: String(number))) }
        guard let map = value as? [String: Any], map.count == 1 else {
            problem(path, "expected {env: NAME} or {file: PATH}")
            return nil
        }
        if let name = map["env"] as? String, !name.isEmpty { return .environment(name) }
        if let file = map["file"] as? String, !file.isEmpty {
            let resolved = resolve(file)
            privateFile(resolved, path)
            return .file(resolved)
        }
        problem(path, "expected {env: NAME} or {file: PATH}")
        return nil
    }

    /// A file only its owner may read (a secret, a private key): a problem when it is missing or readable by others.
    mutating func privateFile(_ file: String, _ path: String) {
        if let attributes = try? FileManager.default.attributesOfItem(atPath: file),
           let mode = attributes[.posixPermissions] as? Int, mode & 0o077 != 0
        {
            problem(path, "the file \(file) is readable by group or others (mode \(String(mode, radix: 8))); chmod 600 it")
        } else if !FileManager.default.fileExists(atPath: file) {
            problem(path, "the file \(file) does not exist")
        }
    }

    mutating func configuration(_ root: [String: Any], source: String) -> Configuration? {
        let top = map(root, "config", known: [
            "mode", "listen", "tls", "providers", "keys", "admin", "limits", "log_level", "log_format", "debug", "data_dir", "audit",
            "transit", "kmip", "state", "replica_id",
        ]) ?? [:]
        let modeText = string(top, "mode", "config") ?? "development"
        let mode = Configuration.Mode(rawValue: modeText)
        if mode == nil { problem("mode", "expected development or production, not '\(modeText)'") }

        let listenMap = map(top["listen"], "listen", known: ["api", "metrics", "transit", "kmip", "allow_public_bind", "allow_public_metrics"])
        let api = string(listenMap, "api", "listen") ?? "127.0.0.1:8443"
        var host = "127.0.0.1"
        var port = 8443
        if let colon = api.lastIndex(of: ":"), let parsed = Int(api[api.index(after: colon)...]), (0...65535).contains(parsed) {
            host = String(api[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
            port = parsed
        } else {
            problem("listen.api", "expected host:port, not '\(api)'")
        }
        var metrics: (host: String, port: Int)?
        if let text = string(listenMap, "metrics", "listen") {
            if let address = Self.hostPort(text) { metrics = address } else { problem("listen.metrics", "expected host:port, not '\(text)'") }
        }
        var transitAddress: (host: String, port: Int)?
        if let text = string(listenMap, "transit", "listen") {
            if let address = Self.hostPort(text) { transitAddress = address } else { problem("listen.transit", "expected host:port, not '\(text)'") }
        }
        var kmipAddress: (host: String, port: Int)?
        if let text = string(listenMap, "kmip", "listen") {
            if let address = Self.hostPort(text) { kmipAddress = address } else { problem("listen.kmip", "expected host:port, not '\(text)'") }
        } else if let kmip = top["kmip"], !(kmip is NSNull) {
            kmipAddress = (host: "127.0.0.1", port: 5696)
        }
        var listen = Configuration.Listen(host: host, port: port, allowPublicBind: bool(listenMap, "allow_public_bind", "listen", default: false),
                                          metrics: metrics, allowPublicMetrics: bool(listenMap, "allow_public_metrics", "listen", default: false),
                                          transit: transitAddress)
        listen.kmip = kmipAddress

        var tls: Configuration.TLS?
        if let tlsMap = map(top["tls"], "tls", known: ["cert", "key", "client_ca", "crl", "crl_refresh", "crl_grace", "min_version", "client_auth", "ciphers", "identity"]) {
            let certificate = string(tlsMap, "cert", "tls", required: true).map(resolve)
            let key = string(tlsMap, "key", "tls", required: true).map(resolve)
            let clientCA = string(tlsMap, "client_ca", "tls", required: true).map(resolve)
            let crlText = string(tlsMap, "crl", "tls")
            let crlDisabled = crlText == "none"
            let crl = crlDisabled ? nil : crlText.map(resolve)
            for (name, file) in [("cert", certificate), ("key", key), ("client_ca", clientCA), ("crl", crl)] {
                if let file, !FileManager.default.fileExists(atPath: file) { problem("tls.\(name)", "the file \(file) does not exist") }
            }
            let version = string(tlsMap, "min_version", "tls") ?? "1.3"
            if !["1.2", "1.3"].contains(version) { problem("tls.min_version", "expected 1.2 or 1.3, not '\(version)' (older TLS is not supported)") }
            let authText = string(tlsMap, "client_auth", "tls") ?? "required"
            let clientAuth = Configuration.TLS.ClientAuth(rawValue: authText)
            if clientAuth == nil { problem("tls.client_auth", "expected required or optional") }
            if let certificate, let key, let clientCA {
                tls = Configuration.TLS(certificate: certificate, key: key, clientCA: clientCA, crl: crl,
                                        minimumVersion: version, clientAuth: clientAuth ?? .required,
                                        ciphers: string(tlsMap, "ciphers", "tls") ?? Configuration.TLS.defaultCiphers)
                tls?.crlDisabled = crlDisabled
                let identityText = string(tlsMap, "identity", "tls") ?? "names"
                if let identity = ClientIdentity.Mode(rawValue: identityText) {
                    tls?.identity = identity
                } else {
                    problem("tls.identity", "expected names or spiffe, not '\(identityText.prefix(40))'")
                }
                tls?.crlRefresh = duration(tlsMap, "crl_refresh", "tls", default: .seconds(300))
                tls?.crlGrace = duration(tlsMap, "crl_grace", "tls", default: .seconds(3600))
            }
        }

        var providers: [String: Configuration.Provider] = [:]
        let providersMap = map(top["providers"], "providers", known: []) ?? [:]
        // `map(known: [])` reported every provider name as unknown; undo that: provider names are free.
        problems.removeAll { $0.hasPrefix("providers.") && $0.contains("unknown key") }
        if providersMap.isEmpty { problem("providers", "at least one provider is required") }
        for (name, value) in providersMap.sorted(by: { $0.key < $1.key }) {
            if let provider = self.provider(value, "providers.\(name)") { providers[name] = provider }
        }

        var keys: [KeyName: Configuration.Key] = [:]
        let keysMap = top["keys"] as? [String: Any] ?? [:]
        if top["keys"] != nil && !(top["keys"] is [String: Any]) && !(top["keys"] is NSNull) { problem("keys", "expected a mapping") }
        for (name, value) in keysMap.sorted(by: { $0.key < $1.key }) {
            let path = "keys.\(name)"
            guard let keyName = try? KeyName(name) else {
                problem(path, "not a valid key name (1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)")
                continue
            }
            let keyMap = map(value, path, known: ["provider", "allow", "rotation"])
            let provider = string(keyMap, "provider", path, required: true) ?? ""
            if !provider.isEmpty && providers[provider] == nil && providersMap[provider] == nil {
                problem("\(path).provider", "no provider named '\(provider)' (configured: \(providersMap.keys.sorted().joined(separator: ", ")))")
            }
            let allow = identityPatterns(keyMap, "allow", path)
            let rotation = rotationPolicy(keyMap?["rotation"], "\(path).rotation")
            keys[keyName] = Configuration.Key(name: keyName, provider: provider, allow: allow, rotation: rotation)
        }

        let adminMap = map(top["admin"], "admin", known: ["identities", "token_hashes", "client_ca"])
        let tokenHashes = strings(adminMap, "token_hashes", "admin").map { $0.lowercased() }
        for hash in tokenHashes where hash.count != 64 || !hash.allSatisfy(\.isHexDigit) {
            problem("admin.token_hashes", "'\(hash.prefix(12))…' is not a hex SHA-256 (64 hex digits)")
        }
        var admin = Configuration.Admin(identities: identityPatterns(adminMap, "identities", "admin"), tokenHashes: tokenHashes)
        if let clientCA = string(adminMap, "client_ca", "admin").map(resolve) {
            if !FileManager.default.fileExists(atPath: clientCA) { problem("admin.client_ca", "the file \(clientCA) does not exist") }
            if top["tls"] == nil { problem("admin.client_ca", "needs a tls section (admin certificates are checked in the TLS handshake)") }
            admin.clientCA = clientCA
        }

        let limitsMap = map(top["limits"], "limits", known: [
            "max_connections", "max_body_bytes", "request_timeout", "rate_per_second", "burst", "max_connections_per_source",
            "max_unauthenticated", "max_unauthenticated_per_source", "handshake_timeout", "idle_timeout", "max_connection_age",
            "metrics_max_connections", "request_read_timeout", "write_timeout",
        ])
        let rate: Double
        if let value = limitsMap?["rate_per_second"] as? Double, value > 0 { rate = value }
        else if let value = limitsMap?["rate_per_second"] as? Int, value > 0 { rate = Double(value) }
        else {
            if limitsMap?["rate_per_second"] != nil { problem("limits.rate_per_second", "expected a positive number") }
            rate = 1000
        }
        let maxConnections = int(limitsMap, "max_connections", "limits", default: 1024, range: 1...1_000_000)
        let perSource = int(limitsMap, "max_connections_per_source", "limits", default: min(64, maxConnections), range: 1...maxConnections)
        // Unauthenticated peers get at most a quarter of the slots by default, so storage nodes always find room.
        let unauthenticated = int(limitsMap, "max_unauthenticated", "limits", default: max(1, maxConnections / 4), range: 1...maxConnections)
        let unauthenticatedPerSource = int(limitsMap, "max_unauthenticated_per_source", "limits",
                                           default: min(16, perSource, unauthenticated), range: 1...max(1, min(perSource, unauthenticated)))
        let limits = Configuration.Limits(
            maxConnections: maxConnections,
            maxConnectionsPerSource: perSource,
            maxUnauthenticated: unauthenticated,
            maxUnauthenticatedPerSource: unauthenticatedPerSource,
            handshakeTimeout: duration(limitsMap, "handshake_timeout", "limits", default: .seconds(10)),
            idleTimeout: duration(limitsMap, "idle_timeout", "limits", default: .seconds(60)),
            maxConnectionAge: duration(limitsMap, "max_connection_age", "limits", default: .seconds(3600)),
            requestReadTimeout: duration(limitsMap, "request_read_timeout", "limits", default: .seconds(10)),
            writeTimeout: duration(limitsMap, "write_timeout", "limits", default: .seconds(10)),
            metricsMaxConnections: int(limitsMap, "metrics_max_connections", "limits", default: 16, range: 1...1024),
            maxBodyBytes: int(limitsMap, "max_body_bytes", "limits", default: 256 * 1024, range: 1024...64 * 1024 * 1024),
            requestTimeout: duration(limitsMap, "request_timeout", "limits", default: .seconds(10)),
            ratePerSecond: rate,
            burst: int(limitsMap, "burst", "limits", default: 2000, range: 1...1_000_000))

        let logLevel = string(top, "log_level", "config") ?? "info"
        if !["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(logLevel) {
            problem("log_level", "expected trace, debug, info, notice, warning, error or critical")
        }
        let debug = bool(top, "debug", "config", default: false)
        let dataDirectory = string(top, "data_dir", "config").map(resolve)
        let logFormatText = string(top, "log_format", "config") ?? "text"
        let logFormat = KMSDLogging.Format(rawValue: logFormatText)
        if logFormat == nil { problem("log_format", "expected text or json") }
        let audit = self.audit(top["audit"], production: mode == .production, providers: providersMap)
        let transit = self.transit(top["transit"], listening: listenMap?["transit"] != nil, tls: tls != nil, keys: Set(keys.keys))
        let kmip = self.kmip(top["kmip"], listening: listenMap?["kmip"] != nil, tls: tls != nil, keys: Set(keys.keys))
        if let wrapping = kmip?.wrappingKey {
            // The key that seals every managed object's material is kmsd's alone: a node allowed to use it could open
            // a copied database's objects with the API's unwrap.
            if let allow = keys[wrapping]?.allow, !allow.isEmpty {
                problem("keys.\(wrapping).allow", "\(wrapping) is kmip.wrapping_key: no node may use it (allow: []); give nodes another key")
            }
            for (name, mapped) in transit?.keys ?? [:] where mapped.key == wrapping {
                problem("transit.keys.\(name)", "\(wrapping) is kmip.wrapping_key: transit may not serve it; map another key")
            }
        }
        let state = self.state(top["state"])
        let replicaID = string(top, "replica_id", "config")
        if let replicaID, replicaID.isEmpty || replicaID.count > 64
            || !replicaID.unicodeScalars.allSatisfy({ $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "._:-".unicodeScalars.contains($0)) }) {
            problem("replica_id", "1 to 64 letters, digits, '.', '_', ':' or '-'")
        }
        guard let mode else { return nil }
        var configuration = Configuration(
            mode: mode, listen: listen, tls: tls, providers: providers, keys: keys, admin: admin, limits: limits,
            logLevel: logLevel, debug: debug, dataDirectory: dataDirectory, state: state, audit: audit, transit: transit,
            logFormat: logFormat ?? .text, source: source)
        configuration.replicaID = replicaID
        configuration.kmip = kmip
        return configuration
    }

    /// `state: {sqlite: {path}}` or `state: {postgres: {host, port, database, user, password, tls, …}}`.
    mutating func state(_ value: Any?) -> Configuration.State {
        guard let value, !(value is NSNull) else { return .sqlite(path: nil) }
        guard let stateMap = map(value, "state", known: ["sqlite", "postgres"]) else { return .sqlite(path: nil) }
        guard stateMap.count == 1 else {
            problem("state", "give exactly one of sqlite or postgres")
            return .sqlite(path: nil)
        }
        if stateMap["sqlite"] != nil {
            let sqlite = stateMap["sqlite"] is NSNull ? [:] : map(stateMap["sqlite"], "state.sqlite", known: ["path"])
            return .sqlite(path: string(sqlite, "path", "state.sqlite").map(resolve))
        }
        let path = "state.postgres"
        let postgres = map(stateMap["postgres"], path, known: [
            "host", "port", "database", "user", "password", "tls", "connect_timeout", "timeout", "max_connections",
        ])
        let host = string(postgres, "host", path, required: true) ?? ""
        let database = string(postgres, "database", path, required: true) ?? ""
        let user = string(postgres, "user", path, required: true) ?? ""
        for (key, text) in [("host", host), ("database", database), ("user", user)] where text.contains(where: { $0.isWhitespace || $0 == "\0" }) {
            problem("\(path).\(key)", "must not contain spaces or control characters")
        }
        if host.hasPrefix("/") { problem("\(path).host", "a host name or address (kmsd reaches PostgreSQL over TCP, not a Unix socket)") }
        let password = postgres?["password"].flatMap { secret($0, "\(path).password") }
        var tls: PostgresStoreSettings.TLS?
        if let tlsMap = map(postgres?["tls"], "\(path).tls", known: ["ca", "cert", "key"]) {
            let ca = string(tlsMap, "ca", "\(path).tls", required: true).map(resolve)
            let cert = string(tlsMap, "cert", "\(path).tls").map(resolve)
            let key = string(tlsMap, "key", "\(path).tls").map(resolve)
            if (cert == nil) != (key == nil) { problem("\(path).tls", "give cert and key together (a client certificate), or neither") }
            for (name, file) in [("ca", ca), ("cert", cert)] {
                if let file, !FileManager.default.fileExists(atPath: file) { problem("\(path).tls.\(name)", "the file \(file) does not exist") }
            }
            if let key { privateFile(key, "\(path).tls.key") }
            if let ca { tls = .init(caFile: ca, certificateFile: cert, keyFile: key) }
        }
        return .postgres(Configuration.Postgres(store: PostgresStoreSettings(
            host: host, port: int(postgres, "port", path, default: 5432, range: 1...65535), database: database, user: user, tls: tls,
            connectTimeout: duration(postgres, "connect_timeout", path, default: .seconds(5)),
            operationTimeout: duration(postgres, "timeout", path, default: .seconds(5)),
            maxConnections: int(postgres, "max_connections", path, default: 8, range: 1...1000)), password: password))
    }

    static func hostPort(_ text: String) -> (host: String, port: Int)? {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        return (String(text[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]")), port)
    }

    /// `audit: {file, max_file_bytes, checkpoint_every, checkpoint_interval, fail_closed, sign, syslog}`.
    mutating func audit(_ value: Any?, production: Bool, providers: [String: Any]) -> Configuration.Audit? {
        guard let map = map(value, "audit", known: [
            "file", "max_file_bytes", "checkpoint_every", "checkpoint_interval", "fail_closed", "sign", "syslog", "max_queue", "keep_files",
            "handshake_summary_interval",
        ]) else {
            return nil
        }
        let file = string(map, "file", "audit", required: true).map(resolve) ?? ""
        var signing: Configuration.Audit.Signing?
        if let sign = self.map(map["sign"], "audit.sign", known: ["file", "hsm", "label"]) {
            if let path = string(sign, "file", "audit.sign") {
                signing = .file(resolve(path))
            } else if let provider = string(sign, "hsm", "audit.sign") {
                if providers[provider] == nil { problem("audit.sign.hsm", "no provider named '\(provider)'") }
                signing = .hsm(provider: provider, label: string(sign, "label", "audit.sign") ?? "kmsd-audit")
            } else {
                problem("audit.sign", "expected {file: PATH} or {hsm: PROVIDER, label: LABEL}")
            }
        }
        var syslog: Configuration.Audit.Syslog?
        if let syslogMap = self.map(map["syslog"], "audit.syslog", known: ["address", "tls", "ca"]) {
            let address = string(syslogMap, "address", "audit.syslog", required: true) ?? ""
            if let (host, port) = Self.hostPort(address) {
                syslog = .init(host: host, port: port, tls: bool(syslogMap, "tls", "audit.syslog", default: false),
                               caCertificate: string(syslogMap, "ca", "audit.syslog").map(resolve))
            } else if !address.isEmpty {
                problem("audit.syslog.address", "expected host:port, not '\(address)'")
            }
        }
        return Configuration.Audit(
            file: file,
            maxFileBytes: int(map, "max_file_bytes", "audit", default: 100 << 20, range: 4096...(1 << 40)),
            checkpointEvery: int(map, "checkpoint_every", "audit", default: 10_000, range: 1...10_000_000),
            checkpointInterval: duration(map, "checkpoint_interval", "audit", default: .seconds(60)),
            failClosed: bool(map, "fail_closed", "audit", default: production),
            signing: signing, syslog: syslog,
            maxQueue: int(map, "max_queue", "audit", default: 10_000, range: 16...1_000_000),
            keepFiles: optionalInt(map, "keep_files", "audit", range: 1...1_000_000),
            handshakeSummaryInterval: duration(map, "handshake_summary_interval", "audit", default: .seconds(10)))
    }

    mutating func provider(_ value: Any?, _ path: String) -> Configuration.Provider? {
        guard let raw = value as? [String: Any] else {
            problem(path, "expected a mapping with a type")
            return nil
        }
        switch raw["type"] as? String {
        case "pkcs11":
            let map = self.map(raw, path, known: ["type", "module", "token", "pin", "profile", "profiles_dir", "sessions", "call_timeout", "checkout_wait"])
            let module = string(map, "module", path, required: true).map(resolve)
            if let module, !FileManager.default.fileExists(atPath: module) { problem("\(path).module", "the file \(module) does not exist") }
            let token = string(map, "token", path, required: true)
            if let token, !token.hasPrefix("pkcs11:") { problem("\(path).token", "expected a PKCS#11 URI (pkcs11:token=…)") }
            let pin = secret(map?["pin"], "\(path).pin")
            let settings = Configuration.PKCS11Settings(
                module: module ?? "", token: token ?? "", pin: pin ?? .environment(""),
                profile: string(map, "profile", path, required: true) ?? "",
                profilesDirectory: string(map, "profiles_dir", path).map(resolve) ?? resolve("hsm-profiles"),
                sessions: int(map, "sessions", path, default: 8, range: 1...1024),
                callTimeout: duration(map, "call_timeout", path, default: .seconds(1)),
                checkoutWait: duration(map, "checkout_wait", path, default: .seconds(2)))
            return .pkcs11(settings)
        case "vault-transit":
            let map = self.map(raw, path, known: ["type", "address", "mount", "namespace", "ca", "auth", "request_timeout"])
            let address = string(map, "address", path, required: true) ?? ""
            if !address.isEmpty && !(address.hasPrefix("https://") || address.hasPrefix("http://")) {
                problem("\(path).address", "expected an http(s):// URL")
            }
            let authMap = self.map(map?["auth"], "\(path).auth", known: ["token", "token_file", "approle"])
            var auth: Configuration.VaultSettings.Auth?
            if let authMap, authMap.count != 1 { problem("\(path).auth", "give exactly one of token, token_file, approle") }
            if let token = authMap?["token"] {
                auth = secret(token, "\(path).auth.token").map { .token($0) }
            } else if let file = string(authMap, "token_file", "\(path).auth") {
                auth = .tokenFile(resolve(file))
            } else if let approle = self.map(authMap?["approle"], "\(path).auth.approle", known: ["role_id", "secret_id"]) {
                let roleID = string(approle, "role_id", "\(path).auth.approle", required: true) ?? ""
                if let secretID = secret(approle["secret_id"], "\(path).auth.approle.secret_id") {
                    auth = .appRole(roleID: roleID, secretID: secretID)
                }
            } else if authMap == nil {
                problem("\(path).auth", "is required (token, token_file or approle)")
            }
            guard let auth else { return nil }
            return .vault(Configuration.VaultSettings(
                address: address, mount: string(map, "mount", path) ?? "transit", namespace: string(map, "namespace", path),
                caCertificate: string(map, "ca", path).map(resolve), auth: auth,
                requestTimeout: duration(map, "request_timeout", path, default: .seconds(5))))
        case "in-memory":
            problem("\(path).type", "the in-memory provider exists only in kmsd's tests (KMSTestSupport): keys in process memory are lost on restart; use pkcs11 or vault-transit")
            return nil
        case let other:
            problem("\(path).type", "expected pkcs11 or vault-transit, not '\(other ?? "nothing")'")
            return nil
        }
    }
}
