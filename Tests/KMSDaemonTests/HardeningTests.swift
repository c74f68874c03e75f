import AsyncHTTPClient
import NIOCore
import NIOSSL
import NIOHTTP1
import Foundation
import KMSAPI
import KMSAudit
import KMSDaemon
import KMSDev
import KMSServer
import KMSService
import KMSTestSupport
import Testing
import SwiftASN1
import X509
#if canImport(Glibc)
import Glibc
#endif

/// A TCP connection from a chosen loopback address that sends nothing: what a hostile peer without a certificate
/// can do cheaply.
struct RawTCP {
    let descriptor: Int32

    /// `receiveBuffer` makes the socket's receive buffer that small (a peer that does not read fills it quickly).
    init(port: Int, from source: String = "127.0.0.1", receiveBuffer: Int32? = nil) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw FixtureError("socket: \(String(cString: strerror(errno)))") }
        if var size = receiveBuffer { setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, source, &local.sin_addr)
        var remote = sockaddr_in()
        remote.sin_family = sa_family_t(AF_INET)
        remote.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &remote.sin_addr)
        let bound = withUnsafePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        let connected = withUnsafePointer(to: &remote) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, connected == 0 else {
            let message = String(cString: strerror(errno))
            Glibc.close(fd)
            throw FixtureError("connect from \(source): \(message)")
        }
        descriptor = fd
    }

    /// Whether the server closed the connection within `seconds` (end of stream or reset).
    func closedByPeer(within seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            var entry = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            let ready = poll(&entry, 1, Int32(max(1, deadline.timeIntervalSinceNow * 1000)))
            guard ready > 0 else { continue }
            var byte: UInt8 = 0
            let read = recv(descriptor, &byte, 1, Int32(MSG_DONTWAIT))
            if read == 0 || (read < 0 && errno != EAGAIN && errno != EWOULDBLOCK) { return true }
        }
        return false
    }

    /// Sends as much of `bytes` as the socket takes without blocking, for at most `seconds`; returns how much went.
    @discardableResult
    func sendAll(_ bytes: [UInt8], seconds: Double = 5) -> Int {
        var sent = 0
        let deadline = Date().addingTimeInterval(seconds)
        while sent < bytes.count && Date() < deadline {
            let count = bytes[sent...].withUnsafeBytes { send(descriptor, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            if count > 0 { sent += count } else if errno == EAGAIN || errno == EWOULDBLOCK { usleep(10_000) } else { break }
        }
        return sent
    }

    func close() { Glibc.close(descriptor) }
}

/// What a peer without a certificate can do to kmsd's listeners, and what it must not achieve.
@Suite("Hardening: hostile peers", .serialized)
struct HardeningTests {
    @Test func aPeerThatNeverCompletesAHandshakeIsClosedAtTheDeadline() async throws {
        let kmsd = try await RunningKMSD.start(limits: ", handshake_timeout: 1s")
        let silent = try RawTCP(port: kmsd.port)
        defer { silent.close() }
        #expect(silent.closedByPeer(within: 5), "a connection that sent nothing was still open 5 s after a 1 s handshake deadline")
        #expect(kmsd.securityEvents["handshake_timeout", default: 0] >= 1)
        await kmsd.stop()
    }

    @Test func anIdleKeepAliveConnectionIsClosedAfterTheIdleTimeout() async throws {
        let kmsd = try await RunningKMSD.start(limits: ", idle_timeout: 1s")
        let node = try kmsd.client("node1")
        #expect(try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 200)
        #expect(kmsd.connections.current == 1)
        // Closed at about 1 s: close_notify, then at most the TLS shutdown timeout (1 s) for the peer's answer.
        var current = 1
        for _ in 0..<80 where current > 0 {
            try await Task.sleep(for: .milliseconds(100))
            current = kmsd.connections.current
        }
        #expect(current == 0, "the idle keep-alive connection is still open")
        // The client notices and opens a new connection for its next request.
        #expect(try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 200)
        try? await node.shutdown()
        await kmsd.stop()
    }

    /// A connection in steady use is still closed once it reaches its maximum age (after the request in progress), so
    /// that a reloaded CA or CRL reaches it; the client reconnects and no request fails.
    @Test func aBusyConnectionIsRecycledAtItsMaximumAge() async throws {
        let kmsd = try await RunningKMSD.start(limits: ", max_connection_age: 1s, idle_timeout: 30s")
        let node = try kmsd.client("node1")
        // A request that fails is a failed expectation here, not an error thrown out of the test (which would leave
        // the client running and abort the test process).
        let statuses = try await using([node]) {
            var statuses: [Int] = []
            let end = ContinuousClock.now + .seconds(3.5)
            while ContinuousClock.now < end {
                do {
                    statuses.append(try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status)
                } catch {
                    Issue.record("a request failed while its connection was recycled: \(error)")
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            return statuses
        }
        #expect(statuses.allSatisfy { $0 == 200 } && statuses.count > 10)
        #expect(kmsd.connections.admitted >= 3, "\(kmsd.connections.admitted) connection(s) for 3.5 s of requests with a 1 s maximum age")
        await kmsd.stop()
    }

    /// One address holding many idle connections gets at most its unauthenticated share; a storage node on another
    /// address is served throughout.
    @Test func oneAddressCannotTakeTheSlotsOfAnother() async throws {
        let kmsd = try await RunningKMSD.start(limits: ", handshake_timeout: 60s")
        var held: [RawTCP] = []
        defer { held.forEach { $0.close() } }
        for _ in 0..<200 { held.append(try RawTCP(port: kmsd.port, from: "127.0.0.2")) }
        // Until the server has accepted (or refused) all 200.
        for _ in 0..<250 where kmsd.connections.current + kmsd.securityEvents["unauthenticated_connection_limit", default: 0] < 200 {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(kmsd.connections.current <= 16, "\(kmsd.connections.current) connections open from one address without a certificate")
        #expect(kmsd.securityEvents["unauthenticated_connection_limit", default: 0] >= 150)
        let node = try kmsd.client("node1")
        for _ in 0..<10 {
            #expect(try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 200)
        }
        try? await node.shutdown()
        await kmsd.stop()
    }

    /// The CRL file is read again on its own; an older list is refused as a rollback; a list past its nextUpdate
    /// plus the grace fails closed for every certificate of its CA, and readiness says why.
    @Test func theCRLIsReReadOnItsOwnRefusedWhenOlderAndFailsClosedWhenStale() async throws {
        let kmsd = try await RunningKMSD.start(withCRL: true, tls: ", crl_refresh: 200ms, crl_grace: 1s")
        let crl = kmsd.directory.appendingPathComponent("crl.pem")
        let node1 = try kmsd.client("node1")
        let node2 = try kmsd.client("node2")
        #expect(try await kmsd.call(node1, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 200)

        // A newer list revoking node-1, written in place: no SIGHUP.
        let node1PEM = try String(contentsOf: kmsd.directory.appendingPathComponent("node1.pem"), encoding: .utf8)
        try Data(try kmsd.pki.revocationList(revoking: [node1PEM], thisUpdate: Date().addingTimeInterval(-30)).utf8).write(to: crl)
        var status = 0
        for _ in 0..<50 {
            status = try await kmsd.call(node1, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status
            if status == 401 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(status == 401, "the refreshed CRL did not apply")

        // An older list that does not revoke node-1 (a restored backup, say) is refused.
        try Data(try kmsd.pki.revocationList(revoking: [], thisUpdate: Date().addingTimeInterval(-3600)).utf8).write(to: crl)
        for _ in 0..<50 where kmsd.securityEvents["crl_rollback", default: 0] == 0 { try await Task.sleep(for: .milliseconds(100)) }
        #expect(kmsd.securityEvents["crl_rollback", default: 0] >= 1)
        let stillRevoked = try await kmsd.call(node1, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:]))
        #expect(stillRevoked.status == 401)
        #expect(stillRevoked.errorCode == "unauthenticated")
        #expect(try await kmsd.call(node2, "POST", "/v1/keys/invoices/datakey", body: kmsd.json([:])).status == 200)

        // A list whose nextUpdate passed more than the grace ago: nobody of that CA is served, readiness says why.
        try Data(try kmsd.pki.revocationList(revoking: [], thisUpdate: Date().addingTimeInterval(-20),
                                              nextUpdate: Date().addingTimeInterval(-5)).utf8).write(to: crl)
        var stale: (status: Int, errorCode: String?) = (0, nil)
        for _ in 0..<50 {
            let response = try await kmsd.call(node2, "POST", "/v1/keys/invoices/datakey", body: kmsd.json([:]))
            stale = (response.status, response.errorCode)
            if stale.status == 401 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(stale.status == 401)
        #expect(stale.errorCode == "revocation_unavailable")
        let ready = try await kmsd.call(node2, "GET", "/v1/health/ready")
        #expect(ready.status == 503)
        #expect(ready.errorCode == "revocation_unavailable")
        #expect(kmsd.securityEvents["revocation_unavailable", default: 0] >= 1)

        // A fresh list brings service back without a restart.
        try Data(try kmsd.pki.revocationList(revoking: [node1PEM], thisUpdate: Date()).utf8).write(to: crl)
        for _ in 0..<50 {
            status = try await kmsd.call(node2, "POST", "/v1/keys/invoices/datakey", body: kmsd.json([:])).status
            if status == 200 { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(status == 200)
        #expect(try await kmsd.call(node2, "GET", "/v1/health/ready").status == 200)
        for client in [node1, node2] { try? await client.shutdown() }
        await kmsd.stop()
    }

    /// A PIN the token refused is not tried again until a reload brings another one from the PIN file.
    @Test func aRefusedPINWaitsForAReloadWithADifferentPIN() async throws {
        let kmsd = try await RunningKMSD.start()
        let node = try kmsd.client("node1")
        let pinFile = kmsd.directory.appendingPathComponent("pin")
        let rightPIN = try String(contentsOf: pinFile, encoding: .utf8)
        try kmsd.shim.inject(.dropLogin, .fail(function: "C_Login", value: 0xA0, count: 1))  // CKR_PIN_INCORRECT
        #expect(try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 503)
        let logins = try kmsd.shim.status().loginCalls
        for _ in 0..<20 { #expect(try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 503) }
        // A reload with the PIN unchanged tries nothing.
        try kmsd.reload(clientCA: "ca.pem", crl: nil)
        try await Task.sleep(for: .milliseconds(200))
        #expect(try kmsd.shim.status().loginCalls == logins)
        // A wrong PIN in the file: tried once, refused by the token, and not again.
        try Data("999999".utf8).write(to: pinFile)
        try kmsd.reload(clientCA: "ca.pem", crl: nil)
        for _ in 0..<50 where try kmsd.shim.status().loginCalls == logins { try await Task.sleep(for: .milliseconds(20)) }
        #expect(try kmsd.shim.status().loginCalls == logins + 1)
        #expect(try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 503)
        // The right PIN again: one login and service resumes, no restart.
        try Data(rightPIN.utf8).write(to: pinFile)
        try kmsd.reload(clientCA: "ca.pem", crl: nil)
        var status = 0
        for _ in 0..<50 {
            status = try await kmsd.call(node, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status
            if status == 200 { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(status == 200)
        #expect(try kmsd.shim.status().loginCalls == logins + 2)
        try? await node.shutdown()
        await kmsd.stop()
    }

    /// Failed handshakes are counted one by one but audited as one summary per source address per interval.
    @Test func failedHandshakesAreSummarizedPerSourceNotAuditedOneByOne() async throws {
        let kmsd = try await RunningKMSD.start(audit: ", handshake_summary_interval: 1s")
        let before = try kmsd.auditRecords().count
        for _ in 0..<300 { try RawTCP(port: kmsd.port, from: "127.0.0.3").close() }
        // A client with a certificate from another CA fails its handshake too.
        let foreign = try kmsd.client("foreign")
        _ = try? await kmsd.call(foreign, "GET", "/v1/health/live", timeout: 3)
        try? await foreign.shutdown()
        var summaries: [[String: Any]] = []
        var failures = 0
        for _ in 0..<40 {
            try await Task.sleep(for: .milliseconds(250))
            summaries = try kmsd.auditRecords().filter { $0["action"] as? String == "tls_handshake" }
            failures = kmsd.securityEvents["tls_handshake_failed", default: 0]
            if failures > 0 && summaries.compactMap({ $0["items"] as? Int }).reduce(0, +) == failures { break }
        }
        // Each of the 300 connections either failed its handshake or was refused by the per-address cap first.
        #expect(failures + kmsd.securityEvents["unauthenticated_connection_limit", default: 0] >= 300, "\(failures) failed handshakes counted")
        #expect(summaries.compactMap { $0["items"] as? Int }.reduce(0, +) == failures, "every failure is in a summary")
        #expect(summaries.count <= 10, "\(summaries.count) summary records for \(failures) failures")
        #expect(summaries.contains { ($0["detail"] as? String)?.contains("from 127.0.0.3") == true })
        #expect(try kmsd.auditRecords().count - before <= 12)
        await kmsd.stop()
    }
}

/// The attacks of the hardening review against kmsd as operators run it (its own process, default limits).
@Suite("Hardening: identity names are typed")
struct IdentityNameTests {
    func identity(_ subject: DevPKI.Subject, mode: ClientIdentity.Mode = .names) throws -> ClientIdentity {
        let issued = try DevPKI().issue(subject)
        return try ClientIdentity(certificate: try Certificate(pemEncoded: issued.certificatePEM), mode: mode)
    }

    @Test func namesAreTypedAndPatternsMatchOnlyTheirOwnKind() throws {
        let confused = try identity(.client(uri: "CN=security-x", commonName: "node-9"))
        #expect(confused.names == ["uri:CN=security-x", "cn:node-9"])
        #expect(!confused.matches(any: ["cn:security-*"]))
        let dnsNamed = try identity(.clientNames(uris: [], dns: ["security-x"], commonName: "node-9"))
        #expect(!dnsNamed.matches(any: ["cn:security-*"]))
        #expect(dnsNamed.matches(any: ["dns:security-*"]))
        let admin = try identity(.client(uri: nil, commonName: "security-admin"))
        #expect(admin.matches(any: ["cn:security-*"]))
        #expect(admin.description == "cn:security-admin")
    }

    @Test func oneStarStaysInOneSegmentTwoStarsCross() {
        let cases: [(String, String, Bool)] = [
            ("uri:spiffe://prod/storage/*", "uri:spiffe://prod/storage/db-1", true),
            ("uri:spiffe://prod/storage/*", "uri:spiffe://prod/storage/db-1/admin", false),
            ("uri:spiffe://prod/storage/*", "uri:spiffe://prod/storage/", true),
            ("uri:spiffe://prod/**", "uri:spiffe://prod/storage/db-1/admin", true),
            ("uri:spiffe://prod/*/db-1", "uri:spiffe://prod/storage/db-1", true),
            ("uri:spiffe://prod/*", "uri:spiffe://prod.evil/x", false),
            ("uri:spiffe://prod/storage/db-1.eu", "uri:spiffe://prod/storage/db-1.eu", true),
            ("uri:spiffe://prod/storage/*", "uri:spiffe://prod/storage/db-1.eu", true),
            ("dns:*.db.internal", "dns:a.db.internal", true),
            ("dns:*.db.internal", "dns:a.b.db.internal", false),
            ("dns:**.db.internal", "dns:a.b.db.internal", true),
            ("cn:security-*", "cn:security-admin", true),
            ("cn:security-*", "cn:security-admin.evil", false),
            ("cn:security-*", "uri:security-admin", false),
            ("cn:security-*", "cn:security-admin", true),
            ("uri:*", "uri:", true),
            ("uri:a*b*c*d*e*f*g*h*i*j*k", "uri:" + String(repeating: "a", count: 200), false),
        ]
        for (pattern, name, expected) in cases {
            #expect(ClientIdentity.matches(pattern, name) == expected, "\(pattern) vs \(name)")
        }
    }

    @Test func oldSpellingsAreReadWithAWarningAndKindlessPatternsRefused() throws {
        let directory = try ConfigurationTests.files()
        let old = ConfigurationTests.safe
            .replacingOccurrences(of: "uri:spiffe://prod/storage/*", with: "spiffe://prod/storage/*")
            .replacingOccurrences(of: "cn:security-*", with: "CN=security-*")
        let configuration = try Configuration.parse(yaml: old, source: directory.appendingPathComponent("kmsd.yaml").path)
        #expect(configuration.keys.values.first?.allow == ["uri:spiffe://prod/storage/*"])
        #expect(configuration.admin.identities == ["cn:security-*"])
        #expect(configuration.warnings.count == 2)
        #expect(configuration.warnings.allSatisfy { $0.contains("old spelling") })
        let kindless = ConfigurationTests.safe.replacingOccurrences(of: "uri:spiffe://prod/storage/*", with: "storage-*")
        do {
            _ = try Configuration.parse(yaml: kindless, source: directory.appendingPathComponent("kmsd.yaml").path)
            Issue.record("a pattern without a kind was accepted")
        } catch let error as ConfigurationError {
            #expect(error.description.contains("keys.orders.allow"))
        }
        let spiffe = ConfigurationTests.safe.replacingOccurrences(of: "min_version: \"1.3\"", with: "min_version: \"1.3\", identity: spiffe")
        #expect(try Configuration.parse(yaml: spiffe, source: directory.appendingPathComponent("kmsd.yaml").path).tls?.identity == .spiffe)
    }

    @Test func spiffeModeTakesExactlyOneSPIFFEIDAndNothingElse() throws {
        let one = try identity(.client(uri: "spiffe://prod/storage/db-1", commonName: "security-admin"), mode: .spiffe)
        #expect(one.names == ["uri:spiffe://prod/storage/db-1"])
        #expect(!one.matches(any: ["cn:security-*"]))
        #expect(throws: ClientIdentity.Refusal.self) {
            try identity(.clientNames(uris: ["spiffe://prod/a", "spiffe://prod/b"], dns: [], commonName: "x"), mode: .spiffe)
        }
        #expect(throws: ClientIdentity.Refusal.self) { try identity(.client(uri: nil, commonName: "x"), mode: .spiffe) }
        #expect(throws: ClientIdentity.Refusal.self) { try identity(.client(uri: "https://prod/a", commonName: "x"), mode: .spiffe) }
    }

    /// Against a running kmsd: the confusions are refused end to end.
    @Test func confusedCertificatesAreRefusedByARunningKMSD() async throws {
        let kmsd = try await RunningKMSD.start()
        let confused = try kmsd.client("confused")
        #expect(try await kmsd.call(confused, "GET", "/v1/admin/status").status == 403)
        let admin = try kmsd.client("admin")
        #expect(try await kmsd.call(admin, "GET", "/v1/admin/status").status == 200)
        for client in [confused, admin] { try? await client.shutdown() }
        await kmsd.stop()

        let spiffe = try await RunningKMSD.start(tls: ", identity: spiffe")
        let two = try spiffe.client("twouris")
        let refused = try await spiffe.call(two, "POST", "/v1/keys/orders/datakey", body: spiffe.json([:]))
        #expect(refused.status == 401)
        #expect(spiffe.securityEvents["invalid_identity", default: 0] >= 1)
        let node1 = try spiffe.client("node1")
        #expect(try await spiffe.call(node1, "POST", "/v1/keys/orders/datakey", body: spiffe.json([:])).status == 200)
        for client in [two, node1] { try? await client.shutdown() }
        await spiffe.stop()
    }

    @Test func aSeparateAdminCAAdministersAndNothingElse() async throws {
        let kmsd = try await RunningKMSD.start(admin: ", client_ca: admin-ca.pem")
        let admin2 = try kmsd.client("admin2")
        #expect(try await kmsd.call(admin2, "GET", "/v1/admin/status").status == 200)
        // The node CA's certificate named like an admin no longer administers.
        let oldAdmin = try kmsd.client("admin")
        #expect(try await kmsd.call(oldAdmin, "GET", "/v1/admin/status").status == 403)
        // The admin CA's certificate named like a storage node does not get that node's keys.
        let adminNode = try kmsd.client("adminnode")
        #expect(try await kmsd.call(adminNode, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 403)
        let node1 = try kmsd.client("node1")
        #expect(try await kmsd.call(node1, "POST", "/v1/keys/orders/datakey", body: kmsd.json([:])).status == 200)
        for client in [admin2, oldAdmin, adminNode, node1] { try? await client.shutdown() }
        await kmsd.stop()
    }

}

@Suite("Hardening: attacks on kmsd as a process", .serialized)
struct AttackTests {
    @Test func idleAndHandshakeFloodsNeitherStopServiceNorFillTheDisksAndACutLogDoesNotVerify() async throws {
        let (directory, token) = try KMSDProcess.prepare("attack")
        let kmsd = try await KMSDProcess.start(directory: directory, yaml: KMSDProcess.basicYAML(token, """
            audit: { file: audit/audit.jsonl, sign: { file: audit-key.pem }, checkpoint_every: 20, handshake_summary_interval: 5s }
            """))
        defer { _ = kmsd.stop() }
        let auditPath = directory.appendingPathComponent("audit/audit.jsonl").path
        func auditLines() -> [Substring] { ((try? String(contentsOfFile: auditPath, encoding: .utf8)) ?? "").split(separator: "\n") }
        func logBytes() -> Int { (try? FileManager.default.attributesOfItem(atPath: kmsd.log.path)[.size] as? Int) ?? 0 }

        func client(_ name: String) throws -> HTTPClient {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(directory.appendingPathComponent("ca.pem").path))
            tls.certificateChain = try NIOSSLCertificate.fromPEMFile(directory.appendingPathComponent("\(name).pem").path).map { .certificate($0) }
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: directory.appendingPathComponent("\(name)-key.pem").path, format: .pem))
            return HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
        }
        func post(_ client: HTTPClient, _ path: String, _ body: String) async throws -> Int {
            var request = HTTPClientRequest(url: "https://localhost:\(kmsd.port)\(path)")
            request.method = .POST
            request.body = .bytes(ByteBuffer(string: body))
            let response = try await client.execute(request, timeout: .seconds(10))
            _ = try await response.body.collect(upTo: 1 << 16)
            return Int(response.status.code)
        }
        let node = try client("node1")
        let admin = try client("admin")
        #expect(try await post(admin, "/v1/admin/keys", #"{"name":"orders"}"#) == 201)
        try? await admin.shutdown()
        func datakey() async throws -> Int { try await post(node, "/v1/keys/orders/datakey", "{}") }

        // 2,000 idle TCP connections from one address, held while a storage node asks for 100 data keys.
        var logBefore = logBytes()
        var held: [RawTCP] = []
        for _ in 0..<2000 { held.append(try RawTCP(port: kmsd.port, from: "127.0.0.2")) }
        try await Task.sleep(for: .milliseconds(500))
        #expect(logBytes() - logBefore < 1024, "kmsd's log grew by \(logBytes() - logBefore) bytes for 2,000 idle connections")
        var statuses: [Int] = []
        for _ in 0..<100 { statuses.append(try await datakey()) }
        #expect(statuses.allSatisfy { $0 == 200 }, "\(statuses.filter { $0 != 200 }.count) of 100 data keys failed while 2,000 idle connections were held")
        held.forEach { $0.close() }

        // 5,000 bare connect + close: counted, summarized, not one audit record each.
        let auditBefore = auditLines().count
        logBefore = logBytes()
        let flood = ContinuousClock.now
        for _ in 0..<5000 { try RawTCP(port: kmsd.port, from: "127.0.0.4").close() }
        let floodSeconds = (ContinuousClock.now - flood).components.seconds
        try await Task.sleep(for: .seconds(6))
        let added = auditLines().dropFirst(auditBefore)
        // One summary per 5 s interval that saw failures (plus a checkpoint every 20 records).
        #expect(added.count <= Int(floodSeconds) / 5 + 4, "the audit log grew by \(added.count) records for 5,000 failed handshakes in \(floodSeconds) s")
        #expect(added.allSatisfy { $0.contains("\"tls_handshake\"") || $0.contains("\"checkpoint\"") })
        #expect(logBytes() - logBefore < 1024, "kmsd's log grew by \(logBytes() - logBefore) bytes for 5,000 failed handshakes")
        try? await node.shutdown()
        #expect(kmsd.stop() == 0)

        // The closed log verifies with the key; without it, kmsctl does not call it verified.
        let kmsctl = BuiltExecutable("kmsctl")
        let publicKey = auditPath + ".pub.pem"
        let verified = try kmsctl.run(["audit", "verify", "--public-key", publicKey, auditPath])
        #expect(verified.status == 0, "\(verified.output)")
        let unsigned = try kmsctl.run(["audit", "verify", auditPath])
        #expect(unsigned.status == 2 && unsigned.output.contains("NOT VERIFIED"), "\(unsigned.output)")
        #expect(try kmsctl.run(["audit", "verify", "--no-signatures", auditPath]).status == 0)

        // Cut after a periodic checkpoint and flip its `closing`: verification fails.
        var lines = auditLines().map(String.init)
        let periodic = try #require(lines.firstIndex { $0.contains(#""closing":false"#) })
        lines = Array(lines[...periodic])
        lines[periodic] = lines[periodic].replacingOccurrences(of: #""closing":false"#, with: #""closing":true"#)
        let cut = directory.appendingPathComponent("cut.jsonl").path
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: cut))
        let forged = try kmsctl.run(["audit", "verify", "--public-key", publicKey, cut])
        #expect(forged.status == 2 && forged.output.contains("FAILED"), "\(forged.output)")
    }
}
