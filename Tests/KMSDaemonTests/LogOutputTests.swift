import Foundation
@testable import KMSDaemon
import Logging
import Synchronization
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("Log output")
struct LogOutputTests {
    /// Lines arrive whole and in order; a reader that does not read holds up no caller: lines beyond the bound are
    /// dropped, and their number is written once the reader catches up. The text line is swift-log's format. Also
    /// with a non-blocking standard error, which refuses writes while full instead of blocking the writer.
    @Test(arguments: [false, true])
    func linesArriveInOrderAndAStalledReaderCostsLinesNotCallers(nonBlocking: Bool) throws {
        var ends: [Int32] = [0, 0]
        try #require(pipe(&ends) == 0)
        if nonBlocking { try #require(fcntl(ends[1], F_SETFL, O_NONBLOCK) == 0) }
        defer { close(ends[0]) }
        let output = LogOutput(descriptor: ends[1], maxQueuedBytes: 200_000)
        let handler = KMSDLogging.handler(label: "kmsd.test", level: .info, format: .text, output: output)
        var logger = Logger(label: "kmsd.test") { _ in handler }
        logger.logLevel = .info
        // Nobody reads yet: the pipe (64 KiB) fills, the writer blocks, and the queue fills behind it.
        let started = ContinuousClock.now
        for index in 0..<5_000 {
            logger.warning("line \(index)", metadata: ["b": "2", "a": "1"])
        }
        #expect(ContinuousClock.now - started < .seconds(2), "a caller waited for the reader")
        // Read everything on another thread: the writer drains its queue and reports what it dropped; once flushed,
        // the write end is closed and the reader sees the end.
        let readEnd = ends[0]
        let received = Mutex<Data?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread {
            let data = FileHandle(fileDescriptor: readEnd, closeOnDealloc: false).readDataToEndOfFile()
            received.withLock { $0 = data }
            done.signal()
        }.start()
        output.flush(timeout: 10)
        close(ends[1])
        #expect(done.wait(timeout: .now() + 10) == .success)
        let text = String(decoding: received.withLock { $0 } ?? Data(), as: UTF8.self)
        let lines = text.split(separator: "\n")
        let logged = lines.filter { $0.contains("[KMSDaemonTests] line ") }
        #expect(logged.count > 1_000 && logged.count < 5_000, "\(logged.count) lines")
        #expect(logged.first?.hasSuffix("warning kmsd.test: a=1 b=2 [KMSDaemonTests] line 0") == true, "\(logged.first ?? "")")
        let numbers = logged.compactMap { Int($0.split(separator: " ").last ?? "") }
        #expect(numbers == numbers.sorted() && Set(numbers).count == numbers.count)
        let reports = lines.filter { $0.contains("log line(s) dropped") }
        let dropped = reports.map { Int($0.split(separator: " ")[1]) ?? -1 }.reduce(0, +)
        #expect(!reports.isEmpty)
        #expect(dropped == 5_000 - logged.count, "\(reports); \(logged.count) lines arrived")
    }
}
