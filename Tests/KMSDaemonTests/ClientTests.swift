import Foundation
import KMSAPI
@testable import KMSClient
import KMSDaemon
import KMSTestSupport
import Synchronization
import Testing

@Suite("The storage-node example against kmsd")
struct ClientTests {
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
