public import Foundation
public import KMSState
import Synchronization

/// A throwaway PostgreSQL cluster for tests, driven by `ci/postgres` (the same script ci/test and `ci/dev --replicas`
/// use). ci/test starts one and names its directory in `KMSD_TEST_POSTGRES`; a test run without it (swift test by
/// hand) starts its own on first use and stops it when the process exits. Each test takes a fresh database. Every
/// call that runs the script is async and waits on a thread of its own.
public final class ThrowawayPostgres: Sendable {
    /// The directory `ci/postgres start` described the cluster in.
    public let directory: URL
    public let port: Int
    public let user: String
    public let password: String

    private static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("ci/postgres")
    private static let started = Mutex<Task<ThrowawayPostgres, any Error>?>(nil)
    /// The cluster this process started for `shared()`, stopped at exit.
    private static let ownShared = Mutex<URL?>(nil)

    private init(directory: URL) throws {
        self.directory = directory
        func read(_ name: String) throws -> String {
            guard let text = try? String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8) else {
                throw FixtureError("the PostgreSQL cluster in \(directory.path) has no \(name) file (ci/postgres start writes it)")
            }
            return text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        guard let port = Int(try read("port")) else { throw FixtureError("bad port file in \(directory.path)") }
        self.port = port
        user = try read("user")
        password = try read("password")
    }

    /// The cluster of this test process: ci/test's, or one started on first use (and stopped at exit).
    public static func shared() async throws -> ThrowawayPostgres {
        let task = started.withLock { state in
            if let state { return state }
            let task = Task<ThrowawayPostgres, any Error> {
                if let given = ProcessInfo.processInfo.environment["KMSD_TEST_POSTGRES"], !given.isEmpty {
                    return try ThrowawayPostgres(directory: URL(fileURLWithPath: given))
                }
                let cluster = try await start()
                ownShared.withLock { $0 = cluster.directory }
                atexit {
                    if let directory = ThrowawayPostgres.ownShared.withLock({ $0 }) {
                        _ = try? ThrowawayPostgres.runBlocking(["stop", directory.path])
                    }
                }
                return cluster
            }
            state = task
            return task
        }
        return try await task.value
    }

    /// A new cluster in a directory under the temporary directory; the caller stops it.
    private static func start() async throws -> ThrowawayPostgres {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postgres-\(UUID().uuidString)")
        try await run(["start", directory.path])
        return try ThrowawayPostgres(directory: directory)
    }

    /// A cluster of the caller's own (for a test that stops and starts it), for `body`, stopped and removed afterwards
    /// whatever happens.
    public static func withOwn<T>(_ body: (ThrowawayPostgres) async throws -> T) async throws -> T {
        let cluster = try await start()
        do {
            let result = try await body(cluster)
            await cluster.stop()
            return result
        } catch {
            await cluster.stop()
            throw error
        }
    }

    /// Stops the server and removes the cluster.
    public func stop() async {
        _ = try? await Self.run(["stop", directory.path])
    }

    /// A new empty database; its name.
    public func createDatabase() async throws -> String {
        let name = "kmsd_test_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(16)
        try await sql("CREATE DATABASE \(name)", database: "postgres")
        return name
    }

    /// Runs SQL as the superuser; returns psql's unaligned rows.
    @discardableResult
    public func sql(_ statement: String, database: String) async throws -> String {
        try await Self.run(["sql", directory.path, database, statement]).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Stops the server, keeping its data (an outage), and starts it again.
    public func pause() async throws { try await Self.run(["pause", directory.path]) }
    public func resume() async throws { try await Self.run(["resume", directory.path]) }

    /// Settings for a store on `database` as the superuser.
    public func settings(database: String, password: String? = nil, operationTimeout: Duration = .seconds(5)) -> PostgresStoreSettings {
        PostgresStoreSettings(host: "127.0.0.1", port: port, database: database, user: user, password: password ?? self.password,
                              operationTimeout: operationTimeout)
    }

    /// Runs ci/postgres on a thread of its own: waiting for it (initdb takes seconds) must not hold one of the
    /// cooperative pool's threads, which on two cores are all the threads every other test has. Returns its output;
    /// throws with it when the script fails.
    @discardableResult
    static func run(_ arguments: [String]) async throws -> String {
        let (status, text) = try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread { continuation.resume(with: Result { try runBlocking(arguments) }) }
        }
        guard status == 0 else { throw FixtureError("ci/postgres \(arguments.first ?? "") failed: \(text)") }
        return text
    }

    /// Runs ci/postgres with posix_spawn and waitpid. Its output goes to a file, not a pipe: the server it starts
    /// inherits descriptors, and a pipe would never reach end of file. (Foundation's Process left the script a zombie
    /// here, unreaped, with waitUntilExit never returning.)
    static func runBlocking(_ arguments: [String]) throws -> (status: Int32, text: String) {
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("ci-postgres-\(UUID().uuidString).log")
        defer { try? FileManager.default.removeItem(at: log) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, log.path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv = ([script.path] + arguments).map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, script.path, &actions, nil, argv, environ)
        guard spawned == 0 else { throw FixtureError("cannot run \(script.path): \(String(cString: strerror(spawned)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 {
            guard errno == EINTR else { throw FixtureError("waitpid for ci/postgres: \(String(cString: strerror(errno)))") }
        }
        let exited = status & 0x7F == 0
        let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        return (exited ? (status >> 8) & 0xFF : 128 + (status & 0x7F), text)
    }
}
