import Foundation
import KMSCore
@testable import KMSProviderPKCS11
import KMSTestSupport
import PKCS11
import Testing

@Suite("Session pool on SoftHSM")
struct SessionPoolTests {
    let token: SoftHSMToken

    init() throws {
        token = try SoftHSMToken.create()
    }

    @Test func stressThroughAPoolOfFour() async throws {
        try await withProvider(on: token, sessions: 4) { provider in
            _ = try await provider.createKey(orders)
            // Warm up, then note how many sessions exist: steady state must open none.
            _ = try await provider.generateDataKey(orders, context: .empty)
            let tasks = 32
            let rounds = 500
            let failures = try await withThrowingTaskGroup(of: Int.self) { group in
                for task in 0..<tasks {
                    group.addTask {
                        var failures = 0
                        for round in 0..<rounds {
                            let context: EncryptionContext = ["task": "\(task)", "round": "\(round)"]
                            let dataKey = try await provider.generateDataKey(orders, context: context)
                            let unwrapped = try await provider.unwrap(orders, wrapped: dataKey.wrapped, context: context)
                            if unwrapped.plaintext != dataKey.plaintext { failures += 1 }
                        }
                        return failures
                    }
                }
                return try await group.reduce(0, +)
            }
            #expect(failures == 0)
            let stats = provider.poolStatistics
            #expect(stats.highWaterMark <= 4, "pool grew to \(stats.highWaterMark) sessions")
            #expect(stats.sessionsOpened <= 4, "opened \(stats.sessionsOpened) sessions for \(tasks * rounds * 2) operations")
            #expect(stats.sessionsDiscarded == 0 && stats.deadlineOverruns == 0 && stats.checkoutTimeouts == 0)
        }
    }

    /// The checkout wait on a manual clock: a caller of an exhausted pool waits exactly until the wait has passed,
    /// not a moment less, and then gets `unavailable`.
    @Test func exhaustedPoolFailsAtTheEndOfTheCheckoutWait() async throws {
        let clock = ManualPoolClock()
        try await withProvider(on: token, sessions: 2, checkoutWait: .milliseconds(300), callTimeout: .seconds(10), clock: clock) { provider in
            _ = try await provider.createKey(orders)
            let holding = Holder()
            // Hold both sessions in calls that block until released.
            let holders = (0..<2).map { _ in
                Task { try await provider.pool.withSession { _ in holding.block() } }
            }
            while holding.blocked < 2 { try await Task.sleep(for: .milliseconds(10)) }
            let waiting = Task { await errorCode { _ = try await provider.generateDataKey(orders, context: .empty) } }
            while clock.sleeperCount < 1 { try await Task.sleep(for: .milliseconds(5)) }
            clock.advance(by: .milliseconds(299))
            #expect(provider.poolStatistics.waiters == 1, "gave up before the checkout wait passed")
            clock.advance(by: .milliseconds(1))
            #expect(await waiting.value == .unavailable)
            #expect(provider.poolStatistics.checkoutTimeouts == 1 && provider.poolStatistics.waiters == 0)
            holding.release()
            for holder in holders { _ = try await holder.value }
            // Free again: requests succeed.
            _ = try await provider.generateDataKey(orders, context: .empty)
        }
    }

