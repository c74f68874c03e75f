import Foundation
import KMIPTTLV
import Testing

/// The TTLV codec against the specification's own examples, the requests an independent client (PyKMIP) sends, and
/// malformed input.
@Suite("KMIP TTLV codec")
struct TTLVCodecTests {
    static let tag = TTLVTag(0x420020)

    /// KMIP 1.4 section 9.1.2's example of each item type, as bytes and as the value they encode.
    static let specificationExamples: [(hex: String, value: TTLVValue)] = [
        ("42002002000000040000000800000000", .integer(8)),
        ("420020030000000801b69b4ba5749200", .longInteger(123_456_789_000_000_000)),
        ("42002004000000100000000003fd35eb6bc2df4618080000",
         .bigInteger([0, 0, 0, 0, 0x03, 0xFD, 0x35, 0xEB, 0x6B, 0xC2, 0xDF, 0x46, 0x18, 0x08, 0x00, 0x00])),
        ("42002005000000040000 00ff00000000", .enumeration(255)),
        ("42002006000000080000000000000001", .boolean(true)),
        ("420020070000000b48656c6c6f20576f726c640000000000", .textString("Hello World")),
        ("42002008000000030102030000000000", .byteString([1, 2, 3])),
        ("42002009000000080000000047da67f8", .dateTime(1_205_495_800)),
        ("4200200a00000004000d2f0000000000", .interval(864_000)),
    ]

    @Test(arguments: specificationExamples.indices)
    func theSpecificationsExampleOfEachTypeDecodesAndEncodesBack(_ index: Int) throws {
        let (hex, value) = Self.specificationExamples[index]
        let bytes = Self.bytes(hex)
        let item = try TTLVDecoder.decode(bytes)
        #expect(item == TTLVItem(Self.tag, value))
        #expect(TTLVEncoder.encode(item) == bytes)
    }

    @Test func aStructureHoldsItsChildrenInOrder() throws {
        // The specification's structure example: an Enumeration 254 then an Integer 255, under tags 0x420004/0x420005.
        let bytes = Self.bytes("42002001000000204200040500000004000000fe000000004200050200000004000000ff00000000")
        let item = try TTLVDecoder.decode(bytes)
        #expect(item == .structure(Self.tag, [.enumeration(TTLVTag(0x420004), 254), .integer(TTLVTag(0x420005), 255)]))
        #expect(TTLVEncoder.encode(item) == bytes)
    }

    /// Every request PyKMIP 0.11 sends for the operations kmsd serves, in KMIP 1.0, 1.2 and 1.4 (ci/kmip-corpus
    /// captured them), decodes, and encodes back to the same bytes.
    @Test func everyRequestAnIndependentClientSendsRoundTrips() throws {
        let seeds = try Self.corpus().filter { $0.name.hasPrefix("valid-") }
        #expect(seeds.count >= 40)
        for seed in seeds {
            let item = try TTLVDecoder.decode(seed.bytes)
            #expect(item.tag == TTLVTag(0x420078), "\(seed.name) is a Request Message")
            #expect(TTLVEncoder.encode(item) == seed.bytes, "\(seed.name)")
            #expect(try TTLVDecoder.messageLength(header: seed.bytes.prefix(8)) == seed.bytes.count, "\(seed.name)")
            #expect(TTLVEncoder.encodedLength(item) == seed.bytes.count, "\(seed.name): the length computed without encoding")
        }
    }

    /// Each malformed seed is refused with the fault it was made with, never decoded.
    @Test func eachMalformedInputIsRefusedForWhatIsWrongWithIt() throws {
        let expected: [String: TTLVError.Code] = [
            "invalid-truncated": .truncated,
            "invalid-truncated-header": .truncated,
            "invalid-length-too-long": .truncated,
            "invalid-length-too-short": .wrongLength,
            "invalid-length-odd": .wrongLength,
            "invalid-trailing-bytes": .trailingBytes,
            "invalid-unknown-tag": .unknownTag,
            "invalid-unknown-type": .unknownType,
            "invalid-bad-padding": .badPadding,
            "invalid-boolean": .invalidBoolean,
            "invalid-text": .invalidText,
            "invalid-nesting-too-deep": .tooDeep,
            "invalid-child-overruns-parent": .wrongLength,
        ]
        let seeds = try Self.corpus().filter { $0.name.hasPrefix("invalid-") && $0.name != "invalid-extension-tag" }
        #expect(Set(seeds.map(\.name)) == Set(expected.keys))
        for seed in seeds {
            #expect(throws: TTLVError.self, "\(seed.name)") { try TTLVDecoder.decode(seed.bytes) }
            do {
                _ = try TTLVDecoder.decode(seed.bytes)
            } catch {
                #expect(error.code == expected[seed.name], "\(seed.name): \(error)")
            }
        }
    }

    @Test func lengthsMustBeWhatTheTypeRequires() {
        // An Integer of 8 bytes, a Boolean of 4, an Interval of 8, a Big Integer of 4 and of 0.
        for hex in ["42002002000000080000000000000008", "42002006000000040000000100000000",
                    "4200200a000000080000000000000001", "42002004000000040000000100000000", "4200200400000000"] {
            #expect(throws: TTLVError(.wrongLength, at: 4, tag: Self.tag)) { try TTLVDecoder.decode(Self.bytes(hex)) }
        }
    }

