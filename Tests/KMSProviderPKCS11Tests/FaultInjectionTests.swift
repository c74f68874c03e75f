import Foundation
import KMSCore
@testable import KMSProviderPKCS11
import KMSTestSupport
import PKCS11
import Synchronization
import Testing

/// The provider against SoftHSM behind `PKCS11FaultShim`: outages, hangs, dead sessions and lost logins injected at
/// the PKCS#11 boundary, each test with its own token and its own copy of the shim.
@Suite("Fault injection through PKCS11FaultShim")
struct FaultInjectionTests {
    let token: SoftHSMToken
    let shim: FaultShim

    init() throws {
        token = try SoftHSMToken.create()
        shim = try FaultShim.create()
    }

    func start(
        sessions: Int = 4, checkoutWait: Duration = .milliseconds(500), callTimeout: Duration = .milliseconds(500)
    ) async throws -> PKCS11KeyProvider {
        var configuration = configuration(token, sessions: sessions, checkoutWait: checkoutWait, callTimeout: callTimeout)
        configuration.modulePath = shim.modulePath
        return try await PKCS11KeyProvider.start(configuration)
    }

    /// One request's outcome, with its start and end relative to the test's clock.
    struct Outcome: Sendable {
        let start: Duration
        let end: Duration
        let code: KMSError.Code?
        var duration: Duration { end - start }
    }

    /// Runs `tasks` loops of `operation` until `stop` is set, recording every request.
    func hammer(
        tasks: Int, clock: ContinuousClock.Instant, stop: StopFlag, _ operation: @escaping @Sendable () async throws -> Void
    ) async -> [Outcome] {
        await withTaskGroup(of: [Outcome].self) { group in
            for _ in 0..<tasks {
                group.addTask {
                    var outcomes: [Outcome] = []
                    while !stop.isSet {
                        let start = ContinuousClock.now - clock
                        let code = await errorCode(operation)
                        outcomes.append(Outcome(start: start, end: ContinuousClock.now - clock, code: code))
                        if code != nil { try? await Task.sleep(for: .milliseconds(5)) }
                    }
                    return outcomes
                }
            }
            return await group.reduce(into: []) { $0 += $1 }
        }
    }

    @Test func deviceDownWhileSixteenTasksWrapThenRecoveryWithoutRestart() async throws {
        let provider = try await start()
        _ = try await provider.createKey(orders)
        let before = try await provider.generateDataKey(orders, context: ["t": "1"])

        let t0 = ContinuousClock.now
        let stop = StopFlag()
        let marks = Mutex<(down: Duration, cleared: Duration)>((.zero, .zero))
        async let outcomes = hammer(tasks: 16, clock: t0, stop: stop) {
            _ = try await provider.generateDataKey(orders, context: ["t": "1"])
        }
        try await Task.sleep(for: .milliseconds(300))
        try shim.inject(.down)
        marks.withLock { $0.down = ContinuousClock.now - t0 }
        try await Task.sleep(for: .milliseconds(400))
        let duringOutage = await provider.health()
        try await Task.sleep(for: .milliseconds(600))
        try shim.clear()
        marks.withLock { $0.cleared = ContinuousClock.now - t0 }
        try await Task.sleep(for: .milliseconds(2_500))
        stop.set()
        let all = await outcomes
        let (down, cleared) = marks.withLock { $0 }

        // Requests that started after the shim went down and ended before it came back: every one failed closed,
        // with `unavailable`, within the call deadline (none hung, none was served from a cache).
        let outage = all.filter { $0.start > down + .milliseconds(20) && $0.end < cleared }
        #expect(outage.count > 16)
        #expect(outage.allSatisfy { $0.code == .unavailable })
        let timeToFail = outage.map { $0.duration }.max() ?? .zero
        #expect(timeToFail < .milliseconds(700))
        // Nothing anywhere took much longer than the deadline.
        #expect(all.allSatisfy { $0.duration < .milliseconds(1_200) })
        #expect(duringOutage.state == .unavailable)
        #expect(duringOutage.details["breaker"] == "open")

        // Back within 2 s of the fault clearing, and it stays back.
        let firstSuccess = try #require(all.filter { $0.start > cleared && $0.code == nil }.map { $0.end }.min())
        let timeToRecover = firstSuccess - cleared
        #expect(timeToRecover < .seconds(2))
        let late = all.filter { $0.start > firstSuccess + .milliseconds(100) }
        #expect(!late.isEmpty)
        #expect(late.allSatisfy { $0.code == nil })
        print("device down: \(outage.count) requests refused, slowest refusal \(timeToFail); recovered \(timeToRecover) after the fault cleared")

        // Blobs from before the outage still unwrap; the provider was never recreated.
        let unwrapped = try await provider.unwrap(orders, wrapped: before.wrapped, context: ["t": "1"])
        #expect(unwrapped.plaintext == before.plaintext)
        let after = await provider.health()
        #expect(after.state == .ok)
        #expect(after.details["breaker"] == "closed")
        #expect(after.details["outages"] == "1")
        let status = try shim.status()
        #expect(status.finalizeCalls >= 1)
        #expect(status.initializeCalls >= 2)
        #expect(status.deadSessionCalls == 0)
        await provider.shutdown()
    }

