import AsyncHTTPClient
import Foundation
import KMSAPI
import KMSCore
@testable import KMSDaemon
import KMSDev
import KMSServer
import KMSService
import KMSAudit
import Hummingbird
import KMSTestSupport
import NIOCore
import NIOSSL
import NIOHTTP1
import ServiceLifecycle
import Logging

/// A kmsd running in process on a free loopback port with mutual TLS, over a SoftHSM token behind the fault shim,
/// with a dev PKI: storage node 1 may use key `orders`, node 2 may use `invoices`, `CN=security-admin` administers.
final class RunningKMSD: Sendable {
    let directory: URL
    let port: Int
    let metricsPort: Int
    /// The Vault transit listener's port (0 when the fixture has no transit section).
    let transitPort: Int
    /// The KMIP listener's port (0 when the fixture has no kmip section).
    let kmipPort: Int
    let shim: FaultShim
    let audit: AuditLog?
    let adminToken: String
    let pki: DevPKI
    private let task: Task<Void, any Error>
    private let daemon: Daemon
    private let running: Daemon.Running
    private let providers: [String: any KeyProvider]
    private let yaml: @Sendable (_ clientCA: String, _ crl: String?, _ transit: String?) -> String
    private let transit: String?

    private init(directory: URL, port: Int, metricsPort: Int, transitPort: Int, kmipPort: Int, shim: FaultShim, task: Task<Void, any Error>, adminToken: String, pki: DevPKI,
                 daemon: Daemon, running: Daemon.Running, providers: [String: any KeyProvider], audit: AuditLog?,
                 transit: String?, yaml: @escaping @Sendable (String, String?, String?) -> String) {
        self.directory = directory
        self.port = port
        self.metricsPort = metricsPort
        self.transitPort = transitPort
        self.kmipPort = kmipPort
        self.audit = audit
        self.shim = shim
        self.task = task
        self.adminToken = adminToken
        self.pki = pki
        self.daemon = daemon
        self.running = running
        self.providers = providers
        self.yaml = yaml
        self.transit = transit
    }

    /// Rewrites the configuration file with another client CA bundle and CRL (and transit section, when given), and
    /// reloads as SIGHUP does.
    /// `dropTransit` writes the file without the transit listener and section.
    func reload(clientCA: String = "ca.pem", crl: String?, transit newTransit: String? = nil, dropTransit: Bool = false) throws {
        try Data(yaml(clientCA, crl, dropTransit ? nil : newTransit ?? transit).utf8).write(to: directory.appendingPathComponent("kmsd.yaml"))
        try daemon.reload(running, providers: providers)
    }

    static func pki(in directory: URL) throws -> DevPKI {
        let pki = try DevPKI()
        try Data(pki.caPEM.utf8).write(to: directory.appendingPathComponent("ca.pem"))
        try DevPKI.write(try pki.issue(.server(hosts: ["localhost", "127.0.0.1"])), name: "server", to: directory)
        try DevPKI.write(try pki.issue(.client(uri: "spiffe://test/storage/node-1", commonName: "node-1")), name: "node1", to: directory)
        try DevPKI.write(try pki.issue(.client(uri: "spiffe://test/storage/node-2", commonName: "node-2")), name: "node2", to: directory)
        try DevPKI.write(try pki.issue(.client(uri: nil, commonName: "security-admin")), name: "admin", to: directory)
        try DevPKI.write(
            try pki.issue(.client(uri: "spiffe://test/storage/node-1", commonName: "old"), notBefore: Date().addingTimeInterval(-10 * 86400), days: 2),
            name: "expired", to: directory)
        let other = try DevPKI(name: "another CA")
        try DevPKI.write(try other.issue(.client(uri: "spiffe://test/storage/node-1", commonName: "node-1")), name: "foreign", to: directory)
        // Identity confusions: a URI SAN that reads like a common name, two URI SANs, and an admin CA of its own.
        try DevPKI.write(try pki.issue(.client(uri: "CN=security-x", commonName: "node-9")), name: "confused", to: directory)
        try DevPKI.write(try pki.issue(.clientNames(uris: ["spiffe://test/storage/node-1", "spiffe://test/storage/node-2"], dns: [],
                                                    commonName: "node-1")), name: "twouris", to: directory)
        let admins = try DevPKI(name: "kmsd admin CA")
        try Data(admins.caPEM.utf8).write(to: directory.appendingPathComponent("admin-ca.pem"))
        try DevPKI.write(try admins.issue(.client(uri: nil, commonName: "security-admin2")), name: "admin2", to: directory)
        try DevPKI.write(try admins.issue(.client(uri: "spiffe://test/storage/node-1", commonName: "security-node")), name: "adminnode", to: directory)
        return pki
    }

