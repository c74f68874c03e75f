import Foundation

/// Drives `PKCS11FaultShim`, the pass-through PKCS#11 module that injects faults in front of SoftHSM.
///
/// Each `FaultShim` is a private copy of the shim library, so every test has its own fault state even though all of
/// them share one SoftHSM instance in the process: load `modulePath` instead of SoftHSM's path, then call `inject`
/// and `clear` while the code under test runs. The shim's own documentation (its header) lists the commands.
public struct FaultShim: Sendable {
    /// The copy of the shim library to load as the PKCS#11 module.
    public let modulePath: String
    /// The control file the shim watches (`<modulePath>.control`).
    public let controlPath: String
    /// The counters the shim writes (`<controlPath>.status`).
    public var statusPath: String { controlPath + ".status" }

    /// One fault command.
    public enum Fault: Sendable, Equatable {
        /// The next `count` calls of `function` (every function when nil) return `value` (every call when count is nil).
        case fail(function: String? = nil, value: UInt, count: Int? = nil)
        /// Matching calls sleep this long before reaching the module.
        case hang(milliseconds: Int, function: String? = nil)
        /// Device down: every call fails with `CKR_DEVICE_ERROR`; after re-initialization there are no slots.
        case down
        /// The application is logged out of the token (once).
        case dropLogin
        /// The next `count` calls on a session close it and return `CKR_SESSION_HANDLE_INVALID`.
        case killSessions(count: Int)

        var line: String {
            switch self {
            case .fail(let function, let value, let count):
                "fail \(function ?? "*") 0x\(String(value, radix: 16))" + (count.map { " \($0)" } ?? "")
            case .hang(let milliseconds, let function):
                "hang \(milliseconds) \(function ?? "*")"
            case .down:
                "down"
            case .dropLogin:
                "drop-login"
            case .killSessions(let count):
                "kill-sessions \(count)"
            }
        }
    }

    /// Counters from the shim's status file.
    public struct Status: Sendable, Equatable {
        public var faultsInjected = 0
        public var deadSessionCalls = 0
        public var sessionsOpen = 0
        public var initializeCalls = 0
        public var finalizeCalls = 0
        /// Every `C_Login` that reached the shim, whatever it answered.
        public var loginCalls = 0
    }

    /// The built shim library: `KMSD_FAULT_SHIM_LIBRARY`, or `libPKCS11FaultShim.so` next to the running executable
    /// (SwiftPM puts the test runner, the executables and the library in the same build directory).
    public static func libraryPath() throws -> String {
        if let path = ProcessInfo.processInfo.environment["KMSD_FAULT_SHIM_LIBRARY"] { return path }
        let executable = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let candidate = executable.deletingLastPathComponent().appendingPathComponent("libPKCS11FaultShim.so").path
        guard FileManager.default.fileExists(atPath: candidate) else {
            throw FixtureError("libPKCS11FaultShim.so not found at \(candidate); build the package (swift build) first")
        }
        return candidate
    }

    /// A private copy of the shim, with no faults set.
    public static func create() throws -> FaultShim {
        let base = try SoftHSMToken.prepareEnvironment()
        let directory = URL(fileURLWithPath: base).appendingPathComponent("shim-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let copy = directory.appendingPathComponent("libkmsd-fault-shim.so")
        try FileManager.default.copyItem(atPath: try libraryPath(), toPath: copy.path)
        return FaultShim(modulePath: copy.path, controlPath: copy.path + ".control")
    }

    /// Replaces the active faults with `faults` (atomically: the shim never sees half a file).
    public func inject(_ faults: Fault...) throws {
        try write(faults.map(\.line).joined(separator: "\n") + "\n")
    }

    /// Removes every fault.
    public func clear() throws {
        try write("")
    }

    public func status() throws -> Status {
        guard let text = try? String(contentsOfFile: statusPath, encoding: .utf8) else { return Status() }
        var status = Status()
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let value = Int(parts[1]) else { continue }
            switch parts[0] {
            case "faults_injected": status.faultsInjected = value
            case "dead_session_calls": status.deadSessionCalls = value
            case "sessions_open": status.sessionsOpen = value
            case "initialize_calls": status.initializeCalls = value
            case "finalize_calls": status.finalizeCalls = value
            case "login_calls": status.loginCalls = value
            default: break
            }
        }
        return status
    }

    private func write(_ text: String) throws {
        // The shim applies a file when its content changes; the unique first line makes a repeated command count.
        let temporary = controlPath + ".\(UUID().uuidString)"
        try ("# \(UUID().uuidString)\n" + text).write(toFile: temporary, atomically: false, encoding: .utf8)
        guard rename(temporary, controlPath) == 0 else {
            throw FixtureError("cannot replace \(controlPath): errno \(errno)")
        }
    }
}
