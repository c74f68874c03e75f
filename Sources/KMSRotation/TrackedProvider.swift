import Foundation
public import KMSCore

/// A provider as the API serves it: every wrap takes one of its version's `max_wraps` from the budget reserved in the
/// state store and is counted, a usage-triggered rotation runs when the latest version's budget is used up, and wraps
/// are refused at `max_wraps` or past `max_age` while rotation fails (`RotationManager.wrapping`). Unwraps are
/// counted.
/// Everything else passes through unchanged.
public struct TrackedProvider: KeyProvider {
    public let inner: any KeyProvider
    public let manager: RotationManager

    public init(_ inner: any KeyProvider, manager: RotationManager) {
        self.inner = inner
        self.manager = manager
    }

    public var kind: ProviderKind { inner.kind }

    public func createKey(_ name: KeyName) async throws -> KeyDescription { try await inner.createKey(name) }
    public func describeKey(_ name: KeyName) async throws -> KeyDescription { try await inner.describeKey(name) }
    public func listKeys() async throws -> [KeyName] { try await inner.listKeys() }

    public func generateDataKey(_ name: KeyName, context: EncryptionContext, version: KeyVersion?) async throws -> DataKey {
        try await manager.wrapping(name, version: version) { chosen in
            try await inner.generateDataKey(name, context: context, version: chosen)
        }
    }

    public func wrap(_ name: KeyName, plaintext: SecretBytes, context: EncryptionContext, version: KeyVersion?) async throws -> WrappedKey {
        try await manager.wrapping(name, version: version) { chosen in
            try await inner.wrap(name, plaintext: plaintext, context: context, version: chosen)
        }
    }

    public func unwrap(_ name: KeyName, wrapped: [UInt8], context: EncryptionContext) async throws -> UnwrappedKey {
        let unwrapped = try await inner.unwrap(name, wrapped: wrapped, context: context)
        manager.didUnwrap(name, version: unwrapped.version)
        return unwrapped
    }

    public func rotateKey(_ name: KeyName) async throws -> KeyVersionInfo { try await inner.rotateKey(name) }
    public func retireVersion(_ name: KeyName, version: KeyVersion) async throws { try await inner.retireVersion(name, version: version) }
    public func destroyVersion(_ name: KeyName, version: KeyVersion) async throws { try await inner.destroyVersion(name, version: version) }
    public func health() async -> ProviderHealth { await inner.health() }
    public func shutdown() async { await inner.shutdown() }
    public func reloadCredential(_ credential: SecretBytes) { inner.reloadCredential(credential) }
}
