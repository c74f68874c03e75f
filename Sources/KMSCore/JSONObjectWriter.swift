/// A JSON object written by hand, field by field, in the order the caller gives: for the few fixed shapes on the
/// request path (the audit line, the node routes' answers), where `JSONEncoder` cost more than the rest of the
/// formatting together. Strings are escaped as `JSONEncoder` with `.withoutEscapingSlashes` would: quotes, backslashes
/// and control characters; `/` and non-ASCII UTF-8 as they are (so a base64 `/` in an answer is no longer `\/`, the
/// same JSON string either way).
public struct JSONObjectWriter: Sendable {
    public private(set) var bytes: [UInt8]
    private var first = true

    public init(capacity: Int = 256) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    /// Starts a field: `{"name":` or `,"name":`. The value's bytes follow (`raw`, or the typed methods below).
    public mutating func key(_ name: String) {
        bytes.append(first ? UInt8(ascii: "{") : UInt8(ascii: ","))
        first = false
        Self.appendString(name, to: &bytes)
        bytes.append(UInt8(ascii: ":"))
    }

    /// A string field; nothing when `value` is nil.
    public mutating func string(_ name: String, _ value: String?) {
        guard let value else { return }
        key(name)
        Self.appendString(value, to: &bytes)
    }

    /// A number field; nothing when `value` is nil.
    public mutating func number(_ name: String, _ value: UInt64?) {
        guard let value else { return }
        key(name)
        bytes += value.description.utf8
    }

    public mutating func bool(_ name: String, _ value: Bool) {
        key(name)
        bytes += (value ? "true" : "false").utf8
    }

    /// A field whose value is already JSON (a nested object or array).
    public mutating func raw(_ name: String, _ json: [UInt8]) {
        key(name)
        bytes += json
    }

    /// The object's bytes, closed (`{}` when it has no field).
    public consuming func finish() -> [UInt8] {
        if first { bytes.append(UInt8(ascii: "{")) }
        bytes.append(UInt8(ascii: "}"))
        return bytes
    }

    /// A JSON string: quotes, backslashes and control characters escaped; everything else as is.
    public static func appendString(_ text: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        // Most values (base64, hex digests, key names) need no escape: copied whole.
        if !text.utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
            out += text.utf8
            out.append(UInt8(ascii: "\""))
            return
        }
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0x0A: out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case 0x0D: out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case 0x09: out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case 0x08: out += [UInt8(ascii: "\\"), UInt8(ascii: "b")]
            case 0x0C: out += [UInt8(ascii: "\\"), UInt8(ascii: "f")]
            case 0x00..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out += Array("\\u00".utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }
}
