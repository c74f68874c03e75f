import KMIPTTLV
import KMSService

/// One Attribute structure: its name, index (for attributes that may have several instances) and value (an item
/// tagged Attribute Value, typed by the attribute).
struct KMIPAttribute: Equatable {
    var name: String
    var index: Int32?
    var value: TTLVItem

    init(name: String, index: Int32? = nil, value: TTLVValue) {
        self.name = name
        self.index = index
        self.value = TTLVItem(.attributeValue, value)
    }

    init(_ item: TTLVItem) throws(KMIPFailure) {
        guard item.tag == .attribute else { throw KMIPFailure(.invalidField, "expected an Attribute, not \(item.tag)") }
        var fields = try KMIPFields(item)
        name = try fields.required(.attributeName).text()
        index = try fields.optional(.attributeIndex)?.integer()
        value = try fields.required(.attributeValue)
        try fields.finish()
        if let index, index < 0 { throw KMIPFailure(.invalidField, "Attribute Index must not be negative") }
    }

    var item: TTLVItem {
        .structure(.attribute, [.text(.attributeName, name)] + (index.map { [.integer(.attributeIndex, $0)] } ?? []) + [value])
    }
}

/// The attributes kmsd knows by name: which a client may set, and how each is read from and written to an object.
enum KMIPAttributes {
    static let uniqueIdentifier = "Unique Identifier"
    static let objectType = "Object Type"
    static let cryptographicAlgorithm = "Cryptographic Algorithm"
    static let cryptographicLength = "Cryptographic Length"
    static let cryptographicUsageMask = "Cryptographic Usage Mask"
    static let name = "Name"
    static let state = "State"
    static let initialDate = "Initial Date"
    static let activationDate = "Activation Date"
    static let deactivationDate = "Deactivation Date"
    static let compromiseDate = "Compromise Date"
    static let compromiseOccurrenceDate = "Compromise Occurrence Date"
    static let destroyDate = "Destroy Date"
    static let lastChangeDate = "Last Change Date"
    static let revocationReason = "Revocation Reason"
    static let link = "Link"
    static let operationPolicyName = "Operation Policy Name"

    /// Standard attributes kept as given (text), which clients may set, change and delete.
    static let keptAsGiven: Set<String> = ["Contact Information", "Object Group", "Operation Policy Name"]

    /// Custom attributes: `x-` (client) names of at most 128 bytes without control characters; `y-` names are the
    /// server's and kmsd has none.
    static func isCustom(_ name: String) -> Bool {
        name.hasPrefix("x-") && name.count > 2 && name.utf8.count <= 128 && (try? checkText(name, "")) != nil
    }

    /// Whether a client may add, change or delete `name` on an existing object.
    static func isClientModifiable(_ name: String) -> Bool { name == Self.name || isCustom(name) || keptAsGiven.contains(name) }

    /// At most this many Names, other attributes, and bytes of one attribute's encoded value per object: an object's
    /// description is read at every operation on it and scanned by Locate.
    static let maxNames = 32
    static let maxAttributes = 64
    static let maxValueBytes = 4096

    static func checkLimits(_ object: ManagedObject) throws(KMIPFailure) {
        guard object.names.count <= maxNames else { throw KMIPFailure(.invalidField, "an object has at most \(maxNames) Names") }
        guard object.attributes.count <= maxAttributes else {
            throw KMIPFailure(.invalidField, "an object has at most \(maxAttributes) custom and kept attributes")
        }
        guard object.attributes.allSatisfy({ $0.value.count <= maxValueBytes }) else {
            throw KMIPFailure(.invalidField, "an attribute value has at most \(maxValueBytes) bytes")
        }
    }

    /// Text a client gives that kmsctl later prints (Names, attribute names, revocation messages): no control
    /// characters, so it cannot rewrite an administrator's terminal.
    static func checkText(_ text: String, _ what: String) throws(KMIPFailure) {
        guard !text.unicodeScalars.contains(where: { $0.value < 0x20 || (0x7F ... 0x9F).contains($0.value) }) else {
            throw KMIPFailure(.invalidField, "\(what) must not hold control characters")
        }
    }

