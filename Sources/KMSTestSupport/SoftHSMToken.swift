public import KMSCore
public import PKCS11
import Foundation
import Synchronization

/// A fresh SoftHSM2 token for one test, benchmark or demo.
///
/// The first use in a process points `SOFTHSM2_CONF` at a private configuration in a new temporary directory (before
/// SoftHSM is initialized, which is when SoftHSM reads it), so tests never touch the machine's own tokens. Each
/// `create()` then initializes a new token with a unique label in that directory, in process, through PKCS#11
/// (`C_InitToken`, `C_InitPIN`): tokens are isolated by label and every test finds its token by label, as kmsd does.
public struct SoftHSMToken: Sendable {
    /// Debian's SoftHSM2 module, or `KMSD_SOFTHSM_MODULE` when set.
    public static var defaultModulePath: String {
        ProcessInfo.processInfo.environment["KMSD_SOFTHSM_MODULE"] ?? "/usr/lib/softhsm/libsofthsm2.so"
    }

    public let label: String
    public let module: PKCS11Module
    public let slot: SlotID
    public let userPIN: String
    public let securityOfficerPIN: String

    /// `pkcs11:token=<label>`.
    public var uri: PKCS11URI {
        var uri = PKCS11URI()
        uri.token = label
        return uri
    }

    /// The user PIN as kmsd holds secrets.
    public var pin: SecretBytes { SecretBytes(utf8: userPIN) }

    private static let state = Mutex<String?>(nil)

    /// The directory holding this process's SoftHSM configuration and tokens.
    public static func prepareEnvironment() throws -> String {
        try state.withLock { directory in
            if let directory { return directory }
            let base = FileManager.default.temporaryDirectory
                .appendingPathComponent("kmsd-softhsm-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
            let tokens = base.appendingPathComponent("tokens")
            try FileManager.default.createDirectory(at: tokens, withIntermediateDirectories: true)
            let configuration = """
                directories.tokendir = \(tokens.path)
                objectstore.backend = file
                log.level = ERROR
                slots.removable = false
                slots.mechanisms = ALL

                """
            let file = base.appendingPathComponent("softhsm2.conf")
            try configuration.write(to: file, atomically: true, encoding: .utf8)
            setenv("SOFTHSM2_CONF", file.path, 1)
            // The module behind every `FaultShim` of this process (set here, once, before any thread reads it).
            setenv("KMSD_FAULT_SHIM_MODULE", defaultModulePath, 1)
            directory = base.path
            return base.path
        }
    }

    /// Initializes a new token. Token creation is serialized within the process (SoftHSM always offers exactly one
    /// uninitialized slot, which two concurrent creations would both claim).
    public static func create(label: String? = nil, modulePath: String = SoftHSMToken.defaultModulePath) throws -> SoftHSMToken {
        _ = try prepareEnvironment()
        let label = label ?? "kmsd-test-\(UInt32.random(in: 0...UInt32.max))"
        let userPIN = "user-\(UInt32.random(in: 100_000...999_999))"
        let soPIN = "so-\(UInt32.random(in: 100_000...999_999))"
        let module = try PKCS11Module(path: modulePath)
        return try creation.withLock { _ in
            try module.initialize()
            var free: SlotID?
            for slot in try module.slots(tokenPresent: true) where try !module.tokenInfo(slot).isInitialized {
                free = slot
                break
            }
            guard let free else { throw FixtureError("SoftHSM offers no uninitialized slot") }
            try Array(soPIN.utf8).withUnsafeBytes { try module.initToken(free, soPIN: $0, label: label) }
            // SoftHSM gives the new token a new slot id: find it by label, as kmsd will.
            var uri = PKCS11URI()
            uri.token = label
            let slot = try module.findSlot(matching: uri)
            let session = try module.openSession(slot)
            defer { try? session.close() }
            try Array(soPIN.utf8).withUnsafeBytes { try session.login(.securityOfficer, pin: $0) }
            try Array(userPIN.utf8).withUnsafeBytes { try session.initPIN($0) }
            try session.logout()
            return SoftHSMToken(label: label, module: module, slot: slot, userPIN: userPIN, securityOfficerPIN: soPIN)
        }
    }

    private static let creation = Mutex(())
}

/// A test fixture could not be set up.
public struct FixtureError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
