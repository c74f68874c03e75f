// kmsctl: administration of kmsd. Exit status: 0 success, 1 kmsd refused (4xx), 2 `audit verify` found the log
// tampered or incomplete, 3 kmsd or its backend unavailable (503 or unreachable), 4 anything else; 64 for bad arguments.
import ArgumentParser
import Foundation
import KMSAPI
import KMSAudit
import KMSCore
import KMSClient
import KMSDaemon
import KMSState
import Logging

@main
struct KMSCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kmsctl", abstract: "Administer kmsd.",
        subcommands: [Status.self, Keys.self, Rotate.self, Schedule.self, Versions.self, Retire.self, RewrapPlan.self, Audit.self,
                      StateCommand.self, KMIP.self])

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
        let subcommandDepth = arguments.first == "keys" ? min(path, 2) : arguments.first == "kmip" ? min(path, 3) : min(path, 1)
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
    @Option(help: "kmsd URL, or several replicas' URLs separated by commas, tried in turn (KMSCTL_SERVER).") var server: String?
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

    /// Calls kmsd with `call` and prints the answer (as JSON with `--json`, else `human`'s text).
    func show<T: Encodable>(_ call: (KMSClient) async throws -> T, _ human: (T) -> String) async throws {
        try await run { client in try emit(try await call(client), human) }
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
    static let configuration = CommandConfiguration(abstract: "kmsd's mode, readiness, providers, state store and replicas.")
    @OptionGroup var connection: Connection
    func run() async throws {
        try await connection.show({ try await $0.status() }) { status in
            func column(_ text: String, _ width: Int) -> String { text.padding(toLength: max(width, text.count + 1), withPad: " ", startingAt: 0) }
            var lines = ["mode \(status.mode), \(status.ready ? "ready" : "NOT READY")", "PROVIDER  KIND            STATE"]
            lines += status.providers.map {
                column($0.name, 10) + column($0.kind, 16) + $0.state + ($0.lastError.map { "  (\($0))" } ?? "")
            }
            if let store = status.stateStore {
                lines.append("")
                lines.append("state store \(store.location): \(store.state)"
                             + (store.lastError.map { " since \(store.since ?? "?") (\($0))" } ?? ""))
                if !store.replicas.isEmpty {
                    lines.append(column("REPLICA", 24) + column("ADDRESS", 24) + column("VERSION", 9) + column("LAST SEEN", 22) + "LEASES")
                }
                lines += store.replicas.map {
                    column($0.id, 24) + column($0.address, 24) + column($0.version, 9) + column($0.lastSeen, 22)
                        + ($0.leases.isEmpty ? "-" : $0.leases.joined(separator: ","))
                }
            }
            return lines.joined(separator: "\n")
        }
    }
}

struct Keys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List, show and create keys.", subcommands: [List.self, Show.self, Create.self])

    struct List: AsyncParsableCommand {
        @OptionGroup var connection: Connection
        func run() async throws {
            try await connection.show({ try await $0.listKeys() }) { list in
                (["KEY              PROVIDER"] + list.keys.map { $0.name.padding(toLength: 17, withPad: " ", startingAt: 0) + $0.provider })
                    .joined(separator: "\n")
            }
        }
    }

    struct Show: AsyncParsableCommand {
        @OptionGroup var connection: Connection
        @Argument var name: String
        func run() async throws {
            try await connection.show({ try await $0.showKey(name) }, table)
        }
    }

    struct Create: AsyncParsableCommand {
        @OptionGroup var connection: Connection
        @Argument var name: String
        @Option(help: "Provider (must match the key's configuration).") var provider: String?
        func run() async throws {
            try await connection.show({ try await $0.createKey(name, provider: provider) }, table)
        }
    }
}

