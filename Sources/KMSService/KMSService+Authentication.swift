import Foundation
import KMSCore
import Logging
import Synchronization
public import X509

/// A connection's client certificate, parsed once when its TLS handshake completed; each request authenticates
/// against it (`KMSService.authenticateNode`, `authenticateAdmin`), so validity, revocation and the identity rules
/// in force are checked per request without parsing the certificate again.
public final class PeerCertificate: Sendable {
    /// The peer of the connection whose requests the current task serves (a front end binds it per connection).
    @TaskLocal public static var connection: PeerCertificate?

    private enum Source {
        case certificate(Certificate)
        /// An identity made by a test, without a certificate.
        case identity(ClientIdentity)
    }

    private let source: Source
    /// The identity taken from the certificate under the last mode asked for (`tls.identity` may change at a reload).
    private let extracted = Mutex<(ClientIdentity.Mode, Result<ClientIdentity?, ClientIdentity.Refusal>)?>(nil)

    public init(_ certificate: Certificate) {
        source = .certificate(certificate)
    }

    /// For tests above the TLS layer: a peer whose identity is given, not read from a certificate.
    package init(identity: ClientIdentity) {
        source = .identity(identity)
    }

    /// The identity under `mode`: nil when the certificate yields none, `Refusal` when the rules refuse it.
    func identity(mode: ClientIdentity.Mode) throws(ClientIdentity.Refusal) -> ClientIdentity? {
        guard case .certificate(let certificate) = source else {
            if case .identity(let identity) = source { return identity }
            return nil
        }
        if let (cachedMode, result) = extracted.withLock({ $0 }), cachedMode == mode { return try result.get() }
        let result: Result<ClientIdentity?, ClientIdentity.Refusal>
        do {
            result = .success(try ClientIdentity(certificate: certificate, mode: mode))
        } catch let refusal as ClientIdentity.Refusal {
            result = .failure(refusal)
        } catch {
            result = .success(nil)
        }
        extracted.withLock { $0 = (mode, result) }
        return try result.get()
    }
}

/// Authentication: a front end turns its connection's peer (and, for admin operations, a bearer token) into a
/// `Node` or an `Administrator`, and the operations take only those, so none can run for a caller who was not
/// authenticated for this request. Call these inside the operation's audit scope (`audited`), so that a refusal is
/// recorded as that operation.
extension KMSService {
    /// A storage node: a certificate identity that passed the identity rules, validity and revocation checks now,
    /// within its rate limit. Which keys it may use is checked by each operation.
    public struct Node: Sendable {
        public let identity: ClientIdentity
        fileprivate init(_ identity: ClientIdentity) { self.identity = identity }
    }

    /// An administrator: an admin certificate identity or the holder of an admin token, within its rate limit.
    public struct Administrator: Sendable {
        /// Who, for the journal and the audit log (the identity, or `admin-token`).
        public let actor: String
        fileprivate init(_ actor: String) { self.actor = actor }
    }

    /// The storage node on the other end of `peer`.
    public func authenticateNode(_ peer: PeerCertificate?) throws(ServiceError) -> Node {
        guard let identity = try authenticate(peer) else {
            events.record("unauthenticated")
            throw ServiceError(.unauthenticated, .unauthenticated, "a client certificate is required")
        }
        try rateLimit(identity.description)
        return Node(identity)
    }

    /// The administrator on the other end of `peer`, or holding `bearerToken`.
    public func authenticateAdmin(_ peer: PeerCertificate?, bearerToken: String?) throws(ServiceError) -> Administrator {
        let policy = policy
        let identity = try authenticate(peer)
        if let identity, administers(identity, policy: policy) {
            try rateLimit(identity.description)
            return Administrator(identity.description)
        }
        if let bearerToken, policy.isAdminToken(bearerToken) {
            try rateLimit("admin-token")
            return Administrator("admin-token")
        }
        // A failed attempt spends the caller's budget as a successful one does, so guessing tokens is as slow as using them.
        try rateLimit(identity?.description ?? "admin-unauthenticated")
        if identity == nil && bearerToken == nil {
            refusedAdmin("<none>")
            throw ServiceError(.unauthenticated, .unauthenticated, "an admin certificate or admin token is required")
        }
        throw refusedAdmin(identity?.description ?? "<none>")
    }

