import Foundation
public import KMSCore
public import Logging
import NIOHTTP1
import Synchronization

/// Key-encryption keys in Vault's (or OpenBao's) transit engine.
///
/// Wrap = `transit/encrypt` with the envelope header + canonical context as `associated_data`, under an explicit
/// `key_version` (so the version in the authenticated header is the one Vault uses); the DEK comes from the system
/// CSPRNG. Unwrap = `transit/decrypt` of the envelope's nonce and ciphertext with the same AAD. Rewrap happens inside
/// kmsd (decrypt, then encrypt): Vault's own rewrap cannot carry AAD. Rotate = `keys/:name/rotate`; retire raises
/// `min_encryption_version`; destroy raises `min_decryption_version` (Vault keeps the material until an operator
/// trims it; see docs/vault.md).
///
/// Fail closed: unreachable, sealed, token refused, breaker open → `unavailable`. Requests that are safe to repeat
/// are retried on connection errors, 429 and 5xx other than sealed, with jittered backoff.
public final class VaultTransitProvider: KeyProvider {
    public let kind = ProviderKind.vaultTransit
    public let configuration: VaultProviderConfiguration
    let client: VaultClient
    let authenticator: VaultAuthenticator
    private let logger: Logger
    private let state = Mutex(State())

    struct State {
        var latest: [KeyName: (version: KeyVersion, readAt: ContinuousClock.Instant)] = [:]
        var consecutiveFailures = 0
        var openUntil: ContinuousClock.Instant?
        var lastError: String?
        var lastErrorAt: Date?
        var lastSuccessAt: Date?
    }

    public init(_ configuration: VaultProviderConfiguration, logger: Logger = Logger(label: "kmsd.vault")) throws {
        self.configuration = configuration
        self.logger = logger
        client = try VaultClient(configuration: configuration)
        authenticator = VaultAuthenticator(client: client, logger: logger)
    }

    public func shutdown() async {
        await authenticator.stop()
        await client.shutdown()
    }

    /// Logins and renewals so far (for status and tests).
    public var authenticationStatistics: (logins: Int, renewals: Int, tokenFileReads: Int) {
        get async {
            let statistics = await authenticator.statistics
            return (statistics.logins, statistics.renewals, statistics.tokenFileReads)
        }
    }

    // MARK: - Requests

    private enum Retry { case safe, never }

    /// One call to Vault with authentication, retries, the breaker and error mapping. Returns the response for any
    /// status below 400; maps everything else to `KMSError`.
    private func call(
        _ method: HTTPMethod, _ path: String, body: [String: JSONValue]? = nil, retry: Retry, operation: String
    ) async throws -> VaultResponse {
        if let until = state.withLock({ $0.openUntil }), until > .now {
            throw KMSError.unavailable("Vault is unavailable; kmsd is waiting before trying again",
                                       detail: state.withLock { $0.lastError } ?? "")
        }
        var attempt = 0
        var reauthenticated = false
        while true {
            attempt += 1
            do {
                let token = try await authenticator.current()
                let response = try await client.send(method, path, token: token, body: body)
                switch response.status {
                case 200..<400:
                    succeeded()
                    return response
                case 403 where !reauthenticated:
                    reauthenticated = true
                    try await authenticator.rejected(token)
                    continue
                case 503 where response.errorText.contains("sealed"):
                    throw failed(.unavailable("Vault is sealed", detail: "\(operation): HTTP 503"))
                case 429, 500..<600:
                    if retry == .safe && attempt <= configuration.maxRetries {
                        try await backoff(attempt)
                        continue
                    }
                    throw failed(.unavailable("Vault could not \(operation)", detail: "HTTP \(response.status): \(response.errorText)"))
                case 403:
                    throw failed(.unavailable("Vault refused kmsd's token", detail: "\(operation): \(response.errorText)"))
                default:
                    // A 4xx other than 403 is an answer about the request, not about Vault's health.
                    succeeded()
                    return response
                }
            } catch let error as VaultTransportError {
                if case .unreachable = error, retry == .safe, attempt <= configuration.maxRetries {
                    try await backoff(attempt)
                    continue
                }
                if case .malformed = error {
                    throw failed(.internal("Vault sent a response kmsd cannot read while trying to \(operation)",
                                           detail: error.description))
                }
                throw failed(.unavailable("Vault is unreachable", detail: "\(operation): \(error)"))
            }
        }
    }

