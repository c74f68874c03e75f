import Foundation
import KMSState
import Synchronization

/// This process's share of each key version's `max_wraps`: blocks of wrap numbers reserved from the state store, so
/// that every process sharing the store together wraps at most `max_wraps` times with a version, exactly.
///
/// The request path takes one wrap number from the block it holds (a lock, no I/O). When less than half a block is
/// left, the next block is reserved in the background, so a request waits on the store only when both are used up (a
/// burst larger than the block, or the store down). The block size follows this process's rate: it doubles when a
/// block lasted under `fastRefill` and halves when one lasted over `slowRefill`, between `minimumBlock` and
/// `maximumBlock`, and is never more than an eighth of the limit (so one replica cannot hold a small budget alone).
///
/// Wrap numbers reserved and never used (a stopped replica, a version rotated away) are lost, never issued again: the
/// bound errs on the side of rotating early. A reservation whose outcome is unknown (its deadline passed) is likewise
/// counted as used. After a failed reservation, requests that find no wraps left are refused for `retryDelay`, then
/// the next one tries the store again: a store that comes back serves within that delay plus its reconnect.
final class WrapBudgets: Sendable {
    enum Take: Equatable {
        /// A wrap number of the version; `last` when it is the version's final one under the limit.
        case wrap(UInt64, last: Bool)
        /// Every wrap of the version under the limit is reserved (by this process or others).
        case exhausted
        /// The store could not hand out a block (its error, for the operator).
        case unavailable(String)
    }

    static let initialBlock: UInt64 = 1000
    static let minimumBlock: UInt64 = 16
    static let maximumBlock: UInt64 = 1 << 20
    static let fastRefill: Duration = .seconds(2)
    static let slowRefill: Duration = .seconds(60)

    private struct Budget {
        /// The block in use and at most one reserved ahead.
        var blocks: [Range<UInt64>] = []
        var exhausted = false
        var refill: Task<Void, Never>?
        var blockSize = WrapBudgets.initialBlock
        /// When the last reservation succeeded: how long a block lasted is measured from it (failed attempts during an
        /// outage say nothing about the rate).
        var lastRefillAt: ContinuousClock.Instant?
        var retryAt: ContinuousClock.Instant?
        var lastError: String?

        var available: UInt64 { blocks.reduce(0) { $0 + UInt64($1.count) } }

        mutating func takeWrap() -> UInt64? {
            while let first = blocks.first {
                guard let number = first.first else {
                    blocks.removeFirst()
                    continue
                }
                blocks[0] = first.dropFirst()
                if blocks[0].isEmpty { blocks.removeFirst() }
                return number
            }
            return nil
        }
    }

    private enum Step {
        case done(Take)
        case wait(Task<Void, Never>)
    }

    private let store: any StateStore
    private let retryDelay: Duration
    private let describe: @Sendable (any Error) -> String
    private let budgets = Mutex<[VersionID: Budget]>([:])

    init(store: any StateStore, retryDelay: Duration = .milliseconds(500), describe: @escaping @Sendable (any Error) -> String) {
        self.store = store
        self.retryDelay = retryDelay
        self.describe = describe
    }

    /// Takes one wrap number of `version` under `limit`, waiting for the store only when this process holds none.
    func take(_ version: VersionID, limit: UInt64) async -> Take {
        // Each pass either answers or waits for a reservation that added wraps or gave a verdict; concurrent requests
        // may use up what one reservation added, so a few passes may be needed under a burst.
        for _ in 0..<64 {
            let step: Step = budgets.withLock { all in
                var budget = all[version] ?? Budget()
                defer { all[version] = budget }
                let waiting = budget.retryAt.map { ContinuousClock.now < $0 } ?? false
                if let number = budget.takeWrap() {
                    guard number < limit else {
                        // The limit was lowered (a reload) below what this process holds.
                        budget.blocks = []
                        budget.exhausted = true
                        return .done(.exhausted)
                    }
                    if budget.refill == nil, !budget.exhausted, !waiting, budget.available < budget.blockSize / 2 {
                        budget.refill = refill(version, limit: limit, &budget)
                    }
                    return .done(.wrap(number, last: number + 1 == limit))
                }
                if budget.exhausted { return .done(.exhausted) }
                if let refill = budget.refill { return .wait(refill) }
                if waiting { return .done(.unavailable(budget.lastError ?? "")) }
                let task = refill(version, limit: limit, &budget)
                budget.refill = task
                return .wait(task)
            }
            switch step {
            case .done(let take): return take
            case .wait(let task): await task.value
            }
        }
        return .unavailable("too many requests competing for the reserved wraps")
    }

    /// What this process holds unused of `version` (for status and tests).
    func available(_ version: VersionID) -> UInt64 {
        budgets.withLock { $0[version]?.available ?? 0 }
    }

    /// The last reservation error of any version, while requests are being refused for it.
    func failing() -> String? {
        budgets.withLock { all in all.values.first { $0.retryAt.map { ContinuousClock.now < $0 } ?? false }?.lastError }
    }

    /// Starts reserving the next block (called with the lock held; the task takes the lock only after it).
    private func refill(_ version: VersionID, limit: UInt64, _ budget: inout Budget) -> Task<Void, Never> {
        let now = ContinuousClock.now
        if let last = budget.lastRefillAt {
            let lasted = now - last
            if lasted < Self.fastRefill {
                budget.blockSize = min(budget.blockSize * 2, Self.maximumBlock)
            } else if lasted > Self.slowRefill {
                budget.blockSize = max(budget.blockSize / 2, Self.minimumBlock)
            }
        }
        budget.blockSize = max(1, min(budget.blockSize, limit / 8))
        let count = budget.blockSize
        return Task { [self, store, retryDelay, describe] in
            let result: Result<Range<UInt64>?, any Error>
            do {
                result = .success(try await store.reserveWraps(version, count: count, limit: limit))
            } catch {
                result = .failure(error)
            }
            budgets.withLock { all in
                var budget = all[version] ?? Budget()
                budget.refill = nil
                switch result {
                case .success(let block?):
                    budget.blocks.append(block)
                    budget.lastRefillAt = ContinuousClock.now
                    budget.retryAt = nil
                    budget.lastError = nil
                case .success(nil):
                    budget.exhausted = true
                    budget.retryAt = nil
                case .failure(let error):
                    budget.retryAt = ContinuousClock.now + retryDelay
                    budget.lastError = describe(error)
                }
                all[version] = budget
            }
        }
    }
}
