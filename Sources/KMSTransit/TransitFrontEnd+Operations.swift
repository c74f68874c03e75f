import Foundation
import KMSAPI
import KMSCore
import KMSService
import KMSRotation
import VaultWire

/// The transit operations: each parses Vault's parameters (with Vault's loose typing and messages), calls the
/// service, and answers in Vault's shape.
extension TransitFrontEnd {
    /// The kmsd context a transit request's `context` and `associated_data` map to: each non-empty byte string under
    /// its own key, as standard base64 (so both sides of kmsd agree: a node using kmsd's API passes the same pairs).
    static let contextKey = "transit.context"
    static let associatedDataKey = "transit.associated_data"

    static let missingContext = "missing 'context' for key derivation; the key was created using a derived key, which means additional, per-request information must be included in order to perform operations with the key"

    /// The kmsd key a transit name maps to. Only an administrator learns that a name is not configured (`missing`,
    /// Vault's answer for a key that does not exist); anyone else gets the service's refusal of a key it may not use,
    /// the same answer as for a mapped key it may not use.
    private func mapping(_ name: String, _ caller: Caller, missing: VaultError) throws -> TransitConfiguration.Key {
        if let key = configuration.keys[name] { return key }
        let node = try caller.node(service)
        guard service.administers(node) else { throw service.unknownKey(node, name) }
        throw missing
    }

    private static func bytes(_ item: inout VaultParameters, _ name: String) throws -> [UInt8]? {
        guard let text = try item.string(name), !text.isEmpty else { return nil }
        return try GoBase64.decode(text).get()
    }

    /// The item's `context` and `associated_data` as a kmsd context; a derived key requires a context.
    static func context(_ item: inout VaultParameters, derived: Bool) throws -> EncryptionContext {
        let context = try bytes(&item, "context")
        let associated = try bytes(&item, "associated_data")
        if derived && context == nil { throw VaultError.badRequest(missingContext) }
        var pairs: [String: String] = [:]
        if let context { pairs[contextKey] = Data(context).base64EncodedString() }
        if let associated { pairs[associatedDataKey] = Data(associated).base64EncodedString() }
        do {
            return try EncryptionContext(pairs)
        } catch {
            throw VaultError.badRequest("context or associated_data is too long: \(error.message)")
        }
    }

    /// The request's items: `batch_input`, or the request itself as the one item.
    private static func items(_ parameters: inout VaultParameters, single: [String]) throws -> (items: [VaultParameters], batch: Bool) {
        // The item's own parameters count as read on the request (for the "ignored" warning) whether it is a batch or not.
        let request = parameters
        for name in single { _ = parameters.raw(name) }
        guard let items = try parameters.objectList("batch_input") else { return ([request], false) }
        guard (1...BatchRequest.maxItems).contains(items.count) else {
            throw VaultError.badRequest("batch_input holds 1 to \(BatchRequest.maxItems) items in kmsd")
        }
        try VaultBatch.checkContexts(items)
        return (items, true)
    }

    private static func reference(_ item: inout VaultParameters) -> String? { (try? item.string("reference")) ?? nil }

    /// A service error for one batch item, in Vault's words.
    private static func itemError(_ error: ServiceError?, action: String) -> VaultError {
        error.map { vaultError($0, action: action) } ?? VaultError(500, "internal error")
    }

    // MARK: - Keys

    func listKeys(_ caller: Caller) async throws -> VaultReply {
        let node = try caller.node(service)
        let keys = configuration.keys
        let usable = Set(service.usableKeys(node, among: Set(keys.values.map(\.key.rawValue)).sorted()))
        let names = keys.filter { usable.contains($0.value.key.rawValue) }.keys.sorted()
        guard !names.isEmpty else { throw VaultError.notFound }
        return .data(["keys": JSONValue(names)])
    }

