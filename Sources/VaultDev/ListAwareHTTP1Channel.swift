import HummingbirdCore
import Logging
import NIOCore
import VaultWire

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
