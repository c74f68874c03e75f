import Foundation
import KMSTestSupport

/// Load from `kms-load` (the lean generator next to kms-bench: raw NIO, one thread), with kmsd's own cost read from
/// /proc around it: CPU time (utime + stime of every thread) and context switches (every thread), each divided by the
/// requests answered. The client runs in its own process, so none of its work is counted as kmsd's.
struct LeanLoad {
    struct Outcome {
        let requests: Int
        let requestsPerSecond: Double
        let errors: Int
        /// Answers other than 2xx.
        let failedStatuses: Int
        let latencyMicros: [String: Double]
        let cpuMicrosPerRequest: Double
        let contextSwitchesPerRequest: Double
    }

    /// A closed loop on `connections` for `seconds`, or an open loop at `rate` requests per second when given.
    /// `port` defaults to kmsd's API port (the transit listener's for transit paths).
    static func run(_ kmsd: LaunchedKMSD, _ setup: BenchSetup, path: String, body: String, connections: Int, seconds: Double,
                    rate: Double? = nil, port: Int? = nil) throws -> Outcome
    {
        let bodyFile = setup.directory.appendingPathComponent("load-body-\(UUID().uuidString).json")
        try Data(body.utf8).write(to: bodyFile)
        defer { try? FileManager.default.removeItem(at: bodyFile) }
        let executable = URL(fileURLWithPath: setup.executable).deletingLastPathComponent().appendingPathComponent("kms-load")
        let arguments = [
            "--port", "\(port ?? kmsd.port)", "--ca", setup.path("ca.pem"), "--cert", setup.path("node.pem"), "--key", setup.path("node-key.pem"),
            "--connections", "\(connections)", "--seconds", "\(seconds)", "--path", path, "--body-file", bodyFile.path,
        ] + (rate.map { ["--rate", "\($0)"] } ?? [])
        let pid = kmsd.process.processIdentifier
        let before = ProcessUsage(pid: pid)
        let output = try run(executable, arguments)
        let after = ProcessUsage(pid: pid)
        guard let report = (try? JSONSerialization.jsonObject(with: Data(output.utf8))) as? [String: Any],
              let requests = report["requests"] as? Int, let latency = report["latency_us"] as? [String: Double]
        else { throw FixtureError("kms-load printed no report: \(output.prefix(500))") }
        let statuses = report["statuses"] as? [String: Int] ?? [:]
        let divisor = Double(max(1, requests))
        return Outcome(
            requests: requests, requestsPerSecond: report["requests_per_second"] as? Double ?? 0, errors: report["errors"] as? Int ?? 0,
            failedStatuses: statuses.filter { !$0.key.hasPrefix("2") }.values.reduce(0, +), latencyMicros: latency,
            cpuMicrosPerRequest: (after.cpuSeconds - before.cpuSeconds) * 1_000_000 / divisor,
            contextSwitchesPerRequest: Double(after.contextSwitches - before.contextSwitches) / divisor)
    }

    /// Runs `executable` and returns its standard output; its standard error goes to ours.
    private static func run(_ executable: URL, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw FixtureError("kms-load exited with \(process.terminationStatus): \(String(decoding: data, as: UTF8.self).prefix(500))")
        }
        return String(decoding: data, as: UTF8.self)
    }
}

/// A process's CPU time so far (every thread, living or ended) and its threads' context switches (living threads).
struct ProcessUsage {
    let cpuSeconds: Double
    let contextSwitches: Int

    init(pid: Int32) {
        // /proc/<pid>/stat: fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        let fields = stat.split(separator: ")").last.map { $0.split(separator: " ") } ?? []
        let ticks = fields.count > 12 ? (Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0) : 0
        cpuSeconds = ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
        var switches = 0
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        for task in tasks {
            let status = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/status", encoding: .utf8)) ?? ""
            for line in status.split(separator: "\n") where line.contains("ctxt_switches:") {
                switches += Int(line.split(separator: "\t").last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "") ?? 0
            }
        }
        contextSwitches = switches
    }
}
