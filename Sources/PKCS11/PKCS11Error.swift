internal import CPKCS11

/// A failed PKCS#11 call: the raw `CK_RV`, its name and the function that returned it.
///
/// Callers decide what to do from the classification helpers (`isSessionInvalid`, `requiresLogin`, `isDeviceGone`, …),
/// never from the text. Two errors are equal when their return values are equal. The description names the function
/// and the code only: PKCS#11 return values carry no secrets, and no argument of the call is ever included.
public struct PKCS11Error: Error, Sendable, Hashable, CustomStringConvertible {
    /// The raw `CK_RV` returned by the module.
    public let returnValue: UInt
    /// The PKCS#11 function that returned it, e.g. `C_Encrypt`.
    public let function: String

    public init(returnValue: UInt, function: String) {
        self.returnValue = returnValue
        self.function = function
    }

    /// The standard name of the return value, e.g. `CKR_SESSION_HANDLE_INVALID`.
    public var name: String { PKCS11ReturnValue.name(of: returnValue) }

    public var description: String {
        "\(function) returned \(name) (0x\(String(returnValue, radix: 16)))"
    }

    public static func == (lhs: PKCS11Error, rhs: PKCS11Error) -> Bool { lhs.returnValue == rhs.returnValue }
    public func hash(into hasher: inout Hasher) { hasher.combine(returnValue) }

    /// The session handle is dead: the session must be evicted, never handed out again.
    public var isSessionInvalid: Bool {
        returnValue == CKR_SESSION_HANDLE_INVALID || returnValue == CKR_SESSION_CLOSED
    }

    /// The login state was lost (for example every session of the application was closed): log in again and retry.
    public var requiresLogin: Bool { returnValue == CKR_USER_NOT_LOGGED_IN }

    /// The token refused the PIN itself (wrong, locked or expired). Logging in again with the same PIN can only move
    /// the token toward locking it, so nothing may retry.
    public var rejectsPIN: Bool {
        returnValue == CKR_PIN_INCORRECT || returnValue == CKR_PIN_LOCKED || returnValue == CKR_PIN_EXPIRED
    }

    /// The device, token or library state is gone: quiesce, finalize, initialize and reconnect.
    public var isDeviceGone: Bool {
        switch returnValue {
        case UInt(CKR_DEVICE_ERROR), UInt(CKR_DEVICE_REMOVED), UInt(CKR_TOKEN_NOT_PRESENT),
            UInt(CKR_CRYPTOKI_NOT_INITIALIZED), UInt(CKR_SLOT_ID_INVALID), UInt(CKR_TOKEN_NOT_RECOGNIZED):
            return true
        default:
            return false
        }
    }

    /// A cached object handle no longer names an object (it was destroyed, or handles changed after a reconnect).
    public var isHandleInvalid: Bool {
        returnValue == CKR_KEY_HANDLE_INVALID || returnValue == CKR_OBJECT_HANDLE_INVALID
    }

    /// The key exists but its attributes forbid the operation (for example `CKA_ENCRYPT` is false on a retired KEK).
    public var isKeyFunctionNotPermitted: Bool { returnValue == CKR_KEY_FUNCTION_NOT_PERMITTED }

    /// The module does not implement the function (also used when the function list has no pointer for it).
    public var isFunctionNotSupported: Bool { returnValue == CKR_FUNCTION_NOT_SUPPORTED }

    /// The module was already initialized in this process (tolerated by `PKCS11Module.initialize()`).
    public var isAlreadyInitialized: Bool { returnValue == CKR_CRYPTOKI_ALREADY_INITIALIZED }
}

/// The only way a PKCS#11 return value is turned into Swift control flow: throws a `PKCS11Error` keeping the raw code
/// and the function for anything but `CKR_OK`.
@inline(__always)
func check(_ returnValue: CK_RV, _ function: StaticString) throws(PKCS11Error) {
    guard returnValue == CKR_OK else {
        throw PKCS11Error(returnValue: returnValue, function: "\(function)")
    }
}

/// Loading a module failed before any PKCS#11 function could run (no such file, not a PKCS#11 module, …).
public struct PKCS11LoadError: Error, Sendable, CustomStringConvertible {
    public let path: String
    public let reason: String
    public var description: String { "cannot load PKCS#11 module \(path): \(reason)" }
}
