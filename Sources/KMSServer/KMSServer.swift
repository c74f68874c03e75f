public import Foundation
public import Hummingbird
import HummingbirdCore
import KMSAPI
public import KMSCore
public import KMSRotation
public import KMSAudit
public import Logging
public import NIOCore
import NIOFoundationCompat
import NIOSSL
import Synchronization

/// A request's context: the connection it came on (for the peer certificate) and, once checked, the caller.
public struct KMSRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// An error answered as `{"error":{"code","message"}}` with its HTTP status; 503 carries `Retry-After`.
public struct APIError: HTTPResponseError, Sendable {
    public let status: HTTPResponse.Status
    public let code: String
    public let message: String
    /// What operators need and clients do not get (a backend's CK_RV, say); audit and logs only. Never secret.
    public var auditDetail: String?

    public init(_ status: HTTPResponse.Status, _ code: String, _ message: String) {
        self.status = status
        self.code = code
        self.message = message
    }

    /// A wrapped key that failed its AEAD check (wrong context, wrong key or tampered data).
    public var isAuthenticationFailure: Bool { code == "invalid_input" && message == KMSError.authenticationFailureMessage }

    public init(_ error: KMSError) {
        let status: HTTPResponse.Status = switch error.code {
        case .notFound: .notFound
        case .alreadyExists, .conflict, .versionRetired: .conflict
        case .forbidden: .forbidden
        case .invalidInput, .unsupported: .badRequest
        case .unavailable, .rotationRequired: .serviceUnavailable
        default: .internalServerError
        }
        self.init(status, error.code.rawValue, error.message)
        auditDetail = error.detail
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers: HTTPFields = [.contentType: "application/json", .cacheControl: "no-store"]
        if status == .serviceUnavailable || status == .tooManyRequests { headers[.retryAfter] = "1" }
        let body = (try? JSONEncoder().encode(ErrorBody(code: code, message: message))) ?? Data()
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }
}

/// The API v1 routes over a `KMSServerPolicy`. Stateless apart from the rate limiter; safe to share.
public struct KMSServer: Sendable {
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

    private let snapshot: Locked<Snapshot>
    let limiter: RateLimiter
    let logger: Logger
    /// Refusals and other security events, by kind.
    public let events: SecurityEvents
    /// Rotation, retirement, schedules and usage counts.
    public let rotation: RotationManager
    /// The audit log; nil when none is configured (development only).
    public let audit: AuditLog?
    public let metrics: ServerMetrics?

    public init(policy: KMSServerPolicy, rotation: RotationManager, audit: AuditLog? = nil, metrics: ServerMetrics? = nil,
                revocation: RevocationList? = nil, revocationGrace: Duration = .seconds(3600), events: SecurityEvents = SecurityEvents(),
                logger: Logger = Logger(label: "kmsd.api")) {
        snapshot = Locked(Snapshot(policy: policy, revocation: revocation, revocationGrace: revocationGrace))
        self.rotation = rotation
        self.audit = audit
        self.metrics = metrics
        self.events = events
        self.limiter = RateLimiter(ratePerSecond: policy.limits.ratePerSecond, burst: policy.limits.burst)
        self.logger = logger
    }

    /// The current policy; requests read it once at their start.
    public var policy: KMSServerPolicy { snapshot.withLock { $0.policy } }

    /// Replaces the policy and revocation list for requests that start from now on. Check the list with
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

