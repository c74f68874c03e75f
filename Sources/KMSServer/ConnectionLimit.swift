import HTTPTypes
package import NIOCore
import NIOHTTPTypes
public import KMSService
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What one listener allows its connections: how many at once (in all, per source address, and before they have
/// authenticated), and how long each may take to authenticate, send a request, take an answer, stay idle and live.
///
/// A connection is *unauthenticated* until its TLS handshake completes with a verified client certificate; on a
/// listener without TLS (the metrics listener, a development API without TLS) there is no such step and only the
/// totals apply. The unauthenticated caps are what keep slots free for storage nodes: a peer without a certificate
/// can hold at most `maxUnauthenticatedPerSource` connections, each for at most `handshakeTimeout`, and all such peers
/// together at most `maxUnauthenticated`, which is below `maxConnections`. When the unauthenticated slots are full,
/// a new connection takes the place of one that has not finished its handshake (see `ConnectionLimit`) rather than
/// being refused, so that peers spread over many addresses cannot keep a storage node out.
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
    /// A whole request (headers and body) must arrive within this of its first byte, or the connection is closed.
    public var requestReadTimeout: Duration
    /// An answer that cannot be handed to the operating system within this (a peer that does not read) closes the
    /// connection.
    public var writeTimeout: Duration

    public init(maxConnections: Int, maxPerSource: Int, maxUnauthenticated: Int, maxUnauthenticatedPerSource: Int,
                handshakeTimeout: Duration, idleTimeout: Duration, maxAge: Duration, authenticates: Bool,
                requestReadTimeout: Duration = .seconds(10), writeTimeout: Duration = .seconds(10)) {
        self.maxConnections = maxConnections
        self.maxPerSource = maxPerSource
        self.maxUnauthenticated = maxUnauthenticated
        self.maxUnauthenticatedPerSource = maxUnauthenticatedPerSource
        self.handshakeTimeout = handshakeTimeout
        self.idleTimeout = idleTimeout
        self.maxAge = maxAge
        self.authenticates = authenticates
        self.requestReadTimeout = requestReadTimeout
        self.writeTimeout = writeTimeout
    }
}

/// Counts a listener's open connections in all and per source address, and admits or refuses each new one by its
/// `ConnectionPolicy`. A refused connection is closed as soon as it is accepted and counted as a security event
/// (`connection_limit`, `source_connection_limit`, `unauthenticated_connection_limit`); nothing is written to disk
/// for it.
///
/// Admission under a flood spread over many addresses: when the listener is full (all connections, or the
/// unauthenticated share), a new connection is not refused while some connection is still *pending* (accepted, its
/// handshake not complete; without TLS, no byte received). Instead the pending connection to give way is chosen from
/// the address prefix (/24 for IPv4, /64 for IPv6) with the most pending connections, the oldest of them, and closed
/// (`connection_evicted`). A storage node completes its handshake in milliseconds, so it is served while an attacker
/// churns through its own connections; an attacker's prefix gives way before a node's, whose prefix holds one or two.
/// When none is pending, a connection that completed its handshake without a client certificate gives way the same
/// way (where certificates are optional, as on transit, a peer could otherwise hold the unauthenticated share with
/// finished handshakes); a connection that authenticated never does. Only a source over its own per-address caps is
/// refused.
public final class ConnectionLimit: Sendable {
    public let policy: ConnectionPolicy
    package let events: SecurityEvents

    private enum Phase { case pending, unauthenticated, authenticated }
    private struct Entry {
        let source: String
        let prefix: String
        var phase: Phase
        let channel: (any Channel)?
    }
    private struct Counts {
        var open = 0
        var unauthenticated = 0
    }
    private struct State {
        var total = Counts()
        var sources: [String: Counts] = [:]
        /// Pending connections per address prefix.
        var pendingPerPrefix: [String: Int] = [:]
        /// Open connections by admission number (increasing: a lower number is older).
        var entries: [UInt64: Entry] = [:]
        var next: UInt64 = 0
        var admitted = 0
        var evicted = 0

        /// Forgets an open connection, returning its counts to the pool.
        mutating func remove(_ id: UInt64) -> Entry? {
            guard let entry = entries.removeValue(forKey: id) else { return nil }
            total.open -= 1
            var counts = sources[entry.source] ?? Counts()
            counts.open -= 1
            if entry.phase != .authenticated {
                total.unauthenticated -= 1
                counts.unauthenticated -= 1
            }
            sources[entry.source] = counts.open > 0 ? counts : nil
            if entry.phase == .pending { dropPending(entry.prefix) }
            return entry
        }

        mutating func dropPending(_ prefix: String) {
            let left = (pendingPerPrefix[prefix] ?? 1) - 1
            pendingPerPrefix[prefix] = left > 0 ? left : nil
        }

        /// The connection to give way: a pending one, the oldest of the prefix with the most pending connections; when
        /// none is pending and `established` allows, one that completed its handshake without a certificate (on a
        /// listener where certificates are optional: a token client, or a peer that only shook hands), the oldest of
        /// the prefix with the most such connections. Never one that authenticated.
        func victim(established: Bool) -> UInt64? {
            if let pending = oldest(of: .pending, counts: pendingPerPrefix) { return pending }
            guard established else { return nil }
            var perPrefix: [String: Int] = [:]
            for entry in entries.values where entry.phase == .unauthenticated { perPrefix[entry.prefix, default: 0] += 1 }
            return oldest(of: .unauthenticated, counts: perPrefix)
        }

