import Foundation
import KMSAPI
import KMSAudit
import KMSCore
import KMSRotation
import KMSService
import KMSTestSupport
import Synchronization
import Testing

let orders = TestIdentities.orders
let node1 = TestIdentities.node1
let node2 = TestIdentities.node2
let admin = TestIdentities.admin

/// The service over an in-memory provider (`InMemoryService`), called directly: no HSM, no HTTP.
struct ServiceFixture {
    let base: InMemoryService
    let service: KMSService
    var provider: InMemoryKeyProvider { base.provider }

    static func make(maxWraps: UInt64 = 1_000_000, ratePerSecond: Double = 1000, burst: Int = 2000,
                     requestTimeout: Duration = .seconds(5)) async throws -> ServiceFixture {
        let base = try await InMemoryService.make(maxWraps: maxWraps, ratePerSecond: ratePerSecond, burst: burst, requestTimeout: requestTimeout)
        return ServiceFixture(base: base, service: KMSService(policy: base.policy, rotation: base.rotation, audit: base.audit))
    }

    /// `identity` authenticated as a storage node (as a front end does with its connection's certificate).
    func node(_ identity: ClientIdentity) throws -> KMSService.Node {
        try service.authenticateNode(PeerCertificate(identity: identity))
    }

    func admin(_ identity: ClientIdentity?, token: String? = nil) throws -> KMSService.Administrator {
        try service.authenticateAdmin(identity.map(PeerCertificate.init(identity:)), bearerToken: token)
    }

    func records(atLeast count: Int = 0) async throws -> [[String: Any]] {
        try await base.records(atLeast: count)
    }
}

/// Whether a closure ran (the service must not read a refused caller's body).
final class Flag: Sendable {
    private let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}

func serviceError(_ body: () async throws -> Void) async -> ServiceError? {
    do {
        try await body()
        return nil
    } catch let error as ServiceError {
        return error
    } catch {
        Issue.record("not a ServiceError: \(error)")
        return nil
    }
}

/// The service layer's guarantees, which every front end inherits: authorization before input, usage limits, the
/// deadline, and exactly one audit record per operation. No HSM and no HTTP: these run anywhere, in parallel.
@Suite("KMSService without an HSM")
struct KMSServiceTests {
    @Test func anAllowedNodeGetsADataKeyThatUnwrapsAndExactlyOneDurableRecord() async throws {
        let fixture = try await ServiceFixture.make()
        let context = ["table": "t1"]
        let (name, dataKey) = try await fixture.service.dataKey(try fixture.node(node1), key: "orders") { DataKeyRequest(context: context) }
        #expect(name == orders && dataKey.version == .first)
        // The success record is durable when the call returns.
        let records = try await fixture.records()
        #expect(records.count == 1)
        #expect(records.first?["action"] as? String == "datakey" && records.first?["result"] as? String == "ok")
        #expect(records.first?["identity"] as? String == "uri:spiffe://test/storage/node-1")
        #expect((records.first?["context_digest"] as? String)?.count == 64)
        let wrapped = Data(dataKey.wrapped).base64EncodedString()
        let (_, unwrapped) = try await fixture.service.unwrap(try fixture.node(node1), key: "orders") {
            .request(UnwrapRequest(wrapped: wrapped, context: context))
        }
        #expect(unwrapped.plaintext == dataKey.plaintext)
    }

    @Test func aCallerNotAllowedIsRefusedBeforeItsInputIsReadOrTheBackendIsCalled() async throws {
        let fixture = try await ServiceFixture.make()
        let calls = fixture.provider.callCount
        let read = Flag()
        let error = await serviceError {
            _ = try await fixture.service.dataKey(try fixture.node(node2), key: "orders") {
                read.set()
                return DataKeyRequest()
            }
        }
        #expect(error?.kind == .forbidden && error?.code == .forbidden)
        #expect(!read.isSet, "the body of a refused caller was read")
        #expect(fixture.provider.callCount == calls)
        let records = try await fixture.records(atLeast: 1)
        #expect(records.first?["type"] as? String == "authorization" && records.first?["result"] as? String == "denied")
        // No certificate: authentication itself refuses, recorded as the operation whose scope the front end opened.
        let unauthenticated = await serviceError {
            _ = try await fixture.service.audited(.keyAccess, "datakey") { try fixture.service.authenticateNode(nil) }
        }
        #expect(unauthenticated?.kind == .unauthenticated)
        let afterRefusal = try await fixture.records(atLeast: 2)
        #expect(afterRefusal.last?["type"] as? String == "authentication" && afterRefusal.last?["action"] as? String == "datakey")
        #expect(fixture.service.events.snapshot["forbidden"] == 1)
    }

    @Test func aWrongContextIsAnAuthenticationFailureCountedAsASecurityEvent() async throws {
        let fixture = try await ServiceFixture.make()
        let (_, dataKey) = try await fixture.service.dataKey(try fixture.node(node1), key: "orders") { DataKeyRequest(context: ["t": "1"]) }
        let wrapped = Data(dataKey.wrapped).base64EncodedString()
        let error = await serviceError {
            _ = try await fixture.service.unwrap(try fixture.node(node1), key: "orders") { .request(UnwrapRequest(wrapped: wrapped, context: ["t": "2"])) }
        }
        #expect(error?.kind == .badRequest && error?.isAuthenticationFailure == true)
        #expect(fixture.service.events.snapshot["unwrap_authentication_failed"] == 1)
    }

