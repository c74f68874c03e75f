import AsyncHTTPClient
import Foundation
import KMIPTTLV
import KMSDaemon
import KMSServer
import NIOCore
import KMSTestSupport
import Testing

/// What peers spread over many addresses, and certificate holders who trickle or never read, can do to kmsd's
/// listeners, and what they must not achieve (issue 29).
@Suite("Hardening: spread-out floods, slow requests, unread answers", .serialized)
struct SpreadAttackTests {
    static let kmip = """
          allow: ["uri:spiffe://test/storage/*"]
          wrapping_key: kmip-kek
        """

    /// A Discover Versions request as PyKMIP sends it (the fuzz corpus's capture).
    static let discoverVersions: [UInt8] = {
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("FuzzCorpus/kmip-ttlv/valid-discover-versions-1.4")
        return (try? Array(Data(contentsOf: file))) ?? []
    }()

    /// Eight source addresses in eight /24 prefixes, each holding its full unauthenticated share of idle TCP
    /// connections on each listener, fill every listener's unauthenticated slots (64 here). A storage node that
    /// connects then is served on kmsd's API, on transit and on KMIP, connection after connection: each new connection
    /// takes the place of the oldest pending one from the prefix holding the most. Before, the node was refused.
    @Test func aFloodSpreadOverManyAddressesLeavesRoomForANodeOnEveryListener() async throws {
        let kmsd = try await RunningKMSD.start(limits: ", handshake_timeout: 60s, max_unauthenticated: 64, max_unauthenticated_per_source: 8",
                                               transit: TransitTests.transit, kmip: Self.kmip)
        #expect(Self.discoverVersions.count > 16)
        var held: [RawTCP] = []
        defer { held.forEach { $0.close() } }
        for port in [kmsd.port, kmsd.transitPort, kmsd.kmipPort] {
            for prefix in 1...8 {
                for _ in 0..<8 { held.append(try RawTCP(port: port, from: "127.0.\(prefix).1")) }
            }
        }
        // Until the API listener has accepted its 64 (the other two accept as fast).
        for _ in 0..<250 where kmsd.connections.currentUnauthenticated < 64 { try await Task.sleep(for: .milliseconds(20)) }
        #expect(kmsd.connections.currentUnauthenticated == 64)
        try await Task.sleep(for: .milliseconds(300))

        let node = try kmsd.client("node1")
        try await using([node]) { () async throws in
            for attempt in 0..<10 {
                // `Connection: close`: every request opens a new connection, as a node's new process would.
                let api = try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:]), headers: [("Connection", "close")])
                #expect(api.status == 200, "API attempt \(attempt): \(api.status)")
                let transit = try await kmsd.call(node, "POST", "/v1/transit/datakey/plaintext/orders", body: kmsd.json([:]),
                                                  headers: [("Connection", "close")], port: kmsd.transitPort)
                #expect(transit.status == 200, "transit attempt \(attempt): \(transit.status)")
                let peer = try await TLSPeer.connect(port: kmsd.kmipPort, directory: kmsd.directory, identity: "node1")
                try await peer.send(Self.discoverVersions)
                let answer = await peer.kmipAnswer(within: .seconds(5))
                peer.close()
                // A Response Message (tag 42007B).
                #expect(answer.map { Array($0.prefix(3)) } == [0x42, 0x00, 0x7B], "KMIP attempt \(attempt): no answer")
            }
        }
        // The node's first connection on each listener displaced one of the flood's; once its handshake completed it
        // left the unauthenticated share, which has had room for the node's next connections since. The flood still
        // holds the rest of its share.
        #expect(kmsd.securityEvents["connection_evicted", default: 0] >= 3)
        #expect(kmsd.connections.currentUnauthenticated == 63)
        held.forEach { $0.close() }
        held = []
        await kmsd.stop()
    }

    /// A certificate holder that trickles a request, its headers or its body, a byte at a time, is closed at the
    /// whole-request deadline however often the bytes come (before, each byte restarted the idle timer).
    @Test func aTrickledRequestIsClosedAtTheWholeRequestDeadline() async throws {
        let kmsd = try await RunningKMSD.start(limits: ", request_read_timeout: 1s, idle_timeout: 30s")
        for headersFirst in [true, false] {
            let peer = try await TLSPeer.connect(port: kmsd.port, directory: kmsd.directory, identity: "node1")
            let head = "POST /v1/keys/orders/datakey HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n"
            if !headersFirst { try await peer.send(head) }
            let trickle = headersFirst ? Array(head.utf8) : Array(String(repeating: " ", count: 64).utf8)
            let start = ContinuousClock.now
            var sent = 0
            while peer.channel.isActive && sent < trickle.count && ContinuousClock.now - start < .seconds(8) {
                try? await peer.send([trickle[sent]])
                sent += 1
                try await Task.sleep(for: .milliseconds(200))
            }
            let lasted = ContinuousClock.now - start
            print("trickled \(headersFirst ? "head" : "body"): closed after \(lasted), \(sent) byte(s) sent")
            #expect(await peer.closed(within: .seconds(2)), "a trickled \(headersFirst ? "head" : "body") kept its connection for \(lasted)")
            #expect(lasted < .seconds(4), "a trickled \(headersFirst ? "head" : "body") lasted \(lasted) with a 1 s deadline")
            peer.close()
        }
        #expect(kmsd.securityEvents["request_timeout", default: 0] >= 2)
        // A node that sends its request at once is unaffected.
        let node = try kmsd.client("node1")
        try await using([node]) { () async throws in
            #expect(try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 200)
        }
        await kmsd.stop()
    }

    /// A body declared over the limit is refused at its header, before any of it is sent, and the connection closes
    /// after the answer; so does the connection of a refused caller, whose body is never read.
    @Test func anOversizedBodyIsRefusedAtItsHeaderAndARefusalClosesTheConnection() async throws {
        let kmsd = try await RunningKMSD.start(limits: ", request_read_timeout: 30s, idle_timeout: 30s")
        let large = try await TLSPeer.connect(port: kmsd.port, directory: kmsd.directory, identity: "node1")
        try await large.send("POST /v1/keys/orders/datakey HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n")
        let answer = await large.receive(within: .seconds(5)) { String(decoding: $0, as: UTF8.self).contains("\r\n\r\n") }
        #expect(answer.map { String(decoding: $0, as: UTF8.self) }?.hasPrefix("HTTP/1.1 413") == true, "\(large.receivedText)")
        #expect(large.receivedText.lowercased().contains("connection: close"))
        #expect(await large.closed(within: .seconds(3)), "the connection stayed open after refusing a 100 MB body")

        // Node 2 may not use `orders`: 403, and its 64-byte body is never waited for.
        let refused = try await TLSPeer.connect(port: kmsd.port, directory: kmsd.directory, identity: "node2")
        try await refused.send("POST /v1/keys/orders/datakey HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n")
        _ = await refused.receive(within: .seconds(5)) { String(decoding: $0, as: UTF8.self).contains("\r\n\r\n") }
        #expect(refused.receivedText.hasPrefix("HTTP/1.1 403"), "\(refused.receivedText)")
        #expect(await refused.closed(within: .seconds(3)), "the connection stayed open after a refusal")
        await kmsd.stop()
    }

    /// Pipelined requests whose answers are never read: the answers fill the socket, and the connection is closed
    /// at the write deadline instead of holding its slot for as long as the peer likes. On the metrics listener
    /// (plain HTTP, no authentication) the answers are large enough to fill the socket quickly.
    @Test func answersThatAreNeverReadCloseTheConnectionAtTheWriteDeadline() async throws {
        let kmsd = try await RunningKMSD.start(limits: ", write_timeout: 1s, request_read_timeout: 30s, idle_timeout: 30s")
        let hog = try RawTCP(port: kmsd.metricsPort, receiveBuffer: 4096)
        defer { hog.close() }
        let request = Array("GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8)
        var pipelined: [UInt8] = []
        for _ in 0..<2000 { pipelined += request }
        hog.sendAll(pipelined)
        var closed = false
        for _ in 0..<500 where !closed {
            try await Task.sleep(for: .milliseconds(20))
            closed = kmsd.securityEvents["write_timeout", default: 0] >= 1
        }
        #expect(closed, "a connection whose answers were never read was still open after 10 s with a 1 s write deadline")
        await kmsd.stop()
    }

    /// A certificate holder repeating a refused request as fast as it can: every refusal counts (security events),
    /// but the audit log gets the first 20 of that identity and code one by one and then one summary per interval,
    /// not one fsynced record each.
    @Test func aCertificateHoldersRefusalFloodAddsABoundedNumberOfAuditRecords() async throws {
        let kmsd = try await RunningKMSD.start(audit: ", handshake_summary_interval: 1s")
        let intruder = try kmsd.client("node2")
        let start = ContinuousClock.now
        let statuses = try await using([intruder]) { () async throws in
            var statuses: [Int] = []
            for _ in 0..<300 { statuses.append(try await kmsd.call(intruder, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status) }
            return statuses
        }
        let seconds = Int((ContinuousClock.now - start).components.seconds) + 1
        #expect(statuses.allSatisfy { $0 == 403 })
        #expect(kmsd.securityEvents["forbidden", default: 0] >= 300)
        try await Task.sleep(for: .milliseconds(2500))
        let refusals = try kmsd.auditRecords().filter {
            $0["identity"] as? String == "uri:spiffe://test/storage/node-2" && $0["code"] as? String == "forbidden"
        }
        let single = refusals.filter { $0["items"] == nil }
        let summaries = refusals.filter { $0["items"] != nil }
        #expect(single.count <= 20 * (seconds + 2), "\(single.count) records one by one for 300 refusals in \(seconds) s")
        #expect(summaries.count <= seconds + 3, "\(summaries.count) summaries for \(seconds) s")
        // Nothing is lost from the count: the records one by one and the summaries' counts add up to every refusal.
        let counted = single.count + summaries.compactMap { $0["items"] as? Int }.reduce(0, +)
        #expect(counted == 300, "records account for \(counted) of 300 refusals")
        #expect(summaries.allSatisfy { ($0["detail"] as? String)?.contains("more refusal(s) forbidden of uri:spiffe://test/storage/node-2") == true })
        await kmsd.stop()
    }

    /// KMIP clients that ask for large answers and never read them: each connection is closed at the write deadline,
    /// and what kmsd holds for them stays bounded (at most two messages read ahead, one answer of at most
    /// `kmip.max_response_bytes` waiting). Before, 12 such connections took kmsd's RSS from 100 MB to 1.07 GB.
    @Test func kmipClientsThatNeverReadAreClosedAndHoldBoundedMemory() async throws {
        let kmsd = try await RunningKMSD.start(limits: ", write_timeout: 1s, idle_timeout: 30s", kmip: Self.kmip)
        // An object with 16 custom attributes of 4,000 bytes.
        let setup = try await TLSPeer.connect(port: kmsd.kmipPort, directory: kmsd.directory, identity: "node1")
        try await setup.send(KMIPWire.request([(0x01, [
            .enumeration(TTLVTag(0x420057), 2),
            .structure(TTLVTag(0x420091), [
                KMIPWire.attribute("Cryptographic Algorithm", .enumeration(TTLVTag(0x42000B), 3)),
                KMIPWire.attribute("Cryptographic Length", .integer(TTLVTag(0x42000B), 256)),
            ]),
        ])]))
        let created = try #require(await setup.kmipAnswer(within: .seconds(5)))
        let id = try #require(KMIPWire.firstID(created))
        setup.close()
        let filler = try await TLSPeer.connect(port: kmsd.kmipPort, directory: kmsd.directory, identity: "node1")
        try await filler.send(KMIPWire.request((0..<16).map { index in
            (0x0D, [KMIPWire.uid(id), KMIPWire.attribute("x-big-\(index)", .text(TTLVTag(0x42000B), String(repeating: "a", count: 4000)))])
        }))
        #expect(await filler.kmipAnswer(within: .seconds(30)) != nil)
        filler.close()

        // Twelve Get Attributes a message (about 800 KB of answer), 20 messages pipelined, on 12 connections that never read.
        let hungry = KMIPWire.request(Array(repeating: (0x0B, [KMIPWire.uid(id)]), count: 12))
        let before = residentBytes()
        var peers: [TLSPeer] = []
        for _ in 0..<12 {
            let peer = try await TLSPeer.connect(port: kmsd.kmipPort, directory: kmsd.directory, identity: "node1", receiveBuffer: 4096)
            try await peer.send(hungry)
            try await peer.stopReading()
            for _ in 1..<20 { try await peer.send(hungry) }
            peers.append(peer)
        }
        // A peer that does not read does not see kmsd close: kmsd's count of write deadlines says it did.
        var peak = before
        var closed = 0
        let end = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < end && closed < peers.count {
            try await Task.sleep(for: .milliseconds(100))
            peak = max(peak, residentBytes())
            closed = kmsd.securityEvents["write_timeout", default: 0]
        }
        peers.forEach { $0.close() }
        #expect(closed >= 12, "\(closed) of 12 connections that never read were closed at the write deadline within 20 s")
        #expect(peak - before < 300 << 20, "the process grew by \((peak - before) >> 20) MB for 12 connections that never read")
        print("kmip never-reading clients: RSS grew \((peak - before) >> 20) MB (before \(before >> 20) MB, peak \(peak >> 20) MB)")
        await kmsd.stop()
    }

    /// A certificate holder cannot tell which key names exist by asking: on kmsd's API and on transit, a key that
    /// does not exist and one the caller may not use get the same status and the same body (but for the name).
    @Test func aKeyThatDoesNotExistAndOneTheCallerMayNotUseAnswerTheSame() async throws {
        let kmsd = try await RunningKMSD.start(transit: TransitTests.transit)
        let intruder = try kmsd.client("node2")
        try await using([intruder]) { () async throws in
            let forbidden = try await kmsd.call(intruder, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:]))
            let missing = try await kmsd.call(intruder, "POST", "/v1/keys/nosuchkey/datakey", body: kmsd.json([:]))
            #expect(forbidden.status == 403 && missing.status == 403)
            #expect(forbidden.errorCode == "forbidden" && missing.errorCode == "forbidden")
            func message(_ reply: RunningKMSD.Reply) -> String? { (reply.json["error"] as? [String: Any])?["message"] as? String }
            #expect(message(forbidden)?.replacingOccurrences(of: "orders", with: "X") == message(missing)?.replacingOccurrences(of: "nosuchkey", with: "X"))
            for path in ["transit/datakey/plaintext/%@", "transit/encrypt/%@", "transit/keys/%@", "transit/keys/%@/rotate"] {
                let method = path.hasPrefix("transit/keys/%@") && !path.hasSuffix("rotate") ? "GET" : "POST"
                let body: Data? = method == "GET" ? nil : kmsd.json(["plaintext": "aGk="])
                let answers = try await ["orders", "nosuchkey"].asyncMap { name in
                    try await kmsd.call(intruder, method, "/v1/" + path.replacingOccurrences(of: "%@", with: name), body: body, port: kmsd.transitPort)
                }
                #expect(answers[0].status == 403 && answers[1].status == 403, "\(path): \(answers.map(\.status))")
                #expect(answers[0].body == answers[1].body, "\(path): \(answers.map { String(decoding: $0.body, as: UTF8.self) })")
            }
        }
        await kmsd.stop()
    }
}

