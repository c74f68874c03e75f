import CoreMetrics
import Foundation
public import Prometheus
import Synchronization

/// kmsd's metrics, kept in a Prometheus registry of their own (no global bootstrap, so several servers can run in one
/// process) and written through swift-metrics' types. Served as Prometheus text on the metrics listener.
public final class ServerMetrics: Sendable {
    public let registry: PrometheusCollectorRegistry
    let factory: PrometheusMetricsFactory

    public init() {
        registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
            .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(5),
        ]
        self.factory = factory
    }

    /// The request metrics by route (and status), made on first use: making a metric goes through the registry's
    /// lock, name checks and label hashing, which was a measurable share of a request when done per request.
    private struct RouteMetrics {
        var counters: [Int: CoreMetrics.Counter] = [:]
        var timer: CoreMetrics.Timer
    }
    private let routes = Mutex<[String: RouteMetrics]>([:])

    /// One answered request: counted by route and status, its latency recorded by route.
    public func request(route: String, status: Int, duration: Duration) {
        let (counter, timer) = routes.withLock { routes in
            if let metrics = routes[route], let counter = metrics.counters[status] { return (counter, metrics.timer) }
            var metrics = routes[route] ?? RouteMetrics(
                timer: CoreMetrics.Timer(label: "kmsd_request_duration_seconds", dimensions: [("route", route)], factory: factory))
            let counter = metrics.counters[status] ?? CoreMetrics.Counter(
                label: "kmsd_requests_total", dimensions: [("route", route), ("status", String(status))], factory: factory)
            metrics.counters[status] = counter
            routes[route] = metrics
            return (counter, metrics.timer)
        }
        counter.increment()
        timer.recordNanoseconds(Int64(duration.components.seconds) * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }

    /// A refusal or other security event, by kind (`forbidden`, `rate_limited`, `audit_unavailable`, …).
    public func securityEvent(_ kind: String) {
        count("kmsd_security_events_total", [("kind", kind)])
    }

    /// Counts one occurrence of a labelled event. Its counter is made once (refusals come in floods).
    public func count(_ name: String, _ labels: [(String, String)]) {
        let key = ([name] + labels.flatMap { [$0.0, $0.1] }).joined(separator: "\u{0}")
        let counter = counters.withLock { counters in
            if let counter = counters[key] { return counter }
            let counter = CoreMetrics.Counter(label: name, dimensions: labels, factory: factory)
            counters[key] = counter
            return counter
        }
        counter.increment()
    }
    private let counters = Mutex<[String: CoreMetrics.Counter]>([:])

    /// Sets a gauge (state sampled when /metrics is read).
    public func gauge(_ name: String, _ labels: [(String, String)] = [], _ value: Double) {
        CoreMetrics.Gauge(label: name, dimensions: labels, factory: factory).record(value)
    }

    /// The Prometheus text exposition.
    public func text() -> String { registry.emitToString() }
}
