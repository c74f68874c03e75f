public import Foundation
public import KMSCore
public import KMSState
public import Logging
import Synchronization

/// Something the rotation layer wants operators to see (logged, counted, and later audited).
public struct RotationEvent: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case notice = "rotation_notice"
        case rotated
        case rotationFailed = "rotation_failed"
        case wrapRefused = "wrap_refused_max_age"
        case wrapLimitReached = "wrap_refused_max_wraps"
        case retired
        case retireRefused = "retire_refused"
    }
    public let kind: Kind
    public let key: String
    public let version: UInt32?
    public let detail: String
    /// The scheduler for what kmsd did on its own; the administrator otherwise.
    public var actor: RotationActor = .scheduler
}

/// Why a rotation runs. Its `description` is what the journal's `reason` records.
public enum RotationTrigger: Sendable, Equatable, CustomStringConvertible {
    /// The latest version reached the key's `period`.
    case period
    /// The latest version reached `max_wraps`.
    case usage
    /// An administrator asked (`kmsctl rotate`), with an optional reason.
    case manual(reason: String?)

    public var description: String {
        switch self {
        case .period: "period"
        case .usage: "usage"
        case .manual(let reason): "manual" + (reason.map { ": \($0)" } ?? "")
        }
    }

    init(_ planned: RotationPlan.Trigger) {
        switch planned {
        case .period: self = .period
        case .usage: self = .usage
        }
    }
}

/// Who acts on a key. Its `description` is what the journal's `actor` records.
public enum RotationActor: Sendable, Equatable, CustomStringConvertible {
    /// kmsd on its own (schedule, usage, notices).
    case scheduler
    /// An administrator: a certificate identity or `admin-token`.
    case administrator(String)

    public var description: String {
        switch self {
        case .scheduler: "scheduler"
        case .administrator(let name): name
        }
    }
}

/// Rotates keys on schedule, on usage and on request; counts use per version; keeps retirement safe.
///
/// The request path calls `checkWrap`, `didWrap` and `didUnwrap` (through `TrackedProvider`); the scheduler calls
/// `tick`; the admin API calls `rotate`, `retire`, `schedule`, `versions` and `rewrapPlan`. Rotations of one key
/// are serialized in this process by a lock and across processes sharing the store by a lease.
public final class RotationManager: Sendable {
    public struct Key: Sendable {
        public let name: KeyName
        public let providerName: String
        public let provider: any KeyProvider
        public let policy: RotationPolicy
        public init(name: KeyName, providerName: String, provider: any KeyProvider, policy: RotationPolicy) {
            self.name = name
            self.providerName = providerName
            self.provider = provider
            self.policy = policy
        }
    }

    /// What this process knows of a key between backend reads.
    struct KeyState {
        var latest: KeyVersion?
        var latestCreatedAt: Date?
        var failures = 0
        var nextAttemptAt: Date?
        var lastError: String?
        var noticedVersion: KeyVersion?
    }

    public let store: any StateStore
    let ledger = UsageLedger()
    public let clock: @Sendable () -> Date
    /// Identifies this process's leases.
    let holder: String
    let logger: Logger
    let onEvent: @Sendable (RotationEvent) -> Void
    private let keys: Mutex<[KeyName: Key]>
    private let states = Mutex<[KeyName: KeyState]>([:])
    /// Creation times as recorded in the store; they never change once recorded, so each is read or written once.
    private let creationTimes = Mutex<[VersionID: Date]>([:])
    private let locks = KeyLocks()
    /// How long a rotation lease lasts (longer than any backend call's deadline).
    let leaseDuration: TimeInterval = 120

    public init(keys: [Key], store: any StateStore, clock: @escaping @Sendable () -> Date = { Date() },
                holder: String = UUID().uuidString, logger: Logger = Logger(label: "kmsd.rotation"),
                onEvent: @escaping @Sendable (RotationEvent) -> Void = { _ in }) {
        self.keys = Mutex(Dictionary(keys.map { ($0.name, $0) }, uniquingKeysWith: { $1 }))
        self.store = store
        self.clock = clock
        self.holder = holder
        self.logger = logger
        self.onEvent = onEvent
    }

