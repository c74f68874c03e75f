import Crypto
public import Foundation
public import KMSCore
import Synchronization

/// A key provider in process memory, for tests above the provider layer (the service, the routes, rotation rules)
/// that need no HSM and can run in parallel. Envelopes are real (format v1, provider kind `in-memory`, AES-256-GCM
/// with the header and canonical context as AAD), so a wrong context or a moved blob fails as it does on a token.
/// Never configured by kmsd: production and development configurations refuse `in-memory`.
///
/// `faults` lets a test make the next calls fail or hang, as the fault shim does for PKCS#11.
public final class InMemoryKeyProvider: KeyProvider {
    public struct Faults: Sendable {
        /// Rotations fail with `unavailable` (the backend cannot create keys).
        public var rotationFails = false
        /// Every operation waits this long first.
        public var delay: Duration?
        /// Every operation fails with `unavailable`.
        public var down = false
        /// The next this many operations fail with `unavailable` (a short outage a client's retries ride out).
        public var failNext = 0
        /// Every operation waits for this first (a test holds the backend at an exact point, then lets it go on).
        public var gate: (@Sendable () async -> Void)?
        public init() {}
    }

    private struct Version {
        let info: KeyVersionInfo
        let key: SymmetricKey
        var retired: Bool
    }

    private let keys = Mutex<[KeyName: [Version]]>([:])
    private let faultState = Mutex(Faults())
    private let calls = Mutex(0)

    public let kind = ProviderKind.inMemory
    /// When a version is created (tests of rotation schedules pass their manual clock).
    private let now: @Sendable () -> Date

    public init(now: @escaping @Sendable () -> Date = { Date() }) {
        self.now = now
    }

    public var faults: Faults {
        get { faultState.withLock { $0 } }
        set { faultState.withLock { $0 = newValue } }
    }

    /// Calls made to this provider so far (for tests that prove a request never reached the backend).
    public var callCount: Int { calls.withLock { $0 } }

    private func enter() async throws {
        calls.withLock { $0 += 1 }
        let faults = faultState.withLock { faults in
            let now = faults
            faults.failNext = max(0, faults.failNext - 1)
            return now
        }
        if let gate = faults.gate { await gate() }
        if let delay = faults.delay { try await Task.sleep(for: delay) }
        if faults.down || faults.failNext > 0 { throw KMSError.unavailable("the in-memory backend is down (test fault)") }
    }

    private func newVersion(_ number: KeyVersion) -> Version {
        var id = [UInt8](repeating: 0, count: 16)
        for index in id.indices { id[index] = UInt8.random(in: 0...255) }
        return Version(info: KeyVersionInfo(version: number, state: .active, createdAt: now(), keyID: id),
                       key: SymmetricKey(size: .bits256), retired: false)
    }

    private func describe(_ name: KeyName, _ versions: [Version]) -> KeyDescription {
        KeyDescription(name: name, provider: kind, versions: versions.map {
            KeyVersionInfo(version: $0.info.version, state: $0.retired ? .retired : .active, createdAt: $0.info.createdAt, keyID: $0.info.keyID)
        })
    }

    public func createKey(_ name: KeyName) async throws -> KeyDescription {
        try await enter()
        return try keys.withLock { keys in
            guard keys[name] == nil else { throw KMSError.alreadyExists("key '\(name)' already exists") }
            keys[name] = [newVersion(.first)]
            return describe(name, keys[name] ?? [])
        }
    }

    public func describeKey(_ name: KeyName) async throws -> KeyDescription {
        try await enter()
        return try describe(name, versions(name))
    }

    public func listKeys() async throws -> [KeyName] {
        try await enter()
        return keys.withLock { Array($0.keys) }.sorted()
    }

    private func versions(_ name: KeyName) throws -> [Version] {
        guard let versions = keys.withLock({ $0[name] }) else { throw KMSError.notFound("key '\(name)' does not exist") }
        return versions
    }

    public func generateDataKey(_ name: KeyName, context: EncryptionContext, version: KeyVersion?) async throws -> DataKey {
        let plaintext = SecretBytes.random(count: DataKey.length)
        let wrapped = try await wrap(name, plaintext: plaintext, context: context, version: version)
        return DataKey(key: name, version: wrapped.version, plaintext: plaintext, wrapped: wrapped.wrapped)
    }

