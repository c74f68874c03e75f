import Foundation
public import Hummingbird
import HummingbirdCore
import KMSAPI
public import KMSCore
public import KMSRotation
public import KMSAudit
public import KMSService
public import Logging
public import NIOCore
import NIOFoundationCompat
import NIOSSL
import SwiftASN1
import X509

/// A request's context: the connection it came on (for the peer certificate).
public struct KMSRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// kmsd's own API is a front end: a service error is answered as `{"error":{"code","message"}}` with its HTTP status;
/// 503 and 429 carry `Retry-After`.
public typealias APIError = ServiceError

extension ServiceError: HTTPResponseError {
    /// An error of this front end's own (the body, the path), by its HTTP status.
    public init(_ status: HTTPResponse.Status, _ code: KMSError.Code, _ message: String) {
        let kind: Kind = switch status {
        case .unauthorized: .unauthenticated
        case .forbidden: .forbidden
        case .notFound: .notFound
        case .conflict: .conflict
        case .contentTooLarge: .tooLarge
        case .tooManyRequests: .rateLimited
        case .serviceUnavailable: .unavailable
        case .badRequest: .badRequest
        default: .internal
        }
        self.init(kind, code, message)
    }

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
                logger: Logger = Logger(label: "kmsd.api")) {
        service = KMSService(policy: policy, rotation: rotation, audit: audit, revocation: revocation, revocationGrace: revocationGrace,
                             events: events, logger: logger)
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

    /// The router with every route of API v1.
    public func router() -> Router<KMSRequestContext> {
        let router = Router(context: KMSRequestContext.self)
        let name = KMSAPI.Path.keyParameter
        router.get(RouterPath(KMSAPI.Path.live)) { _, _ in try json(HealthBody(status: "ok")) }
        router.get(RouterPath(KMSAPI.Path.ready)) { _, _ in try await ready() }
        router.post(RouterPath(KMSAPI.Path.datakey(name))) { request, context in
            try await instrumented(.keyAccess, "datakey") { try await datakey(request, context) }
        }
        router.post(RouterPath(KMSAPI.Path.unwrap(name))) { request, context in
            try await instrumented(.keyAccess, "unwrap") { try await unwrap(request, context) }
        }
        router.post(RouterPath(KMSAPI.Path.rewrap(name))) { request, context in
            try await instrumented(.keyAccess, "rewrap") { try await rewrap(request, context) }
        }
        router.post(RouterPath(KMSAPI.Path.batchUnwrap(name))) { request, context in
            try await instrumented(.keyAccess, "unwrap_batch") { try await batchUnwrap(request, context) }
        }
        router.post(RouterPath(KMSAPI.Path.batchRewrap(name))) { request, context in
            try await instrumented(.keyAccess, "rewrap_batch") { try await batchRewrap(request, context) }
        }
        router.get(RouterPath(KMSAPI.Path.adminKeys)) { request, context in
            try await instrumented(.admin, "list_keys") { try await listKeys(request, context) }
        }
        router.post(RouterPath(KMSAPI.Path.adminKeys)) { request, context in
            try await instrumented(.admin, "create_key") { try await createKey(request, context) }
        }
        router.get(RouterPath(KMSAPI.Path.adminKey(name))) { request, context in
            try await instrumented(.admin, "show_key") { try await showKey(request, context) }
        }
        router.post(RouterPath(KMSAPI.Path.adminRotate(name))) { request, context in
            try await instrumented(.admin, "rotate") { try await rotate(request, context) }
        }
        router.get(RouterPath(KMSAPI.Path.adminVersions(name))) { request, context in
            try await instrumented(.admin, "versions") { try await versions(request, context) }
        }
        router.post(RouterPath(KMSAPI.Path.adminRetire(name, version: KMSAPI.Path.versionParameter))) { request, context in
            try await instrumented(.admin, "retire") { try await retire(request, context) }
        }
        router.get(RouterPath(KMSAPI.Path.adminSchedule)) { request, context in
            try await instrumented(.admin, "schedule") { try await schedule(request, context) }
        }
        router.get(RouterPath(KMSAPI.Path.adminStatus)) { request, context in
            try await instrumented(.admin, "status") { try await status(request, context) }
        }
        return router
    }

    // MARK: - The caller

    /// The caller: the verified client certificate's identity (checked by the service: identity rules, validity,
    /// revocation), and the bearer token if one was sent.
    func caller(_ request: Request, _ context: KMSRequestContext) async throws -> KMSService.Caller {
        var certificate: Certificate?
        if let peer = try? await context.channel.nioSSL_peerCertificate().get(), let der = try? peer.toDERBytes() {
            certificate = try? Certificate(derEncoded: der)
        }
        let identity = try service.authenticate(certificate)
        var token: String?
        if let header = request.headers[.authorization], header.hasPrefix("Bearer ") { token = String(header.dropFirst("Bearer ".count)) }
        return KMSService.Caller(identity: identity, bearerToken: token)
    }

    // MARK: - Bodies

    /// Reads at most `maxBodyBytes` and decodes strictly: unknown fields and malformed JSON are 400.
    func decode<T: StrictRequest>(_ type: T.Type, _ request: Request) async throws -> T {
        let limit = policy.limits.maxBodyBytes
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: limit)
        } catch {
            events.record("payload_too_large")
            throw APIError(.contentTooLarge, .payloadTooLarge, "the request body exceeds \(limit) bytes")
        }
        do {
            return try StrictJSON.decode(T.self, from: Data(buffer: buffer))
        } catch {
            throw APIError(.badRequest, .invalidInput, error.description)
        }
    }

    func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
        let data = try JSONEncoder().encode(value)
        return Response(status: status, headers: [.contentType: "application/json", .cacheControl: "no-store"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
