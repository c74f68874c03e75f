public import Foundation
public import Hummingbird
import HummingbirdCore
import HummingbirdTLS
public import KMSCore
import KMSProviderPKCS11
import KMSProviderVault
public import KMSRotation
public import KMSAudit
public import KMSServer
public import Logging
import NIOCore
public import NIOSSL
import PKCS11
public import ServiceLifecycle
import UnixSignals
import SwiftASN1
import X509
import Dispatch

/// Writes the failed-handshake summaries every interval, and once more at shutdown.
struct HandshakeSummaryService: Service {
    let failures: HandshakeFailures
    func run() async throws {
        await cancelWhenGracefulShutdown { await failures.run() }
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

    /// Reads a secret from its source. Errors name the source, never the value.
    static func read(_ source: Configuration.SecretSource, environment: [String: String]) throws -> SecretBytes {
        switch source {
        case .inline(let secret):
            return secret
        case .environment(let name):
            guard let value = environment[name], !value.isEmpty else { throw ConfigurationError(["the environment variable \(name) is not set"]) }
            return SecretBytes(utf8: value)
        case .file(let path):
            guard let data = FileManager.default.contents(atPath: path) else { throw ConfigurationError(["cannot read the secret file \(path)"]) }
            let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard !text.isEmpty else { throw ConfigurationError(["the secret file \(path) is empty"]) }
            return SecretBytes(utf8: text)
        }
    }

    /// The audit checkpoint public key (PEM), read from the token named by `audit.sign: {hsm: …}`; nothing is created
    /// and only that provider is started. `kmsctl audit verify --public-key-from-hsm` uses it.
    public func auditPublicKeyFromHSM() async throws -> String {
        guard case .hsm(let providerName, let label)? = configuration.audit?.signing else {
            throw ConfigurationError(["audit.sign: \(configuration.source) does not sign audit checkpoints with a key on an HSM ({hsm: …})"])
        }
        let providers = try await startProviders(only: [providerName])
        do {
            guard let pkcs11 = providers[providerName] as? PKCS11KeyProvider else {
                throw ConfigurationError(["audit.sign.hsm: provider '\(providerName)' is not a PKCS#11 provider"])
            }
            let pem = try await PKCS11AuditSigner.existingPublicKeyPEM(pkcs11, label: label)
            await Self.stop(providers)
            return pem
        } catch {
            await Self.stop(providers)
            throw error
        }
    }

    /// Starts every configured provider (or those named in `only`). On failure, stops those already started.
    public func startProviders(only: Set<String>? = nil, environment: [String: String] = ProcessInfo.processInfo.environment)
        async throws -> [String: any KeyProvider]
    {
        var started: [String: any KeyProvider] = [:]
        do {
            for (name, provider) in configuration.providers.sorted(by: { $0.key < $1.key }) where only?.contains(name) ?? true {
                switch provider {
                case .pkcs11(let settings):
                    let profile = try HSMProfile.load(settings.profile, directory: settings.profilesDirectory)
                    let uri = try PKCS11URI(parsing: settings.token)
                    let pkcs11 = try await PKCS11KeyProvider.start(PKCS11ProviderConfiguration(
                        modulePath: settings.module, token: uri, pin: try Self.read(settings.pin, environment: environment),
                        profile: profile, maxSessions: settings.sessions, checkoutWait: settings.checkoutWait,
                        callTimeout: settings.callTimeout), logger: Logger(label: "kmsd.provider.\(name)"))
                    started[name] = pkcs11
                case .vault(let settings):
                    let auth: VaultProviderConfiguration.Authentication
                    switch settings.auth {
                    case .token(let source): auth = .token(try Self.read(source, environment: environment))
                    case .tokenFile(let path): auth = .tokenFile(path)
                    case .appRole(let roleID, let secret):
                        auth = .appRole(roleID: roleID, secretID: try Self.read(secret, environment: environment))
                    }
                    started[name] = try VaultTransitProvider(VaultProviderConfiguration(
                        address: settings.address, mount: settings.mount, namespace: settings.namespace,
                        caCertificateFile: settings.caCertificate, authentication: auth,
                        requestTimeout: settings.requestTimeout), logger: Logger(label: "kmsd.provider.\(name)"))
                case .inMemory:
                    throw ConfigurationError(["providers.\(name): the in-memory provider exists only inside kmsd's tests"])
                }
                logger.info("provider started", metadata: ["provider": "\(name)", "type": "\(provider.kind)"])
            }
        } catch {
            await Self.stop(started)
            throw error
        }
        return started
    }

    static func stop(_ providers: [String: any KeyProvider]) async {
        for provider in providers.values {
            if let pkcs11 = provider as? PKCS11KeyProvider { await pkcs11.shutdown() }
            if let vault = provider as? VaultTransitProvider { await vault.shutdown() }
        }
    }

    /// The rotation state store's file: `<data_dir>/rotation.sqlite` (`data_dir` defaults to /var/lib/kmsd).
    public var stateStorePath: String {
        (configuration.dataDirectory ?? "/var/lib/kmsd") + "/rotation.sqlite"
    }

    /// The configured keys with their providers and rotation policies.
    func rotationKeys(_ providers: [String: any KeyProvider]) -> [RotationManager.Key] {
        configuration.keys.values.compactMap { key in
            providers[key.provider].map { RotationManager.Key(name: key.name, providerName: key.provider, provider: $0, policy: key.rotation) }
        }
    }

    /// Opens the state store and loads the counters. `events` receives rotation events worth counting.
    public func startRotation(_ providers: [String: any KeyProvider], events: SecurityEvents, audit: AuditLog? = nil,
                              clock: @escaping @Sendable () -> Date = { Date() }) async throws -> RotationManager {
        let store = try SQLiteStateStore(path: stateStorePath)
        let manager = RotationManager(
            keys: rotationKeys(providers), store: store, clock: clock, logger: Logger(label: "kmsd.rotation"),
            onEvent: { event in
                switch event.kind {
                case .wrapRefused, .wrapLimitReached, .retireRefused, .rotationFailed: events.record(event.kind.rawValue)
                case .notice, .rotated, .retired: break
                }
                // What the scheduler does on its own is audited here; what an API request does is audited with
                // that request (one record per operation).
                guard event.actor == "scheduler", let audit else { return }
                switch event.kind {
                case .notice, .rotated:
                    audit.submit(AuditEvent(.admin, event.kind.rawValue, result: .ok, identity: "scheduler", key: event.key,
                                            version: event.version, detail: event.detail))
                case .rotationFailed:
                    audit.submit(AuditEvent(.security, event.kind.rawValue, result: .failed, identity: "scheduler", key: event.key,
                                            version: event.version, detail: event.detail))
                case .wrapRefused, .wrapLimitReached, .retired, .retireRefused:
                    break
                }
            })
        try await manager.start()
        return manager
    }

    /// The server's view of keys: each served through `TrackedProvider`, so use is counted and rotation rules apply.
    public func policy(_ providers: [String: any KeyProvider], rotation: RotationManager) throws -> KMSServerPolicy {
        var keys: [KeyName: KMSServerPolicy.Key] = [:]
        for key in configuration.keys.values {
            guard let provider = providers[key.provider] else { continue }
            keys[key.name] = KMSServerPolicy.Key(name: key.name, providerName: key.provider,
                                                 provider: TrackedProvider(provider, manager: rotation), allow: key.allow)
        }
        let limits = configuration.limits
        var policy = KMSServerPolicy(
            keys: keys, providers: providers, adminIdentities: configuration.admin.identities,
            adminTokenHashes: configuration.admin.tokenHashes,
            limits: .init(maxBodyBytes: limits.maxBodyBytes, requestTimeout: limits.requestTimeout,
                          ratePerSecond: limits.ratePerSecond, burst: limits.burst, maxConnections: limits.maxConnections),
            mode: configuration.mode.rawValue)
        policy.identityMode = configuration.tls?.identity ?? .names
        if let adminCA = configuration.admin.clientCA, let tls = configuration.tls {
            let admins = try Self.subjects(adminCA, key: "admin.client_ca")
            let nodes = try Self.subjects(tls.clientCA, key: "tls.client_ca")
            if let shared = admins.first(where: { nodes.contains($0) }) {
                throw ConfigurationError(["admin.client_ca: the CA \(shared) is also in tls.client_ca; the two bundles must name different CAs"])
            }
            policy.adminIssuers = admins
            policy.nodeIssuers = nodes
        }
        return policy
    }

    /// The server's TLS: its certificate and key, client certificates from `client_ca` required (or optional), the
    /// configured minimum version.
    public static func tlsConfiguration(_ tls: Configuration.TLS, adminCA: String? = nil) throws -> TLSConfiguration {
        let chain = try NIOSSLCertificate.fromPEMFile(tls.certificate).map { NIOSSLCertificateSource.certificate($0) }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain, privateKey: .privateKey(try NIOSSLPrivateKey(file: tls.key, format: .pem)))
        // Admin certificates from `admin.client_ca` pass the handshake too; which CA issued a certificate is then
        // checked per request (`KMSServerPolicy.adminIssuers`, `nodeIssuers`).
        configuration.trustRoots = .certificates(
            try NIOSSLCertificate.fromPEMFile(tls.clientCA) + (try adminCA.map { try NIOSSLCertificate.fromPEMFile($0) } ?? []))
        configuration.certificateVerification = tls.clientAuth == .required ? .noHostnameVerification : .optionalVerification
        configuration.minimumTLSVersion = tls.minimumVersion == "1.3" ? .tlsv13 : .tlsv12
        configuration.cipherSuites = tls.ciphers
        // Closing a connection (idle timeout, maximum age) sends close_notify and waits for the peer's; a peer that
        // never answers holds its slot at most this long.
        configuration.shutdownTimeout = .seconds(1)
        return configuration
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
    }

