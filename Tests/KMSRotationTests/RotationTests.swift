import Foundation
import KMSCore
@testable import KMSRotation
import KMSState
import KMSTestSupport
import Synchronization
import Testing

/// A clock the test moves by hand.
final class ManualClock: Sendable {
    private let current: Mutex<Date>
    init(_ start: Date = Date(timeIntervalSince1970: 1_800_000_000)) { current = Mutex(start) }
    var now: Date { current.withLock { $0 } }
    func advance(_ seconds: TimeInterval) { current.withLock { $0 = $0.addingTimeInterval(seconds) } }
    var function: @Sendable () -> Date { { [self] in now } }
}

/// Rotation events a manager raised.
final class EventLog: Sendable {
    private let events = Mutex<[RotationEvent]>([])
    func record(_ event: RotationEvent) { events.withLock { $0.append(event) } }
    func count(_ kind: RotationEvent.Kind, key: String) -> Int { events.withLock { $0.filter { $0.kind == kind && $0.key == key }.count } }
}

let orders = try! KeyName("orders")
let invoices = try! KeyName("invoices")

/// A state store file in a fresh directory.
func storePath() throws -> String {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("state-\(UUID().uuidString)")
    return directory.appendingPathComponent("rotation.sqlite").path
}

func manager(_ keys: [(KeyName, any KeyProvider, RotationPolicy)], store path: String, clock: ManualClock,
             events: EventLog = EventLog(), holder: String = UUID().uuidString) throws -> RotationManager {
    RotationManager(
        keys: keys.map { RotationManager.Key(name: $0.0, providerName: "hsm", provider: $0.1, policy: $0.2) },
        store: try SQLiteStateStore(path: path), clock: clock.function, holder: holder, onEvent: { events.record($0) })
}

/// A backend with the key `orders` (version 1) and a manual clock. Rotation is tested above the provider layer: the
/// in-memory provider stands in for any backend (the PKCS#11 and Vault providers pass the same contract suite).
func withOrdersKey(_ body: (InMemoryKeyProvider, ManualClock) async throws -> Void) async throws {
    let clock = ManualClock()
    let provider = InMemoryKeyProvider(now: clock.function)
    _ = try await provider.createKey(orders)
    try await body(provider, clock)
}

func latest(_ provider: any KeyProvider, _ name: KeyName) async throws -> UInt32? {
    try await provider.describeKey(name).latestVersion?.rawValue
}

@Suite("Rotation planner")
struct PlannerTests {
    let created = Date(timeIntervalSince1970: 1_800_000_000)

    @Test func periodNoticeUsageAndMaxAge() {
        let policy = RotationPolicy(period: 3600, notice: 600, maxWraps: 100, maxAge: 7200)
        let early = RotationPlanner.plan(policy, latestCreatedAt: created, latestWraps: 0, now: created.addingTimeInterval(2999))
        #expect(early.due == nil && !early.inNotice && !early.wrapRefused)
        #expect(early.nextRotationAt == created.addingTimeInterval(3600) && early.nextTrigger == .period)
        let notice = RotationPlanner.plan(policy, latestCreatedAt: created, latestWraps: 0, now: created.addingTimeInterval(3000))
        #expect(notice.inNotice && notice.due == nil)
        let due = RotationPlanner.plan(policy, latestCreatedAt: created, latestWraps: 0, now: created.addingTimeInterval(3600))
        #expect(due.due == .period && !due.inNotice)
        let usage = RotationPlanner.plan(policy, latestCreatedAt: created, latestWraps: 100, now: created)
        #expect(usage.due == .usage && usage.nextRotationAt == created)
        #expect(RotationPlanner.plan(policy, latestCreatedAt: created, latestWraps: 99, now: created).due == nil)
        let old = RotationPlanner.plan(policy, latestCreatedAt: created, latestWraps: 0, now: created.addingTimeInterval(7200))
        #expect(old.wrapRefused && old.due == .period)
    }

    @Test func withoutPeriodOnlyUsageRotates() {
        let plan = RotationPlanner.plan(RotationPolicy(), latestCreatedAt: created, latestWraps: 5, now: created.addingTimeInterval(1e9))
        #expect(plan.due == nil && plan.nextRotationAt == nil && plan.nextTrigger == nil)
    }

