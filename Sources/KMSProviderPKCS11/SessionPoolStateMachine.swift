/// The session pool's decisions, without I/O: which session a caller gets, when a new one must be opened, who waits,
/// who times out, what is closed. The runner (`SessionPool`) feeds it events and carries out the actions it returns,
/// so every rule here is tested without an HSM and with time passed in explicitly.
///
/// Rules:
/// - at most `maxSessions` sessions exist: idle + leased + being opened + lost (a lost session's call overran its
///   deadline and still blocks a thread; it counts until that call returns, then it is closed);
/// - idle sessions are reused last-in first-out (warm sessions first); waiters are served first-in first-out;
/// - a waiter fails with `.timedOut` once its deadline has passed; at most `maxWaiters` wait;
/// - a session returned as `.discard` (its handle is dead) is closed and never handed out again;
/// - `invalidateAll()` starts a new generation (after the login or the library was lost): sessions of older generations
///   are never reused, and are not closed either, because after a re-initialization their handle numbers may belong
///   to new sessions;
/// - `suspend()` (device lost: the provider is about to finalize and re-initialize the library) fails every waiter and
///   every new request with `.suspended` and starts a new generation; `inFlight` tells when the last call that still
///   uses the library has returned; `resume()` opens the pool again.
struct SessionPoolStateMachine {
    typealias SessionID = Int
    typealias WaiterID = Int
    typealias Instant = ContinuousClock.Instant

    struct Configuration: Equatable {
        var maxSessions: Int
        var maxWaiters: Int
    }

    /// A session handed to one caller.
    struct Lease: Hashable {
        let id: SessionID
        let generation: Int
    }

    enum FailureReason: Equatable {
        case timedOut
        case tooManyWaiters
        case shuttingDown
        case cancelled
        /// The device was lost and the provider is reconnecting.
        case suspended
    }

    /// What a caller asking for a session gets.
    enum LeaseDecision: Equatable {
        /// Use this idle session.
        case use(Lease)
        /// Capacity is reserved: open a new session, then report `sessionOpened` or `openFailed`.
        case open(generation: Int)
        /// Wait; a later action resumes the waiter.
        case wait
        case fail(FailureReason)
    }

    /// How a caller returns its session.
    enum Disposition: Equatable {
        /// Healthy: back to the idle list or to the next waiter.
        case reuse
        /// Dead handle: close it and free the capacity.
        case discard
        /// The call overran its deadline and still runs: keep counting it until `lostCallEnded`.
        case lost
    }

    enum Action: Equatable {
        case resume(WaiterID, LeaseDecision)
        /// Close the session (its handle is valid in the current generation).
        case close(SessionID)
        /// Drop the session without closing it (its handle belongs to an older generation).
        case forget(SessionID)
    }

    private(set) var configuration: Configuration
    private(set) var generation = 0
    private var idle: [SessionID] = []
    private var leased: [SessionID: Int] = [:]  // id → generation
    private var opening = 0
    private var lost = 0
    private var waiters: [(id: WaiterID, deadline: Instant)] = []
    private var shuttingDown = false
    private(set) var suspended = false

    init(configuration: Configuration) {
        self.configuration = configuration
    }

    /// Sessions counted against the limit.
    var sessionCount: Int { idle.count + leased.count + opening + lost }
    var idleCount: Int { idle.count }
    var leasedCount: Int { leased.count }
    var openingCount: Int { opening }
    var lostCount: Int { lost }
    var waiterCount: Int { waiters.count }
    /// Calls that may still be inside the library: leased sessions, sessions being opened, overrunning calls.
    var inFlight: Int { leased.count + opening + lost }

    /// A caller asks for a session. With `mayWait` false, `.wait` is returned without enqueuing (a fast-path probe).
    mutating func requestLease(_ waiter: WaiterID, deadline: Instant, mayWait: Bool = true) -> LeaseDecision {
        if shuttingDown { return .fail(.shuttingDown) }
        if suspended { return .fail(.suspended) }
        if let id = idle.popLast() {
            leased[id] = generation
            return .use(Lease(id: id, generation: generation))
        }
        if sessionCount < configuration.maxSessions {
            opening += 1
            return .open(generation: generation)
        }
        guard mayWait else { return .wait }
        if waiters.count >= configuration.maxWaiters { return .fail(.tooManyWaiters) }
        waiters.append((waiter, deadline))
        return .wait
    }