/// KMIP requests built from the specification's tag numbers (the daemon tests do not see the front end's names).
enum KMIPWire {
    static func request(_ items: [(UInt32, [TTLVItem])]) -> [UInt8] {
        let batch = items.enumerated().map { index, item in
            TTLVItem.structure(TTLVTag(0x42000F), [.enumeration(TTLVTag(0x42005C), item.0), .bytes(TTLVTag(0x420093), [UInt8(index & 0xFF), UInt8(index >> 8)]),
                                                  .structure(TTLVTag(0x420079), item.1)])
        }
        let version = TTLVItem.structure(TTLVTag(0x420069), [.integer(TTLVTag(0x42006A), 1), .integer(TTLVTag(0x42006B), 2)])
        return TTLVEncoder.encode(.structure(TTLVTag(0x420078), [
            .structure(TTLVTag(0x420077), [version, .integer(TTLVTag(0x42000D), Int32(items.count))]),
        ] + batch))
    }

    static func uid(_ id: String) -> TTLVItem { .text(TTLVTag(0x420094), id) }

    static func attribute(_ name: String, _ value: TTLVItem) -> TTLVItem {
        .structure(TTLVTag(0x420008), [.text(TTLVTag(0x42000A), name), value])
    }

    /// The Unique Identifier of the first batch item's answer.
    static func firstID(_ answer: [UInt8]) -> String? {
        guard let message = try? TTLVDecoder.decode(answer), case .structure(let parts) = message.value, parts.count > 1,
              case .structure(let item) = parts[1].value,
              case .structure(let payload)? = item.first(where: { $0.tag == TTLVTag(0x42007C) })?.value,
              case .textString(let id)? = payload.first(where: { $0.tag == TTLVTag(0x420094) })?.value else { return nil }
        return id
    }
}

/// This process's resident memory, from /proc.
func residentBytes() -> Int {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
    return (Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0) * 1024
}

extension Array {
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}
