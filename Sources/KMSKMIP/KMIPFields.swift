import KMIPTTLV

/// The fields of one structure, read strictly: each field is taken by its tag and must have the type the
/// specification gives it; `finish()` refuses whatever was not taken (a field this operation does not define, or one
/// given twice where the specification allows one). Every refusal is an `Invalid Field` naming the field.
struct KMIPFields {
    private var items: [TTLVItem]
    private let context: String

    /// The fields of `item`, which must be a structure.
    init(_ item: TTLVItem, in context: String? = nil) throws(KMIPFailure) {
        guard case .structure(let children) = item.value else {
            throw KMIPFailure(.invalidField, "\(item.tag) must be a Structure")
        }
        self.items = children
        self.context = context ?? item.tag.description
    }

    init(children: [TTLVItem], in context: String) {
        self.items = children
        self.context = context
    }

    var isEmpty: Bool { items.isEmpty }

    /// Takes the first field with `tag`, if any.
    mutating func optional(_ tag: TTLVTag) -> TTLVItem? {
        guard let index = items.firstIndex(where: { $0.tag == tag }) else { return nil }
        return items.remove(at: index)
    }

    /// Takes the first field with `tag`; `Invalid Field` (or `missing`, when given) without one.
    mutating func required(_ tag: TTLVTag, missing: KMIPResultReason = .invalidField) throws(KMIPFailure) -> TTLVItem {
        guard let item = optional(tag) else { throw KMIPFailure(missing, "\(context) has no \(tag)") }
        return item
    }

    /// Takes every field with `tag`, in order.
    mutating func all(_ tag: TTLVTag) -> [TTLVItem] {
        let taken = items.filter { $0.tag == tag }
        items.removeAll { $0.tag == tag }
        return taken
    }

    /// Refuses what is left: a field that is not part of the structure, or a second one of a single field.
    func finish() throws(KMIPFailure) {
        guard let first = items.first else { return }
        throw KMIPFailure(.invalidField, "\(context) does not take \(first.tag) here")
    }
}

/// Typed reads of one field; a field of another type is an `Invalid Field` naming it.
extension TTLVItem {
    func integer() throws(KMIPFailure) -> Int32 {
        guard case .integer(let value) = value else { throw wrongType(.integer) }
        return value
    }

    func longInteger() throws(KMIPFailure) -> Int64 {
        guard case .longInteger(let value) = value else { throw wrongType(.longInteger) }
        return value
    }

    func boolean() throws(KMIPFailure) -> Bool {
        guard case .boolean(let value) = value else { throw wrongType(.boolean) }
        return value
    }

    func text() throws(KMIPFailure) -> String {
        guard case .textString(let value) = value else { throw wrongType(.textString) }
        return value
    }

    func bytes() throws(KMIPFailure) -> [UInt8] {
        guard case .byteString(let value) = value else { throw wrongType(.byteString) }
        return value
    }

    func dateTime() throws(KMIPFailure) -> Int64 {
        guard case .dateTime(let value) = value else { throw wrongType(.dateTime) }
        return value
    }

    func interval() throws(KMIPFailure) -> UInt32 {
        guard case .interval(let value) = value else { throw wrongType(.interval) }
        return value
    }

    /// An Enumeration whose value the specification defines for this tag (an extension value or one KMIP 2.0 added is
    /// an `Invalid Field`).
    func enumeration() throws(KMIPFailure) -> UInt32 {
        guard case .enumeration(let value) = value else { throw wrongType(.enumeration) }
        guard KMIPSpecification.isDefined(value, for: tag) else {
            throw KMIPFailure(.invalidField, "0x\(String(value, radix: 16)) is not a value of \(tag)")
        }
        return value
    }

    private func wrongType(_ expected: TTLVType) -> KMIPFailure {
        KMIPFailure(.invalidField, "\(tag) must be \(expected == .integer || expected == .enumeration || expected == .interval ? "an" : "a") \(expected), not \(type)")
    }
}
