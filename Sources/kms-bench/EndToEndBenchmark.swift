import ArgumentParser
import AsyncHTTPClient
import Foundation
import KMSAudit
import KMSCore
import KMSDaemon
import KMSTestSupport
import NIOCore
import NIOHTTP1
import NIOSSL
import PKCS11

/// `kms-bench e2e`: kmsd as a process (from this build) on one SoftHSM token, driven over mutual TLS with keep-alive
/// connections by `kms-load` (a lean generator in its own process), against the raw PKCS#11 loop on the same token at
/// the same concurrency. Runs kmsd twice — without and with the audit log — and reports throughput, latency
/// percentiles (HdrHistogram), kmsd's own CPU time and context switches per request (from /proc, next to the raw
/// loop's cost per wrap at one thread), the time from start to ready, and kmsd's peak RSS.
struct EndToEndBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "e2e", abstract: "kmsd over mTLS (datakey, unwrap; with and without audit) vs the raw PKCS#11 loop.")

    @Option(help: "Seconds per measurement.") var seconds: Double = 3
    @Option(parsing: .upToNextOption, help: "Connections (concurrent requests) to measure.") var connections: [Int] = [1, 4, 16, 64]
    @Option(help: "The kmsd executable (default: next to kms-bench).") var kmsd: String?
    @Option(help: "kmsd's HSM session pool size.") var sessions: Int = 8
    @Flag(help: "Print JSON instead of tables.") var json = false
    @Flag(inversion: .prefixedNo, help: "Also measure a key in vault-dev (through kmsd, and vault-dev's transit API directly as its limit).")
    var vault = true
    @Option(help: "api: kmsd's API against the raw loop (the default); transit: kmsd's Vault transit listener next to its own API, in one kmsd.")
    var frontend = "api"
    @Option(help: "With --state postgres: this many kmsd replicas on one throwaway PostgreSQL, next to one kmsd on SQLite.")
    var replicas = 1
    @Option(help: "sqlite (the default) or postgres: measure data keys with the PostgreSQL state store against SQLite.")
    var state = "sqlite"

    func validate() throws {
        guard seconds > 0, !connections.isEmpty, connections.allSatisfy({ $0 >= 1 && $0 <= 1024 }), sessions >= 1 else {
            throw ValidationError("seconds must be positive, connections 1–1024, sessions ≥ 1")
        }
        guard ["api", "transit"].contains(frontend) else { throw ValidationError("--frontend is api or transit") }
        guard ["sqlite", "postgres"].contains(state), (1...9).contains(replicas) else {
            throw ValidationError("--state is sqlite or postgres; --replicas 1–9")
        }
        guard replicas == 1 || state == "postgres" else { throw ValidationError("--replicas needs --state postgres (SQLite is one process)") }
    }

    struct Measurement: Encodable {
        let operation: String
        let connections: Int
        let variant: String
        let opsPerSecond: Double
        let p50Ms: Double
        let p90Ms: Double
        let p99Ms: Double
        let p999Ms: Double
        let maxMs: Double
        let errors: Int
        /// kmsd's CPU time (all threads) per answered request, and its threads' context switches per request.
        let cpuMicrosPerRequest: Double
        let contextSwitchesPerRequest: Double
        enum CodingKeys: String, CodingKey {
            case operation, connections, variant, errors
            case opsPerSecond = "ops_per_second"
            case p50Ms = "p50_ms"
            case p90Ms = "p90_ms"
            case p99Ms = "p99_ms"
            case p999Ms = "p999_ms"
            case maxMs = "max_ms"
            case cpuMicrosPerRequest = "kmsd_cpu_us_per_request"
            case contextSwitchesPerRequest = "kmsd_context_switches_per_request"
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
        if frontend == "transit" { return try await compareTransit() }
        if state == "postgres" { return try await compareStateStores() }
        let setup = try BenchSetup(kmsd: kmsd, sessions: sessions)
        defer { setup.remove() }
        var measurements: [Measurement] = []
        var runs: [Run] = []
        var envelope: [UInt8]?
        let context = #"{"context":{"cluster":"bench","table":"t"}}"#
        for variant in ["no audit", "audit"] {
            let kmsd = try await setup.start(audit: variant == "audit", name: variant == "audit" ? "audit" : "plain",
                                             pool: connections.max() ?? 1)
            do {
                if envelope == nil {
                    let (_, body) = try await kmsd.post(kmsd.node, "/v1/keys/bench/datakey", context)
                    let wrapped = (try JSONSerialization.jsonObject(with: body) as? [String: Any])?["wrapped"] as? String
                    envelope = wrapped.flatMap { Data(base64Encoded: $0) }.map(Array.init)
                }
                guard let wrapped = envelope else { throw FixtureError("kmsd gave no datakey") }
                let unwrapBody = #"{"wrapped":"\#(Data(wrapped).base64EncodedString())","context":{"cluster":"bench","table":"t"}}"#
                for n in connections {
                    measurements.append(try measure("datakey", n, variant, kmsd, setup, "/v1/keys/bench/datakey", context))
                    measurements.append(try measure("unwrap", n, variant, kmsd, setup, "/v1/keys/bench/unwrap", unwrapBody))
                }
            } catch {
                await kmsd.stop()
                throw error
            }
            let rss = kmsd.peakRSSMegabytes
            await kmsd.stop()
            for line in ((try? String(contentsOf: kmsd.log, encoding: .utf8)) ?? "").split(separator: "\n").suffix(3) {
                print("kmsd \(variant) log: \(line.prefix(300))")
            }
            let records = kmsd.auditFile.flatMap { try? String(contentsOf: $0, encoding: .utf8) }?.split(separator: "\n").count
            runs.append(Run(variant: variant, readySeconds: kmsd.readySeconds, peakRSSMegabytes: rss, auditRecords: records))
        }

        var limits: [String: Double] = [:]
        if vault {
            let server = try setup.startVaultDev()
            defer { server.stop() }
            let providers = """
                providers:
                  vault: { type: vault-transit, address: "\(server.address)", auth: { token_file: vault-token } }
                keys:
                  vbench: { provider: vault, allow: ["uri:spiffe://bench/storage/*"] }
                """
            let kmsd = try await setup.start(audit: false, name: "vault", pool: connections.max() ?? 1, providersAndKeys: providers, keys: ["vbench"])
            do {
                let (_, body) = try await kmsd.post(kmsd.node, "/v1/keys/vbench/datakey", context)
                guard let wrapped = (try JSONSerialization.jsonObject(with: body) as? [String: Any])?["wrapped"] as? String else {
                    throw FixtureError("kmsd gave no datakey for the Vault key")
                }
                let unwrapBody = #"{"wrapped":"\#(wrapped)","context":{"cluster":"bench","table":"t"}}"#
                for n in connections {
                    measurements.append(try measure("datakey", n, "vault", kmsd, setup, "/v1/keys/vbench/datakey", context))
                    measurements.append(try measure("unwrap", n, "vault", kmsd, setup, "/v1/keys/vbench/unwrap", unwrapBody))
                }
            } catch {
                await kmsd.stop()
                throw error
            }
            runs.append(Run(variant: "vault", readySeconds: kmsd.readySeconds, peakRSSMegabytes: kmsd.peakRSSMegabytes, auditRecords: nil))
            await kmsd.stop()
            // vault-dev's own limit: transit encrypt (with associated data, as kmsd sends it) and decrypt, directly.
            let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(
                connectionPool: .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: connections.max() ?? 1)))
            do {
                let plaintext = Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
                let aad = Data("kmsd-bench".utf8).base64EncodedString()
                let encrypt = #"{"plaintext":"\#(plaintext)","associated_data":"\#(aad)"}"#
                let (_, encrypted) = try await server.post(client, "transit/encrypt/vbench", encrypt)
                guard let ciphertext = ((try JSONSerialization.jsonObject(with: encrypted) as? [String: Any])?["data"] as? [String: Any])?["ciphertext"] as? String else {
                    throw FixtureError("vault-dev gave no ciphertext")
                }
                let decrypt = #"{"ciphertext":"\#(ciphertext)","associated_data":"\#(aad)"}"#
                for n in connections {
                    limits["vault datakey \(n)"] = try await Load.closedLoop(connections: n, seconds: seconds) {
                        (try? await server.post(client, "transit/encrypt/vbench", encrypt).0) ?? 0
                    }.opsPerSecond
                    limits["vault unwrap \(n)"] = try await Load.closedLoop(connections: n, seconds: seconds) {
                        (try? await server.post(client, "transit/decrypt/vbench", decrypt).0) ?? 0
                    }.opsPerSecond
                }
            } catch {
                try? await client.shutdown()
                throw error
            }
            try? await client.shutdown()
        }

        // The raw limit on the same token, at the same concurrency (this process logs in once; sessions share it).
        let token = setup.token
        let session = try token.module.openSession(token.slot)
        try Array(token.userPIN.utf8).withUnsafeBytes { try session.login(pin: $0) }
        defer { try? session.close() }
        let raw = try RawLoop(token: token, envelope: try Envelope(parsing: envelope ?? []), context: ["cluster": "bench", "table": "t"])
        // One thread too: its cost per operation is what kmsd's CPU per request is compared with.
        for n in Set(connections + [1]).sorted() {
            limits["datakey \(n)"] = try raw.measure(threads: n, seconds: seconds, operation: .wrap)
            limits["unwrap \(n)"] = try raw.measure(threads: n, seconds: seconds, operation: .unwrap)
        }
        report(measurements, runs, limits)
    }

    // MARK: - Load

    func measure(
        _ operation: String, _ n: Int, _ variant: String, _ kmsd: LaunchedKMSD, _ setup: BenchSetup, _ path: String, _ body: String,
        port: Int? = nil
    ) throws -> Measurement {
        let result = try LeanLoad.run(kmsd, setup, path: path, body: body, connections: n, seconds: seconds, port: port)
        func ms(_ key: String) -> Double { (result.latencyMicros[key] ?? 0) / 1000 }
        return Measurement(
            operation: operation, connections: n, variant: variant, opsPerSecond: result.requestsPerSecond,
            p50Ms: ms("p50"), p90Ms: ms("p90"), p99Ms: ms("p99"), p999Ms: ms("p999"), maxMs: ms("max"),
            errors: result.errors + result.failedStatuses, cpuMicrosPerRequest: result.cpuMicrosPerRequest,
            contextSwitchesPerRequest: result.contextSwitchesPerRequest)
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
        print("raw = the PKCS#11 loop on the same token with as many threads as connections (the limit); for the vault rows,")
        print("      vault-dev's transit encrypt/decrypt called directly with as many connections")
        print("")
        print("cpu µs/req = kmsd's own CPU time (all threads, /proc) per answered request; ×raw1 = that ÷ the raw loop's cost")
        print("      per operation at one thread; ctxsw/req = kmsd's context switches per request")
        print("")
        print(pad("operation", 10) + pad("conns", 7) + pad("raw ops/s", 11) + pad("variant", 10) + pad("ops/s", 9) + pad("÷raw", 7)
            + pad("p50 ms", 8) + pad("p90 ms", 8) + pad("p99 ms", 8) + pad("p99.9", 8) + pad("max ms", 9) + pad("cpu µs/req", 12)
            + pad("×raw1", 7) + pad("ctxsw/req", 11) + "errors")
        for measurement in measurements {
            let vault = measurement.variant == "vault" ? "vault " : ""
            let limit = limits[vault + "\(measurement.operation) \(measurement.connections)"] ?? 0
            let rawOne = limits[vault + "\(measurement.operation) 1"] ?? 0
            let rawCost = rawOne > 0 ? 1_000_000 / rawOne : 0
            print(pad(measurement.operation, 10) + pad("\(measurement.connections)", 7) + pad(String(format: "%.0f", limit), 11)
                + pad(measurement.variant, 10) + pad(String(format: "%.0f", measurement.opsPerSecond), 9)
                + pad(String(format: "%.2f", limit > 0 ? measurement.opsPerSecond / limit : 0), 7)
                + pad(String(format: "%.2f", measurement.p50Ms), 8) + pad(String(format: "%.2f", measurement.p90Ms), 8)
                + pad(String(format: "%.2f", measurement.p99Ms), 8) + pad(String(format: "%.2f", measurement.p999Ms), 8)
                + pad(String(format: "%.1f", measurement.maxMs), 9) + pad(String(format: "%.0f", measurement.cpuMicrosPerRequest), 12)
                + pad(rawCost > 0 ? String(format: "%.1f", measurement.cpuMicrosPerRequest / rawCost) : "-", 7)
                + pad(String(format: "%.1f", measurement.contextSwitchesPerRequest), 11) + "\(measurement.errors)")
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

    func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
    }
}
