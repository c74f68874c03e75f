import Foundation
public import KMSCore
public import Logging
public import PKCS11
import Synchronization

/// Key-encryption keys inside a PKCS#11 token.
///
/// Each KEK version is an AES-256 secret-key object: token, private, sensitive, never extractable, label
/// `kmsd/<key>/v<N>`, a random 16-byte `CKA_ID`. (No `CKA_START_DATE`: SoftHSM 2.6.1 cannot read it back, and
/// exact creation times belong in kmsd's state store.) Retiring a version clears its
/// `CKA_ENCRYPT`, so the token itself refuses to wrap with it while it still unwraps. DEKs come from the token's
/// `C_GenerateRandom` and are wrapped with AES-256-GCM inside the token, AAD = envelope header + canonical context.
///
/// Threading: every PKCS#11 call runs on the provider's `HSMExecutor` through the session pool; public methods may
/// be called from any task. Lifecycle: `start` connects and logs in; `shutdown` closes the sessions (which ends the
/// login); the module is never unloaded.
public final class PKCS11KeyProvider: KeyProvider {
    public let kind = ProviderKind.pkcs11
    public let configuration: PKCS11ProviderConfiguration
    /// The token found at start.
    public let tokenInfo: TokenInfo
    let pool: SessionPool
    let executor: HSMExecutor
    let catalog = Mutex(KEKCatalog())
    let admin = AsyncSerialGate()
    let logger: Logger
    private let healthState = Mutex(HealthState())
    let recovery = Mutex(RecoveryState())
    private let deviceLoss: PKCS11ErrorRelay

    struct HealthState {
        var lastError: String?
        var lastErrorAt: Date?
        var lastSuccessAt: Date?
    }

    private init(configuration: PKCS11ProviderConfiguration, tokenInfo: TokenInfo, pool: SessionPool,
                 executor: HSMExecutor, deviceLoss: PKCS11ErrorRelay, logger: Logger) {
        self.configuration = configuration
        self.deviceLoss = deviceLoss
        self.tokenInfo = tokenInfo
        self.pool = pool
        self.executor = executor
        self.logger = logger
    }

    /// Loads the module, initializes it, finds the token, checks its mechanisms, opens the anchor session and logs in.
    /// Throws `KMSError.unavailable` with the reason (module missing, token not found, PIN wrong, …).
    public static func start(
        _ configuration: PKCS11ProviderConfiguration, logger: Logger = Logger(label: "kmsd.pkcs11")
    ) async throws -> PKCS11KeyProvider {
        guard configuration.maxSessions >= 1 else { throw KMSError.invalidInput("maxSessions must be at least 1") }
        let executor = HSMExecutor(threads: configuration.maxSessions + 1)
        do {
            let (module, slot, token) = try await executor.run(timeout: max(configuration.callTimeout, .seconds(10))) {
                let module = try PKCS11Module(path: configuration.modulePath)
                try module.initialize()
                let slot = try module.findSlot(matching: configuration.token)
                let token = try module.tokenInfo(slot)
                let offered = Set(try module.mechanisms(slot))
                let missing = configuration.profile.requiredMechanisms.filter { !offered.contains($0) }
                guard missing.isEmpty else {
                    throw KMSError.unavailable(
                        "the token lacks required mechanisms: " + missing.map(MechanismType.name(of:)).joined(separator: ", "))
                }
                return (module, slot, token)
            }
            var sessions = configuration.maxSessions
            // One session of the token's allowance is the anchor.
            if let limit = token.maxReadWriteSessionCount { sessions = min(sessions, max(1, limit - 1)) }
            if let limit = configuration.profile.maxSessions { sessions = min(sessions, max(1, limit - 1)) }
            let deviceLoss = PKCS11ErrorRelay()
            let pool = SessionPool(
                module: module, slot: slot, pin: configuration.pin,
                configuration: .init(
                    maxSessions: sessions, maxWaiters: configuration.maxWaiters,
                    checkoutWait: configuration.checkoutWait, callTimeout: configuration.callTimeout,
                    loginEachSession: configuration.profile.login == .perSession, clock: configuration.poolClock),
                executor: executor, logger: logger, onDeviceLoss: { deviceLoss.report($0) },
                onPINRejected: { deviceLoss.report($0) })
            try await pool.start()
            logger.info("PKCS#11 provider started", metadata: [
                "token": "\(token.label)", "serial": "\(token.serialNumber)", "sessions": "\(sessions)",
                "profile": "\(configuration.profile.name)",
            ])
            let provider = PKCS11KeyProvider(
                configuration: configuration, tokenInfo: token, pool: pool, executor: executor, deviceLoss: deviceLoss,
                logger: logger)
            deviceLoss.connect { [weak provider] error in provider?.poolReported(error) }
            return provider
        } catch {
            await executor.shutdown()
            throw startError(error, configuration)
        }
    }

