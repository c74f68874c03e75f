import KMSCore
import Testing

@Suite("Deadline sweeper")
struct DeadlineSweeperTests {
    /// A sleeper wakes at its deadline (not before, and within the sweeper's granularity plus scheduling after), and a
    /// cancelled one at once, whether it was cancelled while asleep or before it began.
    @Test func aSleeperWakesAtItsDeadlineOrAtOnceWhenCancelled() async throws {
        let sweeper = DeadlineSweeper(name: "test-deadlines")
        defer { sweeper.stop() }
        let started = ContinuousClock.now
        try await sweeper.sleep(until: started + .milliseconds(50))
        let slept = ContinuousClock.now - started
        #expect(slept >= .milliseconds(50) && slept < .seconds(1), "\(slept)")

        let asleep = Task { try await sweeper.sleep(until: .now + .seconds(30)) }
        try await Task.sleep(for: .milliseconds(20))
        let cancelledAt = ContinuousClock.now
        asleep.cancel()
        await #expect(throws: CancellationError.self) { try await asleep.value }
        #expect(ContinuousClock.now - cancelledAt < .seconds(1))

        let early = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            try await sweeper.sleep(until: .now + .seconds(30))
        }
        await #expect(throws: CancellationError.self) { try await early.value }
    }
}
