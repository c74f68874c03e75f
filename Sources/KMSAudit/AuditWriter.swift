import Crypto
import Foundation
import KMSCore
import Logging
import Synchronization

/// The audit log's writer thread: takes the queued events in groups, chains them, adds checkpoints when due, makes
/// each group durable with one write and one fsync (`AuditFile.appendDurably`), answers the waiters, forwards the
/// syslog copy, and rotates the file by size.
final class Writer: @unchecked Sendable {
    let configuration: AuditLog.Configuration
    let core: AuditLog.Core
    let logger: Logger
    let onFailure: @Sendable (String) -> Void
    private let file: AuditFile
    private var seq: UInt64 = 0
    private var prev = AuditChain.genesis
    private var sinceCheckpoint = 0
    private var lastCheckpointAt = Date()

    init(_ configuration: AuditLog.Configuration, core: AuditLog.Core, logger: Logger, onFailure: @escaping @Sendable (String) -> Void) throws {
        self.configuration = configuration
        self.core = core
        self.logger = logger
        self.onFailure = onFailure
        let directory = URL(fileURLWithPath: configuration.path).deletingLastPathComponent().path
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        file = AuditFile(path: configuration.path, logger: logger)
        adopt(try file.open())
    }

    /// Continues the chain from a file's recovered tail (a new, empty file continues the chain this writer holds).
    private func adopt(_ tail: AuditFile.Tail?) {
        guard let tail else { return }
        seq = tail.seq
        prev = tail.prev
    }

    func run() {
        while true {
            _ = core.wake.wait(timeout: .now() + .milliseconds(Int(max(0.05, min(configuration.checkpointInterval, 60)) * 1000)))
            let (batch, closing) = core.state.withLock { state in
                defer {
                    state.queue = []
                    state.statistics.queueDepth = 0
                }
                return (state.queue, state.closing)
            }
            let checkpointDue = configuration.signer != nil && sinceCheckpoint > 0
                && Date().timeIntervalSince(lastCheckpointAt) >= configuration.checkpointInterval
            if !batch.isEmpty || checkpointDue { commit(batch) }
            if closing {
                let rest = core.state.withLock { state in
                    defer { state.queue = [] }
                    return state.queue
                }
                if !rest.isEmpty { commit(rest) }
                finish()
                return
            }
        }
    }

    // MARK: - Committing

    private func commit(_ batch: [AuditLog.Pending]) {
        copies = []
        anchors = []
        do {
            adopt(try file.ensureOpen())
            var seq = self.seq
            var prev = self.prev
            var bytes: [UInt8] = []
            for pending in batch {
                append(AuditRecord(seq: seq + 1, time: AuditTime.now(), prev: prev, event: pending.event, replica: configuration.replica),
                       to: &bytes, seq: &seq, prev: &prev)
            }
            var since = sinceCheckpoint + batch.count
            if let signer = configuration.signer,
               since >= configuration.checkpointEvery || Date().timeIntervalSince(lastCheckpointAt) >= configuration.checkpointInterval {
                // A signer that cannot sign now (the HSM is down) delays the checkpoint; the records still go out,
                // chained, and the next checkpoint covers them.
                do {
                    append(try checkpoint(signer, seq: seq + 1, prev: prev, closing: false), to: &bytes, seq: &seq, prev: &prev)
                    since = 0
                } catch {
                    logger.warning("audit checkpoint not signed; retrying with the next batch", metadata: ["error": "\(error)"])
                    onFailure("checkpoint: \(error)")
                }
            }
            let fsyncSeconds = try file.appendDurably(bytes).seconds
            self.seq = seq
            self.prev = prev
            if since == 0 { lastCheckpointAt = Date() }
            sinceCheckpoint = since
            core.state.withLock { state in
                state.statistics.records += UInt64(batch.count)
                state.statistics.batches += 1
                state.statistics.largestBatch = max(state.statistics.largestBatch, batch.count)
                state.statistics.lastFsyncSeconds = fsyncSeconds
                state.statistics.totalFsyncSeconds += fsyncSeconds
                state.statistics.writable = true
            }
            for pending in batch { pending.waiter?.resume() }
            forwardCopies()
            if file.size >= configuration.maxFileBytes { rotateFile() }
        } catch {
            file.close()
            let message = "\(error)"
            core.state.withLock { state in
                state.statistics.failures += 1
                state.statistics.writable = false
                state.statistics.lastError = message
            }
            logger.error("audit log write failed", metadata: [
                "security_event": "audit_unavailable", "error": "\(message)", "records": "\(batch.count)",
                "fail_closed": "\(configuration.failClosed)",
            ])
            onFailure(message)
            for pending in batch {
                if configuration.failClosed {
                    pending.waiter?.resume(throwing: AuditError("the audit log cannot be written"))
                } else {
                    pending.waiter?.resume()
                }
            }
        }
    }

    /// Lines of the batch being committed, for the syslog copy once they are durable.
    private var copies: [(line: [UInt8], type: String, time: String)] = []

    /// Checkpoints of the batch being committed, for `onCheckpoint` once they are durable.
    private var anchors: [AuditAnchor] = []

    /// Sends the lines just made durable to syslog, and their checkpoints to `onCheckpoint`.
    private func forwardCopies() {
        if let syslog = configuration.syslog {
            for copy in copies { syslog.send(copy.line, type: copy.type, time: copy.time) }
        }
        copies = []
        if let onCheckpoint = configuration.onCheckpoint {
            for anchor in anchors { onCheckpoint(anchor) }
        }
        anchors = []
    }

