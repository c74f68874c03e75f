import Foundation
import Glibc
import KMSCore
import NIOCore
import Synchronization

/// The threads that make blocking PKCS#11 calls: a FIFO queue served by a fixed set of threads.
///
/// Why not `NIOThreadPool`: a PKCS#11 wrap on a fast token takes tens of microseconds, about as long as waking a
/// parked thread, so handing each call to a sleeping thread doubled its latency (measured with `kms-bench hsm`, see
/// `docs/performance.md`). Here an idle thread first polls the queue for a short while (yielding the CPU between
/// looks) before it parks, and only one thread polls at a time, so a busy provider hands calls over without a
/// wake-up while an idle one costs one spin window per burst, not a core.
///
/// The window adapts (`spinWindow`, at most `spinLimit`): it doubles when a job arrived while polling and halves when
/// none did. Behind kmsd's HTTP front end, calls rarely arrive within a window (the request path between two calls is
/// longer than a wrap), so full windows burned CPU on a 2-core machine for nothing (about a third of the HSM threads'
/// time at 4 connections with the audit log); a tight loop of calls keeps the full window.
final class HSMThreadPool: @unchecked Sendable {
    // @unchecked: `queue`, `parked`, `stopping` and `running` are guarded by `condition`; the rest are atomics.
    private let condition = NSCondition()
    private var queue = CircularBuffer<@Sendable () -> Void>(initialCapacity: 16)
    private var parked = 0
    private var running: Int
    private var stopping = false
    private var stopped: [CheckedContinuation<Void, Never>] = []
    private let queued = Atomic<Int>(0)
    private let spinning = Atomic<Bool>(false)
    /// The longest polling window, in microseconds.
    private static let spinLimit = 100
    /// The current polling window in microseconds (0: park at once, except for the occasional probe).
    private let spinWindow = Atomic<Int>(spinLimit)
    private let idlePeriods = Atomic<Int>(0)

    init(threads: Int, name: String = "kmsd-hsm") {
        running = threads
        for index in 0..<threads {
            let threadName = "\(name)-\(index)"
            NamedThread.start(threadName) { [self] in work() }
        }
    }

    /// Queues `job`. Returns false, without running it, once `shutdown()` has begun.
    func submit(_ job: @escaping @Sendable () -> Void) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard !stopping else { return false }
        queue.append(job)
        queued.add(1, ordering: .releasing)
        // A polling thread takes the first queued job without being woken; anything beyond it needs a parked thread.
        if parked > 0 && queue.count > (spinning.load(ordering: .acquiring) ? 1 : 0) { condition.signal() }
        return true
    }

    /// Lets the threads finish the queued jobs, then stops them and returns once all have exited.
    func shutdown() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            condition.lock()
            stopping = true
            if running == 0 {
                condition.unlock()
                continuation.resume()
                return
            }
            stopped.append(continuation)
            condition.broadcast()
            condition.unlock()
        }
    }

    private func work() {
        var mayPoll = true
        condition.lock()
        while true {
            if let job = queue.popFirst() {
                queued.subtract(1, ordering: .relaxed)
                condition.unlock()
                job()
                mayPoll = true
                condition.lock()
                continue
            }
            if stopping { break }
            if mayPoll, spinning.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {
                mayPoll = false
                condition.unlock()
                poll()
                spinning.store(false, ordering: .releasing)
                condition.lock()
                continue
            }
            parked += 1
            condition.wait()
            parked -= 1
        }
        running -= 1
        let waiters = running == 0 ? stopped : []
        if running == 0 { stopped = [] }
        condition.unlock()
        for waiter in waiters { waiter.resume() }
    }

    /// Looks at the queue until a job arrives or the window passes, giving up the CPU between looks, and adapts the
    /// window to whether polling paid off. A closed window is probed with a short one every 64th idle period, so a
    /// load that turns into a tight loop gets its window back.
    private func poll() {
        var window = spinWindow.load(ordering: .relaxed)
        if window == 0 {
            guard idlePeriods.wrappingAdd(1, ordering: .relaxed).newValue % 64 == 0 else { return }
            window = min(Self.spinLimit, 10)
        }
        let end = ContinuousClock.now + .microseconds(window)
        var looks = 0
        while queued.load(ordering: .acquiring) == 0 {
            looks += 1
            if looks % 16 == 0 && ContinuousClock.now >= end {
                spinWindow.store(Self.nextWindow(after: window, hit: false, limit: Self.spinLimit), ordering: .relaxed)
                return
            }
            sched_yield()
        }
        spinWindow.store(Self.nextWindow(after: window, hit: true, limit: Self.spinLimit), ordering: .relaxed)
    }

    /// The window after one of `window` µs: doubled (at least 10, at most `limit`) when a call arrived while polling,
    /// halved when none did, and closed once that leaves 5 µs or less.
    static func nextWindow(after window: Int, hit: Bool, limit: Int) -> Int {
        if hit { return min(limit, max(window * 2, 10)) }
        return window / 2 <= 5 ? 0 : window / 2
    }
}
