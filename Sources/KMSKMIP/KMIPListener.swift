import KMIPTTLV
public import KMSServer
import KMSService
public import Logging
import NIOCore
import NIOPosix
import NIOSSL
public import ServiceLifecycle
import Synchronization

/// The KMIP listener (`listen.kmip`): TLS with client certificates (the API's context, replaceable at a reload), the
/// API's connection caps and deadlines, TTLV messages framed by their header, each answered by the front end before
/// the next is read. A ServiceLifecycle `Service`: at graceful shutdown it stops accepting, lets each connection
/// finish the message in progress and closes it.
///
/// Deadlines, besides the connection caps and the handshake deadline of `ConnectionLimit`: a connection with no
/// message in progress is closed after `idleTimeout`; a message must arrive whole within `idleTimeout` of its first
/// byte; at its maximum age a connection is closed once idle (after the answer in progress, if any).
public final class KMIPListener: Service, Sendable {
    public let frontEnd: KMIPFrontEnd
    let host: String
    let port: Int
    /// The listener's TLS context; a reload installs a new one for new connections.
    public let tls: TLSContextBox
    let limit: ConnectionLimit
    let onHandshakeFailure: @Sendable (_ peer: String, _ error: String) -> Void
    let onRunning: @Sendable (Int) async -> Void
    let logger: Logger

    public init(frontEnd: KMIPFrontEnd, host: String, port: Int, tls: TLSContextBox, limit: ConnectionLimit,
                onHandshakeFailure: @escaping @Sendable (_ peer: String, _ error: String) -> Void = { _, _ in },
                onRunning: @escaping @Sendable (Int) async -> Void = { _ in }, logger: Logger = Logger(label: "kmsd.kmip")) {
        self.frontEnd = frontEnd
        self.host = host
        self.port = port
        self.tls = tls
        self.limit = limit
        self.onHandshakeFailure = onHandshakeFailure
        self.onRunning = onRunning
        self.logger = logger
    }

    /// One accepted connection as the listener's loop sees it.
    struct Connection: Sendable {
        let channel: NIOAsyncChannel<KMIPFrame, ByteBuffer>
        let peer: EventLoopFuture<PeerCertificate?>
        let state: KMIPConnectionState
    }

    public func run() async throws {
        let limit = limit
        let tls = tls
        let onHandshakeFailure = onHandshakeFailure
        let messageLimits = frontEnd.configuration.limits
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: host, port: port) { (channel) -> EventLoopFuture<Connection> in
                // No log line for a refused connection: an unauthenticated peer must not be able to write to disk
                // per attempt. The refusal is counted (security events, metrics).
                guard let ticket = limit.guardConnection(channel) else {
                    return channel.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel)
                }
                let peer = channel.eventLoop.makePromise(of: PeerCertificate?.self)
                return channel.eventLoop.makeCompletedFuture {
                    let state = KMIPConnectionState()
                    try limit.secure(channel, ticket: ticket, tls: tls, peer: peer, onHandshakeFailure: onHandshakeFailure)
                    let operations = channel.pipeline.syncOperations
                    try operations.addHandler(WriteDeadline<ByteBuffer>(timeout: limit.policy.writeTimeout, events: limit.events) { _ in true })
                    try operations.addHandler(IdleStateHandler(readTimeout: TimeAmount(limit.policy.idleTimeout)))
                    try operations.addHandler(ByteToMessageHandler(KMIPFrameDecoder(limits: messageLimits,
                                                                                    deadline: TimeAmount(limit.policy.idleTimeout))))
                    try operations.addHandler(KMIPConnectionGuard(state: state))
                    // Reading off the socket stops while two messages wait to be answered, so a peer that sends many at
                    // once makes kmsd hold at most two beyond the one it answers. (A low watermark of 0 stalled the
                    // next message of a client that sends one at a time until the idle deadline closed it.)
                    let async = try NIOAsyncChannel<KMIPFrame, ByteBuffer>(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(backPressureStrategy: .init(lowWatermark: 1, highWatermark: 2)))
                    return Connection(channel: async, peer: peer.futureResult, state: state)
                }.flatMapErrorThrowing { error in
                    peer.succeed(nil)
                    throw error
                }
            }
        await onRunning(server.channel.localAddress?.port ?? port)
        let connections = KMIPOpenConnections()
        try await withGracefulShutdownHandler {
            try await withThrowingDiscardingTaskGroup { group in
                try await server.executeThenClose { inbound in
                    for try await connection in inbound {
                        guard connections.add(connection.state) else {
                            connection.channel.channel.close(promise: nil)
                            continue
                        }
                        group.addTask { [frontEnd, logger] in
                            await Self.serve(connection, frontEnd: frontEnd, logger: logger)
                            connections.remove(connection.state)
                        }
                    }
                }
            }
        } onGracefulShutdown: {
            server.channel.close(promise: nil)
            connections.shutDown()
        }
    }

    /// Answers the connection's messages one at a time until it closes. A message whose framing cannot be read ends
    /// the connection after its error answer (nothing after it can be framed); any other bad message is answered and
    /// the connection goes on.
    static func serve(_ connection: Connection, frontEnd: KMIPFrontEnd, logger: Logger) async {
        let peer: PeerCertificate? = (try? await connection.peer.get()) ?? nil
        do {
            try await serveMessages(connection, frontEnd: frontEnd, peer: peer)
        } catch {
            // A connection that ends in an error (reset, TLS alert): at debug only, since a peer can cause it at will.
            logger.debug("KMIP connection ended", metadata: ["error": "\(error)"])
        }
    }

    private static func serveMessages(_ connection: Connection, frontEnd: KMIPFrontEnd, peer: PeerCertificate?) async throws {
        try await connection.channel.executeThenClose { inbound, outbound in
            for try await frame in inbound {
                switch frame {
                case .message(let bytes):
                    let response = await frontEnd.respond(to: bytes, peer: peer)
                    try await outbound.write(ByteBuffer(bytes: response))
                    if connection.state.finishedMessage() { return }
                case .unframeable(let bytes):
                    // Answered by the same path as a message that does not decode, so the answer is the same.
                    let response = await frontEnd.respond(to: bytes, peer: peer)
                    try await outbound.write(ByteBuffer(bytes: response))
                    return
                }
            }
        }
    }
}