    private func backoff(_ attempt: Int) async throws {
        let base = configuration.retryBaseDelay * (1 << min(attempt - 1, 6))
        try await Task.sleep(for: base * Double.random(in: 0.5...1.0))
    }

    private func succeeded() {
        state.withLock { state in
            state.consecutiveFailures = 0
            state.openUntil = nil
            state.lastSuccessAt = Date()
        }
    }

    /// Records a failure that says something about Vault's health; opens the breaker after enough in a row.
    private func failed(_ error: KMSError) -> KMSError {
        let opened = state.withLock { state -> Bool in
            state.consecutiveFailures += 1
            state.lastError = error.debugDescription
            state.lastErrorAt = Date()
            if state.consecutiveFailures >= configuration.breakerThreshold {
                state.openUntil = .now + configuration.breakerCooldown
                return true
            }
            return false
        }
        if opened { logger.warning("Vault breaker open", metadata: ["error": "\(error.debugDescription)"]) }
        return error
    }

    private func escaped(_ name: KeyName) -> String { "\(configuration.mount)/keys/\(name.rawValue)" }

    /// The error for a 4xx response to a key operation. Vault's own text never becomes the client's message (it can
    /// name mounts, paths and policies); it goes to the log and the error's operator detail.
    func requestError(_ response: VaultResponse, _ name: KeyName, operation: String) -> KMSError {
        let text = response.errorText
        if response.status == 404 || text.contains("encryption key not found") || text.contains("key not found")
            || text.contains("no existing key named") || text.contains("invalid key name")
        {
            return .notFound("key '\(name)' does not exist in Vault")
        }
        if text.contains("cipher: message authentication failed") {
            return .authenticationFailed()
        }
        if text.contains("disallowed by policy") {
            return .notFound("that version of key '\(name)' has been destroyed (below Vault's min_decryption_version)")
        }
        if text.contains("less than the minimum encryption key version") {
            return .versionRetired("that version of key '\(name)' is retired: it unwraps but no longer wraps")
        }
        logger.notice("Vault refused a request", metadata: ["operation": "\(operation)", "status": "\(response.status)", "error": "\(text)"])
        return .invalidInput("Vault refused to \(operation)", detail: "HTTP \(response.status): \(text)")
    }

    // MARK: - Keys

    private struct KeyInfo {
        let latest: KeyVersion
        let minDecryption: Int
        let minEncryption: Int
        let versions: [(KeyVersion, Date?)]
    }

    private func parseKeyInfo(_ response: VaultResponse, _ name: KeyName) throws -> KeyInfo {
        guard let data = response.data, let latest = data["latest_version"]?.int, latest >= 1,
              let latestVersion = try? KeyVersion(UInt32(clamping: latest)), case .object(let keys)? = data["keys"]
        else {
            throw failed(.internal("Vault's description of key '\(name)' lacks latest_version or keys"))
        }
        var versions: [(KeyVersion, Date?)] = []
        for (text, created) in keys {
            guard let number = UInt32(text), let version = try? KeyVersion(number) else { continue }
            versions.append((version, created.int.map { Date(timeIntervalSince1970: TimeInterval($0)) }))
        }
        let info = KeyInfo(
            latest: latestVersion, minDecryption: data["min_decryption_version"]?.int ?? 1,
            minEncryption: data["min_encryption_version"]?.int ?? 0, versions: versions.sorted { $0.0 < $1.0 })
        state.withLock { $0.latest[name] = (latestVersion, .now) }
        return info
    }

    private func readKey(_ name: KeyName) async throws -> KeyInfo {
        let response = try await call(.GET, escaped(name), retry: .safe, operation: "read key '\(name)'")
        guard response.status == 200 else { throw requestError(response, name, operation: "read the key") }
        return try parseKeyInfo(response, name)
    }

    private func describe(_ name: KeyName, _ info: KeyInfo) -> KeyDescription {
        let versions = info.versions.map { version, created in
            KeyVersionInfo(
                version: version,
                state: Int(version.rawValue) < info.minEncryption ? .retired : .active,
                createdAt: created, keyID: [])
        }
        return KeyDescription(name: name, provider: kind, versions: versions)
    }

    public func createKey(_ name: KeyName) async throws -> KeyDescription {
        // Refuse to adopt a key that exists already: create must mean a new key.
        let existing = try await call(.GET, escaped(name), retry: .safe, operation: "read key '\(name)'")
        if existing.status == 200 { throw KMSError.alreadyExists("key '\(name)' already exists in Vault") }
        let response = try await call(.POST, escaped(name), body: ["type": "aes256-gcm96"], retry: .safe,
                                      operation: "create key '\(name)'")
        guard response.status < 400 else { throw requestError(response, name, operation: "create the key") }
        return describe(name, try await readKey(name))
    }