    /// The subject names of the CAs in a PEM bundle.
    static func subjects(_ path: String, key: String) throws -> [DistinguishedName] {
        do {
            let text = try String(contentsOfFile: path, encoding: .utf8)
            return try PEMDocument.parseMultiple(pemString: text).map { try Certificate(derEncoded: $0.derBytes).subject }
        } catch {
            throw ConfigurationError(["\(key): cannot read the CA certificates in \(path): \(error)"])
        }
    }

    /// The client CA bundle's certificates (for verifying the CRL).
    static func clientCAs(_ tls: Configuration.TLS) throws -> [Certificate] {
        let text = try String(contentsOfFile: tls.clientCA, encoding: .utf8)
        return try PEMDocument.parseMultiple(pemString: text).map { try Certificate(derEncoded: $0.derBytes) }
    }

    /// The CRL named by `tls.crl`, verified with the client CA; nil without one.
    static func revocation(_ tls: Configuration.TLS?) throws -> RevocationList? {
        guard let tls, let crl = tls.crl else { return nil }
        guard let data = FileManager.default.contents(atPath: crl) else { throw ConfigurationError(["tls.crl: cannot read \(crl)"]) }
        do {
            return try RevocationList(data: data, issuers: clientCAs(tls))
        } catch {
            throw ConfigurationError(["tls.crl: \(error)"])
        }
    }

