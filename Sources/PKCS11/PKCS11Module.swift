internal import CPKCS11
#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// A loaded PKCS#11 module (a shared library exporting `C_GetFunctionList`).
///
/// Threading: every method is a blocking C call; call them only from a thread that may block (kmsd's `HSMExecutor`),
/// never from an event loop or the Swift concurrency pool. The module is initialized with OS locking, so calls from
/// several threads are allowed as far as the module's own rules allow them (one operation at a time per session).
///
/// Lifecycle: modules are never unloaded (`dlclose` on a module that other code may still call is unsafe).
/// Loading the same path twice yields two values over the same library and the same PKCS#11 state: `finalize()` on one
/// finalizes the library for both.
public final class PKCS11Module: @unchecked Sendable {
    // @unchecked: both pointers are written once in init and only read afterwards; the function list belongs to the
    // module and lives as long as the process (the library is never unloaded).
    private let functions: UnsafeMutablePointer<CK_FUNCTION_LIST>
    /// The path the module was loaded from.
    public let path: String

    /// Loads the module at `path` (`dlopen`, then `C_GetFunctionList`). Does not initialize it.
    public init(path: String) throws {
        self.path = path
        guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL) else {
            let reason = dlerror().map { String(cString: $0) } ?? "dlopen failed"
            throw PKCS11LoadError(path: path, reason: reason)
        }
        guard let symbol = dlsym(handle, "C_GetFunctionList") else {
            throw PKCS11LoadError(path: path, reason: "no C_GetFunctionList symbol: not a PKCS#11 module")
        }
        let getFunctionList = unsafeBitCast(symbol, to: CK_C_GetFunctionList.self)
        var list: UnsafeMutablePointer<CK_FUNCTION_LIST>?
        let rv = getFunctionList(&list)
        guard rv == CKR_OK, let list else {
            throw PKCS11LoadError(path: path, reason: "C_GetFunctionList returned \(PKCS11ReturnValue.name(of: rv))")
        }
        self.functions = list
    }

    /// The Cryptoki version the function list declares.
    public var cryptokiVersion: (major: UInt8, minor: UInt8) {
        (functions.pointee.version.major, functions.pointee.version.minor)
    }

    /// The one path from Swift into the module: resolves the function pointer (a missing pointer is
    /// `CKR_FUNCTION_NOT_SUPPORTED`, never a crash), calls it and checks the return value.
    @inline(__always)
    func call<F>(
        _ pointer: KeyPath<CK_FUNCTION_LIST, F?>, _ name: StaticString, _ body: (F) throws -> CK_RV
    ) throws -> Void {
        guard let function = functions.pointee[keyPath: pointer] else {
            throw PKCS11Error(returnValue: UInt(CKR_FUNCTION_NOT_SUPPORTED), function: "\(name)")
        }
        try check(try body(function), name)
    }

    /// `C_Initialize` with OS locking. Returns `false` when the library was already initialized in this process
    /// (`CKR_CRYPTOKI_ALREADY_INITIALIZED`), which is tolerated.
    @discardableResult
    public func initialize() throws -> Bool {
        var args = CK_C_INITIALIZE_ARGS()
        args.flags = CK_FLAGS(CKF_OS_LOCKING_OK)
        do {
            try call(\.C_Initialize, "C_Initialize") { $0(&args) }
            return true
        } catch let error as PKCS11Error where error.isAlreadyInitialized {
            return false
        }
    }

    /// `C_Finalize`. Invalidates every session and handle of every user of this library in the process.
    public func finalize() throws {
        try call(\.C_Finalize, "C_Finalize") { $0(nil) }
    }

    /// `C_GetInfo`.
    public func info() throws -> ModuleInfo {
        var info = CK_INFO()
        try call(\.C_GetInfo, "C_GetInfo") { $0(&info) }
        return ModuleInfo(info)
    }

    /// `C_GetSlotList`, retried while the list grows between the two calls.
    public func slots(tokenPresent: Bool = true) throws -> [SlotID] {
        while true {
            var count: CK_ULONG = 0
            try call(\.C_GetSlotList, "C_GetSlotList") { $0(tokenPresent ? 1 : 0, nil, &count) }
            if count == 0 { return [] }
            var ids = [CK_SLOT_ID](repeating: 0, count: Int(count))
            do {
                try call(\.C_GetSlotList, "C_GetSlotList") { $0(tokenPresent ? 1 : 0, &ids, &count) }
            } catch let error as PKCS11Error where error.returnValue == CKR_BUFFER_TOO_SMALL {
                continue
            }
            return ids.prefix(Int(count)).map { SlotID(rawValue: $0) }
        }
    }

    /// `C_GetSlotInfo`.
    public func slotInfo(_ slot: SlotID) throws -> SlotInfo {
        var info = CK_SLOT_INFO()
        try call(\.C_GetSlotInfo, "C_GetSlotInfo") { $0(slot.rawValue, &info) }
        return SlotInfo(info)
    }

    /// `C_GetTokenInfo`.
    public func tokenInfo(_ slot: SlotID) throws -> TokenInfo {
        var info = CK_TOKEN_INFO()
        try call(\.C_GetTokenInfo, "C_GetTokenInfo") { $0(slot.rawValue, &info) }
        return TokenInfo(info)
    }

    /// `C_GetMechanismList`: the mechanism types the token in `slot` supports.
    public func mechanisms(_ slot: SlotID) throws -> [UInt] {
        var count: CK_ULONG = 0
        try call(\.C_GetMechanismList, "C_GetMechanismList") { $0(slot.rawValue, nil, &count) }
        var list = [CK_MECHANISM_TYPE](repeating: 0, count: Int(count))
        try call(\.C_GetMechanismList, "C_GetMechanismList") { $0(slot.rawValue, &list, &count) }
        return Array(list.prefix(Int(count)))
    }

    /// `C_GetMechanismInfo`.
    public func mechanismInfo(_ slot: SlotID, _ mechanism: UInt) throws -> MechanismInfo {
        var info = CK_MECHANISM_INFO()
        try call(\.C_GetMechanismInfo, "C_GetMechanismInfo") { $0(slot.rawValue, mechanism, &info) }
        return MechanismInfo(minKeySize: info.ulMinKeySize, maxKeySize: info.ulMaxKeySize, flags: info.flags)
    }

    /// `C_OpenSession` (always a serial session; read-write unless `readWrite` is false).
    public func openSession(_ slot: SlotID, readWrite: Bool = true) throws -> PKCS11Session {
        var handle: CK_SESSION_HANDLE = 0
        var flags = CK_FLAGS(CKF_SERIAL_SESSION)
        if readWrite { flags |= CK_FLAGS(CKF_RW_SESSION) }
        try call(\.C_OpenSession, "C_OpenSession") { $0(slot.rawValue, flags, nil, nil, &handle) }
        return PKCS11Session(module: self, slot: slot, handle: handle)
    }

    /// `C_CloseAllSessions`: closes every session of this application on `slot` (which also ends the login).
    public func closeAllSessions(_ slot: SlotID) throws {
        try call(\.C_CloseAllSessions, "C_CloseAllSessions") { $0(slot.rawValue) }
    }

    /// `C_InitToken`: (re)initializes the token in `slot` with a security officer PIN and a label.
    /// Destroys every object on the token. Used by test fixtures and the development setup only.
    public func initToken(_ slot: SlotID, soPIN: UnsafeRawBufferPointer, label: String) throws {
        var padded = [UInt8](repeating: 0x20, count: 32)
        let bytes = Array(label.utf8)
        guard bytes.count <= 32 else {
            throw PKCS11Error(returnValue: UInt(CKR_ARGUMENTS_BAD), function: "C_InitToken")
        }
        padded.replaceSubrange(0..<bytes.count, with: bytes)
        let pin = UnsafeMutablePointer(mutating: soPIN.bindMemory(to: CK_BYTE.self).baseAddress)
        try call(\.C_InitToken, "C_InitToken") { $0(slot.rawValue, pin, CK_ULONG(soPIN.count), &padded) }
    }

    /// Finds the one slot whose token matches the token and slot attributes of `uri`
    /// (`token`, `manufacturer`, `serial`, `model`, `slot-id`, `slot-description`, `slot-manufacturer`).
    ///
    /// Throws `CKR_TOKEN_NOT_PRESENT` when no token matches, and `PKCS11URIMatchError.ambiguous` when several do:
    /// kmsd never guesses which token holds its keys.
    public func findSlot(matching uri: PKCS11URI) throws -> SlotID {
        var matches: [SlotID] = []
        for slot in try slots(tokenPresent: true) {
            if let wanted = uri.slotID, wanted != slot.rawValue { continue }
            let slotInfo = try self.slotInfo(slot)
            if let wanted = uri.slotDescription, wanted != slotInfo.description { continue }
            if let wanted = uri.slotManufacturer, wanted != slotInfo.manufacturerID { continue }
            let token: TokenInfo
            do {
                token = try tokenInfo(slot)
            } catch let error as PKCS11Error where error.returnValue == CKR_TOKEN_NOT_PRESENT {
                continue
            }
            guard token.isInitialized else { continue }
            if uri.matches(token) { matches.append(slot) }
        }
        switch matches.count {
        case 0: throw PKCS11Error(returnValue: UInt(CKR_TOKEN_NOT_PRESENT), function: "C_GetSlotList")
        case 1: return matches[0]
        default: throw PKCS11URIMatchError.ambiguous(count: matches.count)
        }
    }
}

/// More than one token matched a PKCS#11 URI.
public enum PKCS11URIMatchError: Error, Sendable, CustomStringConvertible {
    case ambiguous(count: Int)
    public var description: String {
        switch self {
        case .ambiguous(let count):
            return "\(count) tokens match the PKCS#11 URI; add serial= or slot-id= to name exactly one"
        }
    }
}
