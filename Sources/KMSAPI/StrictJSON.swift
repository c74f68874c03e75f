public import Foundation

/// How kmsd reads request bodies: a JSON object (an empty body counts as `{}`), no field outside `allowed`, then the
/// Codable type. Every failure is a `StrictJSON.Failure` with a message fit for a 400 answer (it names a field, never
/// echoes a value).
public enum StrictJSON {
    public enum Failure: Error, Equatable, CustomStringConvertible {
        case notAnObject
        case unknownField(String)
        case schema(String)

        public var description: String {
            switch self {
            case .notAnObject: "the body is not a JSON object"
            case .unknownField(let name): "unknown field '\(name.prefix(64))'"
            case .schema(let detail): "the body does not match the request schema: \(detail)"
            }
        }
    }

    /// A request type: its fields are its `CodingKeys`.
    public static func decode<T: StrictRequest>(_ type: T.Type, from data: Data) throws(Failure) -> T {
        try decode(type, from: data, allowed: T.fields)
    }

    public static func decode<T: Decodable>(_ type: T.Type, from data: Data, allowed: Set<String>) throws(Failure) -> T {
        let object = data.isEmpty ? [String: Any]() : (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
        guard let object else { throw .notAnObject }
        if let unknown = Set(object.keys).subtracting(allowed).sorted().first { throw .unknownField(unknown) }
        do {
            return try JSONDecoder().decode(T.self, from: data.isEmpty ? Data("{}".utf8) : data)
        } catch {
            throw .schema(describe(error))
        }
    }

    static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): "missing field '\(key.stringValue.prefix(64))'"
        case DecodingError.typeMismatch(_, let context): "wrong type at '\(path(context))'"
        case DecodingError.valueNotFound(_, let context): "null at '\(path(context))'"
        default: "malformed"
        }
    }

    private static func path(_ context: DecodingError.Context) -> String {
        String(context.codingPath.map(\.stringValue).joined(separator: ".").prefix(128))
    }
}

/// A request body kmsd decodes strictly: the fields it accepts are exactly its `CodingKeys`, so the list cannot drift
/// from the type.
public protocol StrictRequest: Decodable {
    associatedtype CodingKeys: CodingKey & CaseIterable
}

extension StrictRequest {
    public static var fields: Set<String> { Set(CodingKeys.allCases.map(\.stringValue)) }
}
