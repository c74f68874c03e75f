public import HummingbirdCore
import Logging
public import NIOCore
import NIOTLS
import NIOHTTPTypes
import CTLSOptions
public import NIOSSL
package import KMSService
import SwiftASN1
import X509
import Synchronization

/// The server's TLS context, replaceable at run time (SIGHUP): new connections use the newest context (new server
/// certificate, new client CA); connections already open keep theirs.
public final class TLSContextBox: Sendable {
    private let context: Mutex<NIOSSLContext>

    public init(_ configuration: TLSConfiguration) throws {
        context = Mutex(try Self.makeContext(configuration))
    }

    /// Swaps in a context built (and checked) beforehand: a reload builds every part first and swaps them together.
    public func install(_ fresh: NIOSSLContext) {
        context.withLock { $0 = fresh }
    }

    /// A server context that resumes no session: no session tickets (TLS 1.3 and 1.2) and no session cache (TLS 1.2
    /// resumption by session ID). A resumed session would skip the handshake's client certificate checks, so kmsd
    /// turns resumption off. swift-nio-ssl 2.37 has no setting for it: the context's `SSL_CTX` is read from its stored
    /// property and `SSL_OP_NO_TICKET` and `SSL_SESS_CACHE_OFF` set through BoringSSL directly. If a future
    /// swift-nio-ssl stores it differently, kmsd refuses to start rather than serve with resumption (ci/tls-matrix and
    /// the test `noTLSSessionTicketsAreIssued` check that no session is resumed).
    public static func makeContext(_ configuration: TLSConfiguration) throws -> NIOSSLContext {
        let context = try NIOSSLContext(configuration: configuration)
        guard let handle = Mirror(reflecting: context).children.first(where: { $0.label == "sslContext" })?.value as? OpaquePointer else {
            throw TLSSetupError("cannot turn off TLS session tickets: swift-nio-ssl's context no longer exposes its SSL_CTX")
        }
        guard kmsd_ssl_ctx_disable_tickets(UnsafeMutableRawPointer(handle)) & 0x4000 != 0 else {
            throw TLSSetupError("cannot turn off TLS session tickets")
        }
        guard kmsd_ssl_ctx_disable_session_cache(UnsafeMutableRawPointer(handle)) == 0 else {
            throw TLSSetupError("cannot turn off the TLS session cache")
        }
        return context
    }

    package var current: NIOSSLContext { context.withLock { $0 } }
}

/// The server's TLS context could not be made as kmsd requires.
public struct TLSSetupError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// HTTP/1, behind a TLS handler made from the box's current context at each connection (when there is a box), with
/// the connection caps and deadlines of a `ConnectionLimit` applied first. The client certificate is parsed once, when
/// the handshake completes, and every request of the connection reads it from `PeerCertificate.connection`.
struct LimitedHTTP1Channel: ServerChildChannel {
    struct Value: ServerChildChannelValue {
        let base: HTTP1Channel.Value
        /// The verified client certificate, once the handshake completed (nil without one, or without TLS).
        let peer: EventLoopFuture<PeerCertificate?>
        var channel: any Channel { base.channel }
    }

    let base: HTTP1Channel
    let box: TLSContextBox?
    let limit: ConnectionLimit
    let onHandshakeFailure: @Sendable (_ peer: String, _ error: String) -> Void
    /// Handlers between TLS and the HTTP parser (the transit listener's `LIST` rewriting), made per connection.
    let beforeHTTP: @Sendable () -> [any ChannelHandler & Sendable]

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        // No log line for a refused connection: an unauthenticated peer must not be able to write to disk per attempt.
        // The refusal is counted (security events, metrics).
        guard let ticket = limit.guardConnection(channel) else {
            return channel.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel)
        }
        let peer = channel.eventLoop.makePromise(of: PeerCertificate?.self)
        return channel.eventLoop.makeCompletedFuture {
            try limit.secure(channel, ticket: ticket, tls: box, peer: peer, onHandshakeFailure: onHandshakeFailure)
            try channel.pipeline.syncOperations.addHandler(RequestReadDeadline(timeout: limit.policy.requestReadTimeout, events: limit.events))
            for handler in beforeHTTP() { try channel.pipeline.syncOperations.addHandler(handler) }
        }.flatMap {
            base.setup(channel: channel, logger: logger)
        }.map {
            Value(base: $0, peer: peer.futureResult)
        }.flatMapErrorThrowing { error in
            peer.succeed(nil)
            throw error
        }
    }

    func handle(value: Value, logger: Logger) async {
        // The first request cannot arrive before the handshake completed, so this wait costs a request nothing.
        let peer = (try? await value.peer.get()) ?? nil
        await withTaskExecutorPreference(EventLoopTaskExecutor(value.channel.eventLoop)) {
            await PeerCertificate.$connection.withValue(peer) {
                await base.handle(value: value.base, logger: logger)
            }
        }
    }
}