struct KMIP: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "KMIP managed objects (docs/kmip.md).", subcommands: [Objects.self])

    struct Objects: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List, show, revoke and destroy managed objects (never their key material).",
            subcommands: [List.self, Show.self, Revoke.self, Destroy.self])

        struct List: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Every managed object, by id, with the wrapping key version its material is sealed under.")
            @OptionGroup var connection: Connection
            func run() async throws {
                try await connection.show({ client in
                    var objects: [ManagedObjectBody] = []
                    var after: String?
                    repeat {
                        let page = try await client.listObjects(after: after, limit: 500)
                        objects += page.objects
                        after = page.next
                    } while after != nil
                    return ManagedObjectListBody(objects: objects, next: nil)
                }) { list in
                    var versions: [UInt32: Int] = [:]
                    for object in list.objects { if let version = object.wrappingVersion { versions[version, default: 0] += 1 } }
                    let summary = "\(list.objects.count) object(s); key material under wrapping key version "
                        + (versions.isEmpty ? "-" : versions.sorted { $0.key < $1.key }.map { "v\($0.key): \($0.value)" }.joined(separator: ", "))
                    return columns([["ID", "TYPE", "STATE", "OWNER", "NAMES", "WRAPPED"]] + list.objects.map {
                        [$0.id, $0.type, $0.state, $0.owner, $0.names.isEmpty ? "-" : $0.names.joined(separator: ","),
                         $0.wrappingVersion.map { "v\($0)" } ?? "-"]
                    }) + "\n" + summary
                }
            }
        }

        struct Show: AsyncParsableCommand {
            @OptionGroup var connection: Connection
            @Argument var id: String
            func run() async throws {
                try await connection.show({ try await $0.showObject(id) }, objectTable)
            }
        }

        struct Revoke: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Revoke an object: key_compromise or ca_compromise makes it Compromised (for good); any other reason deactivates it.")
            @OptionGroup var connection: Connection
            @Argument var id: String
            @Option(help: "key_compromise, ca_compromise, affiliation_changed, superseded, cessation_of_operation, privilege_withdrawn, unspecified")
            var reason: String
            @Option(help: "Why, in words (kept with the object).") var message: String?
            func run() async throws {
                try await connection.show({ try await $0.revokeObject(id, reason: reason, message: message) }, objectTable)
            }
        }

        struct Destroy: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Destroy an object's key material (an Active object must be revoked first); its description stays.")
            @OptionGroup var connection: Connection
            @Argument var id: String
            func run() async throws {
                try await connection.show({ try await $0.destroyObject(id) }, objectTable)
            }
        }
    }
}

func objectTable(_ object: ManagedObjectBody) -> String {
    var rows: [[String]] = [
        ["id", object.id], ["type", object.type], ["state", object.state], ["owner", object.owner],
        ["names", object.names.isEmpty ? "-" : object.names.joined(separator: ", ")],
        ["algorithm", object.algorithm.map { "\($0)" + (object.length.map { "-\($0)" } ?? "") } ?? "-"],
        ["created", object.createdAt],
    ]
    if let date = object.activatedAt { rows.append(["activated", date]) }
    if let date = object.deactivatedAt { rows.append(["deactivated", date]) }
    if let date = object.compromisedAt { rows.append(["compromised", date]) }
    if let date = object.destroyedAt { rows.append(["destroyed", date]) }
    rows.append(["last change", object.lastChangeAt])
    if let reason = object.revocationReason { rows.append(["revoked", reason + (object.revocationMessage.map { ": \($0)" } ?? "")]) }
    for link in object.links { rows.append(["link", "\(link.type) \(link.id)"]) }
    if !object.attributes.isEmpty { rows.append(["attributes", object.attributes.joined(separator: ", ")]) }
    rows.append(["wrapped under", object.wrappingVersion.map { "wrapping key v\($0)" } ?? "- (no key material)"])
    return columns(rows)
}

struct Rotate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create a new version of a key; it wraps from now on.")
    @OptionGroup var connection: Connection
    @Argument var name: String
    @Option(help: "Why (recorded in the rotation journal).") var reason: String?
    @Flag(help: "Show what would happen (the new version number, the schedule after) without rotating.") var dryRun = false
    func run() async throws {
        try await connection.show({ try await $0.rotate(name, reason: reason, dryRun: dryRun) }) { rotation in
            let next = rotation.nextRotationAt.map { "next rotation \($0) (\(rotation.nextRotationReason ?? "period"))" }
                ?? "no scheduled rotation (usage or manual only)"
            let what = rotation.dryRun ? "dry run: would rotate" : rotation.joined == true ? "rotated at the same time by another request:" : "rotated"
            return what + " \(rotation.name) from v\(rotation.previousVersion) to v\(rotation.version); \(next)"
                + (rotation.dryRun ? "" : "\n" + table(KeyBody(name: rotation.name, provider: rotation.provider, versions: rotation.versions)))
        }
    }
}

/// Left-aligned columns.
func columns(_ rows: [[String]]) -> String {
    guard let width = rows.map(\.count).max() else { return "" }
    let widths = (0..<width).map { column in rows.map { column < $0.count ? $0[column].count : 0 }.max() ?? 0 }
    return rows.map { row in
        row.enumerated().map { $0.offset == row.count - 1 ? $0.element : $0.element.padding(toLength: widths[$0.offset] + 2, withPad: " ", startingAt: 0) }
            .joined()
    }.joined(separator: "\n")
}

