import Crypto
import Foundation
import KMIPTTLV
import KMSCore
import KMSService

/// Encrypt and Decrypt with a managed Symmetric Key: AES-GCM, a 96-bit IV (the server's random one when the client
/// gives none), 128-bit tags. In KMIP 1.4 the tag and the additional data travel in their own fields (Authenticated
/// Encryption Tag, Authenticated Encryption Additional Data); KMIP 1.2 and 1.3 have neither, so there the tag follows
/// the ciphertext in Data and there is no additional data. The key is opened with the wrapping key for the one
/// operation and never leaves kmsd.
extension KMIPFrontEnd {
    static let encryptMask: Int32 = 0x04
    static let decryptMask: Int32 = 0x08

    func encrypt(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) async throws -> [TTLVItem]? {
        let id = try objectID(&fields, request)
        let parameters = try GCMParameters(fields.optional(.cryptographicParameters))
        let data = try fields.required(.data).bytes()
        var iv = try fields.optional(.ivCounterNonce)?.bytes()
        let aad = try Self.onlyIn14(request, fields.optional(.authenticatedEncryptionAdditionalData))?.bytes()
        try Self.refuseStreaming(&fields)
        try fields.finish()
        if let given = iv, given.count != 12 { throw KMIPFailure(.invalidField, "AES-GCM takes a 96-bit (12-byte) IV") }
        let object = try await load(id, request)
        try Self.checkKey(object, mask: Self.encryptMask, "Encrypt")
        guard object.canProtect else {
            throw KMIPFailure(.permissionDenied, "the key is \(object.state.name); only an Active key encrypts", recordedAs: .conflict)
        }
        let generated = iv == nil || parameters.randomIV
        if generated { iv = Array(AES.GCM.Nonce()) }
        let material = try await service.openManagedObject(object, wrappingKey: try wrappingKey(request),
                                                           legacySeals: request.configuration.acceptLegacySeals)
        let sealed: AES.GCM.SealedBox
        do {
            let key = material.withUnsafeBytes { SymmetricKey(data: $0) }
            sealed = try AES.GCM.seal(data, using: key, nonce: try AES.GCM.Nonce(data: iv ?? []), authenticating: aad ?? [])
        } catch {
            throw KMIPFailure(.cryptographicFailure, "AES-GCM encryption failed")
        }
        var payload: [TTLVItem] = [.text(.uniqueIdentifier, object.id)]
        if request.version >= KMIPVersion(1, 4) {
            payload.append(.bytes(.data, Array(sealed.ciphertext)))
            if generated { payload.append(.bytes(.ivCounterNonce, iv ?? [])) }
            payload.append(.bytes(.authenticatedEncryptionTag, Array(sealed.tag)))
        } else {
            payload.append(.bytes(.data, Array(sealed.ciphertext) + Array(sealed.tag)))
            if generated { payload.append(.bytes(.ivCounterNonce, iv ?? [])) }
        }
        return payload
    }

