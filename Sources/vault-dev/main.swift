// vault-dev: a Vault-transit-compatible development server for kmsd's tests and for trying kmsd without a Vault.
// Never for production data. See vault-dev/README.md.
import ArgumentParser
import Foundation
import VaultDev

@main
struct VaultDevCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vault-dev",
        abstract: "A development server speaking Vault's transit, token, AppRole, health and seal API.")

    @Option(help: "Address to listen on (loopback by default).")
    var host = "127.0.0.1"

    @Option(help: "Port (0 picks a free one).")
    var port = 8200

    @Option(help: "Root token (default: a random one, printed). Also read from VAULT_DEV_ROOT_TOKEN_ID.")
    var rootToken: String?

    @Option(help: "Unseal key for PUT sys/unseal (default: random, printed).")
    var unsealKey: String?

    @Option(help: "Keep state in this file (mode 0600) so a restart keeps keys and tokens.")
    var stateFile: String?

    @Option(help: "PEM certificate chain: serve HTTPS (with --tls-key).")
    var tlsCert: String?

    @Option(help: "PEM private key for --tls-cert.")
    var tlsKey: String?

    @Flag(help: "Allow a non-loopback --host.")
    var allowPublicBind = false

    func validate() throws {
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("--tls-cert and --tls-key go together") }
        let loopback = ["127.0.0.1", "::1", "localhost"]
        if !loopback.contains(host) && !allowPublicBind {
            throw ValidationError("vault-dev keeps keys in memory for development; binding \(host) needs --allow-public-bind")
        }
    }

    func run() async throws {
        let token = rootToken ?? ProcessInfo.processInfo.environment["VAULT_DEV_ROOT_TOKEN_ID"]
        let server = try VaultDevServer(.init(
            host: host, port: port, rootToken: token, unsealKey: unsealKey, stateFile: stateFile,
            tlsCertificate: tlsCert, tlsKey: tlsKey))
        let scheme = tlsCert == nil ? "http" : "https"
        let configuration = server.configuration
        try await server.run(gracefulShutdownSignals: true) { port in
            // One write, so a parent reading the pipe sees all three lines at once.
            let host = configuration.host == "::1" ? "[::1]" : configuration.host
            let lines = "VAULT_ADDR=\(scheme)://\(host):\(port)\nVAULT_TOKEN=\(configuration.rootToken)\n"
                + "VAULT_UNSEAL_KEY=\(configuration.unsealKey)\n"
            FileHandle.standardOutput.write(Data(lines.utf8))
        }
    }
}
