public import Foundation
public import KMSCore
public import Logging
import NIOSSL
import PostgresNIO
import Synchronization

/// Where the PostgreSQL state store is and how to reach it (`state.postgres` in the configuration).
public struct PostgresStoreSettings: Sendable, CustomStringConvertible, CustomReflectable {
    /// TLS to the database: the CA that signed the server's certificate (checked, with the host name), and a client
    /// certificate when the server asks for one.
    public struct TLS: Sendable {
        public var caFile: String
        public var certificateFile: String?
        public var keyFile: String?
        public init(caFile: String, certificateFile: String? = nil, keyFile: String? = nil) {
            self.caFile = caFile
            self.certificateFile = certificateFile
            self.keyFile = keyFile
        }
    }

    public var host: String
    public var port: Int
    public var database: String
    public var user: String
    /// Read from its file or environment variable by the daemon; never printed.
    public var password: String?
    /// Without TLS the connection is plaintext: loopback or a private network only (production mode refuses it).
    public var tls: TLS?
    public var connectTimeout: Duration
    /// The longest one store operation may take, connection wait included; past it the operation fails.
    public var operationTimeout: Duration
    public var maxConnections: Int

    public init(host: String, port: Int = 5432, database: String, user: String, password: String? = nil, tls: TLS? = nil,
                connectTimeout: Duration = .seconds(5), operationTimeout: Duration = .seconds(5), maxConnections: Int = 8) {
        self.host = host
        self.port = port
        self.database = database
        self.user = user
        self.password = password
        self.tls = tls
        self.connectTimeout = connectTimeout
        self.operationTimeout = operationTimeout
        self.maxConnections = maxConnections
    }

    /// What `dump` and debuggers show: everything but the password.
    public var customMirror: Mirror {
        Mirror(self, children: [
            "host": host, "port": port, "database": database, "user": user, "password": password == nil ? "none" : "<redacted>",
            "tls": tls.map { "ca \($0.caFile)" } ?? "none", "operationTimeout": operationTimeout,
        ], displayStyle: .struct)
    }

    /// `postgres://USER@HOST:PORT/DATABASE`: no password.
    public var description: String {
        let hostText = host.contains(":") ? "[\(host)]" : host
        return "postgres://\(user)@\(hostText):\(port)/\(database)"
    }
}

/// The shared state store: one PostgreSQL database that every replica uses (tables prefixed `kmsd_`).
///
/// Schema migrations are numbered; `open` applies the missing ones in one transaction under a transaction-level
/// advisory lock, so replicas starting together migrate once, and refuses a database whose schema is newer than this
/// kmsd knows. Times are stored as seconds since 1970 (`double precision`), as the SQLite store does. Every operation
/// has a deadline (`operationTimeout`): an unreachable database fails operations, it does not hang them.
public final class PostgresStateStore: StateStore {
    /// Each migration's statements, oldest first; the schema version is the number applied.
    static let migrations: [[String]] = [
        [
            """
            CREATE TABLE kmsd_usage (
                key text NOT NULL, version bigint NOT NULL,
                wraps bigint NOT NULL DEFAULT 0, unwraps bigint NOT NULL DEFAULT 0,
                last_wrap_at double precision, last_unwrap_at double precision,
                PRIMARY KEY (key, version))
            """,
            """
            CREATE TABLE kmsd_versions (
                key text NOT NULL, version bigint NOT NULL, created_at double precision NOT NULL,
                PRIMARY KEY (key, version))
            """,
            """
            CREATE TABLE kmsd_journal (
                id bigserial PRIMARY KEY, at double precision NOT NULL, key text NOT NULL, action text NOT NULL,
                actor text NOT NULL, reason text NOT NULL, from_version bigint, to_version bigint,
                result text NOT NULL, detail text)
            """,
            "CREATE INDEX kmsd_journal_key ON kmsd_journal (key, id)",
            "CREATE TABLE kmsd_leases (name text PRIMARY KEY, holder text NOT NULL, expires_at double precision NOT NULL)",
        ],
        [
            // Wrap budgets: how much of each version's max_wraps has been handed out in blocks.
            """
            CREATE TABLE kmsd_budgets (
                key text NOT NULL, version bigint NOT NULL, reserved bigint NOT NULL, last_start bigint NOT NULL,
                PRIMARY KEY (key, version))
            """,
        ],
        [
            // The kmsd processes using the store, for status; lease epochs (fencing tokens).
            """
            CREATE TABLE kmsd_replicas (
                id text PRIMARY KEY, address text NOT NULL, version text NOT NULL, started_at double precision NOT NULL,
                last_seen double precision NOT NULL, holder text NOT NULL)
            """,
            "ALTER TABLE kmsd_leases ADD COLUMN epoch bigint NOT NULL DEFAULT 0",
            """
            CREATE TABLE kmsd_audit_anchors (
                replica text NOT NULL, seq bigint NOT NULL, line_hash text NOT NULL, signature text NOT NULL, time text NOT NULL,
                closing boolean NOT NULL, PRIMARY KEY (replica, seq))
            """,
        ],
        [
            // KMIP managed objects: a description and the key material's envelope under the wrapping key.
            """
            CREATE TABLE kmsd_managed_objects (
                id text PRIMARY KEY, owner text NOT NULL, metadata text NOT NULL, material text,
                wrapping_version bigint NOT NULL, revision bigint NOT NULL)
            """,
            "CREATE INDEX kmsd_managed_objects_wrapping ON kmsd_managed_objects (wrapping_version, id) WHERE material IS NOT NULL",
        ],
        [
            // Locate and the per-owner quota read one owner's objects, not every object.
            "CREATE INDEX kmsd_managed_objects_owner ON kmsd_managed_objects (owner, id)",
        ],
    ]
    /// The schema version this kmsd writes and understands.
    public static var schemaVersion: Int { migrations.count }
    /// The advisory lock migrations run under ("kmsd" in ASCII).
    static let migrationLock: Int64 = 0x6B6D_7364

