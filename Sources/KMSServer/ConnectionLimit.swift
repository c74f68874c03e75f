import HTTPTypes
package import NIOCore
import NIOHTTPTypes
public import KMSService
import Synchronization

/// What one listener allows its connections: how many at once (in all, per source address, and before they have
/// authenticated), and how long each may take to authenticate, stay idle and live.
///
/// A connection is *unauthenticated* until its TLS handshake completes with a verified client certificate; on a
/// listener without TLS (the metrics listener, a development API without TLS) there is no such step and only the
/// totals apply. The unauthenticated caps are what keep slots free for storage nodes: a peer without a certificate
/// can hold at most `maxUnauthenticatedPerSource` connections, each for at most `handshakeTimeout`, and all such peers
/// together at most `maxUnauthenticated`, which is below `maxConnections`.
public struct ConnectionPolicy: Sendable {
    public var maxConnections: Int
    public var maxPerSource: Int
    public var maxUnauthenticated: Int
    public var maxUnauthenticatedPerSource: Int
    /// From accept to a completed TLS handshake (or, without TLS, to the first byte).
    public var handshakeTimeout: Duration
    /// A keep-alive connection with no request in progress is closed after this long.
    public var idleTimeout: Duration
    /// A connection is asked to close after this long (after its request in progress, if any), so that a reloaded
    /// client CA or CRL reaches every connection; it is closed regardless `idleTimeout` later.
    public var maxAge: Duration
    /// Whether connections authenticate (TLS with client certificates); without, the unauthenticated caps do not apply.
    public var authenticates: Bool

    public init(maxConnections: Int, maxPerSource: Int, maxUnauthenticated: Int, maxUnauthenticatedPerSource: Int,
                handshakeTimeout: Duration, idleTimeout: Duration, maxAge: Duration, authenticates: Bool) {
        self.maxConnections = maxConnections
        self.maxPerSource = maxPerSource
        self.maxUnauthenticated = maxUnauthenticated
        self.maxUnauthenticatedPerSource = maxUnauthenticatedPerSource
        self.handshakeTimeout = handshakeTimeout
        self.idleTimeout = idleTimeout
        self.maxAge = maxAge
        self.authenticates = authenticates
    }
}

/// Counts a listener's open connections in all and per source address, and admits or refuses each new one by its
/// `ConnectionPolicy`. A refused connection is closed as soon as it is accepted and counted as a security event
/// (`connection_limit`, `source_connection_limit`, `unauthenticated_connection_limit`); nothing is written to disk
/// for it.
public final class ConnectionLimit: Sendable {
    public let policy: ConnectionPolicy
    let events: SecurityEvents

    private struct Counts {
        var open = 0
        var unauthenticated = 0
    }
    private struct State {
        var total = Counts()
        var sources: [String: Counts] = [:]
        var admitted = 0
    }
    private let state = Mutex(State())

    public init(_ policy: ConnectionPolicy, events: SecurityEvents) {
        self.policy = policy
        self.events = events
    }

    /// Open connections.
    public var current: Int { state.withLock { $0.total.open } }
    /// Open connections that have not authenticated yet.
    public var currentUnauthenticated: Int { state.withLock { $0.total.unauthenticated } }
    /// Source addresses with an open connection.
    public var sources: Int { state.withLock { $0.sources.count } }
    /// Connections admitted since the listener started.
    public var admitted: Int { state.withLock { $0.admitted } }

    /// Counts a new connection from `source` as open and unauthenticated; nil when a cap refuses it (the caller closes it).
    func admit(source: String) -> ConnectionTicket? {
        let refusal = state.withLock { state -> String? in
            var entry = state.sources[source] ?? Counts()
            if state.total.open >= policy.maxConnections { return "connection_limit" }
            if entry.open >= policy.maxPerSource { return "source_connection_limit" }
            if policy.authenticates {
                if state.total.unauthenticated >= policy.maxUnauthenticated || entry.unauthenticated >= policy.maxUnauthenticatedPerSource {
                    return "unauthenticated_connection_limit"
                }
            }
            entry.open += 1
            entry.unauthenticated += 1
            state.sources[source] = entry
            state.total.open += 1
            state.total.unauthenticated += 1
            state.admitted += 1
            return nil
        }
        if let refusal {
            events.record(refusal)
            return nil
        }
        return ConnectionTicket(limit: self, source: source)
    }

    fileprivate func authenticated(_ source: String) {
        state.withLock { state in
            state.total.unauthenticated -= 1
            state.sources[source]?.unauthenticated -= 1
        }
    }

    fileprivate func release(_ source: String, authenticated: Bool) {
        state.withLock { state in
            state.total.open -= 1
            if !authenticated { state.total.unauthenticated -= 1 }
            guard var entry = state.sources[source] else { return }
            entry.open -= 1
            if !authenticated { entry.unauthenticated -= 1 }
            state.sources[source] = entry.open > 0 ? entry : nil
        }
    }
}

