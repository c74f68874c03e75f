import Foundation
import Hummingbird
import HummingbirdTesting
import KMSAPI
import KMSAudit
import KMSCore
import KMSServer
import KMSService
import KMSTestSupport
import NIOCore
import Testing

/// kmsd's routes over the in-memory provider, driven by Hummingbird's test client: no HSM, no TLS, no sockets. The
/// caller's certificate is stood in for by the connection's `PeerCertificate`, as the TLS handshake sets it.
struct ServerFixture {
    let base: InMemoryService
    let server: KMSServer

    static func make(ratePerSecond: Double = 1000, burst: Int = 2000) async throws -> ServerFixture {
        let base = try await InMemoryService.make(ratePerSecond: ratePerSecond, burst: burst)
        return ServerFixture(base: base, server: KMSServer(policy: base.policy, rotation: base.rotation, audit: base.audit))
    }

    /// Runs `body` with a client of the router.
    func test<T: Sendable>(_ body: @Sendable (Caller) async throws -> T) async throws -> T {
        try await Application(router: server.router()).test(.router) { client in try await body(Caller(client: client)) }
    }

    func records(atLeast count: Int = 0) async throws -> [[String: Any]] {
        try await base.records(atLeast: count)
    }
}

/// Sends requests as one identity (nil: no client certificate).
struct Caller: Sendable {
    let client: any TestClientProtocol

    struct Reply {
        let status: Int
        let body: Data
        let headers: HTTPFields
        var errorCode: String? {
            ((try? JSONSerialization.jsonObject(with: body)) as? [String: Any]).flatMap { $0["error"] as? [String: Any] }?["code"] as? String
        }
    }

    func call(_ identity: ClientIdentity?, _ method: HTTPRequest.Method, _ path: String, json: Any? = nil, raw: Data? = nil,
              token: String? = nil) async throws -> Reply {
        var headers: HTTPFields = [:]
        if let token { headers[.authorization] = "Bearer \(token)" }
        let data = try raw ?? json.map { try JSONSerialization.data(withJSONObject: $0) }
        let response = try await PeerCertificate.$connection.withValue(identity.map(PeerCertificate.init(identity:))) {
            try await client.execute(uri: path, method: method, headers: headers, body: data.map { ByteBuffer(bytes: $0) })
        }
        return Reply(status: Int(response.status.code), body: Data(response.body.readableBytesView), headers: response.headers)
    }

    func dataKey(_ identity: ClientIdentity, _ key: String = "orders", context: [String: String] = [:]) async throws -> DataKeyResponse {
        let reply = try await call(identity, .post, "/v1/keys/\(key)/datakey", json: ["context": context])
        try #require(reply.status == 200, "\(String(decoding: reply.body, as: UTF8.self))")
        return try JSONDecoder().decode(DataKeyResponse.self, from: reply.body)
    }
}

let node1 = TestIdentities.node1
let node2 = TestIdentities.node2
let admin = TestIdentities.admin

