import Foundation
import KMSCore
import Logging
import NIOHTTP1

/// Holds kmsd's Vault token and keeps it valid: logs in (AppRole), re-reads a token file when it changes, renews at
/// about 2/3 of the token's TTL, and logs in again when renewal is refused or the token is close to its max TTL. The
/// token never leaves this type except as the header value of a request.
actor VaultAuthenticator {
    struct Statistics: Sendable, Equatable {
        var logins = 0
        var renewals = 0
        var tokenFileReads = 0
    }

    private let client: VaultClient
    private let logger: Logger
    private var token: String?
    /// When the current token stops working, if it expires at all.
    private var expiresAt: ContinuousClock.Instant?
    private var renewable = false
    private var fileContents: String?
    private var renewalTask: Task<Void, Never>?
    private(set) var statistics = Statistics()

    init(client: VaultClient, logger: Logger) {
        self.client = client
        self.logger = logger
    }

    /// The token to send, logging in or reading the token file the first time.
    func current() async throws -> String {
        switch client.configuration.authentication {
        case .tokenFile(let path):
            // Vault Agent rewrites the sink file when it renews or re-authenticates: pick up changes.
            if let contents = try? readTokenFile(path), contents != fileContents { adopt(fileToken: contents) }
        default:
            break
        }
        if let token { return token }
        try await authenticate()
        guard let token else { throw KMSError.unavailable("no Vault token is available") }
        return token
    }

    /// Vault said the token is not (or no longer) valid: get a new one if the method allows, else fail.
    func rejected(_ presented: String) async throws {
        guard presented == token else { return }  // someone already replaced it
        token = nil
        switch client.configuration.authentication {
        case .token:
            throw KMSError.unavailable("Vault rejected kmsd's token (permission denied); configure a valid token")
        case .tokenFile, .appRole:
            try await authenticate()
        }
    }

    func stop() {
        renewalTask?.cancel()
        renewalTask = nil
    }

    private func readTokenFile(_ path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw KMSError.unavailable("cannot read the Vault token file \(path)")
        }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !text.isEmpty else { throw KMSError.unavailable("the Vault token file \(path) is empty") }
        return text
    }

    private func adopt(fileToken contents: String) {
        fileContents = contents
        token = contents
        statistics.tokenFileReads += 1
        expiresAt = nil
    }

    /// Gets a token by the configured method and schedules its renewal.
    private func authenticate() async throws {
        switch client.configuration.authentication {
        case .token(let secret):
            token = secret.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
            try await learnLease()
        case .tokenFile(let path):
            adopt(fileToken: try readTokenFile(path))
        case .appRole(let roleID, let secretID, let mount):
            let secret = secretID.withUnsafeBytes { String(decoding: $0, as: UTF8.self) }
            let response: VaultResponse
            do {
                response = try await client.send(.POST, "auth/\(mount)/login", token: nil,
                                                 body: ["role_id": .string(roleID), "secret_id": .string(secret)])
            } catch let error as VaultTransportError {
                throw KMSError.unavailable("Vault login failed", detail: error.description)
            }
            guard response.status == 200, let auth = response.auth, let issued = auth["client_token"]?.string else {
                throw KMSError.unavailable(
                    "Vault AppRole login failed (HTTP \(response.status))", detail: response.errorText)
            }
            token = issued
            statistics.logins += 1
            setLease(seconds: auth["lease_duration"]?.int ?? 0, renewable: auth["renewable"]?.bool ?? false)
            logger.info("logged in to Vault with AppRole", metadata: ["ttl_seconds": "\(auth["lease_duration"]?.int ?? 0)"])
        }
    }

    /// For a configured token: ask Vault for its TTL so it can be renewed in time.
    private func learnLease() async throws {
        guard let token else { return }
        guard let response = try? await client.send(.GET, "auth/token/lookup-self", token: token),
              response.status == 200, let data = response.data
        else { return }  // unknown: requests will tell
        setLease(seconds: data["ttl"]?.int ?? 0, renewable: data["renewable"]?.bool ?? false)
    }

    private func setLease(seconds: Int, renewable: Bool) {
        self.renewable = renewable
        renewalTask?.cancel()
        guard seconds > 0 else {
            expiresAt = nil
            return
        }
        let now = ContinuousClock.now
        expiresAt = now + .seconds(seconds)
        // Renew at about 2/3 of the TTL (with a little jitter), or re-authenticate then if the token cannot be renewed.
        let delay = Duration.seconds(Double(seconds) * Double.random(in: 0.62...0.68))
        renewalTask = Task { [weak self] in
            try? await Task.sleep(for: delay)
            guard !Task.isCancelled else { return }
            await self?.refresh()
        }
    }

    /// Renews the token, or replaces it when renewal is impossible or Vault capped it at its max TTL.
    private func refresh() async {
        guard let current = token else { return }
        if renewable {
            do {
                let response = try await client.send(.POST, "auth/token/renew-self", token: current, body: [:])
                if response.status == 200, let auth = response.auth {
                    statistics.renewals += 1
                    let granted = auth["lease_duration"]?.int ?? 0
                    logger.debug("renewed the Vault token", metadata: ["ttl_seconds": "\(granted)"])
                    if granted >= 2 {
                        setLease(seconds: granted, renewable: auth["renewable"]?.bool ?? true)
                        return
                    }
                    // At the max TTL: the token is about to die; fall through to a new login.
                }
                logger.notice("Vault token renewal refused; authenticating again",
                              metadata: ["status": "\(response.status)", "error": "\(response.errorText)"])
            } catch {
                logger.warning("Vault token renewal failed", metadata: ["error": "\(error)"])
                // Try again soon, before the token expires.
                setLease(seconds: max(2, Int((expiresAt.map { $0 - .now } ?? .seconds(3)).components.seconds)), renewable: true)
                return
            }
        }
        switch client.configuration.authentication {
        case .token:
            return  // nothing else to do: a configured token cannot be replaced
        case .tokenFile, .appRole:
            token = nil
            do {
                try await authenticate()
            } catch {
                logger.error("Vault re-authentication failed", metadata: ["error": "\(error)"])
            }
        }
    }
}
