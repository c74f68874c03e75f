import Crypto
public import Foundation
public import Logging
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The hash-chained JSON-lines audit log.
///
/// `record` returns once the event is durable (written and fsynced): callers answer their client only after it.
/// A dedicated thread commits in groups — every event queued while one fsync runs goes out with the next — so the
/// cost per event falls as load rises. Each line carries `prev`, the SHA-256 of the line before it; checkpoints
/// signed with an ECDSA P-256 key (`AuditSigner`) commit to the whole chain; size rotation continues the chain in the
/// next file. When the file cannot be written, `record` throws if `failClosed` (callers refuse the operation) or
/// logs and returns if not; either way the failure goes to `onFailure` (a security event).
public final class AuditLog: Sendable {
    public struct Configuration: Sendable {
        public var path: String
        /// Rotate the file when it reaches this size.
        public var maxFileBytes: Int
        /// Sign a checkpoint after this many records …
        public var checkpointEvery: Int
        /// … or this many seconds after the last one, whichever comes first (and on every rotation and close).
        public var checkpointInterval: TimeInterval
        public var failClosed: Bool
        public var signer: (any AuditSigner)?
        /// A best-effort copy of each durable record to syslog; the log starts it and shuts it down.
        public var syslog: SyslogForwarder?
        /// Records waiting for the writer, at most. Beyond it `record` throws at once (the caller refuses its operation:
        /// fail closed) and `submit` drops the event (both counted in `Statistics.refused`): memory stays bounded whatever
        /// the load or however slow the disk.
        public var maxQueue: Int
        /// Rotated files (`<path>.<seq>`) to keep, newest first; older ones are deleted after each rotation. nil keeps all.
        public var keepFiles: Int?

        public init(path: String, maxFileBytes: Int = 100 << 20, checkpointEvery: Int = 10_000, checkpointInterval: TimeInterval = 60,
                    failClosed: Bool, signer: (any AuditSigner)?, syslog: SyslogForwarder? = nil, maxQueue: Int = 10_000,
                    keepFiles: Int? = nil) {
            self.syslog = syslog
            self.maxQueue = maxQueue
            self.keepFiles = keepFiles
            self.path = path
            self.maxFileBytes = maxFileBytes
            self.checkpointEvery = checkpointEvery
            self.checkpointInterval = checkpointInterval
            self.failClosed = failClosed
            self.signer = signer
        }
    }

    public struct Statistics: Sendable {
        public var records: UInt64 = 0
        public var batches: UInt64 = 0
        public var largestBatch = 0
        public var lastFsyncSeconds: Double = 0
        public var totalFsyncSeconds: Double = 0
        public var failures: UInt64 = 0
        public var queueDepth = 0
        /// Events refused because the queue was full (`record` callers got an error; `submit`ted events were lost).
        public var refused: UInt64 = 0
        /// False from a failed write until the next successful one.
        public var writable = true
        public var lastError: String?
    }

    struct Pending {
        let event: AuditEvent
        let waiter: CheckedContinuation<Void, any Error>?
    }

    final class Core: Sendable {
        struct State {
            var queue: [Pending] = []
            var closing = false
            var closed = false
            var statistics = Statistics()
        }
        let state = Mutex(State())
        let wake = DispatchSemaphore(value: 0)
        let finished = DispatchSemaphore(value: 0)
    }

    public let configuration: Configuration
    private let core = Core()
    private let logger: Logger

    /// Opens (creating) the file, recovers the chain from its last line, writes the public key beside it
    /// (`<path>.pub.pem`), and starts the writer thread. Throws if the file cannot be opened now.
    public init(_ configuration: Configuration, logger: Logger = Logger(label: "kmsd.audit"),
                onFailure: @escaping @Sendable (String) -> Void = { _ in }) throws {
        self.configuration = configuration
        self.logger = logger
        let writer = try Writer(configuration, core: core, logger: logger, onFailure: onFailure)
        if let signer = configuration.signer {
            let publicKey = configuration.path + ".pub.pem"
            guard FileManager.default.createFile(atPath: publicKey, contents: Data(signer.publicKeyPEM.utf8),
                                                 attributes: [.posixPermissions: 0o644]) else {
                throw AuditError("cannot write the audit public key \(publicKey)")
            }
        }
        configuration.syslog?.start()
        let thread = Thread { writer.run() }
        thread.name = "kmsd-audit"
        thread.start()
    }

