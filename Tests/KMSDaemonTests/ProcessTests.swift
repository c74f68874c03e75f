import AsyncHTTPClient
import Foundation
import KMSAPI
import KMSAudit
import KMSTestSupport
import NIOCore
import NIOHTTP1
import NIOSSL
import Testing
import Glibc

/// kmsd as operators run it: its own process, configured from a file, stopped with SIGTERM.
@Suite("kmsd as a process", .serialized)
struct ProcessTests {
    @Test func aFullRunLeavesNoSecretInTheLogsOrTheAuditLogAndTheAuditLogVerifies() async throws {
        let (directory, token) = try KMSDProcess.prepare("process")
        let adminToken = "admin-token-\(UUID().uuidString)"
        let yaml = """
            mode: development
            data_dir: data
            log_level: debug
            log_format: json
            listen: { api: "127.0.0.1:0", metrics: "127.0.0.1:0" }
            tls: { cert: server.pem, key: server-key.pem, client_ca: ca.pem, min_version: "1.3" }
            \(KMSDProcess.hsmAndOrdersKey(token))
            admin: { identities: ["cn:security-*"], token_hashes: ["\(sha256Hex(adminToken))"] }
            audit: { file: audit/audit.jsonl, sign: { file: audit-key.pem } }
            """
        let kmsd = try await KMSDProcess.start(directory: directory, yaml: yaml)
        let process = kmsd.process
        defer { if process.isRunning { process.terminate() } }
        let apiPort = kmsd.port
        let log = kmsd.log
        var secrets = [token.userPIN, token.securityOfficerPIN, adminToken]

        let node = try KMSDProcess.client("node1", in: directory)
        let admin = try KMSDProcess.client("admin", in: directory)
        func call(_ client: HTTPClient, _ method: HTTPMethod, _ path: String, _ body: [String: Any]? = nil,
                  bearer: String? = nil) async throws -> (Int, [String: Any]) {
            try await KMSDProcess.call(client, port: apiPort, method, path, body, bearer: bearer)
        }
        let statuses = try await using([node, admin]) {
            var statuses: [Int] = []
            statuses.append(try await call(admin, .POST, "/v1/admin/keys", ["name": "orders"]).0)
            for index in 0..<3 {
                let (status, key) = try await call(node, .POST, "/v1/keys/orders/datakey", ["context": ["tenant": "t\(index)"]])
                statuses.append(status)
                let plaintext = try #require(key["plaintext"] as? String)
                secrets.append(plaintext)
                secrets.append(Data(base64Encoded: plaintext).map { $0.map { String(format: "%02x", $0) }.joined() } ?? plaintext)
                let wrapped = try #require(key["wrapped"] as? String)
                statuses.append(try await call(node, .POST, "/v1/keys/orders/unwrap", ["wrapped": wrapped, "context": ["tenant": "t\(index)"]]).0)
                statuses.append(try await call(node, .POST, "/v1/keys/orders/rewrap", ["wrapped": wrapped, "context": ["tenant": "t\(index)"]]).0)
            }
            // A storage node's certificate with the admin token is an administrator; with another token it is not.
            statuses.append(try await call(node, .GET, "/v1/admin/status", bearer: adminToken).0)
            statuses.append(try await call(node, .GET, "/v1/admin/status", bearer: "not-the-token").0)
            statuses.append(try await call(admin, .POST, "/v1/admin/keys/orders/rotate", ["reason": "drill"]).0)
            return statuses
        }
        #expect(statuses == [201] + Array(repeating: 200, count: 9) + [200, 403, 200])

        process.terminate()  // SIGTERM
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)

        let logText = try String(contentsOf: log, encoding: .utf8)
        let auditPath = directory.appendingPathComponent("audit/audit.jsonl").path
        let auditText = try String(contentsOfFile: auditPath, encoding: .utf8)
        #expect(logText.contains("kmsd serving") && auditText.contains("\"key_access\""))
        for secret in secrets {
            #expect(!logText.contains(secret), "a secret is in the log")
            #expect(!auditText.contains(secret), "a secret is in the audit log")
        }
        // log_format json: every line is a JSON object.
        for line in logText.split(separator: "\n") {
            #expect((try? JSONSerialization.jsonObject(with: Data(line.utf8))) is [String: Any], "\(line.prefix(200))")
        }
        // kmsctl verifies the log kmsd closed on SIGTERM.
        let (verified, output) = try BuiltExecutable("kmsctl").run(["audit", "verify", "--public-key", auditPath + ".pub.pem", auditPath])
        #expect(verified == 0 && output.contains("OK:"), "\(output)")
        let records = auditText.split(separator: "\n").compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
        #expect(records.filter { $0["type"] as? String == "key_access" }.count == 9)
        #expect(records.contains { $0["action"] as? String == "start" } && records.contains { $0["action"] as? String == "stop" })
    }

    /// A SIGHUP with a typo that overflows (a duration of 1e300 s, a cap beyond Int) is a failed reload: kmsd keeps
    /// serving with the running configuration, and a corrected file then reloads.
    @Test func aReloadWithAnOverflowingValueIsRefusedAndKMSDKeepsRunning() async throws {
        let (directory, token) = try KMSDProcess.prepare("sighup")
        let yaml = KMSDProcess.basicYAML(token)
        let kmsd = try await KMSDProcess.start(directory: directory, yaml: yaml)
        defer { _ = kmsd.stop() }
        let config = directory.appendingPathComponent("kmsd.yaml")
        func logText() -> String { (try? String(contentsOf: kmsd.log, encoding: .utf8)) ?? "" }
        func waitFor(_ text: String, count: Int) async throws -> Bool {
            for _ in 0..<100 {
                if logText().components(separatedBy: text).count - 1 >= count { return true }
                try await Task.sleep(for: .milliseconds(50))
            }
            return false
        }
        for (index, typo) in ["limits: { request_timeout: 1e300s }", "limits: { max_connections: 99999999999999999999 }",
                              "limits: { burst: 10000000000000 }"].enumerated() {
            try Data((yaml + "\n" + typo).utf8).write(to: config)
            kill(kmsd.process.processIdentifier, SIGHUP)
            #expect(try await waitFor("reload failed", count: index + 1), "no refusal logged for \(typo)")
            #expect(kmsd.process.isRunning, "kmsd died on \(typo)")
        }
        try Data((yaml + "\nlimits: { request_timeout: 5s }").utf8).write(to: config)
        kill(kmsd.process.processIdentifier, SIGHUP)
        #expect(try await waitFor("configuration reloaded", count: 1))
        #expect(kmsd.process.isRunning)
        #expect(kmsd.stop() == 0)
    }
}
