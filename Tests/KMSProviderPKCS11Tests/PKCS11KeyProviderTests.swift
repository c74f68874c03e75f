import CPKCS11
import Foundation
import KMSCore
@testable import KMSProviderPKCS11
import KMSTestSupport
import PKCS11
import Testing

@Suite("PKCS11KeyProvider on SoftHSM")
struct PKCS11KeyProviderTests {
    let token: SoftHSMToken

    init() throws {
        token = try SoftHSMToken.create()
    }

    @Test func dataKeyRoundTrip() async throws {
        try await withProvider(on: token) { provider in
            let created = try await provider.createKey(orders)
            #expect(created.versions.map(\.version) == [.first])
            let context: EncryptionContext = ["cluster": "pg-7", "table": "orders"]
            let dataKey = try await provider.generateDataKey(orders, context: context)
            #expect(dataKey.plaintext.count == 32)
            #expect(dataKey.version == .first)
            let envelope = try Envelope(parsing: dataKey.wrapped)
            #expect(envelope.header.provider == .pkcs11 && envelope.header.keyName == orders && envelope.header.keyID.count == 16)
            let unwrapped = try await provider.unwrap(orders, wrapped: dataKey.wrapped, context: context)
            #expect(unwrapped.plaintext == dataKey.plaintext)
            #expect(unwrapped.version == .first)
            // Two data keys are different keys with different IVs.
            let second = try await provider.generateDataKey(orders, context: context)
            #expect(second.plaintext != dataKey.plaintext)
            #expect(try Envelope(parsing: second.wrapped).iv != envelope.iv)
        }
    }

    @Test func wrongContextIsInvalidInput() async throws {
        try await withProvider(on: token) { provider in
            _ = try await provider.createKey(orders)
            let dataKey = try await provider.generateDataKey(orders, context: ["table": "orders"])
            for wrong: EncryptionContext in [["table": "invoices"], [:], ["table": "orders", "extra": ""], ["Table": "orders"]] {
                #expect(await errorCode { _ = try await provider.unwrap(orders, wrapped: dataKey.wrapped, context: wrong) } == .invalidInput)
            }
            // The provider is still healthy after the failures.
            #expect(try await provider.unwrap(orders, wrapped: dataKey.wrapped, context: ["table": "orders"]).plaintext == dataKey.plaintext)
        }
    }

    @Test func aFlippedByteAnywhereIsAClearError() async throws {
        try await withProvider(on: token) { provider in
            _ = try await provider.createKey(orders)
            let context: EncryptionContext = ["a": "b"]
            let dataKey = try await provider.generateDataKey(orders, context: context)
            for index in dataKey.wrapped.indices {
                var tampered = dataKey.wrapped
                tampered[index] ^= 0x01
                let code = await errorCode { _ = try await provider.unwrap(orders, wrapped: tampered, context: context) }
                // invalidInput for everything, except a key id that names no object at all: notFound.
                #expect(code == .invalidInput || code == .notFound, "byte \(index) gave \(String(describing: code))")
            }
            #expect(try await provider.unwrap(orders, wrapped: dataKey.wrapped, context: context).plaintext == dataKey.plaintext)
        }
    }

