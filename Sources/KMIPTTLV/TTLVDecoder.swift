/// What the decoder accepts at most. A peer chooses every length in a message, so each one is checked against what is
/// left of the input and against these limits before anything is allocated for it.
public struct TTLVLimits: Sendable, Hashable {
    /// The largest message, header included.
    public var maxMessageBytes: Int
    /// The deepest nesting of structures; the message itself is depth 1.
    public var maxDepth: Int
    /// The most items in one message, structures included.
    public var maxItems: Int

    public init(maxMessageBytes: Int = 1 << 20, maxDepth: Int = 16, maxItems: Int = 16_384) {
        self.maxMessageBytes = maxMessageBytes
        self.maxDepth = maxDepth
        self.maxItems = maxItems
    }

    public static let `default` = TTLVLimits()
}

/// Strict TTLV decoding: every length must be what its type requires, every padding byte zero, every tag defined by
/// KMIP 1.0–1.4 or in the extension range, and the input exactly one item. What decodes encodes back to the same
/// bytes (`TTLVEncoder`).
public enum TTLVDecoder {
    /// The size of an item's header: tag (3), type (1), length (4).
    public static let headerLength = 8

    /// The total length (header included) of the message whose first eight bytes are `header`, for reading a message
    /// from a stream. Refuses a first item that is not a structure, a length that is not a multiple of eight, and a
    /// message over the limit, before the rest is read.
    public static func messageLength(header: some Collection<UInt8>, limits: TTLVLimits = .default) throws(TTLVError) -> Int {
        let bytes = Array(header.prefix(headerLength))
        guard bytes.count == headerLength else { throw TTLVError(.truncated, at: bytes.count) }
        let tag = TTLVTag(UInt32(bytes[0]) << 16 | UInt32(bytes[1]) << 8 | UInt32(bytes[2]))
        guard tag.isSpecified || tag.isExtension else { throw TTLVError(.unknownTag, at: 0, tag: tag) }
        guard bytes[3] == TTLVType.structure.rawValue else { throw TTLVError(.unknownType, at: 3, tag: tag) }
        let length = Int(UInt32(bytes[4]) << 24 | UInt32(bytes[5]) << 16 | UInt32(bytes[6]) << 8 | UInt32(bytes[7]))
        guard length % 8 == 0 else { throw TTLVError(.wrongLength, at: 4, tag: tag) }
        guard headerLength + length <= limits.maxMessageBytes else { throw TTLVError(.tooLarge, at: 4, tag: tag) }
        return headerLength + length
    }

    /// Decodes exactly one item from `bytes`.
    public static func decode(_ bytes: [UInt8], limits: TTLVLimits = .default) throws(TTLVError) -> TTLVItem {
        guard bytes.count <= limits.maxMessageBytes else { throw TTLVError(.tooLarge, at: 0) }
        var reader = Reader(bytes: bytes, limits: limits)
        let item = try reader.item(depth: 1)
        guard reader.offset == bytes.count else { throw TTLVError(.trailingBytes, at: reader.offset) }
        return item
    }

    private struct Reader {
        let bytes: [UInt8]
        let limits: TTLVLimits
        var offset = 0
        var items = 0

        init(bytes: [UInt8], limits: TTLVLimits) {
            self.bytes = bytes
            self.limits = limits
        }

        mutating func item(depth: Int) throws(TTLVError) -> TTLVItem {
            let start = offset
            guard bytes.count - offset >= TTLVDecoder.headerLength else { throw TTLVError(.truncated, at: offset) }
            items += 1
            guard items <= limits.maxItems else { throw TTLVError(.tooLarge, at: offset) }
            let tag = TTLVTag(UInt32(bytes[offset]) << 16 | UInt32(bytes[offset + 1]) << 8 | UInt32(bytes[offset + 2]))
            guard tag.isSpecified || tag.isExtension else { throw TTLVError(.unknownTag, at: start, tag: tag) }
            guard let type = TTLVType(rawValue: bytes[offset + 3]) else { throw TTLVError(.unknownType, at: start + 3, tag: tag) }
            let length = Int(uint32(at: offset + 4))
            offset += TTLVDecoder.headerLength
            let padded = (length + 7) & ~7
            guard bytes.count - offset >= padded else { throw TTLVError(.truncated, at: start, tag: tag) }

            let value: TTLVValue
            switch type {
            case .structure:
                guard depth <= limits.maxDepth else { throw TTLVError(.tooDeep, at: start, tag: tag) }
                guard length % 8 == 0 else { throw TTLVError(.wrongLength, at: start + 4, tag: tag) }
                let end = offset + length
                var children: [TTLVItem] = []
                while offset < end {
                    // A child that claims more than its parent holds is caught here, not by the end of the input.
                    guard end - offset >= TTLVDecoder.headerLength,
                          end - offset - TTLVDecoder.headerLength >= (Int(uint32(at: offset + 4)) + 7) & ~7
                    else { throw TTLVError(.wrongLength, at: start + 4, tag: tag) }
                    children.append(try item(depth: depth + 1))
                }
                value = .structure(children)
            case .integer:
                try expect(length, 4, start, tag)
                value = .integer(Int32(bitPattern: uint32(at: offset)))
            case .longInteger:
                try expect(length, 8, start, tag)
                value = .longInteger(Int64(bitPattern: uint64(at: offset)))
            case .bigInteger:
                guard length > 0, length % 8 == 0 else { throw TTLVError(.wrongLength, at: start + 4, tag: tag) }
                value = .bigInteger(Array(bytes[offset ..< offset + length]))
            case .enumeration:
                try expect(length, 4, start, tag)
                value = .enumeration(uint32(at: offset))
            case .boolean:
                try expect(length, 8, start, tag)
                switch uint64(at: offset) {
                case 0: value = .boolean(false)
                case 1: value = .boolean(true)
                default: throw TTLVError(.invalidBoolean, at: offset, tag: tag)
                }
            case .textString:
                guard let text = String(validating: bytes[offset ..< offset + length], as: UTF8.self) else {
                    throw TTLVError(.invalidText, at: offset, tag: tag)
                }
                value = .textString(text)
            case .byteString:
                value = .byteString(Array(bytes[offset ..< offset + length]))
            case .dateTime:
                try expect(length, 8, start, tag)
                value = .dateTime(Int64(bitPattern: uint64(at: offset)))
            case .interval:
                try expect(length, 4, start, tag)
                value = .interval(uint32(at: offset))
            }
            if type != .structure {
                for index in offset + length ..< offset + padded where bytes[index] != 0 {
                    throw TTLVError(.badPadding, at: index, tag: tag)
                }
                offset += padded
            }
            return TTLVItem(tag, value)
        }

        private func expect(_ length: Int, _ required: Int, _ start: Int, _ tag: TTLVTag) throws(TTLVError) {
            guard length == required else { throw TTLVError(.wrongLength, at: start + 4, tag: tag) }
        }

        private func uint32(at index: Int) -> UInt32 {
            UInt32(bytes[index]) << 24 | UInt32(bytes[index + 1]) << 16 | UInt32(bytes[index + 2]) << 8 | UInt32(bytes[index + 3])
        }

        private func uint64(at index: Int) -> UInt64 {
            UInt64(uint32(at: index)) << 32 | UInt64(uint32(at: index + 4))
        }
    }
}
