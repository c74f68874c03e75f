import Crypto
import Foundation
import KMSCore
import VaultWire

/// The whole server state: seal, tokens, AppRole roles and transit mounts. Requests are handled one at a time (an
/// actor); state is written to the state file, when there is one, after every change.
actor VaultCore {
    struct Token: Codable, Sendable {
        var id: String
        var accessor: String
        var policies: [String]
        var path: String
        var meta: [String: String]
        var displayName: String
        var creationTime: Date
        /// Seconds; 0 = never expires.
        var ttl: Int
        var maxTTL: Int
        var renewable: Bool
        var expiresAt: Date?
        var isRoot: Bool { policies.contains("root") }
    }

    struct Role: Codable, Sendable {
        var roleID: String
        var secretIDs: Set<String> = []
        var tokenTTL = 0
        var tokenMaxTTL = 0
        var policies: [String] = ["default"]
    }

    struct Mount: Codable, Sendable {
        var keys: [String: TransitKey] = [:]
        var disableUpsert = false
    }

    struct State: Codable, Sendable {
        var sealed = false
        var tokens: [String: Token] = [:]
        var roles: [String: Role] = [:]
        var mounts: [String: Mount] = ["transit": Mount()]
    }

    /// Vault's defaults for tokens without their own TTL: 768 h.
    static let systemMaxTTL = 768 * 3600

    private var state: State
    private let stateFile: String?
    let unsealKey: String
    let rootToken: String
    private let clock: @Sendable () -> Date

    init(rootToken: String, unsealKey: String, stateFile: String?, clock: @escaping @Sendable () -> Date = { Date() }) throws {
        self.stateFile = stateFile
        self.unsealKey = unsealKey
        self.rootToken = rootToken
        self.clock = clock
        if let stateFile, let data = FileManager.default.contents(atPath: stateFile) {
            do {
                state = try JSONDecoder().decode(State.self, from: data)
            } catch {
                throw VaultDevError("cannot read the state file \(stateFile): \(error)")
            }
            // A restarted dev server comes back unsealed, as `vault server -dev` does.
            state.sealed = false
        } else {
            state = State()
        }
        state.tokens[rootToken] = Token(
            id: rootToken, accessor: Self.randomID(), policies: ["root"], path: "auth/token/root", meta: [:],
            displayName: "root", creationTime: clock(), ttl: 0, maxTTL: 0, renewable: false, expiresAt: nil)
    }

    static func randomID(prefix: String = "") -> String {
        prefix + SymmetricKey(size: .bits128).withUnsafeBytes { Data($0) }.base64EncodedString()
            .replacingOccurrences(of: "/", with: "").replacingOccurrences(of: "+", with: "").replacingOccurrences(of: "=", with: "")
    }

    private func save() {
        guard let stateFile else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        guard let data = try? encoder.encode(state) else { return }
        let temporary = stateFile + ".tmp"
        _ = FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o600])
        _ = rename(temporary, stateFile)
    }

    var isSealed: Bool { state.sealed }

    // MARK: - Requests

    struct Request: Sendable {
        var method: String
        var path: String  // without the /v1/ prefix
        var query: [String: String]
        var token: String?
        var body: [UInt8]
        var contentType: String?
    }

    func handle(_ request: Request) throws -> VaultReply {
        let path = request.path
        // REPORT is how LIST arrives (see ListMethodRewriter).
        let method = VaultRequestLine.method(request.method, query: request.query)

        // Unauthenticated, and served while sealed.
        switch path {
        case "sys/health": return try health(request)
        case "sys/seal-status": return .raw(sealStatus())
        case "sys/unseal":
            var parameters = try VaultParameters.parse(body: request.body, contentType: request.contentType)
            return try unseal(&parameters)
        default: break
        }
        if state.sealed { throw VaultError.sealed }
        var parameters = try VaultParameters.parse(body: request.body, contentType: request.contentType)
        if path == "auth/approle/login" { return try approleLogin(&parameters) }

        let token = try authenticate(request.token)
        // Vault's warning for parameters the endpoint did not use (on success with a body).
        return try route(method: method, path: path, token: token, parameters: &parameters).warningUnused(parameters)
    }

    private func authenticate(_ presented: String?) throws -> Token {
        guard let presented, let token = state.tokens[presented] else { throw VaultError.invalidToken }
        if let expiry = token.expiresAt, expiry <= clock() {
            state.tokens[presented] = nil
            save()
            throw VaultError.invalidToken
        }
        return token
    }

    private func requireRoot(_ token: Token) throws {
        guard token.isRoot else { throw VaultError.permissionDenied }
    }

    private func route(method: String, path: String, token: Token, parameters: inout VaultParameters) throws -> VaultReply {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        let (pattern, arguments) = Self.systemRoutes.resolve(parts)
        switch (method, pattern) {
        case ("POST", "sys/seal"):
            try requireRoot(token)
            state.sealed = true
            return .noContent
        case ("POST", "sys/mounts/*"), ("POST", "sys/mounts/*/*"):
            try requireRoot(token)
            let mount = parts.dropFirst(2).joined(separator: "/")
            let type = try parameters.string("type") ?? ""
            guard type == "transit" else { throw VaultError.badRequest("vault-dev mounts only the transit engine, not '\(type)'") }
            guard state.mounts[mount] == nil else { throw VaultError.badRequest("path is already in use at \(mount)/") }
            state.mounts[mount] = Mount()
            save()
            return .noContent
        case ("DELETE", "sys/mounts/*"):
            try requireRoot(token)
            state.mounts[parts[2]] = nil
            save()
            return .noContent
        case ("POST", "sys/auth/approle"):
            try requireRoot(token)
            throw VaultError.badRequest("path is already in use at approle/")
        case (_, "auth/token/lookup-self"):
            return .data(lookup(token))
        case ("POST", "auth/token/renew-self"):
            return try renew(token, increment: try parameters.duration("increment"))
        case ("POST", "auth/token/revoke-self"):
            state.tokens[token.id] = nil
            save()
            return .noContent
        case ("POST", "auth/token/revoke"):
            try requireRoot(token)
            if let id = try parameters.string("token") { state.tokens[id] = nil }
            save()
            return .noContent
        case ("LIST", "auth/token/accessors"):
            try requireRoot(token)
            return .data(["keys": JSONValue(state.tokens.values.map(\.accessor).sorted())])
        case ("POST", "auth/token/revoke-accessor"):
            try requireRoot(token)
            let accessor = try parameters.string("accessor")
            state.tokens = state.tokens.filter { $0.value.accessor != accessor || $0.value.isRoot }
            save()
            return .noContent
        case ("POST", "auth/token/create"):
            try requireRoot(token)
            return try createToken(&parameters)
        case ("POST", "auth/approle/role/*"):
            let role = arguments[0]
            try requireRoot(token)
            var entry = state.roles[role] ?? Role(roleID: UUID().uuidString.lowercased())
            entry.tokenTTL = try parameters.duration("token_ttl") ?? entry.tokenTTL
            entry.tokenMaxTTL = try parameters.duration("token_max_ttl") ?? entry.tokenMaxTTL
            entry.policies = try parameters.stringList("token_policies") ?? entry.policies
            state.roles[role] = entry
            save()
            return .noContent
        case ("GET", "auth/approle/role/*/role-id"):
            let role = arguments[0]
            try requireRoot(token)
            guard let entry = state.roles[role] else { throw VaultError.notFound }
            return .data(["role_id": .string(entry.roleID)])
        case ("POST", "auth/approle/role/*/secret-id"):
            let role = arguments[0]
            try requireRoot(token)
            guard state.roles[role] != nil else { throw VaultError.badRequest("role \"\(role)\" does not exist") }
            let secret = UUID().uuidString.lowercased()
            state.roles[role]?.secretIDs.insert(secret)
            save()
            return .data(["secret_id": .string(secret), "secret_id_accessor": .string(UUID().uuidString.lowercased()),
                          "secret_id_ttl": 0, "secret_id_num_uses": 0])
        default:
            break
        }
        // Transit: the longest mount that prefixes the path.
        guard let mount = state.mounts.keys.filter({ path == $0 || path.hasPrefix($0 + "/") }).max(by: { $0.count < $1.count }) else {
            throw VaultError(404, "no handler for route \"\(path)\". route entry not found.")
        }
        let rest = path == mount ? [] : path.dropFirst(mount.count + 1).split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        let reply = try transit(mount: mount, method: method, path: path, rest: rest, parameters: &parameters)
        save()
        return reply
    }

    // MARK: - Routing

    static let systemRoutes = VaultRoutes([
        "sys/seal", "sys/mounts/*", "sys/mounts/*/*", "sys/auth/approle", "auth/token/lookup-self",
        "auth/token/renew-self", "auth/token/revoke-self", "auth/token/revoke", "auth/token/create",
        "auth/approle/role/*", "auth/approle/role/*/role-id", "auth/approle/role/*/secret-id",
        "auth/token/accessors", "auth/token/revoke-accessor",
    ])
    static let transitRoutes = VaultRoutes([
        "keys", "keys/", "keys/*", "keys/*/config", "keys/*/rotate", "keys/*/trim", "config/keys", "encrypt/*",
        "decrypt/*", "rewrap/*", "datakey/*/*",
    ])

    // MARK: - Seal and health

    private func sealStatus() -> [String: JSONValue] {
        ["type": "shamir", "initialized": true, "sealed": .bool(state.sealed), "t": 1, "n": 1, "progress": 0,
         "nonce": "", "version": .string(VaultDevServer.version), "build_date": "", "migration": false,
         "recovery_seal": false, "storage_type": .string(stateFile == nil ? "inmem" : "file")]
    }

    private func unseal(_ parameters: inout VaultParameters) throws -> VaultReply {
        if try parameters.bool("reset") == true { return .raw(sealStatus()) }
        guard let key = try parameters.string("key") else {
            throw VaultError.badRequest("'key' must be specified in request body as JSON, or 'reset' set to true")
        }
        guard key == unsealKey else { throw VaultError.badRequest("Unseal failed, invalid key") }
        state.sealed = false
        return .raw(sealStatus())
    }

    private func health(_ request: Request) throws -> VaultReply {
        try VaultHealth.reply(request.query, sealed: state.sealed, version: VaultDevServer.version, clusterName: "vault-dev",
                              clusterID: "00000000-0000-0000-0000-000000000000", now: clock())
    }

    // MARK: - Tokens

    private func issue(policies: [String], path: String, meta: [String: String], ttl: Int, maxTTL: Int, renewable: Bool) -> Token {
        let now = clock()
        let effectiveTTL = ttl > 0 ? ttl : Self.systemMaxTTL
        let token = Token(
            id: Self.randomID(prefix: "hvs."), accessor: Self.randomID(), policies: policies, path: path, meta: meta,
            displayName: path.replacingOccurrences(of: "/", with: "-"), creationTime: now, ttl: effectiveTTL,
            maxTTL: maxTTL > 0 ? maxTTL : Self.systemMaxTTL, renewable: renewable,
            expiresAt: now.addingTimeInterval(TimeInterval(effectiveTTL)))
        state.tokens[token.id] = token
        save()
        return token
    }

    private func authBlock(_ token: Token) -> [String: JSONValue] {
        let remaining = token.expiresAt.map { max(0, Int($0.timeIntervalSince(clock()).rounded())) } ?? 0
        return [
            "client_token": .string(token.id), "accessor": .string(token.accessor), "policies": JSONValue(token.policies),
            "token_policies": JSONValue(token.policies), "metadata": .object(token.meta.mapValues { .string($0) }),
            "lease_duration": .int(remaining), "renewable": .bool(token.renewable), "entity_id": "",
            "token_type": "service", "orphan": true, "mfa_requirement": nil, "num_uses": 0,
        ]
    }

    private func lookup(_ token: Token) -> [String: JSONValue] {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let remaining = token.expiresAt.map { max(0, Int($0.timeIntervalSince(clock()).rounded())) } ?? 0
        var data: [String: JSONValue] = [
            "id": .string(token.id), "accessor": .string(token.accessor), "policies": JSONValue(token.policies),
            "path": .string(token.path), "meta": token.meta.isEmpty ? nil : .object(token.meta.mapValues { .string($0) }),
            "display_name": .string(token.displayName), "num_uses": 0, "orphan": true,
            "creation_time": .int(Int(token.creationTime.timeIntervalSince1970)),
            "creation_ttl": .int(token.isRoot ? 0 : token.ttl), "expire_time": JSONValue(token.expiresAt.map { formatter.string(from: $0) }),
            "ttl": .int(remaining), "explicit_max_ttl": 0, "entity_id": "", "type": "service",
        ]
        if !token.isRoot {
            data["renewable"] = .bool(token.renewable)
            data["issue_time"] = .string(formatter.string(from: token.creationTime))
        }
        return data
    }

    private func renew(_ token: Token, increment: Int?) throws -> VaultReply {
        guard let expiry = token.expiresAt, !token.isRoot else { throw VaultError.badRequest("invalid lease ID") }
        guard token.renewable else { throw VaultError.badRequest("lease is not renewable") }
        let now = clock()
        guard expiry > now else { throw VaultError.badRequest("lease expired") }
        let wanted = (increment ?? 0) > 0 ? increment! : token.ttl
        let limit = token.creationTime.addingTimeInterval(TimeInterval(token.maxTTL))
        var newExpiry = now.addingTimeInterval(TimeInterval(wanted))
        var warnings: [String] = []
        if newExpiry > limit {
            newExpiry = limit
            warnings.append("TTL of \"\(wanted)s\" exceeded the effective max_ttl of \"\(Int(limit.timeIntervalSince(now)))s\"; TTL value is capped accordingly")
        }
        var renewed = token
        renewed.expiresAt = newExpiry
        state.tokens[token.id] = renewed
        save()
        return .data(nil, warnings: warnings, auth: authBlock(renewed))
    }

    private func createToken(_ parameters: inout VaultParameters) throws -> VaultReply {
        let policies = try parameters.stringList("policies") ?? ["default"]
        let ttl = try parameters.duration("ttl") ?? 0
        let maxTTL = try parameters.duration("explicit_max_ttl") ?? 0
        let renewable = try parameters.bool("renewable") ?? true
        let token = issue(policies: policies, path: "auth/token/create", meta: [:], ttl: ttl, maxTTL: maxTTL, renewable: renewable)
        return .data(nil, auth: authBlock(token))
    }

    private func approleLogin(_ parameters: inout VaultParameters) throws -> VaultReply {
        guard let roleID = try parameters.string("role_id"), !roleID.isEmpty else { throw VaultError.badRequest("missing role_id") }
        guard let secretID = try parameters.string("secret_id"), !secretID.isEmpty else {
            throw VaultError.badRequest("missing secret_id")
        }
        guard let (name, role) = state.roles.first(where: { $0.value.roleID == roleID }), role.secretIDs.contains(secretID) else {
            throw VaultError.badRequest("invalid role or secret ID")
        }
        let token = issue(policies: role.policies, path: "auth/approle/login", meta: ["role_name": name],
                          ttl: role.tokenTTL, maxTTL: role.tokenMaxTTL, renewable: true)
        return .data(nil, auth: authBlock(token))
    }

    // MARK: - Transit

    private func transit(mount: String, method: String, path: String, rest: [String], parameters: inout VaultParameters) throws -> VaultReply {
        let now = Int(clock().timeIntervalSince1970)
        let (pattern, arguments) = Self.transitRoutes.resolve(rest)
        switch (method, pattern) {
        case ("LIST", "keys"), ("LIST", "keys/"):
            let names = state.mounts[mount]?.keys.keys.sorted() ?? []
            guard !names.isEmpty else { throw VaultError.notFound }
            return .data(["keys": JSONValue(names)])
        case ("GET", "keys"):
            throw VaultError.unsupportedOperation(path)
        case ("POST", "keys/*"):
            let name = arguments[0]
            guard VaultRequestLine.isValidKeyName(name) else { throw VaultError.badRequest("invalid key name") }
            let type = try parameters.string("type") ?? "aes256-gcm96"
            guard type == "aes256-gcm96" else { throw VaultError.badRequest("unknown key type \(type)") }
            let derived = try parameters.bool("derived") ?? false
            let convergent = try parameters.bool("convergent_encryption") ?? false
            if convergent && !derived { throw VaultError.badRequest("convergent encryption requires derivation to be enabled") }
            let exportable = try parameters.bool("exportable") ?? false
            let backup = try parameters.bool("allow_plaintext_backup") ?? false
            let period = try parameters.duration("auto_rotate_period") ?? 0
            if period != 0 && period < 3600 { throw VaultError.badRequest("auto rotate period must be 0 to disable or at least an hour") }
            if let existing = state.mounts[mount]?.keys[name] {
                return .data(existing.info, warnings: ["key \(name) already existed"])
            }
            var key = TransitKey(name: name, derived: derived, convergent: convergent, now: now)
            key.exportable = exportable
            key.allowPlaintextBackup = backup
            key.autoRotatePeriod = period
            state.mounts[mount]?.keys[name] = key
            return .data(key.info)
        case ("GET", "keys/*"):
            let name = arguments[0]
            guard let key = state.mounts[mount]?.keys[name] else { throw VaultError.notFound }
            return .data(key.info)
        case ("DELETE", "keys/*"):
            let name = arguments[0]
            guard let key = state.mounts[mount]?.keys[name] else {
                throw VaultError.badRequest("error deleting policy \(name): could not delete key; not found")
            }
            guard key.deletionAllowed else {
                throw VaultError.badRequest("error deleting policy \(name): deletion is not allowed for this key")
            }
            state.mounts[mount]?.keys[name] = nil
            return .noContent
        case ("POST", "keys/*/config"):
            let name = arguments[0]
            guard var key = state.mounts[mount]?.keys[name] else {
                throw VaultError.badRequest("no existing key named \(name) could be found")
            }
            var warnings: [String] = []
            if var minimum = try parameters.int("min_decryption_version") {
                if minimum < 0 { throw VaultError.badRequest("min decryption version cannot be negative") }
                if minimum == 0 {
                    minimum = 1
                    warnings.append("since Vault 0.3, transit key numbering starts at 1; forcing minimum to 1")
                }
                if minimum > key.latestVersion {
                    throw VaultError.badRequest("cannot set min decryption version of \(minimum), latest key version is \(key.latestVersion)")
                }
                key.minDecryptionVersion = minimum
            }
            if let minimum = try parameters.int("min_encryption_version") {
                if minimum < 0 { throw VaultError.badRequest("min encryption version cannot be negative") }
                if minimum > key.latestVersion {
                    throw VaultError.badRequest("cannot set min encryption version of \(minimum), latest key version is \(key.latestVersion)")
                }
                key.minEncryptionVersion = minimum
            }
            if key.minEncryptionVersion > 0 && key.minEncryptionVersion < key.minDecryptionVersion {
                throw VaultError.badRequest(
                    "cannot set min encryption/decryption values; min encryption version of \(key.minEncryptionVersion) must be greater than or equal to min decryption version of \(key.minDecryptionVersion)")
            }
            if let allowed = try parameters.bool("deletion_allowed") { key.deletionAllowed = allowed }
            if let exportable = try parameters.bool("exportable") {
                if !exportable && key.exportable { throw VaultError.badRequest("cannot disable exportability") }
                key.exportable = exportable
            }
            if let backup = try parameters.bool("allow_plaintext_backup") {
                if !backup && key.allowPlaintextBackup { throw VaultError.badRequest("cannot disable plaintext backup") }
                key.allowPlaintextBackup = backup
            }
            if let period = try parameters.duration("auto_rotate_period") {
                if period != 0 && period < 3600 { throw VaultError.badRequest("auto rotate period must be 0 to disable or at least an hour") }
                key.autoRotatePeriod = period
            }
            state.mounts[mount]?.keys[name] = key
            return .data(key.info, warnings: warnings)
        case ("POST", "keys/*/rotate"):
            let name = arguments[0]
            guard var key = state.mounts[mount]?.keys[name] else { throw VaultError.badRequest("key not found") }
            key.rotate(now: now)
            state.mounts[mount]?.keys[name] = key
            return .data(key.info)
        case ("POST", "keys/*/trim"):
            let name = arguments[0]
            guard var key = state.mounts[mount]?.keys[name] else { throw VaultError.badRequest("invalid key name") }
            guard let minimum = try parameters.int("min_available_version") else {
                throw VaultError.badRequest("missing min_available_version")
            }
            if minimum < key.minAvailableVersion { throw VaultError.badRequest("minimum available version cannot be decremented") }
            if key.minEncryptionVersion == 0 {
                throw VaultError.badRequest("minimum available version cannot be set when minimum encryption version is not set")
            }
            if minimum > key.minEncryptionVersion {
                throw VaultError.badRequest("minimum available version cannot be greater than minmum encryption version")
            }
            if minimum > key.minDecryptionVersion {
                throw VaultError.badRequest("minimum available version cannot be greater than minimum decryption version")
            }
            key.minAvailableVersion = minimum
            key.versions = key.versions.filter { $0.key >= minimum }
            state.mounts[mount]?.keys[name] = key
            return .data(key.info)
        case ("POST", "config/keys"):
            if let disable = try parameters.bool("disable_upsert") { state.mounts[mount]?.disableUpsert = disable }
            return .data(["disable_upsert": .bool(state.mounts[mount]?.disableUpsert ?? false)])
        case ("GET", "config/keys"):
            return .data(["disable_upsert": .bool(state.mounts[mount]?.disableUpsert ?? false)])
        case ("POST", "encrypt/*"):
            let name = arguments[0]
            return try encrypt(mount: mount, name: name, parameters: &parameters, now: now)
        case ("POST", "decrypt/*"):
            let name = arguments[0]
            return try decrypt(mount: mount, name: name, parameters: &parameters)
        case ("POST", "rewrap/*"):
            let name = arguments[0]
            return try rewrap(mount: mount, name: name, parameters: &parameters)
        case ("POST", "datakey/*/*"):
            let type = arguments[0]
            let name = arguments[1]
            guard type == "plaintext" || type == "wrapped" else {
                throw VaultError.badRequest("Invalid path, must be 'plaintext' or 'wrapped'")
            }
            let bits = try parameters.int("bits") ?? 256
            guard [128, 256, 512].contains(bits) else { throw VaultError.badRequest("invalid bit length") }
            guard let key = state.mounts[mount]?.keys[name] else { throw VaultError.badRequest("encryption key not found") }
            let context = try decodeOptional(&parameters, "context")
            let version = try parameters.int("key_version") ?? 0
            let secret = SymmetricKey(size: .init(bitCount: bits)).withUnsafeBytes { [UInt8]($0) }
            let (ciphertext, used) = try key.encrypt(secret, version: version, context: context, aad: nil)
            var data: [String: JSONValue] = ["ciphertext": .string(ciphertext), "key_version": .int(used)]
            if type == "plaintext" { data["plaintext"] = .string(Data(secret).base64EncodedString()) }
            return .data(data)
        case (_, "encrypt/*"), (_, "decrypt/*"), (_, "rewrap/*"), (_, "keys/*/rotate"), (_, "datakey/*/*"):
            throw VaultError.unsupportedOperation(path)
        default:
            throw VaultError.unsupportedPath(path)
        }
    }

    private func decodeOptional(_ parameters: inout VaultParameters, _ name: String) throws -> [UInt8]? {
        guard let text = try parameters.string(name), !text.isEmpty else { return nil }
        switch GoBase64.decode(text) {
        case .success(let bytes): return bytes
        case .failure(let error): throw error
        }
    }

    /// `associated_data` errors are 500 in Vault.
    private func decodeAAD(_ parameters: inout VaultParameters) throws -> [UInt8]? {
        do {
            return try decodeOptional(&parameters, "associated_data")
        } catch let error as VaultError {
            throw VaultError(500, "unable to get associated_data/additional_data from factory[0]: \(error.messages.first ?? "")")
        }
    }

    /// One item of a batch or single request, run against `body`, turned into a result or an error text.
    private typealias Item = (result: [String: JSONValue]?, error: VaultError?)

    private func batch(
        _ parameters: inout VaultParameters, allowPartialCode: Bool, failureFields: [String: JSONValue] = [:],
        _ body: (inout VaultParameters) throws -> [String: JSONValue]
    ) throws -> VaultReply {
        guard let items = try parameters.objectList("batch_input") else {
            return .data(try body(&parameters))
        }
        _ = parameters.raw("plaintext")
        _ = parameters.raw("ciphertext")
        let partialCode = try VaultParameters.partialFailureCode(&parameters)
        try VaultBatch.checkContexts(items)
        var results: [Result<[String: JSONValue], VaultError>] = []
        var references: [String?] = []
        for var item in items {
            references.append((try? item.string("reference")) ?? nil)
            do {
                results.append(.success(try body(&item)))
            } catch let error as VaultError {
                results.append(.failure(error))
            }
        }
        return VaultBatch.reply(results, references: references, partialCode: partialCode, allowsPartialCode: allowPartialCode,
                                failureFields: failureFields)
    }

    private func encrypt(mount: String, name: String, parameters: inout VaultParameters, now: Int) throws -> VaultReply {
        if state.mounts[mount]?.keys[name] == nil {
            guard state.mounts[mount]?.disableUpsert == false else { throw VaultError.badRequest("encryption key not found") }
            guard VaultRequestLine.isValidKeyName(name) else { throw VaultError.badRequest("invalid key name") }
            // Upsert: created derived exactly when the request carries a context.
            var probe = parameters
            let firstContext: String? = try {
                if let items = try probe.objectList("batch_input"), var first = items.first { return try first.string("context") }
                return try probe.string("context")
            }()
            state.mounts[mount]?.keys[name] = TransitKey(name: name, derived: firstContext?.isEmpty == false, convergent: false, now: now)
        }
        guard let key = state.mounts[mount]?.keys[name] else { throw VaultError.badRequest("encryption key not found") }
        return try batch(&parameters, allowPartialCode: true) { item in
            guard let text = try item.string("plaintext") else { throw VaultError.badRequest("missing plaintext to encrypt") }
            let plaintext: [UInt8]
            switch GoBase64.decode(text) {
            case .success(let bytes): plaintext = bytes
            case .failure(let error): throw error
            }
            let context = try decodeOptional(&item, "context")
            let aad = try decodeAAD(&item)
            let version = try item.int("key_version") ?? 0
            let (ciphertext, used) = try key.encrypt(plaintext, version: version, context: context, aad: aad)
            return ["ciphertext": .string(ciphertext), "key_version": .int(used)]
        }
    }

    private func decrypt(mount: String, name: String, parameters: inout VaultParameters) throws -> VaultReply {
        guard let key = state.mounts[mount]?.keys[name] else { throw VaultError.badRequest("encryption key not found") }
        return try batch(&parameters, allowPartialCode: true, failureFields: ["plaintext": ""]) { item in
            guard let ciphertext = try item.string("ciphertext"), !ciphertext.isEmpty else {
                throw VaultError.badRequest("missing ciphertext to decrypt")
            }
            let context = try decodeOptional(&item, "context")
            let aad = try decodeAAD(&item)
            let (plaintext, _) = try key.decrypt(ciphertext, context: context, aad: aad)
            return ["plaintext": .string(Data(plaintext).base64EncodedString())]
        }
    }

    private func rewrap(mount: String, name: String, parameters: inout VaultParameters) throws -> VaultReply {
        guard let key = state.mounts[mount]?.keys[name] else { throw VaultError.badRequest("encryption key not found") }
        return try batch(&parameters, allowPartialCode: false) { item in
            guard let ciphertext = try item.string("ciphertext"), !ciphertext.isEmpty else {
                throw VaultError.badRequest("missing ciphertext to decrypt")
            }
            let context = try decodeOptional(&item, "context")
            let version = try item.int("key_version") ?? 0
            let (plaintext, _) = try key.decrypt(ciphertext, context: context, aad: nil)
            let (rewrapped, used) = try key.encrypt(plaintext, version: version, context: context, aad: nil)
            return ["ciphertext": .string(rewrapped), "key_version": .int(used)]
        }
    }
}

/// A startup problem of vault-dev (bad arguments, unreadable state file).
public struct VaultDevError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
