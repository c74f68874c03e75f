import ArgumentParser
import Foundation
import KMSCore
import KMSTestSupport
import NIOSSL
import PKCS11

/// `kms-bench kmip`: Get and Encrypt over KMIP against kmsd (from this build, on one SoftHSM token) and against
/// PyKMIP's own server (from the project's test virtualenv) on this machine in the same run, over one connection and
/// over several, with the lean KMIP client in this process; each server's own CPU time per operation from /proc; the
/// raw PKCS#11 unwrap on the same token (what every kmsd Get and Encrypt costs the HSM: opening the object's envelope)
/// as the limit; kmsd's HTTP datakey at the same concurrency for reference.
struct KMIPBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kmip", abstract: "KMIP Get and Encrypt: kmsd against PyKMIP's server, with the raw unwrap and kmsd's HTTP datakey.")

    @Option(help: "Seconds per measurement.") var seconds: Double = 3
    @Option(parsing: .upToNextOption, help: "Connections (concurrent requests) to measure.") var connections: [Int] = [1, 16]
    @Option(help: "The kmsd executable (default: next to kms-bench).") var kmsd: String?
    @Option(help: "kmsd's HSM session pool size.") var sessions: Int = 8
    @Option(help: "PyKMIP's server (default: .build-venv/bin/pykmip-server in the project; ci/test makes it).") var pykmipServer: String?
    @Flag(inversion: .prefixedNo, help: "Measure PyKMIP's server too.") var pykmip = true

    func validate() throws {
        guard seconds > 0, !connections.isEmpty, connections.allSatisfy({ (1 ... 256).contains($0) }), sessions >= 1 else {
            throw ValidationError("seconds must be positive, connections 1–256, sessions ≥ 1")
        }
    }

    struct Point {
        let opsPerSecond: Double
        let errors: Int
        let cpuMicros: Double
    }

    func run() async throws {
        let setup = try BenchSetup(kmsd: kmsd, sessions: sessions)
        defer { setup.remove() }
        let tls = try KMIPLoad.tls(setup)
        var kmsdPoints: [String: Point] = [:]
        var pykmipPoints: [String: Point] = [:]
        var datakey: [Int: Double] = [:]
        var envelope: [UInt8] = []

        let server = try await setup.start(audit: true, name: "kmip", pool: connections.max() ?? 1, keys: ["bench", "bench-kek"], kmip: true)
        do {
            let id = try KMIPRequests.uniqueIdentifier(try await KMIPLoad.exchange(port: server.kmipPort, tls: tls, KMIPRequests.create))
            _ = try await KMIPLoad.exchange(port: server.kmipPort, tls: tls, KMIPRequests.activate(id))
            for n in connections {
                for (operation, request) in [("get", KMIPRequests.get(id)), ("encrypt", KMIPRequests.encrypt(id))] {
                    kmsdPoints["\(operation) \(n)"] = try await measure(pid: server.process.processIdentifier) {
                        try await KMIPLoad.closedLoop(port: server.kmipPort, tls: tls, request: request, connections: n, seconds: seconds)
                    }
                }
                let context = #"{"context":{"cluster":"bench","table":"t"}}"#
                let result = try LeanLoad.run(server, setup, path: "/v1/keys/bench/datakey", body: context, connections: n, seconds: seconds)
                datakey[n] = result.requestsPerSecond
            }
            let (_, body) = try await server.post(server.node, "/v1/keys/bench/datakey", #"{"context":{"cluster":"bench","table":"t"}}"#)
            let wrapped = (try JSONSerialization.jsonObject(with: body) as? [String: Any])?["wrapped"] as? String
            envelope = wrapped.flatMap { Data(base64Encoded: $0) }.map(Array.init) ?? []
        } catch {
            await server.stop()
            throw error
        }
        await server.stop()

        if pykmip {
            let process = try startPyKMIP(setup)
            defer { stopPyKMIP(process) }
            let port = try pykmipPort(setup)
            let id = try KMIPRequests.uniqueIdentifier(try await KMIPLoad.exchange(port: port, tls: tls, KMIPRequests.create))
            _ = try await KMIPLoad.exchange(port: port, tls: tls, KMIPRequests.activate(id))
            for n in connections {
                for (operation, request) in [("get", KMIPRequests.get(id)), ("encrypt", KMIPRequests.encrypt(id))] {
                            pykmipPoints["\(operation) \(n)"] = try await measure(pid: process.processIdentifier) {
                        try await KMIPLoad.closedLoop(port: port, tls: tls, request: request, connections: n, seconds: seconds)
                    }
                }
            }
        }

        // The raw limit on the same token: one PKCS#11 unwrap per operation, at the same concurrency.
        let token = setup.token
        let session = try token.module.openSession(token.slot)
        try Array(token.userPIN.utf8).withUnsafeBytes { try session.login(pin: $0) }
        defer { try? session.close() }
        let raw = try RawLoop(token: token, envelope: try Envelope(parsing: envelope), context: ["cluster": "bench", "table": "t"])
        var limits: [Int: Double] = [:]
        for n in connections { limits[n] = try raw.measure(threads: n, seconds: seconds, operation: .unwrap) }

        print("KMIP 1.4 over mutual TLS, closed loop, \(seconds) s per point; each server's CPU per operation from /proc")
        print(pad("operation", 10) + pad("conns", 6) + pad("kmsd ops/s", 12) + pad("µs CPU/op", 11) + pad("PyKMIP ops/s", 14)
              + pad("µs CPU/op", 11) + pad("kmsd/PyKMIP", 13) + pad("raw unwrap/s", 14) + pad("kmsd/raw", 10) + "errors")
        for n in connections {
            for operation in ["get", "encrypt"] {
                let ours = kmsdPoints["\(operation) \(n)"]
                let theirs = pykmipPoints["\(operation) \(n)"]
                let ratio = ours.flatMap { ours in theirs.map { $0.opsPerSecond > 0 ? ours.opsPerSecond / $0.opsPerSecond : 0 } }
                let limit = limits[n] ?? 0
                print(pad(operation, 10) + pad("\(n)", 6) + pad(number(ours?.opsPerSecond), 12) + pad(number(ours?.cpuMicros), 11)
                      + pad(number(theirs?.opsPerSecond), 14) + pad(number(theirs?.cpuMicros), 11) + pad(ratio.map { String(format: "%.2f", $0) } ?? "-", 13)
                      + pad(number(limit), 14) + pad(limit > 0 ? String(format: "%.2f", (ours?.opsPerSecond ?? 0) / limit) : "-", 10)
                      + "\((ours?.errors ?? 0) + (theirs?.errors ?? 0))")
            }
        }
        print("kmsd HTTP datakey (reference, same kmsd): " + connections.map { "\($0) conn: \(number(datakey[$0])) ops/s" }.joined(separator: ", "))
    }

    /// One closed-loop measurement with the server's CPU time around it.
    func measure(pid: Int32, _ body: () async throws -> KMIPLoad.Result) async throws -> Point {
        let before = ProcessUsage(pid: pid)
        let result = try await body()
        let after = ProcessUsage(pid: pid)
        let done = max(1, result.ok + result.errors)
        return Point(opsPerSecond: result.opsPerSecond, errors: result.errors,
                     cpuMicros: (after.cpuSeconds - before.cpuSeconds) * 1_000_000 / Double(done))
    }

    /// PyKMIP's server on a free port with the bench PKI, its database and (empty) policy directory in the setup.
    func startPyKMIP(_ setup: BenchSetup) throws -> Process {
        let executable = pykmipServer ?? URL(fileURLWithPath: setup.executable).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent(".build-venv/bin/pykmip-server").path
        guard FileManager.default.isExecutableFile(atPath: executable) else {
            throw KMIPBenchError("no PyKMIP server at \(executable): run ci/test once (it makes .build-venv), or pass --pykmip-server, or --no-pykmip")
        }
        let port = try freeLoopbackPort()
        try FileManager.default.createDirectory(atPath: setup.path("pykmip-policies"), withIntermediateDirectories: true)
        let config = """
            [server]
            hostname=127.0.0.1
            port=\(port)
            certificate_path=\(setup.path("server.pem"))
            key_path=\(setup.path("server-key.pem"))
            ca_path=\(setup.path("ca.pem"))
            auth_suite=TLS1.2
            policy_path=\(setup.path("pykmip-policies"))
            enable_tls_client_auth=True
            logging_level=WARNING
            database_path=\(setup.path("pykmip.db"))

            """
        try Data(config.utf8).write(to: URL(fileURLWithPath: setup.path("pykmip.conf")))
        try Data("\(port)".utf8).write(to: URL(fileURLWithPath: setup.path("pykmip.port")))
        _ = FileManager.default.createFile(atPath: setup.path("pykmip.out"), contents: nil)
        let output = try FileHandle(forWritingTo: URL(fileURLWithPath: setup.path("pykmip.out")))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["-f", setup.path("pykmip.conf"), "-l", setup.path("pykmip.log")]
        process.standardOutput = output
        process.standardError = output
        try process.run()
        return process
    }

    /// Stops PyKMIP's server and the processes it started (SIGTERM leaves it waiting for its workers).
    func stopPyKMIP(_ process: Process) {
        let pid = process.processIdentifier
        var pids: [Int32] = [pid]
        for entry in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] {
            guard let child = Int32(entry),
                  let stat = try? String(contentsOfFile: "/proc/\(entry)/stat", encoding: .utf8),
                  let fields = stat.split(separator: ")").last?.split(separator: " "), fields.count > 1,
                  Int32(fields[1]) == pid else { continue }
            pids.append(child)
        }
        for target in pids { kill(target, SIGKILL) }
        process.waitUntilExit()
    }

    /// Waits until PyKMIP's server accepts connections; its port.
    func pykmipPort(_ setup: BenchSetup) throws -> Int {
        guard let port = Int((try? String(contentsOfFile: setup.path("pykmip.port"), encoding: .utf8)) ?? "") else {
            throw KMIPBenchError("no port for PyKMIP's server")
        }
        for _ in 0 ..< 100 {
            if canConnect(port) { return port }
            usleep(100_000)
        }
        throw KMIPBenchError("PyKMIP's server did not start: " + ((try? String(contentsOfFile: setup.path("pykmip.out"), encoding: .utf8)) ?? "").suffix(1000))
    }

    func canConnect(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    func number(_ value: Double?) -> String { value.map { $0 >= 100 ? String(format: "%.0f", $0) : String(format: "%.1f", $0) } ?? "-" }
    func pad(_ text: String, _ width: Int) -> String { text.padding(toLength: max(width, text.count + 1), withPad: " ", startingAt: 0) }
}
