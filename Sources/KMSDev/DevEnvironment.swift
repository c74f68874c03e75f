import Crypto
public import Foundation
import KMSAudit
import KMSCore

/// `kmsd dev-init`: the files `ci/dev` runs kmsd with — a development PKI, a SoftHSM configuration and PIN, an admin
/// token, and `kmsd.yaml`. Files that exist are kept, so running it twice reuses the directory.
public enum DevEnvironment {
    public static func initialize(directory: URL, profilesDirectory: String, port: Int = 8443,
                                  module: String = "/usr/lib/softhsm/libsofthsm2.so") throws -> [String] {
        let files = FileManager.default
        try files.createDirectory(at: directory.appendingPathComponent("tokens"), withIntermediateDirectories: true)
        try files.setAttributes([.posixPermissions: 0o700], ofItemAtPath: directory.path)
        var made: [String] = []
        func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
        func writeSecret(_ name: String, _ text: String) throws {
            try Data(text.utf8).write(to: directory.appendingPathComponent(name))
            try files.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path(name))
        }

        let pki: DevPKI
        if let certificate = try? String(contentsOfFile: path("ca.pem"), encoding: .utf8),
           let key = try? String(contentsOfFile: path("ca-key.pem"), encoding: .utf8) {
            pki = try DevPKI(caCertificatePEM: certificate, caKeyPEM: key)
        } else {
            pki = try DevPKI()
            try Data(pki.caPEM.utf8).write(to: directory.appendingPathComponent("ca.pem"))
            try writeSecret("ca-key.pem", pki.caKeyPEM)
            made.append("ca.pem")
        }
        let issued: [(String, DevPKI.Subject)] = [
            ("server", .server(hosts: ["localhost", "127.0.0.1"])),
            ("node", .client(uri: "spiffe://kmsd.dev/storage/node-1", commonName: "storage-node-1")),
            ("admin", .client(uri: nil, commonName: "security-admin")),
        ]
        for (name, subject) in issued where !files.fileExists(atPath: path("\(name).pem")) {
            try DevPKI.write(try pki.issue(subject), name: name, to: directory)
            made.append("\(name).pem")
        }
        if !files.fileExists(atPath: path("hsm-pin")) {
            try writeSecret("hsm-pin", "dev-\(UInt32.random(in: 100_000...999_999))\n")
            try writeSecret("hsm-so-pin", "so-\(UInt32.random(in: 100_000...999_999))\n")
            made.append("hsm-pin")
        }
        if !files.fileExists(atPath: path("softhsm2.conf")) {
            try Data("directories.tokendir = \(path("tokens"))\nobjectstore.backend = file\nlog.level = ERROR\n".utf8)
                .write(to: directory.appendingPathComponent("softhsm2.conf"))
            made.append("softhsm2.conf")
        }
        if !files.fileExists(atPath: path("audit-signing-key.pem")) {
            try FileAuditSigner.createIfMissing(path: path("audit-signing-key.pem"))
            made.append("audit-signing-key.pem")
        }
        if !files.fileExists(atPath: path("admin-token")) {
            let token = SymmetricKey(size: .bits256).withUnsafeBytes { Data($0) }.base64EncodedString()
            try writeSecret("admin-token", token + "\n")
            made.append("admin-token")
        }
        if !files.fileExists(atPath: path("transit-token")) {
            try writeSecret("transit-token", Randomness.token(prefix: "kmsd-dev.") + "\n")
            made.append("transit-token")
        }
        func secretHash(_ name: String) throws -> String {
            let secret = (try String(contentsOfFile: path(name), encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)
            return Hex.encode(SHA256.hash(data: Data(secret.utf8)))
        }
        let hash = try secretHash("admin-token")
        let transitHash = try secretHash("transit-token")
        // A configuration from before the transit or KMIP listener is set aside and written again (a dev directory's
        // configuration is dev-init's own).
        if let existing = try? String(contentsOfFile: path("kmsd.yaml"), encoding: .utf8), !existing.contains("\nkmip:") {
            try? files.removeItem(atPath: path("kmsd.yaml.before-kmip"))
            try files.moveItem(atPath: path("kmsd.yaml"), toPath: path("kmsd.yaml.before-kmip"))
            made.append("kmsd.yaml.before-kmip (the previous configuration)")
        }
        if !files.fileExists(atPath: path("kmsd.yaml")) {
            // Port 0 (tests) picks free ports for every listener.
            let (metricsPort, transitPort, kmipPort) = port == 0 ? (0, 0, 0) : (port + 1021, port + 1, port + 2)
            let yaml = """
                # kmsd development configuration, written by `kmsd dev-init` (ci/dev). Not for production:
                # SoftHSM, a generated CA, secrets in this directory.
                mode: development
                data_dir: data
                listen: { api: "127.0.0.1:\(port)", metrics: "127.0.0.1:\(metricsPort)", transit: "127.0.0.1:\(transitPort)", kmip: "127.0.0.1:\(kmipPort)" }
                audit: { file: audit/audit.jsonl, sign: { file: audit-signing-key.pem } }
                tls: { cert: server.pem, key: server-key.pem, client_ca: ca.pem, min_version: "1.3" }
                providers:
                  hsm:
                    type: pkcs11
                    module: \(module)
                    token: "pkcs11:token=kmsd-dev"
                    pin: { file: hsm-pin }
                    profile: softhsm2
                    profiles_dir: \(profilesDirectory)
                    sessions: 4
                keys:
                  demo: { provider: hsm, allow: ["uri:spiffe://kmsd.dev/storage/*"], rotation: { period: 90d, notice: 7d } }
                  # Wraps the KMIP front end's managed objects; no storage node uses it directly.
                  kmip-kek: { provider: hsm, allow: [], rotation: { period: 90d, notice: 7d } }
                admin:
                  identities: ["cn:security-admin"]
                  token_hashes: ["\(hash)"]
                # The Vault transit front end (docs/transit-frontend.md): VAULT_ADDR=https://localhost:\(transitPort)
                transit:
                  keys: { demo: demo }
                  tokens:
                    # transit-token, acting as storage node 1 (a client certificate or auth/cert/login does without it)
                    - { sha256: "\(transitHash)", identity: "uri:spiffe://kmsd.dev/storage/node-1", ttl: 24h, renewable: true }
                # The KMIP front end (docs/kmip.md) on 127.0.0.1:\(kmipPort): the dev storage nodes use it, node 1 may Get key
                # material; objects are sealed under kmip-kek.
                kmip:
                  allow: ["uri:spiffe://kmsd.dev/storage/*"]
                  export: ["uri:spiffe://kmsd.dev/storage/node-1"]
                  wrapping_key: kmip-kek

                """
            try Data(yaml.utf8).write(to: directory.appendingPathComponent("kmsd.yaml"))
            made.append("kmsd.yaml")
        }
        return made
    }
}