    @Test func hungCallsReturnUnavailableAtTheDeadlineAndThePoolRecovers() async throws {
        let provider = try await start(sessions: 4, checkoutWait: .milliseconds(500), callTimeout: .milliseconds(500))
        _ = try await provider.createKey(orders)
        _ = try await provider.generateDataKey(orders, context: [:])
        try shim.inject(.hang(milliseconds: 3_000, function: "C_Encrypt"))

        let results = await withTaskGroup(of: (Duration, KMSError.Code?).self) { group in
            for _ in 0..<8 {
                group.addTask {
                    let start = ContinuousClock.now
                    let code = await errorCode { _ = try await provider.generateDataKey(orders, context: [:]) }
                    return (ContinuousClock.now - start, code)
                }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        #expect(results.count == 8)
        #expect(results.allSatisfy { $0.1 == .unavailable })
        // ≈ the deadline (or the equal checkout wait), never the 3 s of the hang.
        #expect(results.allSatisfy { $0.0 >= .milliseconds(400) && $0.0 < .milliseconds(1_200) })
        print("hang: callers answered after \(results.map(\.0).min()!)…\(results.map(\.0).max()!)")
        let stuck = provider.poolStatistics
        #expect(stuck.deadlineOverruns >= 4)
        #expect(stuck.stuckCalls >= 1)
        #expect(stuck.stuckCalls <= 4)

        try shim.clear()
        // The hung calls end after 3 s; their sessions are closed and replaced.
        for _ in 0..<100 where provider.poolStatistics.stuckCalls > 0 { try await Task.sleep(for: .milliseconds(50)) }
        #expect(provider.poolStatistics.stuckCalls == 0)
        for _ in 0..<20 { _ = try await provider.generateDataKey(orders, context: [:]) }
        #expect(provider.poolStatistics.lost == 0)
        await provider.shutdown()
    }

    @Test func aKilledSessionIsEvictedTheRequestRetriedAndTheSessionNeverUsedAgain() async throws {
        let provider = try await start(sessions: 4)
        _ = try await provider.createKey(orders)
        // Open all four sessions.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<8 { group.addTask { _ = try await provider.generateDataKey(orders, context: [:]) } }
            try await group.waitForAll()
        }
        try shim.inject(.killSessions(count: 1))
        for _ in 0..<200 { _ = try await provider.generateDataKey(orders, context: [:]) }
        let status = try shim.status()
        #expect(status.faultsInjected == 1)
        #expect(status.deadSessionCalls == 0)
        #expect(provider.poolStatistics.sessionsDiscarded == 1)
        await provider.shutdown()
    }

    @Test func aDroppedLoginIsRestoredAndRequestsSucceed() async throws {
        let provider = try await start()
        _ = try await provider.createKey(orders)
        let before = try await provider.generateDataKey(orders, context: [:])
        let relogins = provider.poolStatistics.relogins
        try shim.inject(.dropLogin)
        let again = try await provider.generateDataKey(orders, context: [:])
        let unwrapped = try await provider.unwrap(orders, wrapped: before.wrapped, context: [:])
        #expect(unwrapped.plaintext == before.plaintext)
        #expect(again.version == .first)
        #expect(provider.poolStatistics.relogins == relogins + 1)
        await provider.shutdown()
    }

    @Test func oneRefusedPINStopsEveryFurtherLoginUntilTheProviderGetsADifferentPIN() async throws {
        let provider = try await start()
        _ = try await provider.createKey(orders)
        let before = try await provider.generateDataKey(orders, context: [:])
        // The login is lost, and the token answers the next login with a wrong-PIN refusal (once).
        try shim.inject(.dropLogin, .fail(function: "C_Login", value: PKCS11ReturnValue.pinIncorrect, count: 1))
        #expect(await errorCode { _ = try await provider.generateDataKey(orders, context: [:]) } == .unavailable)
        let loginsAfterRefusal = try shim.status().loginCalls
        #expect(loginsAfterRefusal >= 1)
        #expect(try shim.status().faultsInjected == 1)

        // A thousand requests, wraps and unwraps, concurrently: every one refused at once, not one more C_Login.
        let codes = await withTaskGroup(of: KMSError.Code?.self) { group in
            for index in 0..<1_000 {
                group.addTask {
                    await errorCode {
                        if index.isMultiple(of: 2) {
                            _ = try await provider.generateDataKey(orders, context: [:])
                        } else {
                            _ = try await provider.unwrap(orders, wrapped: before.wrapped, context: [:])
                        }
                    }
                }
            }
            return await group.reduce(into: [KMSError.Code?]()) { $0.append($1) }
        }
        #expect(codes.count == 1_000)
        #expect(codes.allSatisfy { $0 == .unavailable })
        #expect(try shim.status().loginCalls == loginsAfterRefusal)
        let health = await provider.health()
        #expect(health.state == .unavailable)
        #expect(health.details["pin_refused"] == "true")
        #expect(health.breaker == .open)
        #expect(health.lastError?.contains("CKR_PIN_INCORRECT") == true)

        // The same PIN again (a reload that changed nothing) tries nothing.
        provider.reloadCredential(token.pin)
        try await Task.sleep(for: .milliseconds(200))
        #expect(try shim.status().loginCalls == loginsAfterRefusal)

        // A different PIN is tried exactly once; SoftHSM refuses it, and nothing is tried after that either.
        provider.reloadCredential(SecretBytes(utf8: "not-the-pin"))
        try await waitUntil { try shim.status().loginCalls == loginsAfterRefusal + 1 }
        for _ in 0..<50 {
            #expect(await errorCode { _ = try await provider.generateDataKey(orders, context: [:]) } == .unavailable)
        }
        #expect(try shim.status().loginCalls == loginsAfterRefusal + 1)

        // The right PIN: one login, and the provider serves again without a restart.
        provider.reloadCredential(token.pin)
        try await waitUntil { await errorCode({ _ = try await provider.generateDataKey(orders, context: [:]) }) == nil }
        let unwrapped = try await provider.unwrap(orders, wrapped: before.wrapped, context: [:])
        #expect(unwrapped.plaintext == before.plaintext)
        let healthy = await provider.health()
        #expect(healthy.state == .ok && healthy.breaker == .closed)
        #expect(healthy.sessions.map { $0.max >= 1 && $0.open >= 1 && $0.busy == 0 } == true)
        await provider.shutdown()
    }

    /// A new PIN whose login the HSM does not answer in time is not given up on: the reconnect loop takes over and
    /// logs in once the HSM answers, without another reload.
    @Test func aNewPINWhoseLoginTimesOutIsRetriedUntilTheHSMAnswers() async throws {
        let provider = try await start()
        _ = try await provider.createKey(orders)
        try shim.inject(.dropLogin, .fail(function: "C_Login", value: PKCS11ReturnValue.pinIncorrect, count: 1))
        #expect(await errorCode { _ = try await provider.generateDataKey(orders, context: [:]) } == .unavailable)
        // A wrong PIN from a reload is refused by the token itself and latched.
        provider.reloadCredential(SecretBytes(utf8: "not-the-pin"))
        try await waitUntil { try shim.status().loginCalls >= 2 }
        try await waitUntil { await provider.health().details["pin_refused"] == "true" }

        // The right PIN, while the token does not answer C_Login within the call deadline (500 ms).
        try shim.inject(.hang(milliseconds: 1_500, function: "C_Login"))
        let logins = try shim.status().loginCalls
        provider.reloadCredential(token.pin)
        try await waitUntil { try shim.status().loginCalls > logins }
        try await Task.sleep(for: .milliseconds(700))
        try shim.clear()
        try await waitUntil { await errorCode({ _ = try await provider.generateDataKey(orders, context: [:]) }) == nil }
        #expect(await provider.health().breaker == .closed)
        await provider.shutdown()
    }

    /// Polls `condition` every 20 ms for up to 5 s; fails the test if it never holds.
    func waitUntil(_ condition: () async throws -> Bool, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let start = ContinuousClock.now
        while ContinuousClock.now - start < .seconds(5) {
            if try await condition() { return }
            try await Task.sleep(for: .milliseconds(20))
        }
        Issue.record("condition never held within 5 s", sourceLocation: sourceLocation)
    }

    @Test func noSlotsThenNoTokenKeepTheBreakerOpenUntilTheHSMIsBack() async throws {
        let provider = try await start()
        _ = try await provider.createKey(orders)
        try shim.inject(.down)
        #expect(await errorCode { _ = try await provider.generateDataKey(orders, context: [:]) } == .unavailable)
        try await Task.sleep(for: .milliseconds(800))
        let empty = await provider.health()
        #expect(empty.state == .unavailable)
        let attemptsWhileEmpty = Int(empty.details["reconnect_attempts"] ?? "") ?? 0
        #expect(attemptsWhileEmpty >= 2)
        #expect(empty.details["reconnect_error"]?.contains("lists no slots") == true)

        // The library answers again, but the token is not present.
        try shim.inject(.fail(value: PKCS11ReturnValue.tokenNotPresent))
        try await Task.sleep(for: .milliseconds(1_500))
        #expect(await errorCode { _ = try await provider.generateDataKey(orders, context: [:]) } == .unavailable)
        let absent = await provider.health()
        #expect(absent.state == .unavailable)
        #expect((Int(absent.details["reconnect_attempts"] ?? "") ?? 0) > attemptsWhileEmpty)
        #expect(absent.details["reconnect_error"]?.contains("CKR_TOKEN_NOT_PRESENT") == true)

        try shim.clear()
        let cleared = ContinuousClock.now
        #expect(try await eventually(within: .seconds(3)) {
            await errorCode { _ = try await provider.generateDataKey(orders, context: [:]) } == nil
        })
        #expect(ContinuousClock.now - cleared < .seconds(2))
        #expect(await provider.health().state == .ok)
        await provider.shutdown()
    }
}

/// Tells looping tasks to stop.
final class StopFlag: Sendable {
    private let flag = Atomic(false)
    var isSet: Bool { flag.load(ordering: .relaxed) }
    func set() { flag.store(true, ordering: .relaxed) }
}
