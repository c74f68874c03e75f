import Foundation
public import Hummingbird
import HummingbirdCore
import HummingbirdTLS
public import KMSCore
public import KMSRotation
public import KMSAudit
public import KMSServer
public import KMSService
public import KMSTransit
public import KMSKMIP
import KMSState
import VaultWire
public import Logging
import NIOCore
import NIOSSL
public import ServiceLifecycle
import UnixSignals
import Dispatch
import Synchronization

/// kmsd's registry counts the transit front end's requests as it counts the API's.
extension ServerMetrics: TransitRequestMetrics {}

/// Writes the audit log's interval summaries (failed handshakes, refusals) every interval, and once more at shutdown.
struct SummaryService: Service {
    let summaries: [any IntervalSummary]
    func run() async throws {
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                for summary in summaries { group.addTask { await summary.run() } }
            }
        }
    }
}

/// Wires a validated configuration into running parts: providers, the API server with mutual TLS, and the
/// lifecycle (graceful shutdown on SIGTERM/SIGINT).
public struct Daemon: Sendable {
    public let configuration: Configuration
    let logger: Logger

    public init(_ configuration: Configuration, logger: Logger = Logger(label: "kmsd")) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Refuses an unsafe production configuration, naming every violation.
    public func checkMode() throws {
        guard configuration.mode == .production else { return }
        let violations = HardeningChecklist(configuration).violations
        guard violations.isEmpty else {
            throw ConfigurationError(violations.map { "production mode: \($0.title) — \($0.detail)" })
        }
    }

    /// Whether `fresh` may replace the running configuration at a reload. One-way: a reload never lowers the mode
    /// kmsd started in, and never lets through what production mode refuses at start.
    public func checkReplacement(by fresh: Configuration) throws {
        if configuration.mode == .production, fresh.mode != .production {
            throw ConfigurationError([
                "mode: kmsd runs in production mode and a reload cannot lower it to \(fresh.mode.rawValue); restart kmsd to change the mode",
            ])
        }
        try Daemon(fresh, logger: logger).checkMode()
    }

    /// What a reload replaces in a running server.
    public struct Running: Sendable {
        public let server: KMSServer
        public let tls: TLSContextBox?
        /// The API listener's open connections.
        public let connections: ConnectionLimit
        public let handshakeFailures: HandshakeFailures
        /// Reads the CRL file again every `tls.crl_refresh`.
        public let revocationRefresh: RevocationRefresh
        /// The transit listener's TLS (client certificates optional there); nil without a transit listener.
        public var transitTLS: TLSContextBox? = nil
        /// The transit front end, whose section a reload replaces; nil without a transit listener.
        public var transit: TransitFrontEnd? = nil
        /// The KMIP listener (its TLS and front end a reload replaces); nil without one.
        public var kmip: KMIPListener? = nil
        /// The job that rewraps managed objects after the wrapping key rotates; nil without a KMIP listener.
        public var kmipRewrap: KMIPRewrapJob? = nil
    }

