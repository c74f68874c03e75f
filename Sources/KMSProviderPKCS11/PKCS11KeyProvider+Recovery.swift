import Foundation
public import KMSCore
import Logging
import PKCS11
import Synchronization

/// The circuit breaker and the reconnect loop.
///
/// When the pool reports device loss (`CKR_DEVICE_ERROR`, `CKR_DEVICE_REMOVED`, `CKR_TOKEN_NOT_PRESENT`,
/// `CKR_CRYPTOKI_NOT_INITIALIZED`, `CKR_SLOT_ID_INVALID`), the breaker opens: every request fails at once with
/// `unavailable` and nothing is served from a cache. A background task then reconnects with capped exponential
/// backoff and jitter: it waits until no call is inside the library (never `C_Finalize` under a running call),
/// finalizes and initializes the library, finds the token again by its URI (no slots, or no matching token, means
/// still down), opens a new anchor session, logs in, forgets every cached object handle (KEKs are found again by
/// `CKA_ID` on first use) and closes the breaker.
struct RecoveryState: Sendable {
    /// Set while the breaker is open.
    var down: Outage?
    var reconnectTask: Task<Void, Never>?
    var stopped = false
    var lastRecoveredAt: Date?
    var outages = 0

    struct Outage: Sendable {
        let since: Date
        let cause: String
        /// The token refused the PIN (on any login, or while reconnecting): nothing logs in again until a reload
        /// brings a different PIN.
        var pinRefused = false
        /// The outage began as a device loss (the pool is suspended and needs a reconnect, not just a login).
        var deviceLost = true
        var attempts = 0
        var lastAttemptError: String?
    }
}

/// Lets the session pool, created before the provider, report device loss or a refused PIN to it
/// (`PKCS11KeyProvider.poolReported`).
final class PKCS11ErrorRelay: Sendable {
    private let handler = Mutex<(@Sendable (PKCS11Error) -> Void)?>(nil)

    func connect(_ handler: @escaping @Sendable (PKCS11Error) -> Void) { self.handler.withLock { $0 = handler } }
    func disconnect() { handler.withLock { $0 = nil } }
    func report(_ error: PKCS11Error) { handler.withLock { $0 }?(error) }
}

/// Why a reconnect attempt did not finish.
struct ReconnectFailure: Error, CustomStringConvertible {
    let description: String
}

extension PKCS11KeyProvider {
    /// What the session pool reports: a refused PIN, or a lost device.
    func poolReported(_ error: PKCS11Error) {
        if error.rejectsPIN { pinRejected(error) } else { deviceLost(error) }
    }

    /// Opens the breaker (once per outage) and starts reconnecting. An outage that began as a refused PIN and now
    /// also lost the device becomes a reconnect too (the PIN latch keeps a refused PIN from being tried again).
    func deviceLost(_ error: PKCS11Error) {
        let start = recovery.withLock { state in
            guard !state.stopped else { return false }
            if let outage = state.down {
                guard !outage.deviceLost else { return false }
                state.down?.deviceLost = true
                return true
            }
            state.down = RecoveryState.Outage(since: Date(), cause: error.description)
            state.outages += 1
            return true
        }
        guard start else { return }
        logger.error("HSM lost; refusing requests until it is back", metadata: ["error": "\(error)"])
        startReconnecting()
    }

    /// Suspends the pool and runs the reconnect loop (retries with backoff until the HSM is back or refuses the PIN).
    private func startReconnecting() {
        pool.suspend()
        let task = Task { [self] in await reconnectLoop() }
        recovery.withLock { $0.reconnectTask = task }
    }

    /// The token refused the PIN: open the breaker with that reason. No reconnect loop is started — logging in
    /// again with the same PIN could only lock the token.
    func pinRejected(_ error: PKCS11Error) {
        let opened = recovery.withLock { state in
            if state.down != nil {
                state.down?.pinRefused = true
                return false
            }
            guard !state.stopped else { return false }
            state.down = RecoveryState.Outage(since: Date(), cause: error.description, pinRefused: true, deviceLost: false)
            state.outages += 1
            return true
        }
        if opened {
            logger.critical("the HSM refused kmsd's PIN; refusing requests, no login is tried again until the PIN changes and kmsd is reloaded",
                            metadata: ["error": "\(error)"])
        }
    }

