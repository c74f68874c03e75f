import Foundation
import Hummingbird
import KMSCore
@testable import KMSProviderVault
import Synchronization
import KMSTestSupport
import Testing
@testable import VaultDev
import VaultWire

let orders = try! KeyName("orders")

@Suite("vault-dev ciphertext format")
struct VaultDevFormatTests {
    /// The contract's vectors: key bytes 0x00…0x1f, nonce 0x00…0x0b, plaintext "hello".
    @Test(arguments: [
        ("vault:v1:AAECAwQFBgcICQoLL2e6d6onl/81O4oEbSgjbc2dBXu7", false, nil as String?, nil as String?),
        ("vault:v1:AAECAwQFBgcICQoLL2e6d6rjIdRxlnDYVY9C/MzM3E9Q", false, nil, "aad"),
        ("vault:v1:AAECAwQFBgcICQoLO4UbN9SlHzyzO8tca3R/bKD4C3SI", true, "tenant-1", nil),
    ])
    func decryptsTheContractVectors(ciphertext: String, derived: Bool, context: String?, aad: String?) throws {
        var key = TransitKey(name: "k", derived: derived, convergent: false, now: 0)
        key.versions[1] = .init(key: Array(0..<32), createdAt: 0)
        let (plaintext, version) = try key.decrypt(ciphertext, context: context.map { Array($0.utf8) }, aad: aad.map { Array($0.utf8) })
        #expect(plaintext == Array("hello".utf8))
        #expect(version == 1)
        // And a wrong AAD or context fails.
        #expect(throws: VaultError.self) {
            try key.decrypt(ciphertext, context: derived ? Array("tenant-2".utf8) : nil, aad: Array("other".utf8))
        }
    }
}

@Suite("VaultTransitProvider against vault-dev")
struct VaultTransitProviderTests {
    @Test func vaultsErrorTextNeverBecomesTheClientsMessage() async throws {
        let vault = try await InProcessVaultDev.start()
        let provider = try VaultTransitProvider(vault.configuration())
        let secret = "1 error occurred: permission denied on transit/keys/orders-internal (policy kmsd-prod)"
        let error = provider.requestError(
            VaultResponse(status: 400, body: ["errors": .array([.string(secret)])]), try KeyName("orders"), operation: "wrap")
        #expect(error.code == .invalidInput)
        #expect(!error.message.contains("orders-internal") && !error.message.contains("policy"))
        #expect(error.detail?.contains(secret) == true)
        await provider.shutdown()
        await vault.stop()
    }

    @Test func appRoleTokenIsRenewedAndReplacedAfterRevocation() async throws {
        let vault = try await InProcessVaultDev.start()
        let (roleID, secretID) = try await vault.appRole("kmsd", ttl: "3s", maxTTL: "60s")
        let provider = try VaultTransitProvider(vault.configuration(.appRole(roleID: roleID, secretID: SecretBytes(utf8: secretID))))
        _ = try await vault.root("POST", "transit/keys/orders")
        let start = ContinuousClock.now
        var wraps = 0
        while ContinuousClock.now - start < .seconds(10) {
            let key = try await provider.generateDataKey(orders, context: ["t": "1"])
            #expect(try await provider.unwrap(orders, wrapped: key.wrapped, context: ["t": "1"]).plaintext == key.plaintext)
            wraps += 1
            try await Task.sleep(for: .milliseconds(250))
        }
        let renewed = await provider.authenticationStatistics
        #expect(renewed.logins == 1)
        #expect(renewed.renewals >= 3)
        print("approle: \(wraps) wrap+unwrap over 10 s with a 3 s token: \(renewed.renewals) renewals, 1 login")

        // Revoke every non-root token: the provider's next request is refused, it logs in again and succeeds.
        let (_, accessors) = try await vault.root("LIST", "auth/token/accessors")
        for accessor in (accessors["data"] as? [String: Any])?["keys"] as? [String] ?? [] {
            try await vault.root("POST", "auth/token/revoke-accessor", ["accessor": accessor])
        }
        _ = try await provider.generateDataKey(orders, context: [:])
        #expect(await provider.authenticationStatistics.logins == 2)
        await provider.shutdown()
        await vault.stop()
    }