    /// A session reserved by `.open` was opened. Returns the lease for the opener, or `nil` when the generation changed
    /// meanwhile (the opener must close the new session and ask again).
    mutating func sessionOpened(_ id: SessionID, generation openedIn: Int) -> Lease? {
        opening -= 1
        guard openedIn == generation, !shuttingDown, !suspended else { return nil }
        leased[id] = generation
        return Lease(id: id, generation: generation)
    }

    /// Opening a reserved session failed: the capacity goes to the next waiter, who will try to open one.
    mutating func openFailed() -> [Action] {
        opening -= 1
        return offerCapacity()
    }

    /// A caller returns its session.
    mutating func release(_ lease: Lease, _ disposition: Disposition) -> [Action] {
        guard leased.removeValue(forKey: lease.id) != nil else { return [] }
        let current = lease.generation == generation && !shuttingDown && !suspended
        switch disposition {
        case .lost:
            lost += 1
            return []
        case .discard:
            return [lease.generation == generation ? .close(lease.id) : .forget(lease.id)] + offerCapacity()
        case .reuse:
            guard current else {
                // Old generation or shutting down: never reuse. Shutdown closes it; an old generation's handle is
                // left alone (it may name a new session after re-initialization).
                return [lease.generation == generation ? .close(lease.id) : .forget(lease.id)] + offerCapacity()
            }
            if !waiters.isEmpty {
                let waiter = waiters.removeFirst()
                leased[lease.id] = generation
                return [.resume(waiter.id, .use(lease))]
            }
            idle.append(lease.id)
            return []
        }
    }

    /// The overrunning call of a lost session finally returned on its thread: close the session, free the capacity.
    mutating func lostCallEnded(_ lease: Lease) -> [Action] {
        lost -= 1
        return [lease.generation == generation ? .close(lease.id) : .forget(lease.id)] + offerCapacity()
    }

    /// Fails every waiter whose deadline is at or before `now`.
    mutating func expireWaiters(now: Instant) -> [Action] {
        var actions: [Action] = []
        waiters.removeAll { waiter in
            guard waiter.deadline <= now else { return false }
            actions.append(.resume(waiter.id, .fail(.timedOut)))
            return true
        }
        return actions
    }

    /// The waiting task was cancelled.
    mutating func cancelWaiter(_ id: WaiterID) -> [Action] {
        guard let index = waiters.firstIndex(where: { $0.id == id }) else { return [] }
        waiters.remove(at: index)
        return [.resume(id, .fail(.cancelled))]
    }

    /// Every session became unusable (login lost with the sessions, or the library re-initialized): start a new
    /// generation, forget idle sessions without closing them, and let waiters open fresh ones.
    mutating func invalidateAll() -> [Action] {
        generation += 1
        var actions = idle.map { Action.forget($0) }
        idle.removeAll()
        while let next = offerCapacity().first {
            actions.append(next)
        }
        return actions
    }

    /// The device is lost: refuse new requests and fail waiters; idle sessions are forgotten (the library is about to
    /// be finalized, which ends them), and sessions still leased are forgotten when they come back.
    mutating func suspend() -> [Action] {
        suspended = true
        generation += 1
        let actions = waiters.map { Action.resume($0.id, .fail(.suspended)) } + idle.map { Action.forget($0) }
        waiters.removeAll()
        idle.removeAll()
        return actions
    }

    /// The library is connected again: serve requests with fresh sessions.
    mutating func resume() {
        suspended = false
    }

    /// Stop: fail every waiter, close idle sessions; leased ones are closed when returned.
    mutating func shutdown() -> [Action] {
        shuttingDown = true
        let actions = waiters.map { Action.resume($0.id, .fail(.shuttingDown)) } + idle.map { Action.close($0) }
        waiters.removeAll()
        idle.removeAll()
        return actions
    }

    /// Gives freed capacity to the longest waiter, who opens a new session.
    private mutating func offerCapacity() -> [Action] {
        guard !shuttingDown, !suspended, !waiters.isEmpty, sessionCount < configuration.maxSessions else { return [] }
        let waiter = waiters.removeFirst()
        opening += 1
        return [.resume(waiter.id, .open(generation: generation))]
    }
}
