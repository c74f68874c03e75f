import Foundation
import Hummingbird
import HummingbirdCore
import KMSAPI
@testable import KMSClient
import KMSCore
import KMSDev
import KMSServer
import KMSService
import KMSTestSupport
import NIOCore
import NIOPosix
import NIOSSL
import Synchronization
import Testing

/// kmsd's routes over the in-memory provider behind the real listener (mutual TLS with a development PKI, the
/// connection caps, the client certificate parsed once per connection), on a loopback port: `KMSClient` as a storage
/// node uses it, without an HSM.
final class TLSServerFixture: Sendable {
    let base: InMemoryService
    let directory: URL
    let server: ServerTask
    /// For each request: whether it started on an event loop, and whether its answer was ready on that same loop.
    let threads: ThreadLog
    let pki: DevPKI
    var port: Int { server.port }

    final class ThreadLog: Sendable {
        let entries = Mutex<[(start: Bool, end: Bool)]>([])
    }

    private init(base: InMemoryService, directory: URL, server: ServerTask, threads: ThreadLog, pki: DevPKI) {
        self.pki = pki
        self.base = base
        self.directory = directory
        self.server = server
        self.threads = threads
    }

    /// The routes, noting where each request runs.
    struct ThreadProbe: HTTPResponder {
        let routes: RouterResponder<KMSRequestContext>
        let fixture: @Sendable (Bool, Bool) -> Void

        /// `start`: the request began on an event loop; `end`: its answer was ready on that same loop.
        func respond(to request: Request, context: KMSRequestContext) async throws -> Response {
            let start = MultiThreadedEventLoopGroup.currentEventLoop.map(ObjectIdentifier.init)
            let response = try await routes.respond(to: request, context: context)
            let end = MultiThreadedEventLoopGroup.currentEventLoop.map(ObjectIdentifier.init)
            fixture(start != nil, end != nil && end == start)
            return response
        }
    }

    /// `sharing` another fixture: its PKI and directory (clients of one trust both), as replicas share a CA.
    static func start(sharing other: TLSServerFixture? = nil) async throws -> TLSServerFixture {
        let base = try await InMemoryService.make()
        let directory = other?.directory ?? FileManager.default.temporaryDirectory.appendingPathComponent("client-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let pki = try other?.pki ?? DevPKI()
        try Data(pki.caPEM.utf8).write(to: directory.appendingPathComponent("ca.pem"))
        let serverCertificate = try pki.issue(.server(hosts: ["localhost", "127.0.0.1"]))
        try DevPKI.write(try pki.issue(.client(uri: "spiffe://test/storage/node-1", commonName: "node-1")), name: "node1", to: directory)
        try DevPKI.write(try pki.issue(.client(uri: "spiffe://test/storage/node-2", commonName: "node-2")), name: "node2", to: directory)

        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMBytes(Array(serverCertificate.certificatePEM.utf8)).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(bytes: Array(serverCertificate.privateKeyPEM.utf8), format: .pem)))
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMBytes(Array(pki.caPEM.utf8)))
        tls.certificateVerification = .noHostnameVerification
        let server = KMSServer(policy: base.policy, rotation: base.rotation, audit: base.audit)
        let limit = ConnectionLimit(ConnectionPolicy(
            maxConnections: 64, maxPerSource: 64, maxUnauthenticated: 16, maxUnauthenticatedPerSource: 16,
            handshakeTimeout: .seconds(5), idleTimeout: .seconds(30), maxAge: .seconds(300), authenticates: true), events: server.events)
        let box = try TLSContextBox(tls)
        let threads = ThreadLog()
        let probe = ThreadProbe(routes: server.router().buildResponder()) { start, end in threads.entries.withLock { $0.append((start, end)) } }
        let running = try await ServerTask.start { bound in
            try await Application(
                responder: probe, server: .http1(tls: box, limit: limit),
                configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                onServerRunning: { channel in bound(channel.localAddress?.port ?? 0) }
            ).runService(gracefulShutdownSignals: [])
        }
        return TLSServerFixture(base: base, directory: directory, server: running, threads: threads, pki: pki)
    }

    func client(_ identity: String, retries: Int = 0, cache: DEKCache.Limits? = nil) throws -> KMSClient {
        try KMSClient(.init(server: "https://localhost:\(port)", caFile: directory.appendingPathComponent("ca.pem").path,
                            certificateFile: directory.appendingPathComponent("\(identity).pem").path,
                            keyFile: directory.appendingPathComponent("\(identity)-key.pem").path, retries: retries, cache: cache))
    }

    func stop() async {
        await server.stop()
    }
}

