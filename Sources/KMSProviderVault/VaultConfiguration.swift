public import Foundation
public import KMSCore

/// How `VaultTransitProvider` reaches Vault. Secrets (tokens, secret ids) are `SecretBytes` and never printed.
public struct VaultProviderConfiguration: Sendable, CustomStringConvertible {
    /// How kmsd proves itself to Vault.
    public enum Authentication: Sendable {
        /// A fixed token (`VAULT_TOKEN`). Renewed while renewable; when Vault rejects it, requests fail `unavailable`.
        case token(SecretBytes)
        /// A token file, as Vault Agent's sink writes it: re-read when it changes and whenever Vault rejects the token.
        case tokenFile(String)
        /// AppRole login; the token is renewed at 2/3 of its TTL and replaced by a new login when it cannot be.
        case appRole(roleID: String, secretID: SecretBytes, mount: String = "approle")
    }

    /// `https://vault.example:8200` (`VAULT_ADDR`).
    public var address: String
    /// The transit mount path (`transit`).
    public var mount: String
    /// `X-Vault-Namespace` (`VAULT_NAMESPACE`), for Vault Enterprise / HCP.
    public var namespace: String?
    /// PEM CA bundle for Vault's certificate (`VAULT_CACERT`); the system roots when nil.
    public var caCertificateFile: String?
    public var authentication: Authentication
    /// The deadline of each HTTP request, connection included.
    public var requestTimeout: Duration
    /// Extra attempts for requests that are safe to repeat (connection errors, 429, 5xx other than sealed).
    public var maxRetries: Int
    public var retryBaseDelay: Duration
    /// Consecutive failures that open the breaker, and how long it then fails requests without trying.
    public var breakerThreshold: Int
    public var breakerCooldown: Duration
    /// How old the cached key information (latest version) may get before a wrap reads it again.
    public var keyInfoRefreshInterval: Duration

    public init(
        address: String, mount: String = "transit", namespace: String? = nil, caCertificateFile: String? = nil,
        authentication: Authentication, requestTimeout: Duration = .seconds(5), maxRetries: Int = 2,
        retryBaseDelay: Duration = .milliseconds(50), breakerThreshold: Int = 5, breakerCooldown: Duration = .seconds(1),
        keyInfoRefreshInterval: Duration = .seconds(30)
    ) {
        self.address = address.hasSuffix("/") ? String(address.dropLast()) : address
        self.mount = mount.trimmingCharacters(in: CharacterSet(charactersIn: "/"))
        self.namespace = namespace
        self.caCertificateFile = caCertificateFile
        self.authentication = authentication
        self.requestTimeout = requestTimeout
        self.maxRetries = maxRetries
        self.retryBaseDelay = retryBaseDelay
        self.breakerThreshold = breakerThreshold
        self.breakerCooldown = breakerCooldown
        self.keyInfoRefreshInterval = keyInfoRefreshInterval
    }

    /// Vault's own client conventions: `VAULT_ADDR` (required), `VAULT_TOKEN`, `VAULT_NAMESPACE`, `VAULT_CACERT`.
    public static func fromEnvironment(
        _ environment: [String: String] = ProcessInfo.processInfo.environment, mount: String = "transit"
    ) throws -> VaultProviderConfiguration {
        guard let address = environment["VAULT_ADDR"], !address.isEmpty else {
            throw KMSError.invalidInput("VAULT_ADDR is not set")
        }
        guard let token = environment["VAULT_TOKEN"], !token.isEmpty else {
            throw KMSError.invalidInput("VAULT_TOKEN is not set")
        }
        return VaultProviderConfiguration(
            address: address, mount: mount, namespace: environment["VAULT_NAMESPACE"],
            caCertificateFile: environment["VAULT_CACERT"], authentication: .token(SecretBytes(utf8: token)))
    }

    public var description: String {
        let auth: String
        switch authentication {
        case .token: auth = "token <redacted>"
        case .tokenFile(let path): auth = "token file \(path)"
        case .appRole(let roleID, _, let mount): auth = "approle \(mount) role_id \(roleID) secret_id <redacted>"
        }
        return "VaultProviderConfiguration(address: \(address), mount: \(mount), namespace: \(namespace ?? "-"), auth: \(auth))"
    }
}
