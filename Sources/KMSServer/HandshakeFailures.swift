public import KMSAudit
import KMSCore
public import KMSService
import Synchronization

/// Failed TLS handshakes, summarized. Each one is counted at once (`tls_handshake_failed`, a security event and
/// metric); the audit log gets at most one record per source address per interval ("N failed TLS handshakes from A
/// in the last 10 s"), written by `flush`, so that a flood of bare connects cannot fill the disk or the audit queue.
/// At most `maxSources` addresses are told apart per interval; failures from further addresses in the same interval
/// are summed in one record from "other addresses".
public final class HandshakeFailures: IntervalSummary {
    private struct Entry {
        var count = 0
        var lastError = ""
    }
    private struct State {
        var bySource: [String: Entry] = [:]
        var others = Entry()
    }
    private let state = Mutex(State())
    private let audit: AuditLog?
    private let events: SecurityEvents
    public let interval: Duration
    let maxSources: Int

    public init(audit: AuditLog?, events: SecurityEvents, interval: Duration, maxSources: Int = 1000) {
        self.audit = audit
        self.events = events
        self.interval = interval
        self.maxSources = maxSources
    }

    /// One failed handshake from `source`.
    public func record(source: String, error: String) {
        events.record("tls_handshake_failed")
        state.withLock { state in
            if state.bySource[source] != nil || state.bySource.count < maxSources {
                state.bySource[source, default: Entry()].count += 1
                state.bySource[source]?.lastError = error
            } else {
                state.others.count += 1
                state.others.lastError = error
            }
        }
    }

    /// Writes one summary record per source address seen since the last flush, and starts a new interval.
    public func flush() {
        let (sources, others) = state.withLock { state in
            defer { state = State() }
            return (state.bySource, state.others)
        }
        guard let audit else { return }
        let period = DurationText.format(interval.seconds)
        for (source, entry) in sources.sorted(by: { $0.key < $1.key }) {
            audit.submit(summary(entry, from: "from \(source)", period: period))
        }
        if others.count > 0 {
            audit.submit(summary(others, from: "from other addresses (more than \(maxSources) in one interval)", period: period))
        }
    }

    private func summary(_ entry: Entry, from: String, period: String) -> AuditEvent {
        AuditEvent(.authentication, "tls_handshake", result: .denied, identity: nil, items: entry.count, code: "handshake_failed",
                   detail: String("\(entry.count) failed TLS handshake(s) \(from) in the last \(period); last: \(entry.lastError)".prefix(300)))
    }
}
