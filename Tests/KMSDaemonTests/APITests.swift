import AsyncHTTPClient
import Foundation
import KMSAPI
import KMSDaemon
import KMSDev
import KMSTestSupport
import NIOSSL
import Testing

/// kmsd in process over mutual TLS on loopback, against SoftHSM.
@Suite("kmsd API over mTLS")
struct APITests {
    func with(_ body: (RunningKMSD) async throws -> Void) async throws {
        let kmsd = try await RunningKMSD.start()
        do {
            try await body(kmsd)
        } catch {
            await kmsd.stop()
            throw error
        }
        await kmsd.stop()
    }

    func shutdown(_ clients: HTTPClient...) async {
        for client in clients { try? await client.shutdown() }
    }

    @Test func datakeyAndUnwrapRoundTripForAnAllowedNode() async throws {
        try await with { kmsd in
            let node = try kmsd.client("node1")
            let issued = try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json(["context": ["table": "t1"]]))
            #expect(issued.status == 200)
            let datakey = try JSONDecoder().decode(DataKeyResponse.self, from: issued.body)
            #expect(datakey.key == "orders")
            #expect(datakey.version == 1)
            #expect(Data(base64Encoded: datakey.plaintext)?.count == 32)
            let unwrapped = try await kmsd.call(node, "POST", "/v1/keys/orders/unwrap",
                                                body: kmsd.json(["wrapped": datakey.wrapped, "context": ["table": "t1"]]))
            #expect(unwrapped.status == 200)
            #expect(try JSONDecoder().decode(UnwrapResponse.self, from: unwrapped.body).plaintext == datakey.plaintext)
            let rewrapped = try await kmsd.call(node, "POST", "/v1/keys/orders/rewrap",
                                                body: kmsd.json(["wrapped": datakey.wrapped, "context": ["table": "t1"]]))
            #expect(rewrapped.status == 200)
            let batch = try await kmsd.call(node, "POST", "/v1/keys/orders/unwrap/batch", body: kmsd.json(["items": [
                ["wrapped": datakey.wrapped, "context": ["table": "t1"]], ["wrapped": datakey.wrapped, "context": ["table": "t2"]],
            ]]))
            #expect(batch.status == 200)
            let items = try JSONDecoder().decode(BatchUnwrapResponse.self, from: batch.body).items
            #expect(items.count == 2)
            #expect(items[0].result?.plaintext == datakey.plaintext)
            #expect(items[1].error?.code == "invalid_input")
            await shutdown(node)
        }
    }

    @Test(arguments: ["none", "foreign", "expired", "tls12"])
    func connectionsWithoutAValidCertificateOrOldTLSAreRefused(_ variant: String) async throws {
        try await with { kmsd in
            let client = switch variant {
            case "none": try kmsd.client(nil)
            case "tls12": try kmsd.client("node1", maxTLS: .tlsv12)
            default: try kmsd.client(variant)
            }
            var refused = false
            do {
                let reply = try await kmsd.call(client, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:]), timeout: 3)
                refused = reply.status == 401 || reply.status == 403
            } catch {
                refused = true  // the handshake failed
            }
            #expect(refused, "\(variant) was served")
            // The refused handshake is audited as an authentication failure, in the summary written each interval.
            try await kmsd.flushHandshakeFailures()
            let audited = try await kmsd.waitForAudit(1) { $0["type"] as? String == "authentication" && $0["action"] as? String == "tls_handshake" }
            #expect(!audited.isEmpty && audited.allSatisfy { $0["result"] as? String == "denied" && ($0["items"] as? Int ?? 0) >= 1 },
                    "\(variant): \(audited.count)")
            // The server is still healthy for a good client.
            let good = try kmsd.client("node1")
            #expect(try await kmsd.call(good, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 200)
            await shutdown(client, good)
        }
    }

    /// A resumed TLS session would skip the handshake's certificate checks; kmsd issues no tickets (openssl shows
    /// every handshake message with -msg).
    @Test func noTLSSessionTicketsAreIssued() async throws {
        try await with { kmsd in
            let directory = kmsd.directory.path
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
            process.arguments = ["s_client", "-connect", "127.0.0.1:\(kmsd.port)", "-tls1_3", "-msg", "-ign_eof",
                                 "-CAfile", "\(directory)/ca.pem", "-cert", "\(directory)/node1.pem", "-key", "\(directory)/node1-key.pem"]
            let input = Pipe()
            let output = Pipe()
            process.standardInput = input
            process.standardOutput = output
            process.standardError = output
            try process.run()
            input.fileHandleForWriting.write(Data("GET /v1/health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".utf8))
            try await Task.sleep(for: .seconds(1))
            try input.fileHandleForWriting.close()
            let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            #expect(text.contains("HTTP/1.1 200"), "\(text.suffix(500))")
            #expect(!text.contains("NewSessionTicket"))
        }
    }

    @Test func anUnavailableHSMGives503WithRetryAfterAndReadinessFalseThenRecovers() async throws {
        try await with { kmsd in
            let node = try kmsd.client("node1")
            let admin = try kmsd.client("admin")
            try kmsd.shim.inject(.down)
            let refused = try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:]))
            #expect(refused.status == 503)
            #expect(refused.retryAfter == "1")
            #expect(refused.errorCode == "unavailable")
            #expect(try await kmsd.call(admin, "GET", "/v1/health/ready").status == 503)
            try kmsd.shim.clear()
            #expect(try await eventually(within: .seconds(3)) {
                try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 200
            })
            #expect(try await kmsd.call(admin, "GET", "/v1/health/ready").status == 200)
            await shutdown(node, admin)
        }
    }
}