    public let settings: PostgresStoreSettings
    public var location: String { settings.description }
    let logger: Logger
    private let tls: TLSConfiguration?
    private let clientConfiguration: PostgresClient.Configuration
    private let poolLogger: Logger

    /// The connection pool in use, and whether the last operation on it failed for want of a connection.
    private struct Pool {
        var client: PostgresClient
        var runner: Task<Void, Never>
        var failing = false
        /// The check of the database (and the new pool) an operation started while `failing`; the others wait for it.
        var reconnect: Task<Void, any Error>?
        /// Pools replaced after an outage, shutting down.
        var retired: [Task<Void, Never>] = []
        /// `keyChanges` listeners, stopped at close.
        var listeners: [Task<Void, Never>] = []
        /// After `close`: a reconnect that finishes then starts no pool.
        var closed = false
    }
    private let pool: Mutex<Pool>

    private init(settings: PostgresStoreSettings, logger: Logger) throws {
        self.settings = settings
        self.logger = logger
        var configuration = PostgresClient.Configuration(
            host: settings.host, port: settings.port, username: settings.user, password: settings.password,
            database: settings.database, tls: .disable)
        if let files = settings.tls {
            var tlsConfiguration = TLSConfiguration.makeClientConfiguration()
            tlsConfiguration.minimumTLSVersion = .tlsv12
            tlsConfiguration.certificateVerification = .fullVerification
            tlsConfiguration.trustRoots = .file(files.caFile)
            if let certificate = files.certificateFile, let key = files.keyFile {
                tlsConfiguration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
                tlsConfiguration.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            }
            configuration.tls = .require(tlsConfiguration)
            tls = tlsConfiguration
        } else {
            tls = nil
        }
        configuration.options.connectTimeout = settings.connectTimeout
        // The server gives up on its side within the deadline too: a statement or a lock wait never outlives it, and
        // a transaction left open by a replica that stopped answering is ended.
        let milliseconds = Self.milliseconds(settings.operationTimeout)
        configuration.options.additionalStartupParameters = [
            ("statement_timeout", "\(milliseconds)"), ("lock_timeout", "\(milliseconds)"),
            ("idle_in_transaction_session_timeout", "\(max(milliseconds, 1000))"),
        ]
        configuration.options.maximumConnections = settings.maxConnections
        configuration.options.minimumConnections = 0
        // The pool logs each failed connection attempt at info; kmsd reports the store's failures on the operations.
        var poolLogger = logger
        poolLogger.logLevel = max(logger.logLevel, .notice)
        self.poolLogger = poolLogger
        clientConfiguration = configuration
        let client = PostgresClient(configuration: configuration, backgroundLogger: poolLogger)
        pool = Mutex(Pool(client: client, runner: Task { await client.run() }))
    }

