import Foundation
import Yams

/// YAML for kmsd's own files (the configuration, HSM profiles): mappings with plain text keys, sequences and scalars,
/// returned as `[String: Any]`, `[Any]`, `String`, `Int`, `Double`, `Bool` and `NSNull`.
///
/// `Yams.load` builds `[AnyHashable: Any]` and stops the process when a key is itself a mapping or a sequence (found
/// by ci/fuzz with the four-byte file `{{}}`), and its YAML 1.1 scalars overflow on a sexagesimal number such as
/// `4:4:44:4:4:44:44:4:4:4:4:4` (also ci/fuzz). This walks the composed node tree instead, refuses such keys with an
/// error that names the line, and resolves plain scalars by YAML 1.2's core schema with checked conversions.
public enum PlainYAML {
    public struct Error: Swift.Error, CustomStringConvertible {
        public let description: String
    }

    public static func load(_ text: String) throws -> Any? {
        let composed: Node?
        do {
            composed = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw Error(description: describe(error))
        }
        guard let node = composed else { return nil }
        return try value(node)
    }

    /// Yams' own description quotes the offending line of the file, which may hold a PIN, a token or a secret id:
    /// only the position and the problem are kept.
    static func describe(_ error: YamlError) -> String {
        switch error {
        case let .scanner(context, problem, mark, _), let .parser(context, problem, mark, _), let .composer(context, problem, mark, _):
            let started = context.map { "\($0.text) (from line \($0.mark.line), column \($0.mark.column)): " } ?? ""
            return "line \(mark.line), column \(mark.column): \(started)\(problem)"
        case let .reader(problem, offset, _, _):
            return "\(problem)" + (offset.map { " at byte \($0)" } ?? "")
        case .duplicatedKeysInMapping(let duplicates, _):
            return "duplicated keys: " + duplicates.sorted().map { "'\($0.prefix(64))'" }.joined(separator: ", ")
        case .no, .memory, .writer, .emitter, .representer, .dataCouldNotBeDecoded:
            return "malformed YAML"
        }
    }

    private static func value(_ node: Node) throws -> Any {
        switch node {
        case .scalar(let scalar):
            return resolve(scalar)
        case .sequence(let sequence):
            return try sequence.map { try value($0) }
        case .mapping(let mapping):
            var result: [String: Any] = [:]
            for (key, item) in mapping {
                guard case .scalar(let scalar) = key else {
                    throw Error(description: "line \(key.mark.map { "\($0.line)" } ?? "?"): a mapping key must be plain text")
                }
                guard result.updateValue(try value(item), forKey: scalar.string) == nil else {
                    throw Error(description: "line \(key.mark.map { "\($0.line)" } ?? "?"): the key '\(scalar.string.prefix(64))' appears twice")
                }
            }
            return result
        case .alias:
            throw Error(description: "aliases are not supported")
        }
    }

    /// YAML 1.2 core schema for plain scalars: null, true/false, decimal/hex/octal integers that fit an `Int`,
    /// floats; everything else, and every quoted scalar, is text.
    static func resolve(_ scalar: Node.Scalar) -> Any {
        let text = scalar.string
        guard scalar.style == .plain else { return text }
        switch text {
        case "", "~", "null", "Null", "NULL": return NSNull()
        case "true", "True", "TRUE": return true
        case "false", "False", "FALSE": return false
        case ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF": return Double.infinity
        case "-.inf", "-.Inf", "-.INF": return -Double.infinity
        case ".nan", ".NaN", ".NAN": return Double.nan
        default: break
        }
        if text.hasPrefix("0x"), let value = Int(text.dropFirst(2), radix: 16) { return value }
        if text.hasPrefix("0o"), let value = Int(text.dropFirst(2), radix: 8) { return value }
        if text.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == "-" || $0 == "+") }), let value = Int(text) { return value }
        if text.first.map({ $0.isNumber || $0 == "-" || $0 == "+" || $0 == "." }) == true,
           text.allSatisfy({ $0.isASCII && ($0.isNumber || "+-.eE".contains($0)) }), let value = Double(text) {
            return value
        }
        return text
    }
}
