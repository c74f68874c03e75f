import KMSCore
import Logging
import PKCS11
import Synchronization

/// A bounded pool of PKCS#11 sessions on one token, plus the anchor session that holds the login.
///
/// Callers use `withSession {}` only: the body runs on an `HSMExecutor` thread with a session leased to it alone, under
/// the per-call deadline. The pool's decisions come from `SessionPoolStateMachine`; this type carries them out.
///
/// Error handling (see docs/hsm-failure-model.md):
/// - session handle invalid or closed → the session is discarded (never handed out again) and the call retried once
///   on another session;
/// - user not logged in → the anchor session and the login are re-established and the call retried once;
/// - device gone → the session is discarded and the caller gets `unavailable`; `onDeviceLoss` is told;
/// - deadline passed → the caller gets `unavailable`; the session is written off until its call returns, then closed;
/// - checkout wait exceeded → `unavailable`.
/// Other PKCS#11 errors are returned to the caller unchanged (the provider decides what they mean).
final class SessionPool: Sendable {
    struct Configuration: Sendable {
        var maxSessions: Int
        var maxWaiters: Int
        var checkoutWait: Duration
        var callTimeout: Duration
        /// The token wants a `C_Login` on every session (profile `login: per-session`), not only on the anchor.
        var loginEachSession = false
        /// What the checkout wait is measured on (a manual clock in tests).
        var clock: any PoolClock = SystemPoolClock()
    }

    /// Counters for tests, status and metrics.
    struct Statistics: Sendable, Equatable {
        var open = 0
        var idle = 0
        var leased = 0
        var lost = 0
        var waiters = 0
        var sessionsOpened = 0
        var sessionsClosed = 0
        var sessionsDiscarded = 0
        var relogins = 0
        var checkoutTimeouts = 0
        var deadlineOverruns = 0
        /// The most sessions that ever existed at once (excluding the anchor).
        var highWaterMark = 0
    }

    struct State {
        var machine: SessionPoolStateMachine
        var sessions: [SessionPoolStateMachine.SessionID: PKCS11Session] = [:]
        var waiters: [SessionPoolStateMachine.WaiterID: @Sendable (SessionPoolStateMachine.LeaseDecision) -> Void] = [:]
        var nextID = 0
        var statistics = Statistics()
    }

    let module: PKCS11Module
    /// The token's slot; found again by URI after every reconnect (slot ids may change when the library restarts).
    private let currentSlot: Mutex<SlotID>
    var slot: SlotID { currentSlot.withLock { $0 } }
    let configuration: Configuration
    /// The PIN, and the token's refusal of it once one happened: while `rejected` is set, no `C_Login` is made with
    /// any session (request path, re-login, reconnect) until `replacePIN` brings a different PIN.
    private let credential: Mutex<Credential>
    private struct Credential {
        var pin: SecretBytes
        var rejected: PKCS11Error?
    }
    let executor: HSMExecutor
    let logger: Logger
    let state: Mutex<State>
    /// The anchor session; guarded by its own lock, held only on executor threads while (re)logging in.
    private let anchor = Mutex<PKCS11Session?>(nil)
    let onDeviceLoss: @Sendable (PKCS11Error) -> Void
    private let onPINRejected: @Sendable (PKCS11Error) -> Void
    /// Closes scheduled but not yet done; they use the library too, so reconnecting waits for them.
    let pendingCloses = Atomic<Int>(0)

    init(
        module: PKCS11Module, slot: SlotID, pin: SecretBytes, configuration: Configuration, executor: HSMExecutor,
        logger: Logger, onDeviceLoss: @escaping @Sendable (PKCS11Error) -> Void = { _ in },
        onPINRejected: @escaping @Sendable (PKCS11Error) -> Void = { _ in }
    ) {
        self.onPINRejected = onPINRejected
        self.module = module
        self.currentSlot = Mutex(slot)
        self.credential = Mutex(Credential(pin: pin))
        self.configuration = configuration
        self.executor = executor
        self.logger = logger
        self.onDeviceLoss = onDeviceLoss
        self.state = Mutex(State(machine: SessionPoolStateMachine(
            configuration: .init(maxSessions: configuration.maxSessions, maxWaiters: configuration.maxWaiters))))
    }

    var statistics: Statistics {
        state.withLock { state in
            var statistics = state.statistics
            statistics.idle = state.machine.idleCount
            statistics.leased = state.machine.leasedCount
            statistics.lost = state.machine.lostCount
            statistics.waiters = state.machine.waiterCount
            statistics.open = state.sessions.count
            return statistics
        }
    }

    /// Opens the anchor session and logs in. Throws the PKCS#11 error (e.g. `CKR_PIN_INCORRECT`) if that fails.
    func start() async throws {
        _ = try await executor.run(timeout: configuration.callTimeout) { [self] in try ensureLoggedIn() }
    }