    /// One of `admin.identities`, and — when the identity came from a certificate (presented now, or at the login that
    /// issued a token: it has an issuer) — issued by a CA admitted for administrators (`admin.client_ca`).
    func administers(_ identity: ClientIdentity, policy: KMSServerPolicy) -> Bool {
        let issuerAdmitted = identity.issuer == nil || (policy.adminIssuers.map { issuers in issuers.contains { $0 == identity.issuer } } ?? true)
        return issuerAdmitted && identity.matches(any: policy.adminIdentities)
    }

    /// Counts and logs a refused admin request; the error to throw.
    @discardableResult
    private func refusedAdmin(_ identity: String) -> ServiceError {
        events.record("forbidden")
        if refusals.shouldLog(identity, "forbidden") {
            logger.warning("admin request refused", metadata: ["security_event": "forbidden", "identity": "\(identity)"])
        }
        return ServiceError(.forbidden, .forbidden, "not an administrator")
    }

    /// A storage node authenticated by a front end's token (a Vault transit token), bound to `identity` when the token
    /// was configured, or issued at a certificate login. A login's identity is the certificate's (with its issuer,
    /// serial and validity), so it gets the certificate's checks at every use — validity, the CRL in force, and the
    /// node CAs when keys are authorized; a configured token's identity has no issuer and is the operator's word.
    /// Rate-limited as that identity; which keys it may use is checked by each operation, as for a certificate.
    public func authenticateNode(token identity: ClientIdentity) throws(ServiceError) -> Node {
        AuditNote.identity(identity.description)
        if identity.issuer != nil { try checkCertificate(identity) }
        try rateLimit(identity.description)
        return Node(identity)
    }

    /// An administrator by a front end's token bound to `identity`: the identity must be one of `admin.identities`
    /// under the policy in force now, and a login's certificate must also pass the certificate checks and come from
    /// a CA admitted for administrators (`admin.client_ca`), as an admin certificate must.
    public func authenticateAdmin(token identity: ClientIdentity) throws(ServiceError) -> Administrator {
        AuditNote.identity(identity.description)
        let policy = policy
        if identity.issuer != nil { try checkCertificate(identity) }
        try rateLimit(identity.description)
        guard administers(identity, policy: policy) else { throw refusedAdmin(identity.description) }
        return Administrator(identity.description)
    }

    /// The identity of the peer's certificate, checked now: the identity rules (`tls.identity`), the validity
    /// period, the CRL's freshness and revocation. Nil when no certificate was presented. Checked per request, so a
    /// reloaded CRL applies to connections that are already open too.
    private func authenticate(_ peer: PeerCertificate?) throws(ServiceError) -> ClientIdentity? {
        let identity: ClientIdentity
        do {
            guard let found = try peer?.identity(mode: policy.identityMode) else { return nil }
            identity = found
        } catch {
            events.record("invalid_identity")
            if refusals.shouldLog(nil, "invalid_identity") {
                logger.warning("request refused: no usable identity", metadata: ["security_event": "invalid_identity", "reason": "\(error)"])
            }
            throw ServiceError(.unauthenticated, .unauthenticated, error.description)
        }
        AuditNote.identity(identity.description)
        try checkCertificate(identity)
        return identity
    }

