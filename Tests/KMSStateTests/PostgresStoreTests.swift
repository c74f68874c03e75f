import Foundation
import KMSState
import KMSTestSupport
import Synchronization
import Testing

/// What only the PostgreSQL store has: credentials, a network between kmsd and its state, outages.
@Suite("PostgreSQL state store")
struct PostgresStoreTests {
    @Test func aWrongPasswordIsAClearErrorThatDoesNotRepeatIt() async throws {
        let cluster = try await ThrowawayPostgres.shared()
        let database = try await cluster.createDatabase()
        let wrong = "not-the-password-\(UUID().uuidString)"
        let error = try await refusal(cluster.settings(database: database, password: wrong))
        #expect(error.contains("password authentication failed"), "\(error)")
        #expect(error.contains("postgres://\(cluster.user)@127.0.0.1:\(cluster.port)/\(database)"), "\(error)")
        #expect(!error.contains(wrong))
        #expect(!error.contains(cluster.password))
    }

    @Test func aDatabaseNobodyListensOnFailsWithinTheDeadline() async throws {
        let cluster = try await ThrowawayPostgres.shared()
        var settings = cluster.settings(database: "nothing", operationTimeout: .seconds(2))
        settings.port = try freeLoopbackPort()
        settings.connectTimeout = .seconds(1)
        let began = ContinuousClock.now
        let error = try await refusal(settings)
        #expect(error.contains("cannot connect") && error.contains("Connection refused"), "\(error)")
        #expect(ContinuousClock.now - began < .seconds(5))
    }

    @Test func aServerThatNeverAnswersFailsAtTheDeadlineNotWhenTCPGivesUp() async throws {
        let (socket, port) = try loopbackSocket(listening: true)
        defer { close(socket) }
        var settings = try await ThrowawayPostgres.shared().settings(database: "kmsd", operationTimeout: .seconds(1))
        settings.port = port
        settings.connectTimeout = .seconds(30)
        let began = ContinuousClock.now
        let error = try await refusal(settings)
        #expect(error.contains("no answer within 1.0 seconds"), "\(error)")
        // Far below the 30 s connect timeout, with room for two cores busy with the tests that run in parallel.
        #expect(ContinuousClock.now - began < .seconds(10))
    }

    @Test func anOutageFailsOperationsWithinTheDeadlineAndTheStoreRecoversOnItsOwn() async throws {
        // A cluster of its own: the shared one serves tests running in parallel.
        try await ThrowawayPostgres.withOwn { try await outageAndRecovery($0) }
    }

    func outageAndRecovery(_ cluster: ThrowawayPostgres) async throws {
        // The schema is applied first under the default deadline (on two cores busy with parallel tests, a fresh
        // cluster's migrations can take longer than the 2 s this test gives each operation).
        await (try await PostgresStateStore.open(cluster.settings(database: "postgres"))).close()
        let store = try await PostgresStateStore.open(cluster.settings(database: "postgres", operationTimeout: .seconds(2)))
        try await store.addUsage([orders1: VersionUsage(wraps: 1)])
        try await cluster.pause()
        let began = ContinuousClock.now
        var failure: (any Error)?
        do { try await store.addUsage([orders1: VersionUsage(wraps: 1)]) } catch { failure = error }
        let elapsed = ContinuousClock.now - began
        #expect(failure is StateStoreError, "\(String(describing: failure))")
        #expect(elapsed < .seconds(4))
        // A longer outage, operations failing all along (postgres-nio's pool would by now wait seconds between
        // connection attempts): each fails at once, and none counts.
        let outage = ContinuousClock.now
        var failures = 0
        while ContinuousClock.now - outage < .seconds(6) {
            let attempt = ContinuousClock.now
            if (try? await store.addUsage([orders1: VersionUsage(wraps: 100)])) == nil { failures += 1 }
            // At once: well before the operation's 2 s deadline, which is what it took before the pool was replaced.
            #expect(ContinuousClock.now - attempt < .milliseconds(1500), "an operation during the outage fails at once")
            try await Task.sleep(for: .milliseconds(200))
        }
        #expect(failures > 10)
        try await cluster.resume()
        // The same store, not reopened, serves again at once.
        let back = ContinuousClock.now
        var recovered = false
        while !recovered, ContinuousClock.now - back < .seconds(10) {
            recovered = (try? await store.addUsage([orders1: VersionUsage(wraps: 1)])) != nil
            if !recovered { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(recovered)
        #expect(ContinuousClock.now - back < .milliseconds(1500), "served again \(ContinuousClock.now - back) after the database came back")
        #expect(try await store.allUsage()[orders1]?.wraps == 2)
        await store.close()
    }

    @Test func aKeyChangeAnnouncedByOneReplicaReachesAnotherWithinASecond() async throws {
        let cluster = try await ThrowawayPostgres.shared()
        let database = try await cluster.createDatabase()
        let announcer = try await PostgresStateStore.open(cluster.settings(database: database))
        let listener = try await PostgresStateStore.open(cluster.settings(database: database))
        let received = Mutex<[String]>([])
        let following = Task { for await change in listener.keyChanges() { received.withLock { $0.append(change) } } }
        // Listening starts with "read every key": what was announced before is unknown.
        #expect(try await within(.seconds(5)) { received.withLock { $0 } == [KeyChanges.everyKey] })
        let sent = ContinuousClock.now
        try await announcer.announceKeyChange("orders")
        #expect(try await within(.seconds(5)) { received.withLock { $0.last } == "orders" })
        #expect(ContinuousClock.now - sent < .seconds(1))
        following.cancel()
        await following.value
        await announcer.close()
        await listener.close()
    }

    @Test func itsLocationNamesTheDatabaseButNeverThePassword() {
        let settings = PostgresStoreSettings(host: "db.internal", port: 5433, database: "kmsd", user: "kmsd", password: "s3cret")
        #expect(settings.description == "postgres://kmsd@db.internal:5433/kmsd")
        #expect(!"\(settings)".contains("s3cret"))
        var dumped = ""
        dump(settings, to: &dumped)
        #expect(dumped.contains("db.internal") && dumped.contains("<redacted>") && !dumped.contains("s3cret"), "\(dumped)")
    }
}

/// Opens a store that must not open; the StateStoreError's text (a store that opens is a test failure).
func refusal(_ settings: PostgresStoreSettings) async throws -> String {
    do {
        let store = try await PostgresStateStore.open(settings)
        await store.close()
    } catch let error as StateStoreError {
        return error.description
    }
    throw FixtureError("a store opened at \(settings), which should have been refused")
}
