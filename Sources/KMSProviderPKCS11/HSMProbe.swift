import Foundation
public import KMSCore
public import PKCS11

/// Checks a live token against an HSM profile before kmsd is pointed at it: mechanisms, the GCM parameter layout and IV
/// source, non-extractability of KEKs, the session allowance, login semantics, a wrap/unwrap round trip and how a bad
/// tag is reported. Everything it creates is a session object (`CKA_TOKEN` false) and disappears with its session.
///
/// Blocking: call it from a thread that may block (a command-line tool, a test), not from an event loop.
public enum HSMProbe {
    public struct Check: Sendable, Equatable {
        public let name: String
        public let passed: Bool
        public let detail: String
    }

    public struct Report: Sendable {
        public let profile: String
        public let checks: [Check]
        public var passed: Bool { !checks.isEmpty && checks.allSatisfy(\.passed) }

        /// A ✅/❌ table, one check a line.
        public var table: String {
            let width = max(5, checks.map(\.name.count).max() ?? 0)
            var lines = ["HSM probe against profile '\(profile)'", ""]
            for check in checks {
                let name = check.name.padding(toLength: width, withPad: " ", startingAt: 0)
                lines.append("\(check.passed ? "✅" : "❌") \(name)  \(check.detail)")
            }
            lines.append("")
            let failed = checks.filter { !$0.passed }.count
            lines.append(failed == 0 ? "all \(checks.count) checks passed" : "\(failed) of \(checks.count) checks failed")
            return lines.joined(separator: "\n")
        }
    }

    private struct Failed: Error, CustomStringConvertible {
        let description: String
    }

    /// Runs every check it can; a failed early step (module, token, login) ends the probe with what it has.
    public static func run(modulePath: String, token: PKCS11URI, pin: SecretBytes, profile: HSMProfile) -> Report {
        var checks: [Check] = []
        func check(_ name: String, _ body: () throws -> String) -> Bool {
            do {
                checks.append(Check(name: name, passed: true, detail: try body()))
                return true
            } catch {
                checks.append(Check(name: name, passed: false, detail: "\(error)"))
                return false
            }
        }
        func report() -> Report { Report(profile: profile.name, checks: checks) }

        var module: PKCS11Module?
        guard check("module loads", {
            let loaded = try PKCS11Module(path: modulePath)
            _ = try loaded.initialize()
            module = loaded
            let info = try loaded.info()
            return "\(info.manufacturerID) \(info.libraryDescription)"
        }), let module else { return report() }

        var found: (slot: SlotID, info: TokenInfo)?
        guard check("token found", {
            let slot = try module.findSlot(matching: token)
            let info = try module.tokenInfo(slot)
            found = (slot, info)
            return "\(info.label) (serial \(info.serialNumber), \(info.model))"
        }), let (slot, tokenInfo) = found else { return report() }

        var session: PKCS11Session?
        guard check("user login", {
            let opened = try module.openSession(slot)
            do {
                try pin.withUnsafeBytes { try opened.login(pin: $0) }
            } catch let error as PKCS11Error where error.returnValue == PKCS11ReturnValue.userAlreadyLoggedIn {
                // Another user of the module in this process is logged in already.
            }
            session = opened
            return "logged in"
        }), let session else { return report() }
        defer { try? session.close() }

        let offered = Set((try? module.mechanisms(slot)) ?? [])
        for mechanism in profile.requiredMechanisms {
            _ = check("mechanism \(MechanismType.name(of: mechanism))") {
                guard offered.contains(mechanism) else { throw Failed(description: "not offered by the token") }
                return "offered"
            }
        }

        // A KEK made exactly as kmsd makes them, but as a session object.
        var kek: ObjectHandle?
        _ = check("KEK generation (AES-256, sensitive, not extractable)") {
            kek = try session.generateKey(mechanism: MechanismType.aesKeyGen, template: [
                .class(.secretKey), .keyType(.aes), .valueLength(32), .token(false), .private(true), .sensitive(true),
                .extractable(false), .encrypt(true), .decrypt(true), .wrap(false), .unwrap(false),
            ])
            return "created"
        }
        if let kek {
            _ = check("KEK value unreadable") {
                do {
                    _ = try session.attribute(AttributeType.value, of: kek)
                } catch let error as PKCS11Error where error.returnValue == PKCS11ReturnValue.attributeSensitive {
                    return "CKA_VALUE refused with CKR_ATTRIBUTE_SENSITIVE"
                }
                throw Failed(description: "the token returned CKA_VALUE of a sensitive key")
            }
            _ = check("KEK cannot become extractable") {
                do {
                    try session.setAttributes([.extractable(true)], of: kek)
                } catch let error as PKCS11Error {
                    return "refused with \(PKCS11ReturnValue.name(of: error.returnValue))"
                }
                throw Failed(description: "the token let CKA_EXTRACTABLE go from false to true")
            }
            _ = check("KEK cannot be wrapped out") {
                let wrapper = try session.generateKey(mechanism: MechanismType.aesKeyGen, template: [
                    .class(.secretKey), .keyType(.aes), .valueLength(32), .token(false), .wrap(true),
                ])
                defer { try? session.destroyObject(wrapper) }
                for mechanism in [MechanismType.aesKeyWrapPad, MechanismType.aesKeyWrap] where offered.contains(mechanism) {
                    do {
                        _ = try session.wrapKey(mechanism: mechanism, wrappingKey: wrapper, key: kek)
                    } catch let error as PKCS11Error {
                        return "\(MechanismType.name(of: mechanism)) refused with \(PKCS11ReturnValue.name(of: error.returnValue))"
                    }
                    throw Failed(description: "\(MechanismType.name(of: mechanism)) exported the KEK")
                }
                return "the token offers no key-wrap mechanism"
            }
            gcmChecks(session, kek, profile, check)
            try? session.destroyObject(kek)
        }

        _ = check("login covers new sessions (\(profile.login.rawValue))") {
            let other = try module.openSession(slot)
            defer { try? other.close() }
            let loggedIn = try other.info().isUserLoggedIn
            switch (profile.login, loggedIn) {
            case (.perApplication, true): return "a new session is logged in"
            case (.perApplication, false):
                throw Failed(description: "a new session is not logged in: the profile should say per-session")
            case (.perSession, _): return loggedIn ? "a new session is logged in already" : "each session logs in"
            }
        }

        let wanted = min(profile.maxSessions ?? 8, 64)
        _ = check("sessions: \(wanted) at once") {
            var opened: [PKCS11Session] = []
            defer { for extra in opened { try? extra.close() } }
            for _ in 1..<wanted { opened.append(try module.openSession(slot)) }
            let limit = tokenInfo.maxReadWriteSessionCount.map { "token allows \($0)" } ?? "token reports no limit"
            return "opened \(wanted) (\(limit))"
        }
        return report()
    }

