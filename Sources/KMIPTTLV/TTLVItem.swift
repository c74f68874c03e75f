// TTLV (tag, type, length, value): the encoding of every KMIP 1.x message. This module knows the encoding and the
// specification's tables, nothing of sockets, TLS or keys: the KMIP front end builds messages from these items.

/// A KMIP tag: three bytes, `0x42xxxx` for the specification's tags, `0x54xxxx` for extensions.
public struct TTLVTag: RawRepresentable, Hashable, Sendable, Comparable, CustomStringConvertible {
    public let rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public init(_ rawValue: UInt32) { self.rawValue = rawValue }

    /// In the extension range (`0x540000`–`0x54FFFF`), which the specification leaves to vendors.
    public var isExtension: Bool { rawValue & 0xFF_0000 == 0x54_0000 }

    /// One of the tags KMIP 1.0–1.4 defines.
    public var isSpecified: Bool { KMIPSpecification.tag(self) != nil }

    /// The specification's name, or nil for an extension or an unknown tag.
    public var name: String? { KMIPSpecification.tag(self)?.name }

    public var description: String { name ?? "0x" + String(rawValue, radix: 16, uppercase: true) }

    public static func < (lhs: TTLVTag, rhs: TTLVTag) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// The item types of KMIP 1.0–1.4 (the type byte). KMIP 2.0's Date-Time Extended (0x0B) is not among them.
public enum TTLVType: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case structure = 0x01
    case integer = 0x02
    case longInteger = 0x03
    case bigInteger = 0x04
    case enumeration = 0x05
    case boolean = 0x06
    case textString = 0x07
    case byteString = 0x08
    case dateTime = 0x09
    case interval = 0x0A

    public var description: String {
        switch self {
        case .structure: "Structure"
        case .integer: "Integer"
        case .longInteger: "Long Integer"
        case .bigInteger: "Big Integer"
        case .enumeration: "Enumeration"
        case .boolean: "Boolean"
        case .textString: "Text String"
        case .byteString: "Byte String"
        case .dateTime: "Date-Time"
        case .interval: "Interval"
        }
    }
}

/// The value of an item, by type.
public enum TTLVValue: Sendable, Hashable {
    case structure([TTLVItem])
    case integer(Int32)
    case longInteger(Int64)
    /// Two's complement, big-endian. Decoded values are a multiple of eight bytes, as on the wire; the encoder
    /// sign-extends shorter ones.
    case bigInteger([UInt8])
    case enumeration(UInt32)
    case boolean(Bool)
    case textString(String)
    case byteString([UInt8])
    /// Seconds since the Unix epoch (a signed 64-bit POSIX time).
    case dateTime(Int64)
    /// Seconds.
    case interval(UInt32)

    public var type: TTLVType {
        switch self {
        case .structure: .structure
        case .integer: .integer
        case .longInteger: .longInteger
        case .bigInteger: .bigInteger
        case .enumeration: .enumeration
        case .boolean: .boolean
        case .textString: .textString
        case .byteString: .byteString
        case .dateTime: .dateTime
        case .interval: .interval
        }
    }
}

/// One TTLV item. Its `description` never shows a Byte String's bytes (they may be key material) nor a Text String's
/// text (it may be a password in a Credential): only their lengths.
public struct TTLVItem: Sendable, Hashable, CustomStringConvertible {
    public var tag: TTLVTag
    public var value: TTLVValue

    public init(_ tag: TTLVTag, _ value: TTLVValue) {
        self.tag = tag
        self.value = value
    }

    public var type: TTLVType { value.type }

    public static func structure(_ tag: TTLVTag, _ children: [TTLVItem]) -> TTLVItem { TTLVItem(tag, .structure(children)) }
    public static func integer(_ tag: TTLVTag, _ value: Int32) -> TTLVItem { TTLVItem(tag, .integer(value)) }
    public static func longInteger(_ tag: TTLVTag, _ value: Int64) -> TTLVItem { TTLVItem(tag, .longInteger(value)) }
    public static func enumeration(_ tag: TTLVTag, _ value: UInt32) -> TTLVItem { TTLVItem(tag, .enumeration(value)) }
    public static func boolean(_ tag: TTLVTag, _ value: Bool) -> TTLVItem { TTLVItem(tag, .boolean(value)) }
    public static func text(_ tag: TTLVTag, _ value: String) -> TTLVItem { TTLVItem(tag, .textString(value)) }
    public static func bytes(_ tag: TTLVTag, _ value: [UInt8]) -> TTLVItem { TTLVItem(tag, .byteString(value)) }
    public static func dateTime(_ tag: TTLVTag, _ value: Int64) -> TTLVItem { TTLVItem(tag, .dateTime(value)) }
    public static func interval(_ tag: TTLVTag, _ value: UInt32) -> TTLVItem { TTLVItem(tag, .interval(value)) }

    public var description: String {
        var text = ""
        describe(into: &text, indent: 0)
        return text
    }

    private func describe(into text: inout String, indent: Int) {
        text += String(repeating: "  ", count: indent) + "\(tag) (\(type))"
        switch value {
        case .structure(let children):
            for child in children {
                text += "\n"
                child.describe(into: &text, indent: indent + 1)
            }
        case .integer(let value): text += ": \(value)"
        case .longInteger(let value): text += ": \(value)"
        case .bigInteger(let bytes): text += ": \(bytes.count) bytes"
        case .enumeration(let value): text += ": " + (KMIPSpecification.enumerationName(tag, value) ?? "0x" + String(value, radix: 16))
        case .boolean(let value): text += ": \(value)"
        case .textString(let string): text += ": \(string.utf8.count) bytes of text"
        case .byteString(let bytes): text += ": \(bytes.count) bytes"
        case .dateTime(let seconds): text += ": \(seconds) s since 1970"
        case .interval(let seconds): text += ": \(seconds) s"
        }
    }
}
