import Crypto
import Foundation
import Hummingbird
import KMSAudit
import KMSCore
import Synchronization

/// What one request will leave in the audit log, filled in as the request learns it (caller, key, version,
/// context digest). Carried in a task-local so the routes and their helpers can add to it without passing it along.
final class AuditNote: Sendable {
    @TaskLocal static var current: AuditNote?
    private let state: Mutex<AuditEvent>

    init(_ kind: AuditEvent.Kind, _ action: String) {
        state = Mutex(AuditEvent(kind, action, result: .ok))
    }

    var event: AuditEvent { state.withLock { $0 } }
    func update(_ body: (inout AuditEvent) -> Void) { state.withLock { body(&$0) } }

    static func identity(_ identity: String) { current?.update { $0.identity = identity } }
    static func key(_ key: KeyName) { current?.update { $0.key = key.rawValue } }
    static func version(_ version: KeyVersion) { current?.update { $0.version = version.rawValue } }
    static func items(_ count: Int) { current?.update { $0.items = count } }
    static func detail(_ detail: String) { current?.update { $0.detail = String(detail.prefix(300)) } }
    static func context(_ context: EncryptionContext) {
        guard current != nil else { return }
        let digest = digest(context)
        current?.update { $0.contextDigest = digest }
    }
    /// Lower-case hex SHA-256 of the context's canonical encoding.
    static func digest(_ context: EncryptionContext) -> String {
        SHA256.hash(data: context.canonicalEncoding).map { String(format: "%02x", $0) }.joined()
    }
    /// A batch: its items' outcomes, and no request-wide version or context (items differ).
    static func outcomes(_ outcomes: [AuditEvent.ItemOutcome]) {
        current?.update { event in
            event.outcomes = outcomes
            event.version = nil
            event.contextDigest = nil
        }
    }
}

extension KMSServer {
    /// Runs a route with its audit record and its metrics: a success is answered only after its record is durable
    /// (503 `audit_unavailable` if the log fails closed); a refusal or failure is recorded as what it was
    /// (authentication, authorization, security) without waiting. Exactly one record per request.
    /// The route's metrics label is the action, with `admin_` in front for admin routes.
    func instrumented(_ kind: AuditEvent.Kind, _ action: String, _ handler: () async throws -> Response) async throws -> Response {
        let route = kind == .admin ? "admin_" + action : action
        let started = ContinuousClock.now
        let note = AuditNote(kind, action)
        do {
            let response = try await AuditNote.$current.withValue(note) { try await handler() }
            if let audit {
                do {
                    try await audit.record(note.event)
                } catch {
                    events.record("audit_unavailable")
                    throw APIError(.serviceUnavailable, "audit_unavailable", "the audit log cannot be written; key operations are refused until it can")
                }
            }
            metrics?.request(route: route, status: Int(response.status.code), duration: ContinuousClock.now - started)
            return response
        } catch {
            let apiError = error as? APIError ?? APIError(.internalServerError, "internal", "internal error")
            if let audit, apiError.code != "audit_unavailable" {
                var event = note.event
                switch apiError.status {
                case .unauthorized:
                    event.kind = .authentication
                    event.result = .denied
                case .forbidden:
                    event.kind = .authorization
                    event.result = .denied
                case .tooManyRequests, .serviceUnavailable:
                    event.kind = .security
                    event.result = .refused
                default:
                    event.result = .failed
                }
                event.code = apiError.code
                event.detail = String((apiError.auditDetail.map { "\(apiError.message) [\($0)]" } ?? apiError.message).prefix(300))
                audit.submit(event)
            }
            metrics?.request(route: route, status: Int(apiError.status.code), duration: ContinuousClock.now - started)
            throw error
        }
    }
}