@Suite("KMSServer routes without an HSM")
struct KMSServerTests {
    @Test func everyRouteLeavesExactlyOneRecordWithTheDocumentedFields() async throws {
        let fixture = try await ServerFixture.make()
        let key = try await fixture.test { caller in
            let key = try await caller.dataKey(node1, context: ["table": "t1"])
            let item: [String: Any] = ["wrapped": key.wrapped, "context": ["table": "t1"]]
            #expect(try await caller.call(node1, .post, "/v1/keys/orders/unwrap", json: item).status == 200)
            #expect(try await caller.call(node1, .post, "/v1/keys/orders/rewrap", json: item).status == 200)
            #expect(try await caller.call(node1, .post, "/v1/keys/orders/unwrap/batch", json: ["items": [item]]).status == 200)
            #expect(try await caller.call(node2, .post, "/v1/keys/orders/datakey", json: [:]).status == 403)
            #expect(try await caller.call(node1, .post, "/v1/keys/orders/unwrap", json: ["wrapped": "!!"]).status == 400)
            #expect(try await caller.call(node1, .get, "/v1/admin/keys", token: "wrong").status == 403)
            #expect(try await caller.call(nil, .post, "/v1/keys/orders/datakey", json: [:]).status == 401)
            #expect(try await caller.call(admin, .post, "/v1/admin/keys/orders/rotate", json: ["reason": "audit test"]).status == 200)
            #expect(try await caller.call(admin, .get, "/v1/admin/keys").status == 200)
            // Health is not an audited operation.
            #expect(try await caller.call(nil, .get, "/v1/health/live").status == 200)
            return key
        }
        let records = try await fixture.records(atLeast: 10)
        #expect(records.count == 10, "\(records.map { $0["action"] ?? "" })")
        func only(_ type: String, _ action: String, result: String = "ok") -> [[String: Any]] {
            records.filter { $0["type"] as? String == type && $0["action"] as? String == action && $0["result"] as? String == result }
        }
        let datakey = try #require(only("key_access", "datakey").first)
        #expect(datakey["identity"] as? String == "uri:spiffe://test/storage/node-1")
        #expect(datakey["key"] as? String == "orders" && (datakey["version"] as? NSNumber)?.intValue == 1)
        #expect((datakey["context_digest"] as? String)?.count == 64)
        #expect(Set(datakey.keys) == ["seq", "time", "prev", "type", "action", "result", "identity", "key", "version", "context_digest"])
        #expect(only("key_access", "unwrap").count == 1 && only("key_access", "rewrap").count == 1)
        #expect(only("key_access", "unwrap_batch").first?["items"] as? Int == 1)
        let denied = only("authorization", "datakey", result: "denied")
        #expect(denied.count == 1 && denied.first?["identity"] as? String == "uri:spiffe://test/storage/node-2")
        #expect(denied.first?["code"] as? String == "forbidden")
        #expect(only("key_access", "unwrap", result: "failed").first?["code"] as? String == "invalid_input")
        // Refused while the route's context was made (no certificate): recorded as the route's operation.
        let unauthenticated = only("authentication", "datakey", result: "denied")
        #expect(unauthenticated.count == 1 && unauthenticated.first?["code"] as? String == "unauthenticated")
        let adminDenied = only("authorization", "list_keys", result: "denied")
        #expect(adminDenied.count == 1 && adminDenied.first?["identity"] as? String == "uri:spiffe://test/storage/node-1")
        let rotation = only("admin", "rotate")
        #expect(rotation.count == 1 && rotation.first?["identity"] as? String == "cn:security-admin")
        #expect((rotation.first?["version"] as? NSNumber)?.intValue == 2 && (rotation.first?["detail"] as? String)?.contains("audit test") == true)
        #expect(only("admin", "list_keys").count == 1)
        // The context's values and the DEK never appear.
        let text = try String(contentsOfFile: fixture.base.auditPath, encoding: .utf8)
        #expect(!text.contains(key.plaintext) && !text.contains("\"t1\""))
    }

