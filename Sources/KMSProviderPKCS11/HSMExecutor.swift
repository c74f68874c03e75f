import Dispatch
import Foundation
import KMSCore
import Synchronization

/// Runs blocking PKCS#11 calls on kmsd's own thread pool, never on an event loop or the Swift concurrency pool.
///
/// Every call has a deadline. When it passes, the caller gets `HSMDeadlineExceeded` at once; the blocked C call cannot
/// be interrupted, so it keeps its thread until it returns, and `whenOverrunEnds` is called exactly once, on that
/// thread, with the late result (or `nil` if the call never started). The number of such stuck calls is reported in
/// `stuckCalls`; the session pool counts the sessions they hold against its capacity, so hung calls shrink what the
/// pool hands out instead of growing the number of threads.
///
/// Lifecycle: `init` starts the threads; `shutdown()` stops them after the queued work.
public final class HSMExecutor: Sendable {
    private let threadPool: HSMThreadPool
    private let deadlines = DeadlineSweeper.shared
    private let stuck = Atomic<Int>(0)
    public let threadCount: Int

    public init(threads: Int) {
        threadCount = max(1, threads)
        threadPool = HSMThreadPool(threads: threadCount)
    }

    /// Calls that passed their deadline and still occupy a thread.
    public var stuckCalls: Int { stuck.load(ordering: .relaxed) }

    public func shutdown() async {
        await threadPool.shutdown()
    }

    /// Runs `body` on a pool thread and returns its result, or throws `HSMDeadlineExceeded` once `timeout` has passed.
    public func run<T: Sendable>(
        timeout: Duration,
        whenOverrunEnds: @escaping @Sendable (Result<T, any Error>?) -> Void = { _ in },
        _ body: @escaping @Sendable () throws -> T
    ) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            submit(PendingCall { continuation.resume(with: $0) }, timeout: timeout, whenOverrunEnds: whenOverrunEnds, body)
        }
    }

    /// `run` for a caller on a thread of its own that may block (the audit writer), never for the cooperative pool:
    /// the calling thread waits for the result or the deadline, with the same deadline and overrun rules, and no task
    /// is involved.
    public func runBlocking<T: Sendable>(
        timeout: Duration,
        whenOverrunEnds: @escaping @Sendable (Result<T, any Error>?) -> Void = { _ in },
        _ body: @escaping @Sendable () throws -> T
    ) throws -> T {
        let outcome = Mutex<Result<T, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        submit(PendingCall { result in
            outcome.withLock { $0 = result }
            done.signal()
        }, timeout: timeout, whenOverrunEnds: whenOverrunEnds, body)
        done.wait()
        // A PendingCall resumes exactly once, before the signal, so the outcome is set here.
        guard let result = outcome.withLock({ $0 }) else { throw HSMExecutorShutDown() }
        return try result.get()
    }

    private func submit<T: Sendable>(
        _ call: PendingCall<T>, timeout: Duration, whenOverrunEnds: @escaping @Sendable (Result<T, any Error>?) -> Void,
        _ body: @escaping @Sendable () throws -> T
    ) {
        let timer = deadlines.register(deadline: .now + timeout) { [self] in
            // Counted before the caller resumes, so the caller sees its own stuck call.
            call.expire { stuck.add(1, ordering: .relaxed) }
        }
        let accepted = threadPool.submit { [self] in
            if call.hasExpired {
                whenOverrunEnds(nil)
                stuck.subtract(1, ordering: .relaxed)
                return
            }
            let result = Result { try body() }
            deadlines.cancel(timer)
            if !call.finish(result) {
                whenOverrunEnds(result)
                stuck.subtract(1, ordering: .relaxed)
            }
        }
        if !accepted {
            deadlines.cancel(timer)
            _ = call.finish(.failure(HSMExecutorShutDown()))
        }
    }
}

/// The caller stopped waiting: the call did not finish within its deadline.
public struct HSMDeadlineExceeded: Error, Sendable, CustomStringConvertible {
    public var description: String { "HSM call exceeded its deadline" }
}

/// The executor was shut down before the call ran.
public struct HSMExecutorShutDown: Error, Sendable, CustomStringConvertible {
    public var description: String { "HSM executor is shut down" }
}

/// One call's waiter, resumed exactly once: by the result or by the deadline, whichever comes first.
private final class PendingCall<T: Sendable>: Sendable {
    typealias Resume = @Sendable (Result<T, any Error>) -> Void

    private enum State {
        case waiting(Resume)
        case finished
        case expired
    }

    private let state: Mutex<State>

    init(_ resume: @escaping Resume) {
        state = Mutex(.waiting(resume))
    }

    var hasExpired: Bool {
        state.withLock { if case .expired = $0 { return true } else { return false } }
    }

    /// Resumes with `result` unless the deadline already fired. Returns false if it had.
    func finish(_ result: Result<T, any Error>) -> Bool {
        let resume: Resume? = state.withLock { state in
            guard case .waiting(let resume) = state else { return nil }
            state = .finished
            return resume
        }
        guard let resume else { return false }
        resume(result)
        return true
    }

    /// Resumes with `HSMDeadlineExceeded` unless the call already finished; `beforeResuming` runs first, only when
    /// the call is expired.
    func expire(beforeResuming: () -> Void) {
        let resume: Resume? = state.withLock { state in
            guard case .waiting(let resume) = state else { return nil }
            state = .expired
            return resume
        }
        guard let resume else { return }
        beforeResuming()
        resume(.failure(HSMDeadlineExceeded()))
    }
}
