/// The name of a key as storage nodes and operators use it (`orders`, `pg-cluster-7.tde`).
///
/// 1 to 64 characters from `a-z A-Z 0-9 . _ -`, starting with a letter or digit. The limits keep names safe inside
/// HSM labels (`kmsd/<name>/v<N>`), Vault paths and URLs without escaping.
public struct KeyName: Hashable, Sendable, Comparable, CustomStringConvertible, CheckedRawValue {
    public static let maxLength = 64
    public let rawValue: String

    /// Validates `rawValue`; throws `KMSError.invalidInput` naming the rule that failed.
    public init(_ rawValue: String) throws(KMSError) {
        guard !rawValue.isEmpty else { throw .invalidInput("key name is empty") }
        guard rawValue.utf8.count <= Self.maxLength else {
            throw .invalidInput("key name is longer than \(Self.maxLength) characters")
        }
        guard rawValue.utf8.allSatisfy(Self.isAllowed) else {
            throw .invalidInput("key name may contain only letters, digits, '.', '_' and '-'")
        }
        guard let first = rawValue.utf8.first, Self.isAlphanumeric(first) else {
            throw .invalidInput("key name must start with a letter or digit")
        }
        self.rawValue = rawValue
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
    }

    private static func isAllowed(_ byte: UInt8) -> Bool {
        isAlphanumeric(byte) || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
    }

    public var description: String { rawValue }
    public static func < (lhs: KeyName, rhs: KeyName) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// A key version. Versions start at 1 and only grow, as in Vault transit.
public struct KeyVersion: Hashable, Sendable, Comparable, CustomStringConvertible, CheckedRawValue {
    public let rawValue: UInt32

    /// Throws `KMSError.invalidInput` for 0.
    public init(_ rawValue: UInt32) throws(KMSError) {
        guard rawValue >= 1 else { throw .invalidInput("key versions start at 1") }
        self.rawValue = rawValue
    }

    private init(unchecked rawValue: UInt32) { self.rawValue = rawValue }

    /// Version 1.
    public static let first = KeyVersion(unchecked: 1)

    /// The next version; throws when the version space is exhausted.
    public func next() throws(KMSError) -> KeyVersion {
        guard rawValue < UInt32.max else { throw .conflict("key has reached the last possible version") }
        return KeyVersion(unchecked: rawValue + 1)
    }

    public var description: String { "v\(rawValue)" }
    public static func < (lhs: KeyVersion, rhs: KeyVersion) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// A value encoded as its raw value alone and checked again by its validating initialiser when decoded, so a
/// decoded `KeyName` or `KeyVersion` obeys the same rules as one made in code.
public protocol CheckedRawValue: Codable {
    associatedtype Raw: Codable
    var rawValue: Raw { get }
    init(_ rawValue: Raw) throws(KMSError)
}

extension CheckedRawValue {
    public init(from decoder: any Decoder) throws {
        self = try Self(try decoder.singleValueContainer().decode(Raw.self))
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}
