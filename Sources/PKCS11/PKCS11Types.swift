internal import CPKCS11

/// A PKCS#11 slot id (`CK_SLOT_ID`). Slot ids are assigned by the module and may change across restarts:
/// find tokens by label or serial (`PKCS11Module.findSlot(matching:)`), never by a remembered id.
public struct SlotID: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt
    public init(rawValue: UInt) { self.rawValue = rawValue }
    init(_ rawValue: CK_SLOT_ID) { self.rawValue = rawValue }
    public var description: String { String(rawValue) }
}

/// A PKCS#11 object handle (`CK_OBJECT_HANDLE`). Valid in every session of this process until the object is
/// destroyed or the library is finalized.
public typealias ObjectHandle = UInt

/// Fixed-width, space-padded PKCS#11 text fields as Swift strings (trailing blanks and NULs removed).
func paddedString<T>(_ field: T) -> String {
    withUnsafeBytes(of: field) { raw in
        var bytes = Array(raw)
        while let last = bytes.last, last == 0x20 || last == 0 { bytes.removeLast() }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// `CK_INFO`.
public struct ModuleInfo: Sendable {
    public let cryptokiVersion: String
    public let manufacturerID: String
    public let libraryDescription: String
    public let libraryVersion: String
    init(_ info: CK_INFO) {
        cryptokiVersion = "\(info.cryptokiVersion.major).\(info.cryptokiVersion.minor)"
        manufacturerID = paddedString(info.manufacturerID)
        libraryDescription = paddedString(info.libraryDescription)
        libraryVersion = "\(info.libraryVersion.major).\(info.libraryVersion.minor)"
    }
}

/// `CK_SLOT_INFO`.
public struct SlotInfo: Sendable {
    public let description: String
    public let manufacturerID: String
    public let tokenPresent: Bool
    init(_ info: CK_SLOT_INFO) {
        description = paddedString(info.slotDescription)
        manufacturerID = paddedString(info.manufacturerID)
        tokenPresent = info.flags & CK_FLAGS(CKF_TOKEN_PRESENT) != 0
    }
}

/// `CK_TOKEN_INFO`, with the session limits decoded (`nil` = no limit or not reported).
public struct TokenInfo: Sendable {
    public let label: String
    public let manufacturerID: String
    public let model: String
    public let serialNumber: String
    public let flags: UInt
    /// `ulMaxSessionCount`; `nil` when the token reports `CK_EFFECTIVELY_INFINITE` or `CK_UNAVAILABLE_INFORMATION`.
    public let maxSessionCount: Int?
    /// `ulMaxRwSessionCount`; `nil` when the token reports `CK_EFFECTIVELY_INFINITE` or `CK_UNAVAILABLE_INFORMATION`.
    public let maxReadWriteSessionCount: Int?
    /// `ulSessionCount`: sessions open on the token (all applications, if the token counts them); `nil` if not reported.
    public let sessionCount: Int?
    /// `ulRwSessionCount`; `nil` if not reported.
    public let readWriteSessionCount: Int?
    public let firmwareVersion: String

    init(_ info: CK_TOKEN_INFO) {
        label = paddedString(info.label)
        manufacturerID = paddedString(info.manufacturerID)
        model = paddedString(info.model)
        serialNumber = paddedString(info.serialNumber)
        flags = info.flags
        maxSessionCount = TokenInfo.limit(info.ulMaxSessionCount)
        maxReadWriteSessionCount = TokenInfo.limit(info.ulMaxRwSessionCount)
        sessionCount = info.ulSessionCount == kmsd_CK_UNAVAILABLE_INFORMATION ? nil : Int(info.ulSessionCount)
        readWriteSessionCount = info.ulRwSessionCount == kmsd_CK_UNAVAILABLE_INFORMATION ? nil : Int(info.ulRwSessionCount)
        firmwareVersion = "\(info.firmwareVersion.major).\(info.firmwareVersion.minor)"
    }

    private static func limit(_ value: CK_ULONG) -> Int? {
        if value == kmsd_CK_EFFECTIVELY_INFINITE || value == kmsd_CK_UNAVAILABLE_INFORMATION { return nil }
        return value > UInt(Int.max) ? nil : Int(value)
    }

    /// `CKF_TOKEN_INITIALIZED`.
    public var isInitialized: Bool { flags & CK_FLAGS(CKF_TOKEN_INITIALIZED) != 0 }
    /// `CKF_USER_PIN_INITIALIZED`.
    public var isUserPINInitialized: Bool { flags & CK_FLAGS(CKF_USER_PIN_INITIALIZED) != 0 }
    /// `CKF_LOGIN_REQUIRED`.
    public var loginRequired: Bool { flags & CK_FLAGS(CKF_LOGIN_REQUIRED) != 0 }
}

/// `CK_MECHANISM_INFO`.
public struct MechanismInfo: Sendable {
    public let minKeySize: UInt
    public let maxKeySize: UInt
    public let flags: UInt
    public var canEncrypt: Bool { flags & CK_FLAGS(CKF_ENCRYPT) != 0 }
    public var canDecrypt: Bool { flags & CK_FLAGS(CKF_DECRYPT) != 0 }
    public var canGenerate: Bool { flags & CK_FLAGS(CKF_GENERATE) != 0 }
    public var canSign: Bool { flags & CK_FLAGS(CKF_SIGN) != 0 }
}

/// `CK_SESSION_INFO`, decoded.
public struct SessionInfo: Sendable {
    public enum State: Sendable, Equatable {
        case readOnlyPublic, readOnlyUser, readWritePublic, readWriteUser, readWriteSecurityOfficer
        case unknown(UInt)
    }
    public let state: State
    public let deviceError: UInt
    /// The session can use private objects (a user is logged in).
    public var isUserLoggedIn: Bool { state == .readOnlyUser || state == .readWriteUser }

    init(_ info: CK_SESSION_INFO) {
        switch info.state {
        case CK_STATE(CKS_RO_PUBLIC_SESSION): state = .readOnlyPublic
        case CK_STATE(CKS_RO_USER_FUNCTIONS): state = .readOnlyUser
        case CK_STATE(CKS_RW_PUBLIC_SESSION): state = .readWritePublic
        case CK_STATE(CKS_RW_USER_FUNCTIONS): state = .readWriteUser
        case CK_STATE(CKS_RW_SO_FUNCTIONS): state = .readWriteSecurityOfficer
        default: state = .unknown(info.state)
        }
        deviceError = info.ulDeviceError
    }
}

/// Mechanism type numbers kmsd uses by name (`CKM_*`).
public enum MechanismType {
    public static let aesKeyGen = UInt(CKM_AES_KEY_GEN)
    public static let aesGCM = UInt(CKM_AES_GCM)
    public static let aesKeyWrap = UInt(CKM_AES_KEY_WRAP)
    public static let aesKeyWrapPad = UInt(CKM_AES_KEY_WRAP_PAD)
    public static let ecKeyPairGen = UInt(CKM_EC_KEY_PAIR_GEN)
    public static let ecdsa = UInt(CKM_ECDSA)
    public static let aesCTR = UInt(CKM_AES_CTR)
    public static let aesCMAC = UInt(CKM_AES_CMAC)
    public static let sha256HMAC = UInt(CKM_SHA256_HMAC)
    /// PKCS#11 3.0; not in the v2.40 header.
    public static let chacha20Poly1305: UInt = 0x4021

    private static let named: [(UInt, String)] = [
        (aesKeyGen, "CKM_AES_KEY_GEN"), (aesGCM, "CKM_AES_GCM"), (aesKeyWrap, "CKM_AES_KEY_WRAP"),
        (aesKeyWrapPad, "CKM_AES_KEY_WRAP_PAD"), (ecKeyPairGen, "CKM_EC_KEY_PAIR_GEN"), (ecdsa, "CKM_ECDSA"),
        (aesCTR, "CKM_AES_CTR"), (aesCMAC, "CKM_AES_CMAC"), (sha256HMAC, "CKM_SHA256_HMAC"),
        (chacha20Poly1305, "CKM_CHACHA20_POLY1305"),
    ]

    /// The `CKM_*` name of a mechanism kmsd knows, for reports; other values are printed in hex.
    public static func name(of type: UInt) -> String {
        named.first { $0.0 == type }?.1 ?? "CKM_0x" + String(type, radix: 16)
    }

    /// Parses `CKM_AES_GCM`-style names (those kmsd knows) or hex (`0x1087`).
    public static func parse(_ text: String) -> UInt? {
        if let known = named.first(where: { $0.1 == text }) { return known.0 }
        if text.hasPrefix("0x") { return UInt(text.dropFirst(2), radix: 16) }
        return nil
    }
}
