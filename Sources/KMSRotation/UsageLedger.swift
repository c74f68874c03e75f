import Foundation
import KMSState
import Synchronization

/// Counts wraps and unwraps per key version in memory, for the request path (one lock, no I/O), and hands the
/// counts to the state store in batches (`drain`). Totals = what the store held at the last flush + what this
/// process counted since.
final class UsageLedger: Sendable {
    private struct State {
        var totals: [VersionID: VersionUsage] = [:]
        var pending: [VersionID: VersionUsage] = [:]
    }

    private let state = Mutex(State())

    /// Counts one wrap; returns the version's total wraps.
    @discardableResult
    func recordWrap(_ id: VersionID, at date: Date) -> UInt64 {
        record(id, VersionUsage(wraps: 1, lastWrapAt: date)).wraps
    }

    /// Counts one unwrap; returns the version's total unwraps.
    @discardableResult
    func recordUnwrap(_ id: VersionID, at date: Date) -> UInt64 {
        record(id, VersionUsage(unwraps: 1, lastUnwrapAt: date)).unwraps
    }

    private func record(_ id: VersionID, _ delta: VersionUsage) -> VersionUsage {
        state.withLock { state in
            state.pending[id, default: VersionUsage()].add(delta)
            state.totals[id, default: VersionUsage()].add(delta)
            return state.totals[id] ?? delta
        }
    }

    func usage(_ id: VersionID) -> VersionUsage {
        state.withLock { $0.totals[id] ?? VersionUsage() }
    }

    func usage(key: String) -> [UInt32: VersionUsage] {
        state.withLock { state in
            var result: [UInt32: VersionUsage] = [:]
            for (id, usage) in state.totals where id.key == key { result[id.version] = usage }
            return result
        }
    }

    /// Takes the counts not yet stored.
    func drain() -> [VersionID: VersionUsage] {
        state.withLock { state in
            defer { state.pending = [:] }
            return state.pending
        }
    }

    /// Puts back counts whose store write failed, so the next flush carries them.
    func restore(_ deltas: [VersionID: VersionUsage]) {
        state.withLock { state in
            for (id, usage) in deltas { state.pending[id, default: VersionUsage()].add(usage) }
        }
    }

    /// Replaces the totals with the store's (which include other replicas' flushed counts) plus what is pending here.
    func reset(stored: [VersionID: VersionUsage]) {
        state.withLock { state in
            var totals = stored
            for (id, usage) in state.pending { totals[id, default: VersionUsage()].add(usage) }
            state.totals = totals
        }
    }
}