    /// Replaces the keys and policies (configuration reload). Counters and failure state stay.
    public func update(keys: [Key]) {
        self.keys.withLock { $0 = Dictionary(keys.map { ($0.name, $0) }, uniquingKeysWith: { $1 }) }
    }

    func key(_ name: KeyName) throws -> Key {
        guard let key = keys.withLock({ $0[name] }) else { throw KMSError.notFound("no key named '\(name)' in the configuration") }
        return key
    }

    public var configuredKeys: [Key] { keys.withLock { $0.values.sorted { $0.name < $1.name } } }

    /// Counted use of each version of `name` (including counts not yet flushed).
    public func usage(_ name: KeyName) -> [UInt32: VersionUsage] { ledger.usage(key: name.rawValue) }

    /// Loads the stored counters and learns each key's latest version. A backend that is down now is read later.
    public func start() async throws {
        ledger.reset(stored: try await store.allUsage())
        for key in configuredKeys {
            _ = try? await refresh(key)
        }
    }

    /// Writes the counted use to the store. On failure the counts stay in memory for the next flush.
    public func flush() async {
        let deltas = ledger.drain()
        guard !deltas.isEmpty else { return }
        do {
            try await store.addUsage(deltas)
        } catch {
            // An unknown outcome (a deadline passed) may have committed: counting those wraps twice rotates early,
            // which is the safe side of the GCM bound.
            ledger.restore(deltas)
            logger.error("cannot flush usage counters; keeping them in memory", metadata: ["error": "\(error)"])
            return
        }
        do {
            ledger.reset(stored: try await store.allUsage())
        } catch {
            logger.warning("flushed usage counters but cannot read the totals back; using this process's", metadata: ["error": "\(error)"])
        }
    }

    // MARK: - Request path

    /// Refuses to wrap with a latest version that has used up `max_wraps` or is past `max_age` (rotation has not
    /// succeeded). Unwrapping is never refused.
    ///
    /// `max_wraps` is a hard limit: the wrap that reaches it rotates (`didWrap`), and wraps that start while the
    /// version is at its limit are refused with `rotation_required`. Wraps already past this check when the limit is
    /// reached still finish, so a version can exceed `max_wraps` by at most the number of wraps in flight at that
    /// moment (bounded by the HSM sessions and request concurrency; documented in docs/rotation.md).
    public func checkWrap(_ name: KeyName) throws {
        guard let key = keys.withLock({ $0[name] }) else { return }
        let state = states.withLock { $0[name] }
        guard let state, let latest = state.latest else { return }
        try checkWrapCount(name, version: latest, policy: key.policy, lastError: state.lastError)
        guard let maxAge = key.policy.maxAge, let created = state.latestCreatedAt else { return }
        let now = clock()
        guard now >= created.addingTimeInterval(maxAge) else { return }
        let detail = "version \(latest.rawValue) of '\(name)' is older than max_age (\(DurationText.format(maxAge))) and has not been "
            + "rotated\(state.lastError.map { " (last rotation error: \($0))" } ?? ""); wrapping is refused until the key rotates, "
            + "unwrapping continues"
        emit(.init(kind: .wrapRefused, key: name.rawValue, version: latest.rawValue, detail: detail), level: .warning)
        throw KMSError.unavailable(detail)
    }

    /// Refuses a wrap with an explicitly chosen version that has used up `max_wraps`.
    public func checkWrap(_ name: KeyName, version: KeyVersion) throws {
        guard let key = keys.withLock({ $0[name] }) else { return }
        try checkWrapCount(name, version: version, policy: key.policy, lastError: states.withLock { $0[name]?.lastError })
    }

