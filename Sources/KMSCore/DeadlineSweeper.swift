import Foundation
import Synchronization

/// Fires deadlines: of in-flight HSM calls (`HSMExecutor`), HSM session checkout waits and requests (`KMSService`),
/// all on the process's one `shared` sweeper.
///
/// One thread for all deadlines: registering and cancelling are a lock and a dictionary update, so the hot path pays
/// no timer per call (a `Task.sleep` per request armed a Dispatch timer that woke a Dispatch thread once per request,
/// long after the request had ended). The thread sleeps until the earliest pending deadline (with none, until one is
/// registered); a registration wakes it only when its deadline is earlier than the one it waits for, so under steady
/// load — every request's deadline later than those before it — it wakes once per deadline, not per request.
/// Expiry closures run on the sweeper thread and must be quick.
public final class DeadlineSweeper: @unchecked Sendable {
    // @unchecked: all mutable state is guarded by `condition`.
    private let condition = NSCondition()
    private var pending: [UInt64: (deadline: ContinuousClock.Instant, expire: @Sendable () -> Void)] = [:]
    private var nextID: UInt64 = 0
    private var stopped = false
    /// The deadline the thread sleeps until (nil: until a registration).
    private var waitingUntil: ContinuousClock.Instant?

    /// The sweeper of every deadline in the process, started on first use; it runs for the life of the process.
    public static let shared = DeadlineSweeper(name: "kmsd-deadlines")

    public init(name: String) {
        NamedThread.start(name) { [self] in run() }
    }

    /// Registers `expire` to run once `deadline` has passed, unless cancelled first. Returns the registration id.
    public func register(deadline: ContinuousClock.Instant, expire: @escaping @Sendable () -> Void) -> UInt64 {
        condition.lock()
        defer { condition.unlock() }
        nextID &+= 1
        pending[nextID] = (deadline, expire)
        if waitingUntil.map({ deadline < $0 }) ?? true { condition.signal() }
        return nextID
    }

    public func cancel(_ id: UInt64) {
        condition.lock()
        pending[id] = nil
        condition.unlock()
    }

    /// Stops the thread: registered expiries never run afterwards (so a `sleep(until:)` in progress would not return).
    /// For a sweeper of one's own whose users have stopped first (tests); never for `shared`.
    public func stop() {
        condition.lock()
        stopped = true
        condition.signal()
        condition.unlock()
    }

    private func run() {
        condition.lock()
        while !stopped {
            let now = ContinuousClock.now
            var expired: [@Sendable () -> Void] = []
            var earliest: ContinuousClock.Instant?
            for (id, entry) in pending {
                if entry.deadline <= now {
                    expired.append(entry.expire)
                    pending[id] = nil
                } else if earliest.map({ entry.deadline < $0 }) ?? true {
                    earliest = entry.deadline
                }
            }
            if !expired.isEmpty {
                condition.unlock()
                for expire in expired { expire() }
                condition.lock()
                continue
            }
            waitingUntil = earliest
            if let earliest {
                _ = condition.wait(until: Date(timeIntervalSinceNow: (earliest - now).seconds))
            } else {
                condition.wait()
            }
            waitingUntil = nil
        }
        condition.unlock()
    }
}

extension DeadlineSweeper {
    /// Returns at `deadline` (plus scheduling), or throws `CancellationError` as soon as the task is cancelled.
    public func sleep(until deadline: ContinuousClock.Instant) async throws {
        // The waiting continuation and the registration, each taken by whoever ends the sleep first.
        let state = Mutex<(waiter: CheckedContinuation<Void, any Error>?, registration: UInt64?)>((nil, nil))
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                state.withLock { $0.waiter = continuation }
                let registration = register(deadline: deadline) {
                    state.withLock { $0.waiter.take() }?.resume()
                }
                state.withLock { $0.registration = registration }
                // Cancelled before the registration was stored: the handler could not cancel it (nor, if it ran
                // before the continuation was stored, resume it).
                if Task.isCancelled {
                    cancel(registration)
                    state.withLock { $0.waiter.take() }?.resume(throwing: CancellationError())
                }
            }
        } onCancel: {
            let (waiter, registration) = state.withLock { ($0.waiter.take(), $0.registration) }
            if let registration { cancel(registration) }
            waiter?.resume(throwing: CancellationError())
        }
    }
}