    private static func startError(_ error: any Error, _ configuration: PKCS11ProviderConfiguration) -> KMSError {
        switch error {
        case let error as KMSError:
            return error
        case let error as PKCS11LoadError:
            return .unavailable("cannot load the PKCS#11 module", detail: error.description)
        case let error as PKCS11URIMatchError:
            return .unavailable(error.description)
        case let error as PKCS11Error where error.returnValue == PKCS11ReturnValue.tokenNotPresent:
            return .unavailable("no token matches \(configuration.token)", detail: error.description)
        case let error as PKCS11Error where error.returnValue == PKCS11ReturnValue.pinIncorrect:
            return .unavailable("HSM login failed: the PIN is incorrect", detail: error.description)
        case let error as PKCS11Error where error.returnValue == PKCS11ReturnValue.pinLocked:
            return .unavailable("HSM login failed: the PIN is locked", detail: error.description)
        case let error as PKCS11Error where error.rejectsPIN:
            return .unavailable("HSM login failed: the PIN has expired", detail: error.description)
        case is HSMDeadlineExceeded:
            return .unavailable("the HSM did not answer in time while starting")
        default:
            return .unavailable("cannot start the PKCS#11 provider", detail: "\(error)")
        }
    }

    /// Closes every session and stops the HSM threads.
    public func shutdown() async {
        deviceLoss.disconnect()
        await stopRecovery()
        await pool.shutdown()
        await executor.shutdown()
    }

    /// Session pool counters (for status, metrics and tests).
    public var poolStatistics: PoolStatistics {
        let s = pool.statistics
        return PoolStatistics(
            maxSessions: pool.configuration.maxSessions, open: s.open, idle: s.idle, leased: s.leased, lost: s.lost,
            waiters: s.waiters, sessionsOpened: s.sessionsOpened, sessionsClosed: s.sessionsClosed,
            sessionsDiscarded: s.sessionsDiscarded, relogins: s.relogins, checkoutTimeouts: s.checkoutTimeouts,
            deadlineOverruns: s.deadlineOverruns, highWaterMark: s.highWaterMark, stuckCalls: executor.stuckCalls)
    }

    // MARK: - Administration

    public func createKey(_ name: KeyName) async throws -> KeyDescription {
        try await admin.run {
            try await perform("create key") { [self] session in
                let existing = try KEKStore.load(session, only: name)
                guard existing.isEmpty else { throw KMSError.alreadyExists("key '\(name)' already exists") }
                let record = try generateKEK(session, name, .first)
                catalog.withLock { $0.replace(name, with: [record], at: .now) }
                return KeyDescription(name: name, provider: kind, versions: [record.info])
            }
        }
    }

    public func describeKey(_ name: KeyName) async throws -> KeyDescription {
        let records = try await refresh(name)
        guard !records.isEmpty else { throw KMSError.notFound("key '\(name)' does not exist") }
        return KeyDescription(name: name, provider: kind, versions: records.map(\.info))
    }

    public func listKeys() async throws -> [KeyName] {
        let records = try await perform("list keys") { session in try KEKStore.load(session, only: nil) }
        return Array(Set(records.map(\.name))).sorted()
    }

    public func rotateKey(_ name: KeyName) async throws -> KeyVersionInfo {
        try await admin.run {
            try await perform("rotate key") { [self] session in
                let existing = try KEKStore.load(session, only: name)
                guard let latest = existing.last else { throw KMSError.notFound("key '\(name)' does not exist") }
                let record = try generateKEK(session, name, try latest.version.next())
                catalog.withLock { $0.replace(name, with: existing + [record], at: .now) }
                logger.notice("key rotated", metadata: ["key": "\(name)", "version": "\(record.version)"])
                return record.info
            }
        }
    }