    /// Builds the HTTP application. `onRunning` gets the bound port.
    public func application(
        policy: KMSServerPolicy, rotation: RotationManager, events: SecurityEvents, audit: AuditLog? = nil,
        metrics: ServerMetrics? = nil, onRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) throws -> (some ApplicationProtocol, Running) {
        let server = KMSServer(policy: policy, rotation: rotation, audit: audit, metrics: metrics,
                               revocation: try Self.revocation(configuration.tls), revocationGrace: configuration.tls?.crlGrace ?? .seconds(3600),
                               events: events, logger: Logger(label: "kmsd.api"))
        let box = try configuration.tls.map { try TLSContextBox(Self.tlsConfiguration($0, adminCA: configuration.admin.clientCA)) }
        let limit = ConnectionLimit(connectionPolicy(authenticates: box != nil), events: server.events)
        let handshakeFailures = HandshakeFailures(audit: audit, events: server.events,
                                                  interval: configuration.audit?.handshakeSummaryInterval ?? .seconds(10))
        let builder = HTTPServerBuilder.http1(tls: box, limit: limit) { peer, error in
            handshakeFailures.record(source: peer, error: error)
        }
        let app = Application(
            router: server.router(), server: builder,
            configuration: .init(address: .hostname(configuration.listen.host, port: configuration.listen.port), serverName: nil),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? 0) },
            logger: logger)
        let refresh = RevocationRefresh(tls: configuration.tls, server: server, logger: Logger(label: "kmsd.crl"))
        return (app, Running(server: server, tls: box, connections: limit, handshakeFailures: handshakeFailures, revocationRefresh: refresh))
    }

    /// The API listener's connection caps and deadlines (`limits.*`).
    func connectionPolicy(authenticates: Bool) -> ConnectionPolicy {
        let limits = configuration.limits
        return ConnectionPolicy(
            maxConnections: limits.maxConnections, maxPerSource: limits.maxConnectionsPerSource,
            maxUnauthenticated: limits.maxUnauthenticated, maxUnauthenticatedPerSource: limits.maxUnauthenticatedPerSource,
            handshakeTimeout: limits.handshakeTimeout, idleTimeout: limits.idleTimeout, maxAge: limits.maxConnectionAge,
            authenticates: authenticates)
    }

    /// SIGHUP: reads the configuration file again and applies what can change without a restart — the server
    /// certificate, the client CA, the CRL, per-key allow lists, admin identities and tokens, limits. Providers and
    /// listeners stay as they are. A bad file changes nothing and is reported.
    public func reload(_ running: Running, providers: [String: any KeyProvider]) throws {
        do {
            try reloadUnaudited(running, providers: providers)
            running.server.audit?.submit(AuditEvent(.admin, "reload", result: .ok, identity: "SIGHUP", detail: configuration.source))
        } catch {
            running.server.audit?.submit(AuditEvent(.admin, "reload", result: .failed, identity: "SIGHUP", detail: "\(error)".prefix(300).description))
            throw error
        }
    }

    private func reloadUnaudited(_ running: Running, providers: [String: any KeyProvider]) throws {
        let fresh = try Configuration.load(path: configuration.source)
        try checkReplacement(by: fresh)
        let reloaded = Daemon(fresh, logger: logger)
        // Build and check every part first; swap only when all of them are ready, so a failure changes nothing.
        if running.tls != nil, fresh.tls == nil {
            throw ConfigurationError(["tls: a reload cannot turn TLS off on a running listener; restart kmsd to change it"])
        }
        let context = try fresh.tls.map { try TLSContextBox.makeContext(Self.tlsConfiguration($0, adminCA: fresh.admin.clientCA)) }
        let revocation = try Self.revocation(fresh.tls)
        try running.server.checkNotRollback(revocation)
        let pins = try reloaded.providerPINs(providers)
        let keys = reloaded.rotationKeys(providers)
        let snapshot = KMSServer.Snapshot(policy: try reloaded.policy(providers, rotation: running.server.rotation), revocation: revocation,
                                          revocationGrace: fresh.tls?.crlGrace ?? .seconds(3600))

        if let context, let box = running.tls { box.install(context) }
        running.server.rotation.update(keys: keys)
        running.server.reload(snapshot)
        running.revocationRefresh.update(fresh.tls)
        for (provider, pin) in pins { provider.replacePIN(pin) }
        logger.notice("configuration reloaded", metadata: ["file": "\(configuration.source)"])
    }

    /// The PIN of every running PKCS#11 provider, read again from its source (a SIGHUP after correcting a PIN lets a
    /// provider whose PIN the token refused try the new one, once).
    func providerPINs(_ providers: [String: any KeyProvider], environment: [String: String] = ProcessInfo.processInfo.environment)
        throws -> [(PKCS11KeyProvider, SecretBytes)]
    {
        try configuration.providers.sorted(by: { $0.key < $1.key }).compactMap { name, provider in
            guard case .pkcs11(let settings) = provider, let running = providers[name] as? PKCS11KeyProvider else { return nil }
            return (running, try Self.read(settings.pin, environment: environment))
        }
    }

    /// Opens the audit log (nil when none is configured). Failures to write are counted as security events.
    public func startAudit(providers: [String: any KeyProvider], events: SecurityEvents) async throws -> AuditLog? {
        guard let audit = configuration.audit else { return nil }
        let signer: (any AuditSigner)?
        switch audit.signing {
        case .file(let path):
            signer = try FileAuditSigner(path: path)
        case .hsm(let provider, let label):
            guard let pkcs11 = providers[provider] as? PKCS11KeyProvider else {
                throw ConfigurationError(["audit.sign.hsm: provider '\(provider)' is not a PKCS#11 provider"])
            }
            signer = try await pkcs11.auditSigner(label: label)
        case nil:
            signer = nil
        }
        var forwarder: SyslogForwarder?
        if let syslog = audit.syslog {
            var tls: TLSConfiguration?
            if syslog.tls {
                var client = TLSConfiguration.makeClientConfiguration()
                if let ca = syslog.caCertificate { client.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca)) }
                tls = client
            }
            forwarder = SyslogForwarder(.init(host: syslog.host, port: syslog.port, tls: tls), logger: Logger(label: "kmsd.audit.syslog"),
                                        onDrop: { _ in events.record("syslog_dropped") })
        }
        return try AuditLog(
            .init(path: audit.file, maxFileBytes: audit.maxFileBytes, checkpointEvery: audit.checkpointEvery,
                  checkpointInterval: Double(audit.checkpointInterval.components.seconds), failClosed: audit.failClosed, signer: signer,
                  syslog: forwarder, maxQueue: audit.maxQueue, keepFiles: audit.keepFiles),
            logger: Logger(label: "kmsd.audit"), onFailure: { _ in events.record("audit_write_failed") })
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
        do {
            let parts = try await assemble(providers: providers) { [logger, configuration] port in
                logger.notice("kmsd serving", metadata: [
                    "address": "\(configuration.listen.host):\(port)", "mode": "\(configuration.mode.rawValue)",
                    "tls": "\(configuration.tls != nil)",
                ])
            } onMetricsRunning: { [logger, configuration] port in
                logger.notice("metrics serving", metadata: ["address": "\(configuration.listen.metrics?.host ?? ""):\(port)"])
            }
            auditLog = parts.audit
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
        } catch {
            auditLog?.submit(AuditEvent(.admin, "stop", result: .failed, detail: "\(error)".prefix(300).description))
            await auditLog?.close()
            await Self.stop(providers)
            throw error
        }
        auditLog?.submit(AuditEvent(.admin, "stop", result: .ok))
        await auditLog?.close()
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
    }

    public func assemble(
        providers: [String: any KeyProvider], onAPIRunning: @escaping @Sendable (Int) async -> Void = { _ in },
        onMetricsRunning: @escaping @Sendable (Int) async -> Void = { _ in }
    ) async throws -> Parts {
        let metrics = ServerMetrics()
        let events = SecurityEvents(onRecord: { metrics.securityEvent($0) })
        let audit = try await startAudit(providers: providers, events: events)
        audit?.submit(AuditEvent(.admin, "start", result: .ok, detail: "mode \(configuration.mode.rawValue), config \(configuration.source)"))
        let rotation = try await startRotation(providers, events: events, audit: audit)
        let (app, running) = try application(
            policy: try policy(providers, rotation: rotation), rotation: rotation, events: events, audit: audit, metrics: metrics,
            onRunning: onAPIRunning)
        let watch = ProviderWatch(providers: providers, audit: audit, metrics: metrics)
        await watch.poll()  // the provider gauges exist from the first scrape
        var services: [any Service] = [
            app, RotationScheduler(rotation), watch, HandshakeSummaryService(failures: running.handshakeFailures), running.revocationRefresh,
        ]
        if let metricsApp = metricsApplication(running.server, metrics: metrics, connections: running.connections, onRunning: onMetricsRunning) { services.append(metricsApp) }
        return Parts(running: running, audit: audit, rotation: rotation, services: services)
    }
}
