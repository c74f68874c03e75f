import HTTPTypes
package import NIOCore
import NIOHTTPTypes
package import KMSService

/// The deadline for handing a connection's answers to the operating system: a tracked write still pending
/// `timeout` after it was made (the peer stopped reading, the socket's buffer is full) closes the connection
/// (`write_timeout`). Which writes are tracked is the listener's choice: the end of each HTTP answer (the writes of
/// one connection complete in order, so its end completes last), every KMIP answer. One timer per connection at a
/// time, scheduled only while a tracked write is pending and re-armed from the oldest one when it fires.
package final class WriteDeadline<Part>: ChannelOutboundHandler, RemovableChannelHandler {
    package typealias OutboundIn = Part
    package typealias OutboundOut = Part
    let timeout: TimeAmount
    let events: SecurityEvents
    let tracks: (Part) -> Bool
    /// When each pending tracked write was made, oldest first.
    private var pending = CircularBuffer<NIODeadline>()
    private let timer = MovingDeadline()

    package init(timeout: Duration, events: SecurityEvents, tracks: @escaping (Part) -> Bool) {
        self.timeout = TimeAmount(timeout)
        self.events = events
        self.tracks = tracks
    }

    package func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard tracks(unwrapOutboundIn(data)) else {
            context.write(data, promise: promise)
            return
        }
        let tracked = promise ?? context.eventLoop.makePromise()
        pending.append(.now())
        tracked.futureResult.assumeIsolated().whenComplete { [self] _ in
            _ = pending.popFirst()
        }
        context.write(data, promise: tracked)
        // Armed already for an older write: it re-arms for this one when it fires (no closure made per write).
        guard !timer.isArmed else { return }
        timer.arm(on: context.eventLoop, at: .now() + timeout) { [self] in
            // The oldest pending write decides; none pending, nothing to watch.
            guard let oldest = pending.first else { return nil }
            guard oldest + timeout <= .now() else { return oldest + timeout }
            events.record("write_timeout")
            context.close(promise: nil)
            return nil
        }
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        timer.cancel()
    }
}

/// One timer for a deadline that moves (the oldest pending write's, the request in progress's): armed when nothing is
/// armed, and when it fires, `check` says what comes next: nil, nothing to watch; a deadline, armed again for it. A
/// connection has at most one scheduled task per such deadline, however many requests or writes it has. Used on its
/// channel's event loop only.
final class MovingDeadline {
    private var scheduled: Scheduled<Void>?

    var isArmed: Bool { scheduled != nil }

    func arm(on loop: any EventLoop, at deadline: NIODeadline, _ check: @escaping () -> NIODeadline?) {
        guard scheduled == nil else { return }
        scheduled = loop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            scheduled = nil
            if let next = check() { arm(on: loop, at: next, check) }
        }
    }

    func cancel() {
        scheduled?.cancel()
        scheduled = nil
    }
}

/// The deadline for receiving a whole HTTP request, headers and body: from the request's first byte (or, for a
/// pipelined request whose first bytes came with the one before, from its head) to its end. A request still arriving
/// `timeout` later closes the connection (`request_timeout`), however steadily its bytes trickle in; the idle timeout
/// does not restart it. Sits between TLS and the HTTP parser, where it sees bytes arrive; `HTTPRequestGuard`, behind
/// the parser, tells it where requests start and end.
package final class RequestReadDeadline: ChannelInboundHandler, RemovableChannelHandler {
    package typealias InboundIn = ByteBuffer
    package typealias InboundOut = ByteBuffer
    let timeout: TimeAmount
    let events: SecurityEvents
    /// Since when the request in progress has been arriving; nil between requests.
    private var startedAt: NIODeadline?
    private let timer = MovingDeadline()
    private var context: ChannelHandlerContext?

    package init(timeout: Duration, events: SecurityEvents) {
        self.timeout = TimeAmount(timeout)
        self.events = events
    }

    package func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    package func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        timer.cancel()
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if startedAt == nil { start() }
        context.fireChannelRead(data)
    }

    /// The parser read a request's head (its first bytes may have come with the request before).
    func requestStarted() {
        if startedAt == nil { start() }
    }

    /// The parser read a request's end.
    func requestEnded() {
        startedAt = nil
    }

    private func start() {
        guard let loop = context?.eventLoop else { return }
        let now = NIODeadline.now()
        startedAt = now
        guard !timer.isArmed else { return }
        timer.arm(on: loop, at: now + timeout) { [self] in
            // The request in progress decides; between requests, nothing to watch.
            guard let startedAt, let context else { return nil }
            guard startedAt + timeout <= .now() else { return startedAt + timeout }
            events.record("request_timeout")
            context.close(promise: nil)
            return nil
        }
    }
}

/// Behind the HTTP parser: tells the connection's `RequestReadDeadline` where each request starts and ends, and
/// closes the connection after an answer that refuses the caller (401, 403, 413, 429, 431) or that is written before
/// its request was read to the end (the rest of a refused body is never read). Such an answer says
/// `Connection: close`.
final class HTTPRequestGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    static let refusals: Set<Int> = [401, 403, 413, 429, 431]
    private var deadline: RequestReadDeadline?
    /// Requests read to their end, and answers written to theirs: answers go in request order, so the request being
    /// answered has been read to its end when more requests ended than answers did (a pipelined request's head
    /// arriving meanwhile changes nothing).
    private var requestsEnded = 0
    private var answersEnded = 0
    private var closeAfterAnswer = false

    func handlerAdded(context: ChannelHandlerContext) {
        deadline = try? context.pipeline.syncOperations.handler(type: RequestReadDeadline.self)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            deadline?.requestStarted()
        case .end:
            requestsEnded += 1
            deadline?.requestEnded()
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(var response) where requestsEnded <= answersEnded || Self.refusals.contains(response.status.code):
            closeAfterAnswer = true
            response.headerFields[.connection] = "close"
            context.write(wrapOutboundOut(.head(response)), promise: promise)
        case .end where closeAfterAnswer:
            answersEnded += 1
            closeAfterAnswer = false
            let written = promise ?? context.eventLoop.makePromise()
            context.writeAndFlush(data, promise: written)
            written.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        case .end:
            answersEnded += 1
            context.write(data, promise: promise)
        default:
            context.write(data, promise: promise)
        }
    }
}
