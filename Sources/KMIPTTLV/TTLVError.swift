/// Why bytes are not a well-formed TTLV item. `offset` is where in the input the fault is; the description names the
/// fault and the tag, never a value.
public struct TTLVError: Error, Hashable, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable, Hashable {
        /// The input ends inside an item.
        case truncated
        /// A length that the type does not allow (an Integer not 4 bytes, a Big Integer not a multiple of 8, …), or a
        /// structure whose children do not fill its length exactly.
        case wrongLength
        /// Padding bytes that are not zero.
        case badPadding
        /// Structures nested deeper than the limit.
        case tooDeep
        /// The message is longer than the limit, or holds more items than the limit.
        case tooLarge
        /// A type byte KMIP 1.x does not define.
        case unknownType
        /// A tag KMIP 1.0–1.4 does not define and that is not in the extension range.
        case unknownTag
        /// A Boolean other than 0 or 1.
        case invalidBoolean
        /// A Text String that is not UTF-8.
        case invalidText
        /// Bytes after the item.
        case trailingBytes
    }

    public let code: Code
    public let offset: Int
    public let tag: TTLVTag?

    public init(_ code: Code, at offset: Int, tag: TTLVTag? = nil) {
        self.code = code
        self.offset = offset
        self.tag = tag
    }

    /// Faults in the framing (lengths, padding, depth, size, types) make the message unreadable: KMIP's `Invalid
    /// Message`. The rest (an unknown tag, a Boolean other than 0 or 1, text that is not UTF-8) are `Invalid Field`.
    public var isInvalidMessage: Bool {
        switch code {
        case .truncated, .wrongLength, .badPadding, .tooDeep, .tooLarge, .unknownType, .trailingBytes: true
        case .unknownTag, .invalidBoolean, .invalidText: false
        }
    }

    public var description: String {
        let what: String
        switch code {
        case .truncated: what = "the message ends inside an item"
        case .wrongLength: what = "an item's length does not fit its type or its contents"
        case .badPadding: what = "padding bytes are not zero"
        case .tooDeep: what = "structures are nested too deeply"
        case .tooLarge: what = "the message is larger than the server accepts"
        case .unknownType: what = "an item has a type KMIP 1.x does not define"
        case .unknownTag: what = "an item has a tag KMIP 1.0 to 1.4 does not define"
        case .invalidBoolean: what = "a Boolean is neither 0 nor 1"
        case .invalidText: what = "a Text String is not UTF-8"
        case .trailingBytes: what = "bytes follow the message"
        }
        return "\(what) (at byte \(offset)" + (tag.map { ", tag \($0)" } ?? "") + ")"
    }
}
