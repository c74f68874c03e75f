/// The request-body reader behind `StrictJSON`: an RFC 8259 parser (UTF-8 only, no trailing bytes, no duplicate
/// keys, nesting at most `maxDepth` deep) into a small tree, and a `Decoder` over that tree, so request types stay
/// `Decodable`. It replaced `JSONDecoder`, which spent about 7 % of a datakey request's CPU on a one-field body.
/// Failures are the `DecodingError`s `JSONDecoder` would throw (with the same coding paths), so callers describe them
/// the same way.
///
/// Made for request bodies: strings, booleans, integers written as integers, optionals, arrays and string maps. It
/// differs from `JSONDecoder` where no request type goes: an integer field refuses `1.0` and `1e2`, a floating-point
/// field reads an out-of-range number as infinity, and `Data` and `Date` get no special strategy. Object keys are
/// compared as Swift strings, so two keys that differ only in Unicode normalization count as a duplicate and are
/// refused (`JSONDecoder` kept one of them silently). Public for the Vault transit front end, which reads Vault's
/// loosely typed parameters from the same tree (with Vault's rule for a repeated key: the last one counts).
public enum StrictJSONTree: Equatable, Sendable {
    case null
    case bool(Bool)
    /// The number's text, checked against JSON's grammar; converted when a field asks for a number type.
    case number(String)
    case string(String)
    case array([StrictJSONTree])
    case object([String: StrictJSONTree])

    public static let maxDepth = 64

    public enum ParseError: Error, Equatable {
        case malformed
        case duplicateKey(String)
        case tooDeep
    }

    /// `lastKeyWins`: a repeated object key keeps its last value (Go's and so Vault's reading) instead of failing.
    public static func parse(_ bytes: [UInt8], lastKeyWins: Bool = false) throws(ParseError) -> StrictJSONTree {
        var parser = Parser(bytes: bytes, lastKeyWins: lastKeyWins)
        parser.skipWhitespace()
        let tree = try parser.value(depth: 0)
        parser.skipWhitespace()
        guard parser.index == bytes.count else { throw .malformed }
        return tree
    }

    private struct Parser {
        let bytes: [UInt8]
        let lastKeyWins: Bool
        var index = 0

        init(bytes: [UInt8], lastKeyWins: Bool) {
            self.bytes = bytes
            self.lastKeyWins = lastKeyWins
        }

        mutating func skipWhitespace() {
            while index < bytes.count, bytes[index] == 0x20 || bytes[index] == 0x09 || bytes[index] == 0x0A || bytes[index] == 0x0D {
                index += 1
            }
        }

        mutating func expect(_ literal: StaticString) throws(ParseError) {
            let count = literal.utf8CodeUnitCount
            guard index + count <= bytes.count else { throw .malformed }
            for offset in 0..<count where bytes[index + offset] != literal.utf8Start[offset] { throw .malformed }
            index += count
        }

        mutating func value(depth: Int) throws(ParseError) -> StrictJSONTree {
            guard depth < StrictJSONTree.maxDepth else { throw .tooDeep }
            guard index < bytes.count else { throw .malformed }
            switch bytes[index] {
            case UInt8(ascii: "{"): return try object(depth: depth)
            case UInt8(ascii: "["): return try array(depth: depth)
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"):
                try expect("true")
                return .bool(true)
            case UInt8(ascii: "f"):
                try expect("false")
                return .bool(false)
            case UInt8(ascii: "n"):
                try expect("null")
                return .null
            default: return .number(try number())
            }
        }

        /// Consumes `byte` when it comes next.
        mutating func take(_ byte: UInt8) -> Bool {
            guard index < bytes.count, bytes[index] == byte else { return false }
            index += 1
            return true
        }

        /// The comma-separated elements of an object or array, from its opening bracket to `closing`: `element`
        /// reads one, with the whitespace around it skipped here.
        mutating func elements(closing: UInt8, _ element: (inout Parser) throws(ParseError) -> Void) throws(ParseError) {
            index += 1
            skipWhitespace()
            if take(closing) { return }
            repeat {
                skipWhitespace()
                try element(&self)
                skipWhitespace()
            } while take(UInt8(ascii: ","))
            guard take(closing) else { throw .malformed }
        }

        mutating func object(depth: Int) throws(ParseError) -> StrictJSONTree {
            var fields: [String: StrictJSONTree] = [:]
            try elements(closing: UInt8(ascii: "}")) { parser throws(ParseError) in
                guard parser.index < parser.bytes.count, parser.bytes[parser.index] == UInt8(ascii: "\"") else { throw .malformed }
                let key = try parser.string()
                parser.skipWhitespace()
                guard parser.take(UInt8(ascii: ":")) else { throw .malformed }
                parser.skipWhitespace()
                let field = try parser.value(depth: depth + 1)
                guard fields.updateValue(field, forKey: key) == nil || parser.lastKeyWins else { throw .duplicateKey(key) }
            }
            return .object(fields)
        }