    func readKey(_ caller: Caller, _ name: String) async throws -> VaultReply {
        let key = try mapping(name, caller, missing: .notFound)
        let node = try caller.node(service)
        let (_, description) = try await service.describeKey(node, key: key.key.rawValue)
        guard !description.versions.isEmpty else { throw VaultError.notFound }
        return .data(await info(name, key, description))
    }

    /// Key information as Vault reports it, plus kmsd's own view of the versions (`kmsd_*`).
    func info(_ name: String, _ key: TransitConfiguration.Key, _ description: KeyDescription) async -> [String: JSONValue] {
        Self.info(name, key, await service.withCreationTimes(description))
    }

    static func info(_ name: String, _ key: TransitConfiguration.Key, _ description: KeyDescription) -> [String: JSONValue] {
        var keys: [String: JSONValue] = [:]
        for version in description.versions {
            keys[String(version.version.rawValue)] = .int(Int(version.createdAt?.timeIntervalSince1970 ?? 0))
        }
        let versions = description.versions.map { version -> JSONValue in
            .object(["version": .int(Int(version.version.rawValue)), "state": .string(version.state.rawValue)])
        }
        return [
            "name": .string(name), "type": "aes256-gcm96", "derived": .bool(key.derived), "convergent_encryption": false,
            "deletion_allowed": false, "exportable": false, "allow_plaintext_backup": false, "imported_key": false,
            "keys": .object(keys), "latest_version": .int(Int(description.latestVersion?.rawValue ?? 0)),
            "min_available_version": 0, "min_decryption_version": .int(Int(description.versions.first?.version.rawValue ?? 1)),
            "min_encryption_version": .int(minEncryptionVersion(description)), "auto_rotate_period": 0, "supports_encryption": true, "supports_decryption": true,
            "supports_derivation": true, "supports_signing": false,
            "kmsd_key": .string(description.name.rawValue), "kmsd_provider": .string(description.provider.description),
            "kmsd_versions": .array(versions),
        ]
    }

    /// A service call's outcome as a value, to branch on the error's code (a `catch … where` on the service's typed
    /// error crashed Swift 6.3.1's compiler in this module).
    static func outcome<T>(_ body: () async throws(ServiceError) -> T) async -> Result<T, ServiceError> {
        do {
            return .success(try await body())
        } catch {
            return .failure(error)
        }
    }

    /// Settings of Vault's keys that kmsd does not take from a request: each refused with the reason.
    static func refuseUnoffered(_ parameters: inout VaultParameters, _ flags: [String], _ key: TransitConfiguration.Key) throws {
        for flag in flags where try parameters.bool(flag) == true {
            throw VaultError.badRequest("kmsd: \(flag) is not offered: keys are not deleted, exported or derived convergently through transit")
        }
        if let period = try parameters.duration("auto_rotate_period"), period != 0 {
            throw VaultError.badRequest("kmsd: rotation is scheduled in kmsd's configuration (keys.\(key.key).rotation), not per request")
        }
    }

    /// Vault's `min_encryption_version` for kmsd's versions: the first version that still wraps when every version
    /// before it is retired (0, Vault's "unset", when none is).
    static func minEncryptionVersion(_ description: KeyDescription) -> Int {
        guard let firstActive = description.versions.first(where: { $0.state == .active }),
              firstActive.version != description.versions.first?.version else { return 0 }
        return Int(firstActive.version.rawValue)
    }

