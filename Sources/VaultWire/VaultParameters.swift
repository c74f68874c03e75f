import Foundation
public import KMSCore
import KMSAPI

/// An error the way Vault reports it: an HTTP status and `{"errors":[…]}`.
public struct VaultError: Error, Sendable {
    public let status: Int
    public let messages: [String]

    public init(_ status: Int, _ messages: String...) {
        self.status = status
        self.messages = messages
    }

    public static func badRequest(_ message: String) -> VaultError { VaultError(400, message) }
    public static let invalidToken = VaultError(403, "2 errors occurred:\n\t* permission denied\n\t* invalid token\n\n")
    public static let permissionDenied = VaultError(403, "1 error occurred:\n\t* permission denied\n\n")
    public static let sealed = VaultError(503, "Vault is sealed")
    public static let notFound = VaultError(404)
    public static func unsupportedPath(_ path: String) -> VaultError { VaultError(404, "\(path): unsupported path") }
    public static func unsupportedOperation(_ path: String) -> VaultError { VaultError(405, "\(path): unsupported operation") }
}

/// What a handler returns: a JSON body (the success envelope is added by the server) or nothing (204).
public enum VaultReply: Sendable {
    /// `data` goes in the envelope's `data` (null when nil); `auth` in `auth`.
    case data([String: JSONValue]?, warnings: [String] = [], auth: [String: JSONValue]? = nil, status: Int = 200)
    /// A body sent as it is (health, seal status: no envelope).
    case raw([String: JSONValue], status: Int = 200)
    case noContent
}

/// A request's parameters with Vault's loose typing: integers as `2` or `"2"`, booleans as `true`, `"true"` or `1`,
/// durations as `3600`, `"3600"` or `"1h"`. Tracks which parameters a handler read, for the "ignored" warning.
public struct VaultParameters: Sendable {
    private let values: [String: JSONValue]
    public private(set) var used: Set<String> = []

    public init(_ values: [String: JSONValue]) {
        self.values = values
    }

