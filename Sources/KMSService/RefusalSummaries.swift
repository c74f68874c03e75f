public import KMSAudit
import KMSCore
import Synchronization

/// Refused and failed operations, recorded within a budget. Each one counts at once (security events, metrics), and
/// the first `perKey` of one identity and code in an interval get an audit record each; beyond that they are counted,
/// and `flush` writes one summary record per identity and code at the end of the interval ("N more refusals …"). So
/// a certificate holder who repeats a refused request as fast as it can costs the audit log a bounded number of
/// records per interval, not one fsynced record each, and the audit log (failing closed) cannot be filled through it.
/// Successful operations are always recorded one by one. At most `maxKeys` identity–code pairs are told apart per
/// interval; refusals of further pairs in the same interval are summed in one record.
public final class RefusalSummaries: IntervalSummary {
    struct Key: Hashable {
        let identity: String?
        let code: String
    }
    struct Entry {
        var recorded = 0
        var suppressed = 0
        var last: AuditEvent
    }
    private struct State {
        var entries: [Key: Entry] = [:]
        var others: Entry?
        /// Log lines of each identity and kind in this interval.
        var logged: [Key: Int] = [:]
    }
    private let state = Mutex(State())
    private let audit: AuditLog?
    public let interval: Duration
    let perKey: Int
    let maxKeys: Int

    public init(audit: AuditLog?, interval: Duration = .seconds(10), perKey: Int = 20, maxKeys: Int = 1000) {
        self.audit = audit
        self.interval = interval
        self.perKey = perKey
        self.maxKeys = maxKeys
    }

    /// Records `event` (a refusal or failure) now when its identity and code are within their budget for this
    /// interval; otherwise counts it for the interval's summary.
    func submit(_ event: AuditEvent) {
        guard let audit else { return }
        let key = Key(identity: event.identity, code: event.code ?? "failed")
        let recordNow = state.withLock { state -> Bool in
            if var entry = state.entries[key] {
                entry.last = event
                if entry.recorded < perKey { entry.recorded += 1 } else { entry.suppressed += 1 }
                state.entries[key] = entry
                return entry.suppressed == 0
            }
            guard state.entries.count < maxKeys else {
                var others = state.others ?? Entry(last: event)
                others.suppressed += 1
                others.last = event
                state.others = others
                return false
            }
            state.entries[key] = Entry(recorded: 1, last: event)
            return true
        }
        if recordNow { audit.submit(event) }
    }

    /// Whether a refusal's log line may be written: the first `perKey` of one identity and kind in an interval are,
    /// the rest only counted (their security event and the audit summary say how many), so that no caller can make
    /// kmsd write a log line per request without bound.
    public func shouldLog(_ identity: String?, _ kind: String) -> Bool {
        let key = Key(identity: identity, code: kind)
        return state.withLock { state in
            guard let count = state.logged[key] else {
                guard state.logged.count < maxKeys else { return false }
                state.logged[key] = 1
                return true
            }
            guard count < perKey else { return false }
            state.logged[key] = count + 1
            return true
        }
    }

    /// Writes one summary record per identity and code whose refusals went over the budget since the last flush,
    /// and starts a new interval.
    public func flush() {
        let (entries, others) = state.withLock { state in
            defer { state = State() }
            return (state.entries, state.others)
        }
        guard let audit else { return }
        let period = DurationText.format(interval.seconds)
        for (key, entry) in entries.sorted(by: { ($0.key.identity ?? "", $0.key.code) < ($1.key.identity ?? "", $1.key.code) })
        where entry.suppressed > 0 {
            audit.submit(summary(entry, of: "\(key.code) of \(key.identity ?? "an unauthenticated caller")", period: period))
        }
        if let others {
            audit.submit(summary(others, of: "of other identities and codes (more than \(maxKeys) in one interval)", period: period))
        }
    }

    private func summary(_ entry: Entry, of what: String, period: String) -> AuditEvent {
        var event = entry.last
        event.items = entry.suppressed
        event.detail = String("\(entry.suppressed) more refusal(s) \(what) in the last \(period), beyond \(perKey) recorded one by one; last: \(entry.last.action)\(entry.last.key.map { " on \($0)" } ?? "")".prefix(300))
        event.object = nil
        event.outcomes = nil
        event.contextDigest = nil
        return event
    }

}

/// A summary the audit log gets once an interval (failed handshakes, refusals beyond their budget): `flush` writes
/// what the interval gathered and starts the next.
public protocol IntervalSummary: Sendable {
    var interval: Duration { get }
    func flush()
}

extension IntervalSummary {
    /// Flushes every `interval` until cancelled, and once more at the end.
    public func run() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            flush()
        }
        flush()
    }
}