    private func checkWrapCount(_ name: KeyName, version: KeyVersion, policy: RotationPolicy, lastError: String?) throws {
        let wraps = ledger.usage(VersionID(name.rawValue, version.rawValue)).wraps
        guard wraps >= policy.maxWraps else { return }
        let detail = "version \(version.rawValue) of '\(name)' has wrapped \(wraps) secrets, its max_wraps of \(policy.maxWraps), and the key "
            + "has not rotated yet\(lastError.map { " (last rotation error: \($0))" } ?? ""); wrapping waits for the rotation, "
            + "unwrapping continues"
        emit(.init(kind: .wrapLimitReached, key: name.rawValue, version: version.rawValue, detail: detail), level: .warning)
        throw KMSError.rotationRequired("version \(version.rawValue) of '\(name)' reached max_wraps and the key has not rotated yet; "
                                        + "wrapping waits for the rotation, unwrapping continues", detail: detail)
    }

    /// Counts a wrap. When the latest version reaches `max_wraps`, rotates before returning, so the next wrap uses the
    /// new version. A failed rotation is recorded and retried; the wrap that triggered it still succeeds.
    public func didWrap(_ name: KeyName, version: KeyVersion) async {
        let count = ledger.recordWrap(VersionID(name.rawValue, version.rawValue), at: clock())
        guard let key = keys.withLock({ $0[name] }), count >= key.policy.maxWraps else { return }
        let state = states.withLock { $0[name] }
        if let latest = state?.latest, latest > version { return }
        if let next = state?.nextAttemptAt, next > clock() { return }
        _ = try? await rotate(name, trigger: .usage, actor: .scheduler, expecting: version)
    }

    public func didUnwrap(_ name: KeyName, version: KeyVersion) {
        ledger.recordUnwrap(VersionID(name.rawValue, version.rawValue), at: clock())
    }

    // MARK: - Scheduling

    /// One pass over every key: warns in the notice window and rotates what is due. A key that fails waits for its
    /// retry time; the others go on.
    public func tick() async {
        for key in configuredKeys {
            let now = clock()
            if let next = states.withLock({ $0[key.name]?.nextAttemptAt }), next > now { continue }
            let snapshot: Snapshot
            do {
                snapshot = try await refresh(key)
            } catch let error as KMSError where error.code == .notFound {
                continue  // configured but not created yet: nothing to rotate
            } catch {
                recordFailure(key.name, error, at: now)
                continue
            }
            let plan = snapshot.plan(key.policy, now: now)
            if plan.inNotice, states.withLock({ $0[key.name]?.noticedVersion }) != snapshot.latest.version {
                states.withLock { $0[key.name, default: KeyState()].noticedVersion = snapshot.latest.version }
                let detail = "'\(key.name)' rotates at \(plan.periodDueAt?.formatted(.iso8601) ?? "?") (period)"
                try? await store.append(JournalEntry(at: now, key: key.name.rawValue, action: .notice, actor: RotationActor.scheduler.description,
                                                     reason: "period", fromVersion: snapshot.latest.version.rawValue, result: .ok, detail: detail))
                emit(.init(kind: .notice, key: key.name.rawValue, version: snapshot.latest.version.rawValue, detail: detail), level: .warning)
            }
            if let trigger = plan.due {
                _ = try? await rotate(key.name, trigger: RotationTrigger(trigger), actor: .scheduler, expecting: snapshot.latest.version)
            }
        }
    }

    /// What a rotation did (or, for a dry run, would do).
    public struct Outcome: Sendable {
        public let key: KeyName
        public let previousVersion: KeyVersion
        public let newVersion: KeyVersion
        public let dryRun: Bool
        /// The plan for the new version.
        public let nextRotationAt: Date?
        public let nextTrigger: RotationPlan.Trigger?
        /// The key after the rotation (before it, for a dry run).
        public let description: KeyDescription
    }