    /// Applies the attributes of a Create or Register request to a new object. Attributes the server sets (state,
    /// dates, identifier) are refused; an attribute kmsd does not keep is an `Invalid Field` naming it.
    static func apply(_ attributes: [KMIPAttribute], to object: inout ManagedObject, now: Int64) throws(KMIPFailure) {
        for attribute in attributes {
            switch attribute.name {
            case cryptographicAlgorithm:
                let value = try attribute.value.enumeration(of: .cryptographicAlgorithm)
                if let existing = object.algorithm, existing != value {
                    throw KMIPFailure(.invalidField, "Cryptographic Algorithm disagrees with the key block")
                }
                object.algorithm = value
            case cryptographicLength:
                let value = try attribute.value.integer()
                if let existing = object.length, existing != value {
                    throw KMIPFailure(.invalidField, "Cryptographic Length disagrees with the key block")
                }
                object.length = value
            case cryptographicUsageMask:
                object.usageMask = try attribute.value.integer()
            case name:
                object.names.append(try nameValue(attribute.value))
            case activationDate:
                object.dates.activation = try attribute.value.dateTime()
            case deactivationDate:
                object.dates.deactivation = try attribute.value.dateTime()
            case let other where isCustom(other) || keptAsGiven.contains(other):
                if keptAsGiven.contains(other) {
                    _ = try attribute.value.text()
                    guard !object.attributes.contains(where: { $0.name == other }) else {
                        throw KMIPFailure(.invalidField, "\(other) has one value")
                    }
                }
                object.attributes.append(ManagedObject.Attribute(name: other, value: TTLVEncoder.encode(attribute.value)))
            case uniqueIdentifier, objectType, state, initialDate, compromiseDate, compromiseOccurrenceDate, destroyDate, lastChangeDate,
                 revocationReason, link:
                throw KMIPFailure(.invalidField, "\(attribute.name) is set by the server")
            default:
                throw KMIPFailure(.invalidField, "kmsd does not keep the attribute \(attribute.name.prefix(64))")
            }
        }
        try checkLimits(object)
        // Activation and deactivation dates already passed take effect now.
        if let activation = object.dates.activation, activation <= now, object.state == .preActive { object.state = .active }
    }

    /// The Name attribute's value: a structure of Name Value and Name Type.
    static func nameValue(_ item: TTLVItem) throws(KMIPFailure) -> String {
        var fields = try KMIPFields(item, in: "Name")
        let value = try fields.required(.nameValue).text()
        _ = try fields.optional(.nameType)?.enumeration()
        try fields.finish()
        guard !value.isEmpty, value.utf8.count <= 1024 else { throw KMIPFailure(.invalidField, "a Name must have 1 to 1024 bytes") }
        try checkText(value, "a Name")
        return value
    }

    static func nameItem(_ value: String) -> TTLVValue {
        .structure([.text(.nameValue, value), .enumeration(.nameType, 1)])
    }

    /// Every attribute of `object` as KMIP reports it, in the specification's order.
    static func all(_ object: ManagedObject) -> [KMIPAttribute] {
        var result: [KMIPAttribute] = [
            KMIPAttribute(name: uniqueIdentifier, value: .textString(object.id)),
            KMIPAttribute(name: objectType, value: .enumeration(object.type.rawValue)),
        ]
        if let algorithm = object.algorithm { result.append(KMIPAttribute(name: cryptographicAlgorithm, value: .enumeration(algorithm))) }
        if let length = object.length { result.append(KMIPAttribute(name: cryptographicLength, value: .integer(length))) }
        if let mask = object.usageMask { result.append(KMIPAttribute(name: cryptographicUsageMask, value: .integer(mask))) }
        for (index, name) in object.names.enumerated() {
            result.append(KMIPAttribute(name: Self.name, index: Int32(index), value: nameItem(name)))
        }
        result.append(KMIPAttribute(name: state, value: .enumeration(object.state.rawValue)))
        let dates = object.dates
        result.append(KMIPAttribute(name: initialDate, value: .dateTime(dates.initial)))
        if let date = dates.activation { result.append(KMIPAttribute(name: activationDate, value: .dateTime(date))) }
        if let date = dates.deactivation { result.append(KMIPAttribute(name: deactivationDate, value: .dateTime(date))) }
        if let date = dates.compromise { result.append(KMIPAttribute(name: compromiseDate, value: .dateTime(date))) }
        if let date = dates.compromiseOccurrence { result.append(KMIPAttribute(name: compromiseOccurrenceDate, value: .dateTime(date))) }
        if let date = dates.destroy { result.append(KMIPAttribute(name: destroyDate, value: .dateTime(date))) }
        result.append(KMIPAttribute(name: lastChangeDate, value: .dateTime(dates.lastChange)))
        if let revocation = object.revocation {
            result.append(KMIPAttribute(name: revocationReason, value: .structure(
                [.enumeration(.revocationReasonCode, revocation.code)] + (revocation.message.map { [.text(.revocationMessage, $0)] } ?? []))))
        }
        for (index, link) in object.links.enumerated() {
            result.append(KMIPAttribute(name: Self.link, index: Int32(index), value: .structure([
                .enumeration(.linkType, link.type), .text(.linkedObjectIdentifier, link.id),
            ])))
        }
        var seen: [String: Int32] = [:]
        for attribute in object.attributes {
            guard let value = try? TTLVDecoder.decode(attribute.value) else { continue }
            let index = seen[attribute.name, default: 0]
            seen[attribute.name] = index + 1
            result.append(KMIPAttribute(name: attribute.name, index: index, value: value.value))
        }
        return result
    }
}

extension TTLVItem {
    /// An Enumeration carried under another tag (an Attribute Value), checked against the enumeration of `tag`.
    func enumeration(of tag: TTLVTag) throws(KMIPFailure) -> UInt32 {
        guard case .enumeration(let value) = value else {
            throw KMIPFailure(.invalidField, "\(KMIPSpecification.tag(tag)?.name ?? "the value") must be an Enumeration, not \(type)")
        }
        guard KMIPSpecification.isDefined(value, for: tag) else {
            throw KMIPFailure(.invalidField, "0x\(String(value, radix: 16)) is not a value of \(tag)")
        }
        return value
    }
}
