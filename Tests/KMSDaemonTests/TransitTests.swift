import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import KMSDev
import KMSCore
import KMSDaemon
import KMSTestSupport
import Testing

/// kmsd's Vault transit listener, in process over SoftHSM behind the fault shim: the same envelope as kmsd's API, the
/// authentication rules, and fail-closed. (The hvac suite checks the wire behaviour: ci/transit-conformance.)
@Suite("Transit front end", .serialized)
struct TransitTests {
    static let nodeToken = "node-1-token-\(UUID().uuidString)"
    static let shortToken = "short-token-\(UUID().uuidString)"

    /// Transit names the two keys; node 1 has a token that never expires and one that lives a second; cert logins
    /// live two seconds.
    static let transit = """
          keys: { orders: orders, invoices: invoices }
          tokens:
            - { sha256: "\(sha256Hex(nodeToken))", identity: "uri:spiffe://test/storage/node-1" }
            - { sha256: "\(sha256Hex(shortToken))", identity: "uri:spiffe://test/storage/node-1", ttl: 1s }
          login_ttl: 2s
        """

    func b64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

    func transitCall(_ kmsd: RunningKMSD, _ client: HTTPClient, _ method: String, _ path: String, _ body: [String: Any]? = nil,
                     token: String? = nil) async throws -> RunningKMSD.Reply {
        try await kmsd.call(client, method, "/v1/" + path, body: body.map(kmsd.json), headers: token.map { [("X-Vault-Token", $0)] } ?? [],
                            port: kmsd.transitPort)
    }

    func errors(_ reply: RunningKMSD.Reply) -> [String] { reply.json["errors"] as? [String] ?? [] }
    func data(_ reply: RunningKMSD.Reply) -> [String: Any] { reply.json["data"] as? [String: Any] ?? [:] }

    @Test func aTransitCiphertextIsAKMSDEnvelopeBothWays() async throws {
        let kmsd = try await RunningKMSD.start(transit: Self.transit)
        let node = try kmsd.client("node1")

        // A data key through transit (certificate authentication), opened through kmsd's API with the mapped context.
        let made = try await transitCall(kmsd, node, "POST", "transit/datakey/plaintext/orders", ["context": b64("tenant-7")])
        #expect(made.status == 200)
        let ciphertext = try #require(data(made)["ciphertext"] as? String)
        #expect(ciphertext.hasPrefix("vault:v1:"))
        let envelope = String(ciphertext.dropFirst("vault:v1:".count))
        let opened = try await kmsd.call(node, "POST", "/v1/keys/orders/unwrap", body: kmsd.json([
            "wrapped": envelope, "context": ["transit.context": b64("tenant-7")],
        ]))
        #expect(opened.status == 200)
        #expect(opened.json["plaintext"] as? String == data(made)["plaintext"] as? String)
        // Without the context, or with another, kmsd's API refuses it as transit would.
        let unbound = try await kmsd.call(node, "POST", "/v1/keys/orders/unwrap", body: kmsd.json(["wrapped": envelope]))
        #expect(unbound.status == 400)

        // And the other way: a data key from kmsd's API, with both transit pairs, decrypted through transit.
        let native = try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([
            "context": ["transit.context": b64("x"), "transit.associated_data": b64("y")],
        ]))
        #expect(native.status == 200)
        let wrapped = try #require(native.json["wrapped"] as? String)
        let decrypted = try await transitCall(kmsd, node, "POST", "transit/decrypt/orders", [
            "ciphertext": "vault:v1:" + wrapped, "context": b64("x"), "associated_data": b64("y"),
        ])
        #expect(decrypted.status == 200)
        #expect(data(decrypted)["plaintext"] as? String == native.json["plaintext"] as? String)
        let wrong = try await transitCall(kmsd, node, "POST", "transit/decrypt/orders", [
            "ciphertext": "vault:v1:" + wrapped, "context": b64("x"), "associated_data": b64("z"),
        ])
        #expect(wrong.status == 400)
        #expect(errors(wrong) == ["cipher: message authentication failed"])

