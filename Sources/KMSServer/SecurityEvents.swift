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

/// Caps concurrent connections: one over the limit is closed as soon as it is accepted.
public final class ConnectionLimit: Sendable {
    public let maximum: Int
    private let open = Atomic<Int>(0)
    let events: SecurityEvents

    public init(maximum: Int, events: SecurityEvents) {
        self.maximum = maximum
        self.events = events
    }

    public var current: Int { open.load(ordering: .relaxed) }

    /// Counts the connection; false when it is over the limit (the caller closes it).
    func admit() -> Bool {
        if open.add(1, ordering: .relaxed).newValue > maximum {
            open.subtract(1, ordering: .relaxed)
            events.record("connection_limit")
            return false
        }
        return true
    }

    func release() {
        open.subtract(1, ordering: .relaxed)
    }
}
