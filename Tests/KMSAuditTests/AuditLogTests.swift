import Crypto
import Foundation
@testable import KMSAudit
import KMSCore
import KMSTestSupport
import Testing
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A directory of its own for one test's audit files, with a signing key.
struct AuditFixture {
    let directory: URL
    let keyPath: String
    var logPath: String { directory.appendingPathComponent("audit.jsonl").path }
    var publicKeyPEM: String { (try? String(contentsOfFile: logPath + ".pub.pem", encoding: .utf8)) ?? "" }

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("audit-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        keyPath = directory.appendingPathComponent("signing-key.pem").path
        try FileAuditSigner.createIfMissing(path: keyPath)
    }

    func open(maxFileBytes: Int = 100 << 20, checkpointEvery: Int = 50, failClosed: Bool = true) throws -> AuditLog {
        try AuditLog(.init(path: logPath, maxFileBytes: maxFileBytes, checkpointEvery: checkpointEvery, failClosed: failClosed,
                           signer: try FileAuditSigner(path: keyPath)))
    }

    /// The rotated files (oldest first) and then the current one.
    var files: [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        let rotated = names.filter { $0.hasPrefix("audit.jsonl.") && !$0.hasSuffix(".pem") }.sorted()
        return rotated.map { directory.appendingPathComponent($0).path } + [logPath]
    }

    func verify(_ files: [String]? = nil, allowOpenTail: Bool = false) throws -> AuditVerifier.Report {
        try AuditVerifier(publicKeyPEM: publicKeyPEM, allowOpenTail: allowOpenTail).verify(files: files ?? self.files)
    }

    func lines(_ path: String) throws -> [String] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
    }

    func write(_ lines: [String], to path: String) throws {
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: path))
    }
}

func event(_ index: Int) -> AuditEvent {
    AuditEvent(.keyAccess, "datakey", result: .ok, identity: "spiffe://test/node-\(index % 4)", key: "orders", version: 1,
               contextDigest: String(repeating: "a", count: 64))
}

func json(_ line: String) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]) ?? [:]
}

@Suite("Audit log", .serialized)
struct AuditLogTests {
    @Test func everyRecordChainsAndTheLogVerifiesAcrossFileRotations() async throws {
        let fixture = try AuditFixture()
        let log = try fixture.open(maxFileBytes: 8192, checkpointEvery: 25)
        for index in 0..<300 { try await log.record(event(index)) }
        await log.close()
        #expect(fixture.files.count > 3, "the file rotated")
        let report = try fixture.verify()
        #expect(report.ok, "\(String(describing: report.problem))")
        let all = try fixture.files.flatMap { try fixture.lines($0) }.map(json)
        #expect(all.filter { $0["type"] as? String == "key_access" }.count == 300)
        #expect(all.map { ($0["seq"] as? NSNumber)?.intValue ?? 0 } == Array(1...all.count))
        #expect(all.first?["prev"] as? String == AuditChain.genesis)
        #expect(all.contains { $0["type"] as? String == "file_start" })
        #expect(report.checkpoints >= 12)
        // Each file but the current one ends with a closing checkpoint; the current one too, after close.
        for file in fixture.files {
            let last = json(try fixture.lines(file).last ?? "")
            #expect((last["checkpoint"] as? [String: Any])?["closing"] as? Bool == true, "\(file)")
        }
        // The documented fields, and nothing else.
        let record = try #require(all.first { $0["type"] as? String == "key_access" })
        #expect(Set(record.keys) == ["seq", "time", "prev", "type", "action", "result", "identity", "key", "version", "context_digest"])
    }

