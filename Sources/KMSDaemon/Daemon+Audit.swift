import Foundation
public import KMSAudit
public import KMSCore
import KMSServer
public import KMSService
public import KMSState
public import Logging
import NIOSSL
public import ServiceLifecycle
import Synchronization

/// The audit log and its syslog copy.
extension Daemon {
    /// The provider `audit.sign: {hsm: …}` names, as a holder of the audit key pair.
    static func signingKeyHolder(_ name: String, in providers: [String: any KeyProvider]) throws -> any AuditSigningKeyHolder {
        guard let holder = providers[name] as? any AuditSigningKeyHolder else {
            throw ConfigurationError(["audit.sign.hsm: provider '\(name)' cannot hold a signing key (only a PKCS#11 provider can)"])
        }
        return holder
    }

    /// Opens the audit log (nil when none is configured). Failures to write are counted as security events.
    /// `anchors` receives each checkpoint once durable, for the state store (replicas only).
    public func startAudit(providers: [String: any KeyProvider], events: SecurityEvents, anchors: AuditAnchorForwarder? = nil) async throws
        -> AuditLog?
    {
        guard let audit = configuration.audit, let path = configuration.auditPath else { return nil }
        let signer: (any AuditSigner)?
        switch audit.signing {
        case .file(let path):
            signer = try FileAuditSigner(path: path)
        case .hsm(let provider, let label):
            signer = try await Self.signingKeyHolder(provider, in: providers).auditSigner(label: label)
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
        var logConfiguration = AuditLog.Configuration(
            path: path, maxFileBytes: audit.maxFileBytes, checkpointEvery: audit.checkpointEvery,
            checkpointInterval: Double(audit.checkpointInterval.components.seconds), failClosed: audit.failClosed, signer: signer,
            syslog: forwarder, maxQueue: audit.maxQueue, keepFiles: audit.keepFiles)
        if let replica = configuration.replica {
            logConfiguration.replica = replica
            if let anchors { logConfiguration.onCheckpoint = { anchors.submit($0) } }
        }
        return try AuditLog(logConfiguration, logger: Logger(label: "kmsd.audit"), onFailure: { _ in events.record("audit_write_failed") })
    }
}

/// Carries audit checkpoints from the log's writer thread to the state store, where they anchor each replica's log
/// (`kmsctl audit verify --state`). The writer only appends to a bounded list; a service writes it out every second,
/// and once more after the log's closing checkpoint. A store that is down keeps them for the next try; beyond
/// `limit` the oldest are dropped (a later checkpoint anchors the chain as well).
public final class AuditAnchorForwarder: Service, Sendable {
    static let limit = 10_000
    private let pending = Mutex<[AuditAnchor]>([])
    private let target = Mutex<(any StateStore)?>(nil)
    private let logger: Logger

    public init(logger: Logger = Logger(label: "kmsd.audit.anchors")) {
        self.logger = logger
    }

    /// From the writer thread: never blocks.
    func submit(_ anchor: AuditAnchor) {
        pending.withLock { pending in
            pending.append(anchor)
            if pending.count > Self.limit { pending.removeFirst(pending.count - Self.limit) }
        }
    }

    /// The store to write to, once it is open (the log starts before it).
    public func attach(_ store: any StateStore) {
        target.withLock { $0 = store }
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown { [self] in
            while !Task.isCancelled {
                await forward()
                try? await Task.sleep(for: .seconds(1))
            }
        }
    }

    /// Writes what is pending; on failure keeps it for the next call.
    public func forward() async {
        guard let store = target.withLock({ $0 }) else { return }
        let batch = pending.withLock { pending in defer { pending = [] }; return pending }
        guard !batch.isEmpty else { return }
        do {
            try await store.recordAuditAnchors(batch)
        } catch {
            pending.withLock { pending in
                pending = Array((batch + pending).suffix(Self.limit))
            }
            logger.warning("cannot anchor audit checkpoints in the state store; keeping them for the next try", metadata: [
                "checkpoints": "\(batch.count)", "error": "\(error)",
            ])
        }
    }
}