    func decrypt(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) async throws -> [TTLVItem]? {
        let id = try objectID(&fields, request)
        _ = try GCMParameters(fields.optional(.cryptographicParameters))
        var data = try fields.required(.data).bytes()
        guard let iv = try fields.optional(.ivCounterNonce)?.bytes() else {
            throw KMIPFailure(.invalidField, "Decrypt needs the IV/Counter/Nonce the encryption used")
        }
        let aad = try Self.onlyIn14(request, fields.optional(.authenticatedEncryptionAdditionalData))?.bytes()
        var tag = try Self.onlyIn14(request, fields.optional(.authenticatedEncryptionTag))?.bytes()
        try Self.refuseStreaming(&fields)
        try fields.finish()
        guard iv.count == 12 else { throw KMIPFailure(.invalidField, "AES-GCM takes a 96-bit (12-byte) IV") }
        if tag == nil {
            guard request.version < KMIPVersion(1, 4) else { throw KMIPFailure(.invalidField, "Decrypt needs the Authenticated Encryption Tag") }
            guard data.count >= 16 else { throw KMIPFailure(.invalidField, "Data must end with the 16-byte GCM tag") }
            tag = Array(data.suffix(16))
            data.removeLast(16)
        }
        guard tag?.count == 16 else { throw KMIPFailure(.invalidField, "the GCM tag has 16 bytes") }
        let object = try await load(id, request)
        try Self.checkKey(object, mask: Self.decryptMask, "Decrypt")
        guard object.state == .active || object.state == .deactivated || object.state == .compromised, object.hasMaterial else {
            throw KMIPFailure(.permissionDenied, "the key is \(object.state.name) and cannot decrypt", recordedAs: .conflict)
        }
        let material = try await service.openManagedObject(object, wrappingKey: try wrappingKey(request),
                                                           legacySeals: request.configuration.acceptLegacySeals)
        let plaintext: Data
        do {
            let key = material.withUnsafeBytes { SymmetricKey(data: $0) }
            let box = try AES.GCM.SealedBox(nonce: try AES.GCM.Nonce(data: iv), ciphertext: data, tag: tag ?? [])
            plaintext = try AES.GCM.open(box, using: key, authenticating: aad ?? [])
        } catch {
            service.events.record("kmip_decrypt_failed")
            throw KMIPFailure(.cryptographicFailure, "the data, IV, tag or additional data do not match this key")
        }
        return [.text(.uniqueIdentifier, object.id), .bytes(.data, Array(plaintext))]
    }

    private static func checkKey(_ object: ManagedObject, mask: Int32, _ operation: String) throws(KMIPFailure) {
        guard object.type == .symmetricKey, object.algorithm == 3 else { throw KMIPFailure(.illegalOperation, "\(operation) needs an AES key") }
        guard (object.usageMask ?? 0) & mask == mask else {
            throw KMIPFailure(.permissionDenied, "the key's Cryptographic Usage Mask does not allow \(operation)")
        }
    }

    private static func onlyIn14(_ request: KMIPOperationRequest, _ item: TTLVItem?) throws(KMIPFailure) -> TTLVItem? {
        guard let item else { return nil }
        guard request.version >= KMIPVersion(1, 4) else { throw KMIPFailure(.invalidField, "\(item.tag) needs KMIP 1.4") }
        return item
    }

    /// Streaming (KMIP 1.3's Correlation Value, Init and Final Indicators) is not offered.
    private static func refuseStreaming(_ fields: inout KMIPFields) throws(KMIPFailure) {
        for tag in [TTLVTag(0x4200D6), TTLVTag(0x4200D7), TTLVTag(0x4200D8)] where fields.optional(tag) != nil {
            throw KMIPFailure(.featureNotSupported, "kmsd does not stream Encrypt or Decrypt; send the data in one request")
        }
    }
}

/// The Cryptographic Parameters kmsd accepts: AES, GCM, no padding, a 96-bit IV, a 128-bit tag. Anything else is an
/// `Invalid Field` naming it.
struct GCMParameters {
    var randomIV = false

    init(_ item: TTLVItem?) throws(KMIPFailure) {
        guard let item else { return }
        var fields = try KMIPFields(item)
        if let mode = try fields.optional(.blockCipherMode)?.enumeration(), mode != 9 {
            throw KMIPFailure(.invalidField, "kmsd encrypts with AES-GCM only (Block Cipher Mode GCM)")
        }
        if let padding = try fields.optional(.paddingMethod)?.enumeration(), padding != 1 {
            throw KMIPFailure(.invalidField, "AES-GCM takes no padding (Padding Method None)")
        }
        if let algorithm = try fields.optional(.cryptographicAlgorithm)?.enumeration(), algorithm != 3 {
            throw KMIPFailure(.invalidField, "kmsd encrypts with AES only")
        }
        randomIV = try fields.optional(.randomIV)?.boolean() ?? false
        if let bits = try fields.optional(.ivLength)?.integer(), bits != 96 { throw KMIPFailure(.invalidField, "IV Length must be 96 bits") }
        if let bytes = try fields.optional(.tagLength)?.integer(), bytes != 16 { throw KMIPFailure(.invalidField, "Tag Length must be 16 bytes") }
        try fields.finish()
    }
}
