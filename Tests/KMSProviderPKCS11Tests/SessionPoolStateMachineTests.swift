@testable import KMSProviderPKCS11
import Testing

/// The pool's rules, without an HSM: time is passed in explicitly.
@Suite("Session pool state machine")
struct SessionPoolStateMachineTests {
    typealias Machine = SessionPoolStateMachine
    let t0 = ContinuousClock.now

    func machine(max: Int = 2, waiters: Int = 4) -> Machine {
        Machine(configuration: .init(maxSessions: max, maxWaiters: waiters))
    }

    /// Opens a session for a request the machine told to open, as the runner does.
    func openAndLease(_ m: inout Machine, id: Int, waiter: Int) -> Machine.Lease? {
        guard case .open(let generation) = m.requestLease(waiter, deadline: t0 + .seconds(1)) else { return nil }
        return m.sessionOpened(id, generation: generation)
    }

    @Test func opensUntilTheLimitThenReusesLastInFirstOut() throws {
        var m = machine()
        let a = try #require(openAndLease(&m, id: 1, waiter: 1))
        let b = try #require(openAndLease(&m, id: 2, waiter: 2))
        #expect(m.sessionCount == 2)
        #expect(m.release(a, .reuse).isEmpty)
        #expect(m.release(b, .reuse).isEmpty)
        #expect(m.requestLease(3, deadline: t0) == .use(b))
        #expect(m.requestLease(4, deadline: t0) == .use(a))
        #expect(m.sessionCount == 2)
    }

    @Test func waitersAreServedFirstInFirstOut() throws {
        var m = machine()
        let a = try #require(openAndLease(&m, id: 1, waiter: 1))
        _ = try #require(openAndLease(&m, id: 2, waiter: 2))
        #expect(m.requestLease(10, deadline: t0 + .seconds(1), mayWait: false) == .wait)
        #expect(m.waiterCount == 0, "a probe without mayWait does not enqueue")
        #expect(m.requestLease(10, deadline: t0 + .seconds(1)) == .wait)
        #expect(m.requestLease(11, deadline: t0 + .seconds(1)) == .wait)
        #expect(m.release(a, .reuse) == [.resume(10, .use(a))])
        #expect(m.waiterCount == 1)
        #expect(m.leasedCount == 2)
    }

    @Test func waitersTimeOutAtTheirDeadlineNotBefore() throws {
        var m = machine(max: 1)
        _ = try #require(openAndLease(&m, id: 1, waiter: 1))
        #expect(m.requestLease(2, deadline: t0 + .milliseconds(500)) == .wait)
        #expect(m.requestLease(3, deadline: t0 + .milliseconds(900)) == .wait)
        #expect(m.expireWaiters(now: t0 + .milliseconds(499)).isEmpty)
        #expect(m.expireWaiters(now: t0 + .milliseconds(500)) == [.resume(2, .fail(.timedOut))])
        #expect(m.expireWaiters(now: t0 + .milliseconds(950)) == [.resume(3, .fail(.timedOut))])
        #expect(m.waiterCount == 0)
    }

    @Test func tooManyWaitersFailAtOnce() throws {
        var m = machine(max: 1, waiters: 1)
        _ = try #require(openAndLease(&m, id: 1, waiter: 1))
        #expect(m.requestLease(2, deadline: t0 + .seconds(1)) == .wait)
        #expect(m.requestLease(3, deadline: t0 + .seconds(1)) == .fail(.tooManyWaiters))
    }

    @Test func aDiscardedSessionIsClosedAndNeverHandedOutAgain() throws {
        var m = machine(max: 1)
        let a = try #require(openAndLease(&m, id: 1, waiter: 1))
        #expect(m.requestLease(2, deadline: t0 + .seconds(1)) == .wait)
        // The waiter gets capacity to open a fresh session, not the dead one.
        #expect(m.release(a, .discard) == [.close(1), .resume(2, .open(generation: 0))])
        #expect(m.sessionOpened(5, generation: 0) == Machine.Lease(id: 5, generation: 0))
        #expect(m.idleCount == 0)
    }

    @Test func lostSessionsKeepTheirCapacityUntilTheirCallEnds() throws {
        var m = machine(max: 1)
        let a = try #require(openAndLease(&m, id: 1, waiter: 1))
        #expect(m.release(a, .lost).isEmpty)
        #expect(m.sessionCount == 1 && m.lostCount == 1)
        // No new session while the stuck call holds its thread.
        #expect(m.requestLease(2, deadline: t0 + .seconds(1)) == .wait)
        #expect(m.lostCallEnded(a) == [.close(1), .resume(2, .open(generation: 0))])
        #expect(m.lostCount == 0)
    }

    @Test func openFailureHandsTheCapacityToTheNextWaiter() throws {
        var m = machine(max: 1)
        #expect(m.requestLease(1, deadline: t0 + .seconds(1)) == .open(generation: 0))
        #expect(m.requestLease(2, deadline: t0 + .seconds(1)) == .wait)
        #expect(m.openFailed() == [.resume(2, .open(generation: 0))])
        #expect(m.openingCount == 1)
    }

    @Test func aNewGenerationNeverReusesOrClosesOldSessions() throws {
        var m = machine(max: 2)
        let a = try #require(openAndLease(&m, id: 1, waiter: 1))
        let b = try #require(openAndLease(&m, id: 2, waiter: 2))
        #expect(m.release(b, .reuse).isEmpty)
        #expect(m.invalidateAll() == [.forget(2)])
        #expect(m.generation == 1)
        // The leased old session comes back: forgotten, not reused, not closed.
        #expect(m.release(a, .reuse) == [.forget(1)])
        #expect(m.sessionCount == 0)
        #expect(m.requestLease(3, deadline: t0) == .open(generation: 1))
        // A session opened for the old generation is refused.
        var n = machine(max: 1)
        #expect(n.requestLease(1, deadline: t0) == .open(generation: 0))
        _ = n.invalidateAll()
        #expect(n.sessionOpened(9, generation: 0) == nil)
        #expect(n.sessionCount == 0)
    }

    @Test func cancelledWaitersLeaveTheQueue() throws {
        var m = machine(max: 1)
        _ = try #require(openAndLease(&m, id: 1, waiter: 1))
        #expect(m.requestLease(2, deadline: t0 + .seconds(1)) == .wait)
        #expect(m.cancelWaiter(2) == [.resume(2, .fail(.cancelled))])
        #expect(m.cancelWaiter(2).isEmpty)
        #expect(m.waiterCount == 0)
    }

    @Test func shutdownFailsWaitersClosesIdleAndLeasedOnReturn() throws {
        var m = machine(max: 2)
        let a = try #require(openAndLease(&m, id: 1, waiter: 1))
        let b = try #require(openAndLease(&m, id: 2, waiter: 2))
        #expect(m.release(b, .reuse).isEmpty)
        #expect(m.shutdown() == [.close(2)])
        #expect(m.requestLease(6, deadline: t0) == .fail(.shuttingDown))
        #expect(m.release(a, .reuse) == [.close(1)])
        #expect(m.sessionCount == 0)

        var w = machine(max: 1)
        _ = try #require(openAndLease(&w, id: 1, waiter: 1))
        #expect(w.requestLease(5, deadline: t0 + .seconds(1)) == .wait)
        #expect(w.shutdown() == [.resume(5, .fail(.shuttingDown))])
    }
}
