import Foundation
import KMSAPI
@testable import KMSClient
import KMSDaemon
import KMSTestSupport
import Synchronization
import Testing

@Suite("KMSClient and its DEK cache")
struct ClientTests {
    func client(_ kmsd: RunningKMSD, identity: String, cache: DEKCache.Limits? = nil) throws -> KMSClient {
        let directory = kmsd.directory.path
        return try KMSClient(.init(server: "https://localhost:\(kmsd.port)", caFile: "\(directory)/ca.pem",
                                   certificateFile: "\(directory)/\(identity).pem", keyFile: "\(directory)/\(identity)-key.pem",
                                   retries: 0, cache: cache))
    }

    @Test func cacheServesWithinItsTTLButNeverPastIt() async throws {
        let kmsd = try await RunningKMSD.start()
        let node = try client(kmsd, identity: "node1", cache: .init(maxEntries: 2, ttl: .milliseconds(400), maxUses: 100))
        let issued = try await node.datakey("orders", context: ["f": "1"])
        let first = try await node.unwrap("orders", wrapped: issued.wrapped, context: ["f": "1"])
        #expect(first.plaintext == issued.plaintext)
        #expect(node.cache?.count == 1)
        // kmsd goes down: the cache still answers within the TTL…
        try kmsd.shim.inject(.down)
        #expect(try await node.unwrap("orders", wrapped: issued.wrapped, context: ["f": "1"]).plaintext == issued.plaintext)
        // …a different context is not a hit…
        await #expect(throws: KMSClientError.self) { try await node.unwrap("orders", wrapped: issued.wrapped, context: ["f": "2"]) }
        // …and past the TTL nothing is served while kmsd is down.
        try await Task.sleep(for: .milliseconds(500))
        do {
            _ = try await node.unwrap("orders", wrapped: issued.wrapped, context: ["f": "1"])
            Issue.record("served past the TTL")
        } catch let error as KMSClientError {
            #expect(error.status == 503)
        }
        try kmsd.shim.clear()
        await node.shutdown()
        await kmsd.stop()
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

    @Test func theStorageNodeExampleReadsItsRecordsBackAfterARestart() async throws {
        let kmsd = try await RunningKMSD.start()
        let directory = kmsd.directory.path
        let file = "\(directory)/data.kmsfile"
        func run(_ arguments: [String]) throws -> (Int32, String) {
            try BuiltExecutable("storage-node-example").run(
                ["--server", "https://localhost:\(kmsd.port)", "--ca", "\(directory)/ca.pem",
                 "--cert", "\(directory)/node1.pem", "--key", "\(directory)/node1-key.pem",
                 "--key-name", "orders", "--file", file] + arguments)
        }
        #expect(try run(["write", "first", "record"]).0 == 0)
        #expect(try run(["write", "second record"]).0 == 0)
        let (status, text) = try run(["read"])
        #expect(status == 0, "\(text)")
        #expect(text == "first record\nsecond record\n")
        // The file holds the wrapped DEK only.
        let stored = try String(contentsOfFile: file, encoding: .utf8)
        #expect(!stored.contains("first record"))
        await kmsd.stop()
    }
}
