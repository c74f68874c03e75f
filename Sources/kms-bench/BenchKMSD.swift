import AsyncHTTPClient
import Foundation
import KMSCore
import KMSAudit
import KMSDaemon
import KMSDev
import KMSTestSupport
import NIOCore
import NIOHTTP1
import NIOSSL
import PKCS11

/// What the end-to-end benchmarks share: one SoftHSM token, a dev PKI, and kmsd started from this build as its own
/// process with a generated configuration.
struct BenchSetup {
    let token: SoftHSMToken
    let directory: URL
    let executable: String
    let profiles: String
    let sessions: Int

    init(kmsd: String?, sessions: Int) throws {
        token = try SoftHSMToken.create()
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("kms-bench-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let pki = try DevPKI()
        try Data(pki.caPEM.utf8).write(to: directory.appendingPathComponent("ca.pem"))
        try DevPKI.write(try pki.issue(.server(hosts: ["localhost", "127.0.0.1"])), name: "server", to: directory)
        try DevPKI.write(try pki.issue(.client(uri: "spiffe://bench/storage/node", commonName: "node")), name: "node", to: directory)
        try DevPKI.write(try pki.issue(.client(uri: nil, commonName: "security-admin")), name: "admin", to: directory)
        let pin = directory.appendingPathComponent("pin")
        try Data(token.userPIN.utf8).write(to: pin)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: pin.path)
        try FileAuditSigner.createIfMissing(path: directory.appendingPathComponent("audit-key.pem").path)
        executable = kmsd ?? URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("kmsd").path
        // <project>/.build/<triple>/<configuration>/kmsd → <project>/hsm-profiles
        profiles = URL(fileURLWithPath: executable).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("hsm-profiles").path
        self.sessions = sessions
    }

    func remove() { try? FileManager.default.removeItem(at: directory) }

    /// A file of the setup's directory (certificates, keys).
    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    /// Starts vault-dev (from this build) and writes its root token to `vault-token` (0600) for kmsd's config.
    func startVaultDev() throws -> VaultDevProcess {
        let server = try VaultDevProcess.start(executable: URL(fileURLWithPath: executable).deletingLastPathComponent()
            .appendingPathComponent("vault-dev").path, directory: directory)
        let tokenFile = directory.appendingPathComponent("vault-token")
        try Data(server.token.utf8).write(to: tokenFile)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: tokenFile.path)
        return server
    }

    private var defaultProviders: String {
        """
        providers:
          hsm: { type: pkcs11, module: \(token.module.path), token: "pkcs11:token=\(token.label)", pin: { file: pin },
                 profile: softhsm2, profiles_dir: \(profiles), sessions: \(sessions) }
        keys:
          bench: { provider: hsm, allow: ["uri:spiffe://bench/storage/*"] }
        """
    }

    /// Starts kmsd; returns once it is ready (or throws with its log).
    /// `providersAndKeys` replaces the default single SoftHSM provider and key `bench`; `keys` are created at start.
    /// `transit` adds the Vault transit listener with the transit key `bench` (kmsd key `bench`).
    /// `extra` adds top-level configuration (a `state` section, say).
    /// `kmip` adds the KMIP listener for the bench node, its objects sealed under `bench-kek` (a key no node may use).
    func start(audit: Bool, name: String, pool: Int, providersAndKeys: String? = nil, keys: [String] = ["bench"],
               transit: Bool = false, kmip: Bool = false, extra: String = "") async throws -> LaunchedKMSD {
        let port = try freeLoopbackPort()
        let transitPort = transit ? try freeLoopbackPort() : 0
        let kmipPort = kmip ? try freeLoopbackPort() : 0
        let transitSection = (transit ? "transit: { keys: { bench: bench } }\n" : "")
            + (kmip ? #"kmip: { allow: ["uri:spiffe://bench/storage/*"], export: ["uri:spiffe://bench/storage/*"], wrapping_key: bench-kek }"# + "\n" : "")
        let auditSection = audit ? "audit: { file: audit-\(name)/audit.jsonl, sign: { file: audit-key.pem }, fail_closed: true }\n" : ""
        let yaml = """
            mode: development
            data_dir: data-\(name)
            log_level: notice
            listen: { api: "127.0.0.1:\(port)"\(transit ? ", transit: \"127.0.0.1:\(transitPort)\"" : "")\(kmip ? ", kmip: \"127.0.0.1:\(kmipPort)\"" : "") }
            tls: { cert: server.pem, key: server-key.pem, client_ca: ca.pem, min_version: "1.3" }
            \(providersAndKeys ?? defaultProviders + (kmip ? "\n  bench-kek: { provider: hsm, allow: [] }" : ""))
            admin: { identities: ["cn:security-admin"] }
            limits: { rate_per_second: 1000000, burst: 1000000, max_connections: 4096 }
            \(auditSection)\(transitSection)\(extra)
            """
        let config = directory.appendingPathComponent("kmsd-\(name).yaml")
        try Data(yaml.utf8).write(to: config)
        let log = directory.appendingPathComponent("kmsd-\(name).log")
        let started = ContinuousClock.now
        let process = try BuiltExecutable(url: URL(fileURLWithPath: executable)).start(["serve", "--config", config.path], log: log)
        let kmsd = LaunchedKMSD(process: process, port: port, transitPort: transitPort, log: log, auditFile: audit ? directory.appendingPathComponent("audit-\(name)/audit.jsonl") : nil,
                                node: try client("node", pool: pool), admin: try client("admin", pool: 1))
        kmsd.kmipPort = kmipPort
        do {
            guard try await kmsd.waitReady() else { throw FixtureError("kmsd did not become ready") }
            kmsd.readySeconds = (ContinuousClock.now - started).seconds
            for key in keys {
                let (status, _) = try await kmsd.post(kmsd.admin, "/v1/admin/keys", #"{"name":"\#(key)"}"#)
                guard status == 201 || status == 409 else { throw FixtureError("creating the key \(key) gave HTTP \(status)") }
            }
            return kmsd
        } catch {
            await kmsd.stop()
            throw FixtureError("\(error)\nkmsd log:\n\(((try? String(contentsOf: log, encoding: .utf8)) ?? "").suffix(2000))")
        }
    }

    private func client(_ name: String, pool: Int) throws -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(directory.appendingPathComponent("ca.pem").path))
        tls.certificateChain = try NIOSSLCertificate.fromPEMFile(directory.appendingPathComponent("\(name).pem").path).map { .certificate($0) }
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: directory.appendingPathComponent("\(name)-key.pem").path, format: .pem))
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: pool)
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }
}