    /// Connects, applies missing migrations, and returns the store; fails (closing what it opened) when the database
    /// cannot be reached, refuses the credentials, or holds a newer schema.
    /// `migrate: false` (a reader such as `kmsctl audit verify`) changes nothing in the database.
    public static func open(_ settings: PostgresStoreSettings, logger: Logger = Logger(label: "kmsd.state"), migrate: Bool = true) async throws
        -> PostgresStateStore
    {
        let store: PostgresStateStore
        do {
            store = try PostgresStateStore(settings: settings, logger: logger)
        } catch {
            throw StateStoreError("state store \(settings): cannot set up TLS: \(error)")
        }
        do {
            try await store.probe()
            if migrate { try await store.migrate() }
        } catch {
            await store.close()
            throw error
        }
        return store
    }

    public func close() async {
        let runners = pool.withLock { pool in
            pool.closed = true
            pool.reconnect?.cancel()
            return pool.listeners + [pool.runner] + pool.retired
        }
        for runner in runners {
            runner.cancel()
            await runner.value
        }
    }

    /// The pool an operation uses. After an operation failed for want of a connection, the database is first checked
    /// with one connection of its own, and when it answers a fresh pool replaces the old one: postgres-nio's pool
    /// backs off for up to a minute between connection attempts after an outage, which would keep kmsd refusing long
    /// after the database is back. While the check fails, operations fail at once with its error.
    private func currentClient() async throws -> PostgresClient {
        let (client, reconnect): (PostgresClient, Task<Void, any Error>?) = pool.withLock { pool in
            guard pool.failing else { return (pool.client, nil) }
            if let reconnect = pool.reconnect { return (pool.client, reconnect) }
            let task = Task { try await self.replacePool() }
            pool.reconnect = task
            return (pool.client, task)
        }
        guard let reconnect else { return client }
        try await reconnect.value
        return pool.withLock { $0.client }
    }

    private func replacePool() async throws {
        do {
            try await Self.connectOnce(settings, tls, logger)
        } catch {
            pool.withLock { $0.reconnect = nil }
            throw error
        }
        let client = PostgresClient(configuration: clientConfiguration, backgroundLogger: poolLogger)
        let runner = Task { await client.run() }
        // The old pool is stopped only after an operation's deadline: what still runs on it (the database was slow,
        // not gone) finishes or times out on its own instead of failing at once.
        let grace = settings.operationTimeout
        let old = pool.withLock { pool -> Task<Void, Never>? in
            guard !pool.closed else { return nil }
            let old = pool.runner
            let stopping = Task {
                try? await Task.sleep(for: grace)
                old.cancel()
                await old.value
            }
            pool = Pool(client: client, runner: runner, retired: pool.retired + [stopping], listeners: pool.listeners)
            return old
        }
        guard old != nil else {
            runner.cancel()
            await runner.value
            return
        }
        logger.notice("state store reachable again; new connection pool", metadata: ["location": "\(location)"])
    }

    /// Notes an operation's failure on `client`: one the server did not answer (no connection, a connection lost, the
    /// deadline) sends the next operation to check the database first. Failures of a pool already replaced count
    /// for nothing.
    private func noteFailure(_ error: any Error, on client: PostgresClient) {
        if let error = Self.unwrapped(error) as? PSQLError, error.serverInfo != nil { return }
        pool.withLock { pool in
            if pool.client === client { pool.failing = true }
        }
    }

    static func milliseconds(_ duration: Duration) -> Int64 {
        let parts = duration.components
        return max(1, parts.seconds * 1000 + parts.attoseconds / 1_000_000_000_000_000)
    }

    /// One connection outside the pool, so that a wrong address, password or certificate is reported as what it is
    /// (the pool retries quietly until an operation's deadline).
    private func probe() async throws {
        try await guarded("connect") { [settings, tls, logger] _ in try await Self.connectOnce(settings, tls, logger) }
    }

    private static func connectOnce(_ settings: PostgresStoreSettings, _ tls: TLSConfiguration?, _ logger: Logger) async throws {
        let connection = try await PostgresConnection.connect(configuration: try connectionConfiguration(settings, tls), id: 0, logger: logger)
        try await connection.close()
    }

