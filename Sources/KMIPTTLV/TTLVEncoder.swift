/// TTLV encoding: lengths as the types require, values padded with zeros to a multiple of eight bytes.
public enum TTLVEncoder {
    public static func encode(_ item: TTLVItem) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(256)
        append(item, to: &bytes)
        return bytes
    }

    /// Appends `item` to `bytes`; a structure's length is written once its children are.
    public static func append(_ item: TTLVItem, to bytes: inout [UInt8]) {
        let tag = item.tag.rawValue
        bytes.append(UInt8(truncatingIfNeeded: tag >> 16))
        bytes.append(UInt8(truncatingIfNeeded: tag >> 8))
        bytes.append(UInt8(truncatingIfNeeded: tag))
        bytes.append(item.type.rawValue)
        let lengthAt = bytes.count
        bytes.append(contentsOf: [0, 0, 0, 0])
        let start = bytes.count
        switch item.value {
        case .structure(let children):
            for child in children { append(child, to: &bytes) }
        case .integer(let value): appendBigEndian(UInt32(bitPattern: value), to: &bytes)
        case .longInteger(let value): appendBigEndian(UInt64(bitPattern: value), to: &bytes)
        case .bigInteger(let value):
            // Sign-extended on the left to a multiple of eight bytes, as the wire requires (an empty value is zero).
            let fill: UInt8 = (value.first ?? 0) & 0x80 != 0 ? 0xFF : 0
            let width = max(8, (value.count + 7) & ~7)
            bytes.append(contentsOf: repeatElement(fill, count: width - value.count))
            bytes.append(contentsOf: value)
        case .enumeration(let value): appendBigEndian(value, to: &bytes)
        case .boolean(let value): appendBigEndian(UInt64(value ? 1 : 0), to: &bytes)
        case .textString(let value): bytes.append(contentsOf: value.utf8)
        case .byteString(let value): bytes.append(contentsOf: value)
        case .dateTime(let value): appendBigEndian(UInt64(bitPattern: value), to: &bytes)
        case .interval(let value): appendBigEndian(value, to: &bytes)
        }
        let length = UInt32(truncatingIfNeeded: bytes.count - start)
        bytes[lengthAt] = UInt8(truncatingIfNeeded: length >> 24)
        bytes[lengthAt + 1] = UInt8(truncatingIfNeeded: length >> 16)
        bytes[lengthAt + 2] = UInt8(truncatingIfNeeded: length >> 8)
        bytes[lengthAt + 3] = UInt8(truncatingIfNeeded: length)
        while (bytes.count - start) % 8 != 0 { bytes.append(0) }
    }

    /// How many bytes `encode(item)` makes, without making them (the header, the value, its padding).
    public static func encodedLength(_ item: TTLVItem) -> Int {
        let value: Int
        switch item.value {
        case .structure(let children): value = children.reduce(0) { $0 + encodedLength($1) }
        case .integer, .enumeration, .interval: value = 4
        case .longInteger, .boolean, .dateTime: value = 8
        case .bigInteger(let bytes): value = max(8, (bytes.count + 7) & ~7)
        case .textString(let text): value = text.utf8.count
        case .byteString(let bytes): value = bytes.count
        }
        return 8 + (value + 7) & ~7
    }

    private static func appendBigEndian(_ value: UInt32, to bytes: inout [UInt8]) {
        bytes.append(UInt8(truncatingIfNeeded: value >> 24))
        bytes.append(UInt8(truncatingIfNeeded: value >> 16))
        bytes.append(UInt8(truncatingIfNeeded: value >> 8))
        bytes.append(UInt8(truncatingIfNeeded: value))
    }

    private static func appendBigEndian(_ value: UInt64, to bytes: inout [UInt8]) {
        appendBigEndian(UInt32(truncatingIfNeeded: value >> 32), to: &bytes)
        appendBigEndian(UInt32(truncatingIfNeeded: value), to: &bytes)
    }
}
