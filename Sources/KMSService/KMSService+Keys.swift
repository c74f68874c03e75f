public import KMSAPI
import KMSAudit
public import KMSCore
import Logging

/// The storage-node operations, for an authenticated `Node`. Each authorizes the node for the key before it asks
/// the front end for the request's input (`input`), so an unauthorized caller's body is never read.
extension KMSService {
    /// A new DEK under the key's wrapping version, bound to the context. DEKs are `DataKey.length` bytes, made by the
    /// provider (the HSM's generator); a front end that offers other lengths (Vault transit's 128 and 512 bits) gets
    /// them from the operating system's generator, wrapped the same way.
    public func dataKey(_ node: Node, key nameText: String, length: Int = DataKey.length, input: () async throws -> DataKeyRequest)
        async throws(ServiceError) -> (KeyName, DataKey)
    {
        try await audited(.keyAccess, "datakey") {
            let policy = policy
            let key = try authorizeKey(node, nameText, policy: policy)
            let encryption = try context(try await input().context)
            AuditNote.context(encryption)
            let (provider, name) = (key.provider, key.name)
            let dataKey = try await perform {
                guard length != DataKey.length else { return try await provider.generateDataKey(name, context: encryption) }
                let plaintext = SecretBytes.random(count: length)
                let wrapped = try await provider.wrap(name, plaintext: plaintext, context: encryption, version: nil)
                return DataKey(key: name, version: wrapped.version, plaintext: plaintext, wrapped: wrapped.wrapped)
            }
            AuditNote.version(dataKey.version)
            logger.debug("datakey", metadata: ["identity": "\(node.identity)", "key": "\(key.name)", "version": "\(dataKey.version)"])
            return (key.name, dataKey)
        }
    }

    /// A wrapped key to open: as kmsd's API sends it (base64 and a string map, decoded per item, so a bad item of a
    /// batch fails alone), or already decoded by another front end (which parsed it from its own wire format).
    public enum WrappedInput: Sendable {
        case request(UnwrapRequest)
        case decoded(wrapped: [UInt8], context: EncryptionContext)
    }

    public func unwrap(_ node: Node, key nameText: String, input: () async throws -> WrappedInput) async throws(ServiceError)
        -> (KeyName, UnwrappedKey)
    {
        try await single("unwrap", node, nameText, input, version: \.version, unwrapOne)
    }

    /// Unwraps and wraps again under the wrapping version, keeping the context.
    public func rewrap(_ node: Node, key nameText: String, input: () async throws -> WrappedInput) async throws(ServiceError)
        -> (KeyName, WrappedKey)
    {
        try await single("rewrap", node, nameText, input, version: \.version, rewrapOne)
    }

    /// One answer per item, in order: its result or its error. A backend outage ends the batch with that error.
    public func unwrapBatch(_ node: Node, key nameText: String, input: () async throws -> [WrappedInput]) async throws(ServiceError)
        -> (KeyName, [(UnwrappedKey?, ServiceError?)])
    {
        try await batch("unwrap_batch", node, nameText, input, unwrapOne)
    }

    public func rewrapBatch(_ node: Node, key nameText: String, input: () async throws -> [WrappedInput]) async throws(ServiceError)
        -> (KeyName, [(WrappedKey?, ServiceError?)])
    {
        try await batch("rewrap_batch", node, nameText, input, rewrapOne)
    }

    typealias ItemOperation<Item, Result> = (KMSServerPolicy.Key, Item, inout AuditEvent.ItemOutcome) async throws -> Result

    /// One item: the record carries its context digest (also when the call fails) and its version.
    func single<Item, Result>(
        _ action: String, _ node: Node, _ nameText: String, _ input: () async throws -> Item,
        version: (Result) -> KeyVersion, _ operation: ItemOperation<Item, Result>
    ) async throws(ServiceError) -> (KeyName, Result) {
        try await audited(.keyAccess, action) {
            let key = try authorizeKey(node, nameText, policy: policy)
            var outcome = AuditEvent.ItemOutcome()
            defer { if let digest = outcome.contextDigest { AuditNote.contextDigest(digest) } }
            let result = try await operation(key, try await input(), &outcome)
            AuditNote.version(version(result))
            logger.debug("\(action)", metadata: ["identity": "\(node.identity)", "key": "\(key.name)", "version": "\(version(result))"])
            return (key.name, result)
        }
    }

