import Foundation
import HTTPTypes
public import Hummingbird
import KMSAudit
import KMSCore
public import KMSService
import NIOCore
import Synchronization
public import VaultWire

/// kmsd's Vault-transit front end: the subset of Vault's HTTP API that transit clients use (docs/transit-frontend.md),
/// answered with Vault's shapes and messages, over the service layer. Every authenticated request is one service
/// operation in its own audit scope (the record's `frontend` is `transit`), so authorization per key, usage limits,
/// fail-closed and the audit record are those of kmsd's own API.
///
/// Callers authenticate with a client certificate (checked per request as on the API listener) or a token: one from
/// the configuration or one issued by `auth/cert/login`, bound to an identity. A request with neither is refused
/// before any audit scope opens: an unauthenticated peer is counted (`transit_unauthenticated`), never written to disk.
public struct TransitFrontEnd: HTTPResponder {
    public typealias Context = BasicRequestContext
    static let frontend = "transit"

    let service: KMSService
    private let settings: Settings
    let tokens: TransitTokens
    let metrics: (any TransitRequestMetrics)?
    /// The budget of requests with an unknown token, shared by all of them.
    let unknownTokens = RateLimiter(ratePerSecond: 20, burst: 200)

    /// The transit section in force (a reload replaces it).
    private final class Settings: Sendable {
        let current: Mutex<TransitConfiguration>
        init(_ configuration: TransitConfiguration) { current = Mutex(configuration) }
    }

    public init(service: KMSService, configuration: TransitConfiguration, metrics: (any TransitRequestMetrics)? = nil) {
        self.service = service
        settings = Settings(configuration)
        tokens = TransitTokens(configuration)
        self.metrics = metrics
    }

    /// The transit section in force.
    var configuration: TransitConfiguration { settings.current.withLock { $0 } }

    /// A reload (SIGHUP): the mount, the key mapping and the configured tokens are replaced for requests that start
    /// from now on; a token removed from the file stops working at once; tokens from certificate logins stay.
    public func reload(_ configuration: TransitConfiguration) {
        settings.current.withLock { $0 = configuration }
        tokens.replace(configuration.tokens)
    }

    /// Who is calling: the connection's certificate, a token's entry, or both (the token decides the identity). The
    /// first authentication of a request is kept, so a route and the operations it calls charge the rate limit once.
    final class Caller: Sendable {
        let peer: PeerCertificate?
        let token: String?
        let entry: TransitTokens.Entry?
        private let authenticated = Mutex<(node: KMSService.Node?, administrator: KMSService.Administrator?)>((nil, nil))

        init(peer: PeerCertificate?, token: String?, entry: TransitTokens.Entry?) {
            self.peer = peer
            self.token = token
            self.entry = entry
        }

        func node(_ service: KMSService) throws(ServiceError) -> KMSService.Node {
            if let node = authenticated.withLock({ $0.node }) { return node }
            let node: KMSService.Node
            if let entry { node = try service.authenticateNode(token: entry.identity) } else { node = try service.authenticateNode(peer) }
            authenticated.withLock { $0.node = node }
            return node
        }

        func administrator(_ service: KMSService) throws(ServiceError) -> KMSService.Administrator {
            if let administrator = authenticated.withLock({ $0.administrator }) { return administrator }
            let administrator: KMSService.Administrator
            if let entry {
                administrator = try service.authenticateAdmin(token: entry.identity)
            } else {
                administrator = try service.authenticateAdmin(peer, bearerToken: nil)
            }
            authenticated.withLock { $0.administrator = administrator }
            return administrator
        }
    }

    public func respond(to request: Request, context: BasicRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let head = request.method == .head
        let query = VaultRequestLine.query(request.uri.query)
        let method = VaultRequestLine.method(request.method.rawValue, query: query)
        let route = TransitRoute(method: method, path: request.uri.path, mount: configuration.mount)
        let rendered: (status: Int, body: [UInt8]?)
        switch route.operation {
        case .health:
            rendered = await health(query).rendered(head: head)
        case .sealStatus:
            rendered = await sealStatus().rendered(head: head)
        default:
            rendered = await authenticated(request, route, head: head)
        }
        metrics?.request(route: "transit_" + route.action, status: rendered.status, duration: ContinuousClock.now - started)
        return Self.response(rendered.status, rendered.body)
    }

