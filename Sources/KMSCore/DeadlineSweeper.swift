import Foundation
import Synchronization

/// Fires deadlines: of in-flight HSM calls (`HSMExecutor`), HSM session checkout waits and requests (`KMSService`),
/// all on the process's one `shared` sweeper.
///
/// One thread for all deadlines: registering and cancelling are a lock and a dictionary update, so the hot path pays
/// no timer per call (a `Task.sleep` per request armed a Dispatch timer that woke a Dispatch thread once per request,
/// long after the request had ended). While deadlines are pending the thread checks every `granularity` (5 ms); with
/// none it sleeps until one is registered. Expiry therefore happens at most `granularity` (plus scheduling) after the
/// deadline. Expiry closures run on the sweeper thread and must be quick.
public final class DeadlineSweeper: @unchecked Sendable {
    // @unchecked: all mutable state is guarded by `condition`.
    private let condition = NSCondition()
    private var pending: [UInt64: (deadline: ContinuousClock.Instant, expire: @Sendable () -> Void)] = [:]
    private var nextID: UInt64 = 0
    private var stopped = false
    private let granularity: Duration

    /// The sweeper of every deadline in the process, started on first use; it runs for the life of the process.
    public static let shared = DeadlineSweeper(name: "kmsd-deadlines")

    public init(name: String, granularity: Duration = .milliseconds(5)) {
        self.granularity = granularity
        NamedThread.start(name) { [self] in run() }
    }

    /// Registers `expire` to run once `deadline` has passed, unless cancelled first. Returns the registration id.
    public func register(deadline: ContinuousClock.Instant, expire: @escaping @Sendable () -> Void) -> UInt64 {
        condition.lock()
        defer { condition.unlock() }
        nextID &+= 1
        pending[nextID] = (deadline, expire)
        if pending.count == 1 { condition.signal() }
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
        let interval = granularity.seconds
        condition.lock()
        while !stopped {
            if pending.isEmpty {
                condition.wait()
                continue
            }
            condition.unlock()
            Thread.sleep(forTimeInterval: interval)
            condition.lock()
            let now = ContinuousClock.now
            var expired: [@Sendable () -> Void] = []
            for (id, entry) in pending where entry.deadline <= now {
                expired.append(entry.expire)
                pending[id] = nil
            }
            if !expired.isEmpty {
                condition.unlock()
                for expire in expired { expire() }
                condition.lock()
            }
        }
        condition.unlock()
    }
}

extension DeadlineSweeper {
    /// Returns at `deadline` (within the granularity), or throws `CancellationError` as soon as the task is cancelled.
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
