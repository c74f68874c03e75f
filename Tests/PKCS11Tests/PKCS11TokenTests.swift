import CPKCS11
import KMSTestSupport
import PKCS11
import Testing

/// The PKCS#11 layer against a real SoftHSM2 token (a fresh one per test).
@Suite("PKCS#11 layer on SoftHSM")
struct PKCS11TokenTests {
    let token: SoftHSMToken
    let session: PKCS11Session

    init() throws {
        token = try SoftHSMToken.create()
        session = try token.module.openSession(token.slot)
        try Array(token.userPIN.utf8).withUnsafeBytes { try session.login(pin: $0) }
    }

    private func makeKEK(label: String = "kmsd/test/v1", extractable: Bool = false) throws -> ObjectHandle {
        try session.generateKey(
            mechanism: MechanismType.aesKeyGen,
            template: [
                .class(.secretKey), .keyType(.aes), .valueLength(32), .token(true), .private(true),
                .sensitive(true), .extractable(extractable), .encrypt(true), .decrypt(true), .label(label),
                .id([UInt8](repeating: 7, count: 16)),
            ])
    }

    @Test func loadingAMissingModuleReportsDlerror() {
        #expect(throws: PKCS11LoadError.self) { try PKCS11Module(path: "/nonexistent/libnothing.so") }
        do {
            _ = try PKCS11Module(path: "/nonexistent/libnothing.so")
        } catch let error as PKCS11LoadError {
            #expect(error.reason.contains("No such file"))
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func loadingANonPKCS11LibraryIsRefused() {
        #expect(throws: PKCS11LoadError.self) { try PKCS11Module(path: "libm.so.6") }
    }

    @Test func initializeTwiceIsTolerated() throws {
        // The fixture initialized the library already; a second module value over the same library says so.
        let again = try PKCS11Module(path: token.module.path)
        #expect(try again.initialize() == false)
    }

    @Test func findsTheTokenByLabelAndReportsLimits() throws {
        #expect(try token.module.findSlot(matching: token.uri) == token.slot)
        let info = try token.module.tokenInfo(token.slot)
        #expect(info.label == token.label)
        #expect(info.isInitialized && info.isUserPINInitialized)
        var wrong = PKCS11URI()
        wrong.token = "no-such-token"
        #expect(throws: PKCS11Error(returnValue: UInt(CKR_TOKEN_NOT_PRESENT), function: "")) {
            try token.module.findSlot(matching: wrong)
        }
    }

    @Test func loginIsVisibleInSessionInfo() throws {
        #expect(try session.info().isUserLoggedIn)
        let other = try token.module.openSession(token.slot)
        defer { try? other.close() }
        // Login is per application and token: a new session shares it.
        #expect(try other.info().isUserLoggedIn)
    }

    @Test func kekValueIsSensitiveAndTheKeyCannotBeWrapped() throws {
        let kek = try makeKEK()
        #expect(throws: PKCS11Error(returnValue: UInt(CKR_ATTRIBUTE_SENSITIVE), function: "")) {
            try session.attribute(AttributeType.value, of: kek)
        }
        #expect(try session.boolAttribute(AttributeType.extractable, of: kek) == false)
        #expect(try session.boolAttribute(AttributeType.neverExtractable, of: kek) == true)
        let wrappingKey = try session.generateKey(
            mechanism: MechanismType.aesKeyGen,
            template: [.class(.secretKey), .keyType(.aes), .valueLength(32), .token(false), .wrap(true)])
        do {
            _ = try session.wrapKey(mechanism: MechanismType.aesKeyWrapPad, wrappingKey: wrappingKey, key: kek)
            Issue.record("a non-extractable KEK was wrapped")
        } catch let error as PKCS11Error {
            #expect(error.returnValue == UInt(CKR_KEY_UNEXTRACTABLE))
        }
    }

    @Test func gcmRoundTripWithTheV240Layout() throws {
        let kek = try makeKEK()
        let iv = try session.generateRandom(count: 12)
        let plaintext = try session.generateRandom(count: 32)
        let aad = Array("header".utf8)
        var ivCopy = iv
        var ciphertext = [UInt8](repeating: 0, count: 48)
        let written = try ivCopy.withUnsafeMutableBytes { ivBuffer in
            try aad.withUnsafeBytes { aadBuffer in
                try plaintext.withUnsafeBytes { input in
                    try ciphertext.withUnsafeMutableBytes { output in
                        try session.encryptGCM(key: kek, iv: ivBuffer, aad: aadBuffer, layout: .v240, plaintext: input, ciphertext: output)
                    }
                }
            }
        }
        #expect(written == 48)
        #expect(ivCopy == iv)
        var recovered = [UInt8](repeating: 0, count: 48)
        let count = try decrypt(kek, iv: iv, aad: aad, ciphertext: ciphertext, into: &recovered)
        #expect(Array(recovered.prefix(count)) == plaintext)

        // A flipped tag bit: SoftHSM reports CKR_GENERAL_ERROR (the softhsm2 profile records this quirk).
        var tampered = ciphertext
        tampered[47] ^= 1
        do {
            _ = try decrypt(kek, iv: iv, aad: aad, ciphertext: tampered, into: &recovered)
            Issue.record("tampered ciphertext decrypted")
        } catch let error as PKCS11Error {
            #expect(error.returnValue == UInt(CKR_GENERAL_ERROR) || error.returnValue == UInt(CKR_ENCRYPTED_DATA_INVALID))
        }
        // The session stays usable after the failed decryption.
        _ = try decrypt(kek, iv: iv, aad: aad, ciphertext: ciphertext, into: &recovered)
    }

