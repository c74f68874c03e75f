// kmsctl: administration of kmsd. Exit status: 0 success, 1 kmsd refused (4xx), 3 kmsd or its backend unavailable
// (503 or unreachable), 4 anything else; 64 for bad arguments.
import ArgumentParser
import Foundation
import KMSAPI
import KMSClient

@main
struct KMSCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kmsctl", abstract: "Administer kmsd.",
        subcommands: [Status.self, Keys.self, Rotate.self, Retire.self])

    /// Connection options may come before the subcommand (`kmsctl --dev rotate demo`): move them after it, where
    /// the subcommands declare them.
    static func main() async {
        var arguments = Array(CommandLine.arguments.dropFirst())
        var global: [String] = []
        let flags: Set<String> = ["--dev", "--json"]
        let options: Set<String> = ["--server", "--ca", "--cert", "--key"]
        while let first = arguments.first, first.hasPrefix("--") {
            let name = first.split(separator: "=", maxSplits: 1).first.map(String.init) ?? first
            if flags.contains(name) || first.contains("=") && options.contains(name) {
                global.append(arguments.removeFirst())
            } else if options.contains(name), arguments.count >= 2 {
                global.append(contentsOf: arguments.prefix(2))
                arguments.removeFirst(2)
            } else {
                break
            }
        }
        // Insert after the subcommand path (the leading words that are not options).
        let path = arguments.prefix { !$0.hasPrefix("-") }.count
        let subcommandDepth = arguments.first == "keys" ? min(path, 2) : min(path, 1)
        arguments.insert(contentsOf: global, at: subcommandDepth)
        do {
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}

struct Connection: ParsableArguments {
    @Option(help: "kmsd URL (KMSCTL_SERVER).") var server: String?
    @Option(help: "CA bundle (KMSCTL_CA).") var ca: String?
    @Option(help: "Client certificate (KMSCTL_CERT).") var cert: String?
    @Option(help: "Client key (KMSCTL_KEY).") var key: String?
    @Flag(help: "Use the development setup in .kmsd-dev/ (ci/dev).") var dev = false
    @Flag(help: "Print JSON.") var json = false

    func client() throws -> KMSClient {
        let environment = ProcessInfo.processInfo.environment
        var server = self.server ?? environment["KMSCTL_SERVER"]
        var ca = self.ca ?? environment["KMSCTL_CA"]
        var cert = self.cert ?? environment["KMSCTL_CERT"]
        var key = self.key ?? environment["KMSCTL_KEY"]
        if dev {
            let directory = environment["KMSD_DEV_DIR"] ?? ".kmsd-dev"
            server = server ?? "https://localhost:\(environment["KMSD_DEV_PORT"] ?? "8443")"
            ca = ca ?? "\(directory)/ca.pem"
            cert = cert ?? "\(directory)/admin.pem"
            key = key ?? "\(directory)/admin-key.pem"
        }
        guard let server, let ca, let cert, let key else {
            throw ValidationError("give --server, --ca, --cert and --key (or KMSCTL_* variables, or --dev)")
        }
        do {
            return try KMSClient(.init(server: server, caFile: ca, certificateFile: cert, keyFile: key, retries: 1))
        } catch {
            throw ValidationError("cannot load the TLS files: \(error)")
        }
    }

    func emit<T: Encodable>(_ value: T, _ human: (T) -> String) throws {
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(value), as: UTF8.self))
        } else {
            print(human(value))
        }
    }

    /// Runs `body` with a client and maps failures to the documented exit codes.
    func run(_ body: (KMSClient) async throws -> Void) async throws {
        let client = try client()
        defer { Task { await client.shutdown() } }
        do {
            try await body(client)
            await client.shutdown()
        } catch let error as KMSClientError {
            await client.shutdown()
            FileHandle.standardError.write(Data("kmsctl: \(error)\n".utf8))
            throw ExitCode(error.status == 0 || error.status == 503 ? 3 : (400..<500).contains(error.status) ? 1 : 4)
        }
    }
}

func table(_ key: KeyBody) -> String {
    var lines = ["key \(key.name) (provider \(key.provider))", "VERSION  STATE    CREATED"]
    for version in key.versions {
        lines.append("v\(version.version)".padding(toLength: 9, withPad: " ", startingAt: 0)
            + version.state.padding(toLength: 9, withPad: " ", startingAt: 0) + (version.createdAt ?? "-"))
    }
    return lines.joined(separator: "\n")
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "kmsd's mode, readiness and providers.")
    @OptionGroup var connection: Connection
    func run() async throws {
        try await connection.run { client in
            try connection.emit(try await client.status()) { status in
                (["mode \(status.mode), \(status.ready ? "ready" : "NOT READY")", "PROVIDER  KIND            STATE"]
                    + status.providers.map {
                        $0.name.padding(toLength: 10, withPad: " ", startingAt: 0) + $0.kind.padding(toLength: 16, withPad: " ", startingAt: 0)
                            + $0.state + ($0.lastError.map { "  (\($0))" } ?? "")
                    }).joined(separator: "\n")
            }
        }
    }
}

struct Keys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List, show and create keys.", subcommands: [List.self, Show.self, Create.self])

    struct List: AsyncParsableCommand {
        @OptionGroup var connection: Connection
        func run() async throws {
            try await connection.run { client in
                try connection.emit(try await client.listKeys()) { list in
                    (["KEY              PROVIDER"] + list.keys.map { $0.name.padding(toLength: 17, withPad: " ", startingAt: 0) + $0.provider })
                        .joined(separator: "\n")
                }
            }
        }
    }

    struct Show: AsyncParsableCommand {
        @OptionGroup var connection: Connection
        @Argument var name: String
        func run() async throws {
            try await connection.run { client in try connection.emit(try await client.showKey(name), table) }
        }
    }

    struct Create: AsyncParsableCommand {
        @OptionGroup var connection: Connection
        @Argument var name: String
        @Option(help: "Provider (must match the key's configuration).") var provider: String?
        func run() async throws {
            try await connection.run { client in try connection.emit(try await client.createKey(name, provider: provider), table) }
        }
    }
}

struct Rotate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create a new version of a key; it wraps from now on.")
    @OptionGroup var connection: Connection
    @Argument var name: String
    @Option(help: "Why (recorded in kmsd's log).") var reason: String?
    func run() async throws {
        try await connection.run { client in try connection.emit(try await client.rotate(name, reason: reason), table) }
    }
}

struct Retire: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stop a version from wrapping; it keeps unwrapping.")
    @OptionGroup var connection: Connection
    @Argument var name: String
    @Option(help: "The version to retire.") var version: UInt32
    func run() async throws {
        try await connection.run { client in try connection.emit(try await client.retire(name, version: version), table) }
    }
}