    /// One connection outside the pool, with the store's address, credentials, TLS and connect timeout.
    private static func connectionConfiguration(_ settings: PostgresStoreSettings, _ tls: TLSConfiguration?) throws -> PostgresConnection.Configuration {
        var configuration = PostgresConnection.Configuration(
            host: settings.host, port: settings.port, username: settings.user, password: settings.password,
            database: settings.database, tls: try tls.map { .require(try NIOSSLContext(configuration: $0)) } ?? .disable)
        configuration.options.connectTimeout = .milliseconds(milliseconds(settings.connectTimeout))
        return configuration
    }

    private func migrate() async throws {
        let known = Self.schemaVersion
        try await guarded("apply schema migrations") { [logger, location] client in
            try await client.withTransaction(logger: logger) { connection in
                try await connection.query("SELECT pg_advisory_xact_lock(\(Self.migrationLock))", logger: logger)
                var exists = false
                for try await found in try await connection.query("SELECT to_regclass('kmsd_schema') IS NOT NULL", logger: logger)
                    .decode(Bool.self) { exists = found }
                var current = 0
                if exists {
                    for try await version in try await connection.query("SELECT coalesce(max(version), 0) FROM kmsd_schema", logger: logger)
                        .decode(Int.self) { current = version }
                } else {
                    // Only a first start creates anything: a role without CREATE starts against a current schema.
                    try await connection.query(
                        "CREATE TABLE kmsd_schema (version integer NOT NULL, applied_at double precision NOT NULL)", logger: logger)
                }
                guard current <= known else {
                    throw StateStoreError("the state store \(location) has schema version \(current) and this kmsd knows up to \(known): "
                                          + "a newer kmsd migrated it; upgrade this kmsd rather than run it against a newer schema")
                }
                for version in (current + 1)..<(known + 1) {
                    for statement in Self.migrations[version - 1] {
                        try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                    }
                    let now = Date().timeIntervalSince1970
                    try await connection.query("INSERT INTO kmsd_schema (version, applied_at) VALUES (\(version), \(now))", logger: logger)
                }
            }
        }
    }

    public func addUsage(_ deltas: [VersionID: VersionUsage]) async throws {
        guard !deltas.isEmpty else { return }
        try await guarded("add usage") { [logger] client in
            try await client.withTransaction(logger: logger) { connection in
                // Rows in a fixed order, so two replicas flushing the same versions never deadlock.
                for (id, usage) in deltas.sorted(by: { $0.key < $1.key }) {
                    let lastWrap = usage.lastWrapAt?.timeIntervalSince1970
                    let lastUnwrap = usage.lastUnwrapAt?.timeIntervalSince1970
                    // greatest() ignores NULLs.
                    try await connection.query("""
                        INSERT INTO kmsd_usage AS u (key, version, wraps, unwraps, last_wrap_at, last_unwrap_at)
                        VALUES (\(id.key), \(Int64(id.version)), \(Int64(clamping: usage.wraps)), \(Int64(clamping: usage.unwraps)), \(lastWrap), \(lastUnwrap))
                        ON CONFLICT (key, version) DO UPDATE SET
                            wraps = u.wraps + excluded.wraps, unwraps = u.unwraps + excluded.unwraps,
                            last_wrap_at = greatest(u.last_wrap_at, excluded.last_wrap_at),
                            last_unwrap_at = greatest(u.last_unwrap_at, excluded.last_unwrap_at)
                        """, logger: logger)
                }
            }
        }
    }

    public func allUsage() async throws -> [VersionID: VersionUsage] {
        try await guarded("read usage") { [logger] client in
            var result: [VersionID: VersionUsage] = [:]
            let rows = try await client.query("SELECT key, version, wraps, unwraps, last_wrap_at, last_unwrap_at FROM kmsd_usage", logger: logger)
            for try await (key, version, wraps, unwraps, lastWrap, lastUnwrap) in rows.decode((String, Int64, Int64, Int64, Double?, Double?).self) {
                result[VersionID(key, UInt32(clamping: version))] = VersionUsage(
                    wraps: UInt64(clamping: wraps), unwraps: UInt64(clamping: unwraps),
                    lastWrapAt: lastWrap.map(Date.init(timeIntervalSince1970:)),
                    lastUnwrapAt: lastUnwrap.map(Date.init(timeIntervalSince1970:)))
            }
            return result
        }
    }

