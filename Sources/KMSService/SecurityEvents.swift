import Synchronization

/// Counts of refusals and other security events by kind (`forbidden`, `unauthenticated`, `rate_limited`,
/// `revoked_certificate`, `connection_limit`, `payload_too_large`, `provider_unavailable`), reported in the admin
/// status and, once metrics exist, as `kmsd_security_events_total{kind}`.
public final class SecurityEvents: Sendable {
    private let counts = Mutex<[String: Int]>([:])
    private let onRecord: @Sendable (String) -> Void

    /// `onRecord` also sees every event (the metrics counter `kmsd_security_events_total{kind}`).
    public init(onRecord: @escaping @Sendable (String) -> Void = { _ in }) {
        self.onRecord = onRecord
    }

    public func record(_ kind: String) {
        counts.withLock { $0[kind, default: 0] += 1 }
        onRecord(kind)
    }

    public var snapshot: [String: Int] { counts.withLock { $0 } }
}
