public import Foundation
import KMSCore
public import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Where kmsd's log lines go: a thread of its own writes them to standard error, so a log call never blocks its
/// caller — requests run on the event loops, and a slow or stalled reader of standard error (a full pipe, a stuck
/// journald) must not stall a loop. The queue is bounded (`maxQueuedBytes`); lines beyond it are dropped and counted,
/// and the count is written as a line of its own once the writer catches up. `flush()` waits for the queue to drain
/// (at shutdown).
public final class LogOutput: @unchecked Sendable {
    // @unchecked: all mutable state is guarded by `condition`.
    public static let standardError = LogOutput(descriptor: 2)

    private let descriptor: Int32
    private let maxQueuedBytes: Int
    private let condition = NSCondition()
    private var queue: [[UInt8]] = []
    private var queuedBytes = 0
    private var dropped = 0
    private var writing = false

    init(descriptor: Int32, maxQueuedBytes: Int = 4 << 20) {
        self.descriptor = descriptor
        self.maxQueuedBytes = maxQueuedBytes
        NamedThread.start("kmsd-log") { [self] in run() }
    }

    /// Queues one line (with its newline); drops it when the queue is full.
    public func write(_ line: [UInt8]) {
        condition.lock()
        defer { condition.unlock() }
        guard queuedBytes + line.count <= maxQueuedBytes else {
            dropped += 1
            return
        }
        queue.append(line)
        queuedBytes += line.count
        condition.broadcast()
    }

    /// Returns once every line queued before the call was written (or `timeout` passed).
    public func flush(timeout: TimeInterval = 2) {
        let deadline = Date(timeIntervalSinceNow: timeout)
        condition.lock()
        while !queue.isEmpty || writing {
            guard condition.wait(until: deadline) else { break }
        }
        condition.unlock()
    }

    private func run() {
        while true {
            condition.lock()
            while queue.isEmpty && dropped == 0 { condition.wait() }
            let lines = queue
            let lost = dropped
            queue = []
            queuedBytes = 0
            dropped = 0
            writing = true
            condition.unlock()
            // One write for the whole batch.
            var batch: [UInt8] = lost > 0 ? Array("kmsd: \(lost) log line(s) dropped: standard error could not keep up\n".utf8) : []
            for line in lines { batch += line }
            put(batch)
            condition.lock()
            writing = false
            condition.broadcast()
            condition.unlock()
        }
    }

    private func put(_ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { buffer in
                Glibc.write(descriptor, buffer.baseAddress.map { $0 + offset }, buffer.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN {
                    // A non-blocking standard error that is full: wait until it takes more (without spinning).
                    var ready = pollfd(fd: descriptor, events: Int16(POLLOUT), revents: 0)
                    _ = poll(&ready, 1, 100)
                    continue
                }
                return  // standard error is gone: nothing to tell
            }
            offset += written
        }
    }
}

/// `StreamLogHandler` writes its lines through `LogOutput` (its whole line in one `write`).
extension LogOutput: TextOutputStream {
    public func write(_ string: String) { write(Array(string.utf8)) }
}

/// kmsd's log handlers, writing through `LogOutput`. kmsd never puts secrets in log metadata.
/// - `log_format: text`: swift-log's own `StreamLogHandler` line (`<time> <level> <label>: <metadata> [<source>]
///   <message>`);
/// - `log_format: json`: one JSON object per line — `time`, `level`, `label`, `message`, `source` and the metadata as
///   strings.
public enum KMSDLogging {
    public enum Format: String, Sendable {
        case text
        case json
    }

    public static func handler(label: String, level: Logger.Level, format: Format, output: LogOutput = .standardError) -> any LogHandler {
        var handler: any LogHandler = switch format {
        case .text: StreamLogHandler(label: label, stream: output)
        case .json: JSONLineLogHandler(label: label, output: output)
        }
        handler.logLevel = level
        return handler
    }
}

/// One JSON object per log line.
struct JSONLineLogHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info
    let label: String
    let output: LogOutput

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = metadata
        if let explicit = event.metadata { merged.merge(explicit) { $1 } }
        let line: JSONValue = [
            "time": .string(Date().formatted(.iso8601.time(includingFractionalSeconds: true).year().month().day().dateSeparator(.dash))),
            "level": .string(event.level.rawValue), "label": .string(label), "message": .string("\(event.message)"),
            "source": .string(event.source), "metadata": .object(merged.mapValues { .string("\($0)") }),
        ]
        output.write(line.serialized() + [0x0A])
    }
}