@Suite("kmsctl against kmsd")
struct KMSCtlTests {
    func kmsctl(_ kmsd: RunningKMSD, _ arguments: [String]) throws -> (Int32, String) {
        let directory = kmsd.directory.path
        return try BuiltExecutable("kmsctl").run(
            ["--server", "https://localhost:\(kmsd.port)", "--ca", "\(directory)/ca.pem",
             "--cert", "\(directory)/admin.pem", "--key", "\(directory)/admin-key.pem"] + arguments)
    }

    @Test func rotateThenShowAsJSONAndOldKeysStillUnwrap() async throws {
        let kmsd = try await RunningKMSD.start()
        let node = try kmsd.client("node1")
        let before = try JSONDecoder().decode(
            DataKeyResponse.self, from: try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).body)

        let (rotated, rotateText) = try kmsctl(kmsd, ["--json", "rotate", "orders", "--reason", "test"])
        #expect(rotated == 0, "\(rotateText)")
        let (shown, json) = try kmsctl(kmsd, ["keys", "show", "orders", "--json"])
        #expect(shown == 0)
        let body = try JSONDecoder().decode(KeyBody.self, from: Data(json.utf8))
        #expect(body.versions.map(\.version) == [1, 2])
        let (listed, table) = try kmsctl(kmsd, ["keys", "list"])
        #expect(listed == 0)
        #expect(table.contains("orders") && table.contains("invoices"))
        let (missing, _) = try kmsctl(kmsd, ["keys", "show", "nope"])
        #expect(missing == 1)

        let unwrapped = try await kmsd.call(node, "POST", "/v1/keys/orders/unwrap", body: kmsd.json(["wrapped": before.wrapped]))
        #expect(try JSONDecoder().decode(UnwrapResponse.self, from: unwrapped.body).plaintext == before.plaintext)
        let after = try JSONDecoder().decode(
            DataKeyResponse.self, from: try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).body)
        #expect(after.version == 2)
        try? await node.shutdown()
        await kmsd.stop()
    }
}

