import Foundation
import Logging
public import ServiceLifecycle

/// Runs the rotation manager: flushes usage counters every `flushInterval`, plans/rotates every `tickInterval`, and
/// reads a key again as soon as another replica announces a change to it.
/// On shutdown it flushes once more, so a clean stop loses no counts and a crash at most one flush interval.
public struct RotationScheduler: Service {
    public let manager: RotationManager
    public let tickInterval: Duration
    public let flushInterval: Duration

    public init(_ manager: RotationManager, tickInterval: Duration = .seconds(30), flushInterval: Duration = .seconds(1)) {
        self.manager = manager
        self.tickInterval = tickInterval
        self.flushInterval = flushInterval
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown { [manager, tickInterval, flushInterval] in
            await withTaskGroup(of: Void.self) { group in
                // Other replicas' rotations and retirements, as they announce them (PostgreSQL).
                group.addTask { await manager.followKeyChanges() }
                let clock = ContinuousClock()
                var nextTick = clock.now
                while !Task.isCancelled {
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
