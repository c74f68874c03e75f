import KMSKMIP
import KMSServer
import Logging
import NIOSSL

/// The KMIP listener (`listen.kmip`, docs/kmip.md).
extension Daemon {
    /// The KMIP listener over the same service: the API's server certificate, client CAs and CRL, client certificates
    /// always required (whatever `tls.client_auth` says: KMIP has no other way to authenticate here), the API's
    /// connection caps and deadlines. Nil when not configured.
    func kmipListener(_ server: KMSServer, handshakeFailures: HandshakeFailures,
                      onRunning: @escaping @Sendable (Int) async -> Void) throws -> KMIPListener? {
        guard let kmip = configuration.kmip, let address = configuration.listen.kmip, let tls = configuration.tls else { return nil }
        let box = try TLSContextBox(Self.kmipTLS(Self.tlsConfiguration(tls, adminCA: configuration.admin.clientCA)))
        let limit = ConnectionLimit(connectionPolicy(authenticates: true), events: server.events)
        return KMIPListener(
            frontEnd: KMIPFrontEnd(service: server.service, configuration: kmip), host: address.host, port: address.port, tls: box,
            limit: limit, onHandshakeFailure: { peer, error in handshakeFailures.record(source: peer, error: error) },
            onRunning: onRunning, logger: Logger(label: "kmsd.kmip"))
    }

    /// The background job that rewraps managed objects after the wrapping key rotates.
    func kmipRewrapJob(_ listener: KMIPListener, metrics: ServerMetrics?) -> KMIPRewrapJob {
        KMIPRewrapJob(frontEnd: listener.frontEnd, interval: listener.frontEnd.configuration.rewrapInterval, metrics: metrics,
                      logger: Logger(label: "kmsd.kmip.rewrap"))
    }

    /// The KMIP listener's TLS: the API's, with a client certificate required.
    static func kmipTLS(_ api: TLSConfiguration) -> TLSConfiguration {
        var configuration = api
        configuration.certificateVerification = .noHostnameVerification
        return configuration
    }
}