        mutating func array(depth: Int) throws(ParseError) -> StrictJSONTree {
            var items: [StrictJSONTree] = []
            try elements(closing: UInt8(ascii: "]")) { parser throws(ParseError) in
                items.append(try parser.value(depth: depth + 1))
            }
            return .array(items)
        }

        /// A string from its opening quote: escapes decoded (surrogate pairs joined, lone surrogates refused), raw
        /// control characters and invalid UTF-8 refused.
        mutating func string() throws(ParseError) -> String {
            index += 1
            var utf8: [UInt8] = []
            while true {
                guard index < bytes.count else { throw .malformed }
                let byte = bytes[index]
                index += 1
                switch byte {
                case UInt8(ascii: "\""):
                    // Validates the UTF-8 (String(validating:) is nil for ill-formed input).
                    guard let text = String(validating: utf8, as: UTF8.self) else { throw .malformed }
                    return text
                case UInt8(ascii: "\\"):
                    guard index < bytes.count else { throw .malformed }
                    let escape = bytes[index]
                    index += 1
                    switch escape {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): utf8.append(escape)
                    case UInt8(ascii: "b"): utf8.append(0x08)
                    case UInt8(ascii: "f"): utf8.append(0x0C)
                    case UInt8(ascii: "n"): utf8.append(0x0A)
                    case UInt8(ascii: "r"): utf8.append(0x0D)
                    case UInt8(ascii: "t"): utf8.append(0x09)
                    case UInt8(ascii: "u"):
                        var scalar = try hex4()
                        if (0xD800..<0xDC00).contains(scalar) {
                            try expect("\\u")
                            let low = try hex4()
                            guard (0xDC00..<0xE000).contains(low) else { throw .malformed }
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                        } else if (0xDC00..<0xE000).contains(scalar) {
                            throw .malformed
                        }
                        guard let unicode = Unicode.Scalar(scalar) else { throw .malformed }
                        UTF8.encode(unicode) { utf8.append($0) }
                    default: throw .malformed
                    }
                case 0x00..<0x20: throw .malformed
                default: utf8.append(byte)
                }
            }
        }

        mutating func hex4() throws(ParseError) -> UInt32 {
            guard index + 4 <= bytes.count else { throw .malformed }
            var value: UInt32 = 0
            for _ in 0..<4 {
                let byte = bytes[index]
                index += 1
                let digit: UInt8
                switch byte {
                case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
                case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
                case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
                default: throw .malformed
                }
                value = value << 4 | UInt32(digit)
            }
            return value
        }

        /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
        mutating func number() throws(ParseError) -> String {
            let start = index
            func digits(_ parser: inout Parser) -> Int {
                let first = parser.index
                while parser.index < parser.bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(parser.bytes[parser.index]) {
                    parser.index += 1
                }
                return parser.index - first
            }
            if index < bytes.count, bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard index < bytes.count else { throw .malformed }
            if bytes[index] == UInt8(ascii: "0") {
                index += 1
            } else {
                guard digits(&self) > 0 else { throw .malformed }
            }
            if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
                index += 1
                guard digits(&self) > 0 else { throw .malformed }
            }
            if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
                index += 1
                if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
                guard digits(&self) > 0 else { throw .malformed }
            }
            return String(decoding: bytes[start..<index], as: UTF8.self)
        }
    }
}

/// A coding-path key: a field name, or an array position spelled as `JSONDecoder` spells it (`Index 3`).
struct StrictJSONKey: CodingKey {
    let stringValue: String
    let intValue: Int?

    init(stringValue: String) {
        self.stringValue = stringValue
        intValue = nil
    }

    init(intValue: Int) {
        stringValue = "Index \(intValue)"
        self.intValue = intValue
    }
}

