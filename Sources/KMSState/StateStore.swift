public import Foundation
public import KMSCore

/// One key version's use, as counted by kmsd.
public struct VersionUsage: Sendable, Equatable, Codable {
    public var wraps: UInt64
    public var unwraps: UInt64
    public var lastWrapAt: Date?
    public var lastUnwrapAt: Date?

    public init(wraps: UInt64 = 0, unwraps: UInt64 = 0, lastWrapAt: Date? = nil, lastUnwrapAt: Date? = nil) {
        self.wraps = wraps
        self.unwraps = unwraps
        self.lastWrapAt = lastWrapAt
        self.lastUnwrapAt = lastUnwrapAt
    }

    /// Adds another count of the same version (sums, and the later of each time).
    public mutating func add(_ other: VersionUsage) {
        wraps += other.wraps
        unwraps += other.unwraps
        lastWrapAt = [lastWrapAt, other.lastWrapAt].compactMap { $0 }.max()
        lastUnwrapAt = [lastUnwrapAt, other.lastUnwrapAt].compactMap { $0 }.max()
    }
}

/// A key name and version: what usage is counted by.
public struct VersionID: Hashable, Sendable, Comparable, CustomStringConvertible {
    public let key: String
    public let version: UInt32
    public init(_ key: String, _ version: UInt32) {
        self.key = key
        self.version = version
    }
    public static func < (lhs: VersionID, rhs: VersionID) -> Bool { (lhs.key, lhs.version) < (rhs.key, rhs.version) }
    public var description: String { "\(key)/v\(version)" }
}

/// A kmsd process using the store, as it last reported itself (every few seconds), with the leases it holds.
public struct ReplicaRecord: Sendable, Equatable {
    /// Stable across restarts: `host:port` of its API listener.
    public var id: String
    /// Where clients reach it.
    public var address: String
    /// The kmsd release it runs.
    public var version: String
    public var startedAt: Date
    public var lastSeen: Date
    /// The name its leases are held under (one per process).
    public var holder: String
    /// Leases it holds now (`rotate/<key>`); filled in by `replicas(now:)`.
    public var leases: [String]
    /// A replica not seen for this long (it stopped, or moved) is dropped from the list.
    public static let forgetAfter: TimeInterval = 86400

    public init(id: String, address: String, version: String, startedAt: Date, lastSeen: Date, holder: String, leases: [String] = []) {
        self.id = id
        self.address = address
        self.version = version
        self.startedAt = startedAt
        self.lastSeen = lastSeen
        self.holder = holder
        self.leases = leases
    }
}

/// One line of the rotation journal: who did what to which key, when, why, and how it ended.
public struct JournalEntry: Sendable, Equatable, Codable {
    public enum Action: String, Sendable, Codable {
        case create, rotate, retire, notice
    }
    public enum Result: String, Sendable, Codable {
        /// It happened.
        case ok
        /// The backend refused or failed; see `detail`.
        case failed
        /// kmsd refused it (retire safety, max_age); see `detail`.
        case refused
    }

    public var at: Date
    public var key: String
    public var action: Action
    /// `scheduler` or the administrator's identity.
    public var actor: String
    /// `period`, `usage`, or the reason a person gave.
    public var reason: String
    public var fromVersion: UInt32?
    public var toVersion: UInt32?
    public var result: Result
    /// The error or refusal, without secrets.
    public var detail: String?

    public init(at: Date, key: String, action: Action, actor: String, reason: String, fromVersion: UInt32? = nil,
                toVersion: UInt32? = nil, result: Result, detail: String? = nil) {
        self.at = at
        self.key = key
        self.action = action
        self.actor = actor
        self.reason = reason
        self.fromVersion = fromVersion
        self.toVersion = toVersion
        self.result = result
        self.detail = detail
    }
}