    public func recordVersionCreated(_ version: VersionID, at date: Date) async throws -> Date {
        try await guarded("record version") { [logger] client in
            let seconds = date.timeIntervalSince1970
            // Two statements: under READ COMMITTED the second sees a row another replica committed while the first waited.
            try await client.query("""
                INSERT INTO kmsd_versions (key, version, created_at) VALUES (\(version.key), \(Int64(version.version)), \(seconds))
                ON CONFLICT (key, version) DO NOTHING
                """, logger: logger)
            let rows = try await client.query(
                "SELECT created_at FROM kmsd_versions WHERE key = \(version.key) AND version = \(Int64(version.version))", logger: logger)
            for try await recorded in rows.decode(Double.self) { return Date(timeIntervalSince1970: recorded) }
            return date
        }
    }

    public func reserveWraps(_ version: VersionID, count: UInt64, limit: UInt64) async throws -> Range<UInt64>? {
        let count = Int64(clamping: count)
        let limit = Int64(clamping: limit)
        guard count > 0, limit > 0 else { return nil }
        return try await guarded("reserve wraps") { [logger] client in
            // One statement: the row is locked while it is read and moved, and SET sees the row as it was, so
            // last_start is where this block begins. A version's first block starts after the wraps already counted
            // for it (a version in use before budgets existed, or counted by a kmsd that does not reserve).
            let rows = try await client.query("""
                INSERT INTO kmsd_budgets AS b (key, version, reserved, last_start)
                SELECT \(version.key), \(Int64(version.version)), least(used + \(count), \(limit)), used
                FROM (SELECT coalesce((SELECT wraps FROM kmsd_usage WHERE key = \(version.key) AND version = \(Int64(version.version))), 0) AS used) AS u
                ON CONFLICT (key, version) DO UPDATE
                    SET last_start = greatest(b.reserved, excluded.last_start),
                        reserved = least(greatest(b.reserved, excluded.last_start) + \(count), \(limit))
                WHERE greatest(b.reserved, excluded.last_start) < \(limit)
                RETURNING last_start, reserved
                """, logger: logger)
            for try await (start, end) in rows.decode((Int64, Int64).self) {
                return end > start ? UInt64(start)..<UInt64(end) : nil
            }
            return nil
        }
    }

    public func reservedWraps() async throws -> [VersionID: UInt64] {
        try await guarded("read wrap budgets") { [logger] client in
            var result: [VersionID: UInt64] = [:]
            let rows = try await client.query("SELECT key, version, reserved FROM kmsd_budgets", logger: logger)
            for try await (key, version, reserved) in rows.decode((String, Int64, Int64).self) {
                result[VersionID(key, UInt32(clamping: version))] = UInt64(clamping: reserved)
            }
            return result
        }
    }

    public func versionCreationTimes() async throws -> [VersionID: Date] {
        try await guarded("read version creation times") { [logger] client in
            var result: [VersionID: Date] = [:]
            let rows = try await client.query("SELECT key, version, created_at FROM kmsd_versions", logger: logger)
            for try await (key, version, created) in rows.decode((String, Int64, Double).self) {
                result[VersionID(key, UInt32(clamping: version))] = Date(timeIntervalSince1970: created)
            }
            return result
        }
    }

    public func append(_ entry: JournalEntry) async throws {
        try await guarded("append to the journal") { [logger] client in
            let from = entry.fromVersion.map { Int64($0) }
            let to = entry.toVersion.map { Int64($0) }
            _ = try await client.query("""
                INSERT INTO kmsd_journal (at, key, action, actor, reason, from_version, to_version, result, detail)
                VALUES (\(entry.at.timeIntervalSince1970), \(entry.key), \(entry.action.rawValue), \(entry.actor), \(entry.reason),
                        \(from), \(to), \(entry.result.rawValue), \(entry.detail))
                """, logger: logger)
        }
    }

