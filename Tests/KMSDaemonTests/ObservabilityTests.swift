import AsyncHTTPClient
import Crypto
import Foundation
import KMSAPI
import KMSAudit
import KMSTestSupport
import NIOCore
import NIOHTTP1
import Testing

extension RunningKMSD {
    /// Waits until the audit log holds `count` records matching `filter` (refusals are written without waiting).
    func waitForAudit(_ count: Int, timeout: Double = 5, where filter: ([String: Any]) -> Bool) async throws -> [[String: Any]] {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            let matching = try auditRecords().filter(filter)
            if matching.count >= count || Date() > deadline { return matching }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    func metricsText() async throws -> String {
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        defer { Task { try? await client.shutdown() } }
        let response = try await client.execute(HTTPClientRequest(url: "http://127.0.0.1:\(metricsPort)/metrics"), timeout: .seconds(10))
        #expect(response.status.code == 200)
        return String(buffer: try await response.body.collect(upTo: 4 << 20))
    }
}

/// Runs `body` and shuts the clients down whatever happens (a client left running aborts the test process).
func using<T>(_ clients: [HTTPClient], _ body: () async throws -> T) async throws -> T {
    do {
        let value = try await body()
        for client in clients { try? await client.shutdown() }
        return value
    } catch {
        for client in clients { try? await client.shutdown() }
        throw error
    }
}

/// The value of one sample line (`name{labels} value`) in Prometheus text, or nil.
func sample(_ text: String, _ name: String, _ labels: String) -> Double? {
    let prefix = labels.isEmpty ? name + " " : "\(name){\(labels)} "
    return text.split(separator: "\n").first { $0.hasPrefix(prefix) }.flatMap { Double($0.dropFirst(prefix.count)) }
}

@Suite("Audit and metrics", .serialized)
struct ObservabilityTests {
    @Test func anUnwritableAuditLogRefusesKeyOperationsWhileHealthAndMetricsAnswer() async throws {
        let kmsd = try await RunningKMSD.start()
        let node = try kmsd.client("node1")
        try await using([node]) { try await refuseAndRecover(kmsd, node) }
        await kmsd.stop()
        let verified = try AuditVerifier(publicKeyPEM: String(contentsOfFile: kmsd.auditPath + ".pub.pem", encoding: .utf8)).verify(files: [kmsd.auditPath])
        #expect(verified.ok, "\(String(describing: verified.problem))")
    }