    /// `keys/<name>/config`: only `min_encryption_version`, which retires every version below it through kmsd's own
    /// retirement (with its quiet-period check); retired versions keep decrypting. What would delete, export or
    /// destroy is refused with the reason.
    func configure(_ caller: Caller, _ name: String, _ parameters: inout VaultParameters) async throws -> VaultReply {
        let key = try mapping(name, caller, missing: .badRequest("no existing key named \(name) could be found"))
        let admin = try caller.administrator(service)
        let minimum = try parameters.int("min_encryption_version")
        let minimumDecryption = try parameters.int("min_decryption_version")
        try Self.refuseUnoffered(&parameters, ["deletion_allowed", "exportable", "allow_plaintext_backup"], key)
        var description: KeyDescription
        switch await Self.outcome({ () async throws(ServiceError) in try await service.describeKey(admin, key: key.key.rawValue).1 }) {
        case .success(let found): description = found
        case .failure(let error) where error.kind == .notFound: throw VaultError.badRequest("no existing key named \(name) could be found")
        case .failure(let error): throw error
        }
        if let minimumDecryption, minimumDecryption > Int(description.versions.first?.version.rawValue ?? 1) {
            throw VaultError.badRequest("kmsd: min_decryption_version is not offered: destroying a version is an explicit kmsd admin step")
        }
        if let minimum, minimum != 0 {
            let latest = Int(description.latestVersion?.rawValue ?? 0)
            guard minimum <= latest else {
                throw VaultError.badRequest("cannot set min encryption version of \(minimum), latest key version is \(latest)")
            }
            guard minimum >= Self.minEncryptionVersion(description) else {
                throw VaultError.badRequest("kmsd: a retired version does not wrap again; min_encryption_version cannot be lowered")
            }
            for version in description.versions where version.state == .active && Int(version.version.rawValue) < minimum {
                (_, description) = try await service.retire(admin, key: key.key.rawValue, version: String(version.version.rawValue)) {
                    RetireRequest()
                }
            }
        }
        return .data(await info(name, key, description))
    }

    func createKey(_ caller: Caller, _ name: String, _ parameters: inout VaultParameters) async throws -> VaultReply {
        let key = try mapping(name, caller, missing: .badRequest("kmsd: no transit key named '\(name)' is configured (transit.keys)"))
        let admin = try caller.administrator(service)
        if let type = try parameters.string("type"), type != "aes256-gcm96" {
            throw VaultError.badRequest("kmsd: transit keys are aes256-gcm96; '\(type)' is not offered")
        }
        if let derived = try parameters.bool("derived"), derived != key.derived {
            throw VaultError.badRequest("kmsd: key \(name) is configured with derived: \(key.derived) (transit.keys); a request cannot change it")
        }
        try Self.refuseUnoffered(&parameters, ["exportable", "allow_plaintext_backup", "convergent_encryption"], key)
        switch await Self.outcome({ () async throws(ServiceError) in
            try await service.createKey(admin) { CreateKeyRequest(name: key.key.rawValue) }.1
        }) {
        case .success(let description):
            return .data(await info(name, key, description))
        case .failure(let error) where error.code == .alreadyExists:
            let (_, description) = try await service.describeKey(admin, key: key.key.rawValue)
            return .data(await info(name, key, description), warnings: ["key \(name) already existed"])
        case .failure(let error):
            throw error
        }
    }

    func rotate(_ caller: Caller, _ name: String) async throws -> VaultReply {
        let key = try mapping(name, caller, missing: .badRequest("key not found"))
        let admin = try caller.administrator(service)
        let (_, outcome) = try await service.rotate(admin, key: key.key.rawValue) { RotateRequest(reason: "transit rotate") }
        return .data(await info(name, key, outcome.description))
    }

    // MARK: - Encrypt, decrypt, rewrap, datakey

    func encrypt(_ caller: Caller, _ name: String, _ parameters: inout VaultParameters) async throws -> VaultReply {
        let key = try mapping(name, caller, missing: .badRequest("encryption key not found"))
        let node = try caller.node(service)
        let (items, batch) = try Self.items(&parameters, single: ["plaintext", "context", "associated_data", "key_version"])
        let partialCode = batch ? try VaultParameters.partialFailureCode(&parameters) : nil
        let (requests, references) = try await Self.parseEach(items) { item throws in try Self.encryptItem(&item, key) }
        guard batch else {
            let item = try requests[0].get()
            let wrapped = try await encryptOrUpsert(caller, node, key, [item]) { () async throws(ServiceError) in
                [(try await service.encrypt(node, key: key.key.rawValue) { item }.1, nil)]
            }
            guard let first = wrapped.first, let result = first.0 else { throw Self.encryptError(wrapped.first?.1, requested: item.version) }
            return .data(Self.ciphertext(result))
        }
        let answers = try await Self.runBatch(requests) { valid in
            try await encryptOrUpsert(caller, node, key, valid) { () async throws(ServiceError) in
                try await service.encryptBatch(node, key: key.key.rawValue) { valid }.1
            }
        }
        let results = Self.merge(requests, answers, Self.ciphertext) { item, error in Self.encryptError(error, requested: item.version) }
        return VaultBatch.reply(results, references: references, partialCode: partialCode, allowsPartialCode: true)
    }

