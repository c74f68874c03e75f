import Foundation
import KMSCore
import KMSProviderPKCS11
import KMSProviderVault
import KMSTestSupport
import Testing

/// One behavioural contract, run against both real providers: `PKCS11KeyProvider` on SoftHSM (behind the fault shim,
/// so it can be taken down) and `VaultTransitProvider` on vault-dev (sealed to take it down) — and on a second kmsd's
/// transit listener (its HSM taken down behind the shim), so kmsd can chain to kmsd. The interface has to mean the
/// same on all of them.
@Suite("Provider contract")
struct ProviderContractTests {
    enum Kind: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case pkcs11, vault
        /// `VaultTransitProvider` against kmsd's own transit listener.
        case vaultOnKMSD
        var testDescription: String { rawValue }
    }

    /// A provider with a way to make its backend unavailable and to bring it back.
    struct Subject: Sendable {
        let provider: any KeyProvider
        let takeDown: @Sendable () async throws -> Void
        let bringBack: @Sendable () async throws -> Void
        let close: @Sendable () async -> Void
    }

    static func make(_ kind: Kind) async throws -> Subject {
        switch kind {
        case .pkcs11:
            let token = try SoftHSMToken.create()
            let shim = try FaultShim.create()
            let provider = try await PKCS11KeyProvider.start(PKCS11ProviderConfiguration(
                modulePath: shim.modulePath, token: token.uri, pin: token.pin, profile: .softhsm2, maxSessions: 4,
                checkoutWait: .milliseconds(500), callTimeout: .milliseconds(500)))
            return Subject(
                provider: provider, takeDown: { try shim.inject(.down) }, bringBack: { try shim.clear() },
                close: { await provider.shutdown() })
        case .vault:
            let vault = try await InProcessVaultDev.start()
            let provider = try VaultTransitProvider(vault.configuration())
            return Subject(
                provider: provider, takeDown: { try await vault.seal() }, bringBack: { try await vault.unseal() },
                close: {
                    await provider.shutdown()
                    await vault.stop()
                })
        case .vaultOnKMSD:
            let kmsd = try await ChainedKMSD.start()
            let provider = try VaultTransitProvider(kmsd.configuration())
            return Subject(
                provider: provider, takeDown: { try kmsd.shim.inject(.down) }, bringBack: { try kmsd.shim.clear() },
                close: {
                    await provider.shutdown()
                    await kmsd.stop()
                })
        }
    }

    func with(_ kind: Kind, _ body: (any KeyProvider, Subject) async throws -> Void) async throws {
        let subject = try await Self.make(kind)
        do {
            try await body(subject.provider, subject)
        } catch {
            await subject.close()
            throw error
        }
        await subject.close()
    }

    let context: EncryptionContext = ["cluster": "pg-1", "table": "orders"]

    @Test(arguments: Kind.allCases)
    func roundTripAndDescribe(_ kind: Kind) async throws {
        try await with(kind) { provider, _ in
            let created = try await provider.createKey(orders)
            #expect(created.versions.map(\.version) == [.first])
            #expect(created.versions.map(\.state) == [.active])
            #expect(await errorCode { _ = try await provider.createKey(orders) } == .alreadyExists)
            let key = try await provider.generateDataKey(orders, context: context)
            #expect(key.plaintext.count == DataKey.length)
            #expect(key.version == .first)
            let envelope = try Envelope(parsing: key.wrapped)
            #expect(envelope.header.provider == provider.kind)
            #expect(envelope.header.keyName == orders)
            let unwrapped = try await provider.unwrap(orders, wrapped: key.wrapped, context: context)
            #expect(unwrapped.plaintext == key.plaintext)
            #expect(try await provider.listKeys().contains(orders))
            let secret = SecretBytes(copying: Array(repeating: UInt8(7), count: 100))
            let wrapped = try await provider.wrap(orders, plaintext: secret, context: [:])
            #expect(try await provider.unwrap(orders, wrapped: wrapped.wrapped, context: [:]).plaintext == secret)
        }
    }

    @Test(arguments: Kind.allCases)
    func wrongContextUnknownKeyAndForeignKeyAreRefused(_ kind: Kind) async throws {
        try await with(kind) { provider, _ in
            _ = try await provider.createKey(orders)
            let key = try await provider.generateDataKey(orders, context: context)
            #expect(await errorCode { _ = try await provider.unwrap(orders, wrapped: key.wrapped, context: [:]) } == .invalidInput)
            let other: EncryptionContext = ["cluster": "pg-1", "table": "invoices"]
            #expect(await errorCode { _ = try await provider.unwrap(orders, wrapped: key.wrapped, context: other) } == .invalidInput)
            #expect(await errorCode { _ = try await provider.generateDataKey(invoices, context: [:]) } == .notFound)
            #expect(await errorCode { _ = try await provider.describeKey(invoices) } == .notFound)
            // An envelope presented under another key name is refused before any backend call.
            _ = try await provider.createKey(invoices)
            #expect(await errorCode { _ = try await provider.unwrap(invoices, wrapped: key.wrapped, context: context) } == .invalidInput)
        }
    }

    @Test(arguments: Kind.allCases)
    func everyFlippedByteAndEveryTruncationIsRefused(_ kind: Kind) async throws {
        try await with(kind) { provider, _ in
            _ = try await provider.createKey(orders)
            let key = try await provider.generateDataKey(orders, context: context)
            var codes: Set<KMSError.Code> = []
            for index in key.wrapped.indices {
                var tampered = key.wrapped
                tampered[index] ^= 0x01
                let code = await errorCode { _ = try await provider.unwrap(orders, wrapped: tampered, context: context) }
                #expect(code == .invalidInput || code == .notFound, "byte \(index): \(String(describing: code))")
                if let code { codes.insert(code) }
            }
            for length in [0, 1, 10, key.wrapped.count - 1] {
                let code = await errorCode { _ = try await provider.unwrap(orders, wrapped: Array(key.wrapped.prefix(length)), context: context) }
                #expect(code == .invalidInput)
            }
            #expect(codes.contains(.invalidInput))
        }
    }

    @Test(arguments: Kind.allCases)
    func rotateThenRetire(_ kind: Kind) async throws {
        try await with(kind) { provider, _ in
            _ = try await provider.createKey(orders)
            let v1 = try await provider.generateDataKey(orders, context: context)
            let rotated = try await provider.rotateKey(orders)
            let v2 = try KeyVersion(2)
            #expect(rotated.version == v2)
            let next = try await provider.generateDataKey(orders, context: context)
            #expect(next.version == v2)
            #expect(try await provider.unwrap(orders, wrapped: v1.wrapped, context: context).plaintext == v1.plaintext)

            #expect(await errorCode { try await provider.retireVersion(orders, version: v2) } == .conflict)
            try await provider.retireVersion(orders, version: .first)
            let described = try await provider.describeKey(orders)
            #expect(described.versions.map(\.version) == [.first, v2])
            #expect(described.versions.map(\.state) == [.retired, .active])
            let secret = SecretBytes(copying: Array(repeating: UInt8(1), count: 32))
            #expect(await errorCode { _ = try await provider.wrap(orders, plaintext: secret, context: [:], version: .first) } == .versionRetired)
            #expect(try await provider.unwrap(orders, wrapped: v1.wrapped, context: context).plaintext == v1.plaintext)
            #expect(try await provider.generateDataKey(orders, context: context).version == v2)
        }
    }

    @Test(arguments: Kind.allCases)
    func unavailableWhileTheBackendIsDownThenBack(_ kind: Kind) async throws {
        try await with(kind) { provider, subject in
            _ = try await provider.createKey(orders)
            let before = try await provider.generateDataKey(orders, context: context)
            try await subject.takeDown()
            for _ in 0..<5 {
                let started = ContinuousClock.now
                #expect(await errorCode { _ = try await provider.generateDataKey(orders, context: context) } == .unavailable)
                #expect(await errorCode { _ = try await provider.unwrap(orders, wrapped: before.wrapped, context: context) } == .unavailable)
                #expect(ContinuousClock.now - started < .seconds(2))
            }
            #expect(await provider.health().state == .unavailable)
            try await subject.bringBack()
            #expect(try await eventually(within: .seconds(3)) {
                await errorCode { _ = try await provider.unwrap(orders, wrapped: before.wrapped, context: context) } == nil
            })
            #expect(await provider.health().state == .ok)
        }
    }
}

let invoices = try! KeyName("invoices")
