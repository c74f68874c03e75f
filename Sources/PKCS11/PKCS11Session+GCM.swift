internal import CPKCS11

/// The two `CK_GCM_PARAMS` layouts found in the field.
public enum GCMParameterLayout: String, Sendable, CaseIterable, Codable {
    /// PKCS#11 v2.40 and later: `pIv, ulIvLen, ulIvBits, pAAD, ulAADLen, ulTagBits`.
    case v240 = "v2.40"
    /// The v2.30 draft, still expected by some firmware: `pIv, ulIvLen, pAAD, ulAADLen, ulTagBits`.
    case v230 = "v2.30"
}

extension PKCS11Session {
    /// Single-part AES-GCM encryption (`C_EncryptInit` + `C_Encrypt`) under `key`.
    ///
    /// - Parameters:
    ///   - iv: the nonce. When the token generates IVs (`ivFromToken`), pass a zeroed buffer of the IV length: the token
    ///     writes the IV it chose into it, as PKCS#11 v2.40 specifies for `pIv`.
    ///   - ciphertext: receives ciphertext followed by the tag; must hold `plaintext.count + tagBits / 8` bytes.
    /// - Returns: the number of bytes written to `ciphertext`.
    public func encryptGCM(
        key: ObjectHandle, iv: UnsafeMutableRawBufferPointer, aad: UnsafeRawBufferPointer, tagBits: Int = 128,
        layout: GCMParameterLayout, plaintext: UnsafeRawBufferPointer, ciphertext: UnsafeMutableRawBufferPointer
    ) throws -> Int {
        try withGCMMechanism(iv: iv.baseAddress, ivLength: iv.count, aad: aad, tagBits: tagBits, layout: layout) { mechanism in
            try module.call(\.C_EncryptInit, "C_EncryptInit") { $0(handle, mechanism, key) }
            var length = CK_ULONG(ciphertext.count)
            let input = UnsafeMutablePointer(mutating: plaintext.bindMemory(to: CK_BYTE.self).baseAddress)
            let output = ciphertext.bindMemory(to: CK_BYTE.self).baseAddress
            try module.call(\.C_Encrypt, "C_Encrypt") { $0(handle, input, CK_ULONG(plaintext.count), output, &length) }
            return Int(length)
        }
    }

    /// Single-part AES-GCM decryption (`C_DecryptInit` + `C_Decrypt`) under `key`.
    ///
    /// A wrong tag is reported by the module's own code (`CKR_ENCRYPTED_DATA_INVALID` per the standard,
    /// `CKR_GENERAL_ERROR` from SoftHSM); the HSM profile says which. `plaintext` must hold `ciphertext.count` bytes.
    /// - Returns: the number of plaintext bytes written.
    public func decryptGCM(
        key: ObjectHandle, iv: UnsafeRawBufferPointer, aad: UnsafeRawBufferPointer, tagBits: Int = 128,
        layout: GCMParameterLayout, ciphertext: UnsafeRawBufferPointer, plaintext: UnsafeMutableRawBufferPointer
    ) throws -> Int {
        let ivPointer = UnsafeMutableRawPointer(mutating: iv.baseAddress)
        return try withGCMMechanism(iv: ivPointer, ivLength: iv.count, aad: aad, tagBits: tagBits, layout: layout) { mechanism in
            try module.call(\.C_DecryptInit, "C_DecryptInit") { $0(handle, mechanism, key) }
            var length = CK_ULONG(plaintext.count)
            let input = UnsafeMutablePointer(mutating: ciphertext.bindMemory(to: CK_BYTE.self).baseAddress)
            let output = plaintext.bindMemory(to: CK_BYTE.self).baseAddress
            try module.call(\.C_Decrypt, "C_Decrypt") { $0(handle, input, CK_ULONG(ciphertext.count), output, &length) }
            return Int(length)
        }
    }
}

/// Builds `CKM_AES_GCM` with its parameters in the requested layout, valid for the duration of `body`.
private func withGCMMechanism<R>(
    iv: UnsafeMutableRawPointer?, ivLength: Int, aad: UnsafeRawBufferPointer, tagBits: Int, layout: GCMParameterLayout,
    _ body: (UnsafeMutablePointer<CK_MECHANISM>) throws -> R
) throws -> R {
    let ivBytes = iv?.assumingMemoryBound(to: CK_BYTE.self)
    let aadBytes = aad.count == 0 ? nil : UnsafeMutablePointer(mutating: aad.bindMemory(to: CK_BYTE.self).baseAddress)
    switch layout {
    case .v240:
        var params = CK_GCM_PARAMS(
            pIv: ivBytes, ulIvLen: CK_ULONG(ivLength), ulIvBits: CK_ULONG(ivLength * 8),
            pAAD: aadBytes, ulAADLen: CK_ULONG(aad.count), ulTagBits: CK_ULONG(tagBits))
        return try withUnsafeMutablePointer(to: &params) { pointer in
            var mechanism = CK_MECHANISM(
                mechanism: CK_MECHANISM_TYPE(CKM_AES_GCM), pParameter: UnsafeMutableRawPointer(pointer),
                ulParameterLen: CK_ULONG(MemoryLayout<CK_GCM_PARAMS>.size))
            return try body(&mechanism)
        }
    case .v230:
        var params = CK_GCM_PARAMS_V230(
            pIv: ivBytes, ulIvLen: CK_ULONG(ivLength), pAAD: aadBytes, ulAADLen: CK_ULONG(aad.count),
            ulTagBits: CK_ULONG(tagBits))
        return try withUnsafeMutablePointer(to: &params) { pointer in
            var mechanism = CK_MECHANISM(
                mechanism: CK_MECHANISM_TYPE(CKM_AES_GCM), pParameter: UnsafeMutableRawPointer(pointer),
                ulParameterLen: CK_ULONG(MemoryLayout<CK_GCM_PARAMS_V230>.size))
            return try body(&mechanism)
        }
    }
}