    /// A PIN read again at reload. If it differs and the breaker is open because the token refused the old one,
    /// kmsd tries the new PIN: a login, or a whole reconnect if the device had been lost too. A login that fails for
    /// another reason than a refusal (the HSM did not answer) is not left there: the reconnect loop takes over and
    /// retries with backoff.
    public func reloadCredential(_ pin: SecretBytes) {
        guard pool.replacePIN(pin) else { return }
        let outage: RecoveryState.Outage? = recovery.withLock { state in
            guard state.down?.pinRefused == true else { return nil }
            state.down?.pinRefused = false
            return state.down
        }
        guard let outage else { return }
        logger.notice("the HSM PIN changed; trying it once")
        if outage.deviceLost {
            startReconnecting()
            return
        }
        Task { [self] in
            do {
                try await pool.relogin()
                recovery.withLock { state in
                    state.down = nil
                    state.lastRecoveredAt = Date()
                }
                logger.notice("HSM login succeeded with the new PIN")
            } catch {
                logger.error("HSM login with the new PIN failed", metadata: ["error": "\(error)"])
                // A refusal latched the PIN and marked the outage again; anything else is retried as an outage.
                let handOver = recovery.withLock { state in
                    guard let down = state.down, !down.pinRefused, !down.deviceLost, !state.stopped else { return false }
                    state.down?.deviceLost = true
                    return true
                }
                if handOver { startReconnecting() }
            }
        }
    }

    /// Fails fast while the breaker is open.
    func checkBreaker() throws {
        if let outage = recovery.withLock({ $0.down }) {
            if outage.pinRefused { throw KMSError.unavailable(SessionPool.pinRefusalMessage, detail: outage.cause) }
            throw KMSError.unavailable("the HSM is unavailable; kmsd is reconnecting", detail: outage.cause)
        }
    }

    /// Stops reconnecting (shutdown).
    func stopRecovery() async {
        let task = recovery.withLock { state in
            state.stopped = true
            return state.reconnectTask
        }
        task?.cancel()
        await task?.value
    }

    private func reconnectLoop() async {
        var delay = configuration.reconnectInitialDelay
        while !recovery.withLock({ $0.stopped }) && !Task.isCancelled {
            // Full jitter in [delay/2, delay], so replicas that lost the same HSM do not retry in lockstep.
            let jittered = delay * Double.random(in: 0.5...1.0)
            try? await Task.sleep(for: jittered)
            if recovery.withLock({ $0.stopped }) || Task.isCancelled { return }
            do {
                try await reconnect()
                let outage = recovery.withLock { state in
                    let outage = state.down
                    state.down = nil
                    state.reconnectTask = nil
                    state.lastRecoveredAt = Date()
                    return outage
                }
                logger.notice("HSM reconnected", metadata: [
                    "attempts": "\((outage?.attempts ?? 0) + 1)",
                    "down_for": "\(String(format: "%.3f", Date().timeIntervalSince(outage?.since ?? Date()))) s",
                ])
                return
            } catch let error as PKCS11Error where error.rejectsPIN {
                // Retrying a rejected PIN in a loop would lock the token: stay down and say so.
                recovery.withLock { state in
                    state.down?.pinRefused = true
                    state.down?.lastAttemptError = "\(error) (not retried: correct the PIN and reload or restart kmsd)"
                    state.reconnectTask = nil
                }
                logger.critical("HSM reconnect stopped: the token rejected the PIN", metadata: ["error": "\(error)"])
                return
            } catch {
                let attempts = recovery.withLock { state -> Int in
                    state.down?.attempts += 1
                    state.down?.lastAttemptError = "\(error)"
                    return state.down?.attempts ?? 0
                }
                // The first failure and then every tenth, so a long outage does not flood the log.
                if attempts == 1 || attempts % 10 == 0 {
                    logger.warning("HSM still unavailable", metadata: ["attempts": "\(attempts)", "error": "\(error)"])
                }
                delay = min(delay * 2, configuration.reconnectMaxDelay)
            }
        }
    }

    /// One reconnect attempt.
    private func reconnect() async throws {
        let inFlight = pool.inFlight
        guard inFlight == 0, executor.stuckCalls == 0 else {
            throw ReconnectFailure(description: "waiting for \(max(inFlight, executor.stuckCalls)) call(s) still inside the PKCS#11 library")
        }
        let module = pool.module
        let token = configuration.token
        let slot: SlotID
        do {
            slot = try await executor.run(timeout: max(configuration.callTimeout, .seconds(10))) {
                do {
                    try module.finalize()
                } catch let error as PKCS11Error where error.returnValue == PKCS11ReturnValue.cryptokiNotInitialized {
                    // Already finalized by an earlier, half-done attempt.
                }
                try module.initialize()
                do {
                    return try module.findSlot(matching: token)
                } catch let error as PKCS11Error where error.returnValue == PKCS11ReturnValue.tokenNotPresent {
                    let slots = (try? module.slots(tokenPresent: false).count) ?? 0
                    throw ReconnectFailure(description: slots == 0
                        ? "the PKCS#11 library lists no slots (\(error))"
                        : "no token among \(slots) slot(s) matches \(token) (\(error))")
                }
            }
        } catch is HSMDeadlineExceeded {
            throw ReconnectFailure(description: "the PKCS#11 library did not answer in time while re-initializing")
        }
        catalog.withLock { $0.forgetAll() }
        do {
            try await pool.reconnect(to: slot)
        } catch is HSMDeadlineExceeded {
            throw ReconnectFailure(description: "the HSM did not answer in time while logging in")
        }
    }
}
