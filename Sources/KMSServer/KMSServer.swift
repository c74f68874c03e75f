import Foundation
public import Hummingbird
import HummingbirdCore
import KMSAPI
import KMSCore
public import KMSRotation
public import KMSAudit
public import KMSService
public import Logging
import NIOCore
import NIOFoundationCompat

/// A request's context: the connection's client certificate (parsed once per connection, at its handshake), and,
/// on the node and admin routes, the service that authenticates it (set by `KMSServer.RouteScope`).
public struct KMSRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let peer: PeerCertificate?
    var service: KMSService?
    var bearerToken: String?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        peer = PeerCertificate.connection
    }
}

/// The context of the node or admin routes: it exists only once the caller was authenticated for this request as a
/// `Caller` (a storage node by its certificate, an administrator by an admin certificate or token), so no handler on
/// those routes can run for anyone else.
public struct AuthenticatedRequestContext<Caller: AuthenticatedCaller>: ChildRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let caller: Caller

    public init(context: KMSRequestContext) throws {
        guard let service = context.service else { throw APIError(.internal, .internal, "the route has no service") }
        caller = try Caller.authenticate(context, by: service)
        coreContext = context.coreContext
    }
}

/// Who a route group admits, and how the service authenticates them from a request's context.
public protocol AuthenticatedCaller: Sendable {
    static func authenticate(_ context: KMSRequestContext, by service: KMSService) throws -> Self
}

extension KMSService.Node: AuthenticatedCaller {
    public static func authenticate(_ context: KMSRequestContext, by service: KMSService) throws -> Self {
        try service.authenticateNode(context.peer)
    }
}

extension KMSService.Administrator: AuthenticatedCaller {
    public static func authenticate(_ context: KMSRequestContext, by service: KMSService) throws -> Self {
        try service.authenticateAdmin(context.peer, bearerToken: context.bearerToken)
    }
}

public typealias NodeRequestContext = AuthenticatedRequestContext<KMSService.Node>
public typealias AdminRequestContext = AuthenticatedRequestContext<KMSService.Administrator>

/// kmsd's own API is a front end: a service error is answered as `{"error":{"code","message"}}` with its HTTP status;
/// 503 and 429 carry `Retry-After`.
public typealias APIError = ServiceError

extension ServiceError: HTTPResponseError {
    public var status: HTTPResponse.Status {
        switch kind {
        case .badRequest: .badRequest
        case .unauthenticated: .unauthorized
        case .forbidden: .forbidden
        case .notFound: .notFound
        case .conflict: .conflict
        case .tooLarge: .contentTooLarge
        case .rateLimited: .tooManyRequests
        case .unavailable: .serviceUnavailable
        case .internal: .internalServerError
        }
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers: HTTPFields = [.contentType: "application/json", .cacheControl: "no-store"]
        if status == .serviceUnavailable || status == .tooManyRequests { headers[.retryAfter] = "1" }
        let body = (try? JSONEncoder().encode(ErrorBody(code: code.rawValue, message: message))) ?? Data()
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }
}

/// The API v1 routes over the service layer: each route reads the caller's certificate and its path, hands the
/// service a closure that decodes its body, and turns the result into JSON. Safe to share.
public struct KMSServer: Sendable {
    public typealias Snapshot = KMSService.Snapshot
    public typealias RevocationRollback = KMSService.RevocationRollback

    /// The operations, under this and every other front end.
    public let service: KMSService
    public let metrics: ServerMetrics?

    public init(policy: KMSServerPolicy, rotation: RotationManager, audit: AuditLog? = nil, metrics: ServerMetrics? = nil,
                revocation: RevocationList? = nil, revocationGrace: Duration = .seconds(3600), events: SecurityEvents = SecurityEvents(),
                refusalSummaryInterval: Duration = .seconds(10), logger: Logger = Logger(label: "kmsd.api")) {
        service = KMSService(policy: policy, rotation: rotation, audit: audit, revocation: revocation, revocationGrace: revocationGrace,
                             events: events, refusalSummaryInterval: refusalSummaryInterval, logger: logger)
        self.metrics = metrics
    }

    public var events: SecurityEvents { service.events }
    public var rotation: RotationManager { service.rotation }
    public var audit: AuditLog? { service.audit }
    public var policy: KMSServerPolicy { service.policy }

