import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import KMSCore
import KMSTestSupport
@testable import KMSProviderVault
import Synchronization
import VaultDev

/// A vault-dev server for one test, in process, on a free loopback port.
final class InProcessVaultDev: Sendable {
    let address: String
    let rootToken: String
    let unsealKey: String
    private let server: ServerTask

    private init(address: String, rootToken: String, unsealKey: String, server: ServerTask) {
        self.address = address
        self.rootToken = rootToken
        self.unsealKey = unsealKey
        self.server = server
    }

    static func start() async throws -> InProcessVaultDev {
        let vault = try VaultDevServer(.init(port: 0))
        let server = try await ServerTask.start { bound in try await vault.run { bound($0) } }
        return InProcessVaultDev(
            address: "http://127.0.0.1:\(server.port)", rootToken: vault.configuration.rootToken,
            unsealKey: vault.configuration.unsealKey, server: server)
    }

    func stop() async {
        await server.stop()
    }

    /// A raw call with the root token, for setting the server up (AppRole roles, sealing) the way an operator would.
    @discardableResult
    func root(_ method: String, _ path: String, _ body: [String: Any]? = nil, token: String? = nil) async throws -> (Int, [String: Any]) {
        var request = URLRequest(url: URL(string: "\(address)/v1/\(path)")!)
        request.httpMethod = method
        request.setValue(token ?? rootToken, forHTTPHeaderField: "X-Vault-Token")
        if let body { request.httpBody = try JSONSerialization.data(withJSONObject: body) }
        let (data, response) = try await URLSession.shared.data(for: request)
        let status = (response as? HTTPURLResponse)?.statusCode ?? 0
        let json = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] ?? [:]
        return (status, json)
    }

    func seal() async throws { try await root("PUT", "sys/seal") }
    func unseal() async throws { try await root("PUT", "sys/unseal", ["key": unsealKey]) }

    /// An AppRole role with the given TTLs and a fresh secret id.
    func appRole(_ role: String, ttl: String, maxTTL: String) async throws -> (roleID: String, secretID: String) {
        try await root("POST", "auth/approle/role/\(role)", ["token_ttl": ttl, "token_max_ttl": maxTTL, "token_policies": ["default"]])
        let (_, roleBody) = try await root("GET", "auth/approle/role/\(role)/role-id")
        let (_, secretBody) = try await root("POST", "auth/approle/role/\(role)/secret-id")
        let roleID = (roleBody["data"] as? [String: Any])?["role_id"] as? String ?? ""
        let secretID = (secretBody["data"] as? [String: Any])?["secret_id"] as? String ?? ""
        return (roleID, secretID)
    }

    func configuration(_ authentication: VaultProviderConfiguration.Authentication? = nil) -> VaultProviderConfiguration {
        VaultProviderConfiguration(
            address: address, authentication: authentication ?? .token(SecretBytes(utf8: rootToken)),
            requestTimeout: .seconds(2), maxRetries: 1, breakerThreshold: 1_000)
    }
}

/// vault-dev as its own process (for kill and restart).
final class VaultDevProcess: @unchecked Sendable {
    // @unchecked: `process` is replaced only by the test that owns this value.
    private(set) var process: Process
    let port: Int
    let rootToken: String
    let stateFile: String

    static var executable: URL {
        URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
            .appendingPathComponent("vault-dev")
    }

    private init(process: Process, port: Int, rootToken: String, stateFile: String) {
        self.process = process
        self.port = port
        self.rootToken = rootToken
        self.stateFile = stateFile
    }

    var address: String { "http://127.0.0.1:\(port)" }

    static func launch(port: Int, rootToken: String, stateFile: String) throws -> (Process, Int) {
        let process = Process()
        process.executableURL = executable
        process.arguments = ["--port", "\(port)", "--root-token", rootToken, "--state-file", stateFile]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        // The first line names the address (and so the port when it was 0).
        var collected = Data()
        while !String(decoding: collected, as: UTF8.self).contains("\n") {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { throw VaultDevError("vault-dev exited before printing its address") }
            collected.append(chunk)
        }
        let line = String(decoding: collected, as: UTF8.self).split(separator: "\n").first ?? ""
        guard let bound = Int(line.split(separator: ":").last ?? "") else { throw VaultDevError("unexpected output: \(line)") }
        return (process, bound)
    }

    static func start(stateFile: String) throws -> VaultDevProcess {
        let token = "hvs.process-\(UUID().uuidString.lowercased())"
        let (process, port) = try launch(port: 0, rootToken: token, stateFile: stateFile)
        return VaultDevProcess(process: process, port: port, rootToken: token, stateFile: stateFile)
    }

    func kill() {
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    func restart() throws {
        (process, _) = try Self.launch(port: port, rootToken: rootToken, stateFile: stateFile)
    }

    deinit {
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
    }
}
