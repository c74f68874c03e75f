import Crypto
import Foundation
public import KMSAudit
import KMSCore
import Synchronization

/// What one operation will leave in the audit log, filled in as the operation learns it (caller, key, version,
/// context digest, batch outcomes). Carried in a task-local so the service and its helpers can add to it without
/// passing it along.
final class AuditNote: Sendable {
    @TaskLocal static var current: AuditNote?
    private let state: Mutex<AuditEvent>

    init(_ kind: AuditEvent.Kind, _ action: String, frontend: String? = nil) {
        var event = AuditEvent(kind, action, result: .ok)
        event.frontend = frontend
        state = Mutex(event)
    }

    var event: AuditEvent { state.withLock { $0 } }
    func update(_ body: (inout AuditEvent) -> Void) { state.withLock { body(&$0) } }

    static func identity(_ identity: String) { current?.update { $0.identity = identity } }
    static func key(_ key: KeyName) { current?.update { $0.key = key.rawValue } }
    static func version(_ version: KeyVersion) { current?.update { $0.version = version.rawValue } }
    static func items(_ count: Int) { current?.update { $0.items = count } }
    static func detail(_ detail: String) { current?.update { $0.detail = String(detail.prefix(300)) } }
    static func object(_ id: String) { current?.update { $0.object = String(id.prefix(128)) } }
    static func context(_ context: EncryptionContext) {
        guard current != nil else { return }
        contextDigest(digest(context))
    }
    static func contextDigest(_ digest: String) { current?.update { $0.contextDigest = digest } }
    /// Lower-case hex SHA-256 of the context's canonical encoding.
    static func digest(_ context: EncryptionContext) -> String {
        Hex.encode(SHA256.hash(data: context.canonicalEncoding))
    }
    /// A batch: its items' outcomes (it has no request-wide version or context: items differ).
    static func outcomes(_ outcomes: [AuditEvent.ItemOutcome]) { current?.update { $0.outcomes = outcomes } }
}

extension KMSService {
    /// Runs one operation with its audit record: a success is returned only after its record is durable
    /// (`audit_unavailable` if the log fails closed); a refusal or failure is recorded as what it was
    /// (authentication, authorization, security) without waiting, within the budget of `refusals` (beyond it, one
    /// summary per identity and code per interval). Exactly one record per operation: an operation
    /// called inside a scope a front end opened (around its own decoding) joins that scope. `frontend` names the wire
    /// protocol for front ends other than kmsd's own API (the record's `frontend`). `failed` says of a value the
    /// operation returned that it answers a failure all the same (a front end's batch whose items failed: some items
    /// may have succeeded, so the record is written durably before the answer, as a success's is).
    public func audited<T>(_ kind: AuditEvent.Kind, _ action: String, frontend: String? = nil,
                           failed: (T) -> ServiceError? = { _ in nil }, _ body: () async throws -> T) async throws(ServiceError) -> T
    {
        if AuditNote.current != nil {
            do {
                return try await body()
            } catch {
                throw Self.classified(error)
            }
        }
        let note = AuditNote(kind, action, frontend: frontend)
        do {
            let value = try await AuditNote.$current.withValue(note) { try await body() }
            if let audit {
                do {
                    try await audit.record(failed(value).map { Self.failure(note.event, $0) } ?? note.event)
                } catch {
                    events.record("audit_unavailable")
                    throw ServiceError(.unavailable, .auditUnavailable, "the audit log cannot be written; key operations are refused until it can")
                }
            }
            return value
        } catch {
            let serviceError = Self.classified(error)
            if audit != nil, serviceError.code != .auditUnavailable {
                refusals.submit(Self.failure(note.event, serviceError))
            }
            throw serviceError
        }
    }

    /// The record of an operation that ended in `error`: recorded as what it was (authentication, authorization,
    /// security refusal, or a failure), with its code and message.
    private static func failure(_ recorded: AuditEvent, _ error: ServiceError) -> AuditEvent {
        var event = recorded
        switch error.kind {
        case .unauthenticated:
            event.kind = .authentication
            event.result = .denied
        case .forbidden:
            event.kind = .authorization
            event.result = .denied
        case .rateLimited, .unavailable:
            event.kind = .security
            event.result = .refused
        default:
            event.result = .failed
        }
        event.code = error.code.rawValue
        event.detail = String((error.detail.map { "\(error.message) [\($0)]" } ?? error.message).prefix(300))
        return event
    }

    static func classified(_ error: any Error) -> ServiceError {
        switch error {
        case let error as ServiceError: error
        case let error as KMSError: ServiceError(error)
        case let error as any FrontEndError:
            {
                var classified = error.serviceError
                classified.underlying = error
                return classified
            }()
        default: ServiceError(.internal, .internal, "internal error")
        }
    }
}