    /// The GCM parameter layout, the IV source, a round trip and the bad-tag report, with the profile's settings.
    private static func gcmChecks(
        _ session: PKCS11Session, _ kek: ObjectHandle, _ profile: HSMProfile, _ check: (String, () throws -> String) -> Bool
    ) {
        let plaintext = (0..<32).map { UInt8($0) }
        let aad = Array("kmsd-probe".utf8)
        var iv = profile.initialIV()
        let chosenIV = iv
        var ciphertext: [UInt8] = []
        let layout = profile.gcmLayout == .v240 ? "v2.40" : "v2.30"
        guard check("AES-GCM encrypt, \(layout) parameters, \(profile.ivSource.rawValue) IV", {
            ciphertext = try plaintext.withUnsafeBytes {
                try session.encryptGCM(key: kek, iv: &iv, aad: aad, layout: profile.gcmLayout, plaintext: $0)
            }
            guard ciphertext.count == plaintext.count + 16 else {
                throw Failed(description: "\(ciphertext.count) bytes out, expected \(plaintext.count + 16)")
            }
            switch profile.ivSource {
            case .caller:
                guard iv == chosenIV else { throw Failed(description: "the token replaced kmsd's IV: the profile should say token") }
                return "accepted kmsd's IV"
            case .token:
                guard iv.contains(where: { $0 != 0 }) else { throw Failed(description: "the token wrote no IV back") }
                return "the token chose the IV"
            }
        }) else { return }

        func decrypt(_ input: [UInt8]) throws -> [UInt8] {
            var output = [UInt8](repeating: 0, count: input.count)
            let written = try output.withUnsafeMutableBytes {
                try session.decryptGCM(key: kek, iv: iv, aad: aad, layout: profile.gcmLayout, ciphertext: input, plaintext: $0)
            }
            return Array(output.prefix(written))
        }
        _ = check("AES-GCM round trip") {
            guard try decrypt(ciphertext) == plaintext else { throw Failed(description: "decryption gave other bytes") }
            return "decrypts to the same 32 bytes"
        }
        _ = check("bad tag reported as the profile says") {
            var tampered = ciphertext
            tampered[tampered.count - 1] ^= 0x01
            do {
                _ = try decrypt(tampered)
            } catch let error as PKCS11Error {
                let name = PKCS11ReturnValue.name(of: error.returnValue)
                guard profile.badTagReturnValues.contains(error.returnValue) else {
                    throw Failed(description: "\(name), which the profile does not list: kmsd would treat it as an HSM fault")
                }
                return name
            }
            throw Failed(description: "a tampered tag decrypted")
        }
    }
}
