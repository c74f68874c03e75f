internal import CPKCS11

/// An open PKCS#11 session.
///
/// A value type over the handle: copying it does not open another session. Threading: PKCS#11 allows one operation
/// at a time per session; kmsd guarantees that by leasing each session to one caller at a time (the session pool).
/// All methods block; call them only from a thread that may block.
public struct PKCS11Session: Sendable, Hashable {
    public let module: PKCS11Module
    public let slot: SlotID
    public let handle: UInt

    init(module: PKCS11Module, slot: SlotID, handle: CK_SESSION_HANDLE) {
        self.module = module
        self.slot = slot
        self.handle = handle
    }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.module === rhs.module && lhs.handle == rhs.handle }
    public func hash(into hasher: inout Hasher) { hasher.combine(handle) }

    /// `C_CloseSession`.
    public func close() throws {
        try module.call(\.C_CloseSession, "C_CloseSession") { $0(handle) }
    }

    /// `C_GetSessionInfo`.
    public func info() throws -> SessionInfo {
        var info = CK_SESSION_INFO()
        try module.call(\.C_GetSessionInfo, "C_GetSessionInfo") { $0(handle, &info) }
        return SessionInfo(info)
    }

    /// Who logs in.
    public enum UserType: Sendable {
        case user, securityOfficer
        var raw: CK_USER_TYPE { self == .user ? CK_USER_TYPE(CKU_USER) : CK_USER_TYPE(CKU_SO) }
    }

    /// `C_Login`. Logging in is per application and token: every session of this process on the token shares it.
    /// `CKR_USER_ALREADY_LOGGED_IN` is tolerated. The PIN bytes are read in place and not copied.
    public func login(_ user: UserType = .user, pin: UnsafeRawBufferPointer) throws {
        let pointer = UnsafeMutablePointer(mutating: pin.bindMemory(to: CK_BYTE.self).baseAddress)
        do {
            try module.call(\.C_Login, "C_Login") { $0(handle, user.raw, pointer, CK_ULONG(pin.count)) }
        } catch let error as PKCS11Error where error.returnValue == CKR_USER_ALREADY_LOGGED_IN {
            return
        }
    }

    /// `C_Logout`.
    public func logout() throws {
        try module.call(\.C_Logout, "C_Logout") { $0(handle) }
    }

    /// `C_InitPIN` (security officer session): sets the user PIN.
    public func initPIN(_ pin: UnsafeRawBufferPointer) throws {
        let pointer = UnsafeMutablePointer(mutating: pin.bindMemory(to: CK_BYTE.self).baseAddress)
        try module.call(\.C_InitPIN, "C_InitPIN") { $0(handle, pointer, CK_ULONG(pin.count)) }
    }

    /// `C_GenerateRandom` into caller-owned memory (so random key material can be written straight into wiped storage).
    public func generateRandom(into buffer: UnsafeMutableRawBufferPointer) throws {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        try module.call(\.C_GenerateRandom, "C_GenerateRandom") {
            $0(handle, base.assumingMemoryBound(to: CK_BYTE.self), CK_ULONG(buffer.count))
        }
    }

    /// `C_GenerateRandom` returning a new array.
    public func generateRandom(count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { try generateRandom(into: $0) }
        return bytes
    }

    /// `C_FindObjectsInit` / `C_FindObjects` / `C_FindObjectsFinal`: every object matching `template`, up to `limit`.
    public func findObjects(_ template: [PKCS11Attribute], limit: Int = 4096) throws -> [ObjectHandle] {
        try withTemplate(template) { attributes, count in
            try module.call(\.C_FindObjectsInit, "C_FindObjectsInit") { $0(handle, attributes, count) }
        }
        var found: [ObjectHandle] = []
        var failure: (any Error)?
        var batch = [CK_OBJECT_HANDLE](repeating: 0, count: 64)
        while found.count < limit {
            var returned: CK_ULONG = 0
            do {
                try module.call(\.C_FindObjects, "C_FindObjects") { $0(handle, &batch, CK_ULONG(batch.count), &returned) }
            } catch {
                failure = error
                break
            }
            if returned == 0 { break }
            found.append(contentsOf: batch.prefix(Int(returned)))
        }
        // Always end the search, even after a failure, so the session is usable for the next operation.
        do {
            try module.call(\.C_FindObjectsFinal, "C_FindObjectsFinal") { $0(handle) }
        } catch {
            if failure == nil { failure = error }
        }
        if let failure { throw failure }
        return Array(found.prefix(limit))
    }

    /// `C_GetAttributeValue` for one attribute: its bytes.
    /// Throws `CKR_ATTRIBUTE_SENSITIVE` for a sensitive value and `CKR_ATTRIBUTE_TYPE_INVALID` for a missing one.
    public func attribute(_ type: UInt, of object: ObjectHandle) throws -> [UInt8] {
        var attribute = CK_ATTRIBUTE(type: CK_ATTRIBUTE_TYPE(type), pValue: nil, ulValueLen: 0)
        try module.call(\.C_GetAttributeValue, "C_GetAttributeValue") { $0(handle, object, &attribute, 1) }
        if attribute.ulValueLen == kmsd_CK_UNAVAILABLE_INFORMATION {
            throw PKCS11Error(returnValue: UInt(CKR_ATTRIBUTE_TYPE_INVALID), function: "C_GetAttributeValue")
        }
        var value = [UInt8](repeating: 0, count: Int(attribute.ulValueLen))
        try value.withUnsafeMutableBytes { buffer in
            attribute.pValue = buffer.baseAddress
            attribute.ulValueLen = CK_ULONG(buffer.count)
            try module.call(\.C_GetAttributeValue, "C_GetAttributeValue") { $0(handle, object, &attribute, 1) }
        }
        return Array(value.prefix(Int(attribute.ulValueLen)))
    }

    /// Reads several attributes: one call to size them, one to read them. Every attribute must exist and be readable.
    public func attributes(_ types: [UInt], of object: ObjectHandle) throws -> [UInt: [UInt8]] {
        var template = types.map { CK_ATTRIBUTE(type: CK_ATTRIBUTE_TYPE($0), pValue: nil, ulValueLen: 0) }
        try module.call(\.C_GetAttributeValue, "C_GetAttributeValue") { $0(handle, object, &template, CK_ULONG(template.count)) }
        var offsets: [Int] = []
        var total = 0
        for attribute in template {
            if attribute.ulValueLen == kmsd_CK_UNAVAILABLE_INFORMATION {
                throw PKCS11Error(returnValue: UInt(CKR_ATTRIBUTE_TYPE_INVALID), function: "C_GetAttributeValue")
            }
            offsets.append(total)
            total += Int(attribute.ulValueLen)
        }
        var storage = [UInt8](repeating: 0, count: max(total, 1))
        try storage.withUnsafeMutableBytes { buffer in
            for index in template.indices where template[index].ulValueLen > 0 {
                template[index].pValue = buffer.baseAddress.map { $0 + offsets[index] }
            }
            try module.call(\.C_GetAttributeValue, "C_GetAttributeValue") { $0(handle, object, &template, CK_ULONG(template.count)) }
        }
        var result: [UInt: [UInt8]] = [:]
        for (index, attribute) in template.enumerated() {
            result[attribute.type] = Array(storage[offsets[index] ..< offsets[index] + Int(attribute.ulValueLen)])
        }
        return result
    }

    /// A boolean attribute (`CK_BBOOL`).
    public func boolAttribute(_ type: UInt, of object: ObjectHandle) throws -> Bool {
        try attribute(type, of: object).first.map { $0 != 0 } ?? false
    }

    /// `C_SetAttributeValue`.
    public func setAttributes(_ template: [PKCS11Attribute], of object: ObjectHandle) throws {
        try withTemplate(template) { attributes, count in
            try module.call(\.C_SetAttributeValue, "C_SetAttributeValue") { $0(handle, object, attributes, count) }
        }
    }

    /// `C_GenerateKey` with a mechanism that takes no parameters (e.g. `CKM_AES_KEY_GEN`).
    public func generateKey(mechanism: UInt, template: [PKCS11Attribute]) throws -> ObjectHandle {
        var mech = CK_MECHANISM(mechanism: CK_MECHANISM_TYPE(mechanism), pParameter: nil, ulParameterLen: 0)
        var object: CK_OBJECT_HANDLE = 0
        try withTemplate(template) { attributes, count in
            try module.call(\.C_GenerateKey, "C_GenerateKey") { $0(handle, &mech, attributes, count, &object) }
        }
        return object
    }

    /// `C_GenerateKeyPair` with a mechanism that takes no parameters (e.g. `CKM_EC_KEY_PAIR_GEN`).
    public func generateKeyPair(
        mechanism: UInt, publicTemplate: [PKCS11Attribute], privateTemplate: [PKCS11Attribute]
    ) throws -> (publicKey: ObjectHandle, privateKey: ObjectHandle) {
        var mech = CK_MECHANISM(mechanism: CK_MECHANISM_TYPE(mechanism), pParameter: nil, ulParameterLen: 0)
        var publicKey: CK_OBJECT_HANDLE = 0
        var privateKey: CK_OBJECT_HANDLE = 0
        try withTemplate(publicTemplate) { pub, pubCount in
            try withTemplate(privateTemplate) { priv, privCount in
                try module.call(\.C_GenerateKeyPair, "C_GenerateKeyPair") {
                    $0(handle, &mech, pub, pubCount, priv, privCount, &publicKey, &privateKey)
                }
            }
        }
        return (publicKey, privateKey)
    }

    /// `C_DestroyObject`.
    public func destroyObject(_ object: ObjectHandle) throws {
        try module.call(\.C_DestroyObject, "C_DestroyObject") { $0(handle, object) }
    }

    /// `C_WrapKey` with a mechanism that takes no parameters (e.g. `CKM_AES_KEY_WRAP_PAD`).
    public func wrapKey(mechanism: UInt, wrappingKey: ObjectHandle, key: ObjectHandle) throws -> [UInt8] {
        var mech = CK_MECHANISM(mechanism: CK_MECHANISM_TYPE(mechanism), pParameter: nil, ulParameterLen: 0)
        var length: CK_ULONG = 0
        try module.call(\.C_WrapKey, "C_WrapKey") { $0(handle, &mech, wrappingKey, key, nil, &length) }
        var wrapped = [UInt8](repeating: 0, count: Int(length))
        try module.call(\.C_WrapKey, "C_WrapKey") { $0(handle, &mech, wrappingKey, key, &wrapped, &length) }
        return Array(wrapped.prefix(Int(length)))
    }

    /// Single-part `C_SignInit` + `C_Sign` with a mechanism that takes no parameters (e.g. raw `CKM_ECDSA` over a
    /// digest computed by the caller).
    public func sign(mechanism: UInt, key: ObjectHandle, data: [UInt8]) throws -> [UInt8] {
        var mech = CK_MECHANISM(mechanism: CK_MECHANISM_TYPE(mechanism), pParameter: nil, ulParameterLen: 0)
        try module.call(\.C_SignInit, "C_SignInit") { $0(handle, &mech, key) }
        var input = data
        var length: CK_ULONG = 0
        try module.call(\.C_Sign, "C_Sign") { $0(handle, &input, CK_ULONG(input.count), nil, &length) }
        var signature = [UInt8](repeating: 0, count: Int(length))
        try module.call(\.C_Sign, "C_Sign") { $0(handle, &input, CK_ULONG(input.count), &signature, &length) }
        return Array(signature.prefix(Int(length)))
    }
}
