public import Foundation
import GRDB
public import KMSCore

/// The embedded state store: one SQLite file (`<data_dir>/rotation.sqlite`), written through GRDB.
///
/// Several processes may open the same file (SQLite's file locks serialize their writes; a busy timeout waits for
/// them). Leases are taken in `IMMEDIATE` transactions, so two schedulers never both see a lease as free.
/// Migrations are GRDB's, named `v1`, `v2`, …, applied under a lock on `<path>.lock`; a file that holds a migration
/// this kmsd does not know (a newer kmsd wrote it) is refused rather than used.
public final class SQLiteStateStore: StateStore {
    public let path: String
    let queue: DatabaseQueue

    public var location: String { "sqlite:\(path)" }

    /// Opens (creating if needed) the store at `path`; the file is readable by its owner only.
    public init(path: String) throws {
        self.path = path
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
            var configuration = GRDB.Configuration()
            configuration.busyMode = .timeout(10)
            configuration.label = "kmsd.rotation"
            queue = try DatabaseQueue(path: path, configuration: configuration)
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
            // Processes opening a new file together would each see no migration applied and each create the tables:
            // the check and the migrations run under an exclusive lock on a file beside the store (the advisory lock
            // of the PostgreSQL store).
            let lock = open(path + ".lock", O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
            guard lock >= 0 else { throw StateStoreError("cannot open \(path).lock: \(String(cString: strerror(errno)))") }
            let lockHandle = FileHandle(fileDescriptor: lock, closeOnDealloc: true)
            defer { try? lockHandle.close() }
            // Migrations take milliseconds; a lock held for 10 s means a process stuck in the middle of one.
            let deadline = ContinuousClock.now + .seconds(10)
            while flock(lock, LOCK_EX | LOCK_NB) != 0 {
                guard errno == EWOULDBLOCK || errno == EINTR else {
                    throw StateStoreError("cannot lock \(path).lock: \(String(cString: strerror(errno)))")
                }
                guard ContinuousClock.now < deadline else {
                    throw StateStoreError("\(path).lock has been held for 10 s by another process opening this store; is a kmsd stuck?")
                }
                usleep(20_000)
            }
            let migrator = Self.migrator
            let unknown = try queue.read { db in try migrator.appliedIdentifiers(db) }.subtracting(migrator.migrations)
            guard unknown.isEmpty else {
                throw StateStoreError("the state store at \(path) has schema migrations this kmsd does not know "
                                      + "(\(unknown.sorted().joined(separator: ", "))); a newer kmsd wrote it: upgrade this kmsd "
                                      + "rather than run it against a newer schema")
            }
            try migrator.migrate(queue)
        } catch let error as StateStoreError {
            throw error
        } catch {
            throw StateStoreError("cannot open the rotation state store at \(path): \(error)")
        }
    }

    /// Opens an existing store read-only (`kmsctl state migrate` reads its source so): no migration, no lock file, no
    /// change of mode; a file of another schema version is read as it is.
    public init(readingOnly path: String) throws {
        self.path = path
        guard FileManager.default.fileExists(atPath: path) else { throw StateStoreError("there is no state store at \(path)") }
        do {
            var configuration = GRDB.Configuration()
            configuration.readonly = true
            configuration.busyMode = .timeout(10)
            queue = try DatabaseQueue(path: path, configuration: configuration)
        } catch {
            throw StateStoreError("cannot open the rotation state store at \(path) to read it: \(error)")
        }
    }

    public func close() async {
        try? queue.close()
    }

    public func heartbeat(_ replica: ReplicaRecord) async throws {
        try await guarded("record a heartbeat") { [queue] in
            try await queue.write { db in
                try db.execute(sql: """
                    INSERT OR REPLACE INTO replicas (id, address, version, started_at, last_seen, holder) VALUES (?, ?, ?, ?, ?, ?)
                    """, arguments: [replica.id, replica.address, replica.version, replica.startedAt.timeIntervalSince1970,
                                      replica.lastSeen.timeIntervalSince1970, replica.holder])
                try db.execute(sql: "DELETE FROM replicas WHERE last_seen < ?",
                               arguments: [replica.lastSeen.timeIntervalSince1970 - ReplicaRecord.forgetAfter])
            }
        }
    }