    public func journal(key: String?, limit: Int) async throws -> [JournalEntry] {
        try await guarded("read the journal") { [logger] client in
            let count = Int64(max(0, limit))
            let columns = "at, key, action, actor, reason, from_version, to_version, result, detail"
            let query: PostgresQuery = if let key {
                "SELECT \(unescaped: columns) FROM kmsd_journal WHERE key = \(key) ORDER BY id DESC LIMIT \(count)"
            } else {
                "SELECT \(unescaped: columns) FROM kmsd_journal ORDER BY id DESC LIMIT \(count)"
            }
            var entries: [JournalEntry] = []
            let rows = try await client.query(query, logger: logger)
            for try await row in rows {
                let (at, key, action, actor, reason, from, to, result, detail) = try row.decode(
                    (Double, String, String, String, String, Int64?, Int64?, String, String?).self)
                entries.append(JournalEntry(
                    at: Date(timeIntervalSince1970: at), key: key, action: .init(rawValue: action) ?? .rotate, actor: actor,
                    reason: reason, fromVersion: from.map { UInt32(clamping: $0) }, toVersion: to.map { UInt32(clamping: $0) },
                    result: .init(rawValue: result) ?? .failed, detail: detail))
            }
            return entries.reversed()
        }
    }

    /// Leases run on the database's clock (`now()`), not the replica's: `now` is ignored here. A replica whose clock
    /// is ahead would otherwise take a lease that has not expired for anyone else (two rotations reaching the HSM),
    /// and one whose clock is behind would keep one past its expiry.
    public func takeLease(_ name: String, holder: String, now: Date, duration: TimeInterval) async throws -> LeaseGrant? {
        try await guarded("take a lease") { [logger] client in
            // One statement: the conflicting row is locked, so of two replicas racing, the second sees the first's lease.
            let rows = try await client.query("""
                INSERT INTO kmsd_leases AS l (name, holder, expires_at, epoch)
                VALUES (\(name), \(holder), \(unescaped: Self.databaseNow) + \(duration), 1)
                ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at,
                    epoch = CASE WHEN l.holder = excluded.holder AND l.expires_at > \(unescaped: Self.databaseNow) THEN l.epoch ELSE l.epoch + 1 END
                WHERE l.holder = excluded.holder OR l.expires_at <= \(unescaped: Self.databaseNow)
                RETURNING epoch
                """, logger: logger)
            for try await epoch in rows.decode(Int64.self) { return LeaseGrant(name: name, holder: holder, epoch: UInt64(clamping: epoch)) }
            return nil
        }
    }

    /// The database's clock in seconds since 1970, as SQL (the lease columns hold such seconds).
    static let databaseNow = "extract(epoch from now())::double precision"

    public func holds(_ grant: LeaseGrant, now: Date) async throws -> Bool {
        try await guarded("check a lease") { [logger] client in
            let rows = try await client.query("""
                SELECT 1 FROM kmsd_leases WHERE name = \(grant.name) AND holder = \(grant.holder) AND epoch = \(Int64(clamping: grant.epoch))
                    AND expires_at > \(unescaped: Self.databaseNow)
                """, logger: logger)
            for try await _ in rows { return true }
            return false
        }
    }

    public func releaseLease(_ name: String, holder: String) async throws {
        try await guarded("release a lease") { [logger] client in
            _ = try await client.query("UPDATE kmsd_leases SET expires_at = 0 WHERE name = \(name) AND holder = \(holder)", logger: logger)
        }
    }

    public func append(_ entry: JournalEntry, fencedBy grant: LeaseGrant, now: Date) async throws -> Bool {
        try await guarded("append to the journal under a lease") { [logger] client in
            let from = entry.fromVersion.map { Int64($0) }
            let to = entry.toVersion.map { Int64($0) }
            // FOR SHARE: a take of the lease waits for this insert, and this insert re-reads a row taken meanwhile.
            let rows = try await client.query("""
                INSERT INTO kmsd_journal (at, key, action, actor, reason, from_version, to_version, result, detail)
                SELECT \(entry.at.timeIntervalSince1970), \(entry.key), \(entry.action.rawValue), \(entry.actor), \(entry.reason),
                       \(from), \(to), \(entry.result.rawValue), \(entry.detail)
                WHERE EXISTS (SELECT 1 FROM kmsd_leases WHERE name = \(grant.name) AND holder = \(grant.holder)
                              AND epoch = \(Int64(clamping: grant.epoch)) AND expires_at > \(unescaped: Self.databaseNow) FOR SHARE)
                RETURNING id
                """, logger: logger)
            for try await _ in rows { return true }
            return false
        }
    }

