import AsyncHTTPClient
import Foundation
import Histogram

/// Load against a running kmsd: closed loop (each connection sends its next request when the last one answers) or
/// open loop at a fixed rate, with latencies in an HdrHistogram (microseconds).
enum Load {
    struct Result {
        var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .three)
        var ok = 0
        var errors = 0
        var seconds = 0.0
        var opsPerSecond: Double { seconds > 0 ? Double(ok) / seconds : 0 }
        func percentile(_ value: Double) -> Double { Double(histogram.valueAtPercentile(value)) / 1000 }
        var maxMs: Double { Double(histogram.max) / 1000 }

        mutating func merge(_ other: Result) {
            histogram.add(other.histogram)
            ok += other.ok
            errors += other.errors
        }
    }

    static func closedLoop(_ kmsd: LaunchedKMSD, _ path: String, _ body: String, connections: Int, seconds: Double) async throws -> Result {
        try await closedLoop(connections: connections, seconds: seconds) { (try? await kmsd.post(kmsd.node, path, body).0) ?? 0 }
    }

    /// Each of `connections` tasks calls `send` (which returns an HTTP status) again as soon as it returns.
    static func closedLoop(connections: Int, seconds: Double, _ send: @escaping @Sendable () async -> Int) async throws -> Result {
        // Warm-up: open the connections.
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<connections { group.addTask { _ = await send() } }
        }
        let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        return await workers(connections) { _ in
            var result = Result()
            while ContinuousClock.now < end { await once(send, into: &result) }
            return result
        }
    }

    /// Runs `count` workers concurrently and merges their results; `seconds` is the wall time they took.
    private static func workers(_ count: Int, _ body: @escaping @Sendable (Int) async -> Result) async -> Result {
        let start = ContinuousClock.now
        var total = await withTaskGroup(of: Result.self) { group in
            for worker in 0..<count { group.addTask { await body(worker) } }
            var total = Result()
            for await result in group { total.merge(result) }
            return total
        }
        total.seconds = (ContinuousClock.now - start).seconds
        return total
    }

    /// `rate` requests per second spread over `connections` workers, each sending on its own schedule; a worker that
    /// falls behind sends at once (latency then includes the wait, so overload shows).
    static func openLoop(_ kmsd: LaunchedKMSD, _ path: String, _ body: String, connections: Int, rate: Double, seconds: Double) async -> Result {
        let interval = Duration.seconds(Double(connections) / rate)
        let start = ContinuousClock.now
        let end = start + .milliseconds(Int(seconds * 1000))
        return await workers(connections) { worker in
            var result = Result()
            var next = start + interval * (Double(worker) / Double(connections))
            while next < end {
                if next > ContinuousClock.now { try? await Task.sleep(until: next, clock: .continuous) }
                await once({ (try? await kmsd.post(kmsd.node, path, body).0) ?? 0 }, into: &result)
                next += interval
            }
            return result
        }
    }

    private static func once(_ send: () async -> Int, into result: inout Result) async {
        let began = ContinuousClock.now
        let status = await send()
        _ = result.histogram.record(UInt64(max(1, (ContinuousClock.now - began).seconds * 1_000_000)))
        if status == 200 { result.ok += 1 } else { result.errors += 1 }
    }
}
