import Crypto
public import Foundation
public import KMSAudit
import KMSCore
public import KMSRotation
public import Logging
import Synchronization

/// kmsd's operations, under every front end (the JSON API today; Vault transit and KMIP next): each takes an
/// authenticated caller and typed arguments, and does policy → rate limit → usage limits (through `TrackedProvider`)
/// → provider under the request deadline → exactly one audit record → result. No wire protocol lives here: a front
/// end translates its requests into these calls and the results (or `ServiceError`s) back, and cannot skip
/// authorization, usage counting or the audit record, because they happen inside the call.
///
/// Audit scope: every operation runs in an audit scope (`audited`). A front end may open the scope itself around
/// its own decoding, so that a malformed request is recorded as that operation too; the operation then joins it.
public final class KMSService: Sendable {
    /// What a reload (SIGHUP) replaces: the policy (allow lists, admins, limits) and the revocation list.
    public struct Snapshot: Sendable {
        public var policy: KMSServerPolicy
        public var revocation: RevocationList?
        /// How long past its `nextUpdate` the CRL is still trusted.
        public var revocationGrace: Duration
        public init(policy: KMSServerPolicy, revocation: RevocationList? = nil, revocationGrace: Duration = .seconds(3600)) {
            self.policy = policy
            self.revocation = revocation
            self.revocationGrace = revocationGrace
        }
    }

    /// A CRL older than the one in force (by `thisUpdate`, same issuer): an attacker who can write the CRL file, or a
    /// stale copy from a backup, must not bring revoked certificates back.
    public struct RevocationRollback: Error, CustomStringConvertible {
        public let inForce: Date
        public let offered: Date
        public var description: String {
            "tls.crl: the CRL was issued at \(offered.formatted(.iso8601)), before the one in force (\(inForce.formatted(.iso8601))); refused as a rollback"
        }
    }

    private let snapshot: Mutex<Snapshot>
    let limiter: RateLimiter
    public let logger: Logger
    /// Refusals and other security events, by kind.
    public let events: SecurityEvents
    /// Rotation, retirement, schedules and usage counts.
    public let rotation: RotationManager
    /// The audit log; nil when none is configured (development only).
    public let audit: AuditLog?
    /// Refusals and failures in the audit log: one record each within a budget per identity and code, summarized
    /// beyond it (the daemon flushes the summaries every `audit.handshake_summary_interval`).
    public let refusals: RefusalSummaries
    /// Managed objects' descriptions as last decoded, by id, with the JSON they came from (`KMSService.object`).
    let decodedObjects = DecodedObjects()

    public init(policy: KMSServerPolicy, rotation: RotationManager, audit: AuditLog? = nil, revocation: RevocationList? = nil,
                revocationGrace: Duration = .seconds(3600), events: SecurityEvents = SecurityEvents(),
                refusalSummaryInterval: Duration = .seconds(10), logger: Logger = Logger(label: "kmsd.api")) {
        snapshot = Mutex(Snapshot(policy: policy, revocation: revocation, revocationGrace: revocationGrace))
        self.rotation = rotation
        self.audit = audit
        self.refusals = RefusalSummaries(audit: audit, interval: refusalSummaryInterval)
        self.events = events
        self.limiter = RateLimiter(ratePerSecond: policy.limits.ratePerSecond, burst: policy.limits.burst)
        self.logger = logger
    }

    // MARK: - Policy and revocation

    /// The current policy; operations read it once at their start.
    public var policy: KMSServerPolicy { snapshot.withLock { $0.policy } }

    /// Replaces the policy and revocation list for operations that start from now on. A reload checks the list with
    /// `checkNotRollback` first (it builds and checks every part before it swaps any); the swap itself never brings an
    /// older list back either: if the periodic refresh installed a newer one for the same CA meanwhile, that one stays.
    public func reload(_ new: Snapshot) {
        snapshot.withLock { current in
            var new = new
            if (try? Self.checkNotRollback(new.revocation, inForce: current.revocation)) == nil { new.revocation = current.revocation }
            current = new
        }
    }

