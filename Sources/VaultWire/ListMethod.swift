public import NIOCore

/// Vault lists with the HTTP method `LIST`, which SwiftNIO's HTTP parser (llhttp) does not know and rejects with 400.
/// This handler sits in front of the parser and renames a request line's `LIST` to `REPORT` (a method llhttp knows and
/// Vault never uses); a Vault front end treats `REPORT` as `LIST`. It looks only at the first bytes of a read: HTTP/1.1
/// clients (hvac, AsyncHTTPClient, curl) send a request only after the previous response, so a request line starts
/// a read. A pipelining client's second `LIST` would still get llhttp's 400.
public final class ListMethodRewriter: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer

    public init() {}

    private static let list = Array("LIST ".utf8)
    private static let report = Array("REPORT ".utf8)

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
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

