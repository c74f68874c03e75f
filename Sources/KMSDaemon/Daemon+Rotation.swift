public import Foundation
public import KMSAudit
public import KMSCore
public import KMSRotation
public import KMSState
import KMSServer
public import KMSService
import Logging
import X509

/// The rotation manager and the server's policy: the state store, the rotation-event → audit mapping, and each key
/// served through `TrackedProvider`.
extension Daemon {
    /// The SQLite state store's file: `state.sqlite.path`, or `<data_dir>/rotation.sqlite` (`data_dir` defaults to
    /// /var/lib/kmsd).
    public var stateStorePath: String {
        if case .sqlite(let path?) = configuration.state { return path }
        return (configuration.dataDirectory ?? "/var/lib/kmsd") + "/rotation.sqlite"
    }

    /// Where the configured state store is (`sqlite:PATH` or `postgres://USER@HOST:PORT/DATABASE`), for messages and
    /// for a reload to tell whether the section moved it.
    public var stateLocation: String {
        switch configuration.state {
        case .sqlite: "sqlite:\(stateStorePath)"
        case .postgres(let postgres): postgres.store.description
        }
    }

    /// Opens the configured state store (migrating it to this kmsd's schema); the PostgreSQL password is read from
    /// its source here and never kept in the configuration.
    public func openStateStore(environment: [String: String] = ProcessInfo.processInfo.environment) async throws -> any StateStore {
        switch configuration.state {
        case .sqlite:
            return try SQLiteStateStore(path: stateStorePath)
        case .postgres(let postgres):
            var settings = postgres.store
            settings.password = try postgres.password.map { source in
                String(decoding: try Self.read(source, environment: environment).unsafeCopiedBytes(), as: UTF8.self)
            }
            return try await PostgresStateStore.open(settings, logger: Logger(label: "kmsd.state"))
        }
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
        let store = try await openStateStore()
        logger.notice("state store open", metadata: ["location": "\(store.location)"])
        let manager = RotationManager(
            keys: rotationKeys(providers), store: store, clock: clock, logger: Logger(label: "kmsd.rotation"),
            onEvent: { event in
                switch event.kind {
                case .wrapRefused, .wrapLimitReached, .retireRefused, .rotationFailed: events.record(event.kind.rawValue)
                case .notice, .rotated, .retired: break
                }
                // What the scheduler does on its own is audited here; what an API request does is audited with
                // that request (one record per operation).
                guard event.actor == .scheduler, let audit else { return }
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
        do {
            try await manager.start()
        } catch {
            await store.close()
            throw error
        }
        // Replicas sharing a database list each other (a single kmsd on SQLite writes no heartbeats).
        if let replica = configuration.replica {
            let host = HardeningChecklist.isWildcard(configuration.listen.host) ? ProcessInfo.processInfo.hostName : configuration.listen.host
            manager.identify(id: replica, address: "\(host):\(configuration.listen.port)", version: KMSDRelease.version)
        }
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
                          ratePerSecond: limits.ratePerSecond, burst: limits.burst),
            mode: configuration.mode.rawValue)
        policy.identityMode = configuration.tls?.identity ?? .names
        if let adminCA = configuration.admin.clientCA, let tls = configuration.tls {
            let admins = try Self.certificates(adminCA, key: "admin.client_ca").map(\.subject)
            let nodes = try Self.certificates(tls.clientCA, key: "tls.client_ca").map(\.subject)
            if let shared = admins.first(where: { nodes.contains($0) }) {
                throw ConfigurationError(["admin.client_ca: the CA \(shared) is also in tls.client_ca; the two bundles must name different CAs"])
            }
            policy.adminIssuers = admins
            policy.nodeIssuers = nodes
        }
        return policy
    }
}
