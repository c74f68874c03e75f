import Foundation
import KMSCore
@testable import KMSProviderPKCS11
import KMSTestSupport
import PKCS11
import Testing

/// The repository's `hsm-profiles/` directory.
let profilesDirectory = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("hsm-profiles").path

@Suite("HSM profiles")
struct HSMProfileTests {
    let valid = """
        name: example
        vendor: "Example HSM"
        tested: false
        module_paths: [/opt/example/lib/libexample.so]
        gcm_params: v2.30
        iv_source: token
        max_sessions: 16
        idle_session_timeout: 30
        login: per-session
        bad_tag_return_values: [CKR_ENCRYPTED_DATA_INVALID, CKR_FUNCTION_FAILED]
        required_mechanisms: [CKM_AES_KEY_GEN, CKM_AES_GCM]
        pin_format: "0001password"
        notes: "none"
        sources: []
        """

    @Test func everyShippedProfileLoadsAndSoftHSMMatchesTheBuiltIn() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: profilesDirectory).filter { $0.hasSuffix(".yaml") }
        #expect(files.count >= 7)
        for file in files {
            let profile = try HSMProfile.load("\(profilesDirectory)/\(file)", directory: profilesDirectory)
            #expect(profile.requiredMechanisms.contains(MechanismType.aesGCM) || !profile.notes.isEmpty)
            #expect(!profile.badTagReturnValues.isEmpty)
        }
        let softhsm = try HSMProfile.load("softhsm2", directory: profilesDirectory)
        var builtIn = HSMProfile.softhsm2
        builtIn.notes = softhsm.notes
        builtIn.modulePaths = softhsm.modulePaths
        #expect(softhsm == builtIn)
        #expect(softhsm.tested)
    }

    @Test func parsesEveryField() throws {
        let profile = try HSMProfile.parse(yaml: valid, source: "example.yaml")
        #expect(profile.gcmLayout == .v230)
        #expect(profile.ivSource == .token)
        #expect(profile.maxSessions == 16)
        #expect(profile.idleSessionTimeout == .seconds(30))
        #expect(profile.login == .perSession)
        #expect(profile.badTagReturnValues == [PKCS11ReturnValue.encryptedDataInvalid, UInt(0x6)])
        #expect(profile.modulePaths == ["/opt/example/lib/libexample.so"])
    }

    @Test(arguments: [
        ("gcm_params: v2.30", "gcm_params: v3", "'gcm_params' is 'v3'"),
        ("iv_source: token", "iv_source: hsm", "'iv_source' is 'hsm'"),
        ("login: per-session", "login: sometimes", "'login' is 'sometimes'"),
        ("CKR_FUNCTION_FAILED]", "CKR_NOPE]", "unknown return value 'CKR_NOPE'"),
        ("CKM_AES_GCM]", "CKM_AES_GCMX]", "unknown mechanism 'CKM_AES_GCMX'"),
        ("max_sessions: 16", "max_sessions: -2", "'max_sessions' must be a positive integer"),
        ("tested: false", "tested: maybe", "'tested' must be true or false"),
        ("notes: \"none\"", "notes: \"none\"\nsessions: 4", "unknown key 'sessions'"),
        ("vendor: \"Example HSM\"\n", "", "'vendor' is missing"),
        ("name: example", "name: [", "not valid YAML"),
    ])
    func rejectsBadFilesWithAClearMessage(original: String, replacement: String, message: String) {
        let yaml = valid.replacingOccurrences(of: original, with: replacement)
        #expect(yaml != valid)
        do {
            _ = try HSMProfile.parse(yaml: yaml, source: "example.yaml")
            Issue.record("accepted: \(replacement)")
        } catch let error as KMSError {
            #expect(error.code == .invalidInput)
            #expect(error.message.contains("example.yaml"))
            #expect(error.message.contains(message), "\(error.message)")
        } catch {
            Issue.record("unexpected \(error)")
        }
    }

    @Test func aFileWhoseNameDisagreesIsRefused() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("profiles-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try valid.write(to: directory.appendingPathComponent("other.yaml"), atomically: true, encoding: .utf8)
        #expect(throws: KMSError.self) { try HSMProfile.load("other", directory: directory.path) }
    }
}