    @Test func retriesBackOffToTenMinutes() {
        #expect(RotationPlanner.retryDelay(afterFailures: 1) == 5)
        #expect(RotationPlanner.retryDelay(afterFailures: 2) == 10)
        #expect(RotationPlanner.retryDelay(afterFailures: 30) == 600)
    }

    @Test func policyProblemsNameTheirField() {
        #expect(RotationPolicy(period: 3600, notice: 3600).problems.contains { $0.hasPrefix("notice:") })
        #expect(RotationPolicy(maxWraps: 1 << 33).problems.contains { $0.hasPrefix("max_wraps:") })
        #expect(RotationPolicy(period: 3600, maxAge: 60).problems.contains { $0.hasPrefix("max_age:") })
        #expect(RotationPolicy(period: 3600, notice: 60, maxAge: 7200).problems.isEmpty)
        #expect(DurationText.parse("90d") == 90 * 86400 && DurationText.parse("2w") == 14 * 86400)
        #expect(DurationText.parse("500ms") == 0.5 && DurationText.parse("1h") == 3600 && DurationText.parse("x") == nil)
        #expect(DurationText.parse("-1h") == nil && DurationText.parse("h") == nil)
    }
}

@Suite("Rotation manager over the in-memory backend", .serialized)
struct RotationTests {
    @Test func periodRotationWithNoticeAndAnUnchangedScheduleAfterRestart() async throws {
        try await withOrdersKey { provider, clock in
            let start = clock.now
            let path = try storePath()
            let events = EventLog()
            let policy = RotationPolicy(period: 3600, notice: 600)
            let first = try manager([(orders, provider, policy)], store: path, clock: clock, events: events)
            try await first.start()

            clock.advance(2999)
            await first.tick()
            #expect(try await latest(provider, orders) == 1)
            #expect(events.count(.notice, key: "orders") == 0)

            clock.advance(1)  // created + 1 h − notice
            await first.tick()
            #expect(events.count(.notice, key: "orders") == 1)
            await first.tick()
            #expect(events.count(.notice, key: "orders") == 1, "one notice per version")
            #expect(try await latest(provider, orders) == 1)

            clock.advance(599)  // one second before the due time
            await first.tick()
            #expect(try await latest(provider, orders) == 1)

            clock.advance(1)  // created + 1 h
            await first.tick()
            #expect(try await latest(provider, orders) == 2)
            let journal = try await first.journal(orders)
            #expect(journal.filter { $0.action == .rotate && $0.result == .ok }.map(\.reason) == ["period"])
            #expect(journal.contains { $0.action == .notice })
            let before = await first.schedule()
            #expect(before.first?.plan?.nextRotationAt == start.addingTimeInterval(7200))

            // A restart: a new manager on the same store and backend plans the same.
            let second = try manager([(orders, provider, policy)], store: path, clock: clock)
            try await second.start()
            let after = await second.schedule()
            #expect(after.first?.plan?.nextRotationAt == start.addingTimeInterval(7200))
            #expect(after.first?.latestCreatedAt == before.first?.latestCreatedAt)
            clock.advance(3599)
            await second.tick()
            #expect(try await latest(provider, orders) == 2)
            clock.advance(1)
            await second.tick()
            #expect(try await latest(provider, orders) == 3)
        }
    }

    @Test func theHundredthWrapRotatesAndTheNextUsesTheNewVersion() async throws {
        try await withOrdersKey { provider, clock in
            let rotation = try manager([(orders, provider, RotationPolicy(maxWraps: 100))], store: try storePath(), clock: clock)
            try await rotation.start()
            let tracked = TrackedProvider(provider, manager: rotation)
            for index in 1...99 {
                let key = try await tracked.generateDataKey(orders, context: .empty)
                #expect(key.version.rawValue == 1, "wrap \(index)")
            }
            #expect(try await latest(provider, orders) == 1)
            let hundredth = try await tracked.generateDataKey(orders, context: .empty)
            #expect(hundredth.version.rawValue == 1)
            #expect(try await latest(provider, orders) == 2)
            let next = try await tracked.generateDataKey(orders, context: .empty)
            #expect(next.version.rawValue == 2)
            // The DEK wrapped by the old version still unwraps.
            let unwrapped = try await tracked.unwrap(orders, wrapped: hundredth.wrapped, context: .empty)
            #expect(unwrapped.plaintext == hundredth.plaintext && unwrapped.version.rawValue == 1)
            let journal = try await rotation.journal(orders)
            #expect(journal.filter { $0.action == .rotate }.map(\.reason) == ["usage"])
        }
    }

