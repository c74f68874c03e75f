import Foundation
import KMSAudit
import KMSCore
import KMSRotation
import KMSState
import KMSServer
import KMSService
import Logging
import ServiceLifecycle
import Synchronization

/// Fills the gauges that are read from kmsd's own state when /metrics is scraped: the audit log's queue and fsync,
/// and per key the latest version's age, the seconds to its next rotation and the wraps per version. Nothing here
/// calls a backend (provider gauges come from `ProviderWatch`, which polls anyway).
enum MetricsSampler {
    static func sample(_ server: KMSServer, connections: ConnectionLimit? = nil, into metrics: ServerMetrics) async {
        if let connections {
            metrics.gauge("kmsd_connections_open", [], Double(connections.current))
            metrics.gauge("kmsd_connections_unauthenticated", [], Double(connections.currentUnauthenticated))
            metrics.gauge("kmsd_connection_sources", [], Double(connections.sources))
        }
        if let audit = server.audit {
            let statistics = audit.statistics
            metrics.gauge("kmsd_audit_queue_depth", [], Double(statistics.queueDepth))
            metrics.gauge("kmsd_audit_fsync_seconds_last", [], statistics.lastFsyncSeconds)
            metrics.gauge("kmsd_audit_records", [], Double(statistics.records))
            metrics.gauge("kmsd_audit_refused", [], Double(statistics.refused))
            metrics.gauge("kmsd_audit_writable", [], statistics.writable ? 1 : 0)
            if statistics.batches > 0 {
                metrics.gauge("kmsd_audit_fsync_seconds_mean", [], statistics.totalFsyncSeconds / Double(statistics.batches))
            }
        }
        let now = server.rotation.clock()
        for entry in await server.rotation.schedule(readBackend: false) {
            let labels = [("key", entry.key.rawValue)]
            if let created = entry.latestCreatedAt { metrics.gauge("kmsd_key_latest_version_age_seconds", labels, now.timeIntervalSince(created)) }
            if let next = entry.plan?.nextRotationAt { metrics.gauge("kmsd_key_seconds_to_next_rotation", labels, next.timeIntervalSince(now)) }
            if let version = entry.latestVersion { metrics.gauge("kmsd_key_latest_version", labels, Double(version.rawValue)) }
            for (version, usage) in server.rotation.usage(entry.key) {
                let labels = [("key", entry.key.rawValue), ("version", String(version))]
                metrics.gauge("kmsd_key_version_wraps", labels, Double(usage.wraps))
                metrics.gauge("kmsd_key_version_unwraps", labels, Double(usage.unwraps))
            }
        }
    }
}

/// Polls every provider's health: sets the provider and session-pool gauges, and audits each change of state (`ok` →
/// `unavailable` when a breaker opens, and back) with the backend's last error (for PKCS#11 it names the function and
/// CK_RV).
final class ProviderWatch: Service, Sendable {
    let providers: [String: any KeyProvider]
    let audit: AuditLog?
    let metrics: ServerMetrics
    let interval: Duration
    private let states = Mutex<[String: ProviderHealth.State]>([:])
    private let logger = Logger(label: "kmsd.watch")

    init(providers: [String: any KeyProvider], audit: AuditLog?, metrics: ServerMetrics, interval: Duration = .seconds(2)) {
        self.providers = providers
        self.audit = audit
        self.metrics = metrics
        self.interval = interval
    }

    func run() async throws {
        await cancelWhenGracefulShutdown { [self] in
            while !Task.isCancelled {
                await poll()
                try? await Task.sleep(for: interval)
            }
        }
    }

    /// One look at every provider.
    func poll() async {
        for (name, provider) in providers.sorted(by: { $0.key < $1.key }) {
            let health = await provider.health()
            let labels = [("provider", name)]
            metrics.gauge("kmsd_provider_up", labels, health.state == .unavailable ? 0 : 1)
            metrics.gauge("kmsd_provider_breaker_open", labels, health.breaker == .open ? 1 : 0)
            if let sessions = health.sessions {
                metrics.gauge("kmsd_pool_sessions_open", labels, Double(sessions.open))
                metrics.gauge("kmsd_pool_sessions_idle", labels, Double(sessions.idle))
                metrics.gauge("kmsd_pool_sessions_max", labels, Double(sessions.max))
                metrics.gauge("kmsd_pool_waiters", labels, Double(sessions.waiters))
                metrics.gauge("kmsd_pool_sessions_in_use", labels, Double(sessions.busy))
            }
            let previous = states.withLock { states in
                defer { states[name] = health.state }
                return states[name]
            }
            guard let previous, previous != health.state else { continue }
            let detail = "provider \(name): \(previous.rawValue) → \(health.state.rawValue)" + (health.lastError.map { " (\($0.prefix(200)))" } ?? "")
            logger.warning("provider state changed", metadata: ["provider": "\(name)", "state": "\(health.state.rawValue)"])
            metrics.count("kmsd_provider_state_changes_total", [("provider", name), ("state", health.state.rawValue)])
            audit?.submit(AuditEvent(.security, "provider_state", result: health.state == .ok ? .ok : .failed, detail: detail))
        }
    }
}
