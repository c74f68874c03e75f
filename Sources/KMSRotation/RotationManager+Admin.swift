public import Foundation
import Logging
public import KMSCore
public import KMSState

extension RotationManager {
    /// One key's line in `kmsctl schedule`.
    public struct ScheduleEntry: Sendable {
        public let key: KeyName
        public let providerName: String
        public let latestVersion: KeyVersion?
        public let latestCreatedAt: Date?
        public let latestWraps: UInt64
        public let policy: RotationPolicy
        public let plan: RotationPlan?
        /// Consecutive failed rotations and the last error, if rotation is failing.
        public let failures: Int
        public let lastError: String?
        public let nextAttemptAt: Date?
        /// What needs attention, in words (notice window, failing rotation, wraps refused, backend unreadable).
        public let warnings: [String]
    }

    /// Every configured key's schedule. With `readBackend` each key is read from its backend first (the admin API);
    /// without, it is what this process last learned (metrics scrapes, which must not load the backends).
    public func schedule(readBackend: Bool = true) async -> [ScheduleEntry] {
        var entries: [ScheduleEntry] = []
        for key in configuredKeys {
            var problem: String?
            if readBackend {
                do {
                    _ = try await refresh(key)
                } catch {
                    problem = (error as? KMSError)?.code == .notFound ? "not created yet (kmsctl keys create \(key.name))"
                        : "cannot read the key from its backend: \(Self.describe(error))"
                }
            }
            entries.append(scheduleEntry(key, state(key.name), problem: problem, now: clock()))
        }
        return entries
    }

    private func scheduleEntry(_ key: Key, _ state: KeyState, problem: String?, now: Date) -> ScheduleEntry {
        var warnings: [String] = []
        if state.failures > 0 {
            warnings.append("rotation failing (\(state.failures) attempt(s)): \(state.lastError ?? "unknown error"); next attempt "
                            + (state.nextAttemptAt?.formatted(.iso8601) ?? "soon"))
        }
        if let problem { warnings.append(problem) }
        var plan: RotationPlan?
        var wraps: UInt64 = 0
        if let latest = state.latest, let created = state.latestCreatedAt {
            wraps = ledger.usage(VersionID(key.name.rawValue, latest.rawValue)).wraps
            let planned = RotationPlanner.plan(key.policy, latestCreatedAt: created, latestWraps: wraps, now: now)
            if planned.inNotice, let due = planned.periodDueAt {
                warnings.append("in the notice window: rotates in \(DurationText.format(due.timeIntervalSince(now)))")
            }
            if planned.wrapRefused { warnings.append("older than max_age: wrapping is refused until the key rotates") }
            if planned.due == nil && wraps >= key.policy.maxWraps * 9 / 10 {
                warnings.append("\(wraps) of \(key.policy.maxWraps) wraps used")
            }
            plan = planned
        }
        return ScheduleEntry(
            key: key.name, providerName: key.providerName, latestVersion: state.latest, latestCreatedAt: state.latestCreatedAt,
            latestWraps: wraps, policy: key.policy, plan: plan, failures: state.failures, lastError: state.lastError,
            nextAttemptAt: state.nextAttemptAt, warnings: warnings)
    }

    /// One version's line in `kmsctl versions` and `kmsctl rewrap-plan`.
    public struct VersionEntry: Sendable {
        public let version: KeyVersion
        public let state: KeyVersionState
        public let createdAt: Date?
        public let usage: VersionUsage
        /// Whether it is the version new wraps use.
        public let wrapping: Bool
        /// Unwrapped within the quiet period: data wrapped with it is still being read and needs rewrapping before
        /// the version can be retired safely.
        public let inUse: Bool
        /// When the quiet period after its last unwrap ends (nil when it never unwrapped).
        public let quietAfter: Date?
    }

    /// The key's versions with their counted use, oldest first.
    public func versions(_ name: KeyName) async throws -> (Key, [VersionEntry]) {
        let key = try key(name)
        let snapshot = try await refresh(key)
        let now = clock()
        let wrapping = snapshot.description.wrappingVersion?.version
        let entries = snapshot.description.versions.map { info in
            let usage = snapshot.usage[info.version.rawValue] ?? VersionUsage()
            let quietAfter = usage.lastUnwrapAt.map { $0.addingTimeInterval(key.policy.retireQuietPeriod) }
            return VersionEntry(version: info.version, state: info.state, createdAt: snapshot.createdAt[info.version], usage: usage,
                                wrapping: info.version == wrapping, inUse: quietAfter.map { $0 > now } ?? false, quietAfter: quietAfter)
        }
        return (key, entries)
    }

    /// Retires `version` of `name`. Refused, with when and how often it was last used, if it unwrapped within the
    /// key's `retire_quiet_period` — unless `force`. Done holding the key (one replica at a time), committed under its
    /// lease's grant.
    public func retire(_ name: KeyName, version: KeyVersion, force: Bool, actor: RotationActor) async throws {
        let key = try key(name)
        _ = try await holdingKey(name, wait: manualLeaseWait) { grant in
            try await retire(key, version: version, force: force, actor: actor, grant: grant)
        }
    }

