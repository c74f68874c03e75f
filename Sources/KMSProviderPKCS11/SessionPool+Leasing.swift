import Dispatch
import KMSCore
import PKCS11
import Synchronization

/// Leasing: the fast path and the waits (a task's or a blocking thread's) for a session, opening sessions for capacity
/// the state machine reserved, returning leases, and carrying out the state machine's actions.
extension SessionPool {
    func acquire() async throws -> (SessionPoolStateMachine.Lease, PKCS11Session) {
        let (waiterID, deadline, fast) = requestLease()
        let decision = if case .wait = fast { await wait(waiterID, deadline: deadline) } else { fast }
        if case .open(let generation) = decision {
            let opened = await Self.result { try await executor.run(timeout: configuration.callTimeout, whenOverrunEnds: closeLateSession) {
                [self] in try openLoggedInSession()
            } }
            if let lease = try adopt(opened, generation: generation) { return lease }
            return try await acquire()
        }
        return try leased(decision)
    }

    func acquireBlocking() throws -> (SessionPoolStateMachine.Lease, PKCS11Session) {
        let (waiterID, deadline, fast) = requestLease()
        let decision = if case .wait = fast { waitBlocking(waiterID, deadline: deadline) } else { fast }
        if case .open(let generation) = decision {
            let opened = Result { try executor.runBlocking(timeout: configuration.callTimeout, whenOverrunEnds: closeLateSession) {
                [self] in try openLoggedInSession()
            } }
            if let lease = try adopt(opened, generation: generation) { return lease }
            return try acquireBlocking()
        }
        return try leased(decision)
    }

    /// Fast path: an idle session or free capacity, without waiting.
    func requestLease() -> (Int, ContinuousClock.Instant, SessionPoolStateMachine.LeaseDecision) {
        let deadline = configuration.clock.now + configuration.checkoutWait
        return state.withLock { state in
            state.nextID += 1
            return (state.nextID, deadline, state.machine.requestLease(state.nextID, deadline: deadline, mayWait: false))
        }
    }

    /// The leased session of a `.use` decision, or the error a failed decision stands for.
    func leased(_ decision: SessionPoolStateMachine.LeaseDecision) throws -> (SessionPoolStateMachine.Lease, PKCS11Session) {
        switch decision {
        case .use(let lease):
            guard let session = state.withLock({ $0.sessions[lease.id] }) else {
                // Unreachable by the state machine's rules; fail closed rather than trap.
                throw KMSError.internal("session pool lost track of a session")
            }
            return (lease, session)
        case .open, .wait:
            throw KMSError.internal("session pool resumed a waiter without a decision")
        case .fail(let reason):
            switch reason {
            case .timedOut:
                state.withLock { $0.statistics.checkoutTimeouts += 1 }
                throw KMSError.unavailable(
                    "no HSM session became free in time", detail: "checkout wait \(configuration.checkoutWait) passed")
            case .tooManyWaiters:
                throw KMSError.unavailable("too many requests are waiting for an HSM session")
            case .shuttingDown:
                throw KMSError.unavailable("the HSM provider is shutting down")
            case .cancelled:
                throw CancellationError()
            case .suspended:
                throw KMSError.unavailable("the HSM connection was lost; kmsd is reconnecting")
            }
        }
    }

