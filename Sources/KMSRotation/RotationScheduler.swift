import Foundation
import Logging
public import ServiceLifecycle

/// Runs the rotation manager: flushes usage counters every `flushInterval`, plans/rotates every `tickInterval`, reports
/// this replica to the store every `heartbeatInterval`, and
/// reads a key again as soon as another replica announces a change to it.
/// On shutdown it flushes once more, so a clean stop loses no counts and a crash at most one flush interval.
public struct RotationScheduler: Service {
    public let manager: RotationManager
    public let tickInterval: Duration
    public let flushInterval: Duration

    public let heartbeatInterval: Duration

    public init(_ manager: RotationManager, tickInterval: Duration = .seconds(30), flushInterval: Duration = .seconds(1),
                heartbeatInterval: Duration = .seconds(5)) {
        self.manager = manager
        self.tickInterval = tickInterval
        self.flushInterval = flushInterval
        self.heartbeatInterval = heartbeatInterval
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown { [manager, tickInterval, flushInterval, heartbeatInterval] in
            await withTaskGroup(of: Void.self) { group in
                // Other replicas' rotations and retirements, as they announce them (PostgreSQL).
                group.addTask { await manager.followKeyChanges() }
                let clock = ContinuousClock()
                var nextTick = clock.now
                var nextHeartbeat = clock.now
                while !Task.isCancelled {
                    if clock.now >= nextHeartbeat {
                        await manager.heartbeat()
                        nextHeartbeat = clock.now.advanced(by: heartbeatInterval)
                    }
                    if clock.now >= nextTick {
                        await manager.tick()
                        nextTick = clock.now.advanced(by: tickInterval)
                    }
                    await manager.flush()
                    try? await Task.sleep(for: flushInterval)
                }
                group.cancelAll()
            }
        }
        // Not cancelled: the store refuses work from a cancelled task.
        await Task { [manager] in await manager.flush() }.value
    }
}