struct Schedule: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Every key's latest version, its age, and its next rotation and why.")
    @OptionGroup var connection: Connection
    func run() async throws {
        try await connection.show({ try await $0.schedule() }) { schedule in
            var rows = [["KEY", "PROVIDER", "LATEST", "AGE", "WRAPS", "NEXT ROTATION", "WHY"]]
            var warnings: [String] = []
            for entry in schedule.keys {
                rows.append([entry.key, entry.provider, entry.latestVersion.map { "v\($0)" } ?? "-", entry.ageSeconds.map { DurationText.format(TimeInterval($0)) } ?? "-",
                             "\(entry.wraps)/\(entry.maxWraps)", entry.nextRotationAt ?? "-", entry.nextRotationReason ?? "manual"])
                warnings += entry.warnings.map { "warning: \(entry.key): \($0)" }
            }
            return ([columns(rows)] + warnings).joined(separator: "\n")
        }
    }
}

struct Versions: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "A key's versions: created, state, wraps, unwraps, last use.")
    @OptionGroup var connection: Connection
    @Argument var name: String
    func run() async throws {
        try await connection.show({ try await $0.versions(name) }) { body in
            var rows = [["VERSION", "STATE", "CREATED", "WRAPS", "UNWRAPS", "LAST WRAP", "LAST UNWRAP"]]
            for version in body.versions {
                rows.append(["v\(version.version)" + (version.wrapping ? "*" : ""), version.state, version.createdAt ?? "-",
                             "\(version.wraps)", "\(version.unwraps)", version.lastWrapAt ?? "-", version.lastUnwrapAt ?? "-"])
            }
            return "key \(body.name) (provider \(body.provider)); * = wraps new keys\n" + columns(rows)
        }
    }
}

struct Retire: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop a version from wrapping; it keeps unwrapping.",
        discussion: "Refused while the version was used to unwrap within the key's retire_quiet_period, unless --force.")
    @OptionGroup var connection: Connection
    @Argument var name: String
    @Option(help: "The version to retire.") var version: UInt32
    @Flag(help: "Retire even though the version unwrapped recently.") var force = false
    func run() async throws {
        try await connection.show({ try await $0.retire(name, version: version, force: force) }, table)
    }
}

/// What `kmsctl rewrap-plan` reports, from the versions and their use.
struct RewrapPlanBody: Encodable {
    struct Version: Encodable {
        let version: UInt32
        let state: String
        let unwraps: UInt64
        let lastUnwrapAt: String?
        let action: String
        enum CodingKeys: String, CodingKey {
            case version, state, unwraps, action
            case lastUnwrapAt = "last_unwrap_at"
        }
    }
    let name: String
    let wrappingVersion: UInt32?
    let versions: [Version]
    enum CodingKeys: String, CodingKey {
        case name, versions
        case wrappingVersion = "wrapping_version"
    }
}

struct RewrapPlan: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rewrap-plan",
        abstract: "Which older versions still unwrap data (rewrap it first) and which are quiet enough to retire.")
    @OptionGroup var connection: Connection
    @Argument var name: String
    func run() async throws {
        try await connection.run { client in
            let body = try await client.versions(name)
            let wrapping = body.versions.first { $0.wrapping }?.version
            let plan = RewrapPlanBody(name: body.name, wrappingVersion: wrapping, versions: body.versions.filter { !$0.wrapping }.map { version in
                let action = if version.inUse { "rewrap: still unwraps data (quiet after \(version.quietAfter ?? "-"))" }
                    else if version.state == "retired" { "retired; unwraps only" }
                    else if version.unwraps == 0 { "retire: never used to unwrap" }
                    else { "retire: quiet since \(version.lastUnwrapAt ?? "-")" }
                return .init(version: version.version, state: version.state, unwraps: version.unwraps, lastUnwrapAt: version.lastUnwrapAt, action: action)
            })
            try connection.emit(plan) { plan in
                let header = "key \(plan.name): new data wraps with v\(plan.wrappingVersion.map(String.init) ?? "?"); rewrap data still on the versions below before retiring them (kmsctl retire)"
                return header + "\n" + columns([["VERSION", "STATE", "UNWRAPS", "LAST UNWRAP", "ACTION"]] + plan.versions.map {
                    ["v\($0.version)", $0.state, "\($0.unwraps)", $0.lastUnwrapAt ?? "-", $0.action]
                })
            }
        }
    }
}

