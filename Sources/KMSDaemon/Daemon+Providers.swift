public import Foundation
public import KMSCore
import KMSProviderPKCS11
import KMSProviderVault
import Logging

/// Provider construction and lifecycle: secrets read from their sources, start (all or some), stop, and the secrets
/// read again at a reload.
extension Daemon {
    /// Reads a secret from its source. Errors name the source, never the value.
    public static func read(_ source: Configuration.SecretSource, environment: [String: String]) throws -> SecretBytes {
        switch source {
        case .inline(let secret):
            return secret
        case .environment(let name):
            guard let value = environment[name], !value.isEmpty else { throw ConfigurationError(["the environment variable \(name) is not set"]) }
            return SecretBytes(utf8: value)
        case .file(let path):
            guard let data = FileManager.default.contents(atPath: path) else { throw ConfigurationError(["cannot read the secret file \(path)"]) }
            let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard !text.isEmpty else { throw ConfigurationError(["the secret file \(path) is empty"]) }
            return SecretBytes(utf8: text)
        }
    }

    /// The audit checkpoint public key (PEM), read from the token named by `audit.sign: {hsm: …}`; nothing is created
    /// and only that provider is started. `kmsctl audit verify --public-key-from-hsm` uses it.
    public func auditPublicKeyFromHSM() async throws -> String {
        guard case .hsm(let providerName, let label)? = configuration.audit?.signing else {
            throw ConfigurationError(["audit.sign: \(configuration.source) does not sign audit checkpoints with a key on an HSM ({hsm: …})"])
        }
        let providers = try await startProviders(only: [providerName])
        do {
            let pem = try await Self.signingKeyHolder(providerName, in: providers).auditPublicKeyPEM(label: label)
            await Self.stop(providers)
            return pem
        } catch {
            await Self.stop(providers)
            throw error
        }
    }

    /// Starts every configured provider (or those named in `only`). On failure, stops those already started.
    public func startProviders(only: Set<String>? = nil, environment: [String: String] = ProcessInfo.processInfo.environment)
        async throws -> [String: any KeyProvider]
    {
        var started: [String: any KeyProvider] = [:]
        do {
            for (name, provider) in configuration.providers.sorted(by: { $0.key < $1.key }) where only?.contains(name) ?? true {
                switch provider {
                case .pkcs11(let settings):
                    let profile = try HSMProfile.load(settings.profile, directory: settings.profilesDirectory)
                    let pkcs11 = try await PKCS11KeyProvider.start(PKCS11ProviderConfiguration(
                        modulePath: settings.module, tokenURI: settings.token, pin: try Self.read(settings.pin, environment: environment),
                        profile: profile, maxSessions: settings.sessions, checkoutWait: settings.checkoutWait,
                        callTimeout: settings.callTimeout), logger: Logger(label: "kmsd.provider.\(name)"))
                    started[name] = pkcs11
                case .vault(let settings):
                    let auth: VaultProviderConfiguration.Authentication
                    switch settings.auth {
                    case .token(let source): auth = .token(try Self.read(source, environment: environment))
                    case .tokenFile(let path): auth = .tokenFile(path)
                    case .appRole(let roleID, let secret):
                        auth = .appRole(roleID: roleID, secretID: try Self.read(secret, environment: environment))
                    }
                    started[name] = try VaultTransitProvider(VaultProviderConfiguration(
                        address: settings.address, mount: settings.mount, namespace: settings.namespace,
                        caCertificateFile: settings.caCertificate, authentication: auth,
                        requestTimeout: settings.requestTimeout), logger: Logger(label: "kmsd.provider.\(name)"))
                }
                logger.info("provider started", metadata: ["provider": "\(name)", "type": "\(provider.kind)"])
            }
        } catch {
            await Self.stop(started)
            throw error
        }
        return started
    }

    static func stop(_ providers: [String: any KeyProvider]) async {
        for provider in providers.values { await provider.shutdown() }
    }

    /// The PIN of every running PKCS#11 provider, read again from its source (a SIGHUP after correcting a PIN lets a
    /// provider whose PIN the token refused try the new one, once).
    func providerPINs(_ providers: [String: any KeyProvider], environment: [String: String] = ProcessInfo.processInfo.environment)
        throws -> [(any KeyProvider, SecretBytes)]
    {
        try configuration.providers.sorted(by: { $0.key < $1.key }).compactMap { name, provider in
            guard case .pkcs11(let settings) = provider, let running = providers[name] else { return nil }
            return (running, try Self.read(settings.pin, environment: environment))
        }
    }
}