    public func replicas(now: Date) async throws -> [ReplicaRecord] {
        try await guarded("read replicas") { [queue] in
            try await queue.read { db in
                let held = try Row.fetchAll(db, sql: "SELECT name, holder FROM leases WHERE expires_at > ? ORDER BY name",
                                            arguments: [now.timeIntervalSince1970])
                return try Row.fetchAll(db, sql: "SELECT * FROM replicas WHERE last_seen >= ? ORDER BY id",
                                        arguments: [now.timeIntervalSince1970 - ReplicaRecord.forgetAfter]).map { row in
                    let holder: String = row["holder"]
                    return ReplicaRecord(id: row["id"], address: row["address"], version: row["version"],
                                         startedAt: Date(timeIntervalSince1970: row["started_at"]),
                                         lastSeen: Date(timeIntervalSince1970: row["last_seen"]), holder: holder,
                                         leases: held.filter { $0["holder"] == holder }.map { $0["name"] })
                }
            }
        }
    }

    public func recordAuditAnchors(_ anchors: [AuditAnchor]) async throws {
        guard !anchors.isEmpty else { return }
        try await guarded("anchor audit checkpoints") { [queue] in
            try await queue.write { db in
                for anchor in anchors {
                    try db.execute(sql: """
                        INSERT OR IGNORE INTO audit_anchors (replica, seq, line_hash, signature, time, closing) VALUES (?, ?, ?, ?, ?, ?)
                        """, arguments: [anchor.replica, Int64(clamping: anchor.seq), anchor.lineHash, anchor.signature, anchor.time, anchor.closing])
                }
            }
        }
    }

    public func auditAnchors() async throws -> [AuditAnchor] {
        try await guarded("read audit anchors") { [queue] in
            try await queue.read { db in
                try Row.fetchAll(db, sql: "SELECT * FROM audit_anchors ORDER BY replica, seq").map { row in
                    let seq: Int64 = row["seq"]
                    return AuditAnchor(replica: row["replica"], seq: UInt64(clamping: seq), lineHash: row["line_hash"],
                                             signature: row["signature"], time: row["time"], closing: row["closing"])
                }
            }
        }
    }

    /// One process per file is the SQLite store's use: there is nobody to tell; others read the backend periodically.
    public func announceKeyChange(_ key: String) async throws {}

    public func keyChanges() -> AsyncStream<String> {
        AsyncStream { $0.finish() }
    }

