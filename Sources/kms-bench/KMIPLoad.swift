import KMIPTTLV
import KMSCore
import NIOCore
import NIOPosix
import NIOSSL

/// A lean KMIP load generator: each connection sends one request message and waits for its answer before the next
/// (a closed loop), over mutual TLS. It reads only the eight-byte header of an answer and looks for its Result Status,
/// so the client costs little next to the server it measures.
enum KMIPLoad {
    typealias Result = Load.Result

    /// The bench node's TLS client configuration.
    static func tls(_ setup: BenchSetup) throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(setup.path("ca.pem")))
        tls.certificateChain = try NIOSSLCertificate.fromPEMFile(setup.path("node.pem")).map { .certificate($0) }
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: setup.path("node-key.pem"), format: .pem))
        return tls
    }

    typealias Connection = NIOAsyncChannel<ByteBuffer, ByteBuffer>

    static func connect(port: Int, context: NIOSSLContext) async throws -> Connection {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: context, serverHostname: "localhost"))
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(Framer()))
                    return try Connection(wrappingChannelSynchronously: channel)
                }
            }
    }

    /// One request on a connection of its own; the answer's bytes.
    static func exchange(port: Int, tls: TLSConfiguration, _ request: [UInt8]) async throws -> [UInt8] {
        let connection = try await connect(port: port, context: try NIOSSLContext(configuration: tls))
        return try await connection.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(bytes: request))
            var iterator = inbound.makeAsyncIterator()
            guard let answer = try await iterator.next() else { throw KMIPBenchError("the server closed the connection") }
            return Array(answer.readableBytesView)
        }
    }

    /// `connections` connections each sending `request` again as soon as its answer arrives, for `seconds`.
    static func closedLoop(port: Int, tls: TLSConfiguration, request: [UInt8], connections: Int, seconds: Double) async throws -> Result {
        let context = try NIOSSLContext(configuration: tls)
        var channels: [Connection] = []
        for _ in 0 ..< connections { channels.append(try await connect(port: port, context: context)) }
        let buffer = ByteBuffer(bytes: request)
        let start = ContinuousClock.now
        let end = start + .milliseconds(Int(seconds * 1000))
        var total = try await withThrowingTaskGroup(of: Result.self) { group in
            for channel in channels {
                group.addTask {
                    try await channel.executeThenClose { inbound, outbound in
                        var result = Result()
                        var iterator = inbound.makeAsyncIterator()
                        while ContinuousClock.now < end {
                            try await outbound.write(buffer)
                            guard let answer = try await iterator.next() else { break }
                            if succeeded(answer) { result.ok += 1 } else { result.errors += 1 }
                        }
                        return result
                    }
                }
            }
            var sum = Result()
            for try await part in group {
                sum.ok += part.ok
                sum.errors += part.errors
            }
            return sum
        }
        total.seconds = (ContinuousClock.now - start).seconds
        return total
    }

    /// Whether the first batch item's Result Status is Success: found by its header bytes, without decoding.
    static func succeeded(_ answer: ByteBuffer) -> Bool {
        let status: [UInt8] = [0x42, 0x00, 0x7F, 0x05, 0x00, 0x00, 0x00, 0x04]
        let bytes = answer.readableBytesView
        guard let at = bytes.firstRange(of: status) else { return false }
        let value = bytes[at.upperBound ..< min(at.upperBound + 4, bytes.endIndex)]
        return value.count == 4 && value.allSatisfy { $0 == 0 }
    }

    /// Frames answers by their header, as kmsd's listener frames requests (`TTLVDecoder.messageLength`).
    struct Framer: ByteToMessageDecoder {
        typealias InboundOut = ByteBuffer
        mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
            guard let header = buffer.getBytes(at: buffer.readerIndex, length: TTLVDecoder.headerLength) else { return .needMoreData }
            let length = try TTLVDecoder.messageLength(header: header)
            guard let message = buffer.readSlice(length: length) else { return .needMoreData }
            context.fireChannelRead(wrapInboundOut(message))
            return .continue
        }
    }
}

struct KMIPBenchError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The request messages the benchmark sends, made with kmsd's codec (KMIP 1.4).
enum KMIPRequests {
    static func message(_ operation: UInt32, _ payload: [TTLVItem]) -> [UInt8] {
        TTLVEncoder.encode(.structure(TTLVTag(0x420078), [
            .structure(TTLVTag(0x420077), [
                .structure(TTLVTag(0x420069), [.integer(TTLVTag(0x42006A), 1), .integer(TTLVTag(0x42006B), 4)]),
                .integer(TTLVTag(0x42000D), 1),
            ]),
            .structure(TTLVTag(0x42000F), [.enumeration(TTLVTag(0x42005C), operation), .structure(TTLVTag(0x420079), payload)]),
        ]))
    }

    static func attribute(_ name: String, _ value: TTLVValue) -> TTLVItem {
        .structure(TTLVTag(0x420008), [.text(TTLVTag(0x42000A), name), TTLVItem(TTLVTag(0x42000B), value)])
    }

    /// Create an AES-256 key allowed to encrypt.
    static let create = message(0x01, [
        .enumeration(TTLVTag(0x420057), 2),
        .structure(TTLVTag(0x420091), [
            attribute("Cryptographic Algorithm", .enumeration(3)), attribute("Cryptographic Length", .integer(256)),
            attribute("Cryptographic Usage Mask", .integer(0x0C)),
        ]),
    ])

    static func uid(_ id: String) -> TTLVItem { .text(TTLVTag(0x420094), id) }
    static func activate(_ id: String) -> [UInt8] { message(0x12, [uid(id)]) }
    static func get(_ id: String) -> [UInt8] { message(0x0A, [uid(id)]) }

    /// Encrypt 32 bytes with AES-GCM, the server choosing the IV, a 16-byte tag.
    static func encrypt(_ id: String) -> [UInt8] {
        message(0x1F, [
            uid(id),
            .structure(TTLVTag(0x42002B), [
                .enumeration(TTLVTag(0x420011), 9), .enumeration(TTLVTag(0x420028), 3), .boolean(TTLVTag(0x4200C5), true),
                .integer(TTLVTag(0x4200CE), 16),
            ]),
            .bytes(TTLVTag(0x4200C2), Array(repeating: 0x5A, count: 32)),
        ])
    }

    /// The Unique Identifier in an answer.
    static func uniqueIdentifier(_ answer: [UInt8]) throws -> String {
        let message = try TTLVDecoder.decode(answer)
        func find(_ item: TTLVItem) -> String? {
            if item.tag == TTLVTag(0x420094), case .textString(let id) = item.value { return id }
            if case .structure(let children) = item.value { return children.lazy.compactMap(find).first }
            return nil
        }
        guard let id = find(message) else { throw KMIPBenchError("the answer has no Unique Identifier: \(message)") }
        return id
    }
}