    public func heartbeat(_ replica: ReplicaRecord) async throws {
        try await guarded("record a heartbeat") { [logger] client in
            try await client.withTransaction(logger: logger) { connection in
                let lastSeen = replica.lastSeen.timeIntervalSince1970
                try await connection.query("""
                    INSERT INTO kmsd_replicas (id, address, version, started_at, last_seen, holder)
                    VALUES (\(replica.id), \(replica.address), \(replica.version), \(replica.startedAt.timeIntervalSince1970), \(lastSeen), \(replica.holder))
                    ON CONFLICT (id) DO UPDATE SET address = excluded.address, version = excluded.version,
                        started_at = excluded.started_at, last_seen = excluded.last_seen, holder = excluded.holder
                    """, logger: logger)
                try await connection.query("DELETE FROM kmsd_replicas WHERE last_seen < \(lastSeen - ReplicaRecord.forgetAfter)", logger: logger)
            }
        }
    }

    public func replicas(now: Date) async throws -> [ReplicaRecord] {
        try await guarded("read replicas") { [logger] client in
            var held: [String: [String]] = [:]
            let leases = try await client.query(
                "SELECT name, holder FROM kmsd_leases WHERE expires_at > \(unescaped: Self.databaseNow) ORDER BY name", logger: logger)
            for try await (name, holder) in leases.decode((String, String).self) { held[holder, default: []].append(name) }
            var result: [ReplicaRecord] = []
            let rows = try await client.query("""
                SELECT id, address, version, started_at, last_seen, holder FROM kmsd_replicas
                WHERE last_seen >= \(now.timeIntervalSince1970 - ReplicaRecord.forgetAfter) ORDER BY id
                """, logger: logger)
            for try await (id, address, version, started, seen, holder) in rows.decode((String, String, String, Double, Double, String).self) {
                result.append(ReplicaRecord(id: id, address: address, version: version, startedAt: Date(timeIntervalSince1970: started),
                                            lastSeen: Date(timeIntervalSince1970: seen), holder: holder, leases: held[holder] ?? []))
            }
            return result
        }
    }

    public func recordAuditAnchors(_ anchors: [AuditAnchor]) async throws {
        guard !anchors.isEmpty else { return }
        try await guarded("anchor audit checkpoints") { [logger] client in
            try await client.withTransaction(logger: logger) { connection in
                for anchor in anchors {
                    try await connection.query("""
                        INSERT INTO kmsd_audit_anchors (replica, seq, line_hash, signature, time, closing)
                        VALUES (\(anchor.replica), \(Int64(clamping: anchor.seq)), \(anchor.lineHash), \(anchor.signature), \(anchor.time), \(anchor.closing))
                        ON CONFLICT (replica, seq) DO NOTHING
                        """, logger: logger)
                }
            }
        }
    }

    public func auditAnchors() async throws -> [AuditAnchor] {
        try await guarded("read audit anchors") { [logger] client in
            var result: [AuditAnchor] = []
            let rows = try await client.query(
                "SELECT replica, seq, line_hash, signature, time, closing FROM kmsd_audit_anchors ORDER BY replica, seq", logger: logger)
            for try await (replica, seq, hash, signature, time, closing) in rows.decode((String, Int64, String, String, String, Bool).self) {
                result.append(AuditAnchor(replica: replica, seq: UInt64(clamping: seq), lineHash: hash, signature: signature, time: time,
                                                closing: closing))
            }
            return result
        }
    }

    /// The channel key changes are announced on.
    static let keyChannel = "kmsd_keys"

    public func announceKeyChange(_ key: String) async throws {
        try await guarded("announce a key change") { [logger] client in
            _ = try await client.query("SELECT pg_notify(\(Self.keyChannel), \(key))", logger: logger)
        }
    }

    /// Listens on a connection of its own (a pooled one would be handed to other queries). After each connect,
    /// `everyKey` first: what was announced while nobody listened is unknown. A lost connection is retried after
    /// 0.25 s, doubling up to 5 s.
    public func keyChanges() -> AsyncStream<String> {
        AsyncStream { continuation in
            let listener = Task { [settings, tls, logger] in
                var delay = Duration.milliseconds(250)
                while !Task.isCancelled {
                    do {
                        let connection = try await PostgresConnection.connect(
                            configuration: try Self.connectionConfiguration(settings, tls), id: 1, logger: logger)
                        delay = .milliseconds(250)
                        do {
                            try await connection.listen(on: Self.keyChannel) { notifications in
                                continuation.yield(KeyChanges.everyKey)
                                for try await notification in notifications { continuation.yield(notification.payload) }
                            }
                        } catch {
                            if !Task.isCancelled {
                                logger.warning("lost the state store's key-change connection; reconnecting", metadata: [
                                    "location": "\(settings)", "error": "\(Self.describe(error))",
                                ])
                            }
                        }
                        try? await connection.close()
                    } catch {
                        // Unreachable: the periodic read covers the gap; try again after the delay.
                    }
                    try? await Task.sleep(for: delay)
                    delay = min(delay * 2, .seconds(5))
                }
                continuation.finish()
            }
            pool.withLock { $0.listeners.append(listener) }
            continuation.onTermination = { _ in listener.cancel() }
        }
    }

