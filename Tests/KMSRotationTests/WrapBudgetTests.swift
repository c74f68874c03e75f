import Foundation
import KMSCore
@testable import KMSRotation
import KMSState
import KMSTestSupport
import Synchronization
import Testing

/// A state store whose every operation fails while `down` is set, as a database that stopped answering would.
final class SwitchableStore: StateStore {
    let inner: SQLiteStateStore
    private let isDown = Mutex(false)
    private let reservations = Mutex(0)

    init(_ inner: SQLiteStateStore) { self.inner = inner }

    var down: Bool {
        get { isDown.withLock { $0 } }
        set { isDown.withLock { $0 = newValue } }
    }
    /// How many times a block was asked for.
    var reserveCalls: Int { reservations.withLock { $0 } }

    private func check() throws {
        if down { throw StateStoreError("the test database is down") }
    }

    var location: String { inner.location }
    func addUsage(_ deltas: [VersionID: VersionUsage]) async throws { try check(); try await inner.addUsage(deltas) }
    func allUsage() async throws -> [VersionID: VersionUsage] { try check(); return try await inner.allUsage() }
    func recordVersionCreated(_ version: VersionID, at date: Date) async throws -> Date {
        try check()
        return try await inner.recordVersionCreated(version, at: date)
    }
    func reserveWraps(_ version: VersionID, count: UInt64, limit: UInt64) async throws -> Range<UInt64>? {
        reservations.withLock { $0 += 1 }
        try check()
        return try await inner.reserveWraps(version, count: count, limit: limit)
    }
    func reservedWraps() async throws -> [VersionID: UInt64] { try check(); return try await inner.reservedWraps() }
    func versionCreationTimes() async throws -> [VersionID: Date] { try check(); return try await inner.versionCreationTimes() }
    func append(_ entry: JournalEntry) async throws { try check(); try await inner.append(entry) }
    func journal(key: String?, limit: Int) async throws -> [JournalEntry] { try check(); return try await inner.journal(key: key, limit: limit) }
    func takeLease(_ name: String, holder: String, now: Date, duration: TimeInterval) async throws -> LeaseGrant? {
        try check()
        return try await inner.takeLease(name, holder: holder, now: now, duration: duration)
    }
    func holds(_ grant: LeaseGrant, now: Date) async throws -> Bool { try check(); return try await inner.holds(grant, now: now) }
    func append(_ entry: JournalEntry, fencedBy grant: LeaseGrant, now: Date) async throws -> Bool {
        try check()
        return try await inner.append(entry, fencedBy: grant, now: now)
    }
    func releaseLease(_ name: String, holder: String) async throws { try check(); try await inner.releaseLease(name, holder: holder) }
    func heartbeat(_ replica: ReplicaRecord) async throws { try check(); try await inner.heartbeat(replica) }
    func replicas(now: Date) async throws -> [ReplicaRecord] { try check(); return try await inner.replicas(now: now) }
    func recordAuditAnchors(_ anchors: [AuditAnchor]) async throws { try check(); try await inner.recordAuditAnchors(anchors) }
    func auditAnchors() async throws -> [AuditAnchor] { try check(); return try await inner.auditAnchors() }
    func announceKeyChange(_ key: String) async throws { try check() }
    func keyChanges() -> AsyncStream<String> { inner.keyChanges() }
    func insertManagedObject(_ object: ManagedObjectRecord) async throws { try check(); try await inner.insertManagedObject(object) }
    func managedObject(_ id: String) async throws -> ManagedObjectRecord? { try check(); return try await inner.managedObject(id) }
    func updateManagedObject(_ object: ManagedObjectRecord) async throws -> Bool { try check(); return try await inner.updateManagedObject(object) }
    func managedObjects(after: String?, limit: Int) async throws -> [ManagedObjectRecord] {
        try check()
        return try await inner.managedObjects(after: after, limit: limit)
    }
    func managedObjects(wrappedBelow version: UInt32, after: String?, limit: Int) async throws -> [ManagedObjectRecord] {
        try check()
        return try await inner.managedObjects(wrappedBelow: version, after: after, limit: limit)
    }
    func countManagedObjects(wrappedBelow version: UInt32) async throws -> Int {
        try check()
        return try await inner.countManagedObjects(wrappedBelow: version)
    }
    func managedObjects(owner: String, after: String?, limit: Int) async throws -> [ManagedObjectRecord] {
        try check()
        return try await inner.managedObjects(owner: owner, after: after, limit: limit)
    }
    func countManagedObjects(owner: String) async throws -> Int { try check(); return try await inner.countManagedObjects(owner: owner) }
    func managedObjectOwners() async throws -> [String] { try check(); return try await inner.managedObjectOwners() }
    func close() async { await inner.close() }
}

@Suite("Wrap budgets", .serialized)
struct WrapBudgetTests {
    let v1 = VersionID("orders", 1)

