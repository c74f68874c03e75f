import AsyncHTTPClient
import Foundation
import KMSAPI
import KMSClient
import KMSState
import KMSTestSupport
import NIOCore
import NIOHTTP1
import NIOSSL
import Testing

/// kmsd processes with `state: {postgres: …}`: two of them on one SoftHSM token and one database count their use
/// together and share the rotation journal; a database that cannot be reached stops kmsd from starting, with a
/// message that names the database and never the password.
@Suite("kmsd on the PostgreSQL state store")
struct StateStoreProcessTests {
    static func stateSection(_ cluster: ThrowawayPostgres, database: String, port: Int? = nil) -> String {
        """
        state:
          postgres: { host: 127.0.0.1, port: \(port ?? cluster.port), database: \(database), user: \(cluster.user),
                      password: { file: db-password }, connect_timeout: 2s, timeout: 3s }
        """
    }

    static func writePassword(_ password: String, in directory: URL) throws {
        let file = directory.appendingPathComponent("db-password")
        try Data(password.utf8).write(to: file)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: file.path)
    }

    /// Replica `index`'s configuration: `replica_id: replica-<index>`, its own data directory, the audit file
    /// `audit.jsonl` (which kmsd names `audit-replica-<index>.jsonl` for a replica), the shared token and database;
    /// `rotation` is added to the key `orders`.
    static func replicaYAML(_ token: SoftHSMToken, _ cluster: ThrowawayPostgres, database: String, index: Int, rotation: String? = nil) -> String {
        var yaml = KMSDProcess.basicYAML(token, Self.stateSection(cluster, database: database)
                                         + "\nreplica_id: replica-\(index)\naudit: { file: audit.jsonl, sign: { file: audit-key.pem } }")
            .replacingOccurrences(of: "data_dir: data\n", with: "data_dir: data-\(index)\n")
        if let rotation {
            yaml = yaml.replacingOccurrences(of: #"allow: ["uri:spiffe://test/storage/node-1"] }"#,
                                             with: #"allow: ["uri:spiffe://test/storage/node-1"], rotation: "# + rotation + " }")
        }
        return yaml
    }

    /// A fresh database on `cluster`, a directory (`KMSDProcess.prepare(name)`) holding its password, and `count`
    /// replicas started there from `replicaYAML` (then `adjust`); those started are stopped if a later one fails.
    static func startReplicas(_ count: Int, _ name: String, on cluster: ThrowawayPostgres, rotation: String? = nil,
                              adjust: (String) -> String = { $0 }) async throws -> (directory: URL, database: String, replicas: [KMSDProcess]) {
        let database = try await cluster.createDatabase()
        let (directory, token) = try KMSDProcess.prepare(name)
        try writePassword(cluster.password, in: directory)
        var replicas: [KMSDProcess] = []
        do {
            for index in 1...count {
                let yaml = adjust(replicaYAML(token, cluster, database: database, index: index, rotation: rotation))
                replicas.append(try await KMSDProcess.start(directory: directory, yaml: yaml, name: "replica-\(index)"))
            }
        } catch {
            for replica in replicas { _ = replica.stop() }
            throw error
        }
        return (directory, database, replicas)
    }

    /// Two replicas asked to create a key at once create it once; a rotation on one reaches the other within a second
    /// (its data keys use the new version); two replicas asked to rotate at the same instant make one version; a
    /// retirement on one is refused on the other at once (a wrap naming the retired version).
    @Test func aRotationOrRetirementOnOneReplicaReachesTheOtherWithinASecond() async throws {
        let cluster = try await ThrowawayPostgres.shared()
        let (directory, database, replicas) = try await Self.startReplicas(2, "follow", on: cluster) { yaml in
            yaml.replacingOccurrences(of: #"listen: { api: "127.0.0.1:0" }"#, with: #"listen: { api: "127.0.0.1:0", transit: "127.0.0.1:0" }"#)
                + "\ntransit: { keys: { orders: orders } }\n"
        }
        defer { for replica in replicas { _ = replica.stop() } }
        let (a, b) = (replicas[0], replicas[1])
        let node = try KMSDProcess.client("node1", in: directory)
        let admin = try KMSDProcess.client("admin", in: directory)
        try await using([node, admin]) {
            func datakeyVersion(_ replica: KMSDProcess) async throws -> Int? {
                try await KMSDProcess.call(node, port: replica.port, .POST, "/v1/keys/orders/datakey", ["context": ["n": "1"]]).1["version"] as? Int
            }
            func encryptWithVersion1(_ replica: KMSDProcess) async throws -> (Int, [String: Any]) {
                try await KMSDProcess.call(node, port: replica.transitPort, .POST, "/v1/transit/encrypt/orders",
                                           ["plaintext": Data("secret".utf8).base64EncodedString(), "key_version": 1])
            }
            // Both replicas asked to create the key at once: one creates it, the other finds it made (one version 1).
            for replica in [a, b] { #expect(try await KMSDProcess.call(admin, port: replica.port, .GET, "/v1/admin/status").0 == 200) }
            async let createdOnA = KMSDProcess.call(admin, port: a.port, .POST, "/v1/admin/keys", ["name": "orders"])
            async let createdOnB = KMSDProcess.call(admin, port: b.port, .POST, "/v1/admin/keys", ["name": "orders"])
            #expect(try await [createdOnA.0, createdOnB.0].sorted() == [201, 409])
            let (_, described) = try await KMSDProcess.call(admin, port: b.port, .GET, "/v1/admin/keys/orders")
            #expect((described["versions"] as? [[String: Any]])?.count == 1, "\(described)")
            #expect(try await cluster.sql("SELECT count(*) FROM kmsd_journal WHERE action = 'create' AND result = 'ok'", database: database) == "1")
            #expect(try await datakeyVersion(b) == 1)

            #expect(try await KMSDProcess.call(admin, port: a.port, .POST, "/v1/admin/keys/orders/rotate", ["reason": "drill"]).0 == 200)
            let rotated = ContinuousClock.now
            #expect(try await within(.seconds(5)) { try await datakeyVersion(b) == 2 })
            #expect(ContinuousClock.now - rotated < .seconds(1), "replica B wrapped with version 1 for \(ContinuousClock.now - rotated)")

            // Both replicas asked to rotate at the same instant: one new version, and both answer with it. The key's
            // lease is held (as by a third replica's change) while both requests arrive, so they overlap for certain.
            let held = try await cluster.sql("""
                INSERT INTO kmsd_leases (name, holder, expires_at, epoch) VALUES ('rotate/orders', 'test', extract(epoch from now()) + 60, 1)
                ON CONFLICT (name) DO UPDATE SET holder = 'test', expires_at = extract(epoch from now()) + 60, epoch = kmsd_leases.epoch + 1
                RETURNING holder
                """, database: database)
            #expect(held == "test")
            async let first = KMSDProcess.call(admin, port: a.port, .POST, "/v1/admin/keys/orders/rotate", ["reason": "at once"])
            async let second = KMSDProcess.call(admin, port: b.port, .POST, "/v1/admin/keys/orders/rotate", ["reason": "at once"])
            try await Task.sleep(for: .milliseconds(500))
            _ = try await cluster.sql("UPDATE kmsd_leases SET expires_at = 0 WHERE name = 'rotate/orders'", database: database)
            let answers = try await [first, second]
            #expect(answers.map(\.0) == [200, 200])
            #expect(answers.map { $0.1["version"] as? Int } == [3, 3], "\(answers)")
            #expect(answers.filter { $0.1["joined"] as? Bool == true }.count == 1, "\(answers)")
            #expect(try await cluster.sql("SELECT count(*) FROM kmsd_journal WHERE action = 'rotate' AND to_version = 3", database: database) == "1")

            #expect(try await encryptWithVersion1(b).0 == 200, "before the retirement version 1 wraps on B")
            #expect(try await KMSDProcess.call(admin, port: a.port, .POST, "/v1/admin/keys/orders/versions/1/retire", ["force": true]).0 == 200)
            let retired = ContinuousClock.now
            let refusal = try await encryptWithVersion1(b)
            #expect(ContinuousClock.now - retired < .seconds(1))
            #expect(refusal.0 == 400 && "\(refusal.1)".contains("less than the minimum encryption key version"), "\(refusal)")
        }
    }

    /// Three replicas behind `KMSClient` with all three endpoints, 16 connections of data keys: one replica is killed
    /// (SIGKILL) mid-load; no request fails beyond the client's retry, and every data key handed out unwraps on the
    /// two left.
    @Test func killingAReplicaUnderLoadFailsNoRequestAndLosesNoKey() async throws {
        let (directory, _, replicas) = try await Self.startReplicas(3, "failover", on: try await ThrowawayPostgres.shared())
        defer { for replica in replicas { _ = replica.stop() } }
        let admin = try KMSDProcess.client("admin", in: directory)
        try await using([admin]) { () async throws in
            #expect(try await KMSDProcess.call(admin, port: replicas[0].port, .POST, "/v1/admin/keys", ["name": "orders"]).0 == 201)
        }
        let client = try KMSClient(.init(
            server: replicas.map { "https://localhost:\($0.port)" }.joined(separator: ","),
            caFile: directory.appendingPathComponent("ca.pem").path, certificateFile: directory.appendingPathComponent("node1.pem").path,
            keyFile: directory.appendingPathComponent("node1-key.pem").path, timeout: .seconds(2), retries: 2, deadline: .seconds(10)))
        let stop = ContinuousClock.now + .seconds(3)
        let results = await withTaskGroup(of: (keys: [(String, String, String)], errors: [String]).self) { group in
            for connection in 0..<16 {
                group.addTask {
                    var keys: [(String, String, String)] = []
                    var errors: [String] = []
                    var request = 0
                    while ContinuousClock.now < stop {
                        let context = "\(connection)-\(request)"
                        request += 1
                        do {
                            let key = try await client.datakey("orders", context: ["n": context])
                            keys.append((context, key.plaintext, key.wrapped))
                        } catch {
                            errors.append("\(error)")
                        }
                    }
                    return (keys, errors)
                }
            }
            try? await Task.sleep(for: .seconds(1))
            kill(replicas[1].process.processIdentifier, SIGKILL)
            var keys: [(String, String, String)] = []
            var errors: [String] = []
            for await result in group {
                keys += result.keys
                errors += result.errors
            }
            return (keys: keys, errors: errors)
        }
        replicas[1].process.waitUntilExit()
        #expect(replicas[1].process.terminationReason == .uncaughtSignal, "replica 2 was killed")
        #expect(results.errors.isEmpty, "\(results.errors.count) errors reached the caller: \(results.errors.prefix(3))")
        #expect(results.keys.count > 100, "\(results.keys.count) data keys")
        let keys = results.keys
        let lost = await withTaskGroup(of: Int.self) { group in
            for connection in 0..<16 {
                group.addTask {
                    var lost = 0
                    for index in stride(from: connection, to: keys.count, by: 16) {
                        let (context, plaintext, wrapped) = keys[index]
                        let unwrapped = try? await client.unwrap("orders", wrapped: wrapped, context: ["n": context])
                        if unwrapped?.plaintext != plaintext { lost += 1 }
                    }
                    return lost
                }
            }
            return await group.reduce(0, +)
        }
        #expect(lost == 0, "\(lost) of \(keys.count) data keys did not unwrap on the replicas left")
        await client.shutdown()
    }

    /// Replica `index`'s audit file in `directory`.
    static func auditFile(_ directory: URL, index: Int) -> String { directory.appendingPathComponent("audit-replica-\(index).jsonl").path }

    /// The audit records of replica `index` in `directory`.
    static func auditRecords(_ directory: URL, index: Int) throws -> [[String: Any]] {
        let text = try String(contentsOfFile: auditFile(directory, index: index), encoding: .utf8)
        return text.split(separator: "\n").compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
    }

    @Test func twoReplicasCountTheirUseTogetherAndShareTheJournal() async throws {
        let cluster = try await ThrowawayPostgres.shared()
        let (directory, database, replicas) = try await Self.startReplicas(2, "replicas", on: cluster)
        defer { for replica in replicas { _ = replica.stop() } }
        let (first, second) = (replicas[0], replicas[1])

        func call(_ client: HTTPClient, _ port: Int, _ path: String, _ body: [String: Any]) async throws -> (Int, [String: Any]) {
            try await KMSDProcess.call(client, port: port, .POST, path, body)
        }
        let node = try KMSDProcess.client("node1", in: directory)
        let admin = try KMSDProcess.client("admin", in: directory)
        let statuses = try await using([node, admin]) {
            var statuses: [Int] = []
            statuses.append(try await call(admin, first.port, "/v1/admin/keys", ["name": "orders"]).0)
            var wrapped: [String] = []
            for (index, port) in [first.port, first.port, first.port, second.port, second.port].enumerated() {
                let (status, key) = try await call(node, port, "/v1/keys/orders/datakey", ["context": ["n": "\(index)"]])
                statuses.append(status)
                wrapped.append(key["wrapped"] as? String ?? "")
            }
            // What one replica wrapped, the other unwraps.
            statuses.append(try await call(node, first.port, "/v1/keys/orders/unwrap", ["wrapped": wrapped[4], "context": ["n": "4"]]).0)
            statuses.append(try await call(admin, second.port, "/v1/admin/keys/orders/rotate", ["reason": "drill"]).0)
            // Each replica lists both, by address, and the store as answering; readiness reports it.
            let ids: Set<String> = ["replica-1", "replica-2"]
            #expect(try await within(.seconds(10)) {
                let (_, status) = try await KMSDProcess.call(admin, port: first.port, .GET, "/v1/admin/status")
                let store = status["state_store"] as? [String: Any]
                let replicas = store?["replicas"] as? [[String: Any]] ?? []
                return store?["state"] as? String == "ok" && Set(replicas.compactMap { $0["id"] as? String }) == ids
                    && replicas.allSatisfy { ($0["address"] as? String)?.hasPrefix("127.0.0.1:") == true && $0["version"] as? String != nil }
            })
            let (readyStatus, ready) = try await KMSDProcess.call(node, port: second.port, .GET, "/v1/health/ready")
            #expect(readyStatus == 200 && ready["state_store"] as? String == "ok", "\(ready)")
            return statuses
        }
        #expect(statuses == [201, 200, 200, 200, 200, 200, 200, 200])
        // SIGTERM flushes each replica's counts.
        #expect(first.stop() == 0)
        #expect(second.stop() == 0)
        #expect(try await cluster.sql("SELECT version, wraps, unwraps FROM kmsd_usage WHERE key = 'orders' ORDER BY version", database: database)
                == "1|5|1")
        let rotations = try await cluster.sql("SELECT action, actor, reason, from_version, to_version, result FROM kmsd_journal WHERE action = 'rotate'",
                                        database: database)
        #expect(rotations == "rotate|cn:security-admin|manual: drill|1|2|ok")
        let logs = try [first.log, second.log].map { try String(contentsOf: $0, encoding: .utf8) }
        #expect(logs.allSatisfy { $0.contains("postgres://\(cluster.user)@127.0.0.1:\(cluster.port)/\(database)") })
        #expect(logs.allSatisfy { !$0.contains(cluster.password) })
    }

    /// `max_wraps: 5000` on three replicas under load from 16 connections: the audit records of all three hold at most
    /// 5,000 wraps under version 1, and the key rotated exactly once.
    @Test func threeReplicasUnderLoadWrapAVersionAtMostMaxWrapsTimesAndRotateOnce() async throws {
        let cluster = try await ThrowawayPostgres.shared()
        let (directory, database, replicas) = try await Self.startReplicas(3, "budgets", on: cluster, rotation: "{ max_wraps: 5000 }")
        defer { for replica in replicas { _ = replica.stop() } }
        let ports = replicas.map(\.port)
        let node = try KMSDProcess.client("node1", in: directory)
        let admin = try KMSDProcess.client("admin", in: directory)
        let requests = 16 * 400
        let statuses = try await using([node, admin]) {
            #expect(try await KMSDProcess.call(admin, port: ports[0], .POST, "/v1/admin/keys", ["name": "orders"]).0 == 201)
            return try await withThrowingTaskGroup(of: [Int: Int].self) { group in
                for connection in 0..<16 {
                    group.addTask {
                        var statuses: [Int: Int] = [:]
                        for request in 0..<(requests / 16) {
                            let port = ports[(connection + request) % 3]
                            let (status, _) = try await KMSDProcess.call(node, port: port, .POST, "/v1/keys/orders/datakey", ["context": ["c": "\(connection)"]])
                            statuses[status, default: 0] += 1
                        }
                        return statuses
                    }
                }
                var all: [Int: Int] = [:]
                for try await statuses in group { all.merge(statuses, uniquingKeysWith: +) }
                return all
            }
        }
        #expect(statuses == [200: requests], "every request succeeded, across the rotation")
        for replica in replicas { #expect(replica.stop() == 0) }
        var versions: [Int: Int] = [:]
        for index in 1...3 {
            for record in try Self.auditRecords(directory, index: index) where record["action"] as? String == "datakey" && record["result"] as? String == "ok" {
                versions[record["version"] as? Int ?? 0, default: 0] += 1
            }
        }
        #expect(versions.values.reduce(0, +) == requests, "one audit record per data key: \(versions)")
        #expect((versions[1] ?? 0) <= 5000 && (versions[1] ?? 0) > 0, "\(versions)")
        #expect(Set(versions.keys) == [1, 2], "\(versions)")
        #expect(try await cluster.sql("SELECT reason, from_version, to_version, result FROM kmsd_journal WHERE action = 'rotate'", database: database)
                == "usage|1|2|ok")
        #expect(try await cluster.sql("SELECT version, reserved FROM kmsd_budgets WHERE version = 1", database: database) == "1|5000")
        #expect(try await cluster.sql("SELECT version, wraps FROM kmsd_usage ORDER BY version", database: database)
                == versions.keys.sorted().map { "\($0)|\(versions[$0] ?? 0)" }.joined(separator: "\n"))

        // Each replica's chain carries its id and is anchored in the database: the three logs verify against the
        // anchors, and without one of them the check fails and names it.
        #expect(try Self.auditRecords(directory, index: 2).allSatisfy { $0["replica"] as? String == "replica-2" })
        let verify = ["audit", "verify", "--public-key", Self.auditFile(directory, index: 1) + ".pub.pem",
                      "--state", "postgres://\(cluster.user)@127.0.0.1:\(cluster.port)/\(database)",
                      "--password-file", directory.appendingPathComponent("db-password").path]
        let all = try BuiltExecutable("kmsctl").run(verify + (1...3).map { Self.auditFile(directory, index: $0) })
        #expect(all.status == 0 && all.output.contains("OK: replica replica-3"), "\(all.output)")
        let anchored = try await cluster.sql("SELECT count(*) FROM kmsd_audit_anchors", database: database)
        #expect(all.output.contains("anchors: \(anchored) of \(anchored)"), "\(all.output)")
        let missing = try BuiltExecutable("kmsctl").run(verify + (1...2).map { Self.auditFile(directory, index: $0) })
        #expect(missing.status == 2 && missing.output.contains("replica 'replica-3'") && missing.output.contains("none of the files"),
                "\(missing.output)")
    }

    /// The database stops under load: unwraps go on, data keys go on from the blocks the replicas hold and then get
    /// 503 `state_unavailable`; when the database is back, data keys are served again within 2 s, without a restart.
    @Test func theDatabaseStoppingUnderLoadRefusesOnlyWrapsBeyondTheHeldBlocksAndRecovers() async throws {
        // A cluster of its own, since it is stopped and started again.
        try await ThrowawayPostgres.withOwn { try await databaseOutage($0) }
    }

    func databaseOutage(_ cluster: ThrowawayPostgres) async throws {
        let (directory, _, replicas) = try await Self.startReplicas(2, "outage", on: cluster)
        defer { for replica in replicas { _ = replica.stop() } }
        let ports = replicas.map(\.port)
        let node = try KMSDProcess.client("node1", in: directory)
        let admin = try KMSDProcess.client("admin", in: directory)
        try await using([node, admin]) {
            #expect(try await KMSDProcess.call(admin, port: ports[0], .POST, "/v1/admin/keys", ["name": "orders"]).0 == 201)
            var wrapped: [(port: Int, blob: String)] = []
            for port in ports {
                let (status, key) = try await KMSDProcess.call(node, port: port, .POST, "/v1/keys/orders/datakey", ["context": ["n": "1"]])
                #expect(status == 200)
                wrapped.append((port, key["wrapped"] as? String ?? ""))
            }

            try await cluster.pause()
            // Each replica serves data keys from what it holds, then refuses with state_unavailable, and nothing else.
            var served = [0, 0]
            for (index, port) in ports.enumerated() {
                var refused = false
                for _ in 0..<20_000 {
                    let (status, body) = try await KMSDProcess.call(node, port: port, .POST, "/v1/keys/orders/datakey", ["context": ["n": "2"]])
                    if status == 200 { served[index] += 1; continue }
                    #expect(status == 503 && (body["error"] as? [String: Any])?["code"] as? String == "state_unavailable", "\(status) \(body)")
                    refused = true
                    break
                }
                #expect(refused, "replica \(index + 1) served 20,000 data keys with its database down")
            }
            #expect(served.allSatisfy { $0 > 0 }, "the replicas served from their held blocks: \(served)")
            // Unwraps do not need the database.
            for (port, blob) in wrapped {
                for target in ports {
                    let (status, _) = try await KMSDProcess.call(node, port: target, .POST, "/v1/keys/orders/unwrap", ["wrapped": blob, "context": ["n": "1"]])
                    #expect(status == 200, "unwrap of a key from \(port) on \(target)")
                }
            }

            try await cluster.resume()
            let back = ContinuousClock.now
            for port in ports {
                var status = 0
                while status != 200, ContinuousClock.now - back < .seconds(10) {
                    status = try await KMSDProcess.call(node, port: port, .POST, "/v1/keys/orders/datakey", ["context": ["n": "3"]]).0
                    if status != 200 { try await Task.sleep(for: .milliseconds(20)) }
                }
                #expect(status == 200)
            }
            let recovery = ContinuousClock.now - back
            #expect(recovery < .seconds(2), "data keys served again \(recovery) after the database came back")
        }
        for replica in replicas { #expect(replica.stop() == 0) }
    }

    @Test func kmsdDoesNotStartWithoutItsDatabaseAndSaysWhichOneWithoutThePassword() async throws {
        let cluster = try await ThrowawayPostgres.shared()
        let (directory, token) = try KMSDProcess.prepare("nodb")
        let wrong = "wrong-\(UUID().uuidString)"
        try Self.writePassword(wrong, in: directory)
        let database = try await cluster.createDatabase()
        do {
            let kmsd = try await KMSDProcess.start(directory: directory, yaml: KMSDProcess.basicYAML(token, Self.stateSection(cluster, database: database)))
            _ = kmsd.stop()
            Issue.record("kmsd started with a wrong database password")
        } catch let error as FixtureError {
            #expect(error.description.contains("kmsd exited"), "\(error)")
            #expect(error.description.contains("password authentication failed"), "\(error)")
            #expect(error.description.contains("/\(database)"), "\(error)")
            #expect(!error.description.contains(wrong))
        }
    }

    @Test func kmsctlMovesASingleNodesSQLiteStateIntoPostgreSQLOnce() async throws {
        let cluster = try await ThrowawayPostgres.shared()
        let database = try await cluster.createDatabase()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("migrate-\(UUID().uuidString)")
        let sqlite = try SQLiteStateStore(path: directory.appendingPathComponent("rotation.sqlite").path)
        try await sqlite.addUsage([VersionID("orders", 1): VersionUsage(wraps: 41, unwraps: 2), VersionID("orders", 2): VersionUsage(wraps: 1)])
        _ = try await sqlite.recordVersionCreated(VersionID("orders", 1), at: Date(timeIntervalSince1970: 1_800_000_000))
        try await sqlite.append(JournalEntry(at: Date(timeIntervalSince1970: 1_800_000_100), key: "orders", action: .rotate,
                                             actor: "scheduler", reason: "usage", fromVersion: 1, toVersion: 2, result: .ok))
        await sqlite.close()
        try Self.writePassword(cluster.password, in: directory)
        let passwordFile = directory.appendingPathComponent("db-password").path
        let url = "postgres://\(cluster.user)@127.0.0.1:\(cluster.port)/\(database)"
        let kmsctl = BuiltExecutable("kmsctl")
        let arguments = ["state", "migrate", "--from", "sqlite:\(sqlite.path)", "--to", url, "--password-file", passwordFile]
        let first = try kmsctl.run(arguments)
        #expect(first.status == 0, "\(first.output)")
        #expect(first.output.contains("1 version creation times, 2 usage rows (42 wraps), 1 journal entries"), "\(first.output)")
        #expect(try await cluster.sql("SELECT version, wraps, unwraps FROM kmsd_usage ORDER BY version", database: database) == "1|41|2\n2|1|0")
        #expect(try await cluster.sql("SELECT reason, from_version, to_version FROM kmsd_journal", database: database) == "usage|1|2")
        let second = try kmsctl.run(arguments)
        #expect(second.status == 4 && second.output.contains("already holds state"), "\(second.output)")
        #expect(try await cluster.sql("SELECT sum(wraps) FROM kmsd_usage", database: database) == "42")
        let inURL = try kmsctl.run(["state", "migrate", "--from", "sqlite:\(sqlite.path)", "--to",
                                    "postgres://\(cluster.user):\(cluster.password)@127.0.0.1:\(cluster.port)/\(database)"])
        #expect(inURL.status == 64 && inURL.output.contains("no password in the URL"), "\(inURL.output)")
    }
}