    /// Appends `event` and returns when it is durable. Throws `AuditError` when it could not be written and the log
    /// fails closed, or after `close`.
    public func record(_ event: AuditEvent) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            switch enqueue(Pending(event: event, waiter: continuation)) {
            case .queued: break
            case .closed: continuation.resume(throwing: AuditError("the audit log is closed"))
            case .full: continuation.resume(throwing: AuditError("the audit queue is full (\(configuration.maxQueue) records waiting)"))
            }
        }
    }

    /// Appends `event` without waiting (security events about requests that are refused anyway).
    public func submit(_ event: AuditEvent) {
        _ = enqueue(Pending(event: event, waiter: nil))
    }

    private enum Enqueued { case queued, closed, full }

    /// Queues for the writer thread, unless the log is closing or `maxQueue` events are already waiting.
    private func enqueue(_ pending: Pending) -> Enqueued {
        let outcome = core.state.withLock { state -> Enqueued in
            guard !state.closing else { return .closed }
            guard state.queue.count < configuration.maxQueue else {
                state.statistics.refused += 1
                return .full
            }
            state.queue.append(pending)
            state.statistics.queueDepth = state.queue.count
            return .queued
        }
        if outcome == .queued { core.wake.signal() }
        return outcome
    }

    public var statistics: Statistics { core.state.withLock { $0.statistics } }

    /// Writes what is queued and a closing checkpoint, then stops the writer. Later records are refused.
    public func close() async {
        let first = core.state.withLock { state in
            defer { state.closing = true }
            return !state.closing
        }
        guard first else { return }
        core.wake.signal()
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            DispatchQueue.global().async { [core] in
                core.finished.wait()
                continuation.resume()
            }
        }
        await configuration.syslog?.shutdown()
        let statistics = statistics
        logger.notice("audit log closed", metadata: [
            "records": "\(statistics.records)", "batches": "\(statistics.batches)", "largest_batch": "\(statistics.largestBatch)",
            "mean_fsync_ms": "\(statistics.batches > 0 ? statistics.totalFsyncSeconds / Double(statistics.batches) * 1000 : 0)",
            "write_failures": "\(statistics.failures)",
        ])
    }
}

/// The writer thread's state. Confined to that thread after `init` (hence `@unchecked Sendable`).
final class Writer: @unchecked Sendable {
    let configuration: AuditLog.Configuration
    let core: AuditLog.Core
    let logger: Logger
    let onFailure: @Sendable (String) -> Void
    private var fd: Int32 = -1
    private var seq: UInt64 = 0
    private var prev = AuditChain.genesis
    private var fileBytes = 0
    private var sinceCheckpoint = 0
    private var lastCheckpointAt = Date()