    @Test func sealedMidLoadFailsUnavailableThenRecovers() async throws {
        let vault = try await InProcessVaultDev.start()
        let provider = try VaultTransitProvider(vault.configuration())
        _ = try await provider.createKey(orders)
        let before = try await provider.generateDataKey(orders, context: [:])
        let stop = Flag()
        let outcomes = Locked<[(Duration, KMSError.Code?, Bool)]>([])
        let sealed = Flag()
        let load = Task {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<8 {
                    group.addTask {
                        while !stop.value {
                            let wasSealed = sealed.value
                            let started = ContinuousClock.now
                            let code = await errorCode { _ = try await provider.generateDataKey(orders, context: [:]) }
                            let stillSealed = sealed.value
                            outcomes.withLock { $0.append((ContinuousClock.now - started, code, wasSealed && stillSealed)) }
                            try? await Task.sleep(for: .milliseconds(5))
                        }
                    }
                }
            }
        }
        try await Task.sleep(for: .milliseconds(300))
        try await vault.seal()
        sealed.value = true
        try await Task.sleep(for: .milliseconds(700))
        #expect(await provider.health().state == .unavailable)
        sealed.value = false
        try await vault.unseal()
        let unsealedAt = ContinuousClock.now
        // Polled without a pause: the load keeps running meanwhile, and its outcomes are what the test checks.
        let recovered = try await eventually(within: .seconds(3), every: .zero) {
            await errorCode { _ = try await provider.generateDataKey(orders, context: [:]) } == nil
        }
        stop.value = true
        await load.value
        let during = outcomes.withLock { $0.filter(\.2) }
        #expect(!during.isEmpty)
        #expect(during.allSatisfy { $0.1 == .unavailable })
        #expect(during.allSatisfy { $0.0 < .seconds(2) })
        #expect(recovered)
        print("sealed: \(during.count) requests refused, slowest \(during.map(\.0).max() ?? .zero); recovered \(ContinuousClock.now - unsealedAt) after unseal")
        #expect(try await provider.unwrap(orders, wrapped: before.wrapped, context: [:]).plaintext == before.plaintext)
        #expect(await provider.health().state == .ok)
        await provider.shutdown()
        await vault.stop()
    }

    @Test func killedAndRestartedWithItsStateFile() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("vault-dev-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let vault = try VaultDevProcess.start(stateFile: directory.appendingPathComponent("state.json").path)
        let provider = try VaultTransitProvider(VaultProviderConfiguration(
            address: vault.address, authentication: .token(SecretBytes(utf8: vault.rootToken)),
            requestTimeout: .seconds(2), maxRetries: 1))
        _ = try await provider.createKey(orders)
        let before = try await provider.generateDataKey(orders, context: ["t": "1"])
        let attributes = try FileManager.default.attributesOfItem(atPath: vault.stateFile)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)

        vault.kill()
        let started = ContinuousClock.now
        #expect(await errorCode { _ = try await provider.generateDataKey(orders, context: [:]) } == .unavailable)
        #expect(ContinuousClock.now - started < .seconds(5))

        try vault.restart()
        #expect(try await eventually(within: .seconds(3), every: .milliseconds(50)) {
            await errorCode { _ = try await provider.generateDataKey(orders, context: [:]) } == nil
        })
        #expect(try await provider.unwrap(orders, wrapped: before.wrapped, context: ["t": "1"]).plaintext == before.plaintext)
        await provider.shutdown()
        vault.kill()
    }

    @Test func aTokenFileIsReadAgainWhenItChanges() async throws {
        let vault = try await InProcessVaultDev.start()
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("token-\(UUID().uuidString)")
        let (_, first) = try await vault.root("POST", "auth/token/create", ["ttl": "1h"])
        let firstToken = (first["auth"] as? [String: Any])?["client_token"] as? String ?? ""
        try firstToken.write(to: file, atomically: true, encoding: .utf8)
        let provider = try VaultTransitProvider(vault.configuration(.tokenFile(file.path)))
        _ = try await provider.createKey(orders)
        // Vault Agent writes a new token; the old one is revoked.
        let (_, second) = try await vault.root("POST", "auth/token/create", ["ttl": "1h"])
        let secondToken = (second["auth"] as? [String: Any])?["client_token"] as? String ?? ""
        try secondToken.write(to: file, atomically: true, encoding: .utf8)
        try await vault.root("POST", "auth/token/revoke", ["token": firstToken])
        _ = try await provider.generateDataKey(orders, context: [:])
        #expect(await provider.authenticationStatistics.tokenFileReads == 2)
        #expect(!provider.configuration.description.contains(firstToken))
        await provider.shutdown()
        await vault.stop()
    }

    @Test func versionsRetireAndDestroyAsAsked() async throws {
        let vault = try await InProcessVaultDev.start()
        let provider = try VaultTransitProvider(vault.configuration())
        _ = try await provider.createKey(orders)
        let v1 = try await provider.generateDataKey(orders, context: [:])
        _ = try await provider.rotateKey(orders)
        try await provider.retireVersion(orders, version: .first)
        let described = try await provider.describeKey(orders)
        #expect(described.versions.map(\.state) == [.retired, .active])
        #expect(described.versions.allSatisfy { $0.createdAt != nil })
        #expect(try await provider.unwrap(orders, wrapped: v1.wrapped, context: [:]).plaintext == v1.plaintext)
        try await provider.destroyVersion(orders, version: .first)
        #expect(await errorCode { _ = try await provider.unwrap(orders, wrapped: v1.wrapped, context: [:]) } == .notFound)
        #expect(await errorCode { try await provider.destroyVersion(orders, version: try KeyVersion(2)) } == .conflict)
        await provider.shutdown()
        await vault.stop()
    }
}

