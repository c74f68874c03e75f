public import Foundation
public import KMSCore
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
        /// The replica whose chain this is, written into every record (replicas sharing a PostgreSQL state store).
        public var replica: String?
        /// Each checkpoint once it is durable, for anchoring it outside the file (the state store); called on the
        /// writer thread, so it must not block.
        public var onCheckpoint: (@Sendable (AuditAnchor) -> Void)?

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
        NamedThread.start("kmsd-audit") { writer.run() }
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