    /// The audit writer's path: a thread that may block leases through the same pool, waits its turn for a session,
    /// gives up at the checkout wait, and logs in again after every session was closed, without any task.
    @Test func aBlockingCallerWaitsItsTurnTimesOutAndRecoversLikeAnyOther() async throws {
        let clock = ManualPoolClock()
        try await withProvider(on: token, sessions: 1, checkoutWait: .milliseconds(300), callTimeout: .seconds(10), clock: clock) { provider in
            _ = try await provider.createKey(orders)
            let pool = provider.pool
            func onThread<T: Sendable>(_ body: @escaping @Sendable () -> T) async -> T {
                await withCheckedContinuation { continuation in Thread { continuation.resume(returning: body()) }.start() }
            }
            // The only session is busy until released; the blocking caller waits for it, then gets it.
            let first = Holder()
            let holder = Task { try await pool.withSession { _ in first.block() } }
            while first.blocked < 1 { try await Task.sleep(for: .milliseconds(10)) }
            let waiter = Task { await onThread { Result { try pool.withSessionBlocking { try $0.info().isUserLoggedIn } } } }
            while provider.poolStatistics.waiters < 1 { try await Task.sleep(for: .milliseconds(5)) }
            first.release()
            #expect(try await waiter.value.get())
            try await holder.value

            // Busy for longer than the checkout wait: the blocking caller gets `unavailable` at the wait's end.
            let second = Holder()
            let longHolder = Task { try await pool.withSession { _ in second.block() } }
            while second.blocked < 1 { try await Task.sleep(for: .milliseconds(10)) }
            let blocked = Task { await onThread { Result { try pool.withSessionBlocking { _ in true } } } }
            while provider.poolStatistics.waiters < 1 { try await Task.sleep(for: .milliseconds(5)) }
            clock.advance(by: .milliseconds(299))
            try await Task.sleep(for: .milliseconds(50))
            #expect(provider.poolStatistics.waiters == 1, "gave up before the checkout wait passed")
            clock.advance(by: .milliseconds(1))
            await #expect(throws: KMSError.self) { try await blocked.value.get() }
            #expect(provider.poolStatistics.checkoutTimeouts == 1)
            second.release()
            try await longHolder.value

            // Every session of the application closed: the blocking caller logs in again and succeeds.
            try token.module.closeAllSessions(token.slot)
            let recovered = await onThread { Result { try pool.withSessionBlocking { try $0.info().isUserLoggedIn } } }
            #expect(try recovered.get())
            #expect(provider.poolStatistics.relogins >= 1)
        }
    }

    @Test func reloginAfterEverySessionWasClosedUnderThePool() async throws {
        try await withProvider(on: token, sessions: 4) { provider in
            _ = try await provider.createKey(orders)
            let before = try await provider.generateDataKey(orders, context: ["k": "v"])
            // Several idle sessions exist; then every session of the application, anchor included, is closed, which
            // also ends the login.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<8 { group.addTask { _ = try await provider.generateDataKey(orders, context: .empty) } }
                try await group.waitForAll()
            }
            try token.module.closeAllSessions(token.slot)
            let check = try token.module.openSession(token.slot)
            #expect(try !check.info().isUserLoggedIn)
            try check.close()

            let unwrapped = try await provider.unwrap(orders, wrapped: before.wrapped, context: ["k": "v"])
            #expect(unwrapped.plaintext == before.plaintext)
            _ = try await provider.generateDataKey(orders, context: .empty)
            let stats = provider.poolStatistics
            #expect(stats.relogins >= 1)
            #expect(stats.sessionsDiscarded >= 1)
        }
    }

    @Test func aCallPastItsDeadlineReturnsUnavailableAndItsSessionIsWrittenOff() async throws {
        try await withProvider(on: token, sessions: 2, callTimeout: .milliseconds(200)) { provider in
            _ = try await provider.createKey(orders)
            let stuck = Holder()
            let start = ContinuousClock.now
            let code = await errorCode {
                _ = try await provider.pool.withSession { session in
                    stuck.block()
                    return try session.info().isUserLoggedIn
                }
            }
            let waited = ContinuousClock.now - start
            #expect(code == .unavailable)
            #expect(waited >= .milliseconds(200) && waited < .milliseconds(600), "waited \(waited)")
            #expect(provider.poolStatistics.lost == 1)
            #expect(provider.poolStatistics.stuckCalls == 1)
            // The other session still serves.
            _ = try await provider.generateDataKey(orders, context: .empty)
            // When the stuck call returns, its session is closed and the capacity comes back.
            stuck.release()
            for _ in 0..<400 where provider.poolStatistics.lost > 0 { try await Task.sleep(for: .milliseconds(5)) }
            #expect(provider.poolStatistics.lost == 0)
            #expect(provider.poolStatistics.stuckCalls == 0)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<4 { group.addTask { _ = try await provider.generateDataKey(orders, context: .empty) } }
                try await group.waitForAll()
            }
        }
    }
}

/// Blocks HSM threads until released (to hold sessions in tests).
final class Holder: @unchecked Sendable {
    private let condition = NSCondition()
    private var released = false
    private var count = 0

    var blocked: Int {
        condition.lock()
        defer { condition.unlock() }
        return count
    }

    func block() {
        condition.lock()
        count += 1
        while !released { condition.wait() }
        condition.unlock()
    }

    func release() {
        condition.lock()
        released = true
        condition.broadcast()
        condition.unlock()
    }
}