    /// Every route but health: the caller's credential first (no audit record for a peer without one), then the
    /// route inside its audit scope.
    private func authenticated(_ request: Request, _ route: TransitRoute, head: Bool) async -> (status: Int, body: [UInt8]?) {
        let peer = PeerCertificate.connection
        var token = request.headers[HTTPField.Name("X-Vault-Token")!]
        if token == nil, let bearer = request.headers[.authorization], bearer.hasPrefix("Bearer ") {
            token = String(bearer.dropFirst("Bearer ".count))
        }
        let entry = token.flatMap { tokens.entry($0) }
        if let token, !token.isEmpty, entry == nil {
            service.events.record("transit_invalid_token")
            // Guessing is paced: unknown tokens share one small budget (a client whose token expired gets 429
            // instead of 403 while someone guesses; nobody gets further).
            guard unknownTokens.allow("unknown-token") else { return VaultError(429, "too many requests with unknown tokens; slow down").rendered(head: head) }
            return VaultError.invalidToken.rendered(head: head)
        }
        guard entry != nil || peer != nil else {
            service.events.record("transit_unauthenticated")
            return VaultError.permissionDenied.rendered(head: head)
        }
        let caller = Caller(peer: peer, token: token, entry: entry)
        do {
            let reply = try await service.audited(route.kind, route.action, frontend: Self.frontend, failed: Self.batchFailure) {
                // Who is calling first: no body is read for a caller the rules refuse.
                try authenticate(caller, for: route)
                var parameters = try await parameters(request)
                let reply = try await handle(route, caller, &parameters)
                // Vault's warning for parameters the endpoint did not read.
                return reply.warningUnused(parameters)
            }
            return reply.rendered(head: head)
        } catch {
            // A Vault-shaped refusal comes back as it was thrown; the service's own errors in Vault's words.
            return ((error.underlying as? VaultError) ?? Self.vaultError(error, action: route.action)).rendered(head: head)
        }
    }

    /// A batch answered 4xx/5xx (its items failed) is recorded as failed, after its successes, durably.
    static func batchFailure(_ reply: VaultReply) -> ServiceError? {
        guard case .data(_, _, _, let status) = reply, status >= 400 else { return nil }
        return ServiceError(status >= 500 ? .internal : .badRequest, status >= 500 ? .internal : .invalidInput,
                            "items of the batch failed (HTTP \(status))")
    }

    /// The route's caller: an administrator for key administration, anyone with a certificate for a login (which
    /// checks it itself), a storage node for everything else (so every record names who asked, unsupported paths too).
    private func authenticate(_ caller: Caller, for route: TransitRoute) throws(ServiceError) {
        switch route.operation {
        case .certLogin, .health, .sealStatus: return
        case .createKey, .rotate, .configure: _ = try caller.administrator(service)
        default: _ = try caller.node(service)
        }
    }

    private func parameters(_ request: Request) async throws -> VaultParameters {
        let limit = service.policy.limits.maxBodyBytes
        let body: ByteBuffer
        do {
            // A body declared over the limit is refused at its header, unread (the connection closes after the answer).
            if let declared = request.headers[.contentLength].flatMap({ Int($0) }), declared > limit { throw RequestBodyTooLarge() }
            body = try await request.body.collect(upTo: limit)
        } catch {
            service.events.record("payload_too_large")
            throw VaultError(413, "http: request body too large")
        }
        return try VaultParameters.parse(body: Array(body.readableBytesView), contentType: request.headers[.contentType])
    }

    private func handle(_ route: TransitRoute, _ caller: Caller, _ parameters: inout VaultParameters) async throws -> VaultReply {
        switch route.operation {
        case .lookupSelf: return try lookupSelf(caller)
        case .renewSelf: return try renewSelf(caller)
        case .certLogin: return try login(caller)
        case .listKeys: return try await listKeys(caller)
        case .readKey(let name): return try await readKey(caller, name)
        case .createKey(let name): return try await createKey(caller, name, &parameters)
        case .rotate(let name): return try await rotate(caller, name)
        case .configure(let name): return try await configure(caller, name, &parameters)
        case .encrypt(let name): return try await encrypt(caller, name, &parameters)
        case .decrypt(let name): return try await decrypt(caller, name, &parameters)
        case .rewrap(let name): return try await rewrap(caller, name, &parameters)
        case .datakey(let kind, let name): return try await datakey(caller, kind, name, &parameters)
        case .unsupportedOperation(let path): throw VaultError.unsupportedOperation(path)
        case .unsupported(let path):
            throw VaultError(404, "\(path): unsupported path; kmsd's transit front end does not offer it (see kmsd's docs/transit-frontend.md)")
        case .noRoute(let path): throw VaultError(404, "no handler for route \"\(path)\". route entry not found.")
        case .health, .sealStatus: throw VaultError(500, "internal error")
        }
    }