/// A server that answers Vault's paths with broken responses.
@Suite("VaultTransitProvider against broken responses")
struct BrokenVaultTests {
    enum Breakage: String, CaseIterable, Sendable {
        case malformedJSON, truncatedJSON, wrongContentType, missingCiphertext, notAnObject, htmlError
    }

    func serve(_ breakage: Breakage) async throws -> (String, Task<Void, any Error>) {
        let router = Router()
        router.on("/v1/transit/encrypt/{name}", method: .post) { _, _ -> Response in
            let (status, type, body): (HTTPResponse.Status, String, String) = switch breakage {
            case .malformedJSON: (.ok, "application/json", "{\"data\": {\"ciphertext\": ")
            case .truncatedJSON: (.ok, "application/json", "{\"data\":{\"ciphertext\":\"vault:v1:AAAA")
            case .wrongContentType: (.ok, "text/plain", "vault:v1:AAAA")
            case .missingCiphertext: (.ok, "application/json", "{\"data\":{\"key_version\":1}}")
            case .notAnObject: (.ok, "application/json", "[1,2,3]")
            case .htmlError: (.badGateway, "text/html", "<html>bad gateway</html>")
            }
            return Response(status: status, headers: [.contentType: type], body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        router.get("/v1/transit/keys/{name}") { _, _ -> Response in
            let body = #"{"data":{"latest_version":1,"min_decryption_version":1,"min_encryption_version":0,"keys":{"1":1}}}"#
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        let (stream, continuation) = AsyncStream<Int>.makeStream()
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { continuation.yield($0.localAddress?.port ?? 0) })
        let task = Task { try await app.run() }
        var iterator = stream.makeAsyncIterator()
        let port = await iterator.next() ?? 0
        return ("http://127.0.0.1:\(port)", task)
    }

    @Test(arguments: Breakage.allCases)
    func aBrokenResponseIsAClearErrorNotACrash(_ breakage: Breakage) async throws {
        let (address, server) = try await serve(breakage)
        let provider = try VaultTransitProvider(VaultProviderConfiguration(
            address: address, authentication: .token(SecretBytes(utf8: "t")), requestTimeout: .seconds(2), maxRetries: 0))
        do {
            _ = try await provider.generateDataKey(orders, context: [:])
            Issue.record("accepted a \(breakage) response")
        } catch let error as KMSError {
            #expect(error.code == (breakage == .htmlError ? .unavailable : .internal))
            #expect(!error.message.isEmpty)
            #expect(!"\(error)".contains("vault:v1:AAAA") || breakage == .missingCiphertext)
        }
        await provider.shutdown()
        server.cancel()
    }
}

/// A flag shared between a test and its load tasks.
final class Flag: Sendable {
    private let storage = Atomic(false)
    var value: Bool {
        get { storage.load(ordering: .relaxed) }
        set { storage.store(newValue, ordering: .relaxed) }
    }
}

/// A value shared between a test and its load tasks.
final class Locked<Value: Sendable>: Sendable {
    private let storage: Mutex<Value>
    init(_ value: Value) { storage = Mutex(value) }
    func withLock<R>(_ body: (inout Value) -> R) -> R { storage.withLock { body(&$0) } }
}
