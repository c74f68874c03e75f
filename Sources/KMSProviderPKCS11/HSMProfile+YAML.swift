import Foundation
import KMSCore
import KMSYAML
import PKCS11

extension HSMProfile {
    /// The keys a profile file may contain; anything else is a mistake and is reported.
    static let fileKeys: Set<String> = [
        "name", "vendor", "tested", "module_paths", "gcm_params", "iv_source", "max_sessions", "idle_session_timeout",
        "login", "bad_tag_return_values", "required_mechanisms", "pin_format", "notes", "sources",
    ]

    /// Parses a profile file (`hsm-profiles/<name>.yaml`). Every error names the file and the key.
    public static func parse(yaml: String, source: String) throws -> HSMProfile {
        func invalid(_ message: String) -> KMSError { .invalidInput("HSM profile \(source): \(message)") }
        let document: Any?
        do {
            document = try PlainYAML.load(yaml)
        } catch {
            throw invalid("not valid YAML (\(error))")
        }
        guard let map = document as? [String: Any] else { throw invalid("expected a mapping of keys to values") }
        if let unknown = Set(map.keys).subtracting(fileKeys).sorted().first {
            throw invalid("unknown key '\(unknown)' (known: \(fileKeys.sorted().joined(separator: ", ")))")
        }
        func string(_ key: String) throws -> String {
            guard let value = map[key] else { throw invalid("'\(key)' is missing") }
            guard let text = value as? String else { throw invalid("'\(key)' must be text") }
            return text
        }
        func strings(_ key: String) throws -> [String] {
            guard let value = map[key] else { throw invalid("'\(key)' is missing") }
            guard let list = value as? [Any], list.allSatisfy({ $0 is String }) else {
                throw invalid("'\(key)' must be a list of text")
            }
            return list.compactMap { $0 as? String }
        }
        func optionalInt(_ key: String) throws -> Int? {
            guard let value = map[key], !(value is NSNull) else { return nil }
            guard let number = value as? Int, number > 0 else { throw invalid("'\(key)' must be a positive integer or null") }
            return number
        }

        let name = try string("name")
        guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
            throw invalid("'name' must be letters, digits, '-' or '_'")
        }
        guard let tested = map["tested"] as? Bool else { throw invalid("'tested' must be true or false") }
        let layout: GCMParameterLayout
        switch try string("gcm_params") {
        case "v2.40": layout = .v240
        case "v2.30": layout = .v230
        case let other: throw invalid("'gcm_params' is '\(other)'; expected v2.40 or v2.30")
        }
        let ivText = try string("iv_source")
        guard let ivSource = IVSource(rawValue: ivText) else {
            throw invalid("'iv_source' is '\(ivText)'; expected caller or token")
        }
        let loginText = try string("login")
        guard let login = LoginScope(rawValue: loginText) else {
            throw invalid("'login' is '\(loginText)'; expected per-application or per-session")
        }
        var badTag = Set<UInt>()
        for text in try strings("bad_tag_return_values") {
            guard let value = PKCS11ReturnValue.value(named: text) else {
                throw invalid("'bad_tag_return_values' names an unknown return value '\(text)'")
            }
            badTag.insert(value)
        }
        guard !badTag.isEmpty else { throw invalid("'bad_tag_return_values' must name at least one value") }
        var mechanisms: [UInt] = []
        for text in try strings("required_mechanisms") {
            guard let value = MechanismType.parse(text) else {
                throw invalid("'required_mechanisms' names an unknown mechanism '\(text)' (use CKM_ names kmsd knows or 0x hex)")
            }
            mechanisms.append(value)
        }
        if let sources = map["sources"], !(sources is NSNull), !(sources is [Any]) {
            throw invalid("'sources' must be a list")
        }
        return HSMProfile(
            name: name, vendor: try string("vendor"), tested: tested, modulePaths: try strings("module_paths"),
            gcmLayout: layout, ivSource: ivSource, maxSessions: try optionalInt("max_sessions"),
            idleSessionTimeout: try optionalInt("idle_session_timeout").map { .seconds($0) }, login: login,
            badTagReturnValues: badTag, requiredMechanisms: mechanisms, pinFormat: try string("pin_format"),
            notes: (map["notes"] as? String) ?? "")
    }

    /// Loads `<directory>/<name>.yaml`, or the file at `reference` when it is a path (contains `/` or ends in
    /// `.yaml`). The file's `name` must match its file name.
    public static func load(_ reference: String, directory: String) throws -> HSMProfile {
        let isPath = reference.contains("/") || reference.hasSuffix(".yaml")
        let path = isPath ? reference : "\(directory)/\(reference).yaml"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw KMSError.invalidInput("HSM profile \(path) cannot be read")
        }
        let profile = try parse(yaml: String(decoding: data, as: UTF8.self), source: path)
        let stem = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
        guard profile.name == stem else {
            throw KMSError.invalidInput("HSM profile \(path): 'name' is '\(profile.name)' but the file is \(stem).yaml")
        }
        return profile
    }
}