    // MARK: - Health (unauthenticated, not audited, as kmsd's own health routes)

    /// Vault's health answer; "sealed" while kmsd cannot serve (a provider or the audit log is down), so a client
    /// that watches health (kmsd's own Vault provider, say) fails closed.
    private func health(_ query: [String: String]) async -> VaultReply {
        do {
            return try VaultHealth.reply(query, sealed: !(await isReady()), version: Self.version, clusterName: "kmsd", clusterID: "")
        } catch {
            return .raw(["errors": JSONValue(error.messages)], status: error.status)
        }
    }

    private func sealStatus() async -> VaultReply {
        let ready = await isReady()
        return .raw([
            "type": "kmsd", "initialized": true, "sealed": .bool(!ready), "t": 1, "n": 1, "progress": 0, "nonce": "",
            "version": .string(Self.version), "migration": false, "recovery_seal": false, "storage_type": "kmsd",
            "cluster_name": "kmsd", "cluster_id": "",
        ])
    }

    private func isReady() async -> Bool {
        do {
            try await service.checkReady()
            return true
        } catch {
            return false
        }
    }

    /// What `sys/health` reports as the version.
    static let version = "kmsd-transit"

    // MARK: - Answers

    static func response(_ status: Int, _ body: [UInt8]?) -> Response {
        // A status from a request parameter is checked where it is read; this is the last line against a trap in
        // `HTTPResponse.Status(code:)`.
        let status = (100...599).contains(status) ? status : 500
        var headers: HTTPFields = [.contentType: "application/json", .cacheControl: "no-store"]
        if status == 503 || status == 429 { headers[.retryAfter] = "1" }
        guard let body else { return Response(status: .init(code: status), headers: headers) }
        headers[.contentLength] = String(body.count)
        return Response(status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }

    /// A service error the way Vault would have said it for this action.
    static func vaultError(_ error: any Error, action: String) -> VaultError {
        guard let error = error as? ServiceError else { return VaultError(500, "internal error") }
        switch error.kind {
        case .unauthenticated, .forbidden:
            return .permissionDenied
        case .notFound:
            switch action {
            case "read_key", "list_keys": return .notFound
            case "rotate": return .badRequest("key not found")
            default: return .badRequest("encryption key not found")
            }
        case .badRequest, .conflict:
            if error.isAuthenticationFailure || (error.code == .invalidInput && (action == "decrypt" || action == "rewrap")) {
                return .badRequest(authenticationFailed)
            }
            return .badRequest(error.message)
        case .tooLarge: return VaultError(413, "http: request body too large")
        case .rateLimited: return VaultError(429, "request rate limit exceeded: \(error.message)")
        case .unavailable: return VaultError(503, error.message)
        case .internal: return VaultError(500, "internal error")
        }
    }

    /// Vault's text for a ciphertext that does not open (wrong key, context or associated data; tampered).
    static let authenticationFailed = "cipher: message authentication failed"
}

/// A Vault-shaped refusal, classified for the audit record (403 → authorization, 5xx → …) and answered exactly.
extension VaultError: FrontEndError {
    public var serviceError: ServiceError {
        let message = messages.first ?? "error"
        switch status {
        case 403: return ServiceError(.forbidden, .forbidden, message)
        case 404: return ServiceError(.notFound, .notFound, message)
        case 405: return ServiceError(.badRequest, .unsupported, message)
        case 413: return ServiceError(.tooLarge, .payloadTooLarge, message)
        case 503: return ServiceError(.unavailable, .unavailable, message)
        case 500...: return ServiceError(.internal, .internal, message)
        default: return ServiceError(.badRequest, .invalidInput, message)
        }
    }
}

/// Where the front end counts its answered requests (kmsd's metrics registry): by route label (`transit_<action>`),
/// status and duration.
public protocol TransitRequestMetrics: Sendable {
    func request(route: String, status: Int, duration: Duration)
}

/// What a request asks for, from its method and path.
struct TransitRoute {
    enum Operation: Equatable {
        case health, sealStatus, lookupSelf, renewSelf, certLogin
        case listKeys, readKey(String), createKey(String), rotate(String), configure(String)
        case encrypt(String), decrypt(String), rewrap(String), datakey(String, String)
        case unsupportedOperation(String), unsupported(String), noRoute(String)
    }