    /// One item's `plaintext`, context and `key_version`.
    private static func encryptItem(_ item: inout VaultParameters, _ key: TransitConfiguration.Key) throws -> KMSService.EncryptItem {
        guard let text = try item.string("plaintext") else { throw VaultError.badRequest("missing plaintext to encrypt") }
        let plaintext = try GoBase64.decode(text).get()
        guard plaintext.count <= Envelope.maxPlaintextLength else {
            throw VaultError.badRequest("kmsd: plaintext is \(plaintext.count) bytes; at most \(Envelope.maxPlaintextLength) are accepted")
        }
        let context = try Self.context(&item, derived: key.derived)
        let requested = try item.int("key_version") ?? 0
        guard requested >= 0, let version = UInt32(exactly: requested) else {
            throw VaultError.badRequest("requested version for encryption is higher than the latest key version")
        }
        return .init(plaintext: SecretBytes(copying: plaintext), context: context, version: version == 0 ? nil : try KeyVersion(version))
    }

    /// Vault's upsert: encrypting with a configured key that has no version yet creates version 1 first, for a caller
    /// who may create keys (an administrator, as Vault asks for the create capability); for others the key is not
    /// found. The creation is kmsd's own (`createKey`: journal, rotation schedule) inside this request's audit record.
    private func encryptOrUpsert(
        _ caller: Caller, _ node: KMSService.Node, _ key: TransitConfiguration.Key, _ items: [KMSService.EncryptItem],
        _ encrypt: () async throws(ServiceError) -> [(WrappedKey?, ServiceError?)]
    ) async throws -> [(WrappedKey?, ServiceError?)] {
        let attempt = await Self.outcome(encrypt)
        let missing: Bool = switch attempt {
        case .failure(let error): error.kind == .notFound
        case .success(let answers): answers.allSatisfy { $0.1?.kind == .notFound }
        }
        guard missing, items.allSatisfy({ $0.version == nil }), service.isAdministrator(node) else {
            do {
                return try attempt.get()
            } catch {
                throw Self.encryptError(error, requested: items.first?.version)
            }
        }
        let admin = try caller.administrator(service)
        let created = await Self.outcome { () async throws(ServiceError) in
            _ = try await service.createKey(admin) { CreateKeyRequest(name: key.key.rawValue) }
        }
        if case .failure(let error) = created, error.code != .alreadyExists { throw error }
        return try await encrypt()
    }

    private static func encryptError(_ error: ServiceError?, requested: KeyVersion?) -> VaultError {
        if requested != nil, error?.kind == .notFound {
            return .badRequest("requested version for encryption is higher than the latest key version")
        }
        if error?.code == .versionRetired {
            return .badRequest("requested version for encryption is less than the minimum encryption key version")
        }
        return itemError(error, action: "encrypt")
    }

    private static func ciphertext(_ wrapped: WrappedKey) -> [String: JSONValue] {
        ["ciphertext": .string(TransitCiphertext(version: Int(wrapped.version.rawValue), blob: wrapped.wrapped).text),
         "key_version": .int(Int(wrapped.version.rawValue))]
    }

    private static func plaintext(_ unwrapped: UnwrappedKey) -> [String: JSONValue] {
        ["plaintext": .string(unwrapped.plaintext.withUnsafeBytes { Data($0).base64EncodedString() })]
    }