extension ConnectionLimit {
    /// Puts an admitted connection's authentication in its pipeline: the TLS handler (from the box's current context)
    /// and the observer that establishes the ticket and completes `peer` with the client certificate at the handshake;
    /// without TLS, the first-byte observer (and `peer` is nil at once). Runs on the channel's event loop; every
    /// listener (the API, transit, KMIP) sets its connections up through this.
    package func secure(_ channel: any Channel, ticket: ConnectionTicket, tls box: TLSContextBox?, peer: EventLoopPromise<PeerCertificate?>,
                        onHandshakeFailure: @escaping @Sendable (_ peer: String, _ error: String) -> Void) throws {
        let operations = channel.pipeline.syncOperations
        if let box {
            try operations.addHandler(NIOSSLServerHandler(context: box.current))
            try operations.addHandler(HandshakeObserver(ticket: ticket, handshakeTimeout: policy.handshakeTimeout, peer: peer,
                                                        onFailure: onHandshakeFailure))
        } else {
            peer.succeed(nil)
            try operations.addHandler(FirstByteObserver(ticket: ticket))
        }
    }
}

extension HTTPServerBuilder {
    /// HTTP/1 (over TLS whose context can be replaced while the server runs, when `tls` is given), within the caps and
    /// deadlines of `limit` (its idle timeout is Hummingbird's; a whole request must arrive within its
    /// `requestReadTimeout` and each answer be written within its `writeTimeout`; a refusal closes the connection).
    /// `onHandshakeFailure` hears of every TLS handshake that failed (no or bad client certificate, old protocol, the
    /// handshake deadline).
    /// `beforeHTTP` makes each connection's handlers that see the bytes between TLS and the HTTP parser.
    public static func http1(tls box: TLSContextBox?, limit: ConnectionLimit,
                             beforeHTTP: @escaping @Sendable () -> [any ChannelHandler & Sendable] = { [] },
                             onHandshakeFailure: @escaping @Sendable (_ peer: String, _ error: String) -> Void = { _, _ in }) -> HTTPServerBuilder {
        .init { responder in
            LimitedHTTP1Channel(base: HTTP1Channel(responder: responder, configuration: .init(
                                    additionalChannelHandlers: [
                                        RecycleAtMaxAge(), HTTPRequestGuard(),
                                        WriteDeadline<HTTPResponsePart>(timeout: limit.policy.writeTimeout, events: limit.events) {
                                            if case .end = $0 { true } else { false }
                                        },
                                    ], idleTimeout: TimeAmount(limit.policy.idleTimeout))),
                                box: box, limit: limit, onHandshakeFailure: onHandshakeFailure, beforeHTTP: beforeHTTP)
        }
    }
}

/// Sits behind the TLS handler: marks the connection established (and authenticated when a client certificate was
/// verified) when the handshake completes, and reports an error that arrives before then: the client was refused
/// during the handshake, or did not finish it in time (it never reaches a route, so this is the only place to see it).
final class HandshakeObserver: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    let ticket: ConnectionTicket
    let handshakeTimeout: Duration
    let onFailure: @Sendable (String, String) -> Void
    /// Completed exactly once: with the parsed certificate at the handshake, or nil when the connection ends first.
    private var peer: EventLoopPromise<PeerCertificate?>?
    private var completed = false
    private var reported = false

    init(ticket: ConnectionTicket, handshakeTimeout: Duration, peer: EventLoopPromise<PeerCertificate?>,
         onFailure: @escaping @Sendable (String, String) -> Void) {
        self.ticket = ticket
        self.handshakeTimeout = handshakeTimeout
        self.peer = peer
        self.onFailure = onFailure
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event {
            completed = true
            // The one parse of the client certificate for the whole connection.
            let parsed = (try? context.pipeline.syncOperations.nioSSL_peerCertificate())
                .flatMap { try? $0?.toDERBytes() }
                .flatMap { try? Certificate(derEncoded: $0) }
            ticket.establish(authenticated: parsed != nil)
            resolve(parsed.map(PeerCertificate.init))
            context.pipeline.syncOperations.removeHandler(self, promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        resolve(nil)
    }

    private func resolve(_ certificate: PeerCertificate?) {
        peer?.succeed(certificate)
        peer = nil
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        report(context, String("\(error)".prefix(300)))
        context.fireErrorCaught(error)
    }

    /// Some refusals (an old protocol version) end the connection without an error reaching this handler.
    func channelInactive(context: ChannelHandlerContext) {
        resolve(nil)
        report(context, ticket.timedOut ? "no TLS handshake within \(handshakeTimeout)" : "the connection closed before the TLS handshake completed")
        context.fireChannelInactive()
    }

    private func report(_ context: ChannelHandlerContext, _ error: String) {
        guard !completed && !reported else { return }
        reported = true
        onFailure(ticket.source, error)
    }
}