/// A `Decoder` over one node of the tree.
struct StrictJSONDecoder: Decoder, SingleValueDecodingContainer {
    let node: StrictJSONTree
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .object(let fields) = node else { throw mismatch([String: String].self) }
        return KeyedDecodingContainer(Keyed<Key>(fields: fields, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let items) = node else { throw mismatch([String].self) }
        return Unkeyed(items: items, codingPath: codingPath)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { self }

    // MARK: Single values

    func decodeNil() -> Bool { node == .null }

    private func context(_ description: String) -> DecodingError.Context {
        DecodingError.Context(codingPath: codingPath, debugDescription: description)
    }

    private func mismatch(_ type: Any.Type) -> DecodingError {
        if node == .null { return .valueNotFound(type, context("null where a value is required")) }
        return .typeMismatch(type, context("a different JSON type was expected"))
    }

    func decode(_ type: Bool.Type) throws -> Bool {
        guard case .bool(let value) = node else { throw mismatch(type) }
        return value
    }

    func decode(_ type: String.Type) throws -> String {
        guard case .string(let value) = node else { throw mismatch(type) }
        return value
    }

    private func float<T: LosslessStringConvertible>(_ type: T.Type) throws -> T {
        guard case .number(let text) = node else { throw mismatch(type) }
        guard let value = T(text) else { throw DecodingError.dataCorrupted(context("the number does not fit")) }
        return value
    }

    /// An integer written as one (no fraction or exponent), within the type's range.
    private func integer<T: FixedWidthInteger>(_ type: T.Type) throws -> T {
        guard case .number(let text) = node else { throw mismatch(type) }
        guard let value = T(text, radix: 10) else { throw DecodingError.dataCorrupted(context("the number does not fit")) }
        return value
    }

    func decode(_ type: Double.Type) throws -> Double { try float(type) }
    func decode(_ type: Float.Type) throws -> Float { try float(type) }
    func decode(_ type: Int.Type) throws -> Int { try integer(type) }
    func decode(_ type: Int8.Type) throws -> Int8 { try integer(type) }
    func decode(_ type: Int16.Type) throws -> Int16 { try integer(type) }
    func decode(_ type: Int32.Type) throws -> Int32 { try integer(type) }
    func decode(_ type: Int64.Type) throws -> Int64 { try integer(type) }
    func decode(_ type: UInt.Type) throws -> UInt { try integer(type) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try integer(type) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try integer(type) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try integer(type) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try integer(type) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        // The one map request bodies carry (encryption contexts), built straight from the tree: `Dictionary`'s own
        // `init(from:)` goes through a keyed container and a generic decode per entry. Same results and errors.
        if type == [String: String].self, case .object(let fields) = node {
            var map: [String: String] = [:]
            map.reserveCapacity(fields.count)
            for (key, value) in fields {
                guard case .string(let text) = value else {
                    // Not a string: the error `decode(String.self)` gives, with the entry's coding path.
                    _ = try StrictJSONDecoder(node: value, codingPath: codingPath + [StrictJSONKey(stringValue: key)]).decode(String.self)
                    continue
                }
                map[key] = text
            }
            if let map = map as? T { return map }
        }
        return try T(from: self)
    }

    // MARK: Containers

    struct Keyed<Key: CodingKey>: KeyedDecodingContainerProtocol {
        let fields: [String: StrictJSONTree]
        let codingPath: [any CodingKey]

        var allKeys: [Key] { fields.keys.compactMap { Key(stringValue: $0) } }
        func contains(_ key: Key) -> Bool { fields[key.stringValue] != nil }

        private func child(_ key: Key) throws -> StrictJSONDecoder {
            guard let node = fields[key.stringValue] else {
                throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "missing field"))
            }
            return StrictJSONDecoder(node: node, codingPath: codingPath + [key])
        }

        func decodeNil(forKey key: Key) throws -> Bool { try child(key).decodeNil() }
        func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try child(key).decode(type) }
        func decode(_ type: String.Type, forKey key: Key) throws -> String { try child(key).decode(type) }
        func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try child(key).decode(type) }
        func decode(_ type: Float.Type, forKey key: Key) throws -> Float { try child(key).decode(type) }
        func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try child(key).decode(type) }
        func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try child(key).decode(type) }
        func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try child(key).decode(type) }
        func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try child(key).decode(type) }
        func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try child(key).decode(type) }
        func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try child(key).decode(type) }
        func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try child(key).decode(type) }
        func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try child(key).decode(type) }
        func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try child(key).decode(type) }
        func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try child(key).decode(type) }
        func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T { try child(key).decode(type) }

        func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
            try child(key).container(keyedBy: type)
        }

        func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
            try child(key).unkeyedContainer()
        }

        func superDecoder() throws -> any Decoder {
            guard let key = Key(stringValue: "super") else {
                throw DecodingError.keyNotFound(StrictJSONKey(stringValue: "super"), .init(codingPath: codingPath, debugDescription: "missing field"))
            }
            return try child(key)
        }
        func superDecoder(forKey key: Key) throws -> any Decoder { try child(key) }
    }

    struct Unkeyed: UnkeyedDecodingContainer {
        let items: [StrictJSONTree]
        let codingPath: [any CodingKey]
        var currentIndex = 0
        var count: Int? { items.count }
        var isAtEnd: Bool { currentIndex >= items.count }

        private mutating func next() throws -> StrictJSONDecoder {
            let key = StrictJSONKey(intValue: currentIndex)
            guard !isAtEnd else {
                throw DecodingError.valueNotFound(Any.self, .init(codingPath: codingPath + [key], debugDescription: "the array ended"))
            }
            currentIndex += 1
            return StrictJSONDecoder(node: items[currentIndex - 1], codingPath: codingPath + [key])
        }

        mutating func decodeNil() throws -> Bool {
            guard !isAtEnd, items[currentIndex] == .null else { return false }
            currentIndex += 1
            return true
        }

        mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try next().decode(type) }

        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
            try next().container(keyedBy: type)
        }

        mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer { try next().unkeyedContainer() }
        mutating func superDecoder() throws -> any Decoder { try next() }
    }
}