    func wait(_ waiterID: Int, deadline: ContinuousClock.Instant) async -> SessionPoolStateMachine.LeaseDecision {
        // Armed once the waiter is registered, so it cannot fire before there is a waiter to expire.
        let timer = Mutex<PoolTimer?>(nil)
        defer { timer.withLock { $0 }?.cancel() }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                enqueue(waiterID, deadline: deadline) { continuation.resume(returning: $0) }
                let armed = configuration.clock.schedule(at: deadline) { [self] in
                    perform(state.withLock { $0.machine.expireWaiters(now: configuration.clock.now) })
                }
                timer.withLock { $0 = armed }
            }
        } onCancel: { [self] in
            perform(state.withLock { $0.machine.cancelWaiter(waiterID) })
        }
    }

    /// `wait` on a thread that may block: the same timer on the pool's clock expires the waiter at its deadline.
    func waitBlocking(_ waiterID: Int, deadline: ContinuousClock.Instant) -> SessionPoolStateMachine.LeaseDecision {
        let decision = Mutex<SessionPoolStateMachine.LeaseDecision?>(nil)
        let resumed = DispatchSemaphore(value: 0)
        enqueue(waiterID, deadline: deadline) { value in
            decision.withLock { $0 = value }
            resumed.signal()
        }
        let timer = configuration.clock.schedule(at: deadline) { [self] in
            perform(state.withLock { $0.machine.expireWaiters(now: configuration.clock.now) })
        }
        resumed.wait()
        timer.cancel()
        return decision.withLock { $0 } ?? .fail(.timedOut)
    }

    /// Registers a waiter, or resumes it at once when a decision is already possible.
    func enqueue(
        _ waiterID: Int, deadline: ContinuousClock.Instant, resume: @escaping @Sendable (SessionPoolStateMachine.LeaseDecision) -> Void
    ) {
        let immediate: SessionPoolStateMachine.LeaseDecision? = state.withLock { state in
            let decision = state.machine.requestLease(waiterID, deadline: deadline)
            if case .wait = decision {
                state.waiters[waiterID] = resume
                return nil
            }
            return decision
        }
        if let immediate { resume(immediate) }
    }

    /// Opens a session and makes sure it is logged in. Runs on an executor thread (it blocks).
    func openLoggedInSession() throws -> PKCS11Session {
        let session = try module.openSession(slot)
        do {
            if configuration.loginEachSession {
                try ensureLoggedIn()
                do {
                    try login(session)
                } catch let error as PKCS11Error where error.returnValue == PKCS11ReturnValue.userAlreadyLoggedIn {
                    // Logged in through the application-wide state after all.
                }
            } else if try !session.info().isUserLoggedIn {
                try ensureLoggedIn()
            }
        } catch {
            try? session.close()
            throw error
        }
        return session
    }

    static func result<T>(_ body: () async throws -> T) async -> Result<T, any Error> {
        do { return .success(try await body()) } catch { return .failure(error) }
    }

    var closeLateSession: @Sendable (Result<PKCS11Session, any Error>?) -> Void {
        { late in if case .success(let session)? = late { try? session.close() } }
    }

    /// Takes a session opened for capacity the state machine reserved. Returns nil when the generation changed
    /// meanwhile: the session is closed and the caller asks again.
    func adopt(
        _ opened: Result<PKCS11Session, any Error>, generation: Int
    ) throws -> (SessionPoolStateMachine.Lease, PKCS11Session)? {
        let session: PKCS11Session
        do {
            session = try opened.get()
        } catch {
            perform(state.withLock { $0.machine.openFailed() })
            if let error = error as? PKCS11Error, error.isDeviceGone { onDeviceLoss(error) }
            throw mapOpenError(error)
        }
        let lease: SessionPoolStateMachine.Lease? = state.withLock { state in
            state.nextID += 1
            let id = state.nextID
            guard let lease = state.machine.sessionOpened(id, generation: generation) else { return nil }
            state.sessions[id] = session
            state.statistics.sessionsOpened += 1
            state.statistics.highWaterMark = max(state.statistics.highWaterMark, state.machine.sessionCount)
            return lease
        }
        guard let lease else {
            close([session])
            return nil
        }
        return (lease, session)
    }

    func mapOpenError(_ error: any Error) -> any Error {
        switch error {
        case is HSMDeadlineExceeded:
            return KMSError.unavailable("the HSM did not answer in time", detail: "opening a session overran its deadline")
        case let error as PKCS11Error where error.rejectsPIN:
            return Self.pinRefusal(error)
        case let error as PKCS11Error:
            return KMSError.unavailable("cannot open an HSM session", detail: error.description)
        default:
            return error
        }
    }

    func release(_ lease: SessionPoolStateMachine.Lease, _ disposition: SessionPoolStateMachine.Disposition) {
        perform(state.withLock { $0.machine.release(lease, disposition) })
    }

    /// Carries out state-machine actions outside the lock. Closing happens on an executor thread.
    func perform(_ actions: [SessionPoolStateMachine.Action]) {
        guard !actions.isEmpty else { return }
        var toClose: [PKCS11Session] = []
        var toResume: [(@Sendable (SessionPoolStateMachine.LeaseDecision) -> Void, SessionPoolStateMachine.LeaseDecision)] = []
        state.withLock { state in
            for action in actions {
                switch action {
                case .close(let id):
                    if let session = state.sessions.removeValue(forKey: id) {
                        toClose.append(session)
                        state.statistics.sessionsClosed += 1
                    }
                case .forget(let id):
                    state.sessions[id] = nil
                case .resume(let waiter, let decision):
                    if let resume = state.waiters.removeValue(forKey: waiter) {
                        toResume.append((resume, decision))
                    }
                }
            }
        }
        for (resume, decision) in toResume { resume(decision) }
        close(toClose)
    }

    /// Closes sessions on an executor thread; reconnecting waits for these (`inFlight`).
    func close(_ sessions: [PKCS11Session]) {
        guard !sessions.isEmpty else { return }
        pendingCloses.add(1, ordering: .relaxed)
        Task { [self] in
            _ = try? await executor.run(timeout: configuration.callTimeout) {
                for session in sessions { try? session.close() }
            }
            pendingCloses.subtract(1, ordering: .relaxed)
        }
    }
}
