@testable import KMSServer
import KMSService
import Testing

/// Admission by `ConnectionLimit` alone (no sockets): who gets a slot when the listener is full.
@Suite("Connection admission")
struct ConnectionLimitTests {
    static func limit(total: Int = 100, perSource: Int = 50, unauthenticated: Int = 8, unauthenticatedPerSource: Int = 4) -> ConnectionLimit {
        ConnectionLimit(ConnectionPolicy(maxConnections: total, maxPerSource: perSource, maxUnauthenticated: unauthenticated,
                                         maxUnauthenticatedPerSource: unauthenticatedPerSource, handshakeTimeout: .seconds(10),
                                         idleTimeout: .seconds(60), maxAge: .seconds(3600), authenticates: true),
                        events: SecurityEvents())
    }

    @Test func addressesAreGroupedBy24And64Prefixes() {
        #expect(ConnectionLimit.prefix(of: "10.1.2.3") == "10.1.2.0/24")
        #expect(ConnectionLimit.prefix(of: "10.1.2.200") == ConnectionLimit.prefix(of: "10.1.2.3"))
        #expect(ConnectionLimit.prefix(of: "10.1.3.3") != ConnectionLimit.prefix(of: "10.1.2.3"))
        #expect(ConnectionLimit.prefix(of: "::ffff:10.1.2.9") == "10.1.2.0/24")
        #expect(ConnectionLimit.prefix(of: "2001:db8:1:2::1") == ConnectionLimit.prefix(of: "2001:db8:1:2:ffff:ffff:ffff:ffff"))
        #expect(ConnectionLimit.prefix(of: "2001:db8:1:3::1") != ConnectionLimit.prefix(of: "2001:db8:1:2::1"))
        #expect(ConnectionLimit.prefix(of: "unknown") == "unknown")
    }

    /// The unauthenticated slots full of pending connections from two prefixes: a newcomer from a third is admitted,
    /// and the connection that gives way is the oldest of the prefix holding the most.
    @Test func aNewcomerDisplacesTheOldestPendingConnectionOfTheLargestPrefix() throws {
        let limit = Self.limit()
        var tickets: [ConnectionTicket] = []
        for source in ["10.0.1.1", "10.0.1.2", "10.0.1.3", "10.0.1.4", "10.0.1.5", "10.0.2.1", "10.0.2.2", "10.0.2.3"] {
            tickets.append(try #require(limit.admit(source: source)))
        }
        #expect(limit.currentUnauthenticated == 8)
        let newcomer = try #require(limit.admit(source: "10.0.9.1"), "a newcomer was refused while pending connections held the slots")
        #expect(limit.evicted == 1 && limit.current == 8 && limit.currentUnauthenticated == 8)
        #expect(limit.events.snapshot["connection_evicted"] == 1)
        // The oldest of 10.0.1.0/24 (five pending) went: establishing it now changes nothing.
        tickets[0].establish(authenticated: true)
        #expect(limit.currentUnauthenticated == 8)
        // Its release does not return a slot twice.
        tickets[0].release()
        #expect(limit.current == 8)
        // The newcomer completes its handshake and leaves the unauthenticated share; it is never displaced.
        newcomer.establish(authenticated: true)
        #expect(limit.currentUnauthenticated == 7)
        for index in 0..<20 { _ = limit.admit(source: "10.0.\(3 + index % 5).1") }
        #expect(limit.current >= 1 && limit.currentUnauthenticated == 8)
        #expect(!newcomer.expireHandshake(), "an established connection was counted as pending")
    }

    /// Connections that finished their handshake without a certificate (a token client, or a peer that only shook
    /// hands, where certificates are optional) give way only when none is pending, the oldest of the prefix with the
    /// most; connections that authenticated never do.
    @Test func handshakesWithoutACertificateGiveWayAfterPendingOnesAndAuthenticatedOnesNever() throws {
        let limit = Self.limit(unauthenticated: 4, unauthenticatedPerSource: 4)
        let tokens = try (0..<3).map { index in try #require(limit.admit(source: "10.0.1.\(index + 1)")) }
        tokens.forEach { $0.establish(authenticated: false) }
        let pending = try #require(limit.admit(source: "10.0.2.1"))
        let newcomer = try #require(limit.admit(source: "10.0.3.1"), "a newcomer was refused while one connection was pending")
        #expect(limit.evicted == 1 && !pending.expireHandshake(), "the pending connection gave way first")
        newcomer.establish(authenticated: false)
        // Now none is pending: the oldest handshake without a certificate in 10.0.1.0/24 (three of four) gives way.
        _ = try #require(limit.admit(source: "10.0.4.1"))
        #expect(limit.evicted == 2 && limit.current == 4 && limit.currentUnauthenticated == 4)
        tokens[0].release()
        #expect(limit.current == 4, "the connection that gave way released its slot a second time")
        tokens[1].release()
        #expect(limit.current == 3)
        // The full share held by connections that authenticated (their own slots): nobody gives way.
        let full = Self.limit(total: 3, perSource: 3, unauthenticated: 3, unauthenticatedPerSource: 3)
        for index in 0..<3 { try #require(full.admit(source: "10.0.\(index).1")).establish(authenticated: true) }
        #expect(full.admit(source: "10.0.9.1") == nil)
        #expect(full.evicted == 0)
    }

    /// A source over its own caps is refused: it cannot displace others' connections by itself.
    @Test func oneSourceOverItsOwnShareIsRefused() throws {
        let limit = Self.limit(unauthenticated: 8, unauthenticatedPerSource: 2)
        _ = try #require(limit.admit(source: "10.0.0.1"))
        _ = try #require(limit.admit(source: "10.0.0.1"))
        #expect(limit.admit(source: "10.0.0.1") == nil)
        #expect(limit.events.snapshot["unauthenticated_connection_limit"] == 1)
        // The total cap too: full of authenticated connections, nobody is displaced.
        let full = Self.limit(total: 3, perSource: 3, unauthenticated: 3, unauthenticatedPerSource: 3)
        for index in 0..<3 { try #require(full.admit(source: "10.0.\(index).1")).establish(authenticated: true) }
        #expect(full.admit(source: "10.0.9.1") == nil)
        #expect(full.events.snapshot["connection_limit"] == 1)
    }

    /// A release returns exactly the slots a connection held, in every phase.
    @Test func releasesBalanceTheCounts() throws {
        let limit = Self.limit()
        let pending = try #require(limit.admit(source: "10.0.0.1"))
        let token = try #require(limit.admit(source: "10.0.0.1"))
        let node = try #require(limit.admit(source: "10.0.0.2"))
        token.establish(authenticated: false)
        node.establish(authenticated: true)
        #expect(limit.current == 3 && limit.currentUnauthenticated == 2 && limit.sources == 2)
        for ticket in [pending, token, node, node] { ticket.release() }
        #expect(limit.current == 0 && limit.currentUnauthenticated == 0 && limit.sources == 0)
    }
}
