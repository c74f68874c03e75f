import Hummingbird
import KMSAudit
import KMSCore
import KMSService

/// The node or admin routes: each with the audit action it is recorded as. `register` puts them in a route group
/// whose middleware (`RouteScope`) opens the route's audit scope and then lets Hummingbird make the group's context
/// (`Context`), which authenticates the caller: a refused caller is recorded as that operation, and no handler runs.
struct RouteTable<Context: ChildRequestContext> where Context.ParentContext == KMSRequestContext {
    typealias Handler = @Sendable (Request, Context) async throws -> Response
    let kind: AuditEvent.Kind
    private var routes: [(method: HTTPRequest.Method, path: RouterPath, action: String, handler: Handler)] = []

    init(kind: AuditEvent.Kind) {
        self.kind = kind
    }

    mutating func add(_ method: HTTPRequest.Method, _ path: String, _ action: String, _ handler: @escaping Handler) {
        routes.append((method, RouterPath(path), action, handler))
    }

    func register(on router: Router<KMSRequestContext>, server: KMSServer) {
        let actions = Dictionary(uniqueKeysWithValues: routes.map { (RouteScope.key($0.method, $0.path.description), $0.action) })
        let group = router.group()
            .add(middleware: RouteScope(server: server, kind: kind, actions: actions))
            .group(context: Context.self)
        for route in routes {
            group.on(route.path, method: route.method, use: route.handler)
        }
    }
}

/// Around each route of a group: the audit scope and metrics of its action, and what the group's context needs to
/// authenticate the caller (the service, the bearer token).
struct RouteScope: RouterMiddleware {
    typealias Context = KMSRequestContext
    let server: KMSServer
    let kind: AuditEvent.Kind
    /// Action by method and route path.
    let actions: [String: String]

    static func key(_ method: HTTPRequest.Method, _ path: String) -> String { "\(method.rawValue) \(path)" }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let action = actions[Self.key(request.method, context.endpointPath ?? "")] else {
            // Unreachable: the middleware is on the routes it has actions for. Fail closed rather than serve unaudited.
            throw APIError(.internal, .internal, "the route has no audit action")
        }
        var context = context
        context.service = server.service
        if let header = request.headers[.authorization], header.hasPrefix("Bearer ") {
            context.bearerToken = String(header.dropFirst("Bearer ".count))
        }
        return try await server.instrumented(kind, action) { try await next(request, context) }
    }
}

extension KMSServer {
    /// Runs a route in the service's audit scope (so a caller refused while its context is made, or a body that does
    /// not decode, is recorded as this operation too: exactly one record per request), and records its metrics. The
    /// route's metrics label is the action, with `admin_` in front for admin routes.
    func instrumented(_ kind: AuditEvent.Kind, _ action: String, _ handler: () async throws -> Response) async throws -> Response {
        let route = kind == .admin ? "admin_" + action : action
        let started = ContinuousClock.now
        do {
            let response = try await service.audited(kind, action) { try await handler() }
            metrics?.request(route: route, status: Int(response.status.code), duration: ContinuousClock.now - started)
            return response
        } catch {
            metrics?.request(route: route, status: Int(error.status.code), duration: ContinuousClock.now - started)
            throw error
        }
    }
}
