import KMSCore
import Testing

@Suite("Deadline sweeper")
struct DeadlineSweeperTests {
    /// A sleeper wakes at its deadline (not before, and within the sweeper's granularity plus scheduling after), and a
    /// cancelled one at once, whether it was cancelled while asleep or before it began. "After" is bounded at 5 s, far
    /// below the 30 s sleepers: this suite runs in parallel with the others on two cores, where a 1 s bound once failed
    /// (woken 1.4 s after a 50 ms deadline).
    @Test func aSleeperWakesAtItsDeadlineOrAtOnceWhenCancelled() async throws {
        let sweeper = DeadlineSweeper(name: "test-deadlines")
        defer { sweeper.stop() }
        let started = ContinuousClock.now
        try await sweeper.sleep(until: started + .milliseconds(50))
        let slept = ContinuousClock.now - started
        #expect(slept >= .milliseconds(50) && slept < .seconds(5), "\(slept)")

        let asleep = Task { try await sweeper.sleep(until: .now + .seconds(30)) }
        try await Task.sleep(for: .milliseconds(20))
        let cancelledAt = ContinuousClock.now
        asleep.cancel()
        await #expect(throws: CancellationError.self) { try await asleep.value }
        #expect(ContinuousClock.now - cancelledAt < .seconds(5))

        let early = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            try await sweeper.sleep(until: .now + .seconds(30))
        }
        await #expect(throws: CancellationError.self) { try await early.value }
    }
}