    /// The checks a certificate's identity gets at each request: its validity period, the CRL's freshness, and
    /// revocation (by the list in force now, so a reloaded CRL applies to open connections and login tokens too).
    private func checkCertificate(_ identity: ClientIdentity) throws(ServiceError) {
        guard identity.isValid(at: Date()) else {
            events.record("expired_certificate")
            throw ServiceError(.unauthenticated, .unauthenticated, "the client certificate is not valid now (expired or not yet valid)")
        }
        let (revocation, grace) = revocationInForce
        if let revocation, revocation.covers(issuer: identity.issuer), revocation.isStale(at: Date(), grace: grace) {
            events.record("revocation_unavailable")
            if refusals.shouldLog(nil, "revocation_unavailable") {
                logger.warning("request refused: the CRL is stale", metadata: [
                    "security_event": "revocation_unavailable", "identity": "\(identity)",
                    "next_update": "\(revocation.nextUpdate?.formatted(.iso8601) ?? "")",
                ])
            }
            throw ServiceError(.unauthenticated, .revocationUnavailable,
                               "kmsd cannot tell whether the client certificate is revoked: the CA's revocation list has expired")
        }
        if let revocation, revocation.isRevoked(serial: identity.serial, issuer: identity.issuer) {
            events.record("revoked_certificate")
            if refusals.shouldLog(identity.description, "revoked_certificate") {
                logger.warning("request refused: revoked certificate", metadata: ["security_event": "revoked_certificate", "identity": "\(identity)"])
            }
            throw ServiceError(.unauthenticated, .unauthenticated, "the client certificate has been revoked")
        }
    }

    func rateLimit(_ caller: String) throws(ServiceError) {
        AuditNote.identity(caller)
        guard limiter.allow(caller) else {
            // Counted (security events, metrics) and summarized in the audit log, never logged one by one: a caller
            // over its rate could otherwise write a log line per request as fast as it can send them.
            events.record("rate_limited")
            throw ServiceError(.rateLimited, .rateLimited, "too many requests; slow down")
        }
    }

    /// Whether `node` may use the key named `nameText`.
    func authorizeKey(_ node: Node, _ nameText: String, policy: KMSServerPolicy) throws(ServiceError) -> KMSServerPolicy.Key {
        let identity = node.identity
        AuditNote.identity(identity.description)
        guard let name = try? KeyName(nameText) else {
            throw ServiceError(.badRequest, .invalidInput, "'\(nameText.prefix(80))' is not a valid key name")
        }
        AuditNote.key(name)
        guard let key = policy.keys[name], mayUse(node, key, policy: policy) else { throw unknownKey(node, name.rawValue) }
        return key
    }

    /// The refusal of a key `node` may not use, and of one that does not exist: the same answer, so that a
    /// certificate holder cannot tell which names exist by asking. (An administrator lists the keys; a front end that
    /// maps names of its own asks `administers` before it says a name is not configured.)
    public func unknownKey(_ node: Node, _ name: String) -> ServiceError {
        events.record("forbidden")
        if refusals.shouldLog(node.identity.description, "forbidden") {
            logger.warning("request refused: not allowed for key", metadata: [
                "security_event": "forbidden", "identity": "\(node.identity)", "key": "\(name.prefix(64))",
            ])
        }
        return ServiceError(.forbidden, .forbidden, "\(node.identity) may not use key '\(name.prefix(64))'")
    }

    /// Whether the node's identity is also an administrator's (who may learn which keys exist). Records nothing.
    public func administers(_ node: Node) -> Bool {
        administers(node.identity, policy: policy)
    }

    /// The node's identity matches the key's allow list, and one from a certificate (presented now, or at the login
    /// that issued a token: it has an issuer) came from an admitted node CA. A configured token's identity has none.
    func mayUse(_ node: Node, _ key: KMSServerPolicy.Key, policy: KMSServerPolicy) -> Bool {
        let identity = node.identity
        let issuerAdmitted = identity.issuer == nil || (policy.nodeIssuers.map { issuers in issuers.contains { $0 == identity.issuer } } ?? true)
        return issuerAdmitted && identity.matches(any: key.allow)
    }
}
