import Foundation
import GRDB
import KMSCore
@testable import KMSState
import KMSTestSupport
import Testing

/// The two state stores. Every contract test runs against each; a "database" is a fresh SQLite file or a fresh
/// PostgreSQL database in the throwaway cluster, which several store instances (replicas) may open at once.
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite, postgres
    var testDescription: String { rawValue }
}

/// One fresh database of a kind, and how to open a store on it.
struct StoreDatabase: Sendable {
    let kind: StoreKind
    /// The SQLite file, or the PostgreSQL database's name.
    let name: String

    static func make(_ kind: StoreKind) async throws -> StoreDatabase {
        switch kind {
        case .sqlite:
            StoreDatabase(kind: kind, name: FileManager.default.temporaryDirectory.appendingPathComponent("state-\(UUID().uuidString)/rotation.sqlite").path)
        case .postgres:
            StoreDatabase(kind: kind, name: try await ThrowawayPostgres.shared().createDatabase())
        }
    }

    func open() async throws -> any StateStore {
        switch kind {
        case .sqlite: try SQLiteStateStore(path: name)
        case .postgres: try await PostgresStateStore.open(try await ThrowawayPostgres.shared().settings(database: name))
        }
    }

    /// Records a schema version newer than any this kmsd knows, as a later kmsd would.
    func markNewerSchema() async throws {
        switch kind {
        case .sqlite:
            let queue = try DatabaseQueue(path: name)
            try await queue.write { db in try db.execute(sql: "INSERT INTO grdb_migrations (identifier) VALUES ('v99')") }
            try queue.close()
        case .postgres:
            try await ThrowawayPostgres.shared().sql("INSERT INTO kmsd_schema (version, applied_at) VALUES (99, 0)", database: name)
        }
    }
}

/// Opens a store on a fresh database, runs `body`, closes it.
func withStore(_ kind: StoreKind, _ body: (any StateStore, StoreDatabase) async throws -> Void) async throws {
    let database = try await StoreDatabase.make(kind)
    let store = try await database.open()
    do {
        try await body(store, database)
        await store.close()
    } catch {
        await store.close()
        throw error
    }
}

let start = Date(timeIntervalSince1970: 1_800_000_000.25)
let orders1 = VersionID("orders", 1)
let orders2 = VersionID("orders", 2)