@Suite("KMSClient against kmsd's listener over an in-memory provider")
struct KMSClientTests {
    @Test func aNodeGetsItsKeysOverMutualTLSAndIsRefusedOthers() async throws {
        let server = try await TLSServerFixture.start()
        let node = try server.client("node1")
        let issued = try await node.datakey("orders", context: ["f": "1"])
        #expect(try await node.unwrap("orders", wrapped: issued.wrapped, context: ["f": "1"]).plaintext == issued.plaintext)
        // The identity comes from the client's certificate: node 1 may not use node 2's key (and the refusal closes the
        // connection, so the next request shakes hands again).
        await #expect(throws: KMSClientError.self) { try await node.datakey("invoices") }
        let records = try await server.base.records(atLeast: 3)
        #expect(records.map { $0["identity"] as? String }.allSatisfy { $0 == "uri:spiffe://test/storage/node-1" })
        #expect(records.last?["type"] as? String == "authorization")
        await node.shutdown()
        await server.stop()
    }

    /// A connection's requests run on its event loop, also after they waited for the provider and the audit log
    /// (whose writer thread resumes them): no hand-off to the Swift concurrency pool and back per request.
    @Test func requestsRunOnTheirConnectionsEventLoopFromStartToAnswer() async throws {
        let server = try await TLSServerFixture.start()
        let node = try server.client("node1")
        for _ in 0..<5 {
            let issued = try await node.datakey("orders", context: ["f": "1"])
            _ = try await node.unwrap("orders", wrapped: issued.wrapped, context: ["f": "1"])
        }
        let threads = server.threads.entries.withLock { $0 }
        #expect(threads.count == 10)
        #expect(threads.allSatisfy { $0.start && $0.end }, "\(threads)")
        await node.shutdown()
        await server.stop()
    }

    @Test func a503IsRetriedWithinTheBudgetAndReturnedBeyondIt() async throws {
        let server = try await TLSServerFixture.start()
        let patient = try server.client("node1", retries: 2)
        server.base.provider.faults.failNext = 2
        let before = server.base.provider.callCount
        _ = try await patient.datakey("orders")
        #expect(server.base.provider.callCount - before == 3, "two refused attempts, then the one that succeeded")

        let impatient = try server.client("node1", retries: 0)
        server.base.provider.faults.failNext = 1
        do {
            _ = try await impatient.datakey("orders")
            Issue.record("a 503 was not returned")
        } catch let error as KMSClientError {
            #expect(error.status == 503 && error.code == "unavailable")
        }
        // Refusals that a retry cannot change are not retried.
        let beforeRefusal = server.base.provider.callCount
        await #expect(throws: KMSClientError.self) { try await patient.datakey("invoices") }
        await #expect(throws: KMSClientError.self) { try await patient.unwrap("orders", wrapped: "AAAA") }
        #expect(server.base.provider.callCount - beforeRefusal <= 1)
        await patient.shutdown()
        await impatient.shutdown()
        await server.stop()
    }

    @Test func requestsSpreadAcrossEndpointsAndFailOverWhenOneStops() async throws {
        let first = try await TLSServerFixture.start()
        let second = try await TLSServerFixture.start(sharing: first)
        let directory = first.directory
        let client = try KMSClient(.init(server: "https://localhost:\(first.port), https://localhost:\(second.port)/",
                                         caFile: directory.appendingPathComponent("ca.pem").path,
                                         certificateFile: directory.appendingPathComponent("node1.pem").path,
                                         keyFile: directory.appendingPathComponent("node1-key.pem").path, timeout: .seconds(5), retries: 0))
        #expect(client.configuration.servers == ["https://localhost:\(first.port)", "https://localhost:\(second.port)"])
        let before = (first.base.provider.callCount, second.base.provider.callCount)
        for _ in 0..<10 { _ = try await client.datakey("orders") }
        let served = (first.base.provider.callCount - before.0, second.base.provider.callCount - before.1)
        #expect(served.0 == 5 && served.1 == 5, "in turn: \(served)")

        // One endpoint stops (its open connection no longer answers): every request still succeeds, on the other,
        // with no retry budget of its own; the one that found it stopped waited its timeout first (5 s: with 1 s, a
        // request slowed by the tests running in parallel on two cores failed over and broke the turn above).
        await first.stop()
        let still = second.base.provider.callCount
        for _ in 0..<10 { _ = try await client.datakey("orders") }
        #expect(second.base.provider.callCount - still == 10)
        // A key change is sent once, to an endpoint that answers a liveness check (a new client tries the stopped one
        // first and passes over it), and a 503 is not retried: the change may have been made all the same.
        let admin = try KMSClient(.init(server: client.configuration.servers.joined(separator: ","),
                                        caFile: directory.appendingPathComponent("ca.pem").path,
                                        certificateFile: directory.appendingPathComponent("node1.pem").path,
                                        keyFile: directory.appendingPathComponent("node1-key.pem").path,
                                        adminToken: TestIdentities.adminToken, timeout: .seconds(1), retries: 2))
        second.base.provider.faults.down = true
        let requests = second.threads.entries.withLock { $0.count }
        do {
            _ = try await admin.rotate("orders")
            Issue.record("a rotation with the backend down succeeded")
        } catch let error as KMSClientError {
            #expect(error.status == 503, "\(error)")
        }
        #expect(second.threads.entries.withLock { $0.count } - requests == 2, "one liveness check and one rotation, not retried")
        second.base.provider.faults.down = false
        await admin.shutdown()
        await client.shutdown()
        await second.stop()
    }