    /// Builds the HTTP application. `onRunning` gets the bound port.
    public func application(
        policy: KMSServerPolicy, rotation: RotationManager, events: SecurityEvents, audit: AuditLog? = nil,
        metrics: ServerMetrics? = nil, onRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) throws -> (some ApplicationProtocol, Running) {
        let server = KMSServer(policy: policy, rotation: rotation, audit: audit, metrics: metrics,
                               revocation: try Self.revocation(configuration.tls), revocationGrace: configuration.tls?.crlGrace ?? .seconds(3600),
                               events: events, refusalSummaryInterval: configuration.audit?.handshakeSummaryInterval ?? .seconds(10),
                               logger: Logger(label: "kmsd.api"))
        let box = try configuration.tls.map { try TLSContextBox(Self.tlsConfiguration($0, adminCA: configuration.admin.clientCA)) }
        let limit = ConnectionLimit(connectionPolicy(authenticates: box != nil), events: server.events)
        let handshakeFailures = HandshakeFailures(audit: audit, events: server.events,
                                                  interval: configuration.audit?.handshakeSummaryInterval ?? .seconds(10))
        let builder = HTTPServerBuilder.http1(tls: box, limit: limit, onHandshakeFailure: { peer, error in
            handshakeFailures.record(source: peer, error: error)
        })
        let app = Application(
            router: server.router(), server: builder,
            configuration: .init(address: .hostname(configuration.listen.host, port: configuration.listen.port), serverName: nil),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? 0) },
            logger: logger)
        let refresh = RevocationRefresh(tls: configuration.tls, server: server, logger: Logger(label: "kmsd.crl"))
        return (app, Running(server: server, tls: box, connections: limit, handshakeFailures: handshakeFailures, revocationRefresh: refresh))
    }

    /// The Vault transit listener (`listen.transit`, docs/transit-frontend.md): HTTPS with the API's certificate, client
    /// certificates accepted but not required (token clients), the API's caps and deadlines (a token client counts as
    /// unauthenticated for the connection caps), over the same service. Nil when not configured.
    public func transitApplication(
        _ server: KMSServer, metrics: ServerMetrics?, handshakeFailures: HandshakeFailures,
        onRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) throws -> (app: Application<TransitFrontEnd>, tls: TLSContextBox, frontEnd: TransitFrontEnd)? {
        guard let transit = configuration.transit, let address = configuration.listen.transit, let tls = configuration.tls else { return nil }
        let box = try TLSContextBox(Self.transitTLS(Self.tlsConfiguration(tls, adminCA: configuration.admin.clientCA)))
        let limit = ConnectionLimit(connectionPolicy(authenticates: true), events: server.events)
        let builder = HTTPServerBuilder.http1(tls: box, limit: limit, beforeHTTP: { [ListMethodRewriter()] }, onHandshakeFailure: { peer, error in
            handshakeFailures.record(source: peer, error: error)
        })
        let frontEnd = TransitFrontEnd(service: server.service, configuration: transit, metrics: metrics)
        let app = Application(
            responder: frontEnd, server: builder,
            configuration: .init(address: .hostname(address.host, port: address.port), serverName: nil),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? 0) }, logger: logger)
        return (app, box, frontEnd)
    }

    /// The API listener's connection caps and deadlines (`limits.*`).
    func connectionPolicy(authenticates: Bool) -> ConnectionPolicy {
        let limits = configuration.limits
        return ConnectionPolicy(
            maxConnections: limits.maxConnections, maxPerSource: limits.maxConnectionsPerSource,
            maxUnauthenticated: limits.maxUnauthenticated, maxUnauthenticatedPerSource: limits.maxUnauthenticatedPerSource,
            handshakeTimeout: limits.handshakeTimeout, idleTimeout: limits.idleTimeout, maxAge: limits.maxConnectionAge,
            authenticates: authenticates, requestReadTimeout: limits.requestReadTimeout, writeTimeout: limits.writeTimeout)
    }

    /// The metrics listener: `GET /metrics`, Prometheus text, sampled state (providers, audit, keys) refreshed per scrape.
    /// It has the API's deadlines and a small connection cap of its own (`limits.metrics_max_connections`), so a
    /// scraper gone wrong cannot take connections from anything else, nor the other way round.
    public func metricsApplication(_ server: KMSServer, metrics: ServerMetrics, connections: ConnectionLimit? = nil, onRunning: @escaping @Sendable (Int) async -> Void = { _ in })
        -> Application<RouterResponder<BasicRequestContext>>?
    {
        guard let address = configuration.listen.metrics else { return nil }
        let cap = configuration.limits.metricsMaxConnections
        var policy = connectionPolicy(authenticates: false)
        policy.maxConnections = cap
        policy.maxPerSource = cap
        policy.maxUnauthenticated = cap
        policy.maxUnauthenticatedPerSource = cap
        let router = Router()
        router.get("/metrics") { _, _ -> Response in
            await MetricsSampler.sample(server, connections: connections, into: metrics)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(string: metrics.text())))
        }
        return Application(router: router, server: .http1(tls: nil, limit: ConnectionLimit(policy, events: server.events)),
                           configuration: .init(address: .hostname(address.host, port: address.port), serverName: nil),
                           onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? 0) }, logger: logger)
    }

    /// Runs until SIGTERM or SIGINT; then stops accepting, finishes requests in flight, writes the audit log's closing
    /// checkpoint, and closes the providers.
    public func run() async throws {
        for warning in configuration.warnings { logger.warning("configuration: \(warning)") }
        do {
            try checkMode()
        } catch {
            // A refusal to start is a security event: record it where the auditors look, if the log can be opened.
            if let audit = try? await startAudit(providers: [:], events: SecurityEvents()) {
                audit.submit(AuditEvent(.security, "start_refused", result: .refused, detail: "\(error)".prefix(300).description))
                await audit.close()
            }
            throw error
        }
        let providers = try await startProviders()
        var auditLog: AuditLog?
        var stateStore: (any StateStore)?
        var anchors: AuditAnchorForwarder?
        do {
            let parts = try await assemble(providers: providers) { [logger, configuration] port in
                logger.notice("kmsd serving", metadata: [
                    "address": "\(configuration.listen.host):\(port)", "mode": "\(configuration.mode.rawValue)",
                    "tls": "\(configuration.tls != nil)",
                ])
            } onMetricsRunning: { [logger, configuration] port in
                logger.notice("metrics serving", metadata: ["address": "\(configuration.listen.metrics?.host ?? ""):\(port)"])
            } onTransitRunning: { [logger, configuration] port in
                logger.notice("transit serving", metadata: [
                    "address": "\(configuration.listen.transit?.host ?? ""):\(port)", "mount": "\(configuration.transit?.mount ?? "")",
                ])
            } onKMIPRunning: { [logger, configuration] port in
                logger.notice("kmip serving", metadata: ["address": "\(configuration.listen.kmip?.host ?? ""):\(port)"])
            }
            auditLog = parts.audit
            stateStore = parts.rotation.store
            anchors = parts.anchors
            // SIGHUP reloads certificates, the CRL and access lists without dropping connections.
            signal(SIGHUP, SIG_IGN)
            let hangup = DispatchSource.makeSignalSource(signal: SIGHUP)
            hangup.setEventHandler { [self] in
                do {
                    try reload(parts.running, providers: providers)
                } catch {
                    logger.error("reload failed; keeping the running configuration", metadata: ["error": "\(error)"])
                }
            }
            hangup.resume()
            defer { hangup.cancel() }
            // The API, metrics, provider watch and rotation scheduler stop together on SIGTERM/SIGINT.
            let group = ServiceGroup(configuration: .init(
                services: parts.services.map { .init(service: $0) }, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await group.run()
            // Wraps counted while the API drained its requests (after the scheduler's own last flush) are stored too.
            await parts.rotation.flush()
        } catch {
            auditLog?.submit(AuditEvent(.admin, "stop", result: .failed, detail: "\(error)".prefix(300).description))
            await auditLog?.close()
            await stateStore?.close()
            await Self.stop(providers)
            throw error
        }
        auditLog?.submit(AuditEvent(.admin, "stop", result: .ok))
        await auditLog?.close()
        // The closing checkpoint, anchored before the store closes.
        await anchors?.forward()
        await stateStore?.close()
        await Self.stop(providers)
    }

    /// What kmsd runs once its providers are up, wired together: the audit log, the rotation manager, and the
    /// services (API, metrics listener, rotation scheduler, provider watch). `run()` and the tests' in-process kmsd
    /// both start from this.
    public struct Parts: Sendable {
        public let running: Running
        public let audit: AuditLog?
        public let rotation: RotationManager
        public let services: [any Service]
        /// Audit checkpoints on their way to the state store (replicas).
        public var anchors: AuditAnchorForwarder?
    }

    public func assemble(
        providers: [String: any KeyProvider], onAPIRunning: @escaping @Sendable (Int) async -> Void = { _ in },
        onMetricsRunning: @escaping @Sendable (Int) async -> Void = { _ in },
        onTransitRunning: @escaping @Sendable (Int) async -> Void = { _ in },
        onKMIPRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) async throws -> Parts {
        let metrics = ServerMetrics()
        let events = SecurityEvents(onRecord: { metrics.securityEvent($0) })
        let anchors = configuration.replica != nil && configuration.audit != nil ? AuditAnchorForwarder() : nil
        let audit = try await startAudit(providers: providers, events: events, anchors: anchors)
        audit?.submit(AuditEvent(.admin, "start", result: .ok, detail: "mode \(configuration.mode.rawValue), config \(configuration.source)"))
        let rotation = try await startRotation(providers, events: events, audit: audit)
        anchors?.attach(rotation.store)
        do {
            var parts = try await serving(providers: providers, rotation: rotation, audit: audit, events: events, metrics: metrics,
                                          onAPIRunning: onAPIRunning, onMetricsRunning: onMetricsRunning, onTransitRunning: onTransitRunning,
                                          onKMIPRunning: onKMIPRunning)
            if let anchors {
                parts = Parts(running: parts.running, audit: parts.audit, rotation: parts.rotation, services: parts.services + [anchors],
                              anchors: anchors)
            }
            return parts
        } catch {
            await rotation.store.close()
            throw error
        }
    }

    /// The listeners and services over a started audit log and rotation manager.
    private func serving(
        providers: [String: any KeyProvider], rotation: RotationManager, audit: AuditLog?, events: SecurityEvents, metrics: ServerMetrics,
        onAPIRunning: @escaping @Sendable (Int) async -> Void, onMetricsRunning: @escaping @Sendable (Int) async -> Void,
        onTransitRunning: @escaping @Sendable (Int) async -> Void, onKMIPRunning: @escaping @Sendable (Int) async -> Void
    ) async throws -> Parts {
        var (app, running) = try application(
            policy: try policy(providers, rotation: rotation), rotation: rotation, events: events, audit: audit, metrics: metrics,
            onRunning: onAPIRunning)
        let transit = try transitApplication(running.server, metrics: metrics, handshakeFailures: running.handshakeFailures,
                                             onRunning: onTransitRunning)
        running.transitTLS = transit?.tls
        running.transit = transit?.frontEnd
        running.kmip = try kmipListener(running.server, handshakeFailures: running.handshakeFailures, onRunning: onKMIPRunning)
        running.kmipRewrap = running.kmip.map { kmipRewrapJob($0, metrics: metrics) }
        let watch = ProviderWatch(providers: providers, audit: audit, metrics: metrics)
        await watch.poll()  // the provider gauges exist from the first scrape
        var services: [any Service] = [
            app, RotationScheduler(rotation), watch, SummaryService(summaries: [running.handshakeFailures, running.server.service.refusals]), running.revocationRefresh,
        ]
        if let metricsApp = metricsApplication(running.server, metrics: metrics, connections: running.connections, onRunning: onMetricsRunning) { services.append(metricsApp) }
        if let transit { services.append(transit.app) }
        if let kmip = running.kmip { services.append(kmip) }
        if let rewrap = running.kmipRewrap { services.append(rewrap) }
        return Parts(running: running, audit: audit, rotation: rotation, services: services)
    }
}