    public func describeKey(_ name: KeyName) async throws -> KeyDescription {
        describe(name, try await readKey(name))
    }

    public func listKeys() async throws -> [KeyName] {
        let response = try await call(.GET, "\(configuration.mount)/keys?list=true", retry: .safe, operation: "list keys")
        if response.status == 404 { return [] }
        guard response.status == 200, case .array(let names)? = response.data?["keys"] else {
            throw failed(.internal("Vault's key list has no keys field"))
        }
        return names.compactMap { $0.string.flatMap { try? KeyName($0) } }.sorted()
    }

    public func rotateKey(_ name: KeyName) async throws -> KeyVersionInfo {
        // Not retried: a repeated rotate would create two versions.
        let response = try await call(.POST, "\(escaped(name))/rotate", retry: .never, operation: "rotate key '\(name)'")
        guard response.status < 400 else { throw requestError(response, name, operation: "rotate the key") }
        let info = try await readKey(name)
        let created = info.versions.first { $0.0 == info.latest }?.1
        return KeyVersionInfo(version: info.latest, state: .active, createdAt: created, keyID: [])
    }

    public func retireVersion(_ name: KeyName, version: KeyVersion) async throws {
        let info = try await readKey(name)
        guard version < info.latest else {
            throw KMSError.conflict("\(version) is the wrapping version of key '\(name)'; rotate first")
        }
        let minimum = max(info.minEncryption, Int(version.rawValue) + 1)
        try await configure(name, ["min_encryption_version": .int(minimum)])
    }

    public func destroyVersion(_ name: KeyName, version: KeyVersion) async throws {
        let info = try await readKey(name)
        guard version < info.latest, info.minEncryption > Int(version.rawValue) else {
            throw KMSError.conflict("retire \(version) of key '\(name)' before destroying it")
        }
        try await configure(name, ["min_decryption_version": .int(max(info.minDecryption, Int(version.rawValue) + 1))])
    }

    private func configure(_ name: KeyName, _ body: [String: JSONValue]) async throws {
        let response = try await call(.POST, "\(escaped(name))/config", body: body, retry: .safe,
                                      operation: "configure key '\(name)'")
        guard response.status < 400 else { throw requestError(response, name, operation: "configure the key") }
        state.withLock { $0.latest[name] = nil }
    }

    // MARK: - Wrapping

    /// The version new wraps use: the cached latest, read again when older than the refresh interval.
    private func wrappingVersion(_ name: KeyName, refresh: Bool) async throws -> KeyVersion {
        if !refresh, let cached = state.withLock({ $0.latest[name] }),
           ContinuousClock.now - cached.readAt < configuration.keyInfoRefreshInterval
        {
            return cached.version
        }
        return try await readKey(name).latest
    }

    public func generateDataKey(_ name: KeyName, context: EncryptionContext, version: KeyVersion?) async throws -> DataKey {
        let plaintext = SecretBytes.random(count: DataKey.length)
        let wrapped = try await wrap(name, plaintext: plaintext, context: context, version: version)
        return DataKey(key: name, version: wrapped.version, plaintext: plaintext, wrapped: wrapped.wrapped)
    }

