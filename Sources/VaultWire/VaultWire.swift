import Foundation
import KMSCore

/// The shapes of Vault's HTTP API shared by every server here that speaks it (vault-dev, kmsd's transit front end):
/// the response envelope, the error body, query strings, LIST, route patterns and transit's ciphertext text.
extension VaultReply {
    /// The HTTP status and body of this reply (`head`: no body). `requestID` goes in the envelope.
    public func rendered(head: Bool, mountType: String = "transit") -> (status: Int, body: [UInt8]?) {
        switch self {
        case .noContent:
            return (204, nil)
        case .raw(let object, let status):
            return (status, head ? nil : JSONValue.object(object).serialized())
        case .data(let data, let warnings, let auth, let status):
            let envelope: JSONValue = [
                "request_id": .string(UUID().uuidString.lowercased()), "lease_id": "", "renewable": false,
                "lease_duration": 0, "data": data.map { .object($0) } ?? .null, "wrap_info": nil,
                "warnings": warnings.isEmpty ? .null : JSONValue(warnings), "auth": auth.map { .object($0) } ?? .null,
                "mount_type": data == nil ? "" : .string(mountType),
            ]
            return (status, head ? nil : envelope.serialized())
        }
    }
}

extension VaultError {
    /// `{"errors":[…]}` (no body for HEAD).
    public func rendered(head: Bool) -> (status: Int, body: [UInt8]?) {
        (status, head ? nil : JSONValue.object(["errors": JSONValue(messages)]).serialized())
    }
}

/// Request details as Vault reads them.
public enum VaultRequestLine {
    /// A query string's parameters, percent-decoded (the last of a repeated name wins).
    public static func query(_ text: String?) -> [String: String] {
        var values: [String: String] = [:]
        for pair in (text ?? "").split(separator: "&") {
            guard !pair.hasPrefix("=") else { continue }  // a value with no name
            let parts = pair.split(separator: "=", maxSplits: 1).map { String($0).removingPercentEncoding ?? String($0) }
            guard let name = parts.first else { continue }
            values[name] = parts.count > 1 ? parts[1] : ""
        }
        return values
    }

    /// The method a Vault handler sees: LIST (also `REPORT`, see `ListMethodRewriter`, and `GET …?list=true`) and PUT
    /// as POST.
    public static func method(_ method: String, query: [String: String]) -> String {
        let isList = method == "LIST" || method == "REPORT" || (method == "GET" && query["list"].flatMap(VaultParameters.parseBool) == true)
        return isList ? "LIST" : (method == "PUT" ? "POST" : method)
    }

}

/// Route patterns (`keys/*/rotate`: `*` matches one non-empty segment), split once.
public struct VaultRoutes: Sendable {
    private let routes: [(pattern: String, segments: [Substring])]

    public init(_ patterns: [String]) {
        routes = patterns.map { ($0, $0.split(separator: "/", omittingEmptySubsequences: false)) }
    }

    /// The first route whose segments match `parts`, and what its wildcards matched, in order; nil when none does.
    public func match(_ parts: [String]) -> (pattern: String, arguments: [String])? {
        for route in routes where route.segments.count == parts.count {
            var arguments: [String] = []
            var matched = true
            for (segment, part) in zip(route.segments, parts) {
                if segment == "*" {
                    guard !part.isEmpty else { matched = false; break }
                    arguments.append(part)
                } else if segment != part {
                    matched = false
                    break
                }
            }
            if matched { return (route.pattern, arguments) }
        }
        return nil
    }

    /// `match`, or the path itself and no arguments.
    public func resolve(_ parts: [String]) -> (String, [String]) {
        match(parts) ?? (parts.joined(separator: "/"), [])
    }
}

/// Transit's ciphertext text, `vault:v<N>:<base64>`, parsed with Vault's checks in Vault's order and with its messages.
public struct TransitCiphertext: Sendable, Equatable {
    public let version: Int
    public let blob: [UInt8]

    public init(version: Int, blob: [UInt8]) {
        self.version = version
        self.blob = blob
    }

    public var text: String { "vault:v\(version):" + Data(blob).base64EncodedString() }

    /// `latest` is the key's latest version (a newer one is "too new"); `allowed` says whether a version may decrypt
    /// (checked before the base64, as Vault does). Version 0 reads as 1.
    public static func parse(_ text: String, latest: Int, allowed: (Int) -> Bool) throws(VaultError) -> TransitCiphertext {
        guard text.hasPrefix("vault:v") else { throw .badRequest("invalid ciphertext: no prefix") }
        let rest = text.dropFirst("vault:v".count)
        guard let colon = rest.firstIndex(of: ":") else { throw .badRequest("invalid ciphertext: wrong number of fields") }
        guard var version = Int(rest[rest.startIndex..<colon]) else {
            throw .badRequest("invalid ciphertext: version number could not be decoded")
        }
        if version == 0 { version = 1 }
        if version > latest { throw .badRequest("invalid ciphertext: version is too new") }
        if !allowed(version) { throw .badRequest("ciphertext or signature version is disallowed by policy (too old)") }
        guard let blob = Data(base64Encoded: String(rest[rest.index(after: colon)...])) else {
            throw .badRequest("invalid ciphertext: could not decode base64")
        }
        return TransitCiphertext(version: version, blob: [UInt8](blob))
    }
}