    let operation: Operation

    /// Vault transit paths that kmsd deliberately does not offer (docs/transit-frontend.md says why).
    static let unsupportedTransit = VaultRoutes([
        "keys/*/trim", "keys/*/import", "keys/*/import_version", "export/*/*", "export/*/*/*", "backup/*",
        "restore", "restore/*", "hash", "hash/*", "hmac/*", "hmac/*/*", "sign/*", "sign/*/*", "verify/*", "verify/*/*",
        "random", "random/*", "random/*/*", "config/keys", "cache-config", "wrapping_key", "byok-export/*/*",
        "byok-export/*/*/*",
    ])
    static let transitRoutes = VaultRoutes([
        "keys", "keys/", "keys/*", "keys/*/rotate", "keys/*/config", "encrypt/*", "decrypt/*", "rewrap/*", "datakey/*/*",
    ])

    init(method: String, path fullPath: String, mount: String) {
        guard fullPath.hasPrefix("/v1/") else {
            operation = .noRoute(fullPath)
            return
        }
        let path = String(fullPath.dropFirst(4))
        switch (method, path) {
        case ("GET", "sys/health"), ("HEAD", "sys/health"): operation = .health; return
        case ("GET", "sys/seal-status"): operation = .sealStatus; return
        case ("GET", "auth/token/lookup-self"), ("POST", "auth/token/lookup-self"): operation = .lookupSelf; return
        case ("POST", "auth/token/renew-self"): operation = .renewSelf; return
        case ("POST", "auth/cert/login"): operation = .certLogin; return
        case (_, "sys/health"), (_, "sys/seal-status"), (_, "auth/token/lookup-self"), (_, "auth/token/renew-self"), (_, "auth/cert/login"):
            operation = .unsupportedOperation(path); return
        default: break
        }
        guard path == mount || path.hasPrefix(mount + "/") else {
            operation = path.hasPrefix("sys/") || path.hasPrefix("auth/") ? .unsupported(path) : .noRoute(path)
            return
        }
        let rest = path == mount ? [] : path.dropFirst(mount.count + 1).split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard let (pattern, arguments) = Self.transitRoutes.match(rest) else {
            operation = Self.unsupportedTransit.match(rest) != nil ? .unsupported(path) : .noRoute(path)
            return
        }
        switch (method, pattern) {
        case ("LIST", "keys"), ("LIST", "keys/"): operation = .listKeys
        case ("GET", "keys/*"): operation = .readKey(arguments[0])
        case ("POST", "keys/*"): operation = .createKey(arguments[0])
        case ("POST", "keys/*/rotate"): operation = .rotate(arguments[0])
        case ("POST", "keys/*/config"): operation = .configure(arguments[0])
        case ("POST", "encrypt/*"): operation = .encrypt(arguments[0])
        case ("POST", "decrypt/*"): operation = .decrypt(arguments[0])
        case ("POST", "rewrap/*"): operation = .rewrap(arguments[0])
        case ("POST", "datakey/*/*"): operation = .datakey(arguments[0], arguments[1])
        default: operation = .unsupportedOperation(path)  // a path kmsd serves, with another method
        }
    }

    /// The audit action and metrics label.
    var action: String {
        switch operation {
        case .health: "health"
        case .sealStatus: "seal_status"
        case .lookupSelf: "lookup_self"
        case .renewSelf: "renew_self"
        case .certLogin: "login"
        case .listKeys: "list_keys"
        case .readKey: "read_key"
        case .createKey: "create_key"
        case .rotate: "rotate"
        case .configure: "configure_key"
        case .encrypt: "encrypt"
        case .decrypt: "decrypt"
        case .rewrap: "rewrap"
        case .datakey: "datakey"
        case .unsupportedOperation, .unsupported, .noRoute: "unsupported"
        }
    }

    var kind: AuditEvent.Kind {
        switch operation {
        case .lookupSelf, .renewSelf, .certLogin: .authentication
        case .createKey, .rotate, .configure: .admin
        default: .keyAccess
        }
    }
}

/// A request body over the size limit (declared in its header, or read).
private struct RequestBodyTooLarge: Error {}