    /// The revocation list in force.
    public var revocation: RevocationList? { snapshot.withLock { $0.revocation } }
    var revocationInForce: (RevocationList?, Duration) { snapshot.withLock { ($0.revocation, $0.revocationGrace) } }

    /// Throws `RevocationRollback` if `offered` is older than the list in force for the same CA.
    public func checkNotRollback(_ offered: RevocationList?) throws {
        try Self.checkNotRollback(offered, inForce: revocation)
    }

    static func checkNotRollback(_ offered: RevocationList?, inForce: RevocationList?) throws(RevocationRollback) {
        guard let offered, let inForce, offered.issuer == inForce.issuer, offered.thisUpdate < inForce.thisUpdate else { return }
        throw RevocationRollback(inForce: inForce.thisUpdate, offered: offered.thisUpdate)
    }

    /// The periodic CRL refresh: installs `fresh` unless it is a rollback. Returns false when the list in force was
    /// issued at the same time (nothing new).
    @discardableResult
    public func replaceRevocation(_ fresh: RevocationList) throws -> Bool {
        let outcome: Result<Bool, RevocationRollback> = snapshot.withLock { snapshot in
            do throws(RevocationRollback) {
                try Self.checkNotRollback(fresh, inForce: snapshot.revocation)
            } catch {
                return .failure(error)
            }
            if let current = snapshot.revocation, current.issuer == fresh.issuer, current.thisUpdate == fresh.thisUpdate { return .success(false) }
            snapshot.revocation = fresh
            return .success(true)
        }
        return try outcome.get()
    }

    /// Why revocation cannot be checked now (the CRL is past `nextUpdate` plus the grace), or nil.
    public func revocationProblem(at now: Date = Date()) -> String? {
        let (list, grace) = snapshot.withLock { ($0.revocation, $0.revocationGrace) }
        guard let list, list.isStale(at: now, grace: grace), let nextUpdate = list.nextUpdate else { return nil }
        return "the CRL expired at \(nextUpdate.formatted(.iso8601)) (grace \(DurationText.format(Double(grace.components.seconds)))) and no newer one was loaded"
    }

    // MARK: - Backend calls

    /// Runs a provider or rotation call under the request deadline and turns its errors into service errors.
    func perform<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let timeout = policy.limits.requestTimeout
        do {
            return try await withThrowingTaskGroup(of: T?.self) { group in
                group.addTask { try await body() }
                group.addTask {
                    try await DeadlineSweeper.shared.sleep(until: .now + timeout)
                    return nil
                }
                defer { group.cancelAll() }
                guard let first = try await group.next(), let value = first else {
                    throw KMSError.unavailable("the request did not finish within \(timeout)")
                }
                return value
            }
        } catch let error as KMSError {
            if error.code == .unavailable { events.record("provider_unavailable") }
            // Wrong context, wrong key or tampered data: one probe, counted as a security event (per batch item too).
            if error.isAuthenticationFailure { events.record("unwrap_authentication_failed") }
            if error.code == .unavailable || error.code == .internal, refusals.shouldLog(nil, "backend_error") {
                logger.warning("backend error", metadata: ["security_event": "provider_unavailable", "error": "\(error.debugDescription)"])
            }
            throw ServiceError(error)
        }
    }

    func context(_ raw: [String: String]?) throws(ServiceError) -> EncryptionContext {
        do {
            return try EncryptionContext(raw ?? [:])
        } catch {
            throw ServiceError(error)
        }
    }

    func base64(_ text: String, field: String) throws(ServiceError) -> [UInt8] {
        guard let data = Data(base64Encoded: text) else {
            throw ServiceError(.badRequest, .invalidInput, "'\(field)' is not valid base64")
        }
        return [UInt8](data)
    }
}
