// kmsd: the key-management daemon. `kmsd --config kmsd.yaml` serves; `kmsd check-config` prints the production
// hardening checklist; `kmsd dev-init` writes a development setup (ci/dev).
import ArgumentParser
import Foundation
import KMSDaemon
import KMSDev
import Logging

@main
struct KMSD: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kmsd", abstract: "Key-management daemon for storage nodes.",
        subcommands: [Serve.self, CheckConfig.self, DevInit.self], defaultSubcommand: Serve.self)
}

struct ConfigOption: ParsableArguments {
    @Option(name: .shortAndLong, help: "Configuration file (YAML).")
    var config = ProcessInfo.processInfo.environment["KMSD_CONFIG"] ?? "/etc/kmsd/kmsd.yaml"
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "serve", abstract: "Run kmsd (the default).")
    @OptionGroup var options: ConfigOption

    func run() async throws {
        do {
            let configuration = try Configuration.load(path: options.config)
            let level = Logger.Level(rawValue: configuration.logLevel) ?? .info
            LoggingSystem.bootstrap { label in
                KMSDLogging.handler(label: label, level: level, format: configuration.logFormat)
            }
            // Log lines are written by their own thread (`LogOutput`): the last ones must reach standard error
            // before the process exits, however the daemon ends.
            defer { LogOutput.standardError.flush() }
            try await Daemon(configuration).run()
        } catch let error as ConfigurationError {
            FileHandle.standardError.write(Data("kmsd: \(error)\n".utf8))
            throw ExitCode(78)  // EX_CONFIG
        }
    }
}

struct CheckConfig: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate the configuration and print the production hardening checklist (exit 1 in production mode with any ❌).")
    @OptionGroup var options: ConfigOption

    func run() async throws {
        let configuration: Configuration
        do {
            configuration = try Configuration.load(path: options.config)
        } catch let error as ConfigurationError {
            print("❌ \(error)")
            throw ExitCode(78)
        }
        let checklist = HardeningChecklist(configuration)
        print("configuration \(options.config): valid, mode \(configuration.mode.rawValue)")
        print(checklist.table)
        for warning in configuration.warnings { print("⚠️ \(warning)") }
        if configuration.mode == .production && !checklist.violations.isEmpty {
            print("\(checklist.violations.count) item(s) fail: kmsd refuses to start in production mode")
            throw ExitCode(1)
        }
    }
}

struct DevInit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dev-init", abstract: "Write a development setup (PKI, SoftHSM config, admin token, kmsd.yaml); keeps existing files.")
    @Option(help: "Directory to write.") var dir = ".kmsd-dev"
    @Option(help: "Directory of HSM profiles.") var profiles = "hsm-profiles"
    @Option(help: "API port.") var port = 8443

    func run() async throws {
        let directory = URL(fileURLWithPath: dir).standardizedFileURL
        let profilesPath = URL(fileURLWithPath: profiles).standardizedFileURL.path
        let made = try DevEnvironment.initialize(directory: directory, profilesDirectory: profilesPath, port: port)
        print(made.isEmpty ? "\(directory.path): reused" : "\(directory.path): wrote \(made.joined(separator: ", "))")
    }
}