/// What the framing hands the listener: a whole message, or the first bytes of one whose header cannot be framed
/// (a wrong type, a length over the limit or not a multiple of eight), answered with an error before closing.
enum KMIPFrame: Sendable {
    case message([UInt8])
    case unframeable([UInt8])
}

/// Frames TTLV messages by their eight-byte header (`TTLVDecoder.messageLength`), refusing one over the size limit
/// before reading it. A message must arrive whole within `deadline` of its first byte, or the connection is closed.
final class KMIPFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = KMIPFrame
    let limits: TTLVLimits
    let deadline: TimeAmount
    private var expected: Int?
    private var failed = false
    private var timer: Scheduled<Void>?

    init(limits: TTLVLimits, deadline: TimeAmount) {
        self.limits = limits
        self.deadline = deadline
    }

    func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard !failed else {
            buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
            return .needMoreData
        }
        guard buffer.readableBytes > 0 else { return .needMoreData }
        if timer == nil {
            let channel = context.channel
            timer = context.eventLoop.scheduleTask(in: deadline) { channel.close(promise: nil) }
        }
        if expected == nil {
            guard let header = buffer.getBytes(at: buffer.readerIndex, length: TTLVDecoder.headerLength) else { return .needMoreData }
            do {
                expected = try TTLVDecoder.messageLength(header: header, limits: limits)
            } catch {
                failed = true
                timer?.cancel()
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                context.fireChannelRead(wrapInboundOut(.unframeable(header)))
                return .needMoreData
            }
        }
        guard let length = expected, let bytes = buffer.readBytes(length: length) else { return .needMoreData }
        expected = nil
        timer?.cancel()
        timer = nil
        context.fireChannelRead(wrapInboundOut(.message(bytes)))
        return .continue
    }

    func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        timer?.cancel()
        timer = nil
        buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
        return .needMoreData
    }
}

/// Whether a connection has a message in progress (read, not yet answered) and whether it should close once it has
/// none: at its maximum age, at graceful shutdown. Shared by the connection's guard handler (event loop) and its
/// serving task.
final class KMIPConnectionState: Sendable {
    private struct State {
        /// Messages read and not yet answered.
        var inProgress = 0
        var closeWhenIdle = false
        var channel: (any Channel)?
    }
    private let state = Mutex(State())

    func attach(_ channel: any Channel) { state.withLock { $0.channel = channel } }

    func startedMessage() { state.withLock { $0.inProgress += 1 } }

    /// An answer was written; true when the connection should now close (asked to, and nothing else in progress).
    func finishedMessage() -> Bool {
        state.withLock { state in
            state.inProgress = max(0, state.inProgress - 1)
            return state.closeWhenIdle && state.inProgress == 0
        }
    }

    /// Closes the connection now if it is idle, else after the answer in progress.
    func closeWhenIdle() {
        let idle = state.withLock { state -> (any Channel)? in
            state.closeWhenIdle = true
            return state.inProgress > 0 ? nil : state.channel
        }
        idle?.close(promise: nil)
    }

    /// Closes the connection if it is idle (the idle deadline).
    func closeIfIdle() {
        let idle = state.withLock { $0.inProgress > 0 ? nil : $0.channel }
        idle?.close(promise: nil)
    }
}

/// Sits between the framing and the listener's loop: marks a message in progress when one arrives, and turns the
/// idle deadline and the maximum age into closing the connection when it has no message in progress.
final class KMIPConnectionGuard: ChannelInboundHandler {
    typealias InboundIn = KMIPFrame
    typealias InboundOut = KMIPFrame
    let state: KMIPConnectionState

    init(state: KMIPConnectionState) {
        self.state = state
    }

    func handlerAdded(context: ChannelHandlerContext) {
        state.attach(context.channel)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        state.startedMessage()
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            state.closeIfIdle()
        } else if event is ConnectionReachedMaxAge {
            state.closeWhenIdle()
        } else if event is ConnectionIdleAfterMaxAge {
            state.closeIfIdle()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }
}

/// The listener's open connections, so that a graceful shutdown reaches each.
final class KMIPOpenConnections: Sendable {
    private struct State {
        var open: [ObjectIdentifier: KMIPConnectionState] = [:]
        var shuttingDown = false
    }
    private let state = Mutex(State())

    /// False once shutting down (the caller closes the connection).
    func add(_ connection: KMIPConnectionState) -> Bool {
        state.withLock { state in
            guard !state.shuttingDown else { return false }
            state.open[ObjectIdentifier(connection)] = connection
            return true
        }
    }

    func remove(_ connection: KMIPConnectionState) {
        _ = state.withLock { $0.open.removeValue(forKey: ObjectIdentifier(connection)) }
    }

    func shutDown() {
        let open = state.withLock { state in
            state.shuttingDown = true
            return Array(state.open.values)
        }
        for connection in open { connection.closeWhenIdle() }
    }
}