struct Audit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Work with kmsd's audit log (offline).", subcommands: [Verify.self])

    struct Verify: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Verify the hash chain and checkpoint signatures of audit files (oldest first); report the first bad record.",
            discussion: """
                Exit 0 when valid, 2 when tampered or incomplete (or when no --public-key was given and --no-signatures \
                was not: the signatures were then not checked), 64 for bad arguments. Keep the public key somewhere the \
                log's writer cannot change it: whoever can replace both can forge the log.
                """)
        @Option(help: "The checkpoint public key (PEM; kmsd writes it to <audit file>.pub.pem).") var publicKey: String?
        @Option(help: ArgumentHelp(
            "Read the checkpoint public key from the HSM instead: the kmsd configuration file whose audit.sign is {hsm: …}.",
            discussion: "Needs that provider's module, token and PIN, as kmsd has them. Nothing is created on the token."))
        var publicKeyFromHSM: String?
        @Flag(help: "Check the chain only, not the checkpoint signatures (without it, a missing --public-key is a failure).")
        var noSignatures = false
        @Option(help: "The seq the log must end at (a value kept elsewhere); any other end is a failure.") var expectLastSeq: UInt64?
        @Flag(help: "Accept a log that does not end with a closing checkpoint (one kmsd is still writing).") var allowOpenTail = false
        @Option(help: ArgumentHelp(
            "Replicas: also check the files against the checkpoints anchored in this state store (postgres://USER@HOST[:PORT]/DATABASE).",
            discussion: "Give every replica's files: a replica with anchored checkpoints and no file, a file that ends before its latest anchored checkpoint, or a checkpoint that differs from its anchor fails the check."))
        var state: String?
        @OptionGroup var database: DatabaseOptions
        @Flag(help: "Print JSON.") var json = false
        @Argument(help: "Audit files, oldest first per replica (rotated files are <file>.<seq>).") var files: [String]

        func validate() throws {
            if files.isEmpty { throw ValidationError("give at least one audit file") }
            let keys = [publicKey, publicKeyFromHSM].compactMap { $0 }.count
            if keys > 1 { throw ValidationError("--public-key and --public-key-from-hsm exclude each other") }
            if noSignatures && keys > 0 { throw ValidationError("--no-signatures excludes --public-key and --public-key-from-hsm") }
            if let state {
                _ = try database.settings(state, option: "--state", password: nil)
                if expectLastSeq != nil { throw ValidationError("--expect-last-seq pins one chain's end; with --state each replica has its own") }
            }
        }

        func run() async throws {
            var pem: String?
            if let publicKey {
                guard let data = FileManager.default.contents(atPath: publicKey) else { throw ValidationError("cannot read \(publicKey)") }
                pem = String(decoding: data, as: UTF8.self)
            }
            if let configurationFile = publicKeyFromHSM {
                do {
                    var logger = Logger(label: "kmsctl")
                    logger.logLevel = .error
                    pem = try await Daemon(try Configuration.load(path: configurationFile), logger: logger).auditPublicKeyFromHSM()
                } catch {
                    print("cannot read the audit public key from the HSM: \(error)")
                    throw ExitCode(64)
                }
            }
            let verifier: AuditVerifier
            do {
                verifier = try AuditVerifier(publicKeyPEM: pem, allowOpenTail: allowOpenTail, expectedLastSeq: expectLastSeq)
            } catch {
                throw ValidationError("\(error)")
            }
            if let state { return try await verifyReplicas(verifier, state: state) }
            let report = verifier.verify(files: files)
            // Without a key nothing proves the checkpoints are kmsd's: that is not "verified" unless asked for.
            let unsignedRefused = !report.signaturesChecked && !noSignatures
            if json {
                var object: [String: Any] = ["ok": report.ok && !unsignedRefused, "records": report.records, "checkpoints": report.checkpoints,
                                             "unsigned_tail": report.unsignedTail, "notes": report.notes,
                                             "signatures_checked": report.signaturesChecked, "v1_checkpoints": report.v1Checkpoints]
                if let first = report.firstSeq { object["first_seq"] = first }
                if let last = report.lastSeq { object["last_seq"] = last }
                if let problem = report.problem {
                    object["problem"] = ["file": problem.file, "line": problem.line, "seq": problem.seq.map { Int($0) } as Any, "message": problem.message]
                }
                let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            } else {
                for note in report.notes { print("note: \(note)") }
                if let problem = report.problem {
                    print("FAILED: \(problem)")
                } else if unsignedRefused {
                    print("NOT VERIFIED: the chain of \(report.records) records is intact, but no public key was given, so the "
                          + "checkpoint signatures were not checked (give --public-key, or --no-signatures to accept a chain-only check)")
                } else {
                    let signed = report.signaturesChecked ? "signed checkpoint(s)" : "checkpoint(s), signatures not checked (--no-signatures)"
                    print("OK: \(report.records) records (seq \(report.firstSeq ?? 0)–\(report.lastSeq ?? 0)), \(report.checkpoints) \(signed)")
                }
            }
            if !report.ok || unsignedRefused { throw ExitCode(2) }
        }

        /// Several replicas' files: each replica's chain verified on its own (files grouped by the replica their records
        /// name, in the order given), then all of them against the checkpoints anchored in the state store.
        func verifyReplicas(_ verifier: AuditVerifier, state: String) async throws {
            // The anchors before the files: a checkpoint a running replica writes meanwhile is then in its file, not only
            // in the database (which would look like a rollback).
            let anchors: [AuditAnchor]
            do {
                let store = try await PostgresStateStore.open(try database.settings(state, option: "--state", password: try database.password()),
                                                              logger: DatabaseOptions.logger, migrate: false)
                do {
                    anchors = try await store.auditAnchors()
                } catch {
                    await store.close()
                    throw error
                }
                await store.close()
            } catch let error as StateStoreError {
                print("cannot read the anchored checkpoints: \(error)")
                throw ExitCode(4)
            }
            // Files by the replica their first record names, in the order given; each group is one chain.
            var groups: [(replica: String, files: [String])] = []
            for file in files {
                guard let handle = FileHandle(forReadingAtPath: file) else { throw ValidationError("cannot read \(file)") }
                let head = (try? handle.read(upToCount: 64 * 1024)) ?? Data()
                try? handle.close()
                let first = head.split(separator: UInt8(ascii: "\n"), maxSplits: 1).first.map { Data($0) } ?? Data()
                let replica = ((try? JSONSerialization.jsonObject(with: first)) as? [String: Any])?["replica"] as? String ?? ""
                if let index = groups.firstIndex(where: { $0.replica == replica }) {
                    groups[index].files.append(file)
                } else {
                    groups.append((replica, [file]))
                }
            }
            let reports = groups.map { verifier.verify(files: $0.files) }
            let check = AuditAnchorCheck.check(chains: reports, anchors: anchors)
            var failed = !check.ok
            var replicas: [[String: Any]] = []
            var lines: [String] = []
            for (group, report) in zip(groups, reports) {
                let unsignedRefused = !report.signaturesChecked && !noSignatures
                failed = failed || !report.ok || unsignedRefused
                let label = group.replica.isEmpty ? "(no replica id)" : group.replica
                var entry: [String: Any] = ["replica": group.replica, "ok": report.ok && !unsignedRefused, "records": report.records,
                                            "checkpoints": report.checkpoints, "signatures_checked": report.signaturesChecked]
                if let problem = report.problem { entry["problem"] = problem.description }
                replicas.append(entry)
                lines += report.notes.map { "note: replica \(label): \($0)" }
                if let problem = report.problem {
                    lines.append("FAILED: replica \(label): \(problem)")
                } else if unsignedRefused {
                    lines.append("NOT VERIFIED: replica \(label): no public key was given, so the checkpoint signatures were not checked")
                } else {
                    lines.append("OK: replica \(label): \(report.records) records (seq \(report.firstSeq ?? 0)–\(report.lastSeq ?? 0)), "
                                 + "\(report.checkpoints) checkpoint(s)" + (report.signaturesChecked ? ", signatures checked" : ", signatures not checked"))
                }
            }
            lines += check.notes.map { "note: \($0)" }
            lines += check.problems.map { "FAILED: \($0)" }
            lines.append("anchors: \(check.matched) of \(anchors.count) checkpoint(s) anchored in the state store matched the files")
            if json {
                let object: [String: Any] = ["ok": !failed, "replicas": replicas, "anchor_problems": check.problems, "anchor_notes": check.notes,
                                             "anchors_matched": check.matched, "anchors": anchors.count]
                print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys]), as: UTF8.self))
            } else {
                print(lines.joined(separator: "\n"))
            }
            if failed { throw ExitCode(2) }
        }
    }
}