    @Test func maxWrapsIsAHardLimitWhileRotationFails() async throws {
        let clock = ManualClock()
        let provider = InMemoryKeyProvider(now: clock.function)
        _ = try await provider.createKey(orders)
        let events = EventLog()
        let rotation = try manager([(orders, provider, RotationPolicy(maxWraps: 5))], store: try storePath(), clock: clock, events: events)
        try await rotation.start()
        let tracked = TrackedProvider(provider, manager: rotation)
        // The backend cannot create the next version: the usage rotation fails.
        provider.faults.rotationFails = true
        var wrapped: [DataKey] = []
        for _ in 1...5 { wrapped.append(try await tracked.generateDataKey(orders, context: .empty)) }
        #expect(wrapped.allSatisfy { $0.version.rawValue == 1 })
        #expect(try await latest(provider, orders) == 1)
        #expect(events.count(.rotationFailed, key: "orders") == 1)

        // The sixth wrap, and a wrap naming the version, and a rewrap: refused, 503 rotation_required.
        for attempt in 0..<3 {
            do {
                switch attempt {
                case 0: _ = try await tracked.generateDataKey(orders, context: .empty)
                case 1: _ = try await tracked.wrap(orders, plaintext: SecretBytes.random(count: 32), context: .empty, version: .first)
                default: _ = try await tracked.rewrap(orders, wrapped: wrapped[0].wrapped, context: .empty)
                }
                Issue.record("wrap \(attempt) past max_wraps succeeded")
            } catch let error as KMSError {
                #expect(error.code == .rotationRequired)
                #expect(error.message.contains("max_wraps") && error.message.contains("unwrapping continues"))
            }
        }
        #expect(events.count(.wrapLimitReached, key: "orders") == 3)
        #expect(rotation.usage(orders)[1]?.wraps == 5, "no wrap past the limit")
        // Unwrapping continues.
        let unwrapped = try await tracked.unwrap(orders, wrapped: wrapped[4].wrapped, context: .empty)
        #expect(unwrapped.plaintext == wrapped[4].plaintext)

        // The backend recovers: the retried rotation succeeds and wrapping resumes on version 2.
        provider.faults.rotationFails = false
        clock.advance(10)
        await rotation.tick()
        #expect(try await latest(provider, orders) == 2)
        #expect(try await tracked.generateDataKey(orders, context: .empty).version.rawValue == 2)
    }

    @Test func aFailingRotationIsRetriedAndRecordedWhileOtherKeysRotateAndMaxAgeRefusesWraps() async throws {
        let clock = ManualClock()
        let failing = InMemoryKeyProvider(now: clock.function)
        let healthy = InMemoryKeyProvider(now: clock.function)
        _ = try await failing.createKey(orders)
        _ = try await healthy.createKey(invoices)
        let events = EventLog()
        let policy = RotationPolicy(period: 3600, maxAge: 7200)
        let rotation = try manager([(orders, failing, policy), (invoices, healthy, policy)], store: try storePath(), clock: clock, events: events)
        try await rotation.start()
        let tracked = TrackedProvider(failing, manager: rotation)
        let early = try await tracked.generateDataKey(orders, context: try EncryptionContext(["table": "t1"]))

        // Creating a key version fails on the first backend; wrapping and unwrapping still work there.
        failing.faults.rotationFails = true
        clock.advance(3600)
        await rotation.tick()
        #expect(try await latest(failing, orders) == 1)
        #expect(try await latest(healthy, invoices) == 2, "the other key rotates")
        var journal = try await rotation.journal(orders)
        #expect(journal.filter { $0.action == .rotate && $0.result == .failed }.count == 1)
        #expect(journal.last?.detail?.isEmpty == false)
        #expect(events.count(.rotationFailed, key: "orders") == 1)

        // Within the retry delay nothing is attempted; after it, the rotation is retried.
        await rotation.tick()
        #expect(try await rotation.journal(orders).filter { $0.result == .failed }.count == 1)
        clock.advance(10)
        await rotation.tick()
        #expect(try await rotation.journal(orders).filter { $0.result == .failed }.count == 2)
        let schedule = await rotation.schedule()
        #expect(schedule.first { $0.key == orders }?.warnings.contains { $0.contains("rotation failing") } == true)
        #expect(try await tracked.generateDataKey(orders, context: .empty).version.rawValue == 1, "before max_age wraps go on")

        // Past max_age: wrapping is refused with a clear error; unwrapping continues.
        clock.advance(3600)
        await rotation.tick()
        do {
            _ = try await tracked.generateDataKey(orders, context: .empty)
            Issue.record("a wrap past max_age succeeded")
        } catch let error as KMSError {
            #expect(error.code == .unavailable)
            #expect(error.message.contains("max_age") && error.message.contains("unwrapping continues"))
        }
        #expect(events.count(.wrapRefused, key: "orders") == 1)
        let unwrapped = try await tracked.unwrap(orders, wrapped: early.wrapped, context: try EncryptionContext(["table": "t1"]))
        #expect(unwrapped.plaintext == early.plaintext)

        // The backend recovers: the next attempt rotates and wrapping resumes on the new version.
        failing.faults.rotationFails = false
        clock.advance(600)
        await rotation.tick()
        #expect(try await latest(failing, orders) == 2)
        #expect(try await tracked.generateDataKey(orders, context: .empty).version.rawValue == 2)
        journal = try await rotation.journal(orders)
        #expect(journal.last?.action == .rotate && journal.last?.result == .ok)
    }

