import Foundation
@testable import KMSProviderPKCS11
import Synchronization
import Testing

/// The executor and its threads, without an HSM: blocking bodies stand in for PKCS#11 calls.
@Suite("HSM executor")
struct HSMExecutorTests {
    @Test func runsEveryCallOnItsOwnThreadsAndReturnsEachResult() async throws {
        let executor = HSMExecutor(threads: 3)
        let results = try await withThrowingTaskGroup(of: (Int, Int, String).self) { group in
            for index in 0..<2_000 {
                group.addTask {
                    let (value, thread) = try await executor.run(timeout: .seconds(5)) {
                        (index * 7, currentThreadName())
                    }
                    return (index, value, thread)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        await executor.shutdown()
        #expect(results.count == 2_000)
        #expect(results.allSatisfy { $0.1 == $0.0 * 7 })
        let threads = Set(results.map(\.2))
        #expect(threads.allSatisfy { $0.hasPrefix("kmsd-hsm-") }, "\(threads)")
        #expect(threads.count <= 3)
    }

    @Test func aCallPastItsDeadlineReturnsAtOnceAndReportsItsLateEnd() async throws {
        let executor = HSMExecutor(threads: 2)
        let release = Mutex(false)
        let lateResult = Mutex<Result<Int, any Error>?>(nil)
        let ended = Mutex(false)
        let start = ContinuousClock.now
        await #expect(throws: HSMDeadlineExceeded.self) {
            try await executor.run(timeout: .milliseconds(50), whenOverrunEnds: { result in
                lateResult.withLock { $0 = result }
                ended.withLock { $0 = true }
            }) {
                while !release.withLock({ $0 }) { usleep(1_000) }
                return 42
            }
        }
        #expect(ContinuousClock.now - start < .seconds(2))
        #expect(executor.stuckCalls == 1)
        // The other thread still serves calls while one is stuck.
        #expect(try await executor.run(timeout: .seconds(5)) { 7 } == 7)
        release.withLock { $0 = true }
        for _ in 0..<500 where !ended.withLock({ $0 }) { try await Task.sleep(for: .milliseconds(5)) }
        #expect(ended.withLock { $0 })
        #expect(try lateResult.withLock { try $0?.get() } == 42)
        #expect(executor.stuckCalls == 0)
        await executor.shutdown()
    }

    @Test func aBlockingCallerGetsTheResultOrTheDeadlineOnItsOwnThread() async throws {
        let executor = HSMExecutor(threads: 1)
        let release = Mutex(false)
        let outcome = await withCheckedContinuation { (continuation: CheckedContinuation<(Int?, Bool, Int?), Never>) in
            // A thread of its own, as the audit writer has; no task waits for the result.
            Thread {
                let value = try? executor.runBlocking(timeout: .seconds(5)) { 6 * 7 }
                let start = ContinuousClock.now
                var timedOut = false
                do {
                    _ = try executor.runBlocking(timeout: .milliseconds(50)) {
                        while !release.withLock({ $0 }) { usleep(1_000) }
                        return 1
                    }
                } catch is HSMDeadlineExceeded {
                    timedOut = ContinuousClock.now - start < .seconds(2)
                } catch {}
                let stuck = executor.stuckCalls
                continuation.resume(returning: (value, timedOut, stuck))
            }.start()
        }
        #expect(outcome.0 == 42)
        #expect(outcome.1, "the blocking caller returns at its deadline while the call is still stuck")
        #expect(outcome.2 == 1)
        release.withLock { $0 = true }
        for _ in 0..<500 where executor.stuckCalls > 0 { try await Task.sleep(for: .milliseconds(5)) }
        #expect(executor.stuckCalls == 0)
        await executor.shutdown()
        #expect(throws: HSMExecutorShutDown.self) { try executor.runBlocking(timeout: .seconds(1)) { 3 } }
    }

    /// Calls that arrive further apart than the polling window close it: five misses in a row from the full 100 µs,
    /// and the threads park at once instead of spinning for nothing. A hit (or a probe that hits) opens it again, up
    /// to the limit. (Driven by real calls the count of misses depends on the machine's scheduling, so the rule is
    /// checked as the function the pool applies after each window.)
    @Test func thePollingWindowClosesWhenCallsComeApart() {
        var window = 100
        var misses = 0
        while window > 0 {
            window = HSMThreadPool.nextWindow(after: window, hit: false, limit: 100)
            misses += 1
        }
        #expect(misses == 5)
        #expect(HSMThreadPool.nextWindow(after: 10, hit: false, limit: 100) == 0, "a failed probe closes it at once")
        #expect(HSMThreadPool.nextWindow(after: 10, hit: true, limit: 100) == 20)
        #expect(HSMThreadPool.nextWindow(after: 80, hit: true, limit: 100) == 100)
        #expect(HSMThreadPool.nextWindow(after: 0, hit: true, limit: 100) == 10)
    }

    @Test func refusesCallsAfterShutdown() async throws {
        let executor = HSMExecutor(threads: 1)
        #expect(try await executor.run(timeout: .seconds(5)) { 1 } == 1)
        await executor.shutdown()
        await #expect(throws: HSMExecutorShutDown.self) {
            try await executor.run(timeout: .seconds(5)) { 2 }
        }
    }
}

/// Read on the thread itself (`Thread.current` is unavailable in async code, fine in the synchronous body).
/// The kernel's name of the calling thread (what `top -H`, perf and gdb show).
private func currentThreadName() -> String {
    ((try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8)) ?? "").trimmingCharacters(in: .newlines)
}