@Suite("HSM probe on SoftHSM")
struct HSMProbeTests {
    let token: SoftHSMToken

    init() throws {
        token = try SoftHSMToken.create()
    }

    func probe(_ profile: HSMProfile) -> HSMProbe.Report {
        HSMProbe.run(modulePath: token.module.path, token: token.uri, pin: token.pin, profile: profile)
    }

    @Test func passesOnTheSoftHSMProfile() throws {
        let report = probe(try HSMProfile.load("softhsm2", directory: profilesDirectory))
        #expect(report.passed, "\(report.table)")
        let names = report.checks.map(\.name)
        for expected in ["token found", "mechanism CKM_AES_GCM", "KEK value unreadable", "KEK cannot be wrapped out",
                         "AES-GCM round trip", "bad tag reported as the profile says", "sessions: 8 at once"] {
            #expect(names.contains(expected), "missing check \(expected)")
        }
        #expect(report.table.contains("✅"))
        #expect(!report.table.contains("❌"))
    }

    @Test func failsForAProfileClaimingAMechanismSoftHSMLacks() throws {
        #expect(try !token.module.mechanisms(token.slot).contains(MechanismType.chacha20Poly1305))
        var profile = HSMProfile.softhsm2
        profile.requiredMechanisms.append(MechanismType.chacha20Poly1305)
        let report = probe(profile)
        #expect(!report.passed)
        let failed = report.checks.filter { !$0.passed }.map(\.name)
        #expect(failed == ["mechanism CKM_CHACHA20_POLY1305"])
        #expect(report.table.contains("❌ mechanism CKM_CHACHA20_POLY1305"))
    }

    @Test func failsForWrongLayoutAndWrongBadTagClaims() throws {
        var layout = HSMProfile.softhsm2
        layout.gcmLayout = .v230
        #expect(probe(layout).checks.first { $0.name.hasPrefix("AES-GCM encrypt") }?.passed == false)

        var tag = HSMProfile.softhsm2
        tag.badTagReturnValues = [PKCS11ReturnValue.encryptedDataInvalid]
        let check = probe(tag).checks.first { $0.name == "bad tag reported as the profile says" }
        #expect(check?.passed == false)
        #expect(check?.detail.contains("CKR_GENERAL_ERROR") == true)
    }

    @Test func theCommandExitsZeroOnPassAndOneOnFail() throws {
        let probe = BuiltExecutable("kms-probe")
        try #require(probe.exists)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("probe-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var lacking = try String(contentsOfFile: "\(profilesDirectory)/softhsm2.yaml", encoding: .utf8)
        lacking = lacking.replacingOccurrences(of: "name: softhsm2", with: "name: lacking")
            .replacingOccurrences(of: "  - CKM_AES_GCM\n", with: "  - CKM_AES_GCM\n  - CKM_CHACHA20_POLY1305\n")
        try lacking.write(to: directory.appendingPathComponent("lacking.yaml"), atomically: true, encoding: .utf8)

        func run(_ profile: String, directory profiles: String) throws -> (Int32, String) {
            try probe.run(["--module", token.module.path, "--token", "pkcs11:token=\(token.label)", "--profile", profile,
                           "--profiles", profiles, "--pin-env", "PROBE_PIN"], environment: ["PROBE_PIN": token.userPIN])
        }
        let (passStatus, passText) = try run("softhsm2", directory: profilesDirectory)
        #expect(passStatus == 0, "\(passText)")
        #expect(!passText.contains(token.userPIN))
        let (failStatus, failText) = try run("lacking", directory: directory.path)
        #expect(failStatus == 1, "\(failText)")
        #expect(failText.contains("❌ mechanism CKM_CHACHA20_POLY1305"))
        let (usageStatus, usageText) = try run("nonexistent", directory: directory.path)
        #expect(usageStatus == 64, "\(usageText)")
    }
}