/// kmsd's own state: usage per version, creation times the backend does not keep, the rotation journal, and leases
/// that keep two schedulers from rotating the same key at once. It holds no key material.
///
/// Two implementations: `SQLiteStateStore` (one file in the data directory; one process, the default) and
/// `PostgresStateStore` (one database shared by replicas). Every method must be safe to call from several processes at
/// once, and both pass the same contract suite (Tests/KMSStateTests).
public protocol StateStore: Sendable {
    /// Where the state lives, for logs and status: `sqlite:PATH` or `postgres://USER@HOST:PORT/DATABASE` (never a
    /// password).
    var location: String { get }
    /// Adds counts (a flush of the in-memory ledger) in one transaction.
    func addUsage(_ deltas: [VersionID: VersionUsage]) async throws
    /// Every version's counted use.
    func allUsage() async throws -> [VersionID: VersionUsage]
    /// Records when `version` was created unless a time is recorded already; returns the recorded time.
    func recordVersionCreated(_ version: VersionID, at: Date) async throws -> Date
    /// Reserves up to `count` wraps of `version` for the caller, never beyond `limit` reserved in total by every process
    /// sharing the store (one atomic statement): returns the block (first and past-the-last wrap number), shorter than
    /// `count` when the limit cuts it, or nil when all of `limit` is reserved already. A reserved block is never issued
    /// again, whether or not its wraps are used; that keeps the sum of wraps under `limit` exact across replicas. A
    /// version's first block starts after the wraps already counted for it (`addUsage`), so a version in use before
    /// budgets existed keeps its count.
    func reserveWraps(_ version: VersionID, count: UInt64, limit: UInt64) async throws -> Range<UInt64>?
    /// How much of each version's limit has been reserved (`kmsctl state migrate` copies it).
    func reservedWraps() async throws -> [VersionID: UInt64]
    /// Every recorded creation time (`kmsctl state migrate` copies them).
    func versionCreationTimes() async throws -> [VersionID: Date]
    func append(_ entry: JournalEntry) async throws
    /// The newest `limit` entries (of one key when given), oldest first.
    func journal(key: String?, limit: Int) async throws -> [JournalEntry]
    /// Takes the lease `name` for `holder` until `now + duration` if it is free, expired, or already `holder`'s; the
    /// grant, or nil when another holds it. A renewal of a lease still held keeps its epoch; any other take raises it.
    /// `now` is the caller's clock, used by a store only one process opens (SQLite); a store replicas share
    /// (PostgreSQL) runs every lease on its database's clock instead, so replicas' clock skew cannot expire a lease
    /// early or keep one late. The same holds for `holds`, `append(_:fencedBy:now:)` and the leases `replicas` lists.
    func takeLease(_ name: String, holder: String, now: Date, duration: TimeInterval) async throws -> LeaseGrant?
    /// Whether `grant` is still the lease's current grant, unexpired at `now`.
    func holds(_ grant: LeaseGrant, now: Date) async throws -> Bool
    /// Frees the lease if `holder` has it (its epoch is kept, so a later grant has a higher one).
    func releaseLease(_ name: String, holder: String) async throws
    /// Appends `entry` only while `grant` is the lease's current grant and unexpired at `now`, in one transaction
    /// that a concurrent take waits for; false, and nothing written, otherwise (the fencing token).
    func append(_ entry: JournalEntry, fencedBy grant: LeaseGrant, now: Date) async throws -> Bool
    /// Records that `replica` is alive (its `lastSeen`); forgets replicas not seen for `ReplicaRecord.forgetAfter`.
    func heartbeat(_ replica: ReplicaRecord) async throws
    /// Every replica seen within the last day, with the leases each holds at `now`, by id.
    func replicas(now: Date) async throws -> [ReplicaRecord]
    /// Keeps audit checkpoints, so that deleting or rolling back a replica's log shows (`kmsctl audit verify --state`);
    /// a replica's seq is recorded once, a repeat changes nothing.
    func recordAuditAnchors(_ anchors: [AuditAnchor]) async throws
    /// Every anchored checkpoint, by replica and seq.
    func auditAnchors() async throws -> [AuditAnchor]
    /// Tells every process sharing the store that `key` changed in its backend (a rotation, a retirement), so that
    /// each reads it again at once instead of at its next periodic read. Best effort: the periodic read stays.
    func announceKeyChange(_ key: String) async throws
    /// The key names other processes (and this one) announce, as they arrive; `KeyChanges.everyKey` when changes may
    /// have been missed (the stream just started, or reconnected after an outage). A store without a way to hear
    /// other processes (SQLite) gives a stream that ends at once. Ends when the consumer stops or the store closes.
    func keyChanges() -> AsyncStream<String>
    /// Stores a new managed object (revision 0); `ManagedObjectExists` when its id is taken.
    func insertManagedObject(_ object: ManagedObjectRecord) async throws
    /// The object with `id`, if any.
    func managedObject(_ id: String) async throws -> ManagedObjectRecord?
    /// Replaces the object if its stored revision is still `object.revision` (then one more); false, and nothing
    /// written, when another update came first or the object is gone.
    func updateManagedObject(_ object: ManagedObjectRecord) async throws -> Bool
    /// Up to `limit` objects with ids after `after` (all when nil), by id: paging through every object.
    func managedObjects(after: String?, limit: Int) async throws -> [ManagedObjectRecord]
    /// Up to `limit` objects of `owner` with ids after `after`, by id (an index on owner and id: Locate reads only the
    /// owners whose objects the caller may see).
    func managedObjects(owner: String, after: String?, limit: Int) async throws -> [ManagedObjectRecord]
    /// How many objects `owner` has (the per-owner quota).
    func countManagedObjects(owner: String) async throws -> Int
    /// Every owner that has an object, sorted (grants share by owner pattern).
    func managedObjectOwners() async throws -> [String]
    /// Up to `limit` objects with ids after `after` whose material is under a wrapping key version below `version`, by
    /// id (rewrapping).
    func managedObjects(wrappedBelow version: UInt32, after: String?, limit: Int) async throws -> [ManagedObjectRecord]
    /// How many objects hold material under a wrapping key version below `version`.
    func countManagedObjects(wrappedBelow version: UInt32) async throws -> Int
    /// Closes the store's connections; nothing may be called after.
    func close() async
}

/// A lease as granted. The epoch is the fencing token: it grows each time the lease is taken other than by renewal,
/// so what a holder commits under a lease that lapsed (and may have been taken by another) can be refused.
public struct LeaseGrant: Sendable, Equatable {
    public let name: String
    public let holder: String
    public let epoch: UInt64
    public init(name: String, holder: String, epoch: UInt64) {
        self.name = name
        self.holder = holder
        self.epoch = epoch
    }
}

extension StateStore {
    /// `takeLease` without the grant.
    public func acquireLease(_ name: String, holder: String, now: Date, duration: TimeInterval) async throws -> Bool {
        try await takeLease(name, holder: holder, now: now, duration: duration) != nil
    }
}

/// What `StateStore.keyChanges` delivers besides key names.
public enum KeyChanges {
    /// Changes may have been missed: read every key again. (Not a valid key name.)
    public static let everyKey = "*"
}

/// The state store failed (disk, permissions, corruption, the database unreachable). Carries no secrets: the store
/// holds none, and a database password never enters a message.
public struct StateStoreError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