    public func wrap(_ name: KeyName, plaintext: SecretBytes, context: EncryptionContext, version: KeyVersion?) async throws -> WrappedKey {
        try await enter()
        let all = try versions(name)
        let chosen: Version
        if let version {
            guard let found = all.first(where: { $0.info.version == version }) else {
                throw KMSError.notFound("key '\(name)' has no version \(version.rawValue)")
            }
            guard !found.retired else { throw KMSError.versionRetired("\(version) of key '\(name)' is retired") }
            chosen = found
        } else {
            guard let latest = all.last(where: { !$0.retired }) else {
                throw KMSError.versionRetired("every version of key '\(name)' is retired")
            }
            chosen = latest
        }
        let header = try EnvelopeHeader(provider: kind, keyName: name, version: chosen.info.version, keyID: chosen.info.keyID)
        let sealed = try plaintext.withUnsafeBytes { bytes in
            try AES.GCM.seal(Data(bytes), using: chosen.key, authenticating: header.additionalData(context: context))
        }
        let envelope = try Envelope(header: header, iv: Array(sealed.nonce), ciphertext: Array(sealed.ciphertext + sealed.tag))
        return WrappedKey(key: name, version: chosen.info.version, wrapped: envelope.bytes)
    }

    public func unwrap(_ name: KeyName, wrapped: [UInt8], context: EncryptionContext) async throws -> UnwrappedKey {
        try await enter()
        let envelope = try Envelope(parsing: wrapped, madeBy: kind, backend: "an in-memory key", for: name)
        let header = envelope.header
        guard let version = try versions(name).first(where: { $0.info.keyID == header.keyID && $0.info.version == header.version }) else {
            throw KMSError.notFound("\(header.version) of key '\(name)' does not exist")
        }
        guard envelope.ciphertext.count >= 16 else { throw KMSError.invalidInput("the wrapped key is too short") }
        do {
            let box = try AES.GCM.SealedBox(
                nonce: AES.GCM.Nonce(data: envelope.iv), ciphertext: envelope.ciphertext.dropLast(16), tag: envelope.ciphertext.suffix(16))
            let plaintext = try AES.GCM.open(box, using: version.key, authenticating: header.additionalData(context: context))
            return UnwrappedKey(key: name, version: header.version, plaintext: SecretBytes(count: plaintext.count) { $0.copyBytes(from: plaintext) })
        } catch {
            throw KMSError.authenticationFailed()
        }
    }

    public func rotateKey(_ name: KeyName) async throws -> KeyVersionInfo {
        try await enter()
        if faults.rotationFails { throw KMSError.unavailable("the in-memory backend cannot create keys (test fault)") }
        return try keys.withLock { keys in
            guard let versions = keys[name], let latest = versions.last else { throw KMSError.notFound("key '\(name)' does not exist") }
            let next = newVersion(try latest.info.version.next())
            keys[name] = versions + [next]
            return next.info
        }
    }

    public func retireVersion(_ name: KeyName, version: KeyVersion) async throws {
        try await enter()
        try keys.withLock { keys in
            guard var versions = keys[name], let index = versions.firstIndex(where: { $0.info.version == version }) else {
                throw KMSError.notFound("key '\(name)' has no version \(version.rawValue)")
            }
            if versions.last(where: { !$0.retired })?.info.version == version {
                throw KMSError.conflict("\(version) is the version '\(name)' wraps with; rotate first")
            }
            versions[index].retired = true
            keys[name] = versions
        }
    }

    public func destroyVersion(_ name: KeyName, version: KeyVersion) async throws {
        try await enter()
        try keys.withLock { keys in
            guard let versions = keys[name], let found = versions.first(where: { $0.info.version == version }) else {
                throw KMSError.notFound("key '\(name)' has no version \(version.rawValue)")
            }
            guard found.retired else { throw KMSError.conflict("retire \(version) of '\(name)' before destroying it") }
            keys[name] = versions.filter { $0.info.version != version }
        }
    }

    public func health() async -> ProviderHealth {
        faults.down ? ProviderHealth(state: .unavailable, lastError: "down (test fault)", breaker: .open)
                    : ProviderHealth(state: .ok, breaker: .closed)
    }

    public func shutdown() async {}
}
