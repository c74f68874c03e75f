public import HummingbirdCore
import Logging
import NIOCore
public import NIOSSL
import Synchronization

/// The server's TLS context, replaceable at run time (SIGHUP): new connections use the newest context (new server
/// certificate, new client CA); connections already open keep theirs.
public final class TLSContextBox: Sendable {
    private let context: Mutex<NIOSSLContext>

    public init(_ configuration: TLSConfiguration) throws {
        context = Mutex(try NIOSSLContext(configuration: configuration))
    }

    /// Builds the new context first, so a bad file leaves the old one in place.
    public func replace(_ configuration: TLSConfiguration) throws {
        let fresh = try NIOSSLContext(configuration: configuration)
        context.withLock { $0 = fresh }
    }

    var current: NIOSSLContext { context.withLock { $0 } }
}

/// HTTP/1, behind a TLS handler made from the box's current context at each connection (when there is a box), with
/// the connection limit applied first.
struct LimitedHTTP1Channel: ServerChildChannel {
    typealias Value = HTTP1Channel.Value
    let base: HTTP1Channel
    let box: TLSContextBox?
    let limit: ConnectionLimit

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        guard limit.admit() else {
            logger.warning("connection refused: too many connections", metadata: ["security_event": "connection_limit"])
            channel.close(promise: nil)
            return channel.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel)
        }
        channel.closeFuture.whenComplete { _ in limit.release() }
        return channel.eventLoop.makeCompletedFuture {
            if let box { try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: box.current)) }
        }.flatMap {
            base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

extension HTTPServerBuilder {
    /// HTTP/1 (over TLS whose context can be replaced while the server runs, when `tls` is given), at most
    /// `limit.maximum` connections at once.
    public static func http1(tls box: TLSContextBox?, limit: ConnectionLimit) -> HTTPServerBuilder {
        .init { responder in LimitedHTTP1Channel(base: HTTP1Channel(responder: responder), box: box, limit: limit) }
    }
}