/// A running kmsd process and the clients that talk to it.
final class LaunchedKMSD: @unchecked Sendable {
    let process: Process
    let port: Int
    /// The transit listener's port (0 without one).
    let transitPort: Int
    /// The KMIP listener's port (0 without one).
    var kmipPort = 0
    let log: URL
    let auditFile: URL?
    let node: HTTPClient
    let admin: HTTPClient
    var readySeconds = 0.0

    init(process: Process, port: Int, transitPort: Int = 0, log: URL, auditFile: URL?, node: HTTPClient, admin: HTTPClient) {
        self.process = process
        self.port = port
        self.transitPort = transitPort
        self.log = log
        self.auditFile = auditFile
        self.node = node
        self.admin = admin
    }

    var base: String { "https://localhost:\(port)" }

    func post(_ client: HTTPClient, _ path: String, _ body: String, port: Int? = nil) async throws -> (Int, Data) {
        var request = HTTPClientRequest(url: "https://localhost:\(port ?? self.port)" + path)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(string: body))
        let response = try await client.execute(request, timeout: .seconds(10))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        return (Int(response.status.code), Data(bytes.readableBytesView))
    }

    func get(_ client: HTTPClient, _ path: String) async throws -> (Int, Data) {
        let response = try await client.execute(HTTPClientRequest(url: base + path), timeout: .seconds(10))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        return (Int(response.status.code), Data(bytes.readableBytesView))
    }

    func waitReady() async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline && process.isRunning {
            if let (status, _) = try? await get(node, "/v1/health/ready"), status == 200 { return true }
            try await Task.sleep(for: .milliseconds(5))
        }
        return false
    }

    /// kmsd's peak resident set (VmHWM), its current one (VmRSS), and its open file descriptors.
    var peakRSSMegabytes: Double { Self.status(process.processIdentifier, "VmHWM:") / 1024 }
    var rssMegabytes: Double { Self.status(process.processIdentifier, "VmRSS:") / 1024 }
    var openFiles: Int { ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(process.processIdentifier)/fd")) ?? []).count }

    private static func status(_ pid: Int32, _ field: String) -> Double {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix(field) }),
              let value = Double(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        else { return 0 }
        return value
    }

    /// SIGTERM, then waits for the process; shuts the clients down.
    func stop() async {
        try? await node.shutdown()
        try? await admin.shutdown()
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }
}
