import Foundation
import KMSServer
import KMSService
import Logging
public import ServiceLifecycle
import Synchronization

/// Reads the CRL file again every `tls.crl_refresh` (default 5 min), besides SIGHUP, so a CA that publishes a new
/// list by replacing the file reaches kmsd without an operator. A list that does not verify, or is older than the
/// one in force (rollback), is refused: the list in force stays, the refusal is logged and counted
/// (`crl_refresh_failed`, `crl_rollback`). Nothing here is triggered by a peer.
public final class RevocationRefresh: Service, Sendable {
    private let settings: Mutex<Configuration.TLS?>
    private let server: KMSServer
    private let logger: Logger

    init(tls: Configuration.TLS?, server: KMSServer, logger: Logger) {
        self.settings = Mutex(tls)
        self.server = server
        self.logger = logger
    }

    /// A reload's TLS settings (another CRL path, CA bundle, interval).
    func update(_ tls: Configuration.TLS?) {
        settings.withLock { $0 = tls }
    }

    /// One refresh: read, verify, install unless it is a rollback. Returns whether a new list was installed.
    @discardableResult
    func refreshOnce() -> Bool {
        guard let tls = settings.withLock({ $0 }), tls.crl != nil else { return false }
        do {
            guard let list = try Daemon.revocation(tls) else { return false }
            guard try server.replaceRevocation(list) else { return false }
            logger.notice("CRL refreshed", metadata: [
                "this_update": "\(list.thisUpdate.formatted(.iso8601))", "revoked": "\(list.revokedSerials.count)",
            ])
            return true
        } catch let error as KMSServer.RevocationRollback {
            server.events.record("crl_rollback")
            logger.error("CRL refused as a rollback; keeping the list in force", metadata: ["error": "\(error)"])
        } catch {
            server.events.record("crl_refresh_failed")
            logger.error("CRL refresh failed; keeping the list in force", metadata: ["error": "\(error)"])
        }
        return false
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown { [self] in
            while !Task.isCancelled {
                let interval = settings.withLock { $0?.crlRefresh } ?? .seconds(300)
                do {
                    try await Task.sleep(for: interval)
                } catch {
                    return
                }
                refreshOnce()
            }
        }
    }
}
