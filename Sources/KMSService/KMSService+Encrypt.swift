import Foundation
public import KMSCore
import KMSAPI
import KMSAudit
import KMSRotation

/// Operations that front ends other than kmsd's API need: wrapping a caller's own secret (Vault transit's `encrypt`)
/// and reading a key's versions as a storage node allowed to use it (transit's `GET keys/<name>`). Same rules as the
/// other node operations: authorized per key, under the request deadline, usage counted, one audit record.
extension KMSService {
    /// One secret to wrap: its bytes (at most `Envelope.maxPlaintextLength`), its context, and the version to wrap
    /// under (nil: the wrapping version).
    public struct EncryptItem: Sendable {
        public let plaintext: SecretBytes
        public let context: EncryptionContext
        public let version: KeyVersion?
        public init(plaintext: SecretBytes, context: EncryptionContext, version: KeyVersion? = nil) {
            self.plaintext = plaintext
            self.context = context
            self.version = version
        }
    }

    /// Wraps the secret under the key (its version, or the wrapping version), bound to its context.
    public func encrypt(_ node: Node, key nameText: String, input: () async throws -> EncryptItem) async throws(ServiceError)
        -> (KeyName, WrappedKey)
    {
        try await single("encrypt", node, nameText, input, version: \.version, encryptOne)
    }

    /// One answer per item, in order: its result or its error. A backend outage ends the batch with that error.
    public func encryptBatch(_ node: Node, key nameText: String, input: () async throws -> [EncryptItem]) async throws(ServiceError)
        -> (KeyName, [(WrappedKey?, ServiceError?)])
    {
        try await batch("encrypt_batch", node, nameText, input, encryptOne)
    }

    private func encryptOne(_ key: KMSServerPolicy.Key, _ item: EncryptItem, _ outcome: inout AuditEvent.ItemOutcome) async throws -> WrappedKey {
        outcome.contextDigest = AuditNote.digest(item.context)
        let (provider, name) = (key.provider, key.name)
        let wrapped = try await perform { try await provider.wrap(name, plaintext: item.plaintext, context: item.context, version: item.version) }
        outcome.version = wrapped.version.rawValue
        return wrapped
    }

    /// The key's versions, for a storage node allowed to use it (audited as `describe`).
    public func describeKey(_ node: Node, key nameText: String) async throws(ServiceError) -> (KeyName, KeyDescription) {
        try await audited(.keyAccess, "describe") {
            let key = try authorizeKey(node, nameText, policy: policy)
            let provider = key.provider
            let name = key.name
            return (name, try await perform { try await provider.describeKey(name) })
        }
    }

    /// `description` with each version's creation time as kmsd recorded it where the backend keeps none (PKCS#11), for
    /// a front end that reports it (Vault's key information). Unchanged when kmsd has no record of the key.
    public func withCreationTimes(_ description: KeyDescription) async -> KeyDescription {
        guard let (_, entries) = try? await rotation.versions(description.name) else { return description }
        var times: [KeyVersion: Date] = [:]
        for entry in entries { times[entry.version] = entry.createdAt }
        return KeyDescription(name: description.name, provider: description.provider, versions: description.versions.map {
            KeyVersionInfo(version: $0.version, state: $0.state, createdAt: $0.createdAt ?? times[$0.version], keyID: $0.keyID)
        })
    }

    /// Whether the node's identity is one of `admin.identities` now (no refusal recorded when it is not): a front end
    /// asks before offering an administrator's extra (Vault's upsert) to a caller. The administrator itself is still
    /// authenticated as one (`authenticateAdmin`) before anything is done.
    public func isAdministrator(_ node: Node) -> Bool {
        administers(node.identity, policy: policy)
    }

    /// Which of `names` the node may use (by the policy in force, with the node CAs as `authorizeKey` checks them),
    /// for a front end's key listing.
    public func usableKeys(_ node: Node, among names: [String]) -> [String] {
        let policy = policy
        return names.filter { text in
            guard let name = try? KeyName(text), let key = policy.keys[name] else { return false }
            return mayUse(node, key, policy: policy)
        }
    }
}