/// One admitted connection's place in its `ConnectionLimit`: established when its handshake completed (or, without
/// TLS, when its first byte arrived), authenticated when that handshake verified a client certificate, released
/// exactly once when it closes.
package final class ConnectionTicket: Sendable {
    private struct State {
        var established = false
        var authenticated = false
        var released = false
        var timedOut = false
    }
    private let state = Mutex(State())
    private let limit: ConnectionLimit
    let source: String

    fileprivate init(limit: ConnectionLimit, source: String) {
        self.limit = limit
        self.source = source
    }

    /// The handshake deadline closed the connection.
    var timedOut: Bool { state.withLock { $0.timedOut } }

    func establish(authenticated: Bool) {
        let changed = state.withLock { state -> Bool in
            guard !state.established, !state.released else { return false }
            state.established = true
            state.authenticated = authenticated
            return authenticated
        }
        if changed { limit.authenticated(source) }
    }

    /// True when the connection had not been established (the caller closes it).
    func expireHandshake() -> Bool {
        state.withLock { state in
            guard !state.established else { return false }
            state.timedOut = true
            return true
        }
    }

    func release() {
        let authenticated = state.withLock { state -> Bool? in
            guard !state.released else { return nil }
            state.released = true
            return state.authenticated
        }
        if let authenticated { limit.release(source, authenticated: authenticated) }
    }
}

extension ConnectionLimit {
    /// Admits `channel` or closes it; arms its handshake deadline and maximum age, both cancelled when it closes.
    /// Runs on the channel's event loop (a child channel's setup).
    package func guardConnection(_ channel: any Channel) -> ConnectionTicket? {
        let source = channel.remoteAddress?.ipAddress ?? "unknown"
        guard let ticket = admit(source: source) else {
            channel.close(promise: nil)
            return nil
        }
        let policy = self.policy
        let events = self.events
        let handshake = channel.eventLoop.scheduleTask(in: TimeAmount(policy.handshakeTimeout)) {
            guard ticket.expireHandshake() else { return }
            events.record("handshake_timeout")
            channel.close(promise: nil)
        }
        // At its maximum age a connection is marked (`RecycleAtMaxAge`): its next request is answered with
        // `Connection: close` and the connection closed after it. One that sent no request since is closed an idle
        // timeout later (that second timer exists only for connections that reach their maximum age); one whose
        // request is in progress then is left to close after its answer.
        let aged = channel.eventLoop.scheduleTask(in: TimeAmount(policy.maxAge)) {
            channel.pipeline.fireUserInboundEventTriggered(ConnectionReachedMaxAge())
            channel.eventLoop.scheduleTask(in: TimeAmount(policy.idleTimeout)) {
                channel.pipeline.fireUserInboundEventTriggered(ConnectionIdleAfterMaxAge())
            }
        }
        channel.closeFuture.whenComplete { _ in
            handshake.cancel()
            aged.cancel()
            ticket.release()
        }
        return ticket
    }
}

/// Without TLS there is no handshake: a connection is established by its first byte.
final class FirstByteObserver: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    let ticket: ConnectionTicket

    init(ticket: ConnectionTicket) {
        self.ticket = ticket
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        ticket.establish(authenticated: false)
        context.fireChannelRead(data)
        context.pipeline.syncOperations.removeHandler(self, promise: nil)
    }
}


/// The event that tells a connection's `RecycleAtMaxAge` it has reached its maximum age.
package struct ConnectionReachedMaxAge {}

/// The event that tells a connection's `RecycleAtMaxAge` an idle timeout has passed since its maximum age.
package struct ConnectionIdleAfterMaxAge {}

/// Recycles a connection that reached its maximum age without failing a request: closing it while idle would race
/// a request the client may be sending at that moment. Instead, the first request after the maximum age is answered
/// with `Connection: close` and the connection is closed after that answer (Hummingbird's quiesce, sent while the
/// request is in progress). Sits between the HTTP codec and Hummingbird's connection state handler.
final class RecycleAtMaxAge: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private var aged = false
    private var closing = false
    /// A request has arrived and its answer has not been written to the end.
    private var inProgress = false

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ConnectionReachedMaxAge {
            aged = true
        } else if event is ConnectionIdleAfterMaxAge {
            // Idle: nothing to lose by closing. A request in progress closes the connection after its answer.
            if !inProgress && !closing { context.close(promise: nil) }
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let startsRequest = if case .head = unwrapInboundIn(data) { true } else { false }
        if startsRequest { inProgress = true }
        context.fireChannelRead(data)
        if aged && startsRequest && !closing {
            closing = true
            // The request is in progress for the state handler now: it closes once the answer is written.
            context.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data) { inProgress = false }
        guard closing, case .head(var response) = unwrapOutboundIn(data) else {
            context.write(data, promise: promise)
            return
        }
        response.headerFields[.connection] = "close"
        context.write(wrapOutboundOut(.head(response)), promise: promise)
    }
}