    @Test func cacheServesWithinItsTTLButNeverPastIt() async throws {
        let server = try await TLSServerFixture.start()
        let node = try server.client("node1", cache: .init(maxEntries: 2, ttl: .milliseconds(400), maxUses: 100))
        let issued = try await node.datakey("orders", context: ["f": "1"])
        let first = try await node.unwrap("orders", wrapped: issued.wrapped, context: ["f": "1"])
        #expect(first.plaintext == issued.plaintext)
        #expect(node.cache?.count == 1)
        // The backend goes down: the cache still answers within the TTL…
        server.base.provider.faults.down = true
        #expect(try await node.unwrap("orders", wrapped: issued.wrapped, context: ["f": "1"]).plaintext == issued.plaintext)
        // …a different context is not a hit…
        await #expect(throws: KMSClientError.self) { try await node.unwrap("orders", wrapped: issued.wrapped, context: ["f": "2"]) }
        // …and past the TTL nothing is served while the backend is down.
        try await Task.sleep(for: .milliseconds(500))
        do {
            _ = try await node.unwrap("orders", wrapped: issued.wrapped, context: ["f": "1"])
            Issue.record("served past the TTL")
        } catch let error as KMSClientError {
            #expect(error.status == 503)
        }
        await node.shutdown()
        await server.stop()
    }

    @Test func cacheBoundsEntriesAndUses() throws {
        let now = Mutex(ContinuousClock.now)
        let cache = DEKCache(.init(maxEntries: 2, ttl: .seconds(60), maxUses: 2), clock: { now.withLock { $0 } })
        cache.store("k", "a", nil, plaintext: [1], version: 1)
        cache.store("k", "b", nil, plaintext: [2], version: 1)
        #expect(cache.lookup("k", "a", nil)?.0 == [1])
        cache.store("k", "c", nil, plaintext: [3], version: 1)  // evicts b, the least recently used
        #expect(cache.count == 2)
        #expect(cache.lookup("k", "b", nil) == nil)
        #expect(cache.lookup("k", "a", nil)?.0 == [1])  // second and last use
        #expect(cache.lookup("k", "a", nil) == nil)
        now.withLock { $0 += .seconds(61) }
        #expect(cache.lookup("k", "c", nil) == nil)
    }

