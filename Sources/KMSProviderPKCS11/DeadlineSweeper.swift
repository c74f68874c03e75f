import Foundation

/// Fires the expiry of in-flight HSM calls whose deadline has passed.
///
/// One thread for all calls: registering and cancelling are a lock and a dictionary update, so the hot path pays no
/// timer per call. While calls are in flight the thread checks every `granularity` (5 ms); with none in flight it
/// sleeps until one is registered. Expiry therefore happens at most `granularity` (plus scheduling) after the
/// deadline. Expiry closures run on the sweeper thread and must be quick.
final class DeadlineSweeper: @unchecked Sendable {
    // @unchecked: all mutable state is guarded by `condition`.
    private let condition = NSCondition()
    private var pending: [UInt64: (deadline: ContinuousClock.Instant, expire: @Sendable () -> Void)] = [:]
    private var nextID: UInt64 = 0
    private var stopped = false
    private let granularity: Duration

    init(granularity: Duration = .milliseconds(5)) {
        self.granularity = granularity
        let thread = Thread { [self] in run() }
        thread.name = "kmsd-hsm-deadlines"
        thread.start()
    }

    /// Registers `expire` to run once `deadline` has passed, unless cancelled first. Returns the registration id.
    func register(deadline: ContinuousClock.Instant, expire: @escaping @Sendable () -> Void) -> UInt64 {
        condition.lock()
        defer { condition.unlock() }
        nextID &+= 1
        pending[nextID] = (deadline, expire)
        if pending.count == 1 { condition.signal() }
        return nextID
    }

    func cancel(_ id: UInt64) {
        condition.lock()
        pending[id] = nil
        condition.unlock()
    }

    func stop() {
        condition.lock()
        stopped = true
        condition.signal()
        condition.unlock()
    }

    private func run() {
        let interval = Double(granularity.components.seconds) + Double(granularity.components.attoseconds) / 1e18
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