    public func retireVersion(_ name: KeyName, version: KeyVersion) async throws {
        try await admin.run {
            try await perform("retire version") { [self] session in
                let existing = try KEKStore.load(session, only: name)
                guard !existing.isEmpty else { throw KMSError.notFound("key '\(name)' does not exist") }
                // Every object carrying this version number: a token can hold two (a restored backup, two writers
                // that rotated at once), and retiring only the first found would leave the other wrapping.
                let matching = existing.filter { $0.version == version }
                guard !matching.isEmpty else { throw KMSError.notFound("key '\(name)' has no version \(version.rawValue)") }
                let active = matching.filter { $0.state == .active }
                if active.isEmpty { return }
                if existing.last(where: { $0.state == .active })?.version == version {
                    throw KMSError.conflict("\(version) is the version '\(name)' wraps with; rotate the key before retiring it")
                }
                for record in active { try session.setAttributes([.encrypt(false)], of: record.handle) }
                _ = try reload(session, name)
                logger.notice("key version retired", metadata: [
                    "key": "\(name)", "version": "\(version)", "objects": "\(matching.count)",
                ])
            }
        }
    }

    public func destroyVersion(_ name: KeyName, version: KeyVersion) async throws {
        try await admin.run {
            try await perform("destroy version") { [self] session in
                let existing = try KEKStore.load(session, only: name)
                // Every object carrying this version number, or none: all of them must be retired first.
                let matching = existing.filter { $0.version == version }
                guard !matching.isEmpty else { throw KMSError.notFound("key '\(name)' has no version \(version.rawValue)") }
                let stillActive = matching.filter { $0.state == .active }.count
                guard stillActive == 0 else {
                    throw KMSError.conflict(matching.count == 1
                        ? "retire \(version) of '\(name)' before destroying it"
                        : "retire \(version) of '\(name)' before destroying it (\(matching.count) token objects carry it, \(stillActive) still wrap)")
                }
                for record in matching { try session.destroyObject(record.handle) }
                catalog.withLock { $0.replace(name, with: existing.filter { $0.version != version }, at: .now) }
                logger.warning("key version destroyed", metadata: [
                    "key": "\(name)", "version": "\(version)", "objects": "\(matching.count)",
                ])
            }
        }
    }

    public func health() async -> ProviderHealth {
        let recovery = recovery.withLock { $0 }
        var details = [
            "token": tokenInfo.label, "serial": tokenInfo.serialNumber, "profile": configuration.profile.name,
            "breaker": recovery.down == nil ? "closed" : "open", "outages": "\(recovery.outages)",
        ]
        if let recovered = recovery.lastRecoveredAt { details["last_recovered_at"] = recovered.formatted(.iso8601) }
        if let outage = recovery.down {
            details["down_since"] = outage.since.formatted(.iso8601)
            details["reconnect_attempts"] = "\(outage.attempts)"
            if let error = outage.lastAttemptError { details["reconnect_error"] = error }
            if outage.pinRefused { details["pin_refused"] = "true" }
            let state = healthState.withLock { $0 }
            return ProviderHealth(
                state: .unavailable, lastError: outage.cause, lastErrorAt: outage.since,
                lastSuccessAt: state.lastSuccessAt, breaker: .open, details: details)
        }
        let probe: String?
        do {
            _ = try await pool.withSession { session in try session.info() }
            probe = nil
        } catch let error as KMSError {
            probe = error.debugDescription
        } catch {
            probe = "\(error)"
        }
        let state = healthState.withLock { $0 }
        let stats = poolStatistics
        return ProviderHealth(
            state: probe == nil ? .ok : .unavailable, lastError: probe ?? state.lastError,
            lastErrorAt: probe == nil ? state.lastErrorAt : Date(), lastSuccessAt: state.lastSuccessAt, breaker: .closed,
            sessions: .init(max: stats.maxSessions, open: stats.open, idle: stats.idle, waiters: stats.waiters),
            details: details.merging([
                "sessions_max": "\(stats.maxSessions)", "sessions_open": "\(stats.open)",
                "sessions_idle": "\(stats.idle)", "sessions_lost": "\(stats.lost)", "waiters": "\(stats.waiters)",
                "stuck_calls": "\(stats.stuckCalls)",
            ]) { $1 })
    }

