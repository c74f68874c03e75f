import ArgumentParser
import AsyncHTTPClient
import Foundation
import KMSCore
import KMSTestSupport
import NIOCore
import NIOHTTP1
import Synchronization

/// `kms-bench chaos`: while 16 connections drive kmsd (half on a key in SoftHSM behind the fault shim, half on a key in
/// vault-dev), the HSM goes down for 5 s, then hangs for 3 s, then vault-dev is sealed for 5 s. For each phase it
/// reports requests answered ok / 503 / anything else (must be 0), the slowest refusal (must stay within the backend
/// deadline + 100 ms), and the time from the end of the fault to the first success (must be ≤ 2 s); at the end, every
/// DEK handed out before the chaos must still unwrap.
struct ChaosBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "chaos", abstract: "Faults under load: HSM down, HSM hang, Vault sealed.")

    @Option(help: "Connections driving load.") var connections: Int = 16
    @Option(help: "The kmsd executable (default: next to kms-bench).") var kmsd: String?

    /// The longest a request may take before kmsd refuses it, from this run's configuration: for the HSM, a wait of at
    /// most `checkout_wait` (0.5 s) for a session plus at most `call_timeout` (0.5 s) for the call; for Vault,
    /// `request_timeout` (1 s).
    static let hsmDeadline = 1.0
    static let vaultDeadline = 1.0

    struct Record {
        let key: String
        let start: Double
        let end: Double
        let status: Int
    }

    final class Recorder: Sendable {
        let records = Mutex<[Record]>([])
        let stopped = Atomic<Bool>(false)
        let origin = ContinuousClock.now
        func now() -> Double { (ContinuousClock.now - origin).seconds }
        func add(_ record: Record) { records.withLock { $0.append(record) } }
    }

    func run() async throws {
        let setup = try BenchSetup(kmsd: kmsd, sessions: 8)
        defer { setup.remove() }
        let shim = try FaultShim.create()
        let vault = try setup.startVaultDev()
        defer { vault.stop() }
        let extra = """
            providers:
              hsm: { type: pkcs11, module: \(shim.modulePath), token: "pkcs11:token=\(setup.token.label)", pin: { file: pin },
                     profile: softhsm2, profiles_dir: \(setup.profiles), sessions: 8, call_timeout: 500ms, checkout_wait: 500ms }
              vault: { type: vault-transit, address: "\(vault.address)", auth: { token_file: vault-token }, request_timeout: 1s }
            keys:
              hsmkey: { provider: hsm, allow: ["uri:spiffe://bench/storage/*"] }
              vaultkey: { provider: vault, allow: ["uri:spiffe://bench/storage/*"] }
            """
        let kmsd = try await setup.start(audit: false, name: "chaos", pool: connections, providersAndKeys: extra, keys: ["hsmkey", "vaultkey"])
        do {
            try await chaos(kmsd, shim: shim, vault: vault)
        } catch {
            await kmsd.stop()
            throw error
        }
        await kmsd.stop()
    }

    private func chaos(_ kmsd: LaunchedKMSD, shim: FaultShim, vault: VaultDevProcess) async throws {
        // DEKs handed out before the chaos, to unwrap afterwards.
        var before: [(key: String, plaintext: String, wrapped: String)] = []
        for key in ["hsmkey", "vaultkey"] {
            for _ in 0..<50 {
                let (status, body) = try await kmsd.post(kmsd.node, "/v1/keys/\(key)/datakey", "{}")
                guard status == 200, let object = try JSONSerialization.jsonObject(with: body) as? [String: Any],
                      let plaintext = object["plaintext"] as? String, let wrapped = object["wrapped"] as? String
                else { throw FixtureError("datakey on \(key) before the chaos gave HTTP \(status)") }
                before.append((key, plaintext, wrapped))
            }
        }

        let recorder = Recorder()
        let stop = recorder
        let connections = connections
        var phases: [(name: String, key: String, start: Double, end: Double, deadline: Double)] = []
        let load = Task {
            await withTaskGroup(of: Void.self) { group in
                for worker in 0..<connections {
                    let key = worker % 2 == 0 ? "hsmkey" : "vaultkey"
                    group.addTask {
                        while !stop.stopped.load(ordering: .relaxed) {
                            let start = recorder.now()
                            let status = (try? await kmsd.post(kmsd.node, "/v1/keys/\(key)/datakey", "{}").0) ?? 0
                            recorder.add(Record(key: key, start: start, end: recorder.now(), status: status))
                        }
                    }
                }
            }
        }
        try await Task.sleep(for: .seconds(2))
        var start = recorder.now()
        try shim.inject(.down)
        try await Task.sleep(for: .seconds(5))
        try shim.clear()
        phases.append(("HSM device down 5 s", "hsmkey", start, recorder.now(), Self.hsmDeadline))
        try await Task.sleep(for: .seconds(4))

        start = recorder.now()
        try shim.inject(.hang(milliseconds: 3000))
        try await Task.sleep(for: .seconds(3))
        try shim.clear()
        phases.append(("HSM hang 3 s", "hsmkey", start, recorder.now(), Self.hsmDeadline))
        try await Task.sleep(for: .seconds(4))

        start = recorder.now()
        try await vault.seal()
        try await Task.sleep(for: .seconds(5))
        try await vault.unseal()
        phases.append(("vault-dev sealed 5 s", "vaultkey", start, recorder.now(), Self.vaultDeadline))
        try await Task.sleep(for: .seconds(4))
        stop.stopped.store(true, ordering: .relaxed)
        await load.value

        let records = recorder.records.withLock { $0 }
        print("kms-bench chaos: \(connections) connections (half per key); request deadlines: HSM \(Self.hsmDeadline) s "
            + "(checkout_wait 0.5 s + call_timeout 0.5 s), Vault \(Self.vaultDeadline) s (request_timeout)")
        print("passes when: other = 0, slowest 503 ≤ deadline + 0.1 s, first success ≤ 2 s after the fault ends")
        print("")
        print(pad("phase", 24) + pad("key", 10) + pad("ok", 8) + pad("503", 8) + pad("other", 7) + pad("slowest 503", 13) + "first success after")
        var failures = 0
        for phase in phases {
            // Requests that started during the fault.
            let during = records.filter { $0.key == phase.key && $0.start >= phase.start && $0.start < phase.end }
            let ok = during.filter { $0.status == 200 }.count
            let refused = during.filter { $0.status == 503 }
            let other = during.count - ok - refused.count
            let slowest = refused.map { $0.end - $0.start }.max() ?? 0
            let recovery = records.filter { $0.key == phase.key && $0.start >= phase.end && $0.status == 200 }.map(\.end).min()
                .map { $0 - phase.end }
            let good = other == 0 && slowest <= phase.deadline + 0.1 && (recovery ?? 99) <= 2
            if !good { failures += 1 }
            print(pad(phase.name, 24) + pad(phase.key, 10) + pad("\(ok)", 8) + pad("\(refused.count)", 8) + pad("\(other)", 7)
                + pad(String(format: "%.3f s", slowest), 13) + (recovery.map { String(format: "%.3f s", $0) } ?? "none") + (good ? "  ✅" : "  ❌"))
        }
        let otherOverall = records.filter { $0.status != 200 && $0.status != 503 }
        print("all requests: \(records.count), ok \(records.filter { $0.status == 200 }.count), 503 \(records.filter { $0.status == 503 }.count), other \(otherOverall.count)"
            + (otherOverall.isEmpty ? "" : " (statuses \(Set(otherOverall.map(\.status)).sorted()))"))

        var unwrapped = 0
        for item in before {
            let body = #"{"wrapped":"\#(item.wrapped)"}"#
            let (status, data) = try await kmsd.post(kmsd.node, "/v1/keys/\(item.key)/unwrap", body)
            let plaintext = (try? JSONSerialization.jsonObject(with: data) as? [String: Any])?["plaintext"] as? String
            if status == 200 && plaintext == item.plaintext { unwrapped += 1 }
        }
        print("DEKs from before the chaos that still unwrap: \(unwrapped) of \(before.count)" + (unwrapped == before.count ? " ✅" : " ❌"))
        if unwrapped != before.count { failures += 1 }
        if failures > 0 { throw ExitCode(1) }
    }

    private func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
    }
}