    @Test func batchItemsAreAnsweredAndAuditedOneByOne() async throws {
        let fixture = try await ServiceFixture.make()
        let (_, dataKey) = try await fixture.service.dataKey(try fixture.node(node1), key: "orders") { DataKeyRequest(context: ["t": "1"]) }
        let wrapped = Data(dataKey.wrapped).base64EncodedString()
        let (_, answers) = try await fixture.service.unwrapBatch(try fixture.node(node1), key: "orders") {
            [UnwrapRequest(wrapped: wrapped, context: ["t": "1"]), UnwrapRequest(wrapped: wrapped, context: ["t": "2"]),
             UnwrapRequest(wrapped: "!!")].map(KMSService.WrappedInput.request)
        }
        #expect(answers.map { $0.0 != nil } == [true, false, false])
        #expect(answers.compactMap { $0.1?.code } == [.invalidInput, .invalidInput])
        let batch = try await fixture.records(atLeast: 2).first { $0["action"] as? String == "unwrap_batch" }
        let outcomes = try #require(batch?["outcomes"] as? [[String: Any]])
        #expect(outcomes.map { $0["result"] as? String } == ["ok", "denied", "failed"])
    }

    @Test func failedAdminAttemptsSpendTheRateBudget() async throws {
        let fixture = try await ServiceFixture.make(ratePerSecond: 0.001, burst: 2)
        var kinds: [ServiceError.Kind?] = []
        for _ in 0..<3 {
            kinds.append(await serviceError { _ = try await fixture.service.listKeys(try fixture.admin(node1, token: "guess")) }?.kind)
        }
        #expect(kinds == [.forbidden, .forbidden, .rateLimited])
        let keys = try await fixture.service.listKeys(try fixture.admin(admin))
        #expect(keys.map(\.name) == [TestIdentities.invoices, orders])
        let byToken = try await fixture.service.listKeys(try fixture.admin(nil, token: "admin-token"))
        #expect(byToken.count == 2)
    }

    @Test func maxWrapsIsAHardLimitWhileRotationFails() async throws {
        let fixture = try await ServiceFixture.make(maxWraps: 3)
        fixture.provider.faults.rotationFails = true
        var wrapped: [String] = []
        for _ in 0..<3 {
            let (_, dataKey) = try await fixture.service.dataKey(try fixture.node(node1), key: "orders") { DataKeyRequest() }
            wrapped.append(Data(dataKey.wrapped).base64EncodedString())
        }
        let refused = await serviceError { _ = try await fixture.service.dataKey(try fixture.node(node1), key: "orders") { DataKeyRequest() } }
        #expect(refused?.code == .rotationRequired && refused?.kind == .unavailable)
        let (_, unwrapped) = try await fixture.service.unwrap(try fixture.node(node1), key: "orders") { .request(UnwrapRequest(wrapped: wrapped[2])) }
        #expect(unwrapped.version == .first)
    }

    @Test func aBackendPastTheDeadlineIsUnavailableAtTheDeadline() async throws {
        // The backend takes 20 s; the answer comes at the 100 ms deadline. The bound leaves room for two cores busy
        // with the tests that run in parallel (a sleeper's wake-up there was seen up to 2 s late), and is still far
        // from the backend's 20 s.
        let fixture = try await ServiceFixture.make(requestTimeout: .milliseconds(100))
        fixture.provider.faults.delay = .seconds(20)
        let started = ContinuousClock.now
        let error = await serviceError { _ = try await fixture.service.dataKey(try fixture.node(node1), key: "orders") { DataKeyRequest() } }
        #expect(error?.kind == .unavailable)
        #expect(ContinuousClock.now - started < .seconds(5))
        #expect(fixture.service.events.snapshot["provider_unavailable"] == 1)
    }

    @Test func anOperationJoinsTheScopeAFrontEndOpenedExactlyOneRecord() async throws {
        let fixture = try await ServiceFixture.make()
        _ = try await fixture.service.audited(.keyAccess, "datakey") {
            try await fixture.service.dataKey(try fixture.node(node1), key: "orders") { DataKeyRequest() }
        }
        // A front end's own refusal inside its scope (a body that does not decode) is recorded once, as that operation.
        let error = await serviceError {
            _ = try await fixture.service.audited(.keyAccess, "unwrap") {
                try await fixture.service.unwrap(try fixture.node(node1), key: "orders") {
                    throw ServiceError(.badRequest, .invalidInput, "the body is not a JSON object")
                }
            }
        }
        #expect(error?.code == .invalidInput)
        let records = try await fixture.records(atLeast: 2)
        #expect(records.map { $0["action"] as? String } == ["datakey", "unwrap"])
        #expect(records.last?["result"] as? String == "failed")
    }
}

/// The log budget of refusals: the first lines of one identity and kind in an interval, then none until the next.
@Suite("Refusal log budget")
struct RefusalLogBudgetTests {
    @Test func eachIdentityAndKindGetsItsOwnBudgetPerInterval() {
        let refusals = RefusalSummaries(audit: nil, interval: .seconds(10), perKey: 3, maxKeys: 2)
        #expect((0..<10).filter { _ in refusals.shouldLog("uri:a", "forbidden") }.count == 3)
        #expect(refusals.shouldLog("uri:a", "rate_limited"), "another kind has its own budget")
        // More identities than the table tells apart in one interval are not logged at all.
        #expect(!refusals.shouldLog("uri:c", "forbidden"))
        refusals.flush()
        #expect(refusals.shouldLog("uri:a", "forbidden"), "a new interval starts a new budget")
    }
}