    // MARK: - Shared plumbing


    /// Reads the key's versions from the token and refreshes the catalog.
    func refresh(_ name: KeyName) async throws -> [KEKRecord] {
        try await perform("describe key") { [self] session in try reload(session, name) }
    }

    /// Inside a session: re-reads `name` and updates the catalog.
    func reload(_ session: PKCS11Session, _ name: KeyName) throws -> [KEKRecord] {
        let records = try KEKStore.load(session, only: name)
        catalog.withLock { $0.replace(name, with: records, at: .now) }
        return records
    }

    /// Runs `body` in a pooled session and turns every failure into a `KMSError`, recording health.
    func perform<T: Sendable>(_ operation: String, _ body: @escaping @Sendable (PKCS11Session) throws -> T) async throws -> T {
        // While the breaker is open, refuse at once; the outage was logged when it began.
        try checkBreaker()
        do {
            return succeeded(try await pool.withSession(body))
        } catch {
            throw failed(error, operation)
        }
    }

    /// `perform` for a caller on a thread of its own that may block (the audit writer): no task, same rules.
    func performBlocking<T: Sendable>(_ operation: String, _ body: @escaping @Sendable (PKCS11Session) throws -> T) throws -> T {
        try checkBreaker()
        do {
            return succeeded(try pool.withSessionBlocking(body))
        } catch {
            throw failed(error, operation)
        }
    }

    private func succeeded<T>(_ value: T) -> T {
        healthState.withLock { $0.lastSuccessAt = Date() }
        return value
    }

    private func failed(_ error: any Error, _ operation: String) -> KMSError {
        let mapped = map(error, operation)
        if mapped.code == .unavailable || mapped.code == .internal {
            healthState.withLock {
                $0.lastError = mapped.debugDescription
                $0.lastErrorAt = Date()
            }
            logger.warning("HSM operation failed", metadata: ["operation": "\(operation)", "error": "\(mapped.debugDescription)"])
        }
        return mapped
    }

    private func map(_ error: any Error, _ operation: String) -> KMSError {
        switch error {
        case let error as KMSError:
            return error
        case let error as PKCS11Error where error.function == "C_Decrypt"
            && configuration.profile.badTagReturnValues.contains(error.returnValue):
            return .authenticationFailed(detail: error.description)
        case let error as PKCS11Error where error.isKeyFunctionNotPermitted:
            return .versionRetired("the key version no longer wraps", detail: error.description)
        case let error as PKCS11Error:
            return .internal("the HSM could not \(operation)", detail: error.description)
        case is CancellationError:
            return .unavailable("the request was cancelled")
        default:
            return .internal("the HSM could not \(operation)", detail: "\(error)")
        }
    }

    /// Creates one KEK version object.
    private func generateKEK(_ session: PKCS11Session, _ name: KeyName, _ version: KeyVersion) throws -> KEKRecord {
        let id = try session.generateRandom(count: 16)
        let handle = try session.generateKey(
            mechanism: MechanismType.aesKeyGen,
            template: [
                .class(.secretKey), .keyType(.aes), .valueLength(32), .token(true), .private(true), .sensitive(true),
                .extractable(false), .modifiable(true), .encrypt(true), .decrypt(true), .wrap(false), .unwrap(false),
                .sign(false), .verify(false), .derive(false), .label(KEKLabel.make(name, version)), .id(id),
            ])
        return KEKRecord(name: name, version: version, keyID: id, handle: handle, state: .active, createdAt: nil)
    }
}

/// Session pool counters.
public struct PoolStatistics: Sendable, Equatable {
    public let maxSessions: Int
    public let open: Int
    public let idle: Int
    public let leased: Int
    public let lost: Int
    public let waiters: Int
    public let sessionsOpened: Int
    public let sessionsClosed: Int
    public let sessionsDiscarded: Int
    public let relogins: Int
    public let checkoutTimeouts: Int
    public let deadlineOverruns: Int
    /// The most pool sessions that existed at once.
    public let highWaterMark: Int
    /// HSM calls past their deadline still blocking a thread.
    public let stuckCalls: Int
}
