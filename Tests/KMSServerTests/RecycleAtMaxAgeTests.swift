import HTTPTypes
@testable import KMSServer
import NIOCore
import NIOEmbedded
import NIOHTTPTypes
import Testing

/// The handler that recycles a connection at its maximum age, on an embedded channel (no sockets, no timers).
@Suite("Recycling at the maximum age")
struct RecycleAtMaxAgeTests {
    private func connected() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel(handler: RecycleAtMaxAge())
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 8443)).wait()
        try #require(channel.isActive)
        return channel
    }

    private func request(_ channel: EmbeddedChannel) throws {
        try channel.writeInbound(HTTPRequestPart.head(HTTPRequest(method: .post, scheme: "https", authority: "kmsd", path: "/v1/x")))
        try channel.writeInbound(HTTPRequestPart.end(nil))
    }

    private func answer(_ channel: EmbeddedChannel) throws {
        try channel.writeOutbound(HTTPResponsePart.head(HTTPResponse(status: .ok)))
        try channel.writeOutbound(HTTPResponsePart.end(nil))
    }

    /// An idle timeout after the maximum age, an idle connection is closed; one whose request is still in progress
    /// is not cut off (it closes after its answer, which says `Connection: close`).
    @Test func theLateTimerClosesOnlyAnIdleConnection() throws {
        let idle = try connected()
        try request(idle)
        try answer(idle)
        idle.pipeline.fireUserInboundEventTriggered(ConnectionReachedMaxAge())
        idle.pipeline.fireUserInboundEventTriggered(ConnectionIdleAfterMaxAge())
        #expect(!idle.isActive)

        let busy = try connected()
        try request(busy)  // began before the maximum age, still running an idle timeout after it
        busy.pipeline.fireUserInboundEventTriggered(ConnectionReachedMaxAge())
        busy.pipeline.fireUserInboundEventTriggered(ConnectionIdleAfterMaxAge())
        #expect(busy.isActive)
        try answer(busy)

        let aged = try connected()
        aged.pipeline.fireUserInboundEventTriggered(ConnectionReachedMaxAge())
        try request(aged)  // the first request after the maximum age
        aged.pipeline.fireUserInboundEventTriggered(ConnectionIdleAfterMaxAge())
        #expect(aged.isActive)
        try answer(aged)
        let head = try aged.readOutbound(as: HTTPResponsePart.self)
        guard case .head(let response) = head else {
            Issue.record("no response head")
            return
        }
        #expect(response.headerFields[.connection] == "close")
    }
}

/// The guard that closes a connection after a refusal or an answer written before its request was read, on an
/// embedded channel.
@Suite("Closing after refusals")
struct HTTPRequestGuardTests {
    private func connected() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel(handler: HTTPRequestGuard())
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 8443)).wait()
        return channel
    }

    private func head(_ channel: EmbeddedChannel) throws {
        try channel.writeInbound(HTTPRequestPart.head(HTTPRequest(method: .post, scheme: "https", authority: "kmsd", path: "/v1/x")))
    }

    private func answer(_ channel: EmbeddedChannel, _ status: HTTPResponse.Status) throws -> HTTPResponse? {
        try channel.writeOutbound(HTTPResponsePart.head(HTTPResponse(status: status)))
        try channel.writeOutbound(HTTPResponsePart.end(nil))
        guard case .head(let response)? = try channel.readOutbound(as: HTTPResponsePart.self) else { return nil }
        _ = try channel.readOutbound(as: HTTPResponsePart.self)
        return response
    }

    /// Pipelined requests read to their end are answered without closing, even when the next one's head came first.
    @Test func pipelinedRequestsReadToTheirEndKeepTheConnection() throws {
        let channel = try connected()
        try head(channel)
        try channel.writeInbound(HTTPRequestPart.end(nil))
        try head(channel)
        try channel.writeInbound(HTTPRequestPart.end(nil))
        #expect(try answer(channel, .ok)?.headerFields[.connection] == nil)
        #expect(try answer(channel, .ok)?.headerFields[.connection] == nil)
        #expect(channel.isActive)
    }

    @Test func aRefusalOrAnAnswerBeforeTheRequestsEndClosesTheConnection() throws {
        let refused = try connected()
        try head(refused)
        try refused.writeInbound(HTTPRequestPart.end(nil))
        #expect(try answer(refused, .forbidden)?.headerFields[.connection] == "close")
        #expect(!refused.isActive)

        let early = try connected()
        try head(early)  // its body has not arrived
        #expect(try answer(early, .ok)?.headerFields[.connection] == "close")
        #expect(!early.isActive)

        let notFound = try connected()
        try head(notFound)
        try notFound.writeInbound(HTTPRequestPart.end(nil))
        #expect(try answer(notFound, .notFound)?.headerFields[.connection] == nil, "a 404 read to its end keeps the connection")
        #expect(notFound.isActive)
    }
}
