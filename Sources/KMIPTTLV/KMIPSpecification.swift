/// The tables of the KMIP 1.0–1.4 specification this module holds as data: its tags and its enumerations.
public enum KMIPSpecification {
    /// One row of the tag table.
    public struct TagEntry: Sendable {
        public let tag: TTLVTag
        public let name: String
        /// The minor version of KMIP 1.x that introduced the tag (0 for 1.0).
        public let since: Int

        init(_ tag: UInt32, _ name: String, since: Int) {
            self.tag = TTLVTag(tag)
            self.name = name
            self.since = since
        }
    }

    /// The values of one enumeration, named by the tag that carries it.
    public struct EnumerationEntry: Sendable {
        public let tag: TTLVTag
        public let name: String
        public let values: [(value: UInt32, name: String)]

        init(_ tag: UInt32, _ name: String, _ values: [(UInt32, String)]) {
            self.tag = TTLVTag(tag)
            self.name = name
            self.values = values.map { (value: $0.0, name: $0.1) }
        }
    }

    private static let tagIndex: [TTLVTag: TagEntry] = Dictionary(tags.map { ($0.tag, $0) }, uniquingKeysWith: { first, _ in first })
    private static let enumerationIndex: [TTLVTag: [UInt32: String]] = Dictionary(
        enumerations.map { entry in (entry.tag, Dictionary(entry.values.map { ($0.value, $0.name) }, uniquingKeysWith: { first, _ in first })) },
        uniquingKeysWith: { first, _ in first }
    )

    /// The row of `tag` in the tag table, if KMIP 1.0–1.4 defines it.
    public static func tag(_ tag: TTLVTag) -> TagEntry? { tagIndex[tag] }

    /// Whether `tag` carries an Enumeration whose values the specification lists.
    public static func isEnumeration(_ tag: TTLVTag) -> Bool { enumerationIndex[tag] != nil }

    /// The name of `value` in the enumeration `tag` carries; nil if either is unknown (or an extension value).
    public static func enumerationName(_ tag: TTLVTag, _ value: UInt32) -> String? { enumerationIndex[tag]?[value] }

    /// Whether `value` is one of the values the enumeration of `tag` lists. Values with the high bit set
    /// (`0x8xxxxxxx`) are extensions and are not.
    public static func isDefined(_ value: UInt32, for tag: TTLVTag) -> Bool { enumerationIndex[tag]?[value] != nil }
}
