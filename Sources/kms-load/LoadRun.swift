import Histogram
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
#if canImport(Glibc)
import Glibc
#endif

/// What one connection saw. Filled on its event loop, merged at the end.
struct ConnectionStats: Sendable {
    var latencies = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
    /// Answers completed within the measured interval.
    var completed = 0
    var statuses: [Int: Int] = [:]
    /// Requests that got no answer: the connection failed or closed, or the answer could not be parsed.
    var errors = 0
    /// Open loop: requests that came due but were never sent before the end (the server was behind).
    var backlog = 0

    mutating func merge(_ other: ConnectionStats) {
        latencies.add(other.latencies)
        completed += other.completed
        errors += other.errors
        backlog += other.backlog
        for (status, count) in other.statuses { statuses[status, default: 0] += count }
    }
}

/// The whole run: connects every connection (TLS handshake included), starts them together, waits for the end.
struct LoadRun {
    let options: LoadOptions

    init(_ options: LoadOptions) {
        self.options = options
    }

    struct Report {
        let options: LoadOptions
        let stats: ConnectionStats
        let seconds: Double
        var completed: Int { stats.completed }

        var json: String {
            let h = stats.latencies
            let statuses = stats.statuses.sorted { $0.key < $1.key }.map { "\"\($0.key)\":\($0.value)" }.joined(separator: ",")
            let rate = seconds > 0 ? Double(stats.completed) / seconds : 0
            return """
                {"connections":\(options.connections),"mode":"\(options.rate > 0 ? "open" : "closed")",\
                "target_rate":\(options.rate),"seconds":\(seconds),"requests":\(stats.completed),\
                "requests_per_second":\(rate),"errors":\(stats.errors),"backlog":\(stats.backlog),\
                "statuses":{\(statuses)},"latency_us":{"p50":\(h.valueAtPercentile(50)),"p90":\(h.valueAtPercentile(90)),\
                "p99":\(h.valueAtPercentile(99)),"p999":\(h.valueAtPercentile(99.9)),"max":\(h.max)}}
                """
        }
    }

    func run() throws -> Report {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: options.threads)
        defer { try? group.syncShutdownGracefully() }
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(options.ca))
        tls.certificateChain = try NIOSSLCertificate.fromPEMFile(options.cert).map { .certificate($0) }
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: options.key, format: .pem))
        let sslContext = try NIOSSLContext(configuration: tls)
        let request = Self.request(options)
        // Open loop: each connection sends every `interval`, so together they send `rate` per second.
        let interval: TimeAmount? = options.rate > 0
            ? .nanoseconds(Int64(Double(options.connections) / options.rate * 1_000_000_000)) : nil

        var connections: [(LoadConnection, any EventLoop)] = []
        var connected: [EventLoopFuture<Void>] = []
        for _ in 0..<options.connections {
            let loop = group.next()
            let connection = LoadConnection(request: request, interval: interval, loop: loop)
            let serverName = options.serverName
            let channel = ClientBootstrap(group: loop)
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: serverName))
                        try channel.pipeline.syncOperations.addHandler(connection)
                    }
                }
                .connect(host: options.host, port: options.port)
            connected.append(channel.flatMap { _ in connection.ready.futureResult })
            connections.append((connection, loop))
        }
        // Every connection has completed its handshake before the clock starts; a server that accepts but never
        // completes one fails the run after 10 s instead of holding it forever.
        for (connection, loop) in connections {
            loop.scheduleTask(in: .seconds(10)) { connection.ready.fail(HandshakeTimeout()) }
        }
        try EventLoopFuture.andAllSucceed(connected, on: group.any()).wait()

        let start = NIODeadline.now()
        let end = start + .nanoseconds(Int64(options.seconds * 1_000_000_000))
        let finished = connections.map { connection, loop in
            loop.flatSubmit { connection.begin(until: end) }
        }
        var total = ConnectionStats()
        for stats in try EventLoopFuture.whenAllSucceed(finished, on: group.any()).wait() { total.merge(stats) }
        return Report(options: options, stats: total, seconds: Double((end - start).nanoseconds) / 1e9)
    }

    /// The request's bytes, the same for every send.
    static func request(_ options: LoadOptions) -> ByteBuffer {
        var head = "\(options.method) \(options.path) HTTP/1.1\r\nHost: \(options.serverName)\r\n"
        head += "Content-Type: application/json\r\nContent-Length: \(options.body.count)\r\n\r\n"
        var buffer = ByteBuffer()
        buffer.writeString(head)
        buffer.writeBytes(options.body)
        return buffer
    }
}