    @Test func theV230LayoutIsRejectedCleanlyBySoftHSM() throws {
        let kek = try makeKEK()
        var iv = [UInt8](repeating: 1, count: 12)
        var out = [UInt8](repeating: 0, count: 48)
        let plaintext = [UInt8](repeating: 2, count: 32)
        do {
            _ = try iv.withUnsafeMutableBytes { ivBuffer in
                try plaintext.withUnsafeBytes { input in
                    try out.withUnsafeMutableBytes { output in
                        try session.encryptGCM(
                            key: kek, iv: ivBuffer, aad: UnsafeRawBufferPointer(start: nil, count: 0), layout: .v230,
                            plaintext: input, ciphertext: output)
                    }
                }
            }
            Issue.record("SoftHSM accepted the v2.30 GCM layout")
        } catch let error as PKCS11Error {
            #expect(error.function == "C_EncryptInit")
            #expect([UInt(CKR_ARGUMENTS_BAD), UInt(CKR_MECHANISM_PARAM_INVALID)].contains(error.returnValue))
        }
    }

    @Test func clearingEncryptStopsWrappingButNotUnwrapping() throws {
        let kek = try makeKEK()
        let iv = [UInt8](repeating: 3, count: 12)
        let plaintext = [UInt8](repeating: 4, count: 32)
        let ciphertext = try encrypt(kek, iv: iv, plaintext: plaintext)
        try session.setAttributes([.encrypt(false)], of: kek)
        #expect(try session.boolAttribute(AttributeType.encrypt, of: kek) == false)
        do {
            _ = try encrypt(kek, iv: iv, plaintext: plaintext)
            Issue.record("encryption allowed after CKA_ENCRYPT was cleared")
        } catch let error as PKCS11Error {
            #expect(error.isKeyFunctionNotPermitted)
        }
        var recovered = [UInt8](repeating: 0, count: 48)
        let count = try decrypt(kek, iv: iv, aad: [], ciphertext: ciphertext, into: &recovered)
        #expect(Array(recovered.prefix(count)) == plaintext)
    }

    @Test func findObjectsByIDAndLabel() throws {
        let kek = try makeKEK(label: "kmsd/find/v1")
        #expect(try session.findObjects([.class(.secretKey), .id([UInt8](repeating: 7, count: 16))]) == [kek])
        #expect(try session.findObjects([.label("kmsd/find/v1")]) == [kek])
        #expect(try session.findObjects([.label("kmsd/find/v2")]).isEmpty)
        let attributes = try session.attributes([AttributeType.label, AttributeType.id], of: kek)
        #expect(attributes[AttributeType.label] == Array("kmsd/find/v1".utf8))
        #expect(attributes[AttributeType.id] == [UInt8](repeating: 7, count: 16))
    }

    @Test func closedSessionsReportSessionHandleInvalid() throws {
        let other = try token.module.openSession(token.slot)
        try other.close()
        do {
            _ = try other.generateRandom(count: 8)
            Issue.record("a closed session still worked")
        } catch let error as PKCS11Error {
            #expect(error.isSessionInvalid)
            #expect(error.function == "C_GenerateRandom")
            #expect(error.description.contains("CKR_SESSION_HANDLE_INVALID"))
        }
    }

    private func encrypt(_ key: ObjectHandle, iv: [UInt8], plaintext: [UInt8]) throws -> [UInt8] {
        var ivCopy = iv
        var out = [UInt8](repeating: 0, count: plaintext.count + 16)
        let n = try ivCopy.withUnsafeMutableBytes { ivBuffer in
            try plaintext.withUnsafeBytes { input in
                try out.withUnsafeMutableBytes { output in
                    try session.encryptGCM(
                        key: key, iv: ivBuffer, aad: UnsafeRawBufferPointer(start: nil, count: 0), layout: .v240,
                        plaintext: input, ciphertext: output)
                }
            }
        }
        return Array(out.prefix(n))
    }

    private func decrypt(_ key: ObjectHandle, iv: [UInt8], aad: [UInt8], ciphertext: [UInt8], into output: inout [UInt8]) throws -> Int {
        try iv.withUnsafeBytes { ivBuffer in
            try aad.withUnsafeBytes { aadBuffer in
                try ciphertext.withUnsafeBytes { input in
                    try output.withUnsafeMutableBytes { out in
                        try session.decryptGCM(key: key, iv: ivBuffer, aad: aadBuffer, layout: .v240, ciphertext: input, plaintext: out)
                    }
                }
            }
        }
    }
}

extension PKCS11TokenTests {
    @Test func readsSeveralAttributesInOneCall() throws {
        let key = try session.generateKey(
            mechanism: MechanismType.aesKeyGen,
            template: [
                .class(.secretKey), .keyType(.aes), .valueLength(32), .token(true), .private(true), .sensitive(true),
                .extractable(false), .encrypt(false), .label("kmsd/attrs/v1"), .id([1, 2, 3]),
            ])
        let values = try session.attributes([AttributeType.label, AttributeType.id, AttributeType.encrypt], of: key)
        #expect(values[AttributeType.label] == Array("kmsd/attrs/v1".utf8))
        #expect(values[AttributeType.id] == [1, 2, 3])
        #expect(values[AttributeType.encrypt] == [0])
        // A sensitive attribute in the list fails the whole read with the module's code.
        #expect(throws: PKCS11Error(returnValue: UInt(CKR_ATTRIBUTE_SENSITIVE), function: "")) {
            try session.attributes([AttributeType.label, AttributeType.value], of: key)
        }
    }
}