/// vault-dev as a process (the same binary ci/test's conformance suite runs against).
struct VaultDevProcess {
    let process: Process
    let address: String
    let token: String
    let unsealKey: String

    static func start(executable: String, directory: URL) throws -> VaultDevProcess {
        let output = directory.appendingPathComponent("vault-dev.env")
        let process = try BuiltExecutable(url: URL(fileURLWithPath: executable))
            .start(["--port", "0", "--state-file", directory.appendingPathComponent("vault-state.json").path], log: output)
        var values: [String: String] = [:]
        for _ in 0..<200 where values["VAULT_UNSEAL_KEY"] == nil {
            Thread.sleep(forTimeInterval: 0.05)
            let text = (try? String(contentsOf: output, encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: "=", maxSplits: 1).map(String.init)
                if parts.count == 2 { values[parts[0]] = parts[1] }
            }
        }
        guard let address = values["VAULT_ADDR"], let token = values["VAULT_TOKEN"], let unseal = values["VAULT_UNSEAL_KEY"] else {
            process.terminate()
            throw FixtureError("vault-dev did not start")
        }
        return VaultDevProcess(process: process, address: address, token: token, unsealKey: unseal)
    }

    func seal() async throws { try await expectSuccess("sys/seal", "{}") }
    func unseal() async throws { try await expectSuccess("sys/unseal", #"{"key":"\#(unsealKey)"}"#) }

    /// A call with the root token; returns the status and body.
    func post(_ client: HTTPClient, _ path: String, _ body: String) async throws -> (Int, Data) {
        var request = HTTPClientRequest(url: "\(address)/v1/\(path)")
        request.method = .POST
        request.headers.add(name: "X-Vault-Token", value: token)
        request.body = .bytes(ByteBuffer(string: body))
        let response = try await client.execute(request, timeout: .seconds(10))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        return (Int(response.status.code), Data(bytes.readableBytesView))
    }

    private func expectSuccess(_ path: String, _ body: String) async throws {
        let (status, _) = try await post(HTTPClient.shared, path, body)
        guard (200..<300).contains(status) else { throw FixtureError("vault-dev \(path): HTTP \(status)") }
    }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }
}