    @Test func truncatedAndEmptyBlobsAreInvalidInput() async throws {
        try await withProvider(on: token) { provider in
            _ = try await provider.createKey(orders)
            let dataKey = try await provider.generateDataKey(orders, context: .empty)
            for length in 0..<dataKey.wrapped.count {
                #expect(await errorCode {
                    _ = try await provider.unwrap(orders, wrapped: Array(dataKey.wrapped.prefix(length)), context: .empty)
                } == .invalidInput)
            }
            #expect(await errorCode { _ = try await provider.unwrap(orders, wrapped: dataKey.wrapped + [0], context: .empty) } == .invalidInput)
        }
    }

    @Test func aBlobOfAnotherKeyIsRefused() async throws {
        try await withProvider(on: token) { provider in
            _ = try await provider.createKey(orders)
            _ = try await provider.createKey(invoices)
            let dataKey = try await provider.generateDataKey(orders, context: .empty)
            #expect(await errorCode { _ = try await provider.unwrap(invoices, wrapped: dataKey.wrapped, context: .empty) } == .invalidInput)
        }
    }

    @Test func kekIsSensitiveAndCannotBeExported() async throws {
        try await withProvider(on: token) { provider in
            let description = try await provider.createKey(orders)
            let session = try inspectionSession(token)
            defer { try? session.close() }
            let objects = try session.findObjects([.label("kmsd/orders/v1")])
            #expect(objects.count == 1)
            let kek = try #require(objects.first)
            #expect(try session.attribute(AttributeType.id, of: kek) == description.versions[0].keyID)
            #expect(try session.boolAttribute(AttributeType.token, of: kek))
            #expect(try session.boolAttribute(AttributeType.private, of: kek))
            #expect(try session.boolAttribute(AttributeType.sensitive, of: kek))
            #expect(try !session.boolAttribute(AttributeType.extractable, of: kek))
            #expect(throws: PKCS11Error(returnValue: UInt(CKR_ATTRIBUTE_SENSITIVE), function: "")) {
                try session.attribute(AttributeType.value, of: kek)
            }
            let wrappingKey = try session.generateKey(
                mechanism: MechanismType.aesKeyGen,
                template: [.class(.secretKey), .keyType(.aes), .valueLength(32), .token(false), .wrap(true)])
            #expect(throws: PKCS11Error(returnValue: UInt(CKR_KEY_UNEXTRACTABLE), function: "")) {
                try session.wrapKey(mechanism: MechanismType.aesKeyWrapPad, wrappingKey: wrappingKey, key: kek)
            }
        }
    }

    @Test func rotateThenRetire() async throws {
        try await withProvider(on: token) { provider in
            _ = try await provider.createKey(orders)
            let v1Blob = try await provider.generateDataKey(orders, context: .empty)
            let v2 = try await provider.rotateKey(orders)
            #expect(v2.version.rawValue == 2 && v2.state == .active)
            let v2Blob = try await provider.generateDataKey(orders, context: .empty)
            #expect(v2Blob.version.rawValue == 2)
            #expect(try await provider.unwrap(orders, wrapped: v1Blob.wrapped, context: .empty).version == .first)

            // The wrapping version cannot be retired; v1 can.
            #expect(await errorCode { try await provider.retireVersion(orders, version: v2.version) } == .conflict)
            try await provider.retireVersion(orders, version: .first)
            let described = try await provider.describeKey(orders)
            #expect(described.versions.map(\.state) == [.retired, .active])
            #expect(described.wrappingVersion?.version == v2.version)

            // Wrapping with v1 is refused, by kmsd and by the token itself; unwrapping v1 still works.
            let secret = SecretBytes.random(count: 32)
            #expect(await errorCode { _ = try await provider.wrap(orders, plaintext: secret, context: .empty, version: .first) } == .versionRetired)
            let session = try inspectionSession(token)
            defer { try? session.close() }
            let v1Object = try #require(try session.findObjects([.label("kmsd/orders/v1")]).first)
            #expect(try !session.boolAttribute(AttributeType.encrypt, of: v1Object))
            #expect(try await provider.unwrap(orders, wrapped: v1Blob.wrapped, context: .empty).plaintext == v1Blob.plaintext)
            // Retiring twice is a no-op.
            try await provider.retireVersion(orders, version: .first)
        }
    }

    /// A second `kmsd/orders/v1` object with its own CKA_ID, able to wrap, made beside kmsd.
    func plantSecondVersionOne(_ session: PKCS11Session) throws {
        _ = try session.generateKey(mechanism: MechanismType.aesKeyGen, template: [
            .class(.secretKey), .keyType(.aes), .valueLength(32), .token(true), .private(true), .sensitive(true),
            .extractable(false), .modifiable(true), .encrypt(true), .decrypt(true), .label("kmsd/orders/v1"),
            .id(try session.generateRandom(count: 16)),
        ])
    }

    /// Two token objects with one version number (a restored backup, two writers rotating at once): retire and
    /// destroy act on both, never on the first found only.
    @Test func retireAndDestroyActOnEveryObjectOfADuplicatedVersion() async throws {
        try await withProvider(on: token) { provider in
            _ = try await provider.createKey(orders)
            let first = try await provider.generateDataKey(orders, context: .empty)
            let session = try inspectionSession(token)
            defer { try? session.close() }
            try plantSecondVersionOne(session)
            #expect(try session.findObjects([.label("kmsd/orders/v1")]).count == 2)
            _ = try await provider.rotateKey(orders)

            try await provider.retireVersion(orders, version: .first)
            let objects = try session.findObjects([.label("kmsd/orders/v1")])
            #expect(objects.count == 2)
            for object in objects { #expect(try !session.boolAttribute(AttributeType.encrypt, of: object)) }
            #expect(try await provider.unwrap(orders, wrapped: first.wrapped, context: .empty).plaintext == first.plaintext)

            try await provider.destroyVersion(orders, version: .first)
            #expect(try session.findObjects([.label("kmsd/orders/v1")]).isEmpty)
            #expect(await errorCode { _ = try await provider.unwrap(orders, wrapped: first.wrapped, context: .empty) } == .notFound)
        }
    }

    @Test func aDuplicatedVersionWithOneObjectStillWrappingIsNotDestroyed() async throws {
        try await withProvider(on: token) { provider in
            _ = try await provider.createKey(orders)
            _ = try await provider.rotateKey(orders)
            try await provider.retireVersion(orders, version: .first)
            // A second v1 appears afterwards, able to wrap.
            let session = try inspectionSession(token)
            defer { try? session.close() }
            try plantSecondVersionOne(session)
            do {
                try await provider.destroyVersion(orders, version: .first)
                Issue.record("destroyed a version one of whose objects still wraps")
            } catch let error as KMSError {
                #expect(error.code == .conflict)
                #expect(error.message.contains("2 token objects carry it, 1 still wrap"))
            }
            #expect(try session.findObjects([.label("kmsd/orders/v1")]).count == 2)
        }
    }

    @Test func destroyNeedsRetirementAndIsFinal() async throws {
        try await withProvider(on: token) { provider in
            _ = try await provider.createKey(orders)
            let v1Blob = try await provider.generateDataKey(orders, context: .empty)
            _ = try await provider.rotateKey(orders)
            #expect(await errorCode { try await provider.destroyVersion(orders, version: .first) } == .conflict)
            try await provider.retireVersion(orders, version: .first)
            try await provider.destroyVersion(orders, version: .first)
            #expect(await errorCode { _ = try await provider.unwrap(orders, wrapped: v1Blob.wrapped, context: .empty) } == .notFound)
            #expect(try await provider.describeKey(orders).versions.map(\.version.rawValue) == [2])
        }
    }

    @Test func createAndLookupErrors() async throws {
        try await withProvider(on: token) { provider in
            _ = try await provider.createKey(orders)
            #expect(await errorCode { _ = try await provider.createKey(orders) } == .alreadyExists)
            #expect(await errorCode { _ = try await provider.describeKey(invoices) } == .notFound)
            #expect(await errorCode { _ = try await provider.generateDataKey(invoices, context: .empty) } == .notFound)
            #expect(await errorCode { _ = try await provider.rotateKey(invoices) } == .notFound)
            #expect(try await provider.listKeys() == [orders])
        }
    }

    @Test func aReplicaUnwrapsAfterARotationItHasNotSeen() async throws {
        try await withProvider(on: token) { first in
            _ = try await first.createKey(orders)
            try await withProvider(on: token) { replica in
                // The replica caches v1 as the wrapping version.
                let replicaBlob = try await replica.generateDataKey(orders, context: ["n": "1"])
                #expect(replicaBlob.version == .first)
                _ = try await first.rotateKey(orders)
                let v2Blob = try await first.generateDataKey(orders, context: ["n": "2"])
                #expect(v2Blob.version.rawValue == 2)
                let unwrapped = try await replica.unwrap(orders, wrapped: v2Blob.wrapped, context: ["n": "2"])
                #expect(unwrapped.plaintext == v2Blob.plaintext && unwrapped.version.rawValue == 2)
                #expect(try await first.unwrap(orders, wrapped: replicaBlob.wrapped, context: ["n": "1"]).plaintext == replicaBlob.plaintext)
                // When the first instance retires v1, the replica's cached v1 is refused by the token; the replica
                // re-reads the versions and wraps with v2 instead of failing.
                try await first.retireVersion(orders, version: .first)
                #expect(try await replica.generateDataKey(orders, context: .empty).version.rawValue == 2)
            }
        }
    }

    @Test func wrongPINAndMissingTokenFailToStartClearly() async throws {
        var wrongPIN = configuration(token)
        wrongPIN.pin = SecretBytes(utf8: "not-the-pin")
        do {
            _ = try await PKCS11KeyProvider.start(wrongPIN)
            Issue.record("started with a wrong PIN")
        } catch let error as KMSError {
            #expect(error.code == .unavailable)
            #expect(error.message.contains("PIN is incorrect"))
            #expect(!error.debugDescription.contains("not-the-pin"))
        }
        var missing = configuration(token)
        missing.token.token = "no-such-token"
        do {
            _ = try await PKCS11KeyProvider.start(missing)
            Issue.record("started without a token")
        } catch let error as KMSError {
            #expect(error.message.contains("no token matches pkcs11:token=no-such-token"))
        }
        var badModule = configuration(token)
        badModule.modulePath = "/nonexistent/module.so"
        #expect(await errorCode { _ = try await PKCS11KeyProvider.start(badModule) } == .unavailable)
    }

    @Test func configurationNeverPrintsThePIN() {
        let config = configuration(token)
        #expect(!"\(config)".contains(token.userPIN))
        #expect("\(config)".contains("<redacted>"))
        #expect("\(config.pin)" == "<redacted>")
    }

    @Test func healthReportsTheToken() async throws {
        try await withProvider(on: token) { provider in
            let health = await provider.health()
            #expect(health.state == .ok)
            #expect(health.details["token"] == token.label)
        }
    }
}