    private static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: """
                CREATE TABLE usage (
                    key TEXT NOT NULL, version INTEGER NOT NULL,
                    wraps INTEGER NOT NULL DEFAULT 0, unwraps INTEGER NOT NULL DEFAULT 0,
                    last_wrap_at REAL, last_unwrap_at REAL,
                    PRIMARY KEY (key, version));
                CREATE TABLE versions (
                    key TEXT NOT NULL, version INTEGER NOT NULL, created_at REAL NOT NULL,
                    PRIMARY KEY (key, version));
                CREATE TABLE journal (
                    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, key TEXT NOT NULL, action TEXT NOT NULL,
                    actor TEXT NOT NULL, reason TEXT NOT NULL, from_version INTEGER, to_version INTEGER,
                    result TEXT NOT NULL, detail TEXT);
                CREATE INDEX journal_key ON journal (key, id);
                CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT NOT NULL, expires_at REAL NOT NULL);
                """)
        }
        migrator.registerMigration("v2") { db in
            // Wrap budgets: how much of each version's max_wraps has been handed out in blocks.
            try db.execute(sql: """
                CREATE TABLE budgets (
                    key TEXT NOT NULL, version INTEGER NOT NULL, reserved INTEGER NOT NULL, last_start INTEGER NOT NULL,
                    PRIMARY KEY (key, version));
                """)
        }
        migrator.registerMigration("v3") { db in
            // The kmsd processes using the store, for status; lease epochs (fencing tokens).
            try db.execute(sql: """
                CREATE TABLE replicas (
                    id TEXT PRIMARY KEY, address TEXT NOT NULL, version TEXT NOT NULL, started_at REAL NOT NULL,
                    last_seen REAL NOT NULL, holder TEXT NOT NULL);
                ALTER TABLE leases ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
                CREATE TABLE audit_anchors (
                    replica TEXT NOT NULL, seq INTEGER NOT NULL, line_hash TEXT NOT NULL, signature TEXT NOT NULL, time TEXT NOT NULL,
                    closing INTEGER NOT NULL, PRIMARY KEY (replica, seq));
                """)
        }
        migrator.registerMigration("v4") { db in
            // KMIP managed objects: a description and the key material's envelope under the wrapping key.
            try db.execute(sql: """
                CREATE TABLE managed_objects (
                    id TEXT PRIMARY KEY, owner TEXT NOT NULL, metadata TEXT NOT NULL, material TEXT,
                    wrapping_version INTEGER NOT NULL, revision INTEGER NOT NULL);
                CREATE INDEX managed_objects_wrapping ON managed_objects (wrapping_version, id) WHERE material IS NOT NULL;
                """)
        }
        migrator.registerMigration("v5") { db in
            // Locate and the per-owner quota read one owner's objects, not every object.
            try db.execute(sql: "CREATE INDEX managed_objects_owner ON managed_objects (owner, id)")
        }
        return migrator
    }

    public func addUsage(_ deltas: [VersionID: VersionUsage]) async throws {
        guard !deltas.isEmpty else { return }
        try await guarded("add usage") { [queue] in
            try await queue.write { db in
                for (id, usage) in deltas {
                    // max() of SQLite returns NULL when either side is NULL; coalesce picks the side that is not.
                    try db.execute(sql: """
                        INSERT INTO usage (key, version, wraps, unwraps, last_wrap_at, last_unwrap_at)
                        VALUES (?, ?, ?, ?, ?, ?)
                        ON CONFLICT (key, version) DO UPDATE SET
                            wraps = wraps + excluded.wraps, unwraps = unwraps + excluded.unwraps,
                            last_wrap_at = coalesce(max(last_wrap_at, excluded.last_wrap_at), last_wrap_at, excluded.last_wrap_at),
                            last_unwrap_at = coalesce(max(last_unwrap_at, excluded.last_unwrap_at), last_unwrap_at, excluded.last_unwrap_at)
                        """, arguments: [id.key, Int64(id.version), Int64(clamping: usage.wraps), Int64(clamping: usage.unwraps),
                                         usage.lastWrapAt?.timeIntervalSince1970, usage.lastUnwrapAt?.timeIntervalSince1970])
                }
            }
        }
    }

    public func allUsage() async throws -> [VersionID: VersionUsage] {
        try await guarded("read usage") { [queue] in
            try await queue.read { db in
                var result: [VersionID: VersionUsage] = [:]
                for row in try Row.fetchAll(db, sql: "SELECT key, version, wraps, unwraps, last_wrap_at, last_unwrap_at FROM usage") {
                    let version: Int64 = row["version"]
                    let wraps: Int64 = row["wraps"]
                    let unwraps: Int64 = row["unwraps"]
                    let lastWrap: Double? = row["last_wrap_at"]
                    let lastUnwrap: Double? = row["last_unwrap_at"]
                    result[VersionID(row["key"], UInt32(clamping: version))] = VersionUsage(
                        wraps: UInt64(clamping: wraps), unwraps: UInt64(clamping: unwraps),
                        lastWrapAt: lastWrap.map(Date.init(timeIntervalSince1970:)),
                        lastUnwrapAt: lastUnwrap.map(Date.init(timeIntervalSince1970:)))
                }
                return result
            }
        }
    }

    public func recordVersionCreated(_ version: VersionID, at date: Date) async throws -> Date {
        try await guarded("record version") { [queue] in
            try await queue.write { db in
                try db.execute(sql: "INSERT OR IGNORE INTO versions (key, version, created_at) VALUES (?, ?, ?)",
                               arguments: [version.key, Int64(version.version), date.timeIntervalSince1970])
                let recorded = try Double.fetchOne(db, sql: "SELECT created_at FROM versions WHERE key = ? AND version = ?",
                                                   arguments: [version.key, Int64(version.version)])
                return recorded.map(Date.init(timeIntervalSince1970:)) ?? date
            }
        }
    }

    public func reserveWraps(_ version: VersionID, count: UInt64, limit: UInt64) async throws -> Range<UInt64>? {
        let count = Int64(clamping: count)
        let limit = Int64(clamping: limit)
        guard count > 0, limit > 0 else { return nil }
        return try await guarded("reserve wraps") { [queue] in
            try await queue.write { db in
                // SET sees the row as it was, so last_start is where this block begins. A version's first block
                // starts after the wraps already counted for it. (`WHERE true` tells SQLite's parser that ON CONFLICT
                // belongs to the INSERT.)
                let row = try Row.fetchOne(db, sql: """
                    INSERT INTO budgets AS b (key, version, reserved, last_start)
                    SELECT ?1, ?2, min(used + ?3, ?4), used
                    FROM (SELECT coalesce((SELECT wraps FROM usage WHERE key = ?1 AND version = ?2), 0) AS used) WHERE true
                    ON CONFLICT (key, version) DO UPDATE
                        SET last_start = max(b.reserved, excluded.last_start), reserved = min(max(b.reserved, excluded.last_start) + ?3, ?4)
                    WHERE max(b.reserved, excluded.last_start) < ?4
                    RETURNING last_start, reserved
                    """, arguments: [version.key, Int64(version.version), count, limit])
                guard let row else { return nil }
                let start: Int64 = row["last_start"]
                let end: Int64 = row["reserved"]
                return end > start ? UInt64(start)..<UInt64(end) : nil
            }
        }
    }

    public func reservedWraps() async throws -> [VersionID: UInt64] {
        try await guarded("read wrap budgets") { [queue] in
            try await queue.read { db in
                var result: [VersionID: UInt64] = [:]
                for row in try Row.fetchAll(db, sql: "SELECT key, version, reserved FROM budgets") {
                    let version: Int64 = row["version"]
                    let reserved: Int64 = row["reserved"]
                    result[VersionID(row["key"], UInt32(clamping: version))] = UInt64(clamping: reserved)
                }
                return result
            }
        }
    }

    public func versionCreationTimes() async throws -> [VersionID: Date] {
        try await guarded("read version creation times") { [queue] in
            try await queue.read { db in
                var result: [VersionID: Date] = [:]
                for row in try Row.fetchAll(db, sql: "SELECT key, version, created_at FROM versions") {
                    let version: Int64 = row["version"]
                    let created: Double = row["created_at"]
                    result[VersionID(row["key"], UInt32(clamping: version))] = Date(timeIntervalSince1970: created)
                }
                return result
            }
        }
    }

    public func append(_ entry: JournalEntry) async throws {
        try await guarded("append to the journal") { [queue] in
            try await queue.write { db in try Self.insert(db, entry) }
        }
    }

    private static func insert(_ db: Database, _ entry: JournalEntry) throws {
        try db.execute(sql: """
            INSERT INTO journal (at, key, action, actor, reason, from_version, to_version, result, detail)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [entry.at.timeIntervalSince1970, entry.key, entry.action.rawValue, entry.actor, entry.reason,
                             entry.fromVersion.map { Int64($0) }, entry.toVersion.map { Int64($0) }, entry.result.rawValue,
                             entry.detail])
    }

    public func journal(key: String?, limit: Int) async throws -> [JournalEntry] {
        try await guarded("read the journal") { [queue] in
            try await queue.read { db in
                let rows = try Row.fetchAll(db, sql: """
                    SELECT * FROM journal WHERE ? IS NULL OR key = ? ORDER BY id DESC LIMIT ?
                    """, arguments: [key, key, max(0, limit)])
                return rows.reversed().map { row in
                    let at: Double = row["at"]
                    let action: String = row["action"]
                    let result: String = row["result"]
                    let from: Int64? = row["from_version"]
                    let to: Int64? = row["to_version"]
                    return JournalEntry(
                        at: Date(timeIntervalSince1970: at), key: row["key"], action: .init(rawValue: action) ?? .rotate,
                        actor: row["actor"], reason: row["reason"], fromVersion: from.map { UInt32(clamping: $0) },
                        toVersion: to.map { UInt32(clamping: $0) }, result: .init(rawValue: result) ?? .failed,
                        detail: row["detail"])
                }
            }
        }
    }

    public func takeLease(_ name: String, holder: String, now: Date, duration: TimeInterval) async throws -> LeaseGrant? {
        try await guarded("take a lease") { [queue] in
            try await queue.writeWithoutTransaction { db in
                var grant: LeaseGrant?
                try db.inTransaction(.immediate) {
                    let row = try Row.fetchOne(db, sql: "SELECT holder, expires_at, epoch FROM leases WHERE name = ?", arguments: [name])
                    let current: String? = row?["holder"]
                    let expires: Double = row?["expires_at"] ?? 0
                    let epoch: Int64 = row?["epoch"] ?? 0
                    let held = expires > now.timeIntervalSince1970
                    if current == nil || current == holder || !held {
                        let next = current == holder && held ? epoch : epoch + 1
                        try db.execute(sql: "INSERT OR REPLACE INTO leases (name, holder, expires_at, epoch) VALUES (?, ?, ?, ?)",
                                       arguments: [name, holder, now.timeIntervalSince1970 + duration, next])
                        grant = LeaseGrant(name: name, holder: holder, epoch: UInt64(clamping: next))
                    }
                    return .commit
                }
                return grant
            }
        }
    }

    public func holds(_ grant: LeaseGrant, now: Date) async throws -> Bool {
        try await guarded("check a lease") { [queue] in
            try await queue.read { db in try Self.holds(db, grant, now) }
        }
    }

    private static func holds(_ db: Database, _ grant: LeaseGrant, _ now: Date) throws -> Bool {
        try Row.fetchOne(db, sql: "SELECT 1 FROM leases WHERE name = ? AND holder = ? AND epoch = ? AND expires_at > ?",
                         arguments: [grant.name, grant.holder, Int64(clamping: grant.epoch), now.timeIntervalSince1970]) != nil
    }

    public func releaseLease(_ name: String, holder: String) async throws {
        try await guarded("release a lease") { [queue] in
            try await queue.write { db in
                try db.execute(sql: "UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ?", arguments: [name, holder])
            }
        }
    }

    public func append(_ entry: JournalEntry, fencedBy grant: LeaseGrant, now: Date) async throws -> Bool {
        try await guarded("append to the journal under a lease") { [queue] in
            try await queue.write { db in
                guard try Self.holds(db, grant, now) else { return false }
                try Self.insert(db, entry)
                return true
            }
        }
    }

    /// Runs a store operation; SQLite errors become `StateStoreError`s naming what was attempted.
    func guarded<T>(_ what: String, _ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as StateStoreError {
            throw error
        } catch {
            throw StateStoreError("state store \(location): cannot \(what): \(error)")
        }
    }
}
