import Hummingbird
import KMSAudit
import KMSService

extension KMSServer {
    /// Runs a route in the service's audit scope (so a body that does not decode, or a caller refused before the
    /// service is called, is recorded as this operation too: exactly one record per request), and records its
    /// metrics. The route's metrics label is the action, with `admin_` in front for admin routes.
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