    private func append(_ record: AuditRecord, to bytes: inout [UInt8], seq: inout UInt64, prev: inout String) {
        let line = record.jsonLine
        seq = record.seq
        prev = Hex.encode(SHA256.hash(data: line))
        if configuration.syslog != nil { copies.append((line, record.event.kind.rawValue, record.time)) }
        if configuration.onCheckpoint != nil, let checkpoint = record.checkpoint {
            anchors.append(AuditAnchor(replica: record.replica ?? "", seq: record.seq, lineHash: prev, signature: checkpoint.signature,
                                       time: record.time, closing: checkpoint.closing))
        }
        bytes += line
        bytes.append(UInt8(ascii: "\n"))
    }

    /// A v2 checkpoint: the record is written with an empty signature, hashed, and the signature over
    /// `AuditChain.checkpointMessageV2` (which includes that hash) put in its place.
    private func checkpoint(_ signer: any AuditSigner, seq: UInt64, prev: String, closing: Bool) throws -> AuditRecord {
        let time = AuditTime.now()
        var record = AuditRecord(seq: seq, time: time, prev: prev,
                                 event: AuditEvent(.checkpoint, closing ? "close" : "checkpoint", result: .ok), replica: configuration.replica)
        let keyID = signer.keyID
        record.checkpoint = .init(signature: "", keyID: keyID, closing: closing, records: seq)
        let unsignedHash = Hex.encode(SHA256.hash(data: record.jsonLine))
        let message = AuditChain.checkpointMessageV2(seq: seq, prev: prev, unsignedLineHash: unsignedHash, closing: closing,
                                                     records: seq, keyID: keyID, time: time)
        record.checkpoint?.signature = Data(try signer.sign(digest: SHA256.hash(data: message))).base64EncodedString()
        return record
    }


    /// Size rotation: a closing checkpoint ends the file, which is renamed `<path>.<seq>`; the new file starts with a
    /// `file_start` record that continues the chain and names the file before it.
    private func rotateFile() {
        copies = []
        anchors = []
        do {
            var bytes: [UInt8] = []
            var seq = self.seq
            var prev = self.prev
            if let signer = configuration.signer {
                append(try checkpoint(signer, seq: seq + 1, prev: prev, closing: true), to: &bytes, seq: &seq, prev: &prev)
                try file.appendDurably(bytes)
                self.seq = seq
                self.prev = prev
                sinceCheckpoint = 0
                lastCheckpointAt = Date()
                forwardCopies()
            }
            let archived = configuration.path + "." + String(format: "%012llu", seq)
            try file.archive(as: archived)
            bytes = []
            append(AuditRecord(seq: seq + 1, time: AuditTime.now(), prev: prev,
                               event: AuditEvent(.fileStart, "rotate", result: .ok, detail: URL(fileURLWithPath: archived).lastPathComponent),
                               replica: configuration.replica),
                   to: &bytes, seq: &seq, prev: &prev)
            try file.appendDurably(bytes)
            self.seq = seq
            self.prev = prev
            forwardCopies()
            logger.notice("audit log rotated", metadata: ["archived": "\(archived)"])
            if let keep = configuration.keepFiles { pruneRotatedFiles(keeping: keep) }
        } catch {
            file.close()
            logger.error("audit log rotation failed; the next write retries", metadata: ["error": "\(error)"])
            onFailure("\(error)")
        }
    }

    /// Deletes the oldest rotated files (`<path>.<12-digit seq>`) beyond `keep`. Their names sort by seq.
    private func pruneRotatedFiles(keeping keep: Int) {
        let url = URL(fileURLWithPath: configuration.path)
        let directory = url.deletingLastPathComponent().path
        let prefix = url.lastPathComponent + "."
        let rotated = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { name in
            let suffix = name.dropFirst(prefix.count)
            return name.hasPrefix(prefix) && suffix.count == 12 && suffix.allSatisfy(\.isASCII) && suffix.allSatisfy(\.isNumber)
        }.sorted()
        for name in rotated.dropLast(keep) {
            let path = directory + "/" + name
            if unlink(path) == 0 {
                logger.notice("rotated audit file deleted (audit.keep_files)", metadata: ["file": "\(path)"])
            } else {
                logger.warning("cannot delete a rotated audit file", metadata: ["file": "\(path)", "error": "\(String(cString: strerror(errno)))"])
            }
        }
    }

    /// The closing checkpoint, then the file is closed and `close()` returns.
    private func finish() {
        copies = []
        anchors = []
        var ready = file.isOpen
        // A closed file is reopened only for the closing checkpoint; without a signer there is nothing to write.
        if !ready, configuration.signer != nil {
            do {
                adopt(try file.ensureOpen())
                ready = true
            } catch {
                logger.error("audit log cannot be opened for its closing checkpoint", metadata: ["error": "\(error)"])
            }
        }
        if let signer = configuration.signer, ready {
            var bytes: [UInt8] = []
            var seq = self.seq
            var prev = self.prev
            if let record = try? checkpoint(signer, seq: seq + 1, prev: prev, closing: true) {
                append(record, to: &bytes, seq: &seq, prev: &prev)
                if (try? file.appendDurably(bytes)) != nil {
                    self.seq = seq
                    self.prev = prev
                    forwardCopies()
                }
            }
        }
        file.close()
        core.state.withLock { $0.closed = true }
        core.finished.signal()
    }
}