    /// Closes every idle session and the anchor (which ends the login); fails waiters. Leased sessions are closed as
    /// they come back.
    func shutdown() async {
        let actions = state.withLock { $0.machine.shutdown() }
        perform(actions)
        _ = try? await executor.run(timeout: configuration.callTimeout) { [self] in
            anchor.withLock { anchor in
                try? anchor?.close()
                anchor = nil
            }
        }
    }

    /// Runs `body` with a session leased to it alone, on an HSM thread, under the call deadline.
    func withSession<T: Sendable>(_ body: @escaping @Sendable (PKCS11Session) throws -> T) async throws -> T {
        var attempt = 0
        while true {
            attempt += 1
            let (lease, session) = try await acquire()
            let result = await Self.result {
                try await executor.run(timeout: configuration.callTimeout, whenOverrunEnds: overrunEnded(lease)) { try body(session) }
            }
            if case .done(let value) = try settle(lease, result, attempt: attempt) { return value }
            try await relogin()
        }
    }

    /// `withSession` for a caller on a thread of its own that may block (the audit writer), never the cooperative
    /// pool: the same leases, deadlines and recovery rules, with the calling thread waiting instead of a task.
    func withSessionBlocking<T: Sendable>(_ body: @escaping @Sendable (PKCS11Session) throws -> T) throws -> T {
        var attempt = 0
        while true {
            attempt += 1
            let (lease, session) = try acquireBlocking()
            let result = Result {
                try executor.runBlocking(timeout: configuration.callTimeout, whenOverrunEnds: overrunEnded(lease)) { try body(session) }
            }
            if case .done(let value) = try settle(lease, result, attempt: attempt) { return value }
            try loggedIn(Result { try executor.runBlocking(timeout: configuration.callTimeout) { [self] in try ensureLoggedIn() } })
        }
    }

    private func overrunEnded<T>(_ lease: SessionPoolStateMachine.Lease) -> @Sendable (Result<T, any Error>?) -> Void {
        { [self] _ in perform(state.withLock { $0.machine.lostCallEnded(lease) }) }
    }

    private enum Step<T> {
        case done(T)
        /// Log in again and try once more on another lease.
        case retryAfterRelogin
    }

    /// Returns the lease after a call in it ended with `result`: the value, a retry after a new login (at most one),
    /// or the error the caller gets.
    private func settle<T>(_ lease: SessionPoolStateMachine.Lease, _ result: Result<T, any Error>, attempt: Int) throws -> Step<T> {
        switch result {
        case .success(let value):
            release(lease, .reuse)
            return .done(value)
        case .failure(let error):
            switch recovery(lease, after: error) {
            case .fail(let error):
                throw error
            case .retryAfterRelogin(let otherwise):
                guard attempt < 2 else { throw otherwise }
                return .retryAfterRelogin
            }
        }
    }

    private enum Recovery {
        /// Log in again and try once more on another lease; `otherwise` is the error when no attempt is left.
        case retryAfterRelogin(otherwise: KMSError)
        case fail(any Error)
    }

    /// Returns the lease after `body` failed with `error`, and says what the caller does next.
    private func recovery(_ lease: SessionPoolStateMachine.Lease, after error: any Error) -> Recovery {
        switch error {
        case is HSMDeadlineExceeded:
            state.withLock { $0.statistics.deadlineOverruns += 1 }
            release(lease, .lost)
            logger.warning("HSM call overran its deadline; session written off", metadata: ["timeout": "\(configuration.callTimeout)"])
            return .fail(KMSError.unavailable("the HSM did not answer in time", detail: "call deadline \(configuration.callTimeout) passed"))
        case let error as PKCS11Error where error.isSessionInvalid:
            release(lease, .discard)
            state.withLock { $0.statistics.sessionsDiscarded += 1 }
            logger.notice("PKCS#11 session evicted", metadata: ["error": "\(error)"])
            // If the anchor died too, every session of the application was closed: start over with a new generation
            // and a fresh login rather than trying the other dead sessions one by one.
            return .retryAfterRelogin(otherwise: KMSError.unavailable("the HSM session failed", detail: error.description))
        case let error as PKCS11Error where error.requiresLogin:
            release(lease, .reuse)
            logger.notice("PKCS#11 login lost; logging in again", metadata: ["error": "\(error)"])
            return .retryAfterRelogin(otherwise: KMSError.unavailable("the HSM login was lost", detail: error.description))
        case let error as PKCS11Error where error.isDeviceGone:
            release(lease, .discard)
            logger.error("HSM device lost", metadata: ["error": "\(error)"])
            onDeviceLoss(error)
            return .fail(KMSError.unavailable("the HSM is unavailable", detail: error.description))
        default:
            release(lease, .reuse)
            return .fail(error)
        }
    }

    // MARK: - Login

    /// Re-establishes the anchor session and the login, on an executor thread (also after a new PIN).
    func relogin() async throws {
        try loggedIn(await Self.result { try await executor.run(timeout: configuration.callTimeout) { [self] in try ensureLoggedIn() } })
    }

