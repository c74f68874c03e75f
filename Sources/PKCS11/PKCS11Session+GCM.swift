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
            try singlePart((\.C_EncryptInit, "C_EncryptInit"), (\.C_Encrypt, "C_Encrypt"), mechanism, key, plaintext, ciphertext)
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
            try singlePart((\.C_DecryptInit, "C_DecryptInit"), (\.C_Decrypt, "C_Decrypt"), mechanism, key, ciphertext, plaintext)
        }
    }

    /// One single-part operation: `start` (`C_EncryptInit`, `C_DecryptInit`) with `mechanism` and `key`, then `run`
    /// (`C_Encrypt`, `C_Decrypt`) from `input` into `output`. Returns the number of bytes written.
    private func singlePart(
        _ start: (KeyPath<CK_FUNCTION_LIST, CK_C_EncryptInit?>, StaticString),
        _ run: (KeyPath<CK_FUNCTION_LIST, CK_C_Encrypt?>, StaticString),
        _ mechanism: UnsafeMutablePointer<CK_MECHANISM>, _ key: ObjectHandle,
        _ input: UnsafeRawBufferPointer, _ output: UnsafeMutableRawBufferPointer
    ) throws -> Int {
        try module.call(start.0, start.1) { $0(handle, mechanism, key) }
        var length = CK_ULONG(output.count)
        let source = UnsafeMutablePointer(mutating: input.bindMemory(to: CK_BYTE.self).baseAddress)
        let target = output.bindMemory(to: CK_BYTE.self).baseAddress
        try module.call(run.0, run.1) { $0(handle, source, CK_ULONG(input.count), target, &length) }
        return Int(length)
    }
}

extension PKCS11Session {
    /// `encryptGCM` with the IV and AAD as arrays: returns what the module wrote, ciphertext‖tag (which should be
    /// `plaintext.count + 16` bytes; the caller checks). A token that chooses the IV writes it into `iv`.
    public func encryptGCM(
        key: ObjectHandle, iv: inout [UInt8], aad: [UInt8], layout: GCMParameterLayout, plaintext: UnsafeRawBufferPointer
    ) throws -> [UInt8] {
        var ciphertext = [UInt8](repeating: 0, count: plaintext.count + 16)
        let written = try iv.withUnsafeMutableBytes { ivBuffer in
            try aad.withUnsafeBytes { aadBuffer in
                try ciphertext.withUnsafeMutableBytes { output in
                    try encryptGCM(key: key, iv: ivBuffer, aad: aadBuffer, layout: layout, plaintext: plaintext, ciphertext: output)
                }
            }
        }
        if written < ciphertext.count { ciphertext.removeLast(ciphertext.count - written) }
        return ciphertext
    }

    /// `decryptGCM` with the IV, AAD and ciphertext as arrays; returns the number of bytes written to `plaintext`.
    public func decryptGCM(
        key: ObjectHandle, iv: [UInt8], aad: [UInt8], layout: GCMParameterLayout, ciphertext: [UInt8],
        plaintext: UnsafeMutableRawBufferPointer
    ) throws -> Int {
        try iv.withUnsafeBytes { ivBuffer in
            try aad.withUnsafeBytes { aadBuffer in
                try ciphertext.withUnsafeBytes { input in
                    try decryptGCM(key: key, iv: ivBuffer, aad: aadBuffer, layout: layout, ciphertext: input, plaintext: plaintext)
                }
            }
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
