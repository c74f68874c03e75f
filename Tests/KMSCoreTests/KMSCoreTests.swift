import Crypto
import KMSCore
import Testing

@Suite("Key names, versions, context")
struct NamesAndContextTests {
    @Test(arguments: ["orders", "pg-cluster-7.tde", "A_1", "9", String(repeating: "k", count: 64)])
    func validNames(_ name: String) throws {
        #expect(try KeyName(name).rawValue == name)
    }

    @Test(arguments: ["", "-orders", ".hidden", "_x", "a/b", "a b", "ünicode", "a%2F", String(repeating: "k", count: 65)])
    func invalidNames(_ name: String) {
        #expect(throws: KMSError.invalidInput("")) { try KeyName(name) }
    }

    @Test func versions() throws {
        #expect(throws: KMSError.invalidInput("")) { try KeyVersion(0) }
        #expect(try KeyVersion.first.next().rawValue == 2)
        #expect(throws: KMSError.conflict("")) { try KeyVersion(UInt32.max).next() }
        #expect(KeyVersion.first.description == "v1")
    }

    @Test func contextCanonicalEncodingSortsByBytes() throws {
        let context = try EncryptionContext(["b": "2", "a": "1", "Z": ""])
        #expect(context.pairs.map(\.key) == ["Z", "a", "b"])
        #expect(context.canonicalEncoding == [0, 3, 0, 1, 0x5A, 0, 0, 0, 1, 0x61, 0, 1, 0x31, 0, 1, 0x62, 0, 1, 0x32])
        #expect(EncryptionContext.empty.canonicalEncoding == [0, 0])
        #expect(try EncryptionContext(["a": "1", "b": "2"]) == ["b": "2", "a": "1"])
    }

    @Test func contextLimits() {
        #expect(throws: KMSError.invalidInput("")) { try EncryptionContext(["": "x"]) }
        #expect(throws: KMSError.invalidInput("")) { try EncryptionContext([String(repeating: "k", count: 129): "x"]) }
        #expect(throws: KMSError.invalidInput("")) { try EncryptionContext(["k": String(repeating: "v", count: 1025)]) }
        let tooMany = Dictionary(uniqueKeysWithValues: (0...64).map { ("k\($0)", "v") })
        #expect(throws: KMSError.invalidInput("")) { try EncryptionContext(tooMany) }
    }

    @Test func contextErrorsNeverEchoValues() {
        do {
            _ = try EncryptionContext(["tenant": "SECRET-" + String(repeating: "v", count: 1100)])
        } catch {
            #expect(!error.message.contains("SECRET"))
            #expect(error.message.contains("tenant"))
        }
    }
}

@Suite("SecretBytes")
struct SecretBytesTests {
    @Test func neverPrintsItsBytes() {
        let secret = SecretBytes(utf8: "hunter2")
        #expect("\(secret)" == "<redacted>")
        #expect(String(reflecting: secret) == "<redacted>")
        var dumped = ""
        dump(secret, to: &dumped)
        #expect(!dumped.contains("hunter2"))
        #expect(Mirror(reflecting: secret).children.isEmpty)
    }

    @Test func equalityAndCopies() {
        let a = SecretBytes(copying: [1, 2, 3])
        #expect(a == SecretBytes(copying: [1, 2, 3]))
        #expect(a != SecretBytes(copying: [1, 2, 4]))
        #expect(a != SecretBytes(copying: [1, 2]))
        #expect(a.unsafeCopiedBytes() == [1, 2, 3])
        #expect(SecretBytes.random(count: 32).count == 32)
        #expect(SecretBytes.random(count: 32) != SecretBytes.random(count: 32))
        #expect(SecretBytes(copying: []).count == 0)
    }

    @Test func aThrowingInitializerLeavesNothingBehind() {
        struct Boom: Error {}
        #expect(throws: Boom.self) { try SecretBytes(count: 16) { _ in throw Boom() } }
    }
}

@Suite("KMSError")
struct KMSErrorTests {
    @Test func codesAreStableAndEqualityIsOnTheCode() {
        #expect(KMSError.Code.unavailable.rawValue == "unavailable")
        #expect(KMSError.Code.invalidInput.rawValue == "invalid_input")
        #expect(KMSError.Code.versionRetired.rawValue == "version_retired")
        #expect(KMSError.notFound("a") == KMSError.notFound("b"))
        #expect(KMSError.notFound("a") != KMSError.forbidden("a"))
        let error = KMSError.unavailable("the HSM is unavailable", detail: "C_Encrypt returned CKR_DEVICE_ERROR")
        #expect(error.description == "unavailable: the HSM is unavailable")
        #expect(error.debugDescription.contains("CKR_DEVICE_ERROR"))
    }
}

@Suite("Hex")
struct HexTests {
    @Test func digestsAndBytesAreLowerCaseHexTwoDigitsPerByte() {
        // FIPS 180-2's example: SHA-256("abc").
        #expect(Hex.encode(SHA256.hash(data: Array("abc".utf8)))
                == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(Hex.encode([0x00, 0x0f, 0xf0, 0xff] as [UInt8]) == "000ff0ff")
        #expect(Hex.encode([UInt8]()) == "")
    }
}