    @Test func twoSchedulersOnOneBackendRotateADueKeyOnce() async throws {
        try await withOrdersKey { provider, clock in
            let path = try storePath()
            let policy = RotationPolicy(period: 3600)
            let one = try manager([(orders, provider, policy)], store: path, clock: clock)
            let two = try manager([(orders, provider, policy)], store: path, clock: clock)
            try await one.start()
            try await two.start()
            clock.advance(3600)
            for _ in 0..<3 {
                async let first: Void = one.tick()
                async let second: Void = two.tick()
                _ = await (first, second)
            }
            #expect(try await latest(provider, orders) == 2)
            let rotations = try await one.journal(orders).filter { $0.action == .rotate }
            #expect(rotations.count == 1 && rotations.first?.result == .ok)
        }
    }

    @Test func twoAdministratorsRotatingAtOnceOnTwoReplicasMakeOneVersion() async throws {
        try await withOrdersKey { provider, clock in
            let path = try storePath()
            let one = try manager([(orders, provider, RotationPolicy())], store: path, clock: clock)
            let two = try manager([(orders, provider, RotationPolicy())], store: path, clock: clock)
            try await one.start()
            try await two.start()
            // Every backend call takes 50 ms, so the two requests overlap.
            provider.faults.delay = .milliseconds(50)
            async let first = one.rotate(orders, trigger: .manual(reason: "drill"), actor: .administrator("alice"))
            async let second = two.rotate(orders, trigger: .manual(reason: "drill"), actor: .administrator("bob"))
            let outcomes = try await [first, second].compactMap { $0 }
            #expect(outcomes.count == 2 && outcomes.allSatisfy { $0.previousVersion.rawValue == 1 && $0.newVersion.rawValue == 2 })
            #expect(outcomes.filter(\.joined).count == 1, "one rotated, the other joined it")
            #expect(try await latest(provider, orders) == 2)
            // A rotation asked for after that one finished rotates again.
            let third = try await two.rotate(orders, trigger: .manual(reason: nil), actor: .administrator("bob"))
            #expect(third?.newVersion.rawValue == 3 && third?.joined == false)
            #expect(try await one.journal(orders).filter { $0.action == .rotate }.map(\.toVersion) == [2, 3])
        }
    }

    @Test func aRotationWhoseLeaseLapsedWhileItReadTheBackendRotatesNothing() async throws {
        try await withOrdersKey { provider, clock in
            let path = try storePath()
            let one = try manager([(orders, provider, RotationPolicy(maxWraps: 100))], store: path, clock: clock)
            try await one.start()
            // The usage rotation takes the lease, then reads the key: the read is held until the lease's 120 s have
            // passed and another replica has taken it.
            let (reached, reaching) = AsyncStream<Void>.makeStream()
            let (goOn, letGo) = AsyncStream<Void>.makeStream()
            provider.faults.gate = {
                reaching.yield()
                for await _ in goOn { break }
            }
            let rotation = Task { try await one.rotate(orders, trigger: .usage, actor: .scheduler, expecting: try KeyVersion(1)) }
            for await _ in reached { break }
            provider.faults.gate = nil
            clock.advance(121)
            let intruder = try SQLiteStateStore(path: path)
            #expect(try await intruder.acquireLease("rotate/orders", holder: "other-replica", now: clock.now, duration: 120))
            letGo.yield()
            await #expect(throws: KMSError.self) { try await rotation.value }
            #expect(try await latest(provider, orders) == 1, "nothing was rotated")
            #expect(try await one.journal(orders).filter { $0.action == .rotate && $0.result == .ok }.isEmpty)
            await intruder.close()
        }
    }