        private func oldest(of phase: Phase, counts: [String: Int]) -> UInt64? {
            var chosen: (id: UInt64, count: Int)?
            for (id, entry) in entries where entry.phase == phase {
                let count = counts[entry.prefix] ?? 0
                if let current = chosen, current.count > count || (current.count == count && current.id < id) { continue }
                chosen = (id, count)
            }
            return chosen?.id
        }
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
    /// Pending connections closed to admit a newer one since the listener started.
    public var evicted: Int { state.withLock { $0.evicted } }

    /// The prefix whose addresses share an unauthenticated budget: /24 for IPv4, /64 for IPv6 (an IPv4-mapped IPv6
    /// address counts as IPv4). Anything else (a Unix socket, an unknown peer) is its own prefix.
    static func prefix(of source: String) -> String {
        var address = source
        if address.lowercased().hasPrefix("::ffff:"), address.contains(".") { address = String(address.dropFirst(7)) }
        var v4 = in_addr()
        if inet_pton(AF_INET, address, &v4) == 1 {
            let host = UInt32(bigEndian: v4.s_addr)
            return "\(host >> 24).\((host >> 16) & 0xff).\((host >> 8) & 0xff).0/24"
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, address, &v6) == 1 {
            let bytes = withUnsafeBytes(of: v6) { Array($0.prefix(8)) }
            var text = ""
            for index in stride(from: 0, to: 8, by: 2) {
                text += String(UInt16(bytes[index]) << 8 | UInt16(bytes[index + 1]), radix: 16) + ":"
            }
            return text + ":/64"
        }
        return source
    }

    /// Counts a new connection from `source` as open and pending; nil when a cap refuses it (the caller closes it).
    /// When the listener is full, a pending connection gives way (closed here) instead.
    func admit(source: String, channel: (any Channel)? = nil) -> ConnectionTicket? {
        let prefix = Self.prefix(of: source)
        let outcome = state.withLock { state -> (id: UInt64?, refusal: String?, evicted: Entry?) in
            let entry = state.sources[source] ?? Counts()
            if entry.open >= policy.maxPerSource { return (nil, "source_connection_limit", nil) }
            if policy.authenticates && entry.unauthenticated >= policy.maxUnauthenticatedPerSource {
                return (nil, "unauthenticated_connection_limit", nil)
            }
            var evicted: Entry?
            let full = state.total.open >= policy.maxConnections
            if full || (policy.authenticates && state.total.unauthenticated >= policy.maxUnauthenticated) {
                guard let victim = state.victim(established: policy.authenticates), let removed = state.remove(victim) else {
                    return (nil, full ? "connection_limit" : "unauthenticated_connection_limit", nil)
                }
                state.evicted += 1
                evicted = removed
            }
            let id = state.next
            state.next += 1
            state.entries[id] = Entry(source: source, prefix: prefix, phase: .pending, channel: channel)
            var counts = state.sources[source] ?? Counts()
            counts.open += 1
            counts.unauthenticated += 1
            state.sources[source] = counts
            state.pendingPerPrefix[prefix, default: 0] += 1
            state.total.open += 1
            state.total.unauthenticated += 1
            state.admitted += 1
            return (id, nil, evicted)
        }
        if let refusal = outcome.refusal {
            events.record(refusal)
            return nil
        }
        if let evicted = outcome.evicted {
            events.record("connection_evicted")
            evicted.channel?.close(promise: nil)
        }
        guard let id = outcome.id else { return nil }
        return ConnectionTicket(limit: self, id: id, source: source)
    }

    /// The connection finished its handshake (or, without TLS, sent its first byte): it no longer gives way, and with
    /// a verified client certificate it leaves the unauthenticated share. Nothing when it gave way first (it is being
    /// closed).
    fileprivate func establish(_ id: UInt64, authenticated: Bool) {
        state.withLock { state in
            guard var entry = state.entries[id], entry.phase == .pending else { return }
            state.dropPending(entry.prefix)
            entry.phase = authenticated ? .authenticated : .unauthenticated
            state.entries[id] = entry
            if authenticated {
                state.total.unauthenticated -= 1
                state.sources[entry.source]?.unauthenticated -= 1
            }
        }
    }

    /// Whether the connection is still counted and pending (its handshake deadline applies).
    fileprivate func isPending(_ id: UInt64) -> Bool {
        state.withLock { $0.entries[id]?.phase == .pending }
    }

    fileprivate func release(_ id: UInt64) {
        _ = state.withLock { $0.remove(id) }
    }
}

/// One admitted connection's place in its `ConnectionLimit`: established when its handshake completed (or, without
/// TLS, when its first byte arrived), authenticated when that handshake verified a client certificate, released
/// exactly once when it closes (or when it gave way to a newer connection).
package final class ConnectionTicket: Sendable {
    private let timedOutFlag = Mutex(false)
    private let limit: ConnectionLimit
    private let id: UInt64
    let source: String

    fileprivate init(limit: ConnectionLimit, id: UInt64, source: String) {
        self.limit = limit
        self.id = id
        self.source = source
    }

    /// The handshake deadline closed the connection.
    var timedOut: Bool { timedOutFlag.withLock { $0 } }

    func establish(authenticated: Bool) {
        limit.establish(id, authenticated: authenticated)
    }

    /// True when the connection had not been established (the caller closes it).
    func expireHandshake() -> Bool {
        guard limit.isPending(id) else { return false }
        timedOutFlag.withLock { $0 = true }
        return true
    }

    func release() {
        limit.release(id)
    }
}

extension ConnectionLimit {
    /// Admits `channel` or closes it; arms its handshake deadline and maximum age, both cancelled when it closes.
    /// Runs on the channel's event loop (a child channel's setup).
    package func guardConnection(_ channel: any Channel) -> ConnectionTicket? {
        let source = channel.remoteAddress?.ipAddress ?? "unknown"
        guard let ticket = admit(source: source, channel: channel) else {
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