    /// The router with every route of API v1.
    public func router() -> Router<KMSRequestContext> {
        let router = Router(context: KMSRequestContext.self)
        router.get(RouterPath(KMSAPI.Path.live)) { _, _ in try json(HealthBody(status: "ok")) }
        router.get(RouterPath(KMSAPI.Path.ready)) { _, _ in try await ready() }
        router.post("/v1/keys/{name}/datakey") { request, context in
            try await instrumented(.keyAccess, "datakey") { try await datakey(request, context) }
        }
        router.post("/v1/keys/{name}/unwrap") { request, context in
            try await instrumented(.keyAccess, "unwrap") { try await unwrap(request, context) }
        }
        router.post("/v1/keys/{name}/rewrap") { request, context in
            try await instrumented(.keyAccess, "rewrap") { try await rewrap(request, context) }
        }
        router.post("/v1/keys/{name}/unwrap/batch") { request, context in
            try await instrumented(.keyAccess, "unwrap_batch") { try await batchUnwrap(request, context) }
        }
        router.post("/v1/keys/{name}/rewrap/batch") { request, context in
            try await instrumented(.keyAccess, "rewrap_batch") { try await batchRewrap(request, context) }
        }
        router.get("/v1/admin/keys") { request, context in
            try await instrumented(.admin, "list_keys") { try await listKeys(request, context) }
        }
        router.post("/v1/admin/keys") { request, context in
            try await instrumented(.admin, "create_key") { try await createKey(request, context) }
        }
        router.get("/v1/admin/keys/{name}") { request, context in
            try await instrumented(.admin, "show_key") { try await showKey(request, context) }
        }
        router.post("/v1/admin/keys/{name}/rotate") { request, context in
            try await instrumented(.admin, "rotate") { try await rotate(request, context) }
        }
        router.get("/v1/admin/keys/{name}/versions") { request, context in
            try await instrumented(.admin, "versions") { try await versions(request, context) }
        }
        router.post("/v1/admin/keys/{name}/versions/{version}/retire") { request, context in
            try await instrumented(.admin, "retire") { try await retire(request, context) }
        }
        router.get(RouterPath(KMSAPI.Path.adminSchedule)) { request, context in
            try await instrumented(.admin, "schedule") { try await schedule(request, context) }
        }
        router.get("/v1/admin/status") { request, context in
            try await instrumented(.admin, "status") { try await status(request, context) }
        }
        return router
    }

    // MARK: - Authentication and authorization

    /// The verified client certificate's identity, or nil when the connection presented none (plaintext listener
    /// in development, or `client_auth: optional`).
    /// A revoked certificate is refused here (401), after the handshake: the CRL is checked per request, so a reload
    /// applies to connections that are already open too.
    func identity(_ context: KMSRequestContext) async throws -> ClientIdentity? {
        guard let certificate = try? await context.channel.nioSSL_peerCertificate().get() else { return nil }
        let identity: ClientIdentity
        do {
            identity = try ClientIdentity(certificate: certificate, mode: policy.identityMode)
        } catch let refusal as ClientIdentity.Refusal {
            events.record("invalid_identity")
            logger.warning("request refused: no usable identity", metadata: ["security_event": "invalid_identity", "reason": "\(refusal)"])
            throw APIError(.unauthorized, "unauthenticated", refusal.description)
        } catch {
            return nil
        }
        AuditNote.identity(identity.description)
        guard identity.isValid(at: Date()) else {
            events.record("expired_certificate")
            throw APIError(.unauthorized, "unauthenticated", "the client certificate is not valid now (expired or not yet valid)")
        }
        let (revocation, grace) = snapshot.withLock { ($0.revocation, $0.revocationGrace) }
        if let revocation, revocation.covers(issuer: identity.issuer), revocation.isStale(at: Date(), grace: grace) {
            events.record("revocation_unavailable")
            logger.warning("request refused: the CRL is stale", metadata: [
                "security_event": "revocation_unavailable", "identity": "\(identity)",
                "next_update": "\(revocation.nextUpdate?.formatted(.iso8601) ?? "")",
            ])
            throw APIError(.unauthorized, "revocation_unavailable",
                           "kmsd cannot tell whether the client certificate is revoked: the CA's revocation list has expired")
        }
        if let revocation, revocation.isRevoked(serial: identity.serial, issuer: identity.issuer) {
            events.record("revoked_certificate")
            logger.warning("request refused: revoked certificate", metadata: ["security_event": "revoked_certificate", "identity": "\(identity)"])
            throw APIError(.unauthorized, "unauthenticated", "the client certificate has been revoked")
        }
        return identity
    }

    private func rateLimit(_ caller: String) throws {
        AuditNote.identity(caller)
        guard limiter.allow(caller) else {
            events.record("rate_limited")
            logger.warning("request refused: rate limit", metadata: ["security_event": "rate_limited", "identity": "\(caller)"])
            throw APIError(.tooManyRequests, "rate_limited", "too many requests; slow down")
        }
    }

