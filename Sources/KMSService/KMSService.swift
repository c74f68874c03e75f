import Crypto
public import Foundation
public import KMSAudit
import KMSCore
public import KMSRotation
public import Logging
import Synchronization
public import X509

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

    /// Who is asking: the identity from a verified client certificate, and for admin operations a bearer token.
    public struct Caller: Sendable {
        public var identity: ClientIdentity?
        public var bearerToken: String?
        public init(identity: ClientIdentity?, bearerToken: String? = nil) {
            self.identity = identity
            self.bearerToken = bearerToken
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

    public init(policy: KMSServerPolicy, rotation: RotationManager, audit: AuditLog? = nil, revocation: RevocationList? = nil,
                revocationGrace: Duration = .seconds(3600), events: SecurityEvents = SecurityEvents(),
                logger: Logger = Logger(label: "kmsd.api")) {
        snapshot = Mutex(Snapshot(policy: policy, revocation: revocation, revocationGrace: revocationGrace))
        self.rotation = rotation
        self.audit = audit
        self.events = events
        self.limiter = RateLimiter(ratePerSecond: policy.limits.ratePerSecond, burst: policy.limits.burst)
        self.logger = logger
    }

    // MARK: - Policy and revocation

    /// The current policy; operations read it once at their start.
    public var policy: KMSServerPolicy { snapshot.withLock { $0.policy } }

    /// Replaces the policy and revocation list for operations that start from now on. Check the list with
    /// `checkNotRollback` first (a reload builds and checks every part before it swaps any).
    public func reload(_ new: Snapshot) {
        snapshot.withLock { $0 = new }
    }

    /// The revocation list in force.
    public var revocation: RevocationList? { snapshot.withLock { $0.revocation } }

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

    // MARK: - Authentication

    /// The identity of a verified client certificate, checked now: the identity rules (`tls.identity`), the
    /// validity period, the CRL's freshness and revocation. Nil when no certificate was presented. Checked per
    /// operation, so a reloaded CRL applies to connections that are already open too.
    public func authenticate(_ certificate: Certificate?) throws(ServiceError) -> ClientIdentity? {
        guard let certificate else { return nil }
        let identity: ClientIdentity
        do {
            identity = try ClientIdentity(certificate: certificate, mode: policy.identityMode)
        } catch let refusal as ClientIdentity.Refusal {
            events.record("invalid_identity")
            logger.warning("request refused: no usable identity", metadata: ["security_event": "invalid_identity", "reason": "\(refusal)"])
            throw ServiceError(.unauthenticated, .unauthenticated, refusal.description)
        } catch {
            return nil
        }
        AuditNote.identity(identity.description)
        guard identity.isValid(at: Date()) else {
            events.record("expired_certificate")
            throw ServiceError(.unauthenticated, .unauthenticated, "the client certificate is not valid now (expired or not yet valid)")
        }
        let (revocation, grace) = snapshot.withLock { ($0.revocation, $0.revocationGrace) }
        if let revocation, revocation.covers(issuer: identity.issuer), revocation.isStale(at: Date(), grace: grace) {
            events.record("revocation_unavailable")
            logger.warning("request refused: the CRL is stale", metadata: [
                "security_event": "revocation_unavailable", "identity": "\(identity)",
                "next_update": "\(revocation.nextUpdate?.formatted(.iso8601) ?? "")",
            ])
            throw ServiceError(.unauthenticated, .revocationUnavailable,
                               "kmsd cannot tell whether the client certificate is revoked: the CA's revocation list has expired")
        }
        if let revocation, revocation.isRevoked(serial: identity.serial, issuer: identity.issuer) {
            events.record("revoked_certificate")
            logger.warning("request refused: revoked certificate", metadata: ["security_event": "revoked_certificate", "identity": "\(identity)"])
            throw ServiceError(.unauthenticated, .unauthenticated, "the client certificate has been revoked")
        }
        return identity
    }

    // MARK: - Authorization

    func rateLimit(_ caller: String) throws(ServiceError) {
        AuditNote.identity(caller)
        guard limiter.allow(caller) else {
            events.record("rate_limited")
            logger.warning("request refused: rate limit", metadata: ["security_event": "rate_limited", "identity": "\(caller)"])
            throw ServiceError(.rateLimited, .rateLimited, "too many requests; slow down")
        }
    }

    /// A storage-node operation: a certificate identity allowed for the key.
    func authorizeKey(_ caller: Caller, _ nameText: String, policy: KMSServerPolicy) throws(ServiceError) -> (KMSServerPolicy.Key, ClientIdentity) {
        guard let identity = caller.identity else {
            events.record("unauthenticated")
            throw ServiceError(.unauthenticated, .unauthenticated, "a client certificate is required")
        }
        try rateLimit(identity.description)
        guard let name = try? KeyName(nameText) else {
            throw ServiceError(.badRequest, .invalidInput, "'\(nameText.prefix(80))' is not a valid key name")
        }
        AuditNote.key(name)
        guard let key = policy.keys[name] else { throw ServiceError(.notFound, .notFound, "no key named '\(name)'") }
        let issuerAdmitted = policy.nodeIssuers.map { issuers in issuers.contains { $0 == identity.issuer } } ?? true
        guard issuerAdmitted, identity.matches(any: key.allow) else {
            events.record("forbidden")
            logger.warning("request refused: not allowed for key", metadata: [
                "security_event": "forbidden", "identity": "\(identity)", "key": "\(name)",
            ])
            throw ServiceError(.forbidden, .forbidden, "\(identity) may not use key '\(name)'")
        }
        return (key, identity)
    }

    /// An administrative operation: an admin identity, or an admin token. Returns the actor for the journal.
    func authorizeAdmin(_ caller: Caller, policy: KMSServerPolicy) throws(ServiceError) -> String {
        let identity = caller.identity
        let issuerAdmitted = policy.adminIssuers.map { issuers in issuers.contains { $0 == identity?.issuer } } ?? true
        if let identity, issuerAdmitted, identity.matches(any: policy.adminIdentities) {
            try rateLimit(identity.description)
            return identity.description
        }
        if let token = caller.bearerToken, policy.isAdminToken(token) {
            try rateLimit("admin-token")
            return "admin-token"
        }
        // A failed attempt spends the caller's budget as a successful one does, so guessing tokens is as slow as using them.
        try rateLimit(identity?.description ?? "admin-unauthenticated")
        events.record("forbidden")
        logger.warning("admin request refused", metadata: ["security_event": "forbidden", "identity": "\(identity?.description ?? "<none>")"])
        if identity == nil && caller.bearerToken == nil {
            throw ServiceError(.unauthenticated, .unauthenticated, "an admin certificate or admin token is required")
        }
        throw ServiceError(.forbidden, .forbidden, "not an administrator")
    }

    // MARK: - Backend calls

    /// Runs a provider or rotation call under the request deadline and turns its errors into service errors.
    func perform<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let timeout = policy.limits.requestTimeout
        do {
            return try await withThrowingTaskGroup(of: T?.self) { group in
                group.addTask { try await body() }
                group.addTask {
                    try await Task.sleep(for: timeout)
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
            if error.message == KMSError.authenticationFailureMessage { events.record("unwrap_authentication_failed") }
            if error.code == .unavailable || error.code == .internal {
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