    func refuseAndRecover(_ kmsd: RunningKMSD, _ node: HTTPClient) async throws {
        #expect(try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 200)
        let aside = kmsd.auditPath + ".aside"
        try FileManager.default.moveItem(atPath: kmsd.auditPath, toPath: aside)
        try FileManager.default.createDirectory(atPath: kmsd.auditPath, withIntermediateDirectories: false)

        let refused = try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:]))
        #expect(refused.status == 503 && refused.errorCode == "audit_unavailable" && refused.retryAfter != nil)
        #expect(!String(decoding: refused.body, as: UTF8.self).contains("plaintext"))
        #expect(try await kmsd.call(node, "GET", "/v1/health/live").status == 200)
        #expect(try await kmsd.call(node, "GET", "/v1/health/ready").status == 503)
        let metrics = try await kmsd.metricsText()
        #expect(sample(metrics, "kmsd_audit_writable", "") == 0)
        #expect((sample(metrics, "kmsd_security_events_total", #"kind="audit_unavailable""#) ?? 0) >= 1)

        try FileManager.default.removeItem(atPath: kmsd.auditPath)
        try FileManager.default.moveItem(atPath: aside, toPath: kmsd.auditPath)
        #expect(try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 200)
        #expect(try await kmsd.call(node, "GET", "/v1/health/ready").status == 200)
    }

    @Test func metricsAreValidPrometheusTextAndCountersMove() async throws {
        let kmsd = try await RunningKMSD.start()
        let node = try kmsd.client("node1")
        let other = try kmsd.client("node2")
        try await using([node, other]) { try await moveCounters(kmsd, node, other) }
        await kmsd.stop()
    }

    func moveCounters(_ kmsd: RunningKMSD, _ node: HTTPClient, _ other: HTTPClient) async throws {
        let before = try await kmsd.metricsText()
        let datakeys = sample(before, "kmsd_requests_total", #"route="datakey",status="200""#) ?? 0
        for _ in 0..<3 { #expect(try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 200) }
        #expect(try await kmsd.call(other, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 403)
        let after = try await kmsd.metricsText()
        #expect(sample(after, "kmsd_requests_total", #"route="datakey",status="200""#) == datakeys + 3)
        #expect(sample(after, "kmsd_requests_total", #"route="datakey",status="403""#) == 1)
        #expect(sample(after, "kmsd_security_events_total", #"kind="forbidden""#) == 1)
        #expect(sample(after, "kmsd_provider_up", #"provider="hsm""#) == 1)
        #expect(sample(after, "kmsd_key_latest_version", #"key="orders""#) == 1)
        #expect((sample(after, "kmsd_key_seconds_to_next_rotation", #"key="orders""#) ?? 0) > 89 * 86400)
        #expect(sample(after, "kmsd_key_version_wraps", #"key="orders",version="1""#) == 3)
        #expect(after.contains("kmsd_request_duration_seconds_bucket{route=\"datakey\""))
        #expect(sample(after, "kmsd_audit_writable", "") == 1)
        // Every line is a comment or `name{labels} value`.
        let samplePattern = /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? -?[0-9.eE+-]+|NaN|[+-]Inf$/
        for line in after.split(separator: "\n") where !line.isEmpty {
            #expect(line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE ") || line.wholeMatch(of: samplePattern) != nil, "\(line)")
        }
    }

    @Test func checkpointsSignedByAKeyPairOnTheTokenVerifyWithTheExportedPublicKey() async throws {
        let kmsd = try await RunningKMSD.start(auditSigning: "{ hsm: hsm, label: kmsd-audit-test }")
        let node = try kmsd.client("node1")
        let statuses = try await using([node]) {
            var statuses: [Int] = []
            for _ in 0..<5 { statuses.append(try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status) }
            return statuses
        }
        #expect(statuses == [200, 200, 200, 200, 200])
        await kmsd.stop()
        let publicKey = try String(contentsOfFile: kmsd.auditPath + ".pub.pem", encoding: .utf8)
        let report = try AuditVerifier(publicKeyPEM: publicKey).verify(files: [kmsd.auditPath])
        #expect(report.ok && report.checkpoints >= 1, "\(String(describing: report.problem))")
        // A different key does not verify it.
        let other = try String(contentsOfFile: kmsd.directory.appendingPathComponent("audit-key.pem").path, encoding: .utf8)
        let otherPublic = try P256.Signing.PrivateKey(pemRepresentation: other).publicKey.pemRepresentation
        #expect(try AuditVerifier(publicKeyPEM: otherPublic).verify(files: [kmsd.auditPath]).problem?.message.contains("signature") == true)

        // kmsctl reads the public key from the token itself, without the exported file.
        let configuration = kmsd.directory.appendingPathComponent("kmsd.yaml").path
        let kmsctl = BuiltExecutable("kmsctl")
        let fromHSM = try kmsctl.run(["audit", "verify", "--public-key-from-hsm", configuration, kmsd.auditPath])
        #expect(fromHSM.status == 0, "\(fromHSM.output)")
        #expect(fromHSM.output.contains("OK:") && fromHSM.output.contains("signed checkpoint"))
        let both = try kmsctl.run(["audit", "verify", "--public-key-from-hsm", configuration, "--no-signatures", kmsd.auditPath])
        #expect(both.status == 64)
    }

    @Test func aPublicKeyFromTheHSMNeedsAnHSMSigningKey() async throws {
        let kmsd = try await RunningKMSD.start()
        await kmsd.stop()
        let configuration = kmsd.directory.appendingPathComponent("kmsd.yaml").path
        let result = try BuiltExecutable("kmsctl").run(["audit", "verify", "--public-key-from-hsm", configuration, kmsd.auditPath])
        #expect(result.status == 64)
        #expect(result.output.contains("does not sign audit checkpoints with a key on an HSM"))
    }
}