@Suite("State store contract")
struct StateStoreContractTests {
    @Test(arguments: StoreKind.allCases)
    func usageAddsUpAndKeepsTheLaterTimes(_ kind: StoreKind) async throws {
        try await withStore(kind) { store, _ async throws in
            #expect(try await store.allUsage().isEmpty)
            try await store.addUsage([:])
            try await store.addUsage([
                orders1: VersionUsage(wraps: 3, unwraps: 0, lastWrapAt: start, lastUnwrapAt: nil),
                orders2: VersionUsage(wraps: 0, unwraps: 2, lastWrapAt: nil, lastUnwrapAt: start),
            ])
            try await store.addUsage([
                orders1: VersionUsage(wraps: 4, unwraps: 1, lastWrapAt: start.addingTimeInterval(-10), lastUnwrapAt: start.addingTimeInterval(5)),
                orders2: VersionUsage(wraps: 1, unwraps: 0, lastWrapAt: start.addingTimeInterval(1), lastUnwrapAt: nil),
            ])
            let usage = try await store.allUsage()
            #expect(usage == [
                orders1: VersionUsage(wraps: 7, unwraps: 1, lastWrapAt: start, lastUnwrapAt: start.addingTimeInterval(5)),
                orders2: VersionUsage(wraps: 1, unwraps: 2, lastWrapAt: start.addingTimeInterval(1), lastUnwrapAt: start),
            ])
        }
    }

    @Test(arguments: StoreKind.allCases)
    func aVersionsCreationTimeIsRecordedOnce(_ kind: StoreKind) async throws {
        try await withStore(kind) { store, _ async throws in
            #expect(try await store.recordVersionCreated(orders1, at: start) == start)
            #expect(try await store.recordVersionCreated(orders1, at: start.addingTimeInterval(60)) == start)
            #expect(try await store.recordVersionCreated(orders2, at: start.addingTimeInterval(60)) == start.addingTimeInterval(60))
        }
    }

    @Test(arguments: StoreKind.allCases)
    func theJournalGivesTheNewestEntriesOldestFirstPerKey(_ kind: StoreKind) async throws {
        try await withStore(kind) { store, _ async throws in
            var written: [JournalEntry] = []
            for index in 0..<6 {
                let entry = JournalEntry(
                    at: start.addingTimeInterval(Double(index)), key: index.isMultiple(of: 2) ? "orders" : "invoices",
                    action: index == 0 ? .create : .rotate, actor: "CN=security-\(index)", reason: "manual: drill \(index)",
                    fromVersion: index == 0 ? nil : UInt32(index), toVersion: UInt32(index + 1),
                    result: index == 3 ? .failed : .ok, detail: index == 3 ? "unavailable: the HSM is down" : nil)
                try await store.append(entry)
                written.append(entry)
            }
            #expect(try await store.journal(key: nil, limit: 100) == written)
            #expect(try await store.journal(key: nil, limit: 2) == Array(written.suffix(2)))
            #expect(try await store.journal(key: "invoices", limit: 100) == [written[1], written[3], written[5]])
            #expect(try await store.journal(key: "orders", limit: 1) == [written[4]])
            #expect(try await store.journal(key: "nothing", limit: 10).isEmpty)
            #expect(try await store.journal(key: nil, limit: 0).isEmpty)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func replicasReportThemselvesWithTheirLeasesAndAreForgottenAfterADay(_ kind: StoreKind) async throws {
        try await withStore(kind) { store, _ async throws in
            let one = ReplicaRecord(id: "kms-1:8443", address: "10.0.0.1:8443", version: "0.1.0", startedAt: start, lastSeen: start, holder: "h1")
            var two = ReplicaRecord(id: "kms-2:8443", address: "10.0.0.2:8443", version: "0.1.0", startedAt: start, lastSeen: start, holder: "h2")
            try await store.heartbeat(one)
            try await store.heartbeat(two)
            #expect(try await store.acquireLease("rotate/orders", holder: "h2", now: start, duration: 60))
            var seen = try await store.replicas(now: start.addingTimeInterval(1))
            #expect(seen.map(\.id) == ["kms-1:8443", "kms-2:8443"])
            #expect(seen.map(\.leases) == [[], ["rotate/orders"]])
            #expect(seen.first == one)
            // A heartbeat moves last_seen; a restart (a new holder) replaces the row.
            two.lastSeen = start.addingTimeInterval(5)
            two.holder = "h2-restarted"
            try await store.heartbeat(two)
            seen = try await store.replicas(now: start.addingTimeInterval(61))
            #expect(seen.last?.lastSeen == start.addingTimeInterval(5) && seen.last?.holder == "h2-restarted")
            // (PostgreSQL expires leases by the database's clock, which this test does not move: see
            // `leasesRunOnTheDatabasesClockNotTheReplicas`.)
            if kind == .sqlite { #expect(seen.allSatisfy { $0.leases.isEmpty }, "an expired lease is not listed") }
            // A replica not seen for a day is dropped.
            two.lastSeen = start.addingTimeInterval(ReplicaRecord.forgetAfter + 10)
            try await store.heartbeat(two)
            #expect(try await store.replicas(now: two.lastSeen).map(\.id) == ["kms-2:8443"])
        }
    }

    @Test(arguments: StoreKind.allCases)
    func auditCheckpointsAreAnchoredOncePerReplicaAndSeq(_ kind: StoreKind) async throws {
        try await withStore(kind) { store, _ async throws in
            func anchor(_ replica: String, _ seq: UInt64, _ hash: String, closing: Bool = false) -> AuditAnchor {
                AuditAnchor(replica: replica, seq: seq, lineHash: hash, signature: "c2ln", time: "2026-12-02T00:00:00.000Z", closing: closing)
            }
            try await store.recordAuditAnchors([anchor("kms-2", 11, "b"), anchor("kms-1", 11, "a"), anchor("kms-1", 22, "c", closing: true)])
            // A repeat (a retried write) changes nothing, not even a different hash for the same seq.
            try await store.recordAuditAnchors([anchor("kms-1", 11, "x")])
            #expect(try await store.auditAnchors() == [anchor("kms-1", 11, "a"), anchor("kms-1", 22, "c", closing: true), anchor("kms-2", 11, "b")])
        }
    }

    /// On the caller's clock, which SQLite (one process) uses; PostgreSQL runs leases on its own clock, tested with
    /// real time in `leasesRunOnTheDatabasesClockNotTheReplicas`.
    @Test(arguments: [StoreKind.sqlite])
    func aLapsedLeaseCannotCommitItsResult(_ kind: StoreKind) async throws {
        try await withStore(kind) { store, _ async throws in
            let entry = JournalEntry(at: start, key: "orders", action: .rotate, actor: "scheduler", reason: "usage", fromVersion: 1,
                                     toVersion: 2, result: .ok)
            let first = try #require(try await store.takeLease("rotate/orders", holder: "a", now: start, duration: 60))
            #expect(first.epoch == 1)
            #expect(try await store.takeLease("rotate/orders", holder: "a", now: start.addingTimeInterval(10), duration: 60) == first,
                    "a renewal keeps the epoch")
            #expect(try await store.holds(first, now: start.addingTimeInterval(20)))
            // a's lease lapses and b takes it: a's grant is stale and cannot commit; b's can.
            let second = try #require(try await store.takeLease("rotate/orders", holder: "b", now: start.addingTimeInterval(71), duration: 60))
            #expect(second.epoch == 2)
            #expect(try await !store.holds(first, now: start.addingTimeInterval(72)))
            #expect(try await !store.append(entry, fencedBy: first, now: start.addingTimeInterval(72)))
            #expect(try await store.append(entry, fencedBy: second, now: start.addingTimeInterval(72)))
            // Past its expiry even the holder's own grant commits nothing.
            #expect(try await !store.append(entry, fencedBy: second, now: start.addingTimeInterval(200)))
            #expect(try await store.journal(key: "orders", limit: 10).count == 1)
            // Released and taken again: a higher epoch, so a grant from before the release stays stale.
            try await store.releaseLease("rotate/orders", holder: "b")
            let third = try #require(try await store.takeLease("rotate/orders", holder: "b", now: start.addingTimeInterval(73), duration: 60))
            #expect(third.epoch == 3)
            #expect(try await !store.holds(second, now: start.addingTimeInterval(74)))
        }
    }

    /// On the caller's clock, which SQLite (one process) uses; PostgreSQL runs leases on its own clock, tested with
    /// real time in `leasesRunOnTheDatabasesClockNotTheReplicas`.
    @Test(arguments: [StoreKind.sqlite])
    func aLeaseHasOneHolderUntilItExpiresOrIsReleased(_ kind: StoreKind) async throws {
        try await withStore(kind) { store, _ async throws in
            #expect(try await store.acquireLease("rotate/orders", holder: "a", now: start, duration: 60))
            #expect(try await !store.acquireLease("rotate/orders", holder: "b", now: start.addingTimeInterval(59), duration: 60))
            #expect(try await store.acquireLease("rotate/invoices", holder: "b", now: start, duration: 60), "leases are by name")
            // The holder renews; the renewal moves the expiry.
            #expect(try await store.acquireLease("rotate/orders", holder: "a", now: start.addingTimeInterval(30), duration: 60))
            #expect(try await !store.acquireLease("rotate/orders", holder: "b", now: start.addingTimeInterval(89), duration: 60))
            #expect(try await store.acquireLease("rotate/orders", holder: "b", now: start.addingTimeInterval(90), duration: 60),
                    "an expired lease is free")
            try await store.releaseLease("rotate/orders", holder: "a")  // no longer a's: changes nothing
            #expect(try await !store.acquireLease("rotate/orders", holder: "a", now: start.addingTimeInterval(91), duration: 60))
            try await store.releaseLease("rotate/orders", holder: "b")
            #expect(try await store.acquireLease("rotate/orders", holder: "a", now: start.addingTimeInterval(92), duration: 60))
        }
    }

    /// Replicas' clocks differ; a lease shared through PostgreSQL expires by the database's clock, whatever time the
    /// caller passes: a replica whose clock runs 5 minutes ahead cannot take a lease another holds, and one whose
    /// clock runs behind cannot keep one that expired. Epochs fence as on the caller's clock.
    @Test func leasesRunOnTheDatabasesClockNotTheReplicas() async throws {
        try await withStore(.postgres) { store, _ async throws in
            let entry = JournalEntry(at: Date(), key: "orders", action: .rotate, actor: "scheduler", reason: "usage", fromVersion: 1,
                                     toVersion: 2, result: .ok)
            let ahead = Date().addingTimeInterval(300)
            let behind = Date().addingTimeInterval(-300)
            let first = try #require(try await store.takeLease("rotate/orders", holder: "a", now: Date(), duration: 1.5))
            #expect(try await store.takeLease("rotate/orders", holder: "b", now: ahead, duration: 1.5) == nil,
                    "a replica whose clock is ahead took a lease that had not expired")
            #expect(try await store.holds(first, now: ahead), "the holder's grant is judged by the database's clock")
            #expect(try await store.replicas(now: ahead).isEmpty)
            try await Task.sleep(for: .seconds(2))
            #expect(try await !store.holds(first, now: behind), "a lapsed lease held on by a clock that runs behind")
            #expect(try await !store.append(entry, fencedBy: first, now: behind))
            let second = try #require(try await store.takeLease("rotate/orders", holder: "b", now: behind, duration: 60))
            #expect(second.epoch == first.epoch + 1)
            #expect(try await store.append(entry, fencedBy: second, now: ahead))
            #expect(try await store.journal(key: "orders", limit: 10).count == 1)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func everythingSurvivesReopeningAndMigrationsRunOnce(_ kind: StoreKind) async throws {
        let database = try await StoreDatabase.make(kind)
        let first = try await database.open()
        try await first.addUsage([orders1: VersionUsage(wraps: 5)])
        _ = try await first.recordVersionCreated(orders1, at: start)
        try await first.append(JournalEntry(at: start, key: "orders", action: .create, actor: "admin", reason: "new", result: .ok))
        #expect(try await first.acquireLease("rotate/orders", holder: "a", now: start, duration: 60))
        await first.close()
        let second = try await database.open()
        #expect(try await second.allUsage() == [orders1: VersionUsage(wraps: 5)])
        #expect(try await second.recordVersionCreated(orders1, at: start.addingTimeInterval(1)) == start)
        #expect(try await second.journal(key: nil, limit: 10).count == 1)
        #expect(try await !second.acquireLease("rotate/orders", holder: "b", now: start, duration: 60))
        await second.close()
    }

    @Test(arguments: StoreKind.allCases)
    func replicasStartingTogetherOnAnEmptyDatabaseAllOpenIt(_ kind: StoreKind) async throws {
        let database = try await StoreDatabase.make(kind)
        let stores = try await withThrowingTaskGroup(of: (any StateStore).self) { group in
            for _ in 0..<4 { group.addTask { try await database.open() } }
            var stores: [any StateStore] = []
            for try await store in group { stores.append(store) }
            return stores
        }
        #expect(stores.count == 4)
        try await stores[0].addUsage([orders1: VersionUsage(wraps: 1)])
        for store in stores {
            #expect(try await store.allUsage()[orders1]?.wraps == 1)
            await store.close()
        }
    }

    @Test(arguments: StoreKind.allCases)
    func aSchemaNewerThanThisKmsdKnowsIsRefused(_ kind: StoreKind) async throws {
        let database = try await StoreDatabase.make(kind)
        try await database.open().close()
        try await database.markNewerSchema()
        do {
            let store = try await database.open()
            await store.close()
            Issue.record("a store with a newer schema opened")
        } catch let error as StateStoreError {
            #expect(error.description.contains("newer"), "\(error)")
            #expect(error.description.contains("upgrade this kmsd"), "\(error)")
        }
    }

    @Test(arguments: StoreKind.allCases)
    func replicasCountTogetherExactly(_ kind: StoreKind) async throws {
        let database = try await StoreDatabase.make(kind)
        let stores = [try await database.open(), try await database.open()]
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<40 {
                let store = stores[index % 2]
                group.addTask {
                    try await store.addUsage([orders1: VersionUsage(wraps: 3, unwraps: 1), orders2: VersionUsage(wraps: 1)])
                }
            }
            try await group.waitForAll()
        }
        for store in stores {
            let usage = try await store.allUsage()
            #expect(usage[orders1] == VersionUsage(wraps: 120, unwraps: 40))
            #expect(usage[orders2] == VersionUsage(wraps: 40))
            await store.close()
        }
    }

    @Test(arguments: StoreKind.allCases)
    func ofReplicasRacingForALeaseExactlyOneWins(_ kind: StoreKind) async throws {
        let database = try await StoreDatabase.make(kind)
        let stores = [try await database.open(), try await database.open()]
        for round in 0..<10 {
            let winners = try await withThrowingTaskGroup(of: Bool.self) { group in
                for contender in 0..<8 {
                    let store = stores[contender % 2]
                    group.addTask {
                        try await store.acquireLease("rotate/k\(round)", holder: "replica-\(contender)", now: start, duration: 60)
                    }
                }
                var winners = 0
                for try await won in group where won { winners += 1 }
                return winners
            }
            #expect(winners == 1, "round \(round)")
        }
        for store in stores { await store.close() }
    }

    @Test(arguments: StoreKind.allCases)
    func aMigrationCopiesEverythingIntoAnEmptyStoreAndRefusesToRunTwice(_ targetKind: StoreKind) async throws {
        let source = try await StoreDatabase.make(.sqlite).open()
        let usage = [orders1: VersionUsage(wraps: 1_000_000, unwraps: 7, lastWrapAt: start, lastUnwrapAt: start.addingTimeInterval(3)),
                     orders2: VersionUsage(wraps: 12)]
        try await source.addUsage(usage)
        _ = try await source.recordVersionCreated(orders1, at: start)
        _ = try await source.recordVersionCreated(orders2, at: start.addingTimeInterval(86400))
        let entries = (0..<5).map { index in
            JournalEntry(at: start.addingTimeInterval(Double(index)), key: "orders", action: .rotate, actor: "scheduler",
                         reason: "period", fromVersion: 1, toVersion: 2, result: index == 2 ? .failed : .ok, detail: index == 2 ? "down" : nil)
        }
        for entry in entries { try await source.append(entry) }
        #expect(try await source.reserveWraps(orders2, count: 300, limit: 1000) == 12..<312, "the first block starts after the counted wraps")
        let objects = (0..<3).map { ManagedObjectRecord(id: "object-\($0)", owner: "uri:spiffe://test/db", metadata: "{}",
                                                        material: $0 == 2 ? nil : [UInt8($0), 0xAB], wrappingVersion: $0 == 2 ? 0 : 1) }
        for object in objects { try await source.insertManagedObject(object) }

        let target = try await StoreDatabase.make(targetKind).open()
        let summary = try await StateMigration.copy(from: source, to: target)
        #expect(summary == .init(versions: 2, usageRows: 2, wraps: 1_000_012, journalEntries: 5, budgets: 1, managedObjects: 3))
        #expect(try await target.managedObjects(after: nil, limit: 10) == objects)
        #expect(try await target.reservedWraps() == [orders2: 312])
        #expect(try await target.reserveWraps(orders2, count: 10, limit: 1000) == 312..<322, "reserved blocks are not issued again")
        #expect(try await target.allUsage() == usage)
        #expect(try await target.versionCreationTimes() == [orders1: start, orders2: start.addingTimeInterval(86400)])
        #expect(try await target.journal(key: nil, limit: 100) == entries)
        await #expect(throws: StateStoreError.self) { try await StateMigration.copy(from: source, to: target) }
        #expect(try await target.allUsage() == usage, "a refused second run adds nothing")
        await source.close()
        await target.close()
    }

    @Test(arguments: StoreKind.allCases)
    func wrapBudgetsHandOutContiguousBlocksUpToTheLimitAndNoMore(_ kind: StoreKind) async throws {
        try await withStore(kind) { store, _ async throws in
            #expect(try await store.reserveWraps(orders1, count: 400, limit: 1000) == 0..<400)
            #expect(try await store.reserveWraps(orders1, count: 400, limit: 1000) == 400..<800)
            #expect(try await store.reserveWraps(orders2, count: 5, limit: 1000) == 0..<5, "budgets are per version")
            #expect(try await store.reserveWraps(orders1, count: 400, limit: 1000) == 800..<1000, "the limit cuts the last block")
            #expect(try await store.reserveWraps(orders1, count: 1, limit: 1000) == nil)
            #expect(try await store.reserveWraps(orders1, count: 10, limit: 900) == nil, "a lowered limit hands out nothing more")
            #expect(try await store.reserveWraps(orders1, count: 10, limit: 1010) == 1000..<1010, "a raised one hands out the rest")
            #expect(try await store.reserveWraps(orders2, count: 0, limit: 1000) == nil)

            // A version counted before it had a budget (kmsd before budgets, or a migrated store): its first block
            // starts after what was counted, and one counted past the limit gets nothing.
            let orders3 = VersionID("orders", 3), orders4 = VersionID("orders", 4)
            try await store.addUsage([orders3: VersionUsage(wraps: 250), orders4: VersionUsage(wraps: 2000)])
            #expect(try await store.reserveWraps(orders3, count: 100, limit: 1000) == 250..<350)
            #expect(try await store.reserveWraps(orders3, count: 100, limit: 1000) == 350..<450)
            #expect(try await store.reserveWraps(orders4, count: 100, limit: 1000) == nil)
            // Usage counted after the budget exists is within it and moves nothing.
            try await store.addUsage([orders3: VersionUsage(wraps: 150)])
            #expect(try await store.reserveWraps(orders3, count: 10, limit: 1000) == 450..<460)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func replicasReservingAtOnceNeverTogetherExceedTheLimit(_ kind: StoreKind) async throws {
        let database = try await StoreDatabase.make(kind)
        let stores = [try await database.open(), try await database.open()]
        let blocks = try await withThrowingTaskGroup(of: [Range<UInt64>].self) { group in
            for index in 0..<8 {
                let store = stores[index % 2]
                group.addTask {
                    var mine: [Range<UInt64>] = []
                    while let block = try await store.reserveWraps(orders1, count: 7, limit: 500) { mine.append(block) }
                    return mine
                }
            }
            var all: [Range<UInt64>] = []
            for try await mine in group { all += mine }
            return all
        }
        // Disjoint blocks that together are exactly 0..<500.
        let sorted = blocks.sorted { $0.lowerBound < $1.lowerBound }
        #expect(sorted.first?.lowerBound == 0 && sorted.last?.upperBound == 500)
        #expect(zip(sorted, sorted.dropFirst()).allSatisfy { $0.upperBound == $1.lowerBound })
        #expect(blocks.reduce(0) { $0 + $1.count } == 500)
        for store in stores { await store.close() }
    }
}

