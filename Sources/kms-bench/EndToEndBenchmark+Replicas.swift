import Foundation
import KMSTestSupport
import Synchronization

/// `kms-bench e2e --state postgres --replicas N`: data keys through one kmsd on the SQLite state store, then through
/// one and N kmsd replicas on one throwaway PostgreSQL (all on the same SoftHSM token, no audit), in one run. The
/// replicas share each measurement's connections (one `kms-load` per replica, at once). Prints throughput, the ratio
/// to SQLite, kmsd's CPU per request (all replicas), and the database's transactions per 1,000 data keys (from
/// `pg_stat_database`, so the replicas' heartbeats and flushes count too).
extension EndToEndBenchmark {
    struct StoreMeasurement: Encodable {
        let store: String
        let replicas: Int
        let connections: Int
        let opsPerSecond: Double
        let errors: Int
        let cpuMicrosPerRequest: Double
        /// PostgreSQL transactions (commits and rollbacks) per 1,000 answered data keys; nil for SQLite.
        let databaseTransactionsPer1000: Double?
        enum CodingKeys: String, CodingKey {
            case store, replicas, connections, errors
            case opsPerSecond = "ops_per_second"
            case cpuMicrosPerRequest = "kmsd_cpu_us_per_request"
            case databaseTransactionsPer1000 = "database_transactions_per_1000"
        }
    }

    func compareStateStores() async throws {
        let setup = try BenchSetup(kmsd: kmsd, sessions: sessions)
        defer { setup.remove() }
        let context = #"{"context":{"cluster":"bench","table":"t"}}"#
        let pool = connections.max() ?? 1
        var results: [StoreMeasurement] = []

        let sqlite = try await setup.start(audit: false, name: "sqlite", pool: pool)
        do {
            for n in connections { results.append(try await measureStore("sqlite", [sqlite], n, setup, context, database: nil)) }
        } catch {
            await sqlite.stop()
            throw error
        }
        await sqlite.stop()

        try await ThrowawayPostgres.withOwn { cluster in
            let database = try await cluster.createDatabase()
            let passwordFile = setup.directory.appendingPathComponent("db-password")
            try Data(cluster.password.utf8).write(to: passwordFile)
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: passwordFile.path)
            let state = """
                state:
                  postgres: { host: 127.0.0.1, port: \(cluster.port), database: \(database), user: \(cluster.user), password: { file: db-password } }

                """
            for count in Set([1, replicas]).sorted() {
                var launched: [LaunchedKMSD] = []
                do {
                    for index in 1...count {
                        launched.append(try await setup.start(audit: false, name: "pg\(count)-\(index)", pool: pool, extra: state))
                    }
                    for n in connections {
                        results.append(try await measureStore("postgres", launched, n, setup, context, database: (cluster, database)))
                    }
                } catch {
                    for kmsd in launched { await kmsd.stop() }
                    throw error
                }
                for kmsd in launched { await kmsd.stop() }
            }
        }
        reportStores(results)
    }

    /// One measurement: `connections` spread over `replicas` (one kms-load each, all at once).
    private func measureStore(_ store: String, _ replicas: [LaunchedKMSD], _ connections: Int, _ setup: BenchSetup, _ body: String,
                              database: (ThrowawayPostgres, String)?) async throws -> StoreMeasurement {
        func transactions() async throws -> Double? {
            guard let (cluster, name) = database else { return nil }
            return Double(try await cluster.sql("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = '\(name)'",
                                                database: name).trimmingCharacters(in: .whitespacesAndNewlines))
        }
        let before = try await transactions()
        let shares = replicas.indices.map { connections / replicas.count + ($0 < connections % replicas.count ? 1 : 0) }
        let outcomes = Mutex<[Result<LeanLoad.Outcome, any Error>]>([])
        let seconds = seconds
        // A thread per load generator, so all run at once (the dispatch pool is as wide as the cores).
        let finished = DispatchGroup()
        for index in replicas.indices where shares[index] > 0 {
            finished.enter()
            let replica = replicas[index]
            Thread {
                let result = Result(catching: {
                    try LeanLoad.run(replica, setup, path: "/v1/keys/bench/datakey", body: body, connections: shares[index], seconds: seconds)
                })
                outcomes.withLock { $0.append(result) }
                finished.leave()
            }.start()
        }
        finished.wait()
        let after = try await transactions()
        let answered = try outcomes.withLock { $0 }.map { try $0.get() }
        let requests = answered.reduce(0) { $0 + $1.requests }
        let cpu = answered.reduce(0.0) { $0 + $1.cpuMicrosPerRequest * Double($1.requests) }
        return StoreMeasurement(
            store: store, replicas: replicas.count, connections: connections,
            opsPerSecond: answered.reduce(0) { $0 + $1.requestsPerSecond }, errors: answered.reduce(0) { $0 + $1.errors + $1.failedStatuses },
            cpuMicrosPerRequest: cpu / Double(max(1, requests)),
            databaseTransactionsPer1000: before.flatMap { start in after.map { ($0 - start) * 1000 / Double(max(1, requests)) } })
    }

    private func reportStores(_ results: [StoreMeasurement]) {
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            if let data = try? encoder.encode(results) { print(String(decoding: data, as: UTF8.self)) }
            return
        }
        print("kms-bench e2e --state postgres: data keys through kmsd on one SoftHSM token (no audit), \(seconds) s per measurement;")
        print("one kmsd on SQLite, then 1 and \(replicas) replica(s) on one throwaway PostgreSQL sharing the connections")
        print("÷sqlite = ops/s ÷ the SQLite kmsd's at the same connections; db tx/1000 = PostgreSQL transactions per 1,000 data keys")
        print("")
        print(pad("store", 10) + pad("replicas", 10) + pad("conns", 7) + pad("ops/s", 9) + pad("÷sqlite", 9) + pad("cpu µs/req", 12)
            + pad("db tx/1000", 12) + "errors")
        for result in results {
            let base = results.first { $0.store == "sqlite" && $0.connections == result.connections }?.opsPerSecond ?? 0
            print(pad(result.store, 10) + pad("\(result.replicas)", 10) + pad("\(result.connections)", 7)
                + pad(String(format: "%.0f", result.opsPerSecond), 9) + pad(base > 0 ? String(format: "%.2f", result.opsPerSecond / base) : "-", 9)
                + pad(String(format: "%.0f", result.cpuMicrosPerRequest), 12)
                + pad(result.databaseTransactionsPer1000.map { String(format: "%.1f", $0) } ?? "-", 12) + "\(result.errors)")
        }
    }
}
