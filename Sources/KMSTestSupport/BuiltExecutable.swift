public import Foundation

/// One of the package's executables (`kmsctl`, `kms-probe`, …), run by a test as its own process.
public struct BuiltExecutable: Sendable {
    public let url: URL

    /// SwiftPM puts the test runner and the executables in the same build directory.
    public init(_ name: String) {
        url = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent(name)
    }

    /// An executable at a given path.
    public init(url: URL) {
        self.url = url
    }

    public var exists: Bool { FileManager.default.isExecutableFile(atPath: url.path) }

    /// Runs to completion; returns the exit status and standard output and error together.
    public func run(_ arguments: [String], environment: [String: String] = [:]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = url
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, text)
    }

    /// Starts the executable in the background with standard output and error going to `log`.
    public func start(_ arguments: [String], environment: [String: String] = [:], log: URL) throws -> Process {
        guard FileManager.default.createFile(atPath: log.path, contents: nil) else { throw FixtureError("cannot create \(log.path)") }
        let process = Process()
        process.executableURL = url
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        return process
    }
}