    public func wrap(_ name: KeyName, plaintext: SecretBytes, context: EncryptionContext, version: KeyVersion?) async throws
        -> WrappedKey
    {
        guard (0...Envelope.maxPlaintextLength).contains(plaintext.count) else {
            throw KMSError.invalidInput("a wrapped secret must be 0 to \(Envelope.maxPlaintextLength) bytes")
        }
        var refreshed = false
        while true {
            let chosen: KeyVersion
            if let version {
                chosen = version
            } else {
                chosen = try await wrappingVersion(name, refresh: refreshed)
            }
            let header = try EnvelopeHeader(provider: .vaultTransit, keyName: name, version: chosen, keyID: [])
            let aad = header.additionalData(context: context)
            let encoded = plaintext.withUnsafeBytes { Data($0).base64EncodedString() }
            let response = try await call(
                .POST, "\(configuration.mount)/encrypt/\(name.rawValue)",
                body: ["plaintext": .string(encoded), "associated_data": .string(Data(aad).base64EncodedString()),
                       "key_version": .int(Int(chosen.rawValue))],
                retry: .safe, operation: "wrap with key '\(name)'")
            if response.status >= 400 {
                let error = requestError(response, name, operation: "wrap")
                // Someone rotated or retired past our cached version: read the key again, once.
                if version == nil && !refreshed && (error.code == .versionRetired || response.errorText.contains("higher than the latest")) {
                    refreshed = true
                    continue
                }
                if version != nil && error.code == .versionRetired { throw error }
                throw error
            }
            guard let ciphertext = response.data?["ciphertext"]?.string else {
                throw failed(.internal("Vault's encrypt response has no ciphertext"))
            }
            let (usedVersion, blob) = try Self.parseCiphertext(ciphertext)
            guard usedVersion == chosen.rawValue, blob.count >= 12 + 16 else {
                throw KMSError.internal("Vault encrypted with v\(usedVersion), not \(chosen), or returned a short ciphertext")
            }
            let envelope = try Envelope(header: header, iv: Array(blob[0..<12]), ciphertext: Array(blob[12...]))
            return WrappedKey(key: name, version: chosen, wrapped: envelope.bytes)
        }
    }

    public func unwrap(_ name: KeyName, wrapped: [UInt8], context: EncryptionContext) async throws -> UnwrappedKey {
        let envelope = try Envelope(parsing: wrapped, madeBy: .vaultTransit, backend: "a Vault key", for: name)
        let header = envelope.header
        guard envelope.iv.count == 12 else { throw KMSError.invalidInput("a Vault envelope carries a 12-byte nonce") }
        let aad = header.additionalData(context: context)
        let ciphertext = "vault:v\(header.version.rawValue):" + Data(envelope.iv + envelope.ciphertext).base64EncodedString()
        let response = try await call(
            .POST, "\(configuration.mount)/decrypt/\(name.rawValue)",
            body: ["ciphertext": .string(ciphertext), "associated_data": .string(Data(aad).base64EncodedString())],
            retry: .safe, operation: "unwrap with key '\(name)'")
        if response.status >= 400 {
            let error = requestError(response, name, operation: "unwrap")
            if response.errorText.contains("invalid ciphertext: version is too new") {
                throw KMSError.notFound("\(header.version) of key '\(name)' does not exist in Vault")
            }
            throw error
        }
        guard let encoded = response.data?["plaintext"]?.string, let data = Data(base64Encoded: encoded) else {
            throw failed(.internal("Vault's decrypt response has no valid plaintext"))
        }
        var bytes = [UInt8](data)
        defer { for index in bytes.indices { bytes[index] = 0 } }
        return UnwrappedKey(key: name, version: header.version, plaintext: SecretBytes(copying: bytes))
    }

    /// `vault:v<N>:<base64>` → (N, bytes).
    static func parseCiphertext(_ text: String) throws -> (UInt32, [UInt8]) {
        let parts = text.split(separator: ":", maxSplits: 2)
        guard parts.count == 3, parts[0] == "vault", parts[1].hasPrefix("v"), let version = UInt32(parts[1].dropFirst()),
              let blob = Data(base64Encoded: String(parts[2]))
        else {
            throw KMSError.internal("Vault returned a ciphertext kmsd cannot parse")
        }
        return (version, [UInt8](blob))
    }

    // MARK: - Health

    public func health() async -> ProviderHealth {
        let snapshot = state.withLock { ($0.lastError, $0.lastErrorAt, $0.lastSuccessAt, $0.openUntil) }
        let breaker: ProviderHealth.Breaker = (snapshot.3.map { $0 > .now } ?? false) ? .open : .closed
        var details = ["address": configuration.address, "mount": configuration.mount, "breaker": breaker.rawValue]
        do {
            let response = try await client.send(.GET, "sys/health", token: nil)
            details["vault_status"] = "\(response.status)"
            details["sealed"] = "\(response.body["sealed"]?.bool ?? false)"
            let healthy = response.status == 200 || response.status == 429 || response.status == 473
            return ProviderHealth(
                state: healthy ? .ok : .unavailable,
                lastError: healthy ? snapshot.0 : "Vault health HTTP \(response.status)",
                lastErrorAt: healthy ? snapshot.1 : Date(), lastSuccessAt: snapshot.2, breaker: breaker, details: details)
        } catch {
            return ProviderHealth(state: .unavailable, lastError: "\(error)", lastErrorAt: Date(),
                                  lastSuccessAt: snapshot.2, breaker: breaker, details: details)
        }
    }
}