/// One keep-alive connection's loop: send, read the answer, record it, send again (closed loop), or send each
/// request when it comes due (open loop). Runs entirely on its channel's event loop.
final class LoadConnection: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    // @unchecked: every mutable property is touched only on `loop`.
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let request: ByteBuffer
    let interval: TimeAmount?
    let loop: any EventLoop
    let ready: EventLoopPromise<Void>
    private let finished: EventLoopPromise<ConnectionStats>
    private var stats = ConnectionStats()
    private var context: ChannelHandlerContext?
    private var received = ByteBuffer()
    /// When the request in flight was sent (closed loop) or came due (open loop); nil when none is in flight.
    private var inFlightSince: NIODeadline?
    private var due = CircularBuffer<NIODeadline>()
    private var end = NIODeadline.distantFuture
    private var stopping = false
    private var done = false
    private var timers: [RepeatedTask] = []

    init(request: ByteBuffer, interval: TimeAmount?, loop: any EventLoop) {
        self.request = request
        self.interval = interval
        self.loop = loop
        ready = loop.makePromise()
        finished = loop.makePromise()
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    /// The channel went away (also one that never connected): both promises are completed, so none is left hanging.
    func handlerRemoved(context: ChannelHandlerContext) {
        ready.fail(ChannelError.ioOnClosedChannel)
        finish(closing: false)
        self.context = nil
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event { ready.succeed(()) }
        context.fireUserInboundEventTriggered(event)
    }

    /// Starts sending; the returned future completes with this connection's statistics after `end`.
    func begin(until end: NIODeadline) -> EventLoopFuture<ConnectionStats> {
        self.end = end
        loop.scheduleTask(deadline: end) { [self] in
            stopping = true
            for timer in timers { timer.cancel() }
            stats.backlog += due.count
            due.removeAll()
            if inFlightSince == nil { finish() }
        }
        // An answer that has not come 5 s after the end is a failure, not a wait without end.
        loop.scheduleTask(deadline: end + .seconds(5)) { [self] in
            if inFlightSince != nil { stats.errors += 1 }
            finish()
        }
        if let interval {
            // Spread the connections' first sends over one interval.
            let offset = TimeAmount.nanoseconds(Int64.random(in: 0..<max(1, interval.nanoseconds)))
            timers.append(loop.scheduleRepeatedTask(initialDelay: offset, delay: interval) { [self] _ in
                let now = NIODeadline.now()
                if inFlightSince == nil { send(dueAt: now) } else { due.append(now) }
            })
        } else {
            send(dueAt: .now())
        }
        return finished.futureResult
    }

    private func send(dueAt deadline: NIODeadline) {
        guard let context, !stopping, !done else { return }
        inFlightSince = deadline
        context.writeAndFlush(wrapOutboundOut(request), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        received.writeBuffer(&bytes)
        while let answer = HTTPAnswer.parse(received) {
            received.moveReaderIndex(forwardBy: answer.length)
            answered(status: answer.status)
        }
        if received.readableBytes == 0 { received.clear() }
        if HTTPAnswer.isUnparseable(received) {
            stats.errors += 1
            finish()
        }
    }

    private func answered(status: Int) {
        guard let since = inFlightSince else {
            // An answer to nothing: the stream is out of step.
            stats.errors += 1
            finish()
            return
        }
        inFlightSince = nil
        let now = NIODeadline.now()
        if now <= end {
            stats.completed += 1
            stats.statuses[status, default: 0] += 1
            _ = stats.latencies.record(UInt64(max(0, (now - since).nanoseconds / 1_000)))
        }
        if stopping {
            finish()
        } else if interval == nil {
            send(dueAt: now)
        } else if let next = due.popFirst() {
            send(dueAt: next)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        ready.fail(error)
        if inFlightSince != nil { stats.errors += 1 }
        inFlightSince = nil
        finish()
    }

    func channelInactive(context: ChannelHandlerContext) {
        ready.fail(ChannelError.ioOnClosedChannel)
        if inFlightSince != nil { stats.errors += 1 }
        inFlightSince = nil
        finish()
        context.fireChannelInactive()
    }

    private func finish(closing: Bool = true) {
        guard !done else { return }
        done = true
        for timer in timers { timer.cancel() }
        finished.succeed(stats)
        if closing { context?.close(promise: nil) }
    }
}

/// Just enough of an HTTP/1.1 answer: the status and where it ends (headers plus `Content-Length` bytes).
enum HTTPAnswer {
    struct Parsed {
        let status: Int
        /// Bytes from the start of the buffer to the end of this answer.
        let length: Int
    }

    static let headerEnd: [UInt8] = Array("\r\n\r\n".utf8)

    static func parse(_ buffer: ByteBuffer) -> Parsed? {
        let view = buffer.readableBytesView
        guard let headEnd = find(headerEnd, in: view) else { return nil }
        let head = view[view.startIndex..<headEnd]
        guard head.count >= 12, head.starts(with: Array("HTTP/1.".utf8)),
              let status = Int(String(decoding: head.dropFirst(9).prefix(3), as: UTF8.self)),
              let bodyLength = contentLength(head)
        else { return nil }
        let total = headEnd - view.startIndex + headerEnd.count + bodyLength
        guard view.count >= total else { return nil }
        return Parsed(status: status, length: total)
    }

    /// A complete header block that `parse` cannot use (no status, no `Content-Length`): the run cannot go on.
    static func isUnparseable(_ buffer: ByteBuffer) -> Bool {
        let view = buffer.readableBytesView
        guard let headEnd = find(headerEnd, in: view) else { return view.count > 64 * 1024 }
        return parse(buffer) == nil && contentLength(view[view.startIndex..<headEnd]) == nil
    }

    private static func contentLength(_ head: ByteBufferView.SubSequence) -> Int? {
        let text = String(decoding: head, as: UTF8.self).lowercased()
        for line in text.split(separator: "\r\n") where line.hasPrefix("content-length:") {
            return Int(line.dropFirst("content-length:".count).trimmingPrefix(" "))
        }
        return nil
    }

    private static func find(_ needle: [UInt8], in view: ByteBufferView) -> ByteBufferView.Index? {
        guard view.count >= needle.count else { return nil }
        var index = view.startIndex
        let last = view.endIndex - needle.count
        while index <= last {
            if view[index] == needle[0] && view[index..<(index + needle.count)].elementsEqual(needle) { return index }
            index += 1
        }
        return nil
    }
}

/// A connection's TLS handshake did not complete within 10 s.
struct HandshakeTimeout: Error, CustomStringConvertible {
    var description: String { "the TLS handshake did not complete within 10 s" }
}