    /// Rotates `name` now. `expecting` (scheduler and usage triggers) skips the rotation when the latest version is no
    /// longer that one — another replica or request already rotated. Manual rotations always rotate.
    @discardableResult
    public func rotate(_ name: KeyName, trigger: RotationTrigger, actor: RotationActor, dryRun: Bool = false,
                       expecting: KeyVersion? = nil) async throws -> Outcome? {
        let key = try key(name)
        if dryRun {
            let snapshot = try await refresh(key)
            let next = try snapshot.latest.version.next()
            let plan = RotationPlanner.plan(key.policy, latestCreatedAt: clock(), latestWraps: 0, now: clock())
            return Outcome(key: name, previousVersion: snapshot.latest.version, newVersion: next, dryRun: true,
                           nextRotationAt: plan.nextRotationAt, nextTrigger: plan.nextTrigger, description: snapshot.description)
        }
        await locks.lock(name)
        do {
            let outcome = try await rotateLocked(key, trigger: trigger, actor: actor, expecting: expecting)
            await locks.unlock(name)
            return outcome
        } catch {
            await locks.unlock(name)
            throw error
        }
    }

    private func rotateLocked(_ key: Key, trigger: RotationTrigger, actor: RotationActor, expecting: KeyVersion?) async throws -> Outcome? {
        let name = key.name
        let lease = "rotate/\(name.rawValue)"
        guard try await store.acquireLease(lease, holder: holder, now: clock(), duration: leaseDuration) else {
            if expecting != nil { return nil }
            throw KMSError.conflict("another kmsd is rotating '\(name)' right now; try again in a minute")
        }
        do {
            let outcome = try await rotateHoldingLease(key, trigger: trigger, actor: actor, expecting: expecting)
            try? await store.releaseLease(lease, holder: holder)
            return outcome
        } catch {
            try? await store.releaseLease(lease, holder: holder)
            throw error
        }
    }

    private func rotateHoldingLease(_ key: Key, trigger: RotationTrigger, actor: RotationActor, expecting: KeyVersion?) async throws -> Outcome? {
        let now = clock()
        let before: Snapshot
        do {
            before = try await refresh(key)
        } catch {
            try await journalFailure(key, trigger: trigger, actor: actor, from: nil, error: error, at: now)
            throw error
        }
        if let expecting {
            // Re-plan on what the backend says now: someone may have rotated since this rotation was planned.
            guard before.latest.version == expecting else { return nil }
            if trigger != .usage && before.plan(key.policy, now: now).due == nil { return nil }
        }
        let info: KeyVersionInfo
        do {
            info = try await key.provider.rotateKey(key.name)
        } catch {
            try await journalFailure(key, trigger: trigger, actor: actor, from: before.latest.version, error: error, at: now)
            throw error
        }
        let created = try await creationTime(VersionID(key.name.rawValue, info.version.rawValue), backend: info.createdAt)
        states.withLock { states in
            var state = states[key.name, default: KeyState()]
            if state.latest.map({ $0 < info.version }) ?? true {
                state.latest = info.version
                state.latestCreatedAt = created
            }
            state.failures = 0
            state.nextAttemptAt = nil
            state.lastError = nil
            states[key.name] = state
        }
        try? await store.append(JournalEntry(at: now, key: key.name.rawValue, action: .rotate, actor: actor.description, reason: trigger.description,
                                             fromVersion: before.latest.version.rawValue, toVersion: info.version.rawValue, result: .ok))
        emit(.init(kind: .rotated, key: key.name.rawValue, version: info.version.rawValue,
                   detail: "'\(key.name)' rotated from \(before.latest.version) to \(info.version) (\(trigger), by \(actor))", actor: actor),
             level: .notice)
        let plan = RotationPlanner.plan(key.policy, latestCreatedAt: created, latestWraps: 0, now: clock())
        let after = KeyDescription(name: key.name, provider: before.description.provider, versions: before.description.versions + [info])
        return Outcome(key: key.name, previousVersion: before.latest.version, newVersion: info.version, dryRun: false,
                       nextRotationAt: plan.nextRotationAt, nextTrigger: plan.nextTrigger, description: after)
    }

    private func journalFailure(_ key: Key, trigger: RotationTrigger, actor: RotationActor, from: KeyVersion?, error: any Error, at now: Date) async throws {
        let attempts = recordFailure(key.name, error, at: now)
        let detail = Self.describe(error)
        try? await store.append(JournalEntry(at: now, key: key.name.rawValue, action: .rotate, actor: actor.description, reason: trigger.description,
                                             fromVersion: from?.rawValue, result: .failed, detail: detail))
        emit(.init(kind: .rotationFailed, key: key.name.rawValue, version: from?.rawValue,
                   detail: "rotating '\(key.name)' failed (attempt \(attempts)): \(detail)", actor: actor), level: .error)
    }

