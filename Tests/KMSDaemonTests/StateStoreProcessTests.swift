import AsyncHTTPClient
import Foundation
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

    @Test func twoReplicasCountTheirUseTogetherAndShareTheJournal() async throws {
        let cluster = try await ThrowawayPostgres.shared()
        let database = try await cluster.createDatabase()
        let (directory, token) = try KMSDProcess.prepare("replicas")
        try Self.writePassword(cluster.password, in: directory)
        let yaml = KMSDProcess.basicYAML(token, Self.stateSection(cluster, database: database))
        let first = try await KMSDProcess.start(directory: directory, yaml: yaml)
        defer { _ = first.stop() }
        let second = try await KMSDProcess.start(directory: directory, yaml: yaml)
        defer { _ = second.stop() }

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