    /// Runs a store operation within `operationTimeout`; database errors become `StateStoreError`s naming the store
    /// and what was attempted.
    ///
    /// The operation runs in a task of its own and the caller is answered at the deadline whatever it does: a task
    /// group would wait for a query already sent, which postgres-nio cannot cancel (a black-holed host keeps it until
    /// TCP gives up). The server bounds its side too (`statement_timeout`, `lock_timeout`; see `init`). Past the
    /// deadline the outcome is unknown: the operation may still commit.
    func guarded<T: Sendable>(_ what: String, _ body: @escaping @Sendable (PostgresClient) async throws -> T) async throws -> T {
        let timeout = settings.operationTimeout
        let location = location
        let outcome: Result<T, any Error> = await withCheckedContinuation { continuation in
            let once = AnswerOnce(continuation)
            let timer = Task {
                // Cancelled when the operation answers first: no sleeper outlives a quick operation.
                guard (try? await Task.sleep(for: timeout)) != nil else { return }
                let late = StateStoreError("state store \(location): cannot \(what): no answer within \(timeout) (the database is "
                                           + "unreachable, refuses connections, or is overloaded)")
                if once.answer(.failure(late)) { once.cancelWork() }
            }
            once.start(Task {
                let result: Result<T, any Error>
                do {
                    let client = try await self.currentClient()
                    do {
                        result = .success(try await body(client))
                    } catch {
                        self.noteFailure(error, on: client)
                        result = .failure(error)
                    }
                } catch {
                    result = .failure(error)
                }
                timer.cancel()
                _ = once.answer(result)
            })
        }
        switch outcome {
        case .success(let value):
            return value
        case .failure(let error):
            let inner = Self.unwrapped(error)
            if let inner = inner as? StateStoreError { throw inner }
            throw StateStoreError("state store \(location): cannot \(what): \(Self.describe(inner))")
        }
    }

    /// The error inside postgres-nio's transaction wrapper (the closure's, or BEGIN's or COMMIT's).
    static func unwrapped(_ error: any Error) -> any Error {
        guard let transaction = error as? PostgresTransactionError else { return error }
        return [transaction.closureError, transaction.beginError, transaction.commitError].compactMap { $0 }.first ?? error
    }

    /// What went wrong, without what postgres-nio keeps out of its descriptions (queries and their values): the error
    /// class, the server's message and SQLSTATE, the connection error underneath.
    static func describe(_ error: any Error) -> String {
        guard let error = error as? PSQLError else { return "\(error)" }
        var parts = ["\(error.code)"]
        if let message = error.serverInfo?[.message] { parts.append(message) }
        if let state = error.serverInfo?[.sqlState] { parts.append("SQLSTATE \(state)") }
        if let underlying = error.underlying { parts.append("\(underlying)") }
        return parts.joined(separator: ": ")
    }
}

/// Resumes a continuation with the first of two answers (the operation's or the deadline's); later ones are dropped.
/// When the deadline answers first, the operation's task is cancelled (postgres-nio gives up a wait for a connection).
private final class AnswerOnce<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<Result<T, any Error>, Never>?
        var work: Task<Void, Never>?
    }
    private let state: Mutex<State>

    init(_ continuation: CheckedContinuation<Result<T, any Error>, Never>) {
        state = Mutex(State(continuation: continuation))
    }

    func start(_ work: Task<Void, Never>) {
        state.withLock { $0.work = work }
    }

    /// True when this answer was the first.
    func answer(_ result: Result<T, any Error>) -> Bool {
        guard let continuation = state.withLock({ state in defer { state.continuation = nil }; return state.continuation }) else {
            return false
        }
        continuation.resume(returning: result)
        return true
    }

    func cancelWork() {
        state.withLock { $0.work }?.cancel()
    }
}
