import ArgumentParser
import AsyncHTTPClient
import Foundation
import Histogram
import KMSAudit
import KMSCore
import KMSDaemon
import KMSTestSupport
import NIOCore
import NIOHTTP1
import NIOSSL
import PKCS11

/// `kms-bench e2e`: kmsd as a process (from this build) on one SoftHSM token, driven over mutual TLS with keep-alive
/// connections by this process, against the raw PKCS#11 loop on the same token at the same concurrency. Runs kmsd
/// twice — without and with the audit log — and reports throughput, latency percentiles (HdrHistogram), the time from
/// start to ready, and kmsd's peak RSS.
struct EndToEndBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "e2e", abstract: "kmsd over mTLS (datakey, unwrap; with and without audit) vs the raw PKCS#11 loop.")

    @Option(help: "Seconds per measurement.") var seconds: Double = 3
    @Option(parsing: .upToNextOption, help: "Connections (concurrent requests) to measure.") var connections: [Int] = [1, 4, 16, 64]
    @Option(help: "The kmsd executable (default: next to kms-bench).") var kmsd: String?
    @Option(help: "kmsd's HSM session pool size.") var sessions: Int = 8
    @Flag(help: "Print JSON instead of tables.") var json = false

    func validate() throws {
        guard seconds > 0, !connections.isEmpty, connections.allSatisfy({ $0 >= 1 && $0 <= 1024 }), sessions >= 1 else {
            throw ValidationError("seconds must be positive, connections 1–1024, sessions ≥ 1")
        }
    }

    struct Measurement: Encodable {
        let operation: String
        let connections: Int
        let variant: String
        let opsPerSecond: Double
        let p50Ms: Double
        let p90Ms: Double
        let p99Ms: Double
        let maxMs: Double
        let errors: Int
        enum CodingKeys: String, CodingKey {
            case operation, connections, variant, errors
            case opsPerSecond = "ops_per_second"
            case p50Ms = "p50_ms"
            case p90Ms = "p90_ms"
            case p99Ms = "p99_ms"
            case maxMs = "max_ms"
        }
    }

    struct Run: Encodable {
        let variant: String
        let readySeconds: Double
        let peakRSSMegabytes: Double
        let auditRecords: Int?
        enum CodingKeys: String, CodingKey {
            case variant
            case readySeconds = "ready_seconds"
            case peakRSSMegabytes = "peak_rss_mb"
            case auditRecords = "audit_records"
        }
    }

    func run() async throws {
        let token = try SoftHSMToken.create()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kms-bench-e2e-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let pki = try DevPKI()
        try Data(pki.caPEM.utf8).write(to: directory.appendingPathComponent("ca.pem"))
        try DevPKI.write(try pki.issue(.server(hosts: ["localhost", "127.0.0.1"])), name: "server", to: directory)
        try DevPKI.write(try pki.issue(.client(uri: "spiffe://bench/storage/node", commonName: "node")), name: "node", to: directory)
        try DevPKI.write(try pki.issue(.client(uri: nil, commonName: "security-admin")), name: "admin", to: directory)
        let pin = directory.appendingPathComponent("pin")
        try Data(token.userPIN.utf8).write(to: pin)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: pin.path)
        try FileAuditSigner.createIfMissing(path: directory.appendingPathComponent("audit-key.pem").path)
        let executable = kmsd ?? URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("kmsd").path
        let profiles = URL(fileURLWithPath: executable).deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("hsm-profiles").path

        var measurements: [Measurement] = []
        var runs: [Run] = []
        var envelope: [UInt8]?
        for variant in ["no audit", "audit"] {
            let port = try Self.freePort()
            let audit = variant == "audit" ? "audit: { file: audit/audit.jsonl, sign: { file: audit-key.pem }, fail_closed: true }\n" : ""
            let yaml = """
                mode: development
                data_dir: data-\(variant == "audit" ? "a" : "n")
                log_level: warning
                listen: { api: "127.0.0.1:\(port)" }
                tls: { cert: server.pem, key: server-key.pem, client_ca: ca.pem, min_version: "1.3" }
                providers:
                  hsm: { type: pkcs11, module: \(token.module.path), token: "pkcs11:token=\(token.label)", pin: { file: pin },
                         profile: softhsm2, profiles_dir: \(profiles), sessions: \(sessions) }
                keys:
                  bench: { provider: hsm, allow: ["spiffe://bench/storage/*"] }
                admin: { identities: ["CN=security-admin"] }
                limits: { rate_per_second: 1000000, burst: 1000000, max_connections: 4096 }
                \(audit)
                """
            let config = directory.appendingPathComponent("kmsd-\(port).yaml")
            try Data(yaml.utf8).write(to: config)
            let started = ContinuousClock.now
            let process = try BuiltExecutable(url: URL(fileURLWithPath: executable))
                .start(["serve", "--config", config.path], log: directory.appendingPathComponent("kmsd-\(port).log"))
            defer { if process.isRunning { process.terminate() } }
            let largest = connections.max() ?? 1
            let node = try client("node", directory, pool: largest)
            let admin = try client("admin", directory, pool: 1)
            let base = "https://localhost:\(port)"
            var readySeconds = 0.0
            do {
                let ready = try await waitReady(node, base, process)
                readySeconds = (ContinuousClock.now - started).seconds
                _ = try await call(admin, base + "/v1/admin/keys", #"{"name":"bench"}"#)
                let context = #"{"context":{"cluster":"bench","table":"t"}}"#
                if envelope == nil {
                    let (_, body) = try await call(node, base + "/v1/keys/bench/datakey", context)
                    let wrapped = (try JSONSerialization.jsonObject(with: body) as? [String: Any])?["wrapped"] as? String
                    envelope = wrapped.flatMap { Data(base64Encoded: $0) }.map(Array.init)
                }
                guard ready, let wrapped = envelope else { throw FixtureError("kmsd did not become ready or gave no datakey") }
                let unwrapBody = #"{"wrapped":"\#(Data(wrapped).base64EncodedString())","context":{"cluster":"bench","table":"t"}}"#
                for n in connections {
                    measurements.append(try await measure("datakey", n, variant, node, base + "/v1/keys/bench/datakey", context))
                    measurements.append(try await measure("unwrap", n, variant, node, base + "/v1/keys/bench/unwrap", unwrapBody))
                }
            } catch {
                try? await node.shutdown()
                try? await admin.shutdown()
                let log = (try? String(contentsOf: directory.appendingPathComponent("kmsd-\(port).log"), encoding: .utf8)) ?? ""
                throw FixtureError("\(variant): \(error)\nkmsd log:\n\(log.suffix(2000))")
            }
            try? await node.shutdown()
            try? await admin.shutdown()
            let rss = Self.peakRSS(process.processIdentifier)
            process.terminate()
            process.waitUntilExit()
            let records = variant == "audit"
                ? (try? String(contentsOf: directory.appendingPathComponent("audit/audit.jsonl"), encoding: .utf8))?.split(separator: "\n").count
                : nil
            runs.append(Run(variant: variant, readySeconds: readySeconds, peakRSSMegabytes: rss, auditRecords: records))
        }

        // The raw limit on the same token, at the same concurrency (this process logs in once; sessions share it).
        let session = try token.module.openSession(token.slot)
        try Array(token.userPIN.utf8).withUnsafeBytes { try session.login(pin: $0) }
        defer { try? session.close() }
        let raw = try RawLoop(token: token, envelope: try Envelope(parsing: envelope ?? []), context: ["cluster": "bench", "table": "t"])
        var limits: [String: Double] = [:]
        for n in connections {
            limits["datakey \(n)"] = try raw.measure(threads: n, seconds: seconds, operation: .wrap)
            limits["unwrap \(n)"] = try raw.measure(threads: n, seconds: seconds, operation: .unwrap)
        }
        report(measurements, runs, limits)
    }

    // MARK: - Load

    private func client(_ name: String, _ directory: URL, pool: Int) throws -> HTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(directory.appendingPathComponent("ca.pem").path))
        tls.certificateChain = try NIOSSLCertificate.fromPEMFile(directory.appendingPathComponent("\(name).pem").path).map { .certificate($0) }
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: directory.appendingPathComponent("\(name)-key.pem").path, format: .pem))
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: pool)
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    private func call(_ client: HTTPClient, _ url: String, _ body: String) async throws -> (Int, Data) {
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(string: body))
        let response = try await client.execute(request, timeout: .seconds(10))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        return (Int(response.status.code), Data(bytes.readableBytesView))
    }

    private func waitReady(_ client: HTTPClient, _ base: String, _ process: Process) async throws -> Bool {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline && process.isRunning {
            if let response = try? await client.execute(HTTPClientRequest(url: base + "/v1/health/ready"), timeout: .seconds(1)),
               response.status == .ok {
                return true
            }
            try await Task.sleep(for: .milliseconds(5))
        }
        return false
    }

    private func measure(_ operation: String, _ n: Int, _ variant: String, _ client: HTTPClient, _ url: String, _ body: String)
        async throws -> Measurement
    {
        // Warm-up: open the connections.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<n { group.addTask { _ = try await call(client, url, body) } }
            try await group.waitForAll()
        }
        let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        let start = ContinuousClock.now
        let results = try await withThrowingTaskGroup(of: (Histogram<UInt64>, Int, Int).self) { group in
            for _ in 0..<n {
                group.addTask {
                    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
                    var count = 0
                    var errors = 0
                    while ContinuousClock.now < end {
                        let began = ContinuousClock.now
                        let status = (try? await call(client, url, body).0) ?? 0
                        let micros = (ContinuousClock.now - began).seconds * 1_000_000
                        _ = histogram.record(UInt64(max(1, micros)))
                        if status == 200 { count += 1 } else { errors += 1 }
                    }
                    return (histogram, count, errors)
                }
            }
            var merged = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
            var count = 0
            var errors = 0
            for try await (histogram, done, failed) in group {
                merged.add(histogram)
                count += done
                errors += failed
            }
            return (merged, count, errors)
        }
        let elapsed = (ContinuousClock.now - start).seconds
        let histogram = results.0
        return Measurement(
            operation: operation, connections: n, variant: variant, opsPerSecond: Double(results.1) / elapsed,
            p50Ms: Double(histogram.valueAtPercentile(50)) / 1000, p90Ms: Double(histogram.valueAtPercentile(90)) / 1000,
            p99Ms: Double(histogram.valueAtPercentile(99)) / 1000, maxMs: Double(histogram.max) / 1000, errors: results.2)
    }

    // MARK: - Report

    private func report(_ measurements: [Measurement], _ runs: [Run], _ limits: [String: Double]) {
        if json {
            struct Output: Encodable {
                let measurements: [Measurement]
                let runs: [Run]
                let rawLimit: [String: Double]
                enum CodingKeys: String, CodingKey {
                    case measurements, runs
                    case rawLimit = "raw_limit_ops_per_second"
                }
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            if let data = try? encoder.encode(Output(measurements: measurements, runs: runs, rawLimit: limits)) {
                print(String(decoding: data, as: UTF8.self))
            }
            return
        }
        print("kms-bench e2e: kmsd (separate process) on one SoftHSM token, mTLS keep-alive, \(seconds) s per measurement")
        print("raw = the PKCS#11 loop on the same token with as many threads as connections (the limit)")
        print("")
        print(pad("operation", 10) + pad("conns", 7) + pad("raw ops/s", 11) + pad("variant", 10) + pad("ops/s", 9) + pad("÷raw", 7)
            + pad("p50 ms", 8) + pad("p90 ms", 8) + pad("p99 ms", 8) + pad("max ms", 9) + "errors")
        for measurement in measurements {
            let limit = limits["\(measurement.operation) \(measurement.connections)"] ?? 0
            print(pad(measurement.operation, 10) + pad("\(measurement.connections)", 7) + pad(String(format: "%.0f", limit), 11)
                + pad(measurement.variant, 10) + pad(String(format: "%.0f", measurement.opsPerSecond), 9)
                + pad(String(format: "%.2f", limit > 0 ? measurement.opsPerSecond / limit : 0), 7)
                + pad(String(format: "%.2f", measurement.p50Ms), 8) + pad(String(format: "%.2f", measurement.p90Ms), 8)
                + pad(String(format: "%.2f", measurement.p99Ms), 8) + pad(String(format: "%.1f", measurement.maxMs), 9) + "\(measurement.errors)")
        }
        print("")
        for operation in ["datakey", "unwrap"] {
            let costs = connections.compactMap { n -> String? in
                guard let plain = measurements.first(where: { $0.operation == operation && $0.connections == n && $0.variant == "no audit" }),
                      let audited = measurements.first(where: { $0.operation == operation && $0.connections == n && $0.variant == "audit" }),
                      plain.opsPerSecond > 0 else { return nil }
                return "\(n): \(String(format: "%.1f", (1 - audited.opsPerSecond / plain.opsPerSecond) * 100))%"
            }
            print("audit cost (\(operation), 1 − audited/unaudited ops/s) by connections: \(costs.joined(separator: ", "))")
        }
        for run in runs {
            print("kmsd \(run.variant): ready \(String(format: "%.3f", run.readySeconds)) s after start, peak RSS \(String(format: "%.1f", run.peakRSSMegabytes)) MB"
                + (run.auditRecords.map { ", \($0) audit records" } ?? ""))
        }
    }

    private func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
    }

    // MARK: - Process facts

    static func peakRSS(_ pid: Int32) -> Double {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kilobytes = Double(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
        else { return 0 }
        return kilobytes / 1024
    }

    /// A port nothing listens on now (bound to 0 and released).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw FixtureError("socket failed") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard ok else { throw FixtureError("cannot find a free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