    /// Parses a JSON object or a form-encoded body; an empty body is no parameters.
    public static func parse(body: [UInt8], contentType: String?) throws -> VaultParameters {
        let trimmed = body.drop { $0 == 0x20 || $0 == 0x0a || $0 == 0x0d || $0 == 0x09 }
        if trimmed.isEmpty { return VaultParameters([:]) }
        let isForm = contentType?.lowercased().hasPrefix("application/x-www-form-urlencoded") == true
        if isForm && trimmed.first != UInt8(ascii: "{") && trimmed.first != UInt8(ascii: "[") {
            var values: [String: JSONValue] = [:]
            for pair in String(decoding: body, as: UTF8.self).split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1).map {
                    String($0).replacingOccurrences(of: "+", with: " ").removingPercentEncoding ?? String($0)
                }
                // `=value` names nothing: skipped (splitting drops empty parts, so there may be no name at all).
                guard !pair.hasPrefix("="), let name = parts.first else { continue }
                values[name] = .string(parts.count > 1 ? parts[1] : "")
            }
            return VaultParameters(values)
        }
        guard let tree = try? StrictJSONTree.parse(body, lastKeyWins: true) else {
            throw VaultError.badRequest("failed to parse JSON input: invalid JSON in request body")
        }
        let object = JSONValue(tree)
        guard case .object(let map) = object else {
            throw VaultError.badRequest("failed to parse JSON input: expected a JSON object")
        }
        return VaultParameters(map)
    }

    public var isEmpty: Bool { values.isEmpty }

    /// Parameters nobody read, sorted, for the warning Vault adds on success.
    public var unused: [String] { values.keys.filter { !used.contains($0) }.sorted() }

    /// Vault's message without the value Vault quotes in it: the value may be a secret (a plaintext sent as a number
    /// or an object), and the message reaches the audit record.
    private func fieldError(_ name: String, _ value: JSONValue, _ type: String) -> VaultError {
        .badRequest("Field validation failed: error converting input for field \"\(name)\": expected \(type)")
    }

    public mutating func raw(_ name: String) -> JSONValue? {
        used.insert(name)
        guard let value = values[name], value != .null else { return nil }
        return value
    }

    public mutating func string(_ name: String) throws -> String? {
        guard let value = raw(name) else { return nil }
        switch value {
        case .string(let text): return text
        case .int(let number): return String(number)
        default: throw fieldError(name, value, "string")
        }
    }

    public mutating func int(_ name: String) throws -> Int? {
        guard let value = raw(name) else { return nil }
        switch value {
        case .int(let number): return number
        case .double(let number) where Int(exactly: number) != nil: return Int(exactly: number)
        case .string(let text) where text.isEmpty: return 0
        case .string(let text) where Int(text) != nil: return Int(text)
        default: throw fieldError(name, value, "integer")
        }
    }

    public mutating func bool(_ name: String) throws -> Bool? {
        guard let value = raw(name) else { return nil }
        switch value {
        case .bool(let flag): return flag
        case .int(let number) where number == 0 || number == 1: return number == 1
        case .string(let text) where Self.parseBool(text) != nil: return Self.parseBool(text)
        default: throw fieldError(name, value, "boolean")
        }
    }

    /// Seconds, from `3600`, `"3600"`, `"1h"`, `"90m"`, `"1h30m"`, `"10s"`.
    public mutating func duration(_ name: String) throws -> Int? {
        guard let value = raw(name) else { return nil }
        switch value {
        case .int(let number): return number
        case .string(let text) where Self.parseDuration(text) != nil: return Self.parseDuration(text)
        default: throw fieldError(name, value, "duration")
        }
    }

    public mutating func stringList(_ name: String) throws -> [String]? {
        guard let value = raw(name) else { return nil }
        switch value {
        case .array(let items): return items.map(\.display)
        case .string(let text): return text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        default: throw fieldError(name, value, "list")
        }
    }

    public mutating func objectList(_ name: String) throws -> [VaultParameters]? {
        guard let value = raw(name) else { return nil }
        guard case .array(let items) = value else { throw fieldError(name, value, "list of objects") }
        return try items.map { item in
            guard case .object(let object) = item else { throw fieldError(name, item, "list of objects") }
            return VaultParameters(object)
        }
    }

    /// A batch's `partial_failure_response_code`: an HTTP status (nil when absent).
    public static func partialFailureCode(_ parameters: inout VaultParameters) throws -> Int? {
        guard let code = try parameters.int("partial_failure_response_code") else { return nil }
        guard (100...599).contains(code) else { throw VaultError.badRequest("partial_failure_response_code must be an HTTP status code") }
        return code
    }

    /// Go's `strconv.ParseBool`.
    public static func parseBool(_ text: String) -> Bool? {
        switch text {
        case "1", "t", "T", "true", "TRUE", "True": true
        case "0", "f", "F", "false", "FALSE", "False": false
        default: nil
        }
    }

    public static func parseDuration(_ text: String) -> Int? {
        if let seconds = Int(text) { return seconds }
        var total = 0.0
        var number = ""
        var sawUnit = false
        var index = text.startIndex
        while index < text.endIndex {
            let character = text[index]
            if character.isNumber || character == "." {
                number.append(character)
                index = text.index(after: index)
                continue
            }
            guard let value = Double(number) else { return nil }
            var unit = String(character)
            let next = text.index(after: index)
            if character == "m", next < text.endIndex, text[next] == "s" { unit = "ms" }
            let factor: Double
            switch unit {
            case "h": factor = 3600
            case "m": factor = 60
            case "s": factor = 1
            case "ms": factor = 0.001
            case "d": factor = 86400
            default: return nil
            }
            total += value * factor
            number = ""
            sawUnit = true
            index = text.index(index, offsetBy: unit.count)
        }
        guard number.isEmpty, sawUnit else { return nil }
        // Beyond a century is no duration anyone means (and beyond Int it would trap).
        guard total.isFinite, total <= 100 * 366 * 86400 else { return nil }
        return Int(total)
    }
}

/// Go's `encoding/base64` standard decoding, with its error text (`illegal base64 data at input byte N`).
public enum GoBase64 {
    public static func decode(_ text: String) -> Result<[UInt8], VaultError> {
        let bytes = Array(text.utf8)
        if let data = Data(base64Encoded: text) { return .success([UInt8](data)) }
        func isAlphabet(_ byte: UInt8) -> Bool {
            (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a) || (byte >= 0x30 && byte <= 0x39)
                || byte == 0x2b || byte == 0x2f
        }
        var position = 0
        for (index, byte) in bytes.enumerated() {
            if isAlphabet(byte) { continue }
            if byte == UInt8(ascii: "=") && index >= bytes.count - 2 && bytes.count % 4 == 0 { continue }
            position = index
            return .failure(.badRequest("illegal base64 data at input byte \(position)"))
        }
        position = bytes.count - bytes.count % 4
        return .failure(.badRequest("illegal base64 data at input byte \(position)"))
    }
}

extension JSONValue {
    /// The parsed tree's value; a number is an integer when it reads as one, else a double.
    init(_ tree: StrictJSONTree) {
        switch tree {
        case .null: self = .null
        case .bool(let value): self = .bool(value)
        case .number(let text): self = Int(text).map(JSONValue.int) ?? .double(Double(text) ?? .nan)
        case .string(let value): self = .string(value)
        case .array(let items): self = .array(items.map(JSONValue.init))
        case .object(let fields): self = .object(fields.mapValues(JSONValue.init))
        }
    }
}
