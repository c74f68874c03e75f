// kms-probe: checks a live PKCS#11 token against an HSM profile and prints a ✅/❌ table. Exit status 0 when every
// check passes, 1 when any fails, 64 for bad arguments. (Becomes `kmsctl hsm probe` once kmsctl exists.)
import ArgumentParser
import Foundation
import KMSCore
import KMSProviderPKCS11
import PKCS11

struct KMSProbe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kms-probe",
        abstract: "Check a PKCS#11 token against an HSM profile before kmsd uses it.",
        discussion: """
            Everything the probe creates is a session object that disappears when it ends. The PIN is read from an \
            environment variable, a file, or the URI's pin-source=file:…; never from the command line.
            """)

    @Option(help: "PKCS#11 module path (default: the URI's module-path, then the profile's first module path).")
    var module: String?

    @Option(help: "The token, as a PKCS#11 URI (pkcs11:token=<label>).")
    var token: String

    @Option(help: "HSM profile: a name in --profiles or a path to a .yaml file.")
    var profile: String

    @Option(help: "Directory of HSM profiles.")
    var profiles = "hsm-profiles"

    @Option(help: "Environment variable holding the user PIN.")
    var pinEnv: String?

    @Option(help: "File holding the user PIN (its first line).")
    var pinFile: String?

    func run() throws {
        let uri: PKCS11URI
        do {
            uri = try PKCS11URI(parsing: token)
        } catch {
            throw ValidationError("--token: \(error)")
        }
        let loaded: HSMProfile
        do {
            loaded = try HSMProfile.load(profile, directory: profiles)
        } catch let error as KMSError {
            throw ValidationError(error.message)
        }
        guard let modulePath = module ?? uri.modulePath ?? loaded.modulePaths.first(where: {
            FileManager.default.fileExists(atPath: $0)
        }) else {
            throw ValidationError("no --module given, none in the URI, and none of the profile's module paths exists")
        }
        let pin = try readPIN(uri)
        let report = HSMProbe.run(modulePath: modulePath, token: uri, pin: pin, profile: loaded)
        print(report.table)
        if !report.passed { throw ExitCode(1) }
    }

    private func readPIN(_ uri: PKCS11URI) throws -> SecretBytes {
        if let pinEnv {
            guard let value = ProcessInfo.processInfo.environment[pinEnv], !value.isEmpty else {
                throw ValidationError("--pin-env: \(pinEnv) is not set")
            }
            return SecretBytes(utf8: value)
        }
        var path = pinFile
        if path == nil, let source = uri.pinSource {
            guard source.hasPrefix("file:") else { throw ValidationError("pin-source must be a file: URI") }
            path = String(source.dropFirst("file:".count))
        }
        guard let path else { throw ValidationError("give the PIN with --pin-env, --pin-file or pin-source in the URI") }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ValidationError("cannot read the PIN file \(path)")
        }
        let line = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).first ?? ""
        guard !line.isEmpty else { throw ValidationError("the PIN file \(path) is empty") }
        return SecretBytes(utf8: String(line))
    }
}

KMSProbe.main()