    init(_ configuration: AuditLog.Configuration, core: AuditLog.Core, logger: Logger, onFailure: @escaping @Sendable (String) -> Void) throws {
        self.configuration = configuration
        self.core = core
        self.logger = logger
        self.onFailure = onFailure
        let directory = URL(fileURLWithPath: configuration.path).deletingLastPathComponent().path
        try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try open()
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
        do {
            try ensureOpen()
            var seq = self.seq
            var prev = self.prev
            var bytes: [UInt8] = []
            for pending in batch {
                append(AuditRecord(seq: seq + 1, time: AuditTime.now(), prev: prev, event: pending.event), to: &bytes,
                       seq: &seq, prev: &prev)
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
            try write(bytes)
            let synced = ContinuousClock.now
            guard fsync(fd) == 0 else { throw AuditError("fsync of \(configuration.path) failed: \(String(cString: strerror(errno)))") }
            let fsyncSeconds = (ContinuousClock.now - synced).seconds
            self.seq = seq
            self.prev = prev
            fileBytes += bytes.count
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
            if fileBytes >= configuration.maxFileBytes { rotateFile() }
        } catch {
            closeFile()
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

    /// Sends the lines just made durable to syslog.
    private func forwardCopies() {
        if let syslog = configuration.syslog {
            for copy in copies { syslog.send(copy.line, type: copy.type, time: copy.time) }
        }
        copies = []
    }

    private func append(_ record: AuditRecord, to bytes: inout [UInt8], seq: inout UInt64, prev: inout String) {
        let line = record.jsonLine
        seq = record.seq
        prev = Self.hex(SHA256.hash(data: line))
        if configuration.syslog != nil { copies.append((line, record.event.kind.rawValue, record.time)) }
        bytes += line
        bytes.append(UInt8(ascii: "\n"))
    }

    /// A v2 checkpoint: the record is written with an empty signature, hashed, and the signature over
    /// `AuditChain.checkpointMessageV2` (which includes that hash) put in its place.
    private func checkpoint(_ signer: any AuditSigner, seq: UInt64, prev: String, closing: Bool) throws -> AuditRecord {
        let time = AuditTime.now()
        var record = AuditRecord(seq: seq, time: time, prev: prev,
                                 event: AuditEvent(.checkpoint, closing ? "close" : "checkpoint", result: .ok))
        let keyID = signer.keyID
        record.checkpoint = .init(signature: "", keyID: keyID, closing: closing, records: seq)
        let unsignedHash = Self.hex(SHA256.hash(data: record.jsonLine))
        let message = AuditChain.checkpointMessageV2(seq: seq, prev: prev, unsignedLineHash: unsignedHash, closing: closing,
                                                     records: seq, keyID: keyID, time: time)
        record.checkpoint?.signature = Data(try signer.sign(digest: SHA256.hash(data: message))).base64EncodedString()
        return record
    }

    static func hex(_ digest: SHA256Digest) -> String {
        var text = ""
        text.reserveCapacity(64)
        for byte in digest {
            text.append(Character(Unicode.Scalar(hexDigits[Int(byte >> 4)])))
            text.append(Character(Unicode.Scalar(hexDigits[Int(byte & 0xF)])))
        }
        return text
    }
    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    // MARK: - The file

    /// Opens the file for appending and recovers the chain from its last complete line. A torn last line (a crash in
    /// the middle of a write, never acknowledged) is cut off.
    private func open() throws {
        let descriptor = Glibc.open(configuration.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw AuditError("cannot open the audit log \(configuration.path): \(String(cString: strerror(errno)))")
        }
        do {
            try recover(descriptor)
        } catch {
            Glibc.close(descriptor)
            throw error
        }
        fd = descriptor
    }

    private func recover(_ descriptor: Int32) throws {
        guard let handle = FileHandle(forReadingAtPath: configuration.path) else {
            throw AuditError("cannot read the audit log \(configuration.path)")
        }
        defer { try? handle.close() }
        let size = Int(try handle.seekToEnd())
        fileBytes = size
        guard size > 0 else {
            return  // a new file continues the chain this process holds (genesis for the very first)
        }
        let start = max(0, size - 256 * 1024)
        try handle.seek(toOffset: UInt64(start))
        let tail = [UInt8](handle.readDataToEndOfFile())
        var end = tail.count
        if tail.last != UInt8(ascii: "\n") {
            guard let lastNewline = tail.lastIndex(of: UInt8(ascii: "\n")) else {
                throw AuditError("the audit log \(configuration.path) ends in a line longer than 256 KiB; refusing to guess where the chain ends")
            }
            end = lastNewline + 1
            guard ftruncate(descriptor, off_t(start + end)) == 0 else {
                throw AuditError("cannot cut the torn last line of \(configuration.path): \(String(cString: strerror(errno)))")
            }
            logger.warning("audit log ended in a torn line (a crash during a write); cut it off", metadata: ["file": "\(configuration.path)"])
            fileBytes = start + end
        }
        let body = tail[..<(end - 1)]
        let lineStart = body.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? body.startIndex
        guard start == 0 || lineStart > body.startIndex else {
            throw AuditError("the audit log \(configuration.path) ends in a line longer than 256 KiB")
        }
        let line = Array(body[lineStart...])
        guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
              let lastSeq = (object["seq"] as? NSNumber)?.uint64Value
        else {
            throw AuditError("the last line of the audit log \(configuration.path) is not an audit record; refusing to append to it")
        }
        seq = lastSeq
        prev = Self.hex(SHA256.hash(data: line))
    }

    /// Reopens when the file was moved or replaced (external log rotation) or after a failure.
    private func ensureOpen() throws {
        if fd >= 0 {
            var onDisk = stat()
            var open = stat()
            if stat(configuration.path, &onDisk) == 0, fstat(fd, &open) == 0, onDisk.st_ino == open.st_ino, onDisk.st_dev == open.st_dev {
                return
            }
            closeFile()
        }
        try self.open()
    }

    private func write(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { buffer -> Int in
                guard let base = buffer.baseAddress else { return 0 }
                return Glibc.write(fd, base.advanced(by: offset), buffer.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw AuditError("write to \(configuration.path) failed: \(String(cString: strerror(errno)))")
            }
            offset += written
        }
    }

    private func closeFile() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// Size rotation: a closing checkpoint ends the file, which is renamed `<path>.<seq>`; the new file starts with a
    /// `file_start` record that continues the chain and names the file before it.
    private func rotateFile() {
        copies = []
        do {
            var bytes: [UInt8] = []
            var seq = self.seq
            var prev = self.prev
            if let signer = configuration.signer {
                append(try checkpoint(signer, seq: seq + 1, prev: prev, closing: true), to: &bytes, seq: &seq, prev: &prev)
                try write(bytes)
                guard fsync(fd) == 0 else { throw AuditError("fsync failed: \(String(cString: strerror(errno)))") }
                self.seq = seq
                self.prev = prev
                sinceCheckpoint = 0
                lastCheckpointAt = Date()
                forwardCopies()
            }
            let archived = configuration.path + "." + String(format: "%012llu", seq)
            guard rename(configuration.path, archived) == 0 else {
                throw AuditError("cannot rename \(configuration.path): \(String(cString: strerror(errno)))")
            }
            closeFile()
            try open()
            bytes = []
            append(AuditRecord(seq: seq + 1, time: AuditTime.now(), prev: prev,
                               event: AuditEvent(.fileStart, "rotate", result: .ok, detail: URL(fileURLWithPath: archived).lastPathComponent)),
                   to: &bytes, seq: &seq, prev: &prev)
            try write(bytes)
            guard fsync(fd) == 0 else { throw AuditError("fsync failed: \(String(cString: strerror(errno)))") }
            self.seq = seq
            self.prev = prev
            fileBytes = bytes.count
            forwardCopies()
            logger.notice("audit log rotated", metadata: ["archived": "\(archived)"])
            if let keep = configuration.keepFiles { pruneRotatedFiles(keeping: keep) }
        } catch {
            closeFile()
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
        if let signer = configuration.signer, fd >= 0 || (try? ensureOpen()) != nil {
            var bytes: [UInt8] = []
            var seq = self.seq
            var prev = self.prev
            if let record = try? checkpoint(signer, seq: seq + 1, prev: prev, closing: true) {
                append(record, to: &bytes, seq: &seq, prev: &prev)
                if (try? write(bytes)) != nil, fsync(fd) == 0 {
                    self.seq = seq
                    self.prev = prev
                    forwardCopies()
                }
            }
        }
        closeFile()
        core.state.withLock { $0.closed = true }
        core.finished.signal()
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