extension KMSCtlTests {
    @Test func rotationWorkflowDryRunScheduleVersionsRetireAndRewrapPlan() async throws {
        let kmsd = try await RunningKMSD.start()
        let node = try kmsd.client("node1")
        let old = try JSONDecoder().decode(
            DataKeyResponse.self, from: try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).body)

        let (dryStatus, dryJSON) = try kmsctl(kmsd, ["rotate", "orders", "--dry-run", "--json"])
        #expect(dryStatus == 0, "\(dryJSON)")
        let dry = try JSONDecoder().decode(RotateResponse.self, from: Data(dryJSON.utf8))
        #expect(dry.dryRun && dry.previousVersion == 1 && dry.version == 2 && dry.nextRotationReason == "period")
        #expect(dry.versions.map(\.version) == [1], "a dry run changes nothing")

        let (rotated, rotatedJSON) = try kmsctl(kmsd, ["rotate", "orders", "--reason", "drill", "--json"])
        #expect(rotated == 0, "\(rotatedJSON)")
        let rotation = try JSONDecoder().decode(RotateResponse.self, from: Data(rotatedJSON.utf8))
        #expect(!rotation.dryRun && rotation.version == 2 && rotation.versions.map(\.version) == [1, 2])

        let (scheduled, scheduleJSON) = try kmsctl(kmsd, ["schedule", "--json"])
        #expect(scheduled == 0)
        let schedule = try JSONDecoder().decode(ScheduleBody.self, from: Data(scheduleJSON.utf8))
        let entry = try #require(schedule.keys.first { $0.key == "orders" })
        #expect(entry.latestVersion == 2 && entry.periodSeconds == 90 * 86400 && entry.nextRotationReason == "period")
        #expect(schedule.keys.first { $0.key == "invoices" }?.nextRotationReason == nil)
        let (_, scheduleTable) = try kmsctl(kmsd, ["schedule"])
        #expect(scheduleTable.contains("NEXT ROTATION") && scheduleTable.contains("orders"))

        // The old DEK is read again: version 1 is in use, so retiring it is refused until forced.
        let unwrapped = try await kmsd.call(node, "POST", "/v1/keys/orders/unwrap", body: kmsd.json(["wrapped": old.wrapped]))
        #expect(unwrapped.status == 200)
        let (listed, versionsJSON) = try kmsctl(kmsd, ["versions", "orders", "--json"])
        #expect(listed == 0)
        let versions = try JSONDecoder().decode(VersionsBody.self, from: Data(versionsJSON.utf8))
        #expect(versions.versions.map(\.version) == [1, 2])
        #expect(versions.versions.first?.wraps == 1 && versions.versions.first?.unwraps == 1 && versions.versions.first?.inUse == true)
        #expect(versions.versions.last?.wrapping == true)

        let (planned, planText) = try kmsctl(kmsd, ["rewrap-plan", "orders"])
        #expect(planned == 0 && planText.contains("rewrap: still unwraps data"))
        let (refused, refusal) = try kmsctl(kmsd, ["retire", "orders", "--version", "1"])
        #expect(refused == 1)
        #expect(refusal.contains("last used to unwrap"))
        let (forced, forcedJSON) = try kmsctl(kmsd, ["retire", "orders", "--version", "1", "--force", "--json"])
        #expect(forced == 0, "\(forcedJSON)")
        let retired = try JSONDecoder().decode(KeyBody.self, from: Data(forcedJSON.utf8))
        #expect(retired.versions.first?.state == "retired")
        // Retired versions still unwrap.
        #expect(try await kmsd.call(node, "POST", "/v1/keys/orders/unwrap", body: kmsd.json(["wrapped": old.wrapped])).status == 200)
        try? await node.shutdown()
        await kmsd.stop()
    }
}