    /// A ciphertext item as kmsd's unwrap input, decoded once: the envelope inside `vault:v<N>:`, whose version must
    /// be N, and the context.
    private func unwrapItem(_ item: inout VaultParameters, _ key: TransitConfiguration.Key, _ node: KMSService.Node) async throws
        -> KMSService.WrappedInput
    {
        guard let text = try item.string("ciphertext"), !text.isEmpty else { throw VaultError.badRequest("missing ciphertext to decrypt") }
        let parsed = try TransitCiphertext.parse(text, latest: Int.max) { _ in true }
        guard parsed.blob.count >= 12 else { throw VaultError.badRequest("invalid ciphertext length") }
        guard let envelope = try? Envelope(parsing: parsed.blob) else { throw VaultError.badRequest(Self.authenticationFailed) }
        if Int(envelope.header.version.rawValue) != parsed.version {
            // Only on this error path: is the named version beyond the key's latest (Vault's "too new")?
            let (_, description) = try await service.describeKey(node, key: key.key.rawValue)
            if parsed.version > Int(description.latestVersion?.rawValue ?? 0) {
                throw VaultError.badRequest("invalid ciphertext: version is too new")
            }
            throw VaultError.badRequest("invalid ciphertext: the version does not match the kmsd envelope inside")
        }
        return .decoded(wrapped: parsed.blob, context: try Self.context(&item, derived: key.derived))
    }

    func decrypt(_ caller: Caller, _ name: String, _ parameters: inout VaultParameters) async throws -> VaultReply {
        try await opening(caller, name, &parameters, action: "decrypt", partialCodes: true, failureFields: ["plaintext": ""],
                          answer: Self.plaintext, single: { node, key, item in try await service.unwrap(node, key: key) { item }.1 },
                          batch: { node, key, items in try await service.unwrapBatch(node, key: key) { items }.1 })
    }

    func rewrap(_ caller: Caller, _ name: String, _ parameters: inout VaultParameters) async throws -> VaultReply {
        // Vault's rewrap batch answers 200 with each item's error: no partial failure code.
        try await opening(caller, name, &parameters, action: "rewrap", partialCodes: false, failureFields: [:],
                          answer: Self.ciphertext, single: { node, key, item in try await service.rewrap(node, key: key) { item }.1 },
                          batch: { node, key, items in try await service.rewrapBatch(node, key: key) { items }.1 })
    }

    /// Decrypt and rewrap: each opens ciphertexts (one, or a batch) and answers each with `answer`.
    private func opening<Answer>(
        _ caller: Caller, _ name: String, _ parameters: inout VaultParameters, action: String, partialCodes: Bool,
        failureFields: [String: JSONValue], answer: (Answer) -> [String: JSONValue],
        single: (KMSService.Node, String, KMSService.WrappedInput) async throws -> Answer,
        batch: (KMSService.Node, String, [KMSService.WrappedInput]) async throws -> [(Answer?, ServiceError?)]
    ) async throws -> VaultReply {
        let key = try mapping(name, caller, missing: .badRequest("encryption key not found"))
        let node = try caller.node(service)
        let (items, isBatch) = try Self.items(&parameters, single: ["ciphertext", "context", "associated_data"])
        let partialCode = isBatch && partialCodes ? try VaultParameters.partialFailureCode(&parameters) : nil
        let (requests, references) = try await unwrapItems(items, key, node)
        guard isBatch else { return .data(answer(try await single(node, key.key.rawValue, try requests[0].get()))) }
        let answers = try await Self.runBatch(requests) { valid in try await batch(node, key.key.rawValue, valid) }
        let results = Self.merge(requests, answers, answer) { _, error in Self.itemError(error, action: action) }
        return VaultBatch.reply(results, references: references, partialCode: partialCode, allowsPartialCode: partialCodes,
                                failureFields: failureFields)
    }

