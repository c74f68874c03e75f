import Foundation
public import Logging
import NIOCore
import NIOPosix
public import NIOSSL
import Synchronization

/// Sends a copy of every audit record to a syslog collector: RFC 5424 messages, framed by octet counting (RFC 6587)
/// over TCP, optionally TLS (RFC 5425). The file stays the durable record; this copy is best effort: records wait in
/// a bounded queue while the collector is unreachable, and the oldest are dropped (and counted) when it overflows.
public final class SyslogForwarder: Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        /// nil: plain TCP.
        public var tls: TLSConfiguration?
        /// Records held while the collector is unreachable.
        public var queueLimit: Int

        public init(host: String, port: Int, tls: TLSConfiguration?, queueLimit: Int = 100_000) {
            self.host = host
            self.port = port
            self.tls = tls
            self.queueLimit = queueLimit
        }
    }

    public let configuration: Configuration
    let logger: Logger
    let onDrop: @Sendable (Int) -> Void
    private let stream: AsyncStream<[UInt8]>
    private let continuation: AsyncStream<[UInt8]>.Continuation
    private let hostname: String
    private let task = Mutex<Task<Void, Never>?>(nil)
    private let sent = Atomic<Int>(0)

    public init(_ configuration: Configuration, logger: Logger = Logger(label: "kmsd.audit.syslog"),
                onDrop: @escaping @Sendable (Int) -> Void = { _ in }) {
        self.configuration = configuration
        self.logger = logger
        self.onDrop = onDrop
        (stream, continuation) = AsyncStream.makeStream(of: [UInt8].self, bufferingPolicy: .bufferingNewest(configuration.queueLimit))
        hostname = ProcessInfo.processInfo.hostName.isEmpty ? "-" : String(ProcessInfo.processInfo.hostName.prefix(255))
    }

    /// Messages delivered to the collector's socket so far.
    public var delivered: Int { sent.load(ordering: .relaxed) }

    /// Queues one audit line (without its newline).
    public func send(_ line: [UInt8], type: String, time: String) {
        // <PRI> = facility 13 (log audit) × 8 + severity 5 (notice).
        let header = "<109>1 \(time) \(hostname) kmsd \(ProcessInfo.processInfo.processIdentifier) \(type) - "
        let message = Array(header.utf8) + line
        if case .dropped = continuation.yield(Array("\(message.count) ".utf8) + message) { onDrop(1) }
    }

    /// Starts delivering in the background until `shutdown`.
    public func start() {
        task.withLock { task in
            guard task == nil else { return }
            task = Task { [self] in await run() }
        }
    }

    /// Delivers what is queued (for up to `grace`), then stops.
    public func shutdown(grace: Duration = .seconds(2)) async {
        continuation.finish()
        guard let running = task.withLock({ $0 }) else { return }
        let timer = Task {
            try? await Task.sleep(for: grace)
            running.cancel()
        }
        await running.value
        timer.cancel()
    }

    private func run() async {
        var pending: [UInt8]?
        var delay: Duration = .milliseconds(100)
        var iterator = stream.makeAsyncIterator()
        while !Task.isCancelled {
            do {
                let channel = try await connect()
                delay = .milliseconds(100)
                try await channel.executeThenClose { _, outbound in
                    if let retry = pending {
                        try await outbound.write(ByteBuffer(bytes: retry))
                        sent.add(1, ordering: .relaxed)
                        pending = nil
                    }
                    while let frame = await iterator.next() {
                        pending = frame
                        try await outbound.write(ByteBuffer(bytes: frame))
                        sent.add(1, ordering: .relaxed)
                        pending = nil
                    }
                }
                return  // finished: shut down
            } catch {
                logger.warning("syslog collector unreachable; retrying", metadata: [
                    "address": "\(configuration.host):\(configuration.port)", "error": "\(error)",
                ])
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .seconds(30))
            }
        }
    }

    private func connect() async throws -> NIOAsyncChannel<ByteBuffer, ByteBuffer> {
        let tls = try configuration.tls.map { try NIOSSLContext(configuration: $0) }
        let host = configuration.host
        return try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(5))
            .connect(host: host, port: configuration.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        // SNI takes names only; an IP address is verified against the certificate without it.
                        let isAddress = host.allSatisfy { $0.isNumber || $0 == "." } || host.contains(":")
                        try channel.pipeline.syncOperations.addHandler(
                            try NIOSSLClientHandler(context: tls, serverHostname: isAddress ? nil : host))
                    }
                    return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
    }
}
