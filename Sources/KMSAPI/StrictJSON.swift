public import Foundation

/// How kmsd reads request bodies: a JSON object (an empty body counts as `{}`), no field outside the type's
/// `CodingKeys`, then the Codable type. Every failure is a `StrictJSON.Failure` with a message fit for a 400 answer (it names a field, never
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

    /// A request type: its fields are its `CodingKeys`. The body is parsed once, by kmsd's own strict parser
    /// (`StrictJSONTree`: no duplicate keys, no trailing bytes, nesting bounded), and the type decodes itself from
    /// that tree after its top-level keys were checked against its `CodingKeys`.
    public static func decode<T: StrictRequest>(_ type: T.Type, from data: Data) throws(Failure) -> T {
        try decode(type, from: [UInt8](data))
    }

    public static func decode<T: StrictRequest>(_ type: T.Type, from bytes: [UInt8]) throws(Failure) -> T {
        let tree: StrictJSONTree
        do {
            tree = bytes.isEmpty ? .object([:]) : try StrictJSONTree.parse(bytes)
        } catch {
            switch error {
            case .malformed: throw .notAnObject
            case .duplicateKey(let name): throw .schema("duplicate field '\(name.prefix(64))'")
            case .tooDeep: throw .schema("nested more than \(StrictJSONTree.maxDepth) levels deep")
            }
        }
        do {
            return try Checked<T>(from: StrictJSONDecoder(node: tree, codingPath: [])).value
        } catch let failure as Failure {
            throw failure
        } catch DecodingError.typeMismatch(_, let context) where context.codingPath.isEmpty {
            throw .notAnObject
        } catch DecodingError.valueNotFound(_, let context) where context.codingPath.isEmpty {
            throw .notAnObject
        } catch {
            throw .schema(describe(error))
        }
    }

    /// The top level must be an object whose keys are all `T`'s; then `T` decodes as usual.
    private struct Checked<T: StrictRequest>: Decodable {
        let value: T

        init(from decoder: any Decoder) throws {
            let object = try decoder.container(keyedBy: StrictJSONKey.self)
            if let unknown = object.allKeys.map(\.stringValue).filter({ T.CodingKeys(stringValue: $0) == nil }).sorted().first {
                throw Failure.unknownField(unknown)
            }
            value = try T(from: decoder)
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
    /// The accepted fields (the decoder asks `CodingKeys(stringValue:)` instead of building this set per request).
    public static var fields: Set<String> { Set(CodingKeys.allCases.map(\.stringValue)) }
}