struct StateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "state", abstract: "Work with kmsd's state store (offline).", subcommands: [Migrate.self])

    struct Migrate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Copy a single kmsd's SQLite state store into an empty PostgreSQL database, for replicas.",
            discussion: """
                Stop kmsd first. Copies usage counts, version creation times, wrap budgets and the rotation journal; refuses a \
                database that already holds state (so a second run cannot count twice). Exit 0 when copied, 4 when the \
                copy failed, 64 for bad arguments. The password comes from --password-file or PGPASSWORD, never the URL.
                """)
        @Option(help: "The SQLite store: sqlite:PATH (kmsd's <data_dir>/rotation.sqlite).") var from: String
        @Option(help: "The database: postgres://USER@HOST[:PORT]/DATABASE.") var to: String
        @OptionGroup var database: DatabaseOptions

        /// The SQLite file `--from` names.
        var sourcePath: String { String(from.dropFirst("sqlite:".count)) }

        func validate() throws {
            guard from.hasPrefix("sqlite:"), !sourcePath.isEmpty else { throw ValidationError("--from: expected sqlite:PATH") }
            guard FileManager.default.fileExists(atPath: sourcePath) else { throw ValidationError("--from: \(sourcePath) does not exist") }
            _ = try database.settings(to, option: "--to", password: nil)
        }

        func run() async throws {
            let password = try database.password()
            do {
                let source = try SQLiteStateStore(readingOnly: sourcePath)
                let target = try await PostgresStateStore.open(try database.settings(to, option: "--to", password: password), logger: DatabaseOptions.logger)
                let copied: Result<StateMigration.Summary, any Error>
                do { copied = .success(try await StateMigration.copy(from: source, to: target)) } catch { copied = .failure(error) }
                await target.close()
                await source.close()
                let summary = try copied.get()
                print("copied into \(target.location): \(summary.versions) version creation times, \(summary.usageRows) usage rows "
                      + "(\(summary.wraps) wraps), \(summary.journalEntries) journal entries, \(summary.budgets) wrap budgets, \(summary.managedObjects) managed objects")
            } catch let error as StateStoreError {
                print("state migrate failed: \(error)")
                throw ExitCode(4)
            }
        }
    }
}