    /// Records a (re-)login's outcome, or maps its failure to what the caller is told.
    private func loggedIn(_ result: Result<LoginOutcome, any Error>) throws {
        do {
            let outcome = try result.get()
            perform(state.withLock { state in
                if outcome != .stillLoggedIn { state.statistics.relogins += 1 }
                // A replaced anchor means every session of the application was closed: start a new generation.
                return outcome == .anchorReplaced ? state.machine.invalidateAll() : []
            })
        } catch is HSMDeadlineExceeded {
            throw KMSError.unavailable("the HSM did not answer in time", detail: "re-login overran its deadline")
        } catch let error as PKCS11Error where error.rejectsPIN {
            throw Self.pinRefusal(error)
        } catch let error as PKCS11Error {
            logger.error("HSM login failed", metadata: ["error": "\(error)"])
            if error.isDeviceGone { onDeviceLoss(error) }
            throw KMSError.unavailable("cannot log in to the HSM", detail: error.description)
        }
    }

    // MARK: - Reconnecting

    /// Device lost: refuse new leases and fail waiters until `reconnect`. Idempotent.
    func suspend() {
        perform(state.withLock { $0.machine.suspended ? [] : $0.machine.suspend() })
    }

    /// Calls that may still be inside the library (see `SessionPoolStateMachine.inFlight`).
    var inFlight: Int { state.withLock { $0.machine.inFlight } + pendingCloses.load(ordering: .relaxed) }

    /// After the library was finalized and initialized again: use `slot`, open a new anchor session, log in and serve
    /// again. The old anchor's handle is dropped without closing (finalizing ended it; its number may be reused).
    func reconnect(to slot: SlotID) async throws {
        currentSlot.withLock { $0 = slot }
        anchor.withLock { $0 = nil }
        _ = try await executor.run(timeout: configuration.callTimeout) { [self] in try ensureLoggedIn() }
        state.withLock { state in
            state.sessions.removeAll()
            state.machine.resume()
        }
    }

    /// Makes sure the application is logged in, keeping one anchor session open so the login survives while the pool
    /// is empty. Serialized by the anchor lock; runs only on executor threads (it blocks). Never retries a failed
    /// login by itself: a wrong PIN retried in a loop would lock the token.
    enum LoginOutcome: Equatable {
        case stillLoggedIn
        case loggedInAgain
        /// The anchor session itself had to be replaced (a sign that every session was closed).
        case anchorReplaced
        case firstLogin
    }

    @discardableResult
    func ensureLoggedIn() throws -> LoginOutcome {
        try anchor.withLock { anchor in
            let hadAnchor = anchor != nil
            if let current = anchor {
                do {
                    if try current.info().isUserLoggedIn { return .stillLoggedIn }
                    try login(current)
                    return .loggedInAgain
                } catch let error as PKCS11Error where error.isSessionInvalid {
                    // The anchor is gone (e.g. every session was closed under us): open a new one. Its old handle is
                    // not closed, since the number may already name another session.
                    anchor = nil
                }
            }
            let fresh = try module.openSession(slot)
            do {
                try login(fresh)
            } catch {
                try? fresh.close()
                throw error
            }
            anchor = fresh
            return hadAnchor ? .anchorReplaced : .firstLogin
        }
    }

    // MARK: - The PIN

    /// Logs `session` in, unless the token has already refused this PIN. A refusal (`CKR_PIN_INCORRECT`, `_LOCKED`,
    /// `_EXPIRED`) is latched before it is thrown, so no other thread logs in with the same PIN after it.
    func login(_ session: PKCS11Session) throws {
        let refused: PKCS11Error? = try credential.withLock { credential in
            if let rejected = credential.rejected { throw rejected }
            do {
                try credential.pin.withUnsafeBytes { try session.login(pin: $0) }
                return nil
            } catch let error as PKCS11Error where error.rejectsPIN {
                credential.rejected = error
                return error
            }
        }
        if let refused {
            // Outside the lock: the provider opens its breaker.
            onPINRejected(refused)
            throw refused
        }
    }

    /// A PIN read again (SIGHUP). A different PIN clears the latch, so the next login tries it once; the same PIN
    /// changes nothing. Returns whether the PIN changed.
    func replacePIN(_ pin: SecretBytes) -> Bool {
        credential.withLock { credential in
            guard credential.pin != pin else { return false }
            credential.pin = pin
            credential.rejected = nil
            return true
        }
    }

    /// What a caller is told while the token refuses kmsd's PIN (the pool's logins and the provider's breaker).
    static let pinRefusalMessage = "the HSM refused kmsd's PIN; no login is tried again until the PIN changes and kmsd is reloaded"

    static func pinRefusal(_ error: PKCS11Error) -> KMSError {
        KMSError.unavailable(pinRefusalMessage, detail: error.description)
    }
}
