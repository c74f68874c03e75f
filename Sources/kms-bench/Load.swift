import Foundation
import KMSCore

/// A closed loop in this process (each connection sends its next request when the last one answers): the limit of a
/// backend called directly, such as vault-dev's transit API. kmsd itself is driven by `kms-load` (`LeanLoad`).
enum Load {
    struct Result {
        var ok = 0
        var errors = 0
        var seconds = 0.0
        var opsPerSecond: Double { seconds > 0 ? Double(ok) / seconds : 0 }
    }

    /// Each of `connections` tasks calls `send` (which returns an HTTP status) again as soon as it returns.
    static func closedLoop(connections: Int, seconds: Double, _ send: @escaping @Sendable () async -> Int) async throws -> Result {
        // Warm-up: open the connections.
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<connections { group.addTask { _ = await send() } }
        }
        let start = ContinuousClock.now
        let end = start + .milliseconds(Int(seconds * 1000))
        var total = await withTaskGroup(of: Result.self) { group in
            for _ in 0..<connections {
                group.addTask {
                    var result = Result()
                    while ContinuousClock.now < end {
                        if await send() == 200 { result.ok += 1 } else { result.errors += 1 }
                    }
                    return result
                }
            }
            var total = Result()
            for await result in group {
                total.ok += result.ok
                total.errors += result.errors
            }
            return total
        }
        total.seconds = (ContinuousClock.now - start).seconds
        return total
    }
}
