import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization

/// A raw TLS connection to a kmsd listener from a chosen loopback address, presenting one of the fixture's
/// certificates (or none): bytes in, bytes out, at the pace a test chooses. What a storage node's KMIP client, or a
/// certificate holder trickling a request, does on the wire.
final class TLSPeer: Sendable {
    let channel: any Channel
    private let inbox: Inbox

    final class Inbox: Sendable {
        let bytes = Mutex<[UInt8]>([])
    }

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let inbox: Inbox
        init(_ inbox: Inbox) { self.inbox = inbox }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            inbox.bytes.withLock { $0 += buffer.readableBytesView }
        }
    }

    private init(channel: any Channel, inbox: Inbox) {
        self.channel = channel
        self.inbox = inbox
    }

    /// Connects from `source` to 127.0.0.1:`port`; `identity` names the fixture's certificate and key files in
    /// `directory` (`node1`, …), nil for none. `receiveBuffer` makes the socket's receive buffer small (a peer that
    /// does not read fills it quickly).
    static func connect(port: Int, directory: URL, identity: String?, from source: String = "127.0.0.1",
                        receiveBuffer: Int? = nil) async throws -> TLSPeer {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(directory.appendingPathComponent("ca.pem").path))
        if let identity {
            tls.certificateChain = try NIOSSLCertificate.fromPEMFile(directory.appendingPathComponent("\(identity).pem").path).map { .certificate($0) }
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: directory.appendingPathComponent("\(identity)-key.pem").path, format: .pem))
        }
        let context = try NIOSSLContext(configuration: tls)
        let inbox = Inbox()
        var bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(5))
            .bind(to: try SocketAddress(ipAddress: source, port: 0))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: "localhost"))
                    try channel.pipeline.syncOperations.addHandler(Collector(inbox))
                }
            }
        if let receiveBuffer { bootstrap = bootstrap.channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBuffer)) }
        let channel = try await bootstrap.connect(host: "127.0.0.1", port: port).get()
        return TLSPeer(channel: channel, inbox: inbox)
    }

    func send(_ text: String) async throws { try await send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes)).get()
    }

    /// What has arrived so far.
    var received: [UInt8] { inbox.bytes.withLock { $0 } }
    var receivedText: String { String(decoding: received, as: UTF8.self) }

    /// Whether the connection is closed (by kmsd, or by the peer) within `timeout`.
    func closed(within timeout: Duration) async -> Bool {
        let end = ContinuousClock.now + timeout
        while channel.isActive && ContinuousClock.now < end { try? await Task.sleep(for: .milliseconds(20)) }
        return !channel.isActive
    }

    /// Waits until what arrived satisfies `done`; nil when it did not within `timeout`.
    func receive(within timeout: Duration, until done: ([UInt8]) -> Bool) async -> [UInt8]? {
        let end = ContinuousClock.now + timeout
        while ContinuousClock.now < end {
            let bytes = received
            if done(bytes) { return bytes }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return nil
    }

    /// One KMIP answer: the whole message its eight-byte header announces.
    func kmipAnswer(within timeout: Duration) async -> [UInt8]? {
        await receive(within: timeout) { bytes in
            guard bytes.count >= 8 else { return false }
            let length = bytes[4..<8].reduce(0) { $0 << 8 | Int($1) }
            return bytes.count >= 8 + length
        }
    }

    /// Stops reading from the socket (once the handshake is done: after a send): what kmsd sends from now on waits
    /// in the socket's buffers, then in kmsd's.
    func stopReading() async throws {
        try await channel.setOption(ChannelOptions.autoRead, value: false).get()
    }

    func close() {
        channel.close(promise: nil)
    }
}
