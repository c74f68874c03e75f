public import Foundation
public import KMSCore

/// The shapes of Vault's HTTP API shared by every server here that speaks it (vault-dev, kmsd's transit front end):
/// the response envelope, the error body, query strings, LIST, route patterns and transit's ciphertext text.
extension VaultReply {
    /// Vault's warning on a successful reply with a body for the parameters the endpoint did not read.
    public func warningUnused(_ parameters: VaultParameters) -> VaultReply {
        guard case .data(let data, var warnings, let auth, let status) = self, !parameters.unused.isEmpty else { return self }
        warnings.append("Endpoint ignored these unrecognized parameters: [\(parameters.unused.joined(separator: " "))]")
        return .data(data, warnings: warnings, auth: auth, status: status)
    }

    /// The HTTP status and body of this reply (`head`: no body).
    public func rendered(head: Bool) -> (status: Int, body: [UInt8]?) {
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
                "mount_type": data == nil ? "" : "transit",
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

    /// Vault's key-name rule, `\w(([\w-.]+)?\w)?`.
    public static func isValidKeyName(_ name: String) -> Bool {
        name.wholeMatch(of: #/\w(([\w\-.]+)?\w)?/#) != nil
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

/// `sys/health` as Vault answers it: every code and flag parameter checked (whichever applies now), then the body
/// with the status `sealedcode` (503) or `activecode` (200).
public enum VaultHealth {
    public static func reply(_ query: [String: String], sealed: Bool, version: String, clusterName: String, clusterID: String,
                             now: Date = Date()) throws(VaultError) -> VaultReply {
        func code(_ name: String, _ fallback: Int) throws(VaultError) -> Int {
            guard let text = query[name] else { return fallback }
            guard let value = Int(text), (100...599).contains(value) else { throw .badRequest("bad code value \(text.prefix(20)) for \(name)") }
            return value
        }
        for flag in ["standbyok", "perfstandbyok"] {
            if let text = query[flag], VaultParameters.parseBool(text) == nil {
                throw .badRequest("bad value for \(flag) parameter: \(text.prefix(20))")
            }
        }
        let sealedCode = try code("sealedcode", 503)
        let activeCode = try code("activecode", 200)
        for (name, fallback) in [("standbycode", 429), ("uninitcode", 501), ("perfstandbycode", 473), ("drsecondarycode", 472)] {
            _ = try code(name, fallback)
        }
        return .raw([
            "initialized": true, "sealed": .bool(sealed), "standby": false, "performance_standby": false,
            "replication_performance_mode": "disabled", "replication_dr_mode": "disabled",
            "server_time_utc": .int(Int(now.timeIntervalSince1970)), "version": .string(version),
            "cluster_name": .string(clusterName), "cluster_id": .string(clusterID),
        ], status: sealed ? sealedCode : activeCode)
    }
}

/// Transit's `batch_input`: Vault's checks of the items and its answer with one result per item.
public enum VaultBatch {
    /// `context` must be in every item or in none.
    public static func checkContexts(_ items: [VaultParameters]) throws(VaultError) {
        let withContext = items.map { item in var copy = item; return ((try? copy.string("context")) ?? nil)?.isEmpty == false }
        if Set(withContext).count > 1 { throw .badRequest("context should be set either in all the request blocks or in none") }
    }

    /// One entry per item (its fields, or `error` over `failureFields`, with its `reference`), and Vault's status:
    /// all failed → 400 (500 when all were internal), some failed → `partialCode` or 400 — when the operation allows
    /// a failure status at all (rewrap does not: 200).
    public static func reply(_ results: [Result<[String: JSONValue], VaultError>], references: [String?], partialCode: Int?,
                             allowsPartialCode: Bool, failureFields: [String: JSONValue] = [:]) -> VaultReply {
        var entries: [JSONValue] = []
        var failures = 0
        var internalFailures = 0
        for (result, reference) in zip(results, references) {
            var entry: [String: JSONValue]
            switch result {
            case .success(let fields): entry = fields
            case .failure(let error):
                failures += 1
                if error.status >= 500 { internalFailures += 1 }
                entry = failureFields.merging(["error": .string(error.messages.first ?? "error")]) { $1 }
            }
            if let reference { entry["reference"] = .string(reference) }
            entries.append(.object(entry))
        }
        guard failures > 0, allowsPartialCode else { return .data(["batch_results": .array(entries)]) }
        let status = failures == results.count ? (internalFailures == failures ? 500 : 400) : (partialCode ?? 400)
        return .data(["batch_results": .array(entries)], status: status)
    }
}