    @Test func replicasSharingAStoreWrapAVersionAtMostMaxWrapsTimesAndRotateOnce() async throws {
        try await withOrdersKey { provider, clock in
            let path = try storePath()
            let policy = RotationPolicy(maxWraps: 1000)
            let replicas = [try manager([(orders, provider, policy)], store: path, clock: clock),
                            try manager([(orders, provider, policy)], store: path, clock: clock),
                            try manager([(orders, provider, policy)], store: path, clock: clock)]
            for replica in replicas { try await replica.start() }
            // 3 replicas × 4 callers × 120 wraps = 1,440: more than version 1 may take.
            let versions = try await withThrowingTaskGroup(of: [UInt32].self) { group in
                for index in 0..<12 {
                    let tracked = TrackedProvider(provider, manager: replicas[index % 3])
                    group.addTask {
                        var versions: [UInt32] = []
                        for _ in 0..<120 { versions.append(try await tracked.generateDataKey(orders, context: .empty).version.rawValue) }
                        return versions
                    }
                }
                var all: [UInt32] = []
                for try await versions in group { all += versions }
                return all
            }
            #expect(versions.count == 1440, "no wrap was refused")
            #expect(versions.filter { $0 == 1 }.count <= 1000)
            #expect(Set(versions) == [1, 2], "the key rotated exactly once")
            #expect(try await latest(provider, orders) == 2)
            #expect(try await replicas[0].journal(orders).filter { $0.action == .rotate }.map(\.reason) == ["usage"])
            // Every number of version 1 was reserved; the ones no replica used are lost, never issued twice.
            for replica in replicas { await replica.flush() }
            let store = try SQLiteStateStore(path: path)
            #expect(try await store.reservedWraps()[v1] == 1000)
            let counted = try await store.allUsage()[v1]?.wraps
            #expect(counted == UInt64(versions.filter { $0 == 1 }.count), "the store's count is the sum of the replicas'")
            await store.close()
        }
    }

    @Test func aStoreThatStopsAnsweringRefusesWrapsOnceTheHeldBlockIsUsedAndRecovers() async throws {
        try await withOrdersKey { provider, clock in
            let store = SwitchableStore(try SQLiteStateStore(path: try storePath()))
            let rotation = RotationManager(keys: [.init(name: orders, providerName: "hsm", provider: provider, policy: RotationPolicy(maxWraps: 1 << 30))],
                                           store: store, clock: clock.function)
            try await rotation.start()
            let tracked = TrackedProvider(provider, manager: rotation)
            let first = try await tracked.generateDataKey(orders, context: .empty)
            // The first block (1,000) and the one reserved ahead once half of it is used.
            for _ in 0..<600 { _ = try await tracked.generateDataKey(orders, context: .empty) }
            #expect(try await within(.seconds(5)) { rotation.budgets.available(v1) > 1000 })
            let held = rotation.budgets.available(v1)

            store.down = true
            for _ in 0..<held { _ = try await tracked.generateDataKey(orders, context: .empty) }
            let callsBefore = store.reserveCalls
            for _ in 0..<50 {
                do {
                    _ = try await tracked.generateDataKey(orders, context: .empty)
                    Issue.record("a wrap past the held block succeeded while the store was down")
                } catch let error as KMSError {
                    #expect(error.code == .stateUnavailable)
                    #expect(error.message.contains("state store") && error.message.contains("unwrapping continues"))
                    #expect(error.detail?.contains("the test database is down") == true)
                }
            }
            #expect(store.reserveCalls - callsBefore <= 2, "refusals within the retry delay do not ask the store each time")
            #expect(try await tracked.unwrap(orders, wrapped: first.wrapped, context: .empty).plaintext == first.plaintext)

            store.down = false
            let start = ContinuousClock.now
            #expect(try await within(.seconds(5)) { (try? await tracked.generateDataKey(orders, context: .empty)) != nil })
            #expect(ContinuousClock.now - start < .seconds(2), "wrapping resumes within the retry delay")
        }
    }

    @Test func theBlockGrowsWithTheRateAndIsCutToAnEighthOfTheLimit() async throws {
        let store = try SQLiteStateStore(path: try storePath())
        let budgets = WrapBudgets(store: store, describe: { "\($0)" })
        #expect(await budgets.take(v1, limit: 1 << 30) == .wrap(0, last: false))
        #expect(try await store.reservedWraps()[v1] == 1000)
        for _ in 0..<500 { _ = await budgets.take(v1, limit: 1 << 30) }
        // Half the block was used well within two seconds: the next block is twice as large.
        #expect(try await within(.seconds(5)) { try await store.reservedWraps()[v1] == 3000 })

        let small = VersionID("orders", 2)
        #expect(await budgets.take(small, limit: 80) == .wrap(0, last: false))
        #expect(try await store.reservedWraps()[small] == 10)
        var numbers: [UInt64] = [0]
        while case .wrap(let number, let last) = await budgets.take(small, limit: 80) {
            numbers.append(number)
            if number == 79 { #expect(last) }
        }
        #expect(numbers == Array(0..<80), "every number once, in order, then exhausted")
        #expect(await budgets.take(small, limit: 80) == .exhausted)
        await store.close()
    }
}