    @Test func limitsBoundSizeDepthAndItemCount() throws {
        let limits = TTLVLimits(maxMessageBytes: 128, maxDepth: 3, maxItems: 4)
        var nested = TTLVItem.integer(Self.tag, 1)
        for _ in 0 ..< 3 { nested = .structure(TTLVTag(0x420078), [nested]) }
        let three = TTLVEncoder.encode(nested)
        #expect(try TTLVDecoder.decode(three, limits: limits) == nested)
        let four = TTLVEncoder.encode(.structure(TTLVTag(0x420078), [nested]))
        #expect(throws: TTLVError(.tooDeep, at: 24, tag: TTLVTag(0x420078))) { try TTLVDecoder.decode(four, limits: limits) }

        let five = TTLVEncoder.encode(.structure(TTLVTag(0x420078), Array(repeating: .boolean(Self.tag, true), count: 4)))
        #expect(throws: TTLVError(.tooLarge, at: 56, tag: nil)) { try TTLVDecoder.decode(five, limits: limits) }
        let large = TTLVEncoder.encode(.bytes(Self.tag, Array(repeating: 7, count: 121)))
        #expect(throws: TTLVError(.tooLarge, at: 0)) { try TTLVDecoder.decode(large, limits: limits) }
    }

    /// A stream reader learns a message's length from its first eight bytes, and refuses one over the limit before
    /// reading it.
    @Test func theFramingRefusesAnOversizedOrMalformedMessageFromItsHeader() throws {
        #expect(try TTLVDecoder.messageLength(header: Self.bytes("4200780100000010")) == 24)
        #expect(throws: TTLVError(.tooLarge, at: 4, tag: TTLVTag(0x420078))) {
            try TTLVDecoder.messageLength(header: Self.bytes("42007801ffffff00"))
        }
        #expect(throws: TTLVError(.unknownType, at: 3, tag: TTLVTag(0x420078))) {
            try TTLVDecoder.messageLength(header: Self.bytes("4200780200000004"))
        }
        #expect(throws: TTLVError(.wrongLength, at: 4, tag: TTLVTag(0x420078))) {
            try TTLVDecoder.messageLength(header: Self.bytes("420078010000000c"))
        }
        #expect(throws: TTLVError(.unknownTag, at: 0, tag: TTLVTag(0x160301))) {
            try TTLVDecoder.messageLength(header: Self.bytes("1603010200010001"))  // a TLS ClientHello on a plain socket
        }
        #expect(throws: TTLVError(.truncated, at: 5)) { try TTLVDecoder.messageLength(header: Self.bytes("4200780100")) }
    }

    @Test func extensionTagsDecodeAndUnknownSpecificationTagsDoNot() throws {
        #expect(try TTLVDecoder.decode(Self.bytes("5400010100000000")) == .structure(TTLVTag(0x540001), []))
        // 0x420125 is KMIP 2.0's Attributes: not a 1.x tag.
        #expect(throws: TTLVError(.unknownTag, at: 0, tag: TTLVTag(0x420125))) {
            try TTLVDecoder.decode(Self.bytes("4201250100000000"))
        }
    }

    @Test func bigIntegersAreSignExtendedToWholeWords() throws {
        #expect(TTLVEncoder.encode(TTLVItem(Self.tag, .bigInteger([0xFF]))) == Self.bytes("4200200400000008ffffffffffffffff"))
        #expect(TTLVEncoder.encode(TTLVItem(Self.tag, .bigInteger([0x01, 0x00]))) == Self.bytes("42002004000000080000000000000100"))
        #expect(try TTLVDecoder.decode(Self.bytes("4200200400000008ffffffffffffffff")).value == .bigInteger(Array(repeating: 0xFF, count: 8)))
    }

    /// Byte Strings may be key material and Text Strings passwords: a description shows only their lengths.
    @Test func aDescriptionShowsNoStringValues() {
        let item = TTLVItem.structure(TTLVTag(0x420078), [
            .bytes(TTLVTag(0x420043), [0xDE, 0xAD, 0xBE, 0xEF]),
            .text(TTLVTag(0x4200A1), "hunter2"),
            .enumeration(TTLVTag(0x42005C), 0x1E),
        ])
        let text = item.description
        #expect(!text.contains("hunter2") && !text.lowercased().contains("dead") && !text.contains("222"))
        #expect(text.contains("Key Material (Byte String): 4 bytes"))
        #expect(text.contains("Password (Text String): 7 bytes of text"))
        #expect(text.contains("Operation (Enumeration): Discover Versions"))
    }

    @Test func theTablesHoldEveryTagAndTheEnumerationsOfKMIP1() {
        let values = KMIPSpecification.tags.map(\.tag.rawValue)
        #expect(values == Array(0x420001 ... 0x420124))
        #expect(KMIPSpecification.tag(TTLVTag(0x4200A2))?.since == 1)  // Device Identifier, KMIP 1.1
        #expect(KMIPSpecification.tag(TTLVTag(0x4200FE))?.name == "Authenticated Encryption Additional Data")
        #expect(KMIPSpecification.enumerationName(TTLVTag(0x420028), 3) == "AES")
        #expect(KMIPSpecification.enumerationName(TTLVTag(0x42007E), 0x100) == "General Failure")
        #expect(KMIPSpecification.isDefined(0x2B, for: TTLVTag(0x42005C)))  // Export, KMIP 1.4
        #expect(!KMIPSpecification.isDefined(0x2C, for: TTLVTag(0x42005C)))  // Log, KMIP 2.0
        #expect(!KMIPSpecification.isDefined(0x8000_0001, for: TTLVTag(0x42005C)))
    }

    static func bytes(_ hex: String) -> [UInt8] {
        let digits = Array(hex.filter { !$0.isWhitespace })
        return stride(from: 0, to: digits.count, by: 2).map { UInt8(String(digits[$0 ... $0 + 1]), radix: 16)! }
    }

    static func corpus() throws -> [(name: String, bytes: [UInt8])] {
        let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("FuzzCorpus/kmip-ttlv")
        return try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted().map { name in
            (name, [UInt8](try Data(contentsOf: directory.appendingPathComponent(name))))
        }
    }
}