    /// A storage-node request: a certificate identity allowed for the key.
    func authorizeKey(_ request: Request, _ context: KMSRequestContext) async throws -> (KMSServerPolicy.Key, ClientIdentity) {
        guard let identity = try await identity(context) else {
            events.record("unauthenticated")
            throw APIError(.unauthorized, "unauthenticated", "a client certificate is required")
        }
        try rateLimit(identity.description)
        let nameText = context.parameters.get("name") ?? ""
        guard let name = try? KeyName(nameText) else {
            throw APIError(.badRequest, "invalid_input", "'\(nameText.prefix(80))' is not a valid key name")
        }
        AuditNote.key(name)
        let policy = policy
        guard let key = policy.keys[name] else { throw APIError(.notFound, "not_found", "no key named '\(name)'") }
        let issuerAdmitted = policy.nodeIssuers.map { issuers in issuers.contains { $0 == identity.issuer } } ?? true
        guard issuerAdmitted, identity.matches(any: key.allow) else {
            events.record("forbidden")
            logger.warning("request refused: not allowed for key", metadata: [
                "security_event": "forbidden", "identity": "\(identity)", "key": "\(name)",
            ])
            throw APIError(.forbidden, "forbidden", "\(identity) may not use key '\(name)'")
        }
        return (key, identity)
    }

    /// An administrative request: an admin identity, or an admin token (`Authorization: Bearer …`).
    func authorizeAdmin(_ request: Request, _ context: KMSRequestContext) async throws -> String {
        let identity = try await identity(context)
        let policy = policy
        let issuerAdmitted = policy.adminIssuers.map { issuers in issuers.contains { $0 == identity?.issuer } } ?? true
        if let identity, issuerAdmitted, identity.matches(any: policy.adminIdentities) {
            try rateLimit(identity.description)
            return identity.description
        }
        if let header = request.headers[.authorization], header.hasPrefix("Bearer "),
           policy.isAdminToken(String(header.dropFirst("Bearer ".count)))
        {
            try rateLimit("admin-token")
            return "admin-token"
        }
        // A failed attempt spends the caller's budget as a successful one does, so guessing tokens is as slow as using them.
        try rateLimit(identity?.description ?? "admin-unauthenticated")
        events.record("forbidden")
        logger.warning("admin request refused", metadata: ["security_event": "forbidden", "identity": "\(identity?.description ?? "<none>")"])
        if identity == nil && request.headers[.authorization] == nil {
            throw APIError(.unauthorized, "unauthenticated", "an admin certificate or admin token is required")
        }
        throw APIError(.forbidden, "forbidden", "not an administrator")
    }

    // MARK: - Bodies

    /// Reads at most `maxBodyBytes` and decodes strictly: unknown fields and malformed JSON are 400.
    func decode<T: Decodable>(_ type: T.Type, _ request: Request, allowed: Set<String>) async throws -> T {
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: policy.limits.maxBodyBytes)
        } catch {
            events.record("payload_too_large")
            throw APIError(.contentTooLarge, "payload_too_large", "the request body exceeds \(policy.limits.maxBodyBytes) bytes")
        }
        do {
            return try StrictJSON.decode(T.self, from: Data(buffer: buffer), allowed: allowed)
        } catch {
            throw APIError(.badRequest, "invalid_input", error.description)
        }
    }

    func context(_ raw: [String: String]?) throws -> EncryptionContext {
        do {
            return try EncryptionContext(raw ?? [:])
        } catch {
            throw APIError(error)
        }
    }

    func base64(_ text: String, field: String) throws -> [UInt8] {
        guard let data = Data(base64Encoded: text) else {
            throw APIError(.badRequest, "invalid_input", "'\(field)' is not valid base64")
        }
        return [UInt8](data)
    }

    func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
        let data = try JSONEncoder().encode(value)
        return Response(status: status, headers: [.contentType: "application/json", .cacheControl: "no-store"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// Runs a provider call under the request timeout and turns its errors into API errors.
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
            throw APIError(error)
        }
    }
}


/// A value behind a lock, shared by the requests of a server.
final class Locked<Value: Sendable>: Sendable {
    private let storage: Mutex<Value>
    init(_ value: Value) { storage = Mutex(value) }
    func withLock<R>(_ body: (inout Value) -> R) -> R { storage.withLock { body(&$0) } }
}