    @Test func retireIsRefusedWhileTheVersionStillUnwrapsUnlessForcedOrQuiet() async throws {
        try await withOrdersKey { provider, clock in
            let rotation = try manager([(orders, provider, RotationPolicy())], store: try storePath(), clock: clock)
            try await rotation.start()
            let tracked = TrackedProvider(provider, manager: rotation)
            let v1 = try await tracked.generateDataKey(orders, context: .empty)
            try await rotation.rotate(orders, trigger: .manual(reason: nil), actor: .administrator("test"))
            let v2 = try await tracked.generateDataKey(orders, context: .empty)
            try await rotation.rotate(orders, trigger: .manual(reason: nil), actor: .administrator("test"))
            _ = try await tracked.unwrap(orders, wrapped: v1.wrapped, context: .empty)
            _ = try await tracked.unwrap(orders, wrapped: v1.wrapped, context: .empty)
            _ = try await tracked.unwrap(orders, wrapped: v2.wrapped, context: .empty)

            do {
                try await rotation.retire(orders, version: try KeyVersion(1), force: false, actor: .administrator("test"))
                Issue.record("retire of a version unwrapped just now succeeded")
            } catch let error as KMSError {
                #expect(error.code == .conflict)
                #expect(error.message.contains("last used to unwrap at") && error.message.contains("2 unwrap(s)"))
            }
            #expect(try await provider.describeKey(orders).version(try KeyVersion(1))?.state == .active)
            #expect(try await rotation.journal(orders).last?.result == .refused)

            try await rotation.retire(orders, version: try KeyVersion(1), force: true, actor: .administrator("test"))
            #expect(try await provider.describeKey(orders).version(try KeyVersion(1))?.state == .retired)

            clock.advance(RotationPolicy.defaultRetireQuietPeriod - 1)
            await #expect(throws: KMSError.self) { try await rotation.retire(orders, version: try KeyVersion(2), force: false, actor: .administrator("test")) }
            clock.advance(2)
            try await rotation.retire(orders, version: try KeyVersion(2), force: false, actor: .administrator("test"))
            #expect(try await provider.describeKey(orders).version(try KeyVersion(2))?.state == .retired)
            // A retired version still unwraps.
            #expect(try await tracked.unwrap(orders, wrapped: v1.wrapped, context: .empty).plaintext == v1.plaintext)
        }
    }

    @Test func countersSurviveARestart() async throws {
        try await withOrdersKey { provider, clock in
            let path = try storePath()
            let first = try manager([(orders, provider, RotationPolicy())], store: path, clock: clock)
            try await first.start()
            let tracked = TrackedProvider(provider, manager: first)
            var wrapped: [[UInt8]] = []
            for _ in 0..<7 { wrapped.append(try await tracked.generateDataKey(orders, context: .empty).wrapped) }
            for blob in wrapped.prefix(3) { _ = try await tracked.unwrap(orders, wrapped: blob, context: .empty) }
            await first.flush()

            let second = try manager([(orders, provider, RotationPolicy())], store: path, clock: clock)
            try await second.start()
            let (_, versions) = try await second.versions(orders)
            #expect(versions.count == 1)
            #expect(versions.first?.usage.wraps == 7 && versions.first?.usage.unwraps == 3)
            #expect(versions.first?.usage.lastUnwrapAt == clock.now && versions.first?.inUse == true)
            // Counts made after the last flush are what a crash can lose: they are in memory only until the next flush.
            _ = try await TrackedProvider(provider, manager: second).generateDataKey(orders, context: .empty)
            let third = try manager([(orders, provider, RotationPolicy())], store: path, clock: clock)
            try await third.start()
            #expect(try await third.versions(orders).1.first?.usage.wraps == 7)
            await second.flush()
            let fourth = try manager([(orders, provider, RotationPolicy())], store: path, clock: clock)
            try await fourth.start()
            #expect(try await fourth.versions(orders).1.first?.usage.wraps == 8)
        }
    }
}