    /// 1 to `BatchRequest.maxItems` items, each answered and recorded on its own (`eachItem`).
    func batch<Item, Result: Sendable>(
        _ action: String, _ node: Node, _ nameText: String, _ input: () async throws -> [Item],
        _ operation: ItemOperation<Item, Result>
    ) async throws(ServiceError) -> (KeyName, [(Result?, ServiceError?)]) {
        try await audited(.keyAccess, action) {
            let key = try authorizeKey(node, nameText, policy: policy)
            let items = try await input()
            guard (1...BatchRequest.maxItems).contains(items.count) else {
                throw ServiceError(.badRequest, .invalidInput, "a batch holds 1 to \(BatchRequest.maxItems) items")
            }
            AuditNote.items(items.count)
            return (key.name, try await eachItem(items) { item, outcome in try await operation(key, item, &outcome) })
        }
    }

    /// Runs `operation` on every item in order, answering each with its result or its error, and notes the items'
    /// outcomes for the audit record once at the end (also when an outage cuts the batch short, so the record says
    /// which items ran). An unavailable backend ends the batch: it is down for all of them.
    private func eachItem<Item, Result: Sendable>(
        _ items: [Item],
        _ operation: (Item, inout AuditEvent.ItemOutcome) async throws -> Result
    ) async throws -> [(Result?, ServiceError?)] {
        var answers: [(Result?, ServiceError?)] = []
        var outcomes: [AuditEvent.ItemOutcome] = []
        defer { AuditNote.outcomes(outcomes) }
        for item in items {
            var outcome = AuditEvent.ItemOutcome()
            do {
                let result = try await operation(item, &outcome)
                answers.append((result, nil))
                outcomes.append(outcome)
            } catch {
                let serviceError = Self.classified(error)
                outcome.result = serviceError.isAuthenticationFailure ? .denied : .failed
                outcome.code = serviceError.code.rawValue
                outcomes.append(outcome)
                if serviceError.kind == .unavailable { throw serviceError }
                answers.append((nil, serviceError))
            }
        }
        return answers
    }

    /// One item's wrapped key and context (decoded here when it came from kmsd's API), with what the audit record
    /// shows of it.
    private func itemInput(_ item: WrappedInput, _ outcome: inout AuditEvent.ItemOutcome) throws(ServiceError) -> ([UInt8], EncryptionContext) {
        let (wrapped, encryption): ([UInt8], EncryptionContext)
        switch item {
        case .request(let request): (wrapped, encryption) = (try base64(request.wrapped, field: "wrapped"), try context(request.context))
        case .decoded(let bytes, let context): (wrapped, encryption) = (bytes, context)
        }
        if let envelope = try? Envelope(parsing: wrapped) { outcome.version = envelope.header.version.rawValue }
        outcome.contextDigest = AuditNote.digest(encryption)
        return (wrapped, encryption)
    }

    private func unwrapOne(_ key: KMSServerPolicy.Key, _ item: WrappedInput, _ outcome: inout AuditEvent.ItemOutcome) async throws -> UnwrappedKey {
        try await itemCall(key, item, &outcome, version: { $0.version }) { provider, name, wrapped, context in
            try await provider.unwrap(name, wrapped: wrapped, context: context)
        }
    }

    private func rewrapOne(_ key: KMSServerPolicy.Key, _ item: WrappedInput, _ outcome: inout AuditEvent.ItemOutcome) async throws -> WrappedKey {
        try await itemCall(key, item, &outcome, version: { $0.version }) { provider, name, wrapped, context in
            try await provider.rewrap(name, wrapped: wrapped, context: context)
        }
    }

    /// One item's provider call under the deadline, with its version noted for the audit record.
    private func itemCall<Result: Sendable>(
        _ key: KMSServerPolicy.Key, _ item: WrappedInput, _ outcome: inout AuditEvent.ItemOutcome, version: (Result) -> KeyVersion,
        _ call: @escaping @Sendable (any KeyProvider, KeyName, [UInt8], EncryptionContext) async throws -> Result
    ) async throws -> Result {
        let (wrapped, encryption) = try itemInput(item, &outcome)
        let (provider, name) = (key.provider, key.name)
        let result = try await perform { try await call(provider, name, wrapped, encryption) }
        outcome.version = version(result).rawValue
        return result
    }
}