    /// `limits` and `audit` add keys to those sections (", handshake_timeout: 1s", say).
    static func start(maxBodyBytes: Int = 64 * 1024, ratePerSecond: Int = 1000, burst: Int = 2000,
                      maxConnections: Int = 1024, auditSigning: String = "{ file: audit-key.pem }",
                      limits: String = "", audit auditExtra: String = "", withCRL: Bool = false,
                      tls tlsExtra: String = "", admin adminExtra: String = "", keys keysExtra: String = "",
                      transit: String? = nil, kmip: String? = nil) async throws -> RunningKMSD {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kmsd-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let pki = try pki(in: directory)
        let token = try SoftHSMToken.create()
        let shim = try FaultShim.create()
        let pinFile = directory.appendingPathComponent("pin")
        try Data(token.userPIN.utf8).write(to: pinFile)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: pinFile.path)
        let adminToken = "admin-token-\(UUID().uuidString)"
        let yaml: @Sendable (String, String?, String?) -> String = { clientCA, crl, transit in
            """
            mode: development
            data_dir: data
            listen: { api: "127.0.0.1:0", metrics: "127.0.0.1:0"\(transit == nil ? "" : ", transit: \"127.0.0.1:0\"")\(kmip == nil ? "" : ", kmip: \"127.0.0.1:0\"") }
            audit: { file: audit/audit.jsonl, sign: \(auditSigning), fail_closed: true, checkpoint_every: 500\(auditExtra) }
            tls: { cert: server.pem, key: server-key.pem, client_ca: \(clientCA), \(crl.map { "crl: \($0), " } ?? "")min_version: "1.3"\(tlsExtra) }
            providers:
              hsm: { type: pkcs11, module: \(shim.modulePath), token: "pkcs11:token=\(token.label)", pin: { file: pin },
                     profile: softhsm2, profiles_dir: \(profilesDirectory), sessions: 4, call_timeout: 500ms, checkout_wait: 500ms }
            keys:
              orders: { provider: hsm, allow: ["uri:spiffe://test/storage/node-1"], rotation: { period: 90d, notice: 7d } }
              invoices: { provider: hsm, allow: ["uri:spiffe://test/storage/node-2"] }\(keysExtra)\(kmip == nil ? "" : "\n  kmip-kek: { provider: hsm, allow: [] }")
            admin: { identities: ["cn:security-*"], token_hashes: ["\(sha256Hex(adminToken))"]\(adminExtra) }
            limits: { max_body_bytes: \(maxBodyBytes), rate_per_second: \(ratePerSecond), burst: \(burst), max_connections: \(maxConnections)\(limits) }
            \(transit.map { "transit:\n" + $0 } ?? "")
            \(kmip.map { "kmip:\n" + $0 } ?? "")
            """
        }
        let file = directory.appendingPathComponent("kmsd.yaml")
        try FileAuditSigner.createIfMissing(path: directory.appendingPathComponent("audit-key.pem").path)
        if withCRL {
            try Data(try pki.revocationList(revoking: []).utf8).write(to: directory.appendingPathComponent("crl.pem"))
        }
        try Data(yaml("ca.pem", withCRL ? "crl.pem" : nil, transit).utf8).write(to: file)
        let configuration = try Configuration.load(path: file.path)
        let daemon = Daemon(configuration)
        let providers = try await daemon.startProviders()
        for provider in providers.values {
            _ = try await provider.createKey(try KeyName("orders"))
            _ = try await provider.createKey(try KeyName("invoices"))
            if kmip != nil { _ = try await provider.createKey(try KeyName("kmip-kek")) }
        }
        let (stream, continuation) = AsyncStream<Int>.makeStream()
        let (metricsStream, metricsContinuation) = AsyncStream<Int>.makeStream()
        let (transitStream, transitContinuation) = AsyncStream<Int>.makeStream()
        let (kmipStream, kmipContinuation) = AsyncStream<Int>.makeStream()
        let parts = try await daemon.assemble(providers: providers) { continuation.yield($0) } onMetricsRunning: {
            metricsContinuation.yield($0)
        } onTransitRunning: {
            transitContinuation.yield($0)
        } onKMIPRunning: {
            kmipContinuation.yield($0)
        }
        let task = Task {
            try await ServiceGroup(configuration: .init(services: parts.services.map { .init(service: $0) }, logger: Logger(label: "kmsd.test")))
                .run()
        }
        var iterator = stream.makeAsyncIterator()
        guard let port = await iterator.next() else { throw FixtureError("kmsd did not start") }
        var metricsIterator = metricsStream.makeAsyncIterator()
        guard let metricsPort = await metricsIterator.next() else { throw FixtureError("the metrics listener did not start") }
        var transitPort = 0
        if transit != nil {
            var transitIterator = transitStream.makeAsyncIterator()
            guard let bound = await transitIterator.next() else { throw FixtureError("the transit listener did not start") }
            transitPort = bound
        }
        var kmipPort = 0
        if kmip != nil {
            var kmipIterator = kmipStream.makeAsyncIterator()
            guard let bound = await kmipIterator.next() else { throw FixtureError("the KMIP listener did not start") }
            kmipPort = bound
        }
        return RunningKMSD(directory: directory, port: port, metricsPort: metricsPort, transitPort: transitPort, kmipPort: kmipPort, shim: shim, task: task, adminToken: adminToken,
                           pki: pki, daemon: daemon, running: parts.running, providers: providers, audit: parts.audit, transit: transit, yaml: yaml)
    }

    /// Stops as kmsd does: the listeners, then the audit log (its closing checkpoint may need the HSM), then the providers.
    func stop() async {
        task.cancel()
        _ = try? await task.value
        await audit?.close()
        await Daemon.stop(providers)
    }

    var auditPath: String { directory.appendingPathComponent("audit/audit.jsonl").path }

    /// The API listener's open connections.
    var connections: ConnectionLimit { running.connections }
    var securityEvents: [String: Int] { running.server.events.snapshot }
    /// Writes the failed-handshake summaries now rather than at the end of the interval, once `count` failures have
    /// been counted (the server hears of a failure a moment after the client does; up to 5 s).
    func flushHandshakeFailures(once count: Int = 1) async throws {
        for _ in 0..<250 where securityEvents["tls_handshake_failed", default: 0] < count {
            try await Task.sleep(for: .milliseconds(20))
        }
        running.handshakeFailures.flush()
    }

    /// The audit records written so far (parsed).
    func auditRecords() throws -> [[String: Any]] {
        let text = (try? String(contentsOfFile: auditPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
    }

    /// An HTTPS client presenting `identity` (`node1`, `admin`, …; nil = no certificate), trusting the test CA.
    func client(_ identity: String?, maxTLS: TLSVersion? = nil) throws -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(directory.appendingPathComponent("ca.pem").path))
        if let identity {
            tls.certificateChain = try NIOSSLCertificate.fromPEMFile(directory.appendingPathComponent("\(identity).pem").path).map { .certificate($0) }
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: directory.appendingPathComponent("\(identity)-key.pem").path, format: .pem))
        }
        if let maxTLS { tls.maximumTLSVersion = maxTLS }
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
    }

    struct Reply {
        let status: Int
        let body: Data
        let retryAfter: String?
        var json: [String: Any] { (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] ?? [:] }
        var errorCode: String? { (json["error"] as? [String: Any])?["code"] as? String }
    }

    /// One request; throws only when no HTTP answer came (handshake refused, connection closed).
    func call(_ client: HTTPClient, _ method: String, _ path: String, body: Data? = nil, headers: [(String, String)] = [],
              timeout: Int64 = 10, port: Int? = nil) async throws -> Reply {
        var request = HTTPClientRequest(url: "https://localhost:\(port ?? self.port)\(path)")
        request.method = .init(rawValue: method)
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        let response = try await client.execute(request, timeout: .seconds(timeout))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        return Reply(status: Int(response.status.code), body: Data(bytes.readableBytesView),
                     retryAfter: response.headers.first(name: "Retry-After"))
    }

    func json(_ object: [String: Any]) -> Data { (try? JSONSerialization.data(withJSONObject: object)) ?? Data() }
}

