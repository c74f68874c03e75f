import Foundation
public import KMSAudit
public import KMSCore
import KMSServer
public import KMSService
import Logging
import NIOSSL

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
    public func startAudit(providers: [String: any KeyProvider], events: SecurityEvents) async throws -> AuditLog? {
        guard let audit = configuration.audit else { return nil }
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
        return try AuditLog(
            .init(path: audit.file, maxFileBytes: audit.maxFileBytes, checkpointEvery: audit.checkpointEvery,
                  checkpointInterval: Double(audit.checkpointInterval.components.seconds), failClosed: audit.failClosed, signer: signer,
                  syslog: forwarder, maxQueue: audit.maxQueue, keepFiles: audit.keepFiles),
            logger: Logger(label: "kmsd.audit"), onFailure: { _ in events.record("audit_write_failed") })
    }
}