    /// Each item's ciphertext and context; an item that does not parse is that item's error (a single request's too:
    /// the caller throws it). The key's description on a version mismatch can fail too: an outage ends the request.
    private func unwrapItems(_ items: [VaultParameters], _ key: TransitConfiguration.Key, _ node: KMSService.Node) async throws
        -> ([Result<KMSService.WrappedInput, VaultError>], [String?])
    {
        try await Self.parseEach(items) { item in
            do {
                return try await unwrapItem(&item, key, node)
            } catch let error as ServiceError {
                if error.kind == .unavailable { throw error }
                throw Self.vaultError(error, action: "decrypt")
            }
        }
    }

    /// Each item parsed by `parse`, its Vault-shaped refusal kept as that item's result, with its `reference`.
    private static func parseEach<Request>(_ items: [VaultParameters], _ parse: (inout VaultParameters) async throws -> Request)
        async throws -> ([Result<Request, VaultError>], [String?])
    {
        var requests: [Result<Request, VaultError>] = []
        var references: [String?] = []
        for var item in items {
            references.append(Self.reference(&item))
            do {
                requests.append(.success(try await parse(&item)))
            } catch let error as VaultError {
                requests.append(.failure(error))
            }
        }
        return (requests, references)
    }

    /// Runs the service's batch on the items that parsed (none: no call).
    private static func runBatch<Request, Answer>(_ requests: [Result<Request, VaultError>],
                                                  _ call: ([Request]) async throws -> [(Answer?, ServiceError?)]) async throws
        -> [(Answer?, ServiceError?)]
    {
        let valid = requests.compactMap { try? $0.get() }
        return valid.isEmpty ? [] : try await call(valid)
    }

    /// The service's answers for the items that parsed, put back in order between the items that did not; a failed
    /// item's error in Vault's words by `failure`.
    private static func merge<Request, Answer>(
        _ requests: [Result<Request, VaultError>], _ answers: [(Answer?, ServiceError?)], _ fields: (Answer) -> [String: JSONValue],
        _ failure: (Request, ServiceError?) -> VaultError
    ) -> [Result<[String: JSONValue], VaultError>] {
        var results: [Result<[String: JSONValue], VaultError>] = []
        var answered = 0
        for request in requests {
            switch request {
            case .failure(let error):
                results.append(.failure(error))
            case .success(let item):
                let (answer, error) = answered < answers.count ? answers[answered] : (nil, nil)
                answered += 1
                results.append(answer.map { .success(fields($0)) } ?? .failure(failure(item, error)))
            }
        }
        return results
    }

    func datakey(_ caller: Caller, _ kind: String, _ name: String, _ parameters: inout VaultParameters) async throws -> VaultReply {
        guard kind == "plaintext" || kind == "wrapped" else { throw VaultError.badRequest("Invalid path, must be 'plaintext' or 'wrapped'") }
        let bits = try parameters.int("bits") ?? 256
        guard [128, 256, 512].contains(bits) else { throw VaultError.badRequest("invalid bit length") }
        let key = try mapping(name, caller, missing: .badRequest("encryption key not found"))
        let node = try caller.node(service)
        let context = try Self.context(&parameters, derived: key.derived)
        if let version = try parameters.int("key_version"), version != 0 {
            throw VaultError.badRequest("kmsd: a data key is always wrapped under the key's wrapping version; key_version is not offered")
        }
        let (_, dataKey) = try await service.dataKey(node, key: key.key.rawValue, length: bits / 8) {
            DataKeyRequest(context: context.isEmpty ? nil : context.dictionary)
        }
        var fields = Self.ciphertext(WrappedKey(key: dataKey.key, version: dataKey.version, wrapped: dataKey.wrapped))
        if kind == "plaintext" { fields["plaintext"] = .string(dataKey.plaintext.withUnsafeBytes { Data($0).base64EncodedString() }) }
        return .data(fields)
    }

    // MARK: - Tokens

