import Foundation
import KMSCore
@testable import KMSDaemon
import KMSDev
import KMSProviderVault
import KMSService
import KMSTestSupport
import Logging
import ServiceLifecycle

/// A second kmsd, in process, serving its Vault transit listener over SoftHSM behind the fault shim: what kmsd's own
/// Vault provider talks to when kmsd chains to kmsd. Keys `orders` and `invoices` are configured (not created) for
/// the identity `cn:chained-kmsd`, which a configured token stands for and which administers them.
final class ChainedKMSD: Sendable {
    let address: String
    let caFile: String
    let token: String
    let shim: FaultShim
    private let server: ServerTask
    private let providers: [String: any KeyProvider]

    private init(address: String, caFile: String, token: String, shim: FaultShim, server: ServerTask, providers: [String: any KeyProvider]) {
        self.address = address
        self.caFile = caFile
        self.token = token
        self.shim = shim
        self.server = server
        self.providers = providers
    }

    static func start() async throws -> ChainedKMSD {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kmsd-chained-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let pki = try DevPKI()
        try Data(pki.caPEM.utf8).write(to: directory.appendingPathComponent("ca.pem"))
        try DevPKI.write(try pki.issue(.server(hosts: ["localhost", "127.0.0.1"])), name: "server", to: directory)
        let hsm = try SoftHSMToken.create()
        let shim = try FaultShim.create()
        let pin = directory.appendingPathComponent("pin")
        try Data(hsm.userPIN.utf8).write(to: pin)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: pin.path)
        let token = "chained-\(UUID().uuidString)"
        let profiles = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("hsm-profiles").path
        // retire_quiet_period 1 ms: the contract retires a version right after unwrapping with it.
        let yaml = """
            mode: development
            data_dir: data
            listen: { api: "127.0.0.1:0", transit: "127.0.0.1:0" }
            tls: { cert: server.pem, key: server-key.pem, client_ca: ca.pem, min_version: "1.3" }
            providers:
              hsm: { type: pkcs11, module: \(shim.modulePath), token: "pkcs11:token=\(hsm.label)", pin: { file: pin },
                     profile: softhsm2, profiles_dir: \(profiles), sessions: 4, call_timeout: 500ms, checkout_wait: 500ms }
            keys:
              orders: { provider: hsm, allow: ["cn:chained-kmsd"], rotation: { retire_quiet_period: 1ms } }
              invoices: { provider: hsm, allow: ["cn:chained-kmsd"], rotation: { retire_quiet_period: 1ms } }
            admin: { identities: ["cn:chained-kmsd"] }
            transit:
              keys: { orders: orders, invoices: invoices }
              tokens: [{ sha256: "\(KMSServerPolicy.hexDigest(token))", identity: "cn:chained-kmsd" }]
            """
        let file = directory.appendingPathComponent("kmsd.yaml")
        try Data(yaml.utf8).write(to: file)
        let daemon = Daemon(try Configuration.load(path: file.path))
        let providers = try await daemon.startProviders()
        let server = try await ServerTask.start { bound in
            let parts = try await daemon.assemble(providers: providers, onTransitRunning: { bound($0) })
            try await ServiceGroup(configuration: .init(services: parts.services.map { .init(service: $0) }, logger: Logger(label: "kmsd.chained")))
                .run()
        }
        return ChainedKMSD(address: "https://localhost:\(server.port)", caFile: directory.appendingPathComponent("ca.pem").path,
                           token: token, shim: shim, server: server, providers: providers)
    }

    /// kmsd's Vault provider, pointed at this kmsd's transit listener.
    func configuration() -> VaultProviderConfiguration {
        VaultProviderConfiguration(
            address: address, caCertificateFile: caFile, authentication: .token(SecretBytes(utf8: token)),
            requestTimeout: .seconds(2), maxRetries: 1, breakerThreshold: 1_000)
    }

    func stop() async {
        await server.stop()
        await Daemon.stop(providers)
    }
}