    @Test func badRequestsGetTheDocumented4xxAndTheServerStaysHealthy() async throws {
        let fixture = try await ServerFixture.make()
        try await fixture.test { caller in
            let wrapped = try await caller.dataKey(node1, context: ["a": "b"]).wrapped
            let cases: [(String, String, Data, Int, String)] = [
                ("malformed JSON", "/v1/keys/orders/datakey", Data("{\"context\":".utf8), 400, "invalid_input"),
                ("unknown field", "/v1/keys/orders/datakey", Data(#"{"contxt":{}}"#.utf8), 400, "invalid_input"),
                ("bad base64", "/v1/keys/orders/unwrap", Data(#"{"wrapped":"%%%"}"#.utf8), 400, "invalid_input"),
                ("wrong context", "/v1/keys/orders/unwrap", Data(#"{"wrapped":"\#(wrapped)","context":{"a":"c"}}"#.utf8), 400, "invalid_input"),
                ("truncated envelope", "/v1/keys/orders/unwrap", Data(#"{"wrapped":"\#(wrapped.prefix(20))"}"#.utf8), 400, "invalid_input"),
                ("oversized body", "/v1/keys/orders/datakey", Data(repeating: 0x20, count: 100 * 1024), 413, "payload_too_large"),
                ("bad key name", "/v1/keys/bad%20name!/datakey", Data("{}".utf8), 400, "invalid_input"),
                ("unknown key: the answer for a key the caller may not use", "/v1/keys/nosuchkey/datakey", Data("{}".utf8), 403, "forbidden"),
                ("wrong type", "/v1/keys/orders/datakey", Data(#"{"context":{"a":1}}"#.utf8), 400, "invalid_input"),
            ]
            for (label, path, body, status, code) in cases {
                let reply = try await caller.call(node1, .post, path, raw: body)
                #expect(reply.status == status, "\(label): \(reply.status)")
                #expect(reply.errorCode == code, "\(label): \(String(decoding: reply.body, as: UTF8.self))")
                #expect(reply.headers[.cacheControl] == "no-store", "\(label)")
            }
            let after = try await caller.call(node1, .post, "/v1/keys/orders/unwrap", json: ["wrapped": wrapped, "context": ["a": "b"]])
            #expect(after.status == 200)
        }
    }

    @Test func nodesUseOnlyTheirKeysAndAnEnvelopeCannotBeReplayedThroughAnotherKey() async throws {
        let fixture = try await ServerFixture.make()
        try await fixture.test { caller in
            let refused = try await caller.call(node1, .post, "/v1/keys/invoices/datakey", json: [:])
            #expect(refused.status == 403 && refused.errorCode == "forbidden")
            let invoice = try await caller.dataKey(node2, "invoices")
            let replay = try await caller.call(node1, .post, "/v1/keys/orders/unwrap", json: ["wrapped": invoice.wrapped])
            #expect(replay.status == 400 && replay.errorCode == "invalid_input")
            let unauthenticated = try await caller.call(nil, .post, "/v1/keys/orders/datakey", json: [:])
            #expect(unauthenticated.status == 401 && unauthenticated.errorCode == "unauthenticated")
        }
        #expect(fixture.server.events.snapshot["forbidden"] == 1)
    }

    @Test func adminRoutesNeedAnAdminCertificateOrToken() async throws {
        let fixture = try await ServerFixture.make()
        try await fixture.test { caller in
            #expect(try await caller.call(node1, .get, "/v1/admin/keys").status == 403)
            #expect(try await caller.call(node1, .get, "/v1/admin/keys", token: "wrong").status == 403)
            #expect(try await caller.call(nil, .get, "/v1/admin/keys").status == 401)
            let listed = try await caller.call(admin, .get, "/v1/admin/keys")
            #expect(listed.status == 200)
            #expect(try JSONDecoder().decode(KeyListBody.self, from: listed.body).keys.map(\.name) == ["invoices", "orders"])
            // The token alone, from a storage node's connection.
            let withToken = try await caller.call(node1, .post, "/v1/admin/keys/orders/rotate", json: [:], token: TestIdentities.adminToken)
            #expect(withToken.status == 200)
            let shown = try await caller.call(admin, .get, "/v1/admin/keys/orders")
            #expect(try JSONDecoder().decode(KeyBody.self, from: shown.body).versions.map(\.version) == [1, 2])
            let retired = try await caller.call(admin, .post, "/v1/admin/keys/orders/versions/1/retire", json: [:])
            #expect(retired.status == 200, "\(String(decoding: retired.body, as: UTF8.self))")
            #expect(try JSONDecoder().decode(KeyBody.self, from: retired.body).versions.map(\.state) == ["retired", "active"])
            #expect(try await caller.call(admin, .get, "/v1/admin/status").status == 200)
        }
    }

    @Test func batchRecordsListEveryItemWithVersionContextAndResult() async throws {
        let fixture = try await ServerFixture.make()
        try await fixture.test { caller in
            let key = try await caller.dataKey(node1, context: ["table": "t1"])
            let batch = try await caller.call(node1, .post, "/v1/keys/orders/unwrap/batch", json: ["items": [
                ["wrapped": key.wrapped, "context": ["table": "t1"]],
                ["wrapped": key.wrapped, "context": ["table": "t2"]],
                ["wrapped": "!!"],
            ]])
            #expect(batch.status == 200)
        }
        let record = try #require(try await fixture.records(atLeast: 2).first { $0["action"] as? String == "unwrap_batch" })
        #expect(record["version"] == nil && record["context_digest"] == nil)
        let outcomes = try #require(record["outcomes"] as? [[String: Any]])
        #expect(outcomes.map { $0["result"] as? String } == ["ok", "denied", "failed"])
        #expect(outcomes.prefix(2).allSatisfy { ($0["version"] as? NSNumber)?.intValue == 1 })
        let digests = outcomes.prefix(2).compactMap { $0["context_digest"] as? String }
        #expect(digests.count == 2 && digests[0] != digests[1] && digests.allSatisfy { $0.count == 64 })
        #expect(outcomes[1]["code"] as? String == "invalid_input" && outcomes[2]["code"] as? String == "invalid_input")
        #expect(outcomes[2]["version"] == nil)
        #expect(fixture.server.events.snapshot["unwrap_authentication_failed"] == 1)
    }

    @Test func aCallerOverItsRateGets429AndOthersAreUnaffected() async throws {
        let fixture = try await ServerFixture.make(ratePerSecond: 0.001, burst: 5)
        try await fixture.test { caller in
            var statuses: [Int] = []
            for _ in 0..<8 { statuses.append(try await caller.call(node1, .post, "/v1/keys/orders/datakey", json: [:]).status) }
            #expect(statuses == [200, 200, 200, 200, 200, 429, 429, 429])
            let limited = try await caller.call(node1, .post, "/v1/keys/orders/datakey", json: [:])
            #expect(limited.headers[.retryAfter] == "1" && limited.errorCode == "rate_limited")
            #expect(try await caller.call(node2, .post, "/v1/keys/invoices/datakey", json: [:]).status == 200)
            // Failed admin attempts spend the budget as successful ones do.
            var adminStatuses: [Int] = []
            for _ in 0..<8 { adminStatuses.append(try await caller.call(node2, .get, "/v1/admin/status", token: "guess").status) }
            #expect(adminStatuses.prefix(4).allSatisfy { $0 == 403 } && adminStatuses.suffix(4).allSatisfy { $0 == 429 }, "\(adminStatuses)")
        }
        #expect((fixture.server.events.snapshot["rate_limited"] ?? 0) >= 8)
    }

    @Test func anUnavailableBackendIs503WithRetryAfterAndNotReadyThenRecovers() async throws {
        let fixture = try await ServerFixture.make()
        try await fixture.test { caller in
            fixture.base.provider.faults.down = true
            let refused = try await caller.call(node1, .post, "/v1/keys/orders/datakey", json: [:])
            #expect(refused.status == 503 && refused.errorCode == "unavailable" && refused.headers[.retryAfter] == "1")
            #expect(try await caller.call(nil, .get, "/v1/health/ready").status == 503)
            fixture.base.provider.faults.down = false
            #expect(try await caller.call(node1, .post, "/v1/keys/orders/datakey", json: [:]).status == 200)
            #expect(try await caller.call(nil, .get, "/v1/health/ready").status == 200)
        }
    }

    /// The audit writer under concurrent load: every request leaves its record, in one verifiable chain, with
    /// records committed in groups (fewer fsyncs than records).
    @Test func twentyThousandAuditedRequestsFromSixteenTasksLeaveTwentyThousandRecords() async throws {
        let fixture = try await ServerFixture.make(ratePerSecond: 1_000_000, burst: 1_000_000)
        let perTask = 1250
        let failures = try await fixture.test { caller in
            try await withThrowingTaskGroup(of: Int.self) { group in
                for _ in 0..<16 {
                    group.addTask {
                        var failed = 0
                        for _ in 0..<perTask where try await caller.call(node1, .post, "/v1/keys/orders/datakey", raw: Data("{}".utf8)).status != 200 {
                            failed += 1
                        }
                        return failed
                    }
                }
                return try await group.reduce(0, +)
            }
        }
        #expect(failures == 0)
        let statistics = fixture.base.audit.statistics
        await fixture.base.audit.close()
        let records = try await fixture.records(atLeast: 16 * perTask).filter { $0["action"] as? String == "datakey" }
        #expect(records.count == 16 * perTask)
        #expect(statistics.batches < statistics.records, "group commit: \(statistics.batches) fsyncs for \(statistics.records) records")
        let publicKey = try String(contentsOfFile: fixture.base.auditPath + ".pub.pem", encoding: .utf8)
        let verified = try AuditVerifier(publicKeyPEM: publicKey).verify(files: [fixture.base.auditPath])
        #expect(verified.ok, "\(String(describing: verified.problem))")
    }
}