/// kmsd as operators run it: its own process, from a configuration file in `directory`, found serving by its log.
struct KMSDProcess {
    let process: Process
    let log: URL
    let port: Int
    /// The Vault transit listener's port (0 without one).
    var transitPort = 0

    /// A new directory with the test PKI, a PIN file (0600) for a fresh SoftHSM token, and an audit signing key.
    static func prepare(_ name: String) throws -> (directory: URL, token: SoftHSMToken) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kmsd-\(name)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        _ = try RunningKMSD.pki(in: directory)
        let token = try SoftHSMToken.create()
        let pin = directory.appendingPathComponent("pin")
        try Data(token.userPIN.utf8).write(to: pin)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: pin.path)
        try FileAuditSigner.createIfMissing(path: directory.appendingPathComponent("audit-key.pem").path)
        return (directory, token)
    }

    /// The configuration's `providers` (SoftHSM `token` as `hsm`, PIN in the file `pin`) and `keys` (`orders`, for
    /// node-1) sections.
    static func hsmAndOrdersKey(_ token: SoftHSMToken) -> String {
        """
        providers:
          hsm: { type: pkcs11, module: \(SoftHSMToken.defaultModulePath), token: "pkcs11:token=\(token.label)", pin: { file: pin },
                 profile: softhsm2, profiles_dir: \(profilesDirectory) }
        keys:
          orders: { provider: hsm, allow: ["uri:spiffe://test/storage/node-1"] }
        """
    }

    /// A development configuration on loopback with mutual TLS, the SoftHSM provider, key `orders` and the admin
    /// pattern `cn:security-*`; `extra` adds top-level lines (an `audit` section, say).
    static func basicYAML(_ token: SoftHSMToken, _ extra: String = "") -> String {
        """
        mode: development
        data_dir: data
        listen: { api: "127.0.0.1:0" }
        tls: { cert: server.pem, key: server-key.pem, client_ca: ca.pem, min_version: "1.3" }
        \(hsmAndOrdersKey(token))
        admin: { identities: ["cn:security-*"] }
        \(extra)
        """
    }

    /// Starts kmsd from `yaml`, written to `<name>.yaml` in `directory`, logging to `<name>.log` (replicas sharing a
    /// directory take a name each).
    static func start(directory: URL, yaml: String, name: String = "kmsd") async throws -> KMSDProcess {
        let config = directory.appendingPathComponent("\(name).yaml")
        try Data(yaml.utf8).write(to: config)
        let log = directory.appendingPathComponent("\(name).log")
        let process = try BuiltExecutable("kmsd").start(["serve", "--config", config.path], log: log)
        // The API's port, from the log line that says kmsd is serving.
        func port(_ text: String, _ line: String) -> Int? {
            text.split(separator: "\n").first(where: { $0.contains(line) })
                .flatMap({ $0.firstMatch(of: /127\.0\.0\.1:([0-9]+)/) }).flatMap({ Int($0.1) })
        }
        let transit = yaml.contains("\ntransit:")
        for _ in 0..<200 {
            try await Task.sleep(for: .milliseconds(50))
            let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            if let api = port(text, "kmsd serving"), !transit || port(text, "transit serving") != nil {
                return KMSDProcess(process: process, log: log, port: api, transitPort: port(text, "transit serving") ?? 0)
            }
            guard process.isRunning else { throw FixtureError("kmsd exited: \(text)") }
        }
        process.terminate()
        throw FixtureError("kmsd did not start serving")
    }

    /// An HTTPS client trusting the test CA in `directory` and presenting its certificate `name` (`node1`, `admin`, …).
    static func client(_ name: String, in directory: URL) throws -> HTTPClient {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(directory.appendingPathComponent("ca.pem").path))
        configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(directory.appendingPathComponent("\(name).pem").path).map { .certificate($0) }
        configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: directory.appendingPathComponent("\(name)-key.pem").path, format: .pem))
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: configuration))
    }

    /// One JSON request to kmsd on `port`: the status and the decoded body (empty when it is not a JSON object).
    static func call(_ client: HTTPClient, port: Int, _ method: HTTPMethod, _ path: String, _ body: [String: Any]? = nil,
                     bearer: String? = nil) async throws -> (Int, [String: Any]) {
        var request = HTTPClientRequest(url: "https://localhost:\(port)\(path)")
        request.method = method
        if let bearer { request.headers.add(name: "Authorization", value: "Bearer \(bearer)") }
        if let body { request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: body))) }
        let response = try await client.execute(request, timeout: .seconds(10))
        let data = Data(try await response.body.collect(upTo: 1 << 20).readableBytesView)
        return (Int(response.status.code), (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:])
    }

    /// SIGTERM, and the exit status.
    func stop() -> Int32 {
        if process.isRunning { process.terminate() }
        process.waitUntilExit()
        return process.terminationStatus
    }
}

func sha256Hex(_ text: String) -> String {
    KMSServerPolicy.hexDigest(text)
}

let profilesDirectory = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("hsm-profiles").path