        // 4 KiB encrypts and decrypts; one byte more is refused with the limit.
        let big = Data(repeating: 0x5A, count: Envelope.maxPlaintextLength).base64EncodedString()
        let sealed = try await transitCall(kmsd, node, "POST", "transit/encrypt/orders", ["plaintext": big])
        #expect(sealed.status == 200)
        let back = try await transitCall(kmsd, node, "POST", "transit/decrypt/orders", ["ciphertext": data(sealed)["ciphertext"] ?? ""])
        #expect(data(back)["plaintext"] as? String == big)
        let tooBig = Data(repeating: 0x5A, count: Envelope.maxPlaintextLength + 1).base64EncodedString()
        let refused = try await transitCall(kmsd, node, "POST", "transit/encrypt/orders", ["plaintext": tooBig])
        #expect(refused.status == 400)
        #expect(errors(refused).first?.contains("at most \(Envelope.maxPlaintextLength)") == true)

        // Every request left one record, marked as transit's; the API's are not.
        try? await node.shutdown()
        await kmsd.stop()
        let records = try kmsd.auditRecords().filter { ["datakey", "decrypt", "encrypt", "unwrap"].contains($0["action"] as? String) }
        #expect(records.map { $0["frontend"] as? String } == ["transit", nil, nil, nil, "transit", "transit", "transit", "transit", "transit"])
        #expect(records.first?["identity"] as? String == "uri:spiffe://test/storage/node-1")
        #expect(records.first?["context_digest"] as? String != nil)
    }

    @Test func tokensAndCertificatesAreBoundToIdentities() async throws {
        let kmsd = try await RunningKMSD.start(transit: Self.transit)
        let anonymous = try kmsd.client(nil)
        let node2 = try kmsd.client("node2")
        let body: [String: Any] = ["plaintext": b64("secret")]

        // No certificate and no token: 403 in Vault's shape, and no audit record (only a count).
        let recordsBefore = try kmsd.auditRecords().count
        let none = try await transitCall(kmsd, anonymous, "POST", "transit/encrypt/orders", body)
        #expect(none.status == 403)
        #expect(errors(none).first?.contains("permission denied") == true)
        let unknown = try await transitCall(kmsd, anonymous, "POST", "transit/encrypt/orders", body, token: "not-a-token")
        #expect(unknown.status == 403)
        #expect(errors(unknown).first?.contains("invalid token") == true)
        #expect(kmsd.securityEvents["transit_unauthenticated"] == 1)
        #expect(kmsd.securityEvents["transit_invalid_token"] == 1)

        // A token bound to node 1 uses node 1's key and not node 2's.
        let own = try await transitCall(kmsd, anonymous, "POST", "transit/encrypt/orders", body, token: Self.nodeToken)
        #expect(own.status == 200)
        let foreign = try await transitCall(kmsd, anonymous, "POST", "transit/encrypt/invoices", body, token: Self.nodeToken)
        #expect(foreign.status == 403)
        #expect(errors(foreign).first?.contains("permission denied") == true)
        // Nor can it act as an administrator.
        let rotate = try await transitCall(kmsd, anonymous, "POST", "transit/keys/orders/rotate", token: Self.nodeToken)
        #expect(rotate.status == 403)

        // The short token works until its TTL, then it is an invalid token.
        #expect(try await transitCall(kmsd, anonymous, "POST", "transit/encrypt/orders", body, token: Self.shortToken).status == 200)
        let lookup = try await transitCall(kmsd, anonymous, "GET", "auth/token/lookup-self", token: Self.shortToken)
        #expect((data(lookup)["ttl"] as? Int).map { $0 <= 1 } == true)
        #expect(data(lookup)["id"] as? String == "", "lookup-self never echoes the token")
        try await Task.sleep(for: .milliseconds(1200))
        let expired = try await transitCall(kmsd, anonymous, "POST", "transit/encrypt/orders", body, token: Self.shortToken)
        #expect(expired.status == 403)
        #expect(errors(expired).first?.contains("invalid token") == true)

        // A certificate login gives a token for node 2's identity: usable without the certificate, until its TTL.
        let login = try await transitCall(kmsd, node2, "POST", "auth/cert/login")
        #expect(login.status == 200)
        let auth = try #require(login.json["auth"] as? [String: Any])
        let issued = try #require(auth["client_token"] as? String)
        #expect(auth["lease_duration"] as? Int == 2)
        #expect((auth["metadata"] as? [String: Any])?["identity"] as? String == "uri:spiffe://test/storage/node-2")
        #expect(try await transitCall(kmsd, anonymous, "POST", "transit/encrypt/invoices", body, token: issued).status == 200)
        #expect(try await transitCall(kmsd, anonymous, "POST", "transit/encrypt/orders", body, token: issued).status == 403)
        // Logging in needs a certificate.
        #expect(try await transitCall(kmsd, anonymous, "POST", "auth/cert/login").status == 403)
        try await Task.sleep(for: .milliseconds(2200))
        let late = try await transitCall(kmsd, anonymous, "POST", "transit/encrypt/invoices", body, token: issued)
        #expect(late.status == 403)
        #expect(errors(late).first?.contains("invalid token") == true)

        try? await anonymous.shutdown()
        try? await node2.shutdown()
        await kmsd.stop()
        let records = try kmsd.auditRecords()
        let transitRecords = records.dropFirst(recordsBefore).filter { $0["frontend"] as? String == "transit" }
        // Authenticated requests only: own, foreign, rotate, short, lookup, login, invoices, orders by the login token.
        #expect(transitRecords.count == 8)
        #expect(transitRecords.filter { $0["result"] as? String == "denied" }.count == 3)
    }

    @Test func theHSMDownIsA503InVaultsShapeAndRecoversWithoutRestart() async throws {
        let kmsd = try await RunningKMSD.start(transit: Self.transit)
        let node = try kmsd.client("node1")
        let body: [String: Any] = ["plaintext": b64("secret")]
        let before = try await transitCall(kmsd, node, "POST", "transit/encrypt/orders", body)
        #expect(before.status == 200)

        try kmsd.shim.inject(.down)
        let down = try await transitCall(kmsd, node, "POST", "transit/encrypt/orders", body)
        #expect(down.status == 503)
        #expect(down.retryAfter == "1")
        #expect(errors(down).count == 1)
        let decrypt = try await transitCall(kmsd, node, "POST", "transit/decrypt/orders", ["ciphertext": data(before)["ciphertext"] ?? ""])
        #expect(decrypt.status == 503)
        let health = try await transitCall(kmsd, node, "GET", "sys/health")
        #expect(health.status == 503)
        #expect(health.json["sealed"] as? Bool == true)

        try kmsd.shim.clear()
        #expect(try await eventually(within: .seconds(5)) {
            (try? await transitCall(kmsd, node, "POST", "transit/decrypt/orders", ["ciphertext": data(before)["ciphertext"] ?? ""]))?.status == 200
        })
        #expect(try await transitCall(kmsd, node, "GET", "sys/health").status == 200)
        try? await node.shutdown()
        await kmsd.stop()
    }

    @Test func aReloadReplacesTheTransitKeysAndTokens() async throws {
        let kmsd = try await RunningKMSD.start(transit: Self.transit)
        let anonymous = try kmsd.client(nil)
        let body: [String: Any] = ["plaintext": b64("secret")]
        #expect(try await transitCall(kmsd, anonymous, "POST", "transit/encrypt/orders", body, token: Self.nodeToken).status == 200)
        let added = "added-\(UUID().uuidString)"
        // The node token is removed, another added; `orders` is served under a second name as well.
        try kmsd.reload(crl: nil, transit: """
              keys: { orders: orders, orders-2: orders }
              tokens:
                - { sha256: "\(sha256Hex(added))", identity: "uri:spiffe://test/storage/node-1" }
            """)
        let removed = try await transitCall(kmsd, anonymous, "POST", "transit/encrypt/orders", body, token: Self.nodeToken)
        #expect(removed.status == 403)
        #expect(errors(removed).first?.contains("invalid token") == true)
        #expect(try await transitCall(kmsd, anonymous, "POST", "transit/encrypt/orders-2", body, token: added).status == 200)
        // A reload cannot stop the listener (nor start or move one): refused as a whole, the running section stays.
        let refused = #expect(throws: ConfigurationError.self) { try kmsd.reload(crl: nil, dropTransit: true) }
        #expect(refused?.problems.first?.contains("cannot start, stop or move the transit listener") == true)
        #expect(try await transitCall(kmsd, anonymous, "POST", "transit/encrypt/orders-2", body, token: added).status == 200)
        try? await anonymous.shutdown()
        await kmsd.stop()
    }

    @Test func hostileParametersAreClearErrorsNotCrashes() async throws {
        let kmsd = try await RunningKMSD.start(transit: Self.transit)
        let node = try kmsd.client("node1")
        // A query pair without a name, status codes no HTTP answer can carry, numbers beyond Int.
        #expect(try await transitCall(kmsd, node, "GET", "sys/health?=&a&=b").status == 200)
        #expect(try await transitCall(kmsd, node, "GET", "sys/health?activecode=1000").status == 400)
        #expect(try await transitCall(kmsd, node, "GET", "sys/health?sealedcode=-1").status == 400)
        let huge = try await kmsd.call(node, "POST", "/v1/transit/datakey/plaintext/orders", body: Data(#"{"bits":1e300}"#.utf8),
                                       port: kmsd.transitPort)
        #expect(huge.status == 400)
        let code = try await transitCall(kmsd, node, "POST", "transit/encrypt/orders", [
            "batch_input": [["plaintext": b64("a")]], "partial_failure_response_code": 1000,
        ])
        #expect(code.status == 400)
        #expect(errors(code).first?.contains("partial_failure_response_code") == true)
        // A form body with a nameless pair.
        var form = HTTPClientRequest(url: "https://localhost:\(kmsd.transitPort)/v1/transit/encrypt/orders")
        form.method = .POST
        form.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
        form.body = .bytes(ByteBuffer(string: "=x&&plaintext=\(b64("hi").addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")"))
        #expect(try await node.execute(form, timeout: .seconds(10)).status.code == 200)
        // A value of the wrong type is named by field, never echoed (it may be a secret, and errors reach the audit log).
        let typed = try await transitCall(kmsd, node, "POST", "transit/encrypt/orders", ["plaintext": ["secret-value": 1]])
        #expect(typed.status == 400)
        #expect(errors(typed).first?.contains("secret-value") == false)
        try? await node.shutdown()
        await kmsd.stop()
        #expect(try String(contentsOfFile: kmsd.auditPath, encoding: .utf8).contains("secret-value") == false)
    }

    @Test func aLoginTokenKeepsItsCertificatesIssuerExpiryAndRevocation() async throws {
        // Admin certificates come from their own CA: a node-CA certificate named like an admin is no admin, and an
        // admin-CA certificate named like a node uses no key — through a login token exactly as with the certificate.
        let kmsd = try await RunningKMSD.start(withCRL: true, admin: ", client_ca: admin-ca.pem", transit: Self.transit)
        let nodeNamedLikeAdmin = try kmsd.client("admin")       // node CA, CN=security-admin
        let adminNamedLikeNode = try kmsd.client("adminnode")   // admin CA, URI of node 1
        let realAdmin = try kmsd.client("admin2")               // admin CA, CN=security-admin2
        let node2 = try kmsd.client("node2")
        let anonymous = try kmsd.client(nil)
        func login(_ client: HTTPClient) async throws -> String {
            let reply = try await transitCall(kmsd, client, "POST", "auth/cert/login")
            return try #require((reply.json["auth"] as? [String: Any])?["client_token"] as? String)
        }
        let body: [String: Any] = ["plaintext": b64("secret")]
        let impostor = try await login(nodeNamedLikeAdmin)
        #expect(try await transitCall(kmsd, anonymous, "POST", "transit/keys/orders/rotate", token: impostor).status == 403)
        let crossed = try await login(adminNamedLikeNode)
        #expect(try await transitCall(kmsd, anonymous, "POST", "transit/encrypt/orders", body, token: crossed).status == 403)
        let admin = try await login(realAdmin)
        #expect(try await transitCall(kmsd, anonymous, "POST", "transit/keys/orders/rotate", token: admin).status == 200)

        // A certificate revoked after its login: its token stops at the next reload of the CRL.
        let token = try await login(node2)
        #expect(try await transitCall(kmsd, anonymous, "POST", "transit/encrypt/invoices", body, token: token).status == 200)
        let node2PEM = try String(contentsOf: kmsd.directory.appendingPathComponent("node2.pem"), encoding: .utf8)
        try Data(try kmsd.pki.revocationList(revoking: [node2PEM]).utf8).write(to: kmsd.directory.appendingPathComponent("crl.pem"))
        try kmsd.reload(crl: "crl.pem")
        #expect(try await transitCall(kmsd, anonymous, "POST", "transit/encrypt/invoices", body, token: token).status == 403)
        for client in [nodeNamedLikeAdmin, adminNamedLikeNode, realAdmin, node2, anonymous] { try? await client.shutdown() }
        await kmsd.stop()
    }
}