    @Test func aRestartContinuesTheChainAndATornLastLineIsCutOff() async throws {
        let fixture = try AuditFixture()
        var log = try fixture.open()
        for index in 0..<5 { try await log.record(event(index)) }
        await log.close()
        // A crash in the middle of a write leaves half a line (never acknowledged).
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: fixture.logPath))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(#"{"seq":7,"prev":"abc","type":"key_ac"#.utf8))
        try handle.close()
        log = try fixture.open()
        for index in 5..<10 { try await log.record(event(index)) }
        await log.close()
        let report = try fixture.verify()
        #expect(report.ok, "\(String(describing: report.problem))")
        #expect(try fixture.lines(fixture.logPath).map(json).filter { $0["type"] as? String == "key_access" }.count == 10)
    }

    @Test(arguments: ["modify", "delete", "insert", "reorder", "truncate", "signature"])
    func tamperingIsDetectedAndTheRecordNamed(_ kind: String) async throws {
        let fixture = try AuditFixture()
        let log = try fixture.open(checkpointEvery: 10)
        for index in 0..<40 { try await log.record(event(index)) }
        await log.close()
        #expect(try fixture.verify().ok)
        var lines = try fixture.lines(fixture.logPath)
        let target = 20  // 1-based line number
        let targetSeq = (json(lines[target - 1])["seq"] as? NSNumber)?.uint64Value
        switch kind {
        case "modify":
            lines[target - 1] = lines[target - 1].replacingOccurrences(of: "node-", with: "n0de-")
        case "delete":
            lines.remove(at: target - 1)
        case "insert":
            lines.insert(lines[target - 1].replacingOccurrences(of: "orders", with: "others"), at: target)
        case "reorder":
            lines.swapAt(target - 1, target)
        case "truncate":
            lines.removeLast(3)
        default:
            let index = try #require(lines.firstIndex { json($0)["type"] as? String == "checkpoint" })
            let signature = try #require((json(lines[index])["checkpoint"] as? [String: Any])?["signature"] as? String)
            var bytes = [UInt8](try #require(Data(base64Encoded: signature)))
            bytes[5] ^= 0x01
            lines[index] = lines[index].replacingOccurrences(of: signature, with: Data(bytes).base64EncodedString())
        }
        try fixture.write(lines, to: fixture.logPath)
        let report = try fixture.verify()
        let problem = try #require(report.problem, "\(kind) was not detected")
        switch kind {
        case "modify":
            #expect(problem.line == target && problem.seq == targetSeq && problem.message.contains("modified"))
        case "delete":
            #expect(problem.line == target && problem.message.contains("seq \(targetSeq ?? 0)") && problem.message.contains("deleted"))
        case "insert":
            #expect(problem.line == target + 1 && problem.message.contains("inserted"))
        case "reorder":
            #expect(problem.line == target && problem.message.contains("reordered"))
        case "truncate":
            #expect(problem.message.contains("closing checkpoint"))
        default:
            #expect(problem.message.contains("signature"))
        }
        // The same files pass with the open-tail allowance only for truncation (a live log), never for the others.
        let lenient = try fixture.verify(allowOpenTail: true)
        #expect(lenient.ok == (kind == "truncate"))
    }

    /// A log cut right after a periodic checkpoint, whose `closing` is flipped to true, must not pass as a complete
    /// log: checkpoint v2 signs `closing` (v1 signed seq and prev only, and this verified).
    @Test func aLogCutAfterAPeriodicCheckpointWithClosingFlippedFailsVerification() async throws {
        let fixture = try AuditFixture()
        let log = try fixture.open(checkpointEvery: 10)
        for index in 0..<40 { try await log.record(event(index)) }
        await log.close()
        var lines = try fixture.lines(fixture.logPath)
        let periodic = try #require(lines.firstIndex { json($0)["type"] as? String == "checkpoint" })
        #expect(lines[periodic].contains(#""closing":false"#) && lines[periodic].contains(#""v":2"#))
        lines = Array(lines[...periodic])
        lines[periodic] = lines[periodic].replacingOccurrences(of: #""closing":false"#, with: #""closing":true"#)
        try fixture.write(lines, to: fixture.logPath)
        let report = try fixture.verify()
        #expect(report.problem?.seq == (json(lines[periodic])["seq"] as? NSNumber)?.uint64Value)
        #expect(report.problem?.message.contains("signature") == true, "\(String(describing: report.problem))")
        // Cut there without the flip, the log is incomplete (no closing checkpoint), which is reported too.
        lines[periodic] = lines[periodic].replacingOccurrences(of: #""closing":true"#, with: #""closing":false"#)
        try fixture.write(lines, to: fixture.logPath)
        #expect(try fixture.verify().problem?.message.contains("closing checkpoint") == true)
        // Dropping the format version to pass the checkpoint off as v1 fails too: its signature is over the v2 message.
        lines[periodic] = lines[periodic].replacingOccurrences(of: #""closing":false"#, with: #""closing":true"#)
            .replacingOccurrences(of: #","v":2"#, with: "")
        try fixture.write(lines, to: fixture.logPath)
        #expect(try fixture.verify().problem?.message.contains("signature") == true)
    }

    /// Checkpoints written before v2 (signing seq and prev only) still verify, and the report says they are v1.
    @Test func v1CheckpointsStillVerifyAndAreReportedAsV1() throws {
        let fixture = try AuditFixture()
        let signer = try FileAuditSigner(path: fixture.keyPath)
        var bytes: [UInt8] = []
        var prev = AuditChain.genesis
        for seq in UInt64(1)...3 {
            var record = AuditRecord(seq: seq, time: "2026-01-01T00:00:0\(seq).000Z", prev: prev, event: event(Int(seq)))
            if seq == 3 {
                record = AuditRecord(seq: seq, time: "2026-01-01T00:00:03.000Z", prev: prev, event: AuditEvent(.checkpoint, "close", result: .ok))
                let signature = try signer.sign(digest: SHA256.hash(data: AuditChain.checkpointMessage(seq: seq, prev: prev)))
                record.checkpoint = .init(signature: Data(signature).base64EncodedString(), keyID: signer.keyID, closing: true, records: seq,
                                          version: nil)
            }
            let line = record.jsonLine
            prev = SHA256.hash(data: line).map { String(format: "%02x", $0) }.joined()
            bytes += line + [UInt8(ascii: "\n")]
        }
        try Data(bytes).write(to: URL(fileURLWithPath: fixture.logPath))
        let report = try AuditVerifier(publicKeyPEM: signer.publicKeyPEM).verify(files: [fixture.logPath])
        #expect(report.ok && report.checkpoints == 1 && report.v1Checkpoints == 1)
        #expect(report.notes.contains { $0.contains("v1") })
    }

    @Test func anExpectedLastSeqPinsTheEndOfTheLog() async throws {
        let fixture = try AuditFixture()
        let log = try fixture.open(checkpointEvery: 10)
        for index in 0..<15 { try await log.record(event(index)) }
        await log.close()
        let last = try #require(try fixture.verify().lastSeq)
        #expect(try AuditVerifier(publicKeyPEM: fixture.publicKeyPEM, expectedLastSeq: last).verify(files: fixture.files).ok)
        let cut = try AuditVerifier(publicKeyPEM: fixture.publicKeyPEM, expectedLastSeq: last + 5).verify(files: fixture.files)
        #expect(cut.problem?.message.contains("cut off") == true)
    }

    /// The queue is bounded: while the writer is stuck (here in a checkpoint signature that does not return),
    /// `record` beyond `maxQueue` fails at once (the API answers 503 `audit_unavailable`) and `submit` drops.
    @Test func aFullQueueRefusesAtOnceInsteadOfGrowing() async throws {
        let fixture = try AuditFixture()
        let signer = BlockingSigner(try FileAuditSigner(path: fixture.keyPath))
        let log = try AuditLog(.init(path: fixture.logPath, checkpointEvery: 1, failClosed: true, signer: signer, maxQueue: 16))
        let first = Task { try await log.record(event(0)) }
        for _ in 0..<200 where !signer.entered { try await Task.sleep(for: .milliseconds(10)) }
        #expect(signer.entered, "the writer did not reach the signer")
        let waiting = (1...16).map { index in Task { try await log.record(event(index)) } }
        for _ in 0..<200 where log.statistics.queueDepth < 16 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(log.statistics.queueDepth == 16)
        await #expect { try await log.record(event(99)) } throws: { ($0 as? AuditError)?.description.contains("full") == true }
        log.submit(event(100))
        #expect(log.statistics.refused == 2 && log.statistics.queueDepth == 16)
        signer.release()
        try await first.value
        for task in waiting { try await task.value }
        await log.close()
        let report = try fixture.verify()
        #expect(report.ok && report.records - report.checkpoints == 17)
    }

    @Test func rotatedFilesBeyondKeepFilesAreDeleted() async throws {
        let fixture = try AuditFixture()
        let log = try AuditLog(.init(path: fixture.logPath, maxFileBytes: 4096, checkpointEvery: 10, failClosed: true,
                                     signer: try FileAuditSigner(path: fixture.keyPath), keepFiles: 2))
        for index in 0..<200 { try await log.record(event(index)) }
        await log.close()
        let files = fixture.files
        #expect(files.count == 3, "\(files.map { URL(fileURLWithPath: $0).lastPathComponent })")
        // What is kept still verifies as a chain (starting after the deleted files, which the report notes).
        let report = try fixture.verify()
        #expect(report.ok && report.notes.contains { $0.contains("older files not given") })
    }

    @Test func anUnwritableLogFailsClosedAndRecoversWithAValidChain() async throws {
        let fixture = try AuditFixture()
        let log = try fixture.open()
        try await log.record(event(0))
        // The file is moved away and a directory put in its place: kmsd cannot open it for writing.
        let aside = fixture.logPath + ".aside"
        try FileManager.default.moveItem(atPath: fixture.logPath, toPath: aside)
        try FileManager.default.createDirectory(atPath: fixture.logPath, withIntermediateDirectories: false)
        await #expect(throws: AuditError.self) { try await log.record(event(1)) }
        #expect(!log.statistics.writable && log.statistics.failures >= 1)
        try FileManager.default.removeItem(atPath: fixture.logPath)
        try FileManager.default.moveItem(atPath: aside, toPath: fixture.logPath)
        try await log.record(event(2))
        #expect(log.statistics.writable)
        await log.close()
        #expect(try fixture.verify().ok)
        let records = try fixture.lines(fixture.logPath).map(json).filter { $0["type"] as? String == "key_access" }
        #expect(records.map { $0["identity"] as? String } == ["spiffe://test/node-0", "spiffe://test/node-2"])
    }

    @Test func withoutFailClosedAWriteFailureIsLoggedAndTheCallerGoesOn() async throws {
        let fixture = try AuditFixture()
        let log = try fixture.open(failClosed: false)
        try FileManager.default.removeItem(atPath: fixture.logPath)
        try FileManager.default.createDirectory(atPath: fixture.logPath, withIntermediateDirectories: false)
        try await log.record(event(0))
        #expect(log.statistics.failures == 1)
        try FileManager.default.removeItem(atPath: fixture.logPath)
        await log.close()
    }

    @Test func concurrentRecordsShareFsyncsAndNoneIsLost() async throws {
        let fixture = try AuditFixture()
        let log = try fixture.open(checkpointEvery: 1000)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<16 {
                group.addTask { for index in 0..<250 { try await log.record(event(task * 1000 + index)) } }
            }
            try await group.waitForAll()
        }
        let statistics = log.statistics
        await log.close()
        #expect(statistics.records == 4000)
        #expect(statistics.batches < 4000, "group commit: \(statistics.batches) fsyncs for 4000 records")
        let report = try fixture.verify()
        #expect(report.ok && report.records == 4000 + report.checkpoints)
    }

    @Test func aWrongPublicKeyFailsVerification() async throws {
        let fixture = try AuditFixture()
        let log = try fixture.open()
        try await log.record(event(0))
        await log.close()
        let other = P256.Signing.PrivateKey().publicKey.pemRepresentation
        let report = try AuditVerifier(publicKeyPEM: other).verify(files: fixture.files)
        #expect(report.problem?.message.contains("signature") == true)
    }
}

/// A signer that blocks in `sign` until released: a writer stuck on a slow HSM or disk.
final class BlockingSigner: AuditSigner, Sendable {
    let base: FileAuditSigner
    private let gate = DispatchSemaphore(value: 0)
    private let state = Mutex((entered: false, released: false))

    init(_ base: FileAuditSigner) {
        self.base = base
    }

    var publicKeyPEM: String { base.publicKeyPEM }
    var entered: Bool { state.withLock { $0.entered } }

    func sign(digest: SHA256Digest) throws -> [UInt8] {
        let wait = state.withLock { state -> Bool in
            state.entered = true
            return !state.released
        }
        if wait { gate.wait() }
        return try base.sign(digest: digest)
    }

    func release() {
        state.withLock { $0.released = true }
        gate.signal()
    }
}

/// A TCP listener on 127.0.0.1 that keeps every byte it receives (a stand-in syslog collector: real sockets, no TLS).
final class Collector: Sendable {
    final class Received: Sendable {
        let bytes = Mutex<[UInt8]>([])
    }

    let port: Int
    private let received = Received()
    private let listener: Int32

    init() throws {
        let (fd, port) = try loopbackSocket(listening: true, backlog: 4)
        listener = fd
        self.port = port
        let received = received
        Thread {
            let connection = accept(fd, nil, nil)
            var buffer = [UInt8](repeating: 0, count: 65536)
            while connection >= 0 {
                let count = read(connection, &buffer, buffer.count)
                if count <= 0 { break }
                received.bytes.withLock { $0 += buffer[..<count] }
            }
        }.start()
    }

    /// The octet-counted frames received so far.
    var frames: [String] {
        var bytes = received.bytes.withLock { $0 }[...]
        var frames: [String] = []
        while let space = bytes.firstIndex(of: UInt8(ascii: " ")), let length = Int(String(decoding: bytes[..<space], as: UTF8.self)),
              bytes.count >= space - bytes.startIndex + 1 + length {
            let start = space + 1
            frames.append(String(decoding: bytes[start..<(start + length)], as: UTF8.self))
            bytes = bytes[(start + length)...]
        }
        return frames
    }

    deinit { close(listener) }
}

@Suite("Syslog copy")
struct SyslogTests {
    @Test func eachDurableRecordIsSentAsAnRFC5424MessageWithOctetCounting() async throws {
        let collector = try Collector()
        let forwarder = SyslogForwarder(.init(host: "127.0.0.1", port: collector.port, tls: nil))
        let fixture = try AuditFixture()
        let log = try AuditLog(.init(path: fixture.logPath, failClosed: true, signer: try FileAuditSigner(path: fixture.keyPath), syslog: forwarder))
        for index in 0..<5 { try await log.record(event(index)) }
        await log.close()
        var frames: [String] = []
        for _ in 0..<100 where frames.count < 6 {
            try await Task.sleep(for: .milliseconds(20))
            frames = collector.frames
        }
        let lines = try fixture.lines(fixture.logPath)
        #expect(frames.count == lines.count, "\(frames.count) frames for \(lines.count) records")
        for (frame, line) in zip(frames, lines) {
            #expect(frame.hasPrefix("<109>1 ") && frame.hasSuffix(line), "\(frame.prefix(120))")
        }
        #expect(frames.first?.contains(" kmsd ") == true && frames.first?.contains(" key_access - ") == true)
    }
}

@Suite("Audit record encoding")
struct AuditRecordEncodingTests {
    @Test(arguments: [
        AuditEvent(.keyAccess, "datakey", result: .ok, identity: "spiffe://a/b", key: "orders", version: 3, contextDigest: "ab"),
        AuditEvent(.security, "provider_state", result: .failed, detail: "quote \" backslash \\ newline \n tab \t bell \u{07} bs \u{08} ff \u{0C} é ✓ /slash"),
        AuditEvent(.authorization, "unwrap_batch", result: .denied, identity: "CN=x", items: 12, code: "forbidden"),
        AuditEvent(.keyAccess, "unwrap_batch", result: .ok, identity: "uri:spiffe://a/b", key: "orders", items: 3, outcomes: [
            .init(result: .ok, version: 2, contextDigest: "ab"), .init(result: .denied, version: 1, contextDigest: "cd", code: "invalid_input"),
            .init(result: .failed, code: "invalid \"input\""),
        ]),
    ])
    func theHandWrittenLineIsWhatJSONEncoderWrites(_ event: AuditEvent) throws {
        var record = AuditRecord(seq: 42, time: AuditTime.now(), prev: AuditChain.genesis, event: event)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        #expect(String(decoding: record.jsonLine, as: UTF8.self) == String(decoding: try encoder.encode(record), as: UTF8.self))
        record.checkpoint = .init(signature: "c2ln", keyID: "0123456789abcdef", closing: true, records: 42)
        #expect(String(decoding: record.jsonLine, as: UTF8.self) == String(decoding: try encoder.encode(record), as: UTF8.self))
    }

    @Test func timesAreRFC3339WithMilliseconds() {
        #expect(AuditTime.now().wholeMatch(of: /[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z/) != nil)
    }
}

@Suite("Audit anchors across replicas", .serialized)
struct AuditAnchorTests {
    /// A replica's log (`checkpointEvery` 10, 35 events, closed): its file's contents and the anchors it emitted.
    func replicaLog(_ fixture: AuditFixture, _ replica: String) async throws -> (path: String, anchors: [AuditAnchor]) {
        let path = fixture.directory.appendingPathComponent("audit-\(replica).jsonl").path
        let emitted = Mutex<[AuditAnchor]>([])
        var configuration = AuditLog.Configuration(path: path, checkpointEvery: 10, failClosed: true, signer: try FileAuditSigner(path: fixture.keyPath))
        configuration.replica = replica
        configuration.onCheckpoint = { anchor in emitted.withLock { $0.append(anchor) } }
        let log = try AuditLog(configuration)
        for index in 0..<35 { try await log.record(event(index)) }
        await log.close()
        return (path, emitted.withLock { $0 })
    }

    /// Each file verified as a chain of its own, as `kmsctl audit verify --state` does per replica (chain only: the
    /// rewritten checkpoint below keeps its old signature, as one re-signed with the writer's key would pass).
    func chains(_ paths: [String]) throws -> [AuditVerifier.Report] {
        let verifier = try AuditVerifier(publicKeyPEM: nil, allowOpenTail: true)
        return paths.map { verifier.verify(files: [$0]) }
    }

    @Test func everyRecordNamesItsReplicaAndEveryDurableCheckpointIsAnchored() async throws {
        let fixture = try AuditFixture()
        let (path, anchors) = try await replicaLog(fixture, "kms-1")
        let lines = try fixture.lines(path)
        #expect(lines.allSatisfy { json($0)["replica"] as? String == "kms-1" })
        let checkpoints = lines.filter { json($0)["type"] as? String == "checkpoint" }
        #expect(anchors.count == checkpoints.count && anchors.count >= 4, "\(anchors.count) anchors, \(checkpoints.count) checkpoints")
        #expect(anchors.last?.closing == true)
        #expect(anchors.map(\.lineHash) == checkpoints.map { Hex.encode(SHA256.hash(data: Data($0.utf8))) })
        #expect(try AuditVerifier(publicKeyPEM: String(contentsOfFile: path + ".pub.pem", encoding: .utf8)).verify(files: [path]).ok)
    }

    @Test func deletingOrRollingBackOrRewritingAReplicasLogShowsAgainstItsAnchors() async throws {
        let fixture = try AuditFixture()
        let (one, firstAnchors) = try await replicaLog(fixture, "kms-1")
        let (two, secondAnchors) = try await replicaLog(fixture, "kms-2")
        let anchors = firstAnchors + secondAnchors

        let both = try chains([one, two])
        #expect(both.map(\.replica) == ["kms-1", "kms-2"])
        let intact = AuditAnchorCheck.check(chains: both, anchors: anchors)
        #expect(intact.ok && intact.matched == anchors.count, "\(intact.problems)")
        // Two replicas' files given as one chain: the verifier says the logs are mixed.
        let mixed = try AuditVerifier(publicKeyPEM: nil).verify(files: [one, two])
        #expect(mixed.problem?.message.contains("two logs mixed") == true, "\(String(describing: mixed.problem))")

        // One replica's whole log deleted: its chain alone cannot tell, the anchors do.
        let deleted = AuditAnchorCheck.check(chains: try chains([one]), anchors: anchors)
        #expect(deleted.problems.count == 1 && deleted.problems[0].contains("replica 'kms-2'") && deleted.problems[0].contains("none of the files"))

        // Rolled back to an earlier valid state: the first 20 lines end with a valid checkpoint, but later ones are anchored.
        let rolledBack = fixture.directory.appendingPathComponent("rolled-back.jsonl").path
        let lines = try fixture.lines(two)
        let cut = try #require(lines.indices.last { $0 < 25 && json(lines[$0])["type"] as? String == "checkpoint" })
        try fixture.write(Array(lines[...cut]), to: rolledBack)
        let rollback = AuditAnchorCheck.check(chains: try chains([one, rolledBack]), anchors: anchors)
        #expect(rollback.problems.contains { $0.contains("replica 'kms-2'") && $0.contains("rolled back") }, "\(rollback.problems)")

        // A checkpoint rewritten in a chain that is consistent again (the last line here; with the writer's key a
        // longer log could be re-chained and re-signed): the chain verifies, its anchor differs.
        var rewritten = Array(lines[...cut])
        rewritten[cut] = rewritten[cut].replacingOccurrences(of: "\"time\":\"", with: "\"time\":\"1")
        try fixture.write(rewritten, to: rolledBack)
        let rewrite = AuditAnchorCheck.check(chains: try chains([one, rolledBack]), anchors: anchors)
        #expect(rewrite.problems.contains { $0.contains("not the checkpoint anchored") }, "\(rewrite.problems)")
    }
}
