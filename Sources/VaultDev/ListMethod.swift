import HummingbirdCore
import Logging
import NIOCore

/// Vault lists with the HTTP method `LIST`, which SwiftNIO's HTTP parser (llhttp) does not know and rejects with 400.
/// This handler sits in front of the parser and renames a request line's `LIST` to `REPORT` (a method llhttp knows and
/// Vault never uses); `VaultCore` treats `REPORT` as `LIST`. It looks only at the first bytes of a read: HTTP/1.1
/// clients (hvac, AsyncHTTPClient, curl) send a request only after the previous response, so a request line starts
/// a read. A pipelining client's second `LIST` would still get llhttp's 400.
final class ListMethodRewriter: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private static let list = Array("LIST ".utf8)
    private static let report = Array("REPORT ".utf8)

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        if buffer.readableBytesView.starts(with: Self.list) {
            buffer.moveReaderIndex(forwardBy: Self.list.count)
            var rewritten = context.channel.allocator.buffer(capacity: buffer.readableBytes + Self.report.count)
            rewritten.writeBytes(Self.report)
            rewritten.writeBuffer(&buffer)
            context.fireChannelRead(wrapInboundOut(rewritten))
            return
        }
        context.fireChannelRead(data)
    }
}

/// HTTP/1 with `ListMethodRewriter` in front of the parser.
struct ListAwareHTTP1Channel: ServerChildChannel {
    typealias Value = HTTP1Channel.Value
    let base: HTTP1Channel

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(ListMethodRewriter())
        }.flatMap {
            base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

extension HTTPServerBuilder {
    static var http1AcceptingList: HTTPServerBuilder {
        .init { responder in ListAwareHTTP1Channel(base: HTTP1Channel(responder: responder)) }
    }
}
