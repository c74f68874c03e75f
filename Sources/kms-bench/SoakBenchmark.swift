import ArgumentParser
import Foundation
import KMSTestSupport

/// `kms-bench soak`: kmsd (with audit) under load from `kms-load` for a while — a closed loop, or with `--open-loop`
/// a constant rate at half its measured capacity; reports errors, resident memory over time (its drift after the
/// first interval), open file descriptors and HSM sessions.
struct SoakBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "soak", abstract: "Constant load; errors, RSS drift, fds, sessions.")

    @Option(help: "Minutes of load.") var minutes: Double = 10
    @Option(help: "Connections.") var connections: Int = 4
    @Flag(help: "An open loop at half the capacity measured first, instead of a closed loop.") var openLoop = false
    @Option(help: "Seconds between samples.") var sampleEvery: Double = 10
    @Option(help: "The kmsd executable (default: next to kms-bench).") var kmsd: String?
    @Option(help: "kmsd's HSM session pool size.") var sessions: Int = 8

    func validate() throws {
        guard minutes > 0, connections >= 1, sampleEvery > 0, sessions >= 1 else { throw ValidationError("all values must be positive") }
    }

    struct Sample {
        let at: Double
        let rssMB: Double
        let openFiles: Int
        let sessionsOpen: String
        let ok: Int
        let errors: Int
    }

    func run() async throws {
        let setup = try BenchSetup(kmsd: kmsd, sessions: sessions)
        defer { setup.remove() }
        let kmsd = try await setup.start(audit: true, name: "soak", pool: connections)
        do {
            let context = #"{"context":{"cluster":"soak"}}"#
            let path = "/v1/keys/bench/datakey"
            var rate: Double?
            if openLoop {
                let capacity = try LeanLoad.run(kmsd, setup, path: path, body: context, connections: connections, seconds: 3).requestsPerSecond
                rate = capacity / 2
                print("soak: capacity \(String(format: "%.0f", capacity)) datakey/s at \(connections) connections; holding \(String(format: "%.0f", capacity / 2))/s for \(minutes) min")
            } else {
                print("soak: a closed loop of datakey requests on \(connections) connections for \(minutes) min")
            }
            var samples: [Sample] = []
            func sample(_ at: Double, _ ok: Int, _ errors: Int) async {
                let (_, body) = (try? await kmsd.get(kmsd.admin, "/v1/admin/status")) ?? (0, Data())
                let providers = (try? JSONSerialization.jsonObject(with: body) as? [String: Any])?["providers"] as? [[String: Any]]
                let open = (providers?.first?["details"] as? [String: Any])?["sessions_open"] as? String ?? "?"
                samples.append(Sample(at: at, rssMB: kmsd.rssMegabytes, openFiles: kmsd.openFiles, sessionsOpen: open, ok: ok, errors: errors))
            }
            await sample(0, 0, 0)
            let total = Int((minutes * 60 / sampleEvery).rounded(.up))
            var ok = 0
            var errors = 0
            var worst = 0.0
            for index in 1...total {
                let slice = min(sampleEvery, minutes * 60 - Double(index - 1) * sampleEvery)
                let result = try LeanLoad.run(kmsd, setup, path: path, body: context, connections: connections, seconds: slice, rate: rate)
                let failed = result.errors + result.failedStatuses
                ok += result.requests - result.failedStatuses
                errors += failed
                let p99 = (result.latencyMicros["p99"] ?? 0) / 1000
                worst = max(worst, p99)
                await sample(Double(index) * sampleEvery, ok, errors)
                let last = samples[samples.count - 1]
                print(String(format: "  t=%5.0fs  ok=%8d errors=%d  rss=%.1f MB  fds=%d  sessions=%@  p99=%.2f ms",
                             last.at, ok, errors, last.rssMB, last.openFiles, last.sessionsOpen, p99))
            }
            let first = samples[1 < samples.count ? 1 : 0]
            let last = samples[samples.count - 1]
            let drift = first.rssMB > 0 ? (last.rssMB - first.rssMB) / first.rssMB * 100 : 0
            let fds = Set(samples.dropFirst().map(\.openFiles))
            // The pool opens sessions as demand needs them, up to its size; it must not keep growing, so the second
            // half of the run holds one count.
            let sessionCounts = Set(samples.dropFirst().map(\.sessionsOpen))
            let lateSessionCounts = Set(samples.suffix(max(1, samples.count / 2)).map(\.sessionsOpen))
            let withinPool = sessionCounts.allSatisfy { Int($0).map { $0 <= sessions } ?? false }
            print("")
            print("errors: \(errors) of \(ok + errors) requests" + (errors == 0 ? " ✅" : " ❌"))
            print(String(format: "RSS after the first interval %.1f MB, at the end %.1f MB: drift %+.1f%%", first.rssMB, last.rssMB, drift)
                + (abs(drift) < 10 ? " ✅" : " ❌"))
            print("open files over the run: \(fds.sorted().map(String.init).joined(separator: ", "))" + (fds.count <= 2 ? " ✅" : " ❌"))
            print("HSM sessions open over the run: \(sessionCounts.sorted().joined(separator: ", ")) (pool size \(sessions)), over its second half: "
                + lateSessionCounts.sorted().joined(separator: ", ") + (withinPool && lateSessionCounts.count == 1 ? " ✅" : " ❌"))
            print(String(format: "worst interval p99: %.2f ms", worst))
        } catch {
            await kmsd.stop()
            throw error
        }
        await kmsd.stop()
    }
}
