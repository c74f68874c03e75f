import KMSCore
import Synchronization

/// The clock the session pool's timers run on (the checkout wait). The pool reads `now` and arms timers on it; tests
/// use `ManualPoolClock` to move time on by hand instead of waiting it out.
protocol PoolClock: Sendable {
    var now: ContinuousClock.Instant { get }
    /// Runs `action` once `now` has reached `deadline`, unless the returned timer is cancelled first.
    func schedule(at deadline: ContinuousClock.Instant, _ action: @escaping @Sendable () -> Void) -> PoolTimer
}

/// An armed `PoolClock` timer.
struct PoolTimer: Sendable {
    let cancel: @Sendable () -> Void
}

/// The system clock; timers fire on the process's shared `DeadlineSweeper` (no task or Dispatch timer per wait: a
/// checkout wait is on the request path whenever every session is busy).
struct SystemPoolClock: PoolClock {
    var now: ContinuousClock.Instant { .now }

    func schedule(at deadline: ContinuousClock.Instant, _ action: @escaping @Sendable () -> Void) -> PoolTimer {
        let sweeper = DeadlineSweeper.shared
        let id = sweeper.register(deadline: deadline, expire: action)
        return PoolTimer { sweeper.cancel(id) }
    }
}

/// A clock that moves only when told (`advance`): timers whose deadline has been reached run then.
final class ManualPoolClock: PoolClock {
    private struct Timer {
        let deadline: ContinuousClock.Instant
        let action: @Sendable () -> Void
    }

    private struct State {
        var now: ContinuousClock.Instant
        var timers: [Int: Timer] = [:]
        var nextID = 0
    }

    private let state: Mutex<State>

    init(start: ContinuousClock.Instant = .now) {
        state = Mutex(State(now: start))
    }

    var now: ContinuousClock.Instant { state.withLock { $0.now } }

    /// How many timers are armed (tests wait for the pool to arm its timer before they move time).
    var sleeperCount: Int { state.withLock { $0.timers.count } }

    func advance(by duration: Duration) {
        let due: [@Sendable () -> Void] = state.withLock { state in
            state.now += duration
            let now = state.now
            let ready = state.timers.filter { $0.value.deadline <= now }
            for id in ready.keys { state.timers[id] = nil }
            return ready.values.map(\.action)
        }
        for action in due { action() }
    }

    func schedule(at deadline: ContinuousClock.Instant, _ action: @escaping @Sendable () -> Void) -> PoolTimer {
        let id: Int? = state.withLock { state in
            guard state.now < deadline else { return nil }
            state.nextID += 1
            state.timers[state.nextID] = Timer(deadline: deadline, action: action)
            return state.nextID
        }
        guard let id else {
            action()
            return PoolTimer {}
        }
        return PoolTimer { [self] in _ = state.withLock { $0.timers.removeValue(forKey: id) } }
    }
}
