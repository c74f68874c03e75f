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
/// The request path calls `wrapping` and `didUnwrap` (through `TrackedProvider`); the scheduler calls
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
    let budgets: WrapBudgets
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
    /// This process as other replicas see it (`identify`), reported by `heartbeat`.
    private let replica = Mutex<ReplicaRecord?>(nil)
    /// The state store's last failure, while it lasts: (since when, what).
    private let storeFailure = Mutex<(since: Date, error: String)?>(nil)
    /// How long a rotation lease lasts (longer than any backend call's deadline).
    let leaseDuration: TimeInterval = 120
    /// How long a usage rotation waits for another replica's rotation of the same key to finish.
    let usageLeaseWait: Duration = .seconds(3)
    /// How long a manual rotation (or retirement, or creation) waits for another replica's change of the same key to
    /// finish: well within the API's default request deadline (10 s).
    let manualLeaseWait: Duration = .seconds(5)

    public init(keys: [Key], store: any StateStore, clock: @escaping @Sendable () -> Date = { Date() },
                holder: String = UUID().uuidString, logger: Logger = Logger(label: "kmsd.rotation"),
                onEvent: @escaping @Sendable (RotationEvent) -> Void = { _ in }) {
        self.keys = Mutex(Dictionary(keys.map { ($0.name, $0) }, uniquingKeysWith: { $1 }))
        self.store = store
        self.budgets = WrapBudgets(store: store, describe: { RotationManager.describe($0) })
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
            storeAnswered()
        } catch {
            // An unknown outcome (a deadline passed) may have committed: counting those wraps twice rotates early,
            // which is the safe side of the GCM bound.
            ledger.restore(deltas)
            storeFailed(error)
            logger.error("cannot flush usage counters; keeping them in memory", metadata: ["error": "\(error)"])
            return
        }
        do {
            ledger.reset(stored: try await store.allUsage())
        } catch {
            logger.warning("flushed usage counters but cannot read the totals back; using this process's", metadata: ["error": "\(error)"])
        }
    }

    // MARK: - Replicas

    /// Names this process to the others sharing the store (its API address, once it listens); `heartbeat` reports it.
    public func identify(id: String, address: String, version: String) {
        let now = clock()
        replica.withLock { $0 = ReplicaRecord(id: id, address: address, version: version, startedAt: now, lastSeen: now, holder: holder) }
    }

    /// Tells the store this process is alive (nothing before `identify`). Its outcome is the store's health.
    public func heartbeat() async {
        guard var record = replica.withLock({ $0 }) else { return }
        record.lastSeen = clock()
        do {
            try await store.heartbeat(record)
            storeAnswered()
        } catch {
            storeFailed(error)
            logger.warning("cannot record this replica's heartbeat in the state store", metadata: ["error": "\(error)"])
        }
    }

    /// The state store's state: nil while it answers, else since when it has not and why (status and readiness).
    public var stateStoreFailure: (since: Date, error: String)? {
        if let failure = storeFailure.withLock({ $0 }) { return failure }
        return budgets.failing().map { (clock(), $0) }
    }

    private func storeAnswered() {
        storeFailure.withLock { $0 = nil }
    }

    private func storeFailed(_ error: any Error) {
        let now = clock()
        storeFailure.withLock { failure in failure = (failure?.since ?? now, Self.describe(error)) }
    }

    // MARK: - Request path

    /// Runs one wrap (`body`, given the version to wrap with) inside the key's limits, and counts it.
    ///
    /// Without an explicit version the wrap uses the latest version this process knows, and is refused past `max_age`
    /// while rotation fails. Either way it takes one of the version's `max_wraps` from this process's reserved block
    /// (`WrapBudgets`): every process sharing the state store together wraps at most `max_wraps` times with a
    /// version, exactly. The wrap that takes a version's last number rotates the key before returning; a wrap that
    /// finds every number reserved (by any replica) rotates it and goes on with the new version, or is refused with
    /// `rotation_required` while rotation fails. When this process has used its block and the store cannot hand out
    /// another, wraps are refused with `state_unavailable`. Unwrapping never needs either.
    public func wrapping<Wrapped>(_ name: KeyName, version explicit: KeyVersion?,
                                  _ body: (KeyVersion?) async throws -> Wrapped) async throws -> Wrapped {
        // A key a reload removed while this request was under way: nothing left to count it against.
        guard let key = keys.withLock({ $0[name] }) else { return try await body(explicit) }
        if explicit == nil { try checkAge(name, policy: key.policy) }
        var reread = false
        while true {
            let (version, last) = try await reserveWrap(key, explicit: explicit)
            let wrapped: Wrapped
            do {
                wrapped = try await body(version)
            } catch let error as KMSError {
                // Another replica retired the version this one still took for the latest: read the key again, once.
                guard error.code == .versionRetired, explicit == nil, !reread else { throw error }
                reread = true
                _ = try await refresh(key)
                continue
            }
            ledger.recordWrap(VersionID(name.rawValue, version.rawValue), at: clock())
            if last { await rotateForUsage(key, from: version) }
            return wrapped
        }
    }

    /// Chooses the version and takes one wrap of it from the budget; rotates a version whose budget is used up.
    private func reserveWrap(_ key: Key, explicit: KeyVersion?) async throws -> (KeyVersion, last: Bool) {
        var rotated = false
        while true {
            let version: KeyVersion
            if let explicit { version = explicit } else { version = try await wrappingVersion(key) }
            switch await budgets.take(VersionID(key.name.rawValue, version.rawValue), limit: key.policy.maxWraps) {
            case .wrap(_, let last):
                return (version, last)
            case .unavailable(let error):
                throw KMSError.stateUnavailable(
                    "kmsd cannot reserve wraps of version \(version.rawValue) of '\(key.name)': its state store is not answering; "
                        + "wrapping waits for it, unwrapping continues", detail: error)
            case .exhausted:
                let latest = states.withLock { $0[key.name]?.latest }
                if !rotated, explicit == nil || explicit == latest {
                    rotated = true
                    await rotateForUsage(key, from: version)
                    if explicit == nil { continue }
                }
                throw wrapLimitReached(key, version: version)
            }
        }
    }

    /// The version wraps use: the latest this process knows, or the backend's when it knows none yet.
    private func wrappingVersion(_ key: Key) async throws -> KeyVersion {
        if let latest = states.withLock({ $0[key.name]?.latest }) { return latest }
        return try await refresh(key).latest.version
    }

    /// Rotates because `version` used its `max_wraps`, unless a newer version is known or a failed rotation waits for
    /// its retry time. Another replica's rotation (or this one's, by another request) makes it a no-op.
    private func rotateForUsage(_ key: Key, from version: KeyVersion) async {
        let state = states.withLock { $0[key.name] }
        if let latest = state?.latest, latest > version { return }
        if let next = state?.nextAttemptAt, next > clock() { return }
        _ = try? await rotate(key.name, trigger: .usage, actor: .scheduler, expecting: version)
    }

    /// Refuses wraps past `max_age` of the latest version while rotation fails. Unwrapping is never refused.
    private func checkAge(_ name: KeyName, policy: RotationPolicy) throws {
        guard let maxAge = policy.maxAge, let state = states.withLock({ $0[name] }), let latest = state.latest,
              let created = state.latestCreatedAt, clock() >= created.addingTimeInterval(maxAge) else { return }
        let detail = "version \(latest.rawValue) of '\(name)' is older than max_age (\(DurationText.format(maxAge))) and has not been "
            + "rotated\(state.lastError.map { " (last rotation error: \($0))" } ?? ""); wrapping is refused until the key rotates, "
            + "unwrapping continues"
        emit(.init(kind: .wrapRefused, key: name.rawValue, version: latest.rawValue, detail: detail), level: .warning)
        throw KMSError.unavailable(detail)
    }

    private func wrapLimitReached(_ key: Key, version: KeyVersion) -> KMSError {
        let lastError = states.withLock { $0[key.name]?.lastError }
        let detail = "version \(version.rawValue) of '\(key.name)' has used its max_wraps of \(key.policy.maxWraps) (counted across every kmsd "
            + "sharing the state store) and the key has not rotated yet\(lastError.map { " (last rotation error: \($0))" } ?? ""); "
            + "wrapping waits for the rotation, unwrapping continues"
        emit(.init(kind: .wrapLimitReached, key: key.name.rawValue, version: version.rawValue, detail: detail), level: .warning)
        return KMSError.rotationRequired("version \(version.rawValue) of '\(key.name)' reached max_wraps and the key has not rotated yet; "
                                         + "wrapping waits for the rotation, unwrapping continues", detail: detail)
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
        /// A manual rotation asked for while another rotation of the key was under way (on any replica sharing the
        /// store) is answered by that one: `newVersion` is the version it made, and no second version was created.
        public var joined = false
    }

    /// Rotates `name` now. `expecting` (scheduler and usage triggers) skips the rotation when the latest version is no
    /// longer that one — another replica or request already rotated. A manual rotation creates a version unless
    /// another rotation of the key finished after it was asked for (two operators, or one retrying on two replicas, at
    /// the same instant): then it answers with that rotation's version (`joined`), so a key rotated "at once" from
    /// several places gets exactly one new version.
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
        // The version a manual rotation rotates away from: the backend's latest now, before any wait.
        var joining: KeyVersion?
        if expecting == nil, case .manual = trigger { joining = try? await refresh(key).latest.version }
        // Another replica holding the key: wraps whose version's budget is used up wait for its rotation (a few
        // seconds at most) instead of failing, then go on with the version it made; a manual rotation waits longer and
        // is answered by it; a scheduled one leaves the key to it.
        let wait: Duration = trigger == .usage ? usageLeaseWait : joining != nil ? manualLeaseWait : .zero
        return try await holdingKey(name, wait: wait, busy: { expecting != nil }) { grant in
            if let expecting, let latest = states.withLock({ $0[name]?.latest }), latest > expecting {
                // A rotation this one waited for already moved the key on: no need to read the backend.
                return nil
            }
            return try await rotateHoldingLease(key, grant, trigger: trigger, actor: actor, expecting: expecting, joining: joining)
        }
    }

    // MARK: - Holding a key

    /// The lease that makes one replica at a time change a key's versions: rotate, retire, create. (Named for the
    /// first of them, as replicas of earlier releases take it.)
    static func keyLease(_ name: KeyName) -> String { "rotate/\(name.rawValue)" }

    /// Takes the key's lease, waiting up to `wait` while another replica holds it; nil if it is still held.
    func takeKeyLease(_ name: KeyName, wait: Duration) async throws -> LeaseGrant? {
        let lease = Self.keyLease(name)
        var grant = try await store.takeLease(lease, holder: holder, now: clock(), duration: leaseDuration)
        let deadline = ContinuousClock.now + wait
        var pause = Duration.milliseconds(25)
        while grant == nil, ContinuousClock.now < deadline {
            try await Task.sleep(for: pause)
            pause = min(pause * 2, .milliseconds(200))
            grant = try await store.takeLease(lease, holder: holder, now: clock(), duration: leaseDuration)
        }
        return grant
    }

    func releaseKeyLease(_ grant: LeaseGrant) async {
        try? await store.releaseLease(grant.name, holder: grant.holder)
    }

    /// Runs a change to `name` (rotate, retire, create) holding the key: this process's lock and the store's lease,
    /// waiting up to `wait` for another replica's change. `body` gets the grant, to check and commit under. If the lease
    /// stays taken the change is refused (`conflict`), or with `busy` answering true, skipped (nil).
    func holdingKey<T>(_ name: KeyName, wait: Duration, busy: () -> Bool = { false },
                       _ body: (LeaseGrant) async throws -> T?) async throws -> T? {
        await locks.lock(name)
        do {
            guard let grant = try await takeKeyLease(name, wait: wait) else {
                if busy() {
                    await locks.unlock(name)
                    return nil
                }
                throw KMSError.conflict("another kmsd is changing '\(name)' right now; try again in a minute")
            }
            do {
                let result = try await body(grant)
                await releaseKeyLease(grant)
                await locks.unlock(name)
                return result
            } catch {
                await releaseKeyLease(grant)
                throw error
            }
        } catch {
            await locks.unlock(name)
            throw error
        }
    }

    /// Refuses to begin a change under a grant that lapsed (another replica may hold the key now).
    func checkHolding(_ grant: LeaseGrant, _ name: KeyName, _ what: String) async throws {
        guard try await store.holds(grant, now: clock()) else {
            throw KMSError.conflict("the lease on '\(name)' expired before the \(what) began (another kmsd may hold it now); nothing was "
                                    + "changed, try again")
        }
    }

    private func rotateHoldingLease(_ key: Key, _ grant: LeaseGrant, trigger: RotationTrigger, actor: RotationActor,
                                    expecting: KeyVersion?, joining: KeyVersion?) async throws -> Outcome? {
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
        if let joining, before.latest.version > joining {
            // Another rotation finished after this one was asked for: it is this request's rotation too.
            let plan = before.plan(key.policy, now: now)
            logger.notice("a manual rotation joined the rotation another request made at the same time", metadata: [
                "key": "\(key.name)", "version": "\(before.latest.version.rawValue)", "actor": "\(actor)",
            ])
            var outcome = Outcome(key: key.name, previousVersion: joining, newVersion: before.latest.version, dryRun: false,
                                  nextRotationAt: plan.nextRotationAt, nextTrigger: plan.nextTrigger, description: before.description)
            outcome.joined = true
            return outcome
        }
        // The lease may have lapsed while the backend was read (and another replica taken it): rotate only under a
        // current grant.
        try await checkHolding(grant, key.name, "rotation")
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
        // The result is committed only under the grant the rotation began with (the fencing token): a replica whose
        // lease lapsed mid-rotation records that instead, and the replica holding the lease now reads the version
        // from the backend like any other.
        await announce(key.name)
        try await commit(JournalEntry(at: now, key: key.name.rawValue, action: .rotate, actor: actor.description, reason: trigger.description,
                                      fromVersion: before.latest.version.rawValue, toVersion: info.version.rawValue, result: .ok),
                         under: grant, lost: "the backend made version \(info.version.rawValue) of '\(key.name)'")
        emit(.init(kind: .rotated, key: key.name.rawValue, version: info.version.rawValue,
                   detail: "'\(key.name)' rotated from \(before.latest.version) to \(info.version) (\(trigger), by \(actor))", actor: actor),
             level: .notice)
        let plan = RotationPlanner.plan(key.policy, latestCreatedAt: created, latestWraps: 0, now: clock())
        let after = KeyDescription(name: key.name, provider: before.description.provider, versions: before.description.versions + [info])
        return Outcome(key: key.name, previousVersion: before.latest.version, newVersion: info.version, dryRun: false,
                       nextRotationAt: plan.nextRotationAt, nextTrigger: plan.nextTrigger, description: after)
    }

    /// Tells the other replicas sharing the store to read `name` again (a failure only delays them to their next read).
    func announce(_ name: KeyName) async {
        do {
            try await store.announceKeyChange(name.rawValue)
        } catch {
            logger.warning("cannot announce a key change to the other replicas; they see it at their next read", metadata: [
                "key": "\(name)", "error": "\(error)",
            ])
        }
    }

    /// Reads a key from its backend whenever a replica sharing the store announces a change to it (every key when
    /// changes may have been missed), so a rotation or retirement elsewhere reaches this process within moments.
    /// Returns when the store's stream ends (at once for SQLite) or the task is cancelled.
    public func followKeyChanges() async {
        for await change in store.keyChanges() {
            let keys = configuredKeys.filter { change == KeyChanges.everyKey || $0.name.rawValue == change }
            for key in keys {
                do {
                    _ = try await refresh(key)
                } catch {
                    logger.debug("cannot read a changed key from its backend", metadata: ["key": "\(key.name)", "error": "\(error)"])
                }
            }
        }
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
            // Versions are only ever added: a read that started before another's rotation must not take it back.
            var state = states[key.name, default: KeyState()]
            if state.latest.map({ $0 <= latest.version }) ?? true {
                state.latest = latest.version
                state.latestCreatedAt = latestCreatedAt
            }
            states[key.name] = state
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
