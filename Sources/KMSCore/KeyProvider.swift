public import Foundation

/// A freshly generated data-encryption key: the plaintext for the caller and the envelope to store beside the data.
public struct DataKey: Sendable {
    /// DEKs are AES-256 keys.
    public static let length = 32
    public let key: KeyName
    public let version: KeyVersion
    public let plaintext: SecretBytes
    /// Envelope v1 bytes.
    public let wrapped: [UInt8]

    public init(key: KeyName, version: KeyVersion, plaintext: SecretBytes, wrapped: [UInt8]) {
        self.key = key
        self.version = version
        self.plaintext = plaintext
        self.wrapped = wrapped
    }
}

/// A secret wrapped under a KEK version (envelope v1 bytes).
public struct WrappedKey: Sendable, Equatable {
    public let key: KeyName
    public let version: KeyVersion
    public let wrapped: [UInt8]

    public init(key: KeyName, version: KeyVersion, wrapped: [UInt8]) {
        self.key = key
        self.version = version
        self.wrapped = wrapped
    }
}

/// A secret recovered from an envelope, with the version that wrapped it.
public struct UnwrappedKey: Sendable {
    public let key: KeyName
    public let version: KeyVersion
    public let plaintext: SecretBytes

    public init(key: KeyName, version: KeyVersion, plaintext: SecretBytes) {
        self.key = key
        self.version = version
        self.plaintext = plaintext
    }
}

/// What a provider says about its backend, for readiness and status.
public struct ProviderHealth: Sendable, Equatable {
    public enum State: String, Sendable, Codable {
        /// Serving.
        case ok
        /// Serving, but something needs attention (e.g. recovering sessions).
        case degraded
        /// Refusing requests (fail closed) until the backend is back.
        case unavailable
    }

    /// A provider's circuit breaker: open while it refuses at once instead of calling the backend.
    public enum Breaker: String, Sendable, Codable {
        case closed, open
    }

    /// A session pool's counts (PKCS#11).
    public struct Sessions: Sendable, Equatable {
        public var max: Int
        public var open: Int
        public var idle: Int
        /// Leased to a call now.
        public var busy: Int { Swift.max(0, open - idle) }
        /// Callers waiting for a session.
        public var waiters: Int
        public init(max: Int, open: Int, idle: Int, waiters: Int) {
            self.max = max
            self.open = open
            self.idle = idle
            self.waiters = waiters
        }
    }

    public let state: State
    /// The last backend error, without secrets.
    public let lastError: String?
    public let lastErrorAt: Date?
    public let lastSuccessAt: Date?
    /// The breaker's state, for providers that have one.
    public let breaker: Breaker?
    /// The session pool's counts, for providers that have one.
    public let sessions: Sessions?
    /// Provider-specific facts for people (token label, address, reconnect attempts, …); metrics and readiness read
    /// the typed fields, never these.
    public let details: [String: String]

    public init(state: State, lastError: String? = nil, lastErrorAt: Date? = nil, lastSuccessAt: Date? = nil,
                breaker: Breaker? = nil, sessions: Sessions? = nil, details: [String: String] = [:]) {
        self.state = state
        self.lastError = lastError
        self.lastErrorAt = lastErrorAt
        self.lastSuccessAt = lastSuccessAt
        self.breaker = breaker
        self.sessions = sessions
        self.details = details
    }
}

/// A backend that holds versioned key-encryption keys and wraps data keys under them.
///
/// Every method throws `KMSError` only. Implementations fail closed: when the backend cannot answer they throw
/// `.unavailable`, and never answer from a fallback key or a stale cache. Providers are `Sendable` and may be called
/// concurrently from any task; blocking backends move their work off the cooperative pool themselves.
public protocol KeyProvider: Sendable {
    /// The kind recorded in envelopes this provider makes.
    var kind: ProviderKind { get }

    /// Creates version 1 of a new key. Throws `.alreadyExists` if the key has any version.
    func createKey(_ name: KeyName) async throws -> KeyDescription
    /// The key's versions as the backend has them now. Throws `.notFound` for an unknown key.
    func describeKey(_ name: KeyName) async throws -> KeyDescription
    /// Every key this provider manages.
    func listKeys() async throws -> [KeyName]

    /// Generates a DEK (`DataKey.length` bytes) and wraps it under `version` (or the wrapping version when `nil`),
    /// binding `context`. Throws `.versionRetired` for a retired version.
    func generateDataKey(_ name: KeyName, context: EncryptionContext, version: KeyVersion?) async throws -> DataKey
    /// Wraps a caller-supplied secret under `version` (or the wrapping version when `nil`). Throws
    /// `.versionRetired` for a retired version.
    func wrap(_ name: KeyName, plaintext: SecretBytes, context: EncryptionContext, version: KeyVersion?) async throws
        -> WrappedKey
    /// Unwraps an envelope made for `name` with exactly this `context`. A malformed, tampered, misdirected or
    /// wrong-context envelope throws `.invalidInput`; a destroyed version `.notFound`.
    func unwrap(_ name: KeyName, wrapped: [UInt8], context: EncryptionContext) async throws -> UnwrappedKey

    /// Creates the next version, which becomes the wrapping version.
    func rotateKey(_ name: KeyName) async throws -> KeyVersionInfo
    /// Stops `version` from wrapping; it keeps unwrapping. Retiring the wrapping version is refused (`.conflict`):
    /// rotate first.
    func retireVersion(_ name: KeyName, version: KeyVersion) async throws
    /// Destroys `version` for good: envelopes made with it can never be unwrapped again. Only on explicit request.
    func destroyVersion(_ name: KeyName, version: KeyVersion) async throws

    /// The backend's state, without blocking on it for long.
    func health() async -> ProviderHealth

    // MARK: Lifecycle

    /// Releases what the provider holds (sessions, threads, connections). Called once, at shutdown; calls after it
    /// fail.
    func shutdown() async

    /// The provider's login secret, read again from its source at a reload (SIGHUP). A provider that logs in with one
    /// (the PKCS#11 PIN) uses it for its next login; the default ignores it.
    func reloadCredential(_ credential: SecretBytes)
}

extension KeyProvider {
    public func reloadCredential(_ credential: SecretBytes) {}
}

extension KeyProvider {
    /// Generates a DEK wrapped under the wrapping version.
    public func generateDataKey(_ name: KeyName, context: EncryptionContext) async throws -> DataKey {
        try await generateDataKey(name, context: context, version: nil)
    }

    /// Wraps under the wrapping version.
    public func wrap(_ name: KeyName, plaintext: SecretBytes, context: EncryptionContext) async throws -> WrappedKey {
        try await wrap(name, plaintext: plaintext, context: context, version: nil)
    }

    /// Unwraps `wrapped` and wraps the secret again under the wrapping version, inside kmsd (the secret never leaves
    /// this process). `newContext` defaults to the same context.
    public func rewrap(_ name: KeyName, wrapped: [UInt8], context: EncryptionContext, newContext: EncryptionContext? = nil)
        async throws -> WrappedKey
    {
        let unwrapped = try await unwrap(name, wrapped: wrapped, context: context)
        return try await wrap(name, plaintext: unwrapped.plaintext, context: newContext ?? context, version: nil)
    }
}