    private func retire(_ key: Key, version: KeyVersion, force: Bool, actor: RotationActor, grant: LeaseGrant) async throws {
        let name = key.name
        let now = clock()
        let usage = ledger.usage(VersionID(name.rawValue, version.rawValue))
        if !force, let last = usage.lastUnwrapAt, now < last.addingTimeInterval(key.policy.retireQuietPeriod) {
            let detail = "version \(version.rawValue) of '\(name)' was last used to unwrap at \(last.formatted(.iso8601)) "
                + "(\(usage.unwraps) unwrap(s) counted); data wrapped with it is still being read. Rewrap that data first "
                + "(kmsctl rewrap-plan \(name)), wait until \(last.addingTimeInterval(key.policy.retireQuietPeriod).formatted(.iso8601)) "
                + "(retire_quiet_period \(DurationText.format(key.policy.retireQuietPeriod))), or retire with --force"
            try? await store.append(JournalEntry(at: now, key: name.rawValue, action: .retire, actor: actor.description, reason: "retire",
                                                 fromVersion: version.rawValue, result: .refused, detail: detail))
            emitRetire(.retireRefused, name, version, detail, actor)
            throw KMSError.conflict(detail)
        }
        try await checkHolding(grant, name, "retirement")
        do {
            try await key.provider.retireVersion(name, version: version)
        } catch {
            try? await store.append(JournalEntry(at: now, key: name.rawValue, action: .retire, actor: actor.description, reason: "retire",
                                                 fromVersion: version.rawValue, result: .failed, detail: Self.describe(error)))
            throw error
        }
        let detail = "version \(version.rawValue) of '\(name)' retired by \(actor)" + (force ? " (forced)" : "")
        await announce(name)
        try await commit(JournalEntry(at: now, key: name.rawValue, action: .retire, actor: actor.description, reason: force ? "forced" : "retire",
                                      fromVersion: version.rawValue, result: .ok, detail: detail), under: grant,
                         lost: "version \(version.rawValue) of '\(name)' was retired in the backend")
        emitRetire(.retired, name, version, detail, actor)
    }

    private func emitRetire(_ kind: RotationEvent.Kind, _ name: KeyName, _ version: KeyVersion, _ detail: String, _ actor: RotationActor) {
        logger.notice("\(detail)", metadata: ["event": "\(kind.rawValue)", "key": "\(name)", "version": "\(version.rawValue)"])
        onEvent(RotationEvent(kind: kind, key: name.rawValue, version: version.rawValue, detail: detail, actor: actor))
    }

    /// Creates a key (admin API) through `make` (the provider's `createKey`), holding the key so that two replicas asked
    /// at once create it once (the other gets the backend's `already_exists`), and records it: its first version's
    /// age is known from now.
    public func create(_ name: KeyName, actor: RotationActor, _ make: () async throws -> KeyDescription) async throws -> KeyDescription {
        let created = try await holdingKey(name, wait: manualLeaseWait) { grant -> KeyDescription? in
            try await checkHolding(grant, name, "creation")
            let description = try await make()
            let now = clock()
            for info in description.versions {
                _ = try? await creationTime(VersionID(name.rawValue, info.version.rawValue), backend: info.createdAt)
            }
            await announce(name)
            try await commit(JournalEntry(at: now, key: name.rawValue, action: .create, actor: actor.description, reason: "create",
                                          toVersion: description.latestVersion?.rawValue, result: .ok), under: grant,
                             lost: "key '\(name)' was created in the backend")
            return description
        }
        // `holdingKey` answers nil only for a change that may be skipped, which a creation is not.
        guard let created else { throw KMSError.internal("the creation of '\(name)' did not run") }
        return created
    }

    /// Journals a change's result under the grant it began with (the fencing token). A store that cannot be written
    /// leaves the entry out, as before; a grant that lapsed (another replica may hold the key) is refused, noted as a
    /// failed entry, and reported: `lost` says what the backend did all the same.
    func commit(_ entry: JournalEntry, under grant: LeaseGrant, lost: String) async throws {
        guard (try? await store.append(entry, fencedBy: grant, now: clock())) == false else { return }
        var failed = entry
        failed.result = .failed
        failed.detail = "\(lost), but this kmsd's lease on the key expired meanwhile; it does not record the change as its own"
        try? await store.append(failed)
        logger.error("\(failed.detail ?? "")", metadata: ["key": "\(entry.key)", "epoch": "\(grant.epoch)"])
        throw KMSError.conflict(failed.detail ?? lost)
    }

    /// The rotation journal (newest `limit` entries, oldest first).
    public func journal(_ name: KeyName?, limit: Int = 100) async throws -> [JournalEntry] {
        try await store.journal(key: name?.rawValue, limit: limit)
    }
}