@Suite("Reload (SIGHUP)")
struct ReloadTests {
    @Test func aNewCRLAndCAApplyWithoutDroppingGoodClients() async throws {
        let kmsd = try await RunningKMSD.start()
        let directory = kmsd.directory
        // A second CA and a node certificate from it: refused until the CA joins the bundle.
        let second = try DevPKI(name: "second CA")
        try DevPKI.write(try second.issue(.client(uri: "spiffe://test/storage/node-1", commonName: "node-1b")), name: "node1b", to: directory)
        let newcomer = try kmsd.client("node1b")
        /// Whether a datakey request from `client` is refused (an error status, or a failed handshake).
        func refused(_ client: HTTPClient) async -> Bool {
            do {
                return try await kmsd.call(client, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:]), timeout: 3).status >= 400
            } catch {
                return true
            }
        }
        #expect(await refused(newcomer))

        // A good client with an open keep-alive connection before the reload.
        let good = try kmsd.client("node2")
        #expect(try await kmsd.call(good, "POST", "/v1/keys/invoices/datakey", body: kmsd.json([:])).status == 200)
        let revoked = try kmsd.client("node1")
        #expect(try await kmsd.call(revoked, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 200)

        let node1 = try String(contentsOf: directory.appendingPathComponent("node1.pem"), encoding: .utf8)
        try Data(try kmsd.pki.revocationList(revoking: [node1]).utf8).write(to: directory.appendingPathComponent("crl.pem"))
        let bundle = try String(contentsOf: directory.appendingPathComponent("ca.pem"), encoding: .utf8) + "\n" + second.caPEM
        try Data(bundle.utf8).write(to: directory.appendingPathComponent("bundle.pem"))

        // A reload whose CRL does not verify changes nothing at all: not the CA bundle either (the new CA's node stays
        // refused on a fresh connection).
        try Data("not a crl".utf8).write(to: directory.appendingPathComponent("bad.pem"))
        #expect(throws: (any Error).self) { try kmsd.reload(clientCA: "bundle.pem", crl: "bad.pem") }
        let stillOutside = try kmsd.client("node1b")
        #expect(await refused(stillOutside))
        try? await stillOutside.shutdown()
        #expect(try await kmsd.call(revoked, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 200)

        do {
            try kmsd.reload(clientCA: "bundle.pem", crl: "crl.pem")
        } catch {
            Issue.record("reload failed: \(error)")
            for client in [newcomer, good, revoked] { try? await client.shutdown() }
            await kmsd.stop()
            return
        }

        let refused = try await kmsd.call(revoked, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:]))
        #expect(refused.status == 401)
        #expect(refused.errorCode == "unauthenticated")
        #expect(try await kmsd.call(good, "POST", "/v1/keys/invoices/datakey", body: kmsd.json([:])).status == 200)
        let fresh = try kmsd.client("node1b")
        #expect(try await kmsd.call(fresh, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 200)

        // A broken CRL is refused and changes nothing.
        #expect(throws: (any Error).self) { try kmsd.reload(clientCA: "bundle.pem", crl: "bad.pem") }
        #expect(try await kmsd.call(revoked, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 401)
        for client in [newcomer, good, revoked, fresh] { try? await client.shutdown() }
        await kmsd.stop()
    }
}

@Suite("Limits")
struct LimitTests {
    @Test func connectionsBeyondTheLimitAreClosed() async throws {
        let kmsd = try await RunningKMSD.start(maxConnections: 1)
        let first = try kmsd.client("node1")
        #expect(try await kmsd.call(first, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 200)
        // The first client keeps its connection open (keep-alive); a second one is refused.
        let second = try kmsd.client("node2")
        var refused = false
        do {
            refused = try await kmsd.call(second, "POST", "/v1/keys/invoices/datakey", body: kmsd.json([:]), timeout: 3).status != 200
        } catch {
            refused = true
        }
        #expect(refused)
        #expect(try await kmsd.call(first, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 200)
        for client in [first, second] { try? await client.shutdown() }
        await kmsd.stop()
    }
}