    /// Notes a failure and schedules the retry; returns the number of failures in a row.
    @discardableResult
    private func recordFailure(_ name: KeyName, _ error: any Error, at now: Date) -> Int {
        states.withLock { states in
            var state = states[name, default: KeyState()]
            state.failures += 1
            state.nextAttemptAt = now.addingTimeInterval(RotationPlanner.retryDelay(afterFailures: state.failures))
            state.lastError = Self.describe(error)
            states[name] = state
            return state.failures
        }
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? KMSError { return "\(error.code.rawValue): \(error.message)" }
        return "\(error)"
    }

    private func emit(_ event: RotationEvent, level: Logger.Level) {
        logger.log(level: level, "\(event.detail)", metadata: [
            "event": "\(event.kind.rawValue)", "key": "\(event.key)", "version": "\(event.version.map(String.init) ?? "-")",
        ])
        onEvent(event)
    }

    func state(_ name: KeyName) -> KeyState {
        states.withLock { $0[name] } ?? KeyState()
    }

    /// When `version` was created: the backend's time if it keeps one, else the time recorded in the store (by this
    /// kmsd or another replica sharing it) — or now, recorded, for a version nobody recorded yet.
    func creationTime(_ version: VersionID, backend: Date?) async throws -> Date {
        if let backend { return backend }
        if let cached = creationTimes.withLock({ $0[version] }) { return cached }
        let recorded = try await store.recordVersionCreated(version, at: clock())
        creationTimes.withLock { $0[version] = recorded }
        return recorded
    }

    // MARK: - Reading the backend

    /// A key's versions as the backend has them now, with creation times and the latest version's use.
    struct Snapshot {
        let description: KeyDescription
        let latest: KeyVersionInfo
        let latestCreatedAt: Date
        let createdAt: [KeyVersion: Date]
        let usage: [UInt32: VersionUsage]

        func plan(_ policy: RotationPolicy, now: Date) -> RotationPlan {
            RotationPlanner.plan(policy, latestCreatedAt: latestCreatedAt, latestWraps: usage[latest.version.rawValue]?.wraps ?? 0, now: now)
        }
    }

    /// Reads the key from its backend. Versions the backend gives no creation time for (PKCS#11) get the time kmsd
    /// first saw them, recorded once in the store.
    func refresh(_ key: Key) async throws -> Snapshot {
        let description = try await key.provider.describeKey(key.name)
        guard let latest = description.versions.last else { throw KMSError.notFound("key '\(key.name)' has no versions") }
        var created: [KeyVersion: Date] = [:]
        for info in description.versions {
            created[info.version] = try await creationTime(VersionID(key.name.rawValue, info.version.rawValue), backend: info.createdAt)
        }
        let latestCreatedAt = created[latest.version] ?? clock()
        states.withLock { states in
            states[key.name, default: KeyState()].latest = latest.version
            states[key.name, default: KeyState()].latestCreatedAt = latestCreatedAt
        }
        return Snapshot(description: description, latest: latest, latestCreatedAt: latestCreatedAt, createdAt: created,
                        usage: ledger.usage(key: key.name.rawValue))
    }
}

/// One async lock per key; a waiter receives the lock directly from the holder.
actor KeyLocks {
    private var held: Set<KeyName> = []
    private var waiters: [KeyName: [CheckedContinuation<Void, Never>]] = [:]

    func lock(_ name: KeyName) async {
        guard held.contains(name) else {
            held.insert(name)
            return
        }
        await withCheckedContinuation { waiters[name, default: []].append($0) }
    }

    func unlock(_ name: KeyName) {
        if var queue = waiters[name], !queue.isEmpty {
            let next = queue.removeFirst()
            waiters[name] = queue.isEmpty ? nil : queue
            next.resume()
        } else {
            held.remove(name)
        }
    }
}