    /// Replaces the policy and revocation list for requests that start from now on.
    public func reload(_ new: Snapshot) { service.reload(new) }
    public func checkNotRollback(_ offered: RevocationList?) throws { try service.checkNotRollback(offered) }
    @discardableResult
    public func replaceRevocation(_ fresh: RevocationList) throws -> Bool { try service.replaceRevocation(fresh) }

    /// The router with every route of API v1. The node and admin routes live in groups whose context is made by
    /// authenticating the caller (`NodeRequestContext`, `AdminRequestContext`), inside the route's audit scope.
    public func router() -> Router<KMSRequestContext> {
        let router = Router(context: KMSRequestContext.self)
        let name = KMSAPI.Path.keyParameter
        router.get(RouterPath(KMSAPI.Path.live)) { _, _ in try json(HealthBody(status: "ok")) }
        router.get(RouterPath(KMSAPI.Path.ready)) { _, _ in try await ready() }

        var nodes = RouteTable<NodeRequestContext>(kind: .keyAccess)
        nodes.add(.post, KMSAPI.Path.datakey(name), "datakey", datakey)
        nodes.add(.post, KMSAPI.Path.unwrap(name), "unwrap", unwrap)
        nodes.add(.post, KMSAPI.Path.rewrap(name), "rewrap", rewrap)
        nodes.add(.post, KMSAPI.Path.batchUnwrap(name), "unwrap_batch", batchUnwrap)
        nodes.add(.post, KMSAPI.Path.batchRewrap(name), "rewrap_batch", batchRewrap)
        nodes.register(on: router, server: self)

        var admins = RouteTable<AdminRequestContext>(kind: .admin)
        admins.add(.get, KMSAPI.Path.adminKeys, "list_keys", listKeys)
        admins.add(.post, KMSAPI.Path.adminKeys, "create_key", createKey)
        admins.add(.get, KMSAPI.Path.adminKey(name), "show_key", showKey)
        admins.add(.post, KMSAPI.Path.adminRotate(name), "rotate", rotate)
        admins.add(.get, KMSAPI.Path.adminVersions(name), "versions", versions)
        admins.add(.post, KMSAPI.Path.adminRetire(name, version: KMSAPI.Path.versionParameter), "retire", retire)
        admins.add(.get, KMSAPI.Path.adminSchedule, "schedule", schedule)
        admins.add(.get, KMSAPI.Path.adminStatus, "status", status)
        let object = KMSAPI.Path.objectParameter
        admins.add(.get, KMSAPI.Path.adminObjects, "kmip.list_objects", listObjects)
        admins.add(.get, KMSAPI.Path.adminObject(object), "kmip.show_object", showObject)
        admins.add(.post, KMSAPI.Path.adminObjectRevoke(object), "kmip.revoke_object", revokeObject)
        admins.add(.post, KMSAPI.Path.adminObjectDestroy(object), "kmip.destroy_object", destroyObject)
        admins.register(on: router, server: self)
        return router
    }

    // MARK: - Bodies

    /// Reads at most `maxBodyBytes` and decodes strictly: unknown fields and malformed JSON are 400.
    func decode<T: StrictRequest>(_ type: T.Type, _ request: Request) async throws -> T {
        let limit = policy.limits.maxBodyBytes
        let buffer: ByteBuffer
        do {
            // A body declared over the limit is refused at its header, unread (the connection closes after the answer).
            if let declared = request.headers[.contentLength].flatMap({ Int($0) }), declared > limit { throw RequestBodyTooLarge() }
            buffer = try await request.body.collect(upTo: limit)
        } catch {
            events.record("payload_too_large")
            throw APIError(.tooLarge, .payloadTooLarge, "the request body exceeds \(limit) bytes")
        }
        do {
            return try StrictJSON.decode(T.self, from: Array(buffer.readableBytesView))
        } catch {
            throw APIError(.badRequest, .invalidInput, error.description)
        }
    }

    func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
        json(bytes: try JSONEncoder().encode(value), status: status)
    }

    func json(bytes: some Sequence<UInt8>, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json", .cacheControl: "no-store"],
                 body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}

/// A request body over the size limit (declared in its header, or read).
private struct RequestBodyTooLarge: Error {}