    /// The fields the server accepts come from each request type's CodingKeys, and the client's paths are the ones
    /// the server registers (both from KMSAPI).
    @Test func requestFieldsComeFromCodingKeysAndPathsFromOneTable() throws {
        #expect(DataKeyRequest.fields == ["context"])
        #expect(UnwrapRequest.fields == ["wrapped", "context"])
        #expect(RotateRequest.fields == ["reason", "dry_run"])
        #expect(RetireRequest.fields == ["force"])
        #expect(throws: StrictJSON.Failure.unknownField("dryRun")) {
            try StrictJSON.decode(RotateRequest.self, from: Data(#"{"dryRun": true}"#.utf8))
        }
        #expect(try StrictJSON.decode(RotateRequest.self, from: Data(#"{"dry_run": true}"#.utf8)).dryRun == true)
        #expect(KMSAPI.Path.adminRetire("orders", 3) == KMSAPI.Path.adminRetire("orders", version: "3"))
        #expect(KMSAPI.Path.datakey(KMSAPI.Path.keyParameter) == "/v1/keys/{name}/datakey")
    }

    /// One decoding pass, the same answers as before it: what is not an object, an unknown field, a missing field and
    /// a wrong type each get their own message, which names the field and never the value.
    @Test func strictDecodingNamesTheProblemAndNeverTheValue() throws {
        func failure<T: StrictRequest>(_ type: T.Type, _ body: String) -> StrictJSON.Failure? {
            do {
                _ = try StrictJSON.decode(type, from: Data(body.utf8))
                return nil
            } catch {
                return error
            }
        }
        #expect(try StrictJSON.decode(DataKeyRequest.self, from: Data()) == DataKeyRequest())
        #expect(try StrictJSON.decode(DataKeyRequest.self, from: Data(#"{"context":{"t":"x"}}"#.utf8)) == DataKeyRequest(context: ["t": "x"]))
        for body in ["[]", "null", #""secret-value""#, "{", "42", #"{"context":"#] {
            #expect(failure(DataKeyRequest.self, body) == .notAnObject, "\(body)")
        }
        #expect(failure(DataKeyRequest.self, #"{"zeta":1,"alpha":"secret-value"}"#) == .unknownField("alpha"))
        #expect(failure(UnwrapRequest.self, #"{"context":{}}"#) == .schema("missing field 'wrapped'"))
        #expect(failure(UnwrapRequest.self, #"{"wrapped":"a","context":{"t":7}}"#) == .schema("wrong type at 'context.t'"))
        #expect(failure(UnwrapRequest.self, #"{"wrapped":null}"#) == .schema("null at 'wrapped'"))
        #expect(failure(BatchRequest.self, #"{"items":[{"wrapped":5}]}"#) == .schema("wrong type at 'items.Index 0.wrapped'"))
        // kmsd's own parser: stricter than JSONSerialization where the difference could be exploited.
        #expect(failure(UnwrapRequest.self, #"{"wrapped":"a","wrapped":"b"}"#) == .schema("duplicate field 'wrapped'"))
        #expect(failure(DataKeyRequest.self, #"{"context":{"t":"a","t":"b"}}"#) == .schema("duplicate field 't'"))
        let deep = String(repeating: #"{"a":"#, count: 100) + "1" + String(repeating: "}", count: 100)
        #expect(failure(DataKeyRequest.self, deep) == .schema("nested more than 64 levels deep"))
        for malformed in [#"{"context":{}} x"#, #"{"context":{},}"#, "{'context':{}}", #"{"context":{"t":"\x"}}"#,
                          "{\"context\":{\"t\":\"a\u{01}\"}}", #"{"context":{"t":"\ud800"}}"#, #"{"items":[1,]}"#, "{\"a\":01}",
                          #"{"a":-}"#, #"{"a":1.}"#, #"{"a":tru}"#] {
            #expect(failure(BatchRequest.self, malformed) == .notAnObject, "\(malformed)")
        }
        // Invalid UTF-8 inside a string (a lone lead byte).
        #expect(strictFailure(bytes: [0x7B, 0x22, 0xC3, 0x22, 0x3A, 0x31, 0x7D]) == .notAnObject)
        let escaped = try StrictJSON.decode(DataKeyRequest.self, from: Data(#" { "context" : { "t\u00e9" : "a\"\\\/\n\ud83d\ude00" } } "#.utf8))
        #expect(escaped.context == ["t\u{E9}": "a\"\\/\n\u{1F600}"])
        #expect(try StrictJSON.decode(RetireRequest.self, from: Data(#"{"force":true}"#.utf8)).force == true)
        #expect(failure(RetireRequest.self, #"{"force":1}"#) == .schema("wrong type at 'force'"))
    }

    private func strictFailure(bytes: [UInt8]) -> StrictJSON.Failure? {
        do {
            _ = try StrictJSON.decode(DataKeyRequest.self, from: Data(bytes))
            return nil
        } catch {
            return error
        }
    }

    @Test func cacheComparesContextsByTheirBytesAsKMSDDoes() throws {
        let cache = DEKCache()
        let composed = "caf\u{E9}"            // NFC
        let decomposed = "cafe\u{301}"        // NFD: equal as Swift Strings, different bytes
        #expect(composed == decomposed)
        cache.store("k", "w", ["table": composed], plaintext: [7], version: 1)
        #expect(cache.lookup("k", "w", ["table": decomposed]) == nil, "kmsd would refuse this context; the cache must not answer it")
        #expect(cache.lookup("k", "w", ["table": composed])?.0 == [7])
        // Field boundaries are length-prefixed: moving a character between key and value is another context.
        cache.store("k", "w", ["ab": "c"], plaintext: [8], version: 1)
        #expect(cache.lookup("k", "w", ["a": "bc"]) == nil)
    }
}