    func login(_ caller: Caller) throws -> VaultReply {
        // A certificate login: the certificate must authenticate now, as for any request on kmsd's API.
        let node = try service.authenticateNode(caller.peer)
        let issued: (token: String, entry: TransitTokens.Entry)
        do {
            let settings = configuration
            issued = try tokens.issue(for: node.identity, ttl: settings.loginTTL, maxLogins: settings.maxLoginTokens)
        } catch {
            service.events.record("transit_logins_full")
            throw VaultError(503, "kmsd: every login token slot (transit.max_login_tokens) is in use; try again later")
        }
        let (token, entry) = issued
        return .data(nil, auth: authBlock(token, entry))
    }

    private func authBlock(_ token: String, _ entry: TransitTokens.Entry) -> [String: JSONValue] {
        [
            "client_token": .string(token), "accessor": .string(Self.accessor(token)), "policies": JSONValue(entry.policies),
            "token_policies": JSONValue(entry.policies), "metadata": .object(["identity": .string(entry.identity.description)]),
            "lease_duration": .int(Self.remaining(entry)), "renewable": .bool(entry.renewable), "entity_id": "",
            "token_type": "service", "orphan": true, "mfa_requirement": nil, "num_uses": 0,
        ]
    }

    /// A public handle for a token (its hash's first bytes), never the token.
    static func accessor(_ token: String) -> String { Hex.encode(TransitConfiguration.hash(token).prefix(12)) }

    static func remaining(_ entry: TransitTokens.Entry) -> Int {
        entry.expiresAt.map { max(0, Int($0.timeIntervalSinceNow.rounded())) } ?? 0
    }

    func lookupSelf(_ caller: Caller) throws -> VaultReply {
        guard let entry = caller.entry, let token = caller.token else {
            // A certificate without a token: its identity, checked now.
            let node = try caller.node(service)
            return .data(["id": "", "accessor": "", "policies": ["default"], "path": "auth/cert/login",
                          "meta": .object(["identity": .string(node.identity.description)]),
                          "display_name": .string("cert-" + node.identity.description), "num_uses": 0, "orphan": true,
                          "creation_ttl": 0, "ttl": 0, "expire_time": nil, "explicit_max_ttl": 0, "entity_id": "", "type": "service"])
        }
        // Rate-limited as the identity the token stands for.
        _ = try caller.node(service)
        let formatter = Date.ISO8601FormatStyle(includingFractionalSeconds: true)
        var data: [String: JSONValue] = [
            "id": "", "accessor": .string(Self.accessor(token)), "policies": JSONValue(entry.policies),
            "path": entry.login ? "auth/cert/login" : "auth/token/create",
            "meta": .object(["identity": .string(entry.identity.description)]),
            "display_name": .string((entry.login ? "cert-" : "token-") + entry.identity.description), "num_uses": 0, "orphan": true,
            "creation_time": .int(Int(entry.issuedAt.timeIntervalSince1970)),
            "creation_ttl": .int(Int(entry.ttl?.seconds ?? 0)), "expire_time": JSONValue(entry.expiresAt.map { formatter.format($0) }),
            "ttl": .int(Self.remaining(entry)), "explicit_max_ttl": 0, "entity_id": "", "type": "service",
        ]
        if entry.expiresAt != nil {
            data["renewable"] = .bool(entry.renewable)
            data["issue_time"] = .string(formatter.format(entry.issuedAt))
        }
        return .data(data)
    }

    func renewSelf(_ caller: Caller) throws -> VaultReply {
        guard caller.entry != nil, let token = caller.token else { throw VaultError.badRequest("invalid lease ID") }
        _ = try caller.node(service)
        do {
            let (entry, capped) = try tokens.renew(token)
            let warnings = capped ? ["TTL of the renewal exceeded the token's max_ttl; TTL value is capped accordingly"] : []
            return .data(nil, warnings: warnings, auth: authBlock(token, entry))
        } catch .noExpiry {
            throw VaultError.badRequest("invalid lease ID")
        } catch .notRenewable {
            throw VaultError.badRequest("lease is not renewable")
        }
    }
}