/// How kmsctl reaches a PostgreSQL state store: the password (from a file or PGPASSWORD, never the URL) and TLS.
struct DatabaseOptions: ParsableArguments {
    @Option(help: "A file holding the database password (otherwise PGPASSWORD).") var passwordFile: String?
    @Option(help: "TLS to the database: the CA that signed its certificate (the host name is checked).") var dbCA: String?
    @Option(help: "TLS client certificate for the database (with --db-key).") var dbCert: String?
    @Option(help: "TLS client key for the database.") var dbKey: String?

    static var logger: Logger {
        var logger = Logger(label: "kmsctl")
        logger.logLevel = .error
        return logger
    }

    func validate() throws {
        if (dbCert == nil) != (dbKey == nil) { throw ValidationError("--db-cert and --db-key go together") }
        if (dbCert != nil) && dbCA == nil { throw ValidationError("a client certificate needs --db-ca") }
    }

    /// The store `url` (`postgres://USER@HOST[:PORT]/DATABASE`, given as `option`) names.
    func settings(_ url: String, option: String, password: String?) throws -> PostgresStoreSettings {
        guard let parts = URLComponents(string: url), parts.scheme == "postgres" || parts.scheme == "postgresql",
              let host = parts.host, !host.isEmpty, let user = parts.user, !user.isEmpty, parts.path.count > 1 else {
            throw ValidationError("\(option): expected postgres://USER@HOST[:PORT]/DATABASE")
        }
        if parts.password != nil {
            throw ValidationError("\(option): no password in the URL (it would show in ps and shell history); use --password-file or PGPASSWORD")
        }
        return PostgresStoreSettings(
            host: host, port: parts.port ?? 5432, database: String(parts.path.dropFirst()), user: user, password: password,
            tls: dbCA.map { .init(caFile: $0, certificateFile: dbCert, keyFile: dbKey) })
    }

    func password() throws -> String? {
        guard let passwordFile else { return ProcessInfo.processInfo.environment["PGPASSWORD"] }
        do {
            return String(decoding: try Daemon.read(.file(passwordFile), environment: [:]).unsafeCopiedBytes(), as: UTF8.self)
        } catch {
            throw ValidationError("--password-file: \(error)")
        }
    }
}
