/// The caller's encryption context: string pairs bound to a wrapped key as additional authenticated data, so that a
/// wrapped DEK unwraps only with the same context (e.g. `{"cluster": "pg-7", "table": "orders"}`).
///
/// The canonical encoding (part of envelope v1, see `docs/envelope-format.md`) is
/// `u16 count`, then for each pair in ascending byte order of the UTF-8 key: `u16 key length, key, u16 value length,
/// value`, all big-endian. Strings are compared and encoded byte for byte; no Unicode normalization is applied.
/// Limits: at most 64 pairs, keys 1–128 bytes, values at most 1024 bytes.
public struct EncryptionContext: Sendable, Equatable, ExpressibleByDictionaryLiteral {
    public static let maxPairs = 64
    public static let maxKeyBytes = 128
    public static let maxValueBytes = 1024

    /// The pairs, in canonical order.
    public let pairs: [(key: String, value: String)]

    public static let empty = EncryptionContext(validated: [])

    private init(validated pairs: [(key: String, value: String)]) { self.pairs = pairs }

    /// Validates the limits; throws `KMSError.invalidInput` naming the first problem (by key, never by value).
    public init(_ dictionary: [String: String]) throws(KMSError) {
        guard dictionary.count <= Self.maxPairs else {
            throw .invalidInput("context has \(dictionary.count) entries; at most \(Self.maxPairs) are allowed")
        }
        for (key, value) in dictionary {
            guard !key.isEmpty else { throw .invalidInput("context keys must not be empty") }
            guard key.utf8.count <= Self.maxKeyBytes else {
                throw .invalidInput("context key is longer than \(Self.maxKeyBytes) bytes")
            }
            guard value.utf8.count <= Self.maxValueBytes else {
                throw .invalidInput("context value for key \"\(key)\" is longer than \(Self.maxValueBytes) bytes")
            }
        }
        pairs = dictionary.sorted { $0.key.utf8.lexicographicallyPrecedes($1.key.utf8) }.map { ($0.key, $0.value) }
    }

    /// For literals in code and tests. Invalid literals are programmer errors and trap.
    public init(dictionaryLiteral elements: (String, String)...) {
        do {
            try self.init(Dictionary(elements, uniquingKeysWith: { _, last in last }))
        } catch {
            preconditionFailure("invalid EncryptionContext literal: \(error)")
        }
    }

    public var isEmpty: Bool { pairs.isEmpty }
    public var dictionary: [String: String] { Dictionary(uniqueKeysWithValues: pairs.map { ($0.key, $0.value) }) }

    /// The canonical encoding described above.
    public var canonicalEncoding: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(2 + pairs.reduce(0) { $0 + 4 + $1.key.utf8.count + $1.value.utf8.count })
        out.appendBigEndian(UInt16(pairs.count))
        for (key, value) in pairs {
            out.appendBigEndian(UInt16(key.utf8.count))
            out.append(contentsOf: key.utf8)
            out.appendBigEndian(UInt16(value.utf8.count))
            out.append(contentsOf: value.utf8)
        }
        return out
    }

    public static func == (lhs: Self, rhs: Self) -> Bool {
        lhs.pairs.count == rhs.pairs.count && zip(lhs.pairs, rhs.pairs).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }
}

extension [UInt8] {
    mutating func appendBigEndian(_ value: UInt16) {
        append(UInt8(value >> 8))
        append(UInt8(value & 0xFF))
    }

    mutating func appendBigEndian(_ value: UInt32) {
        append(UInt8(value >> 24))
        append(UInt8((value >> 16) & 0xFF))
        append(UInt8((value >> 8) & 0xFF))
        append(UInt8(value & 0xFF))
    }
}
