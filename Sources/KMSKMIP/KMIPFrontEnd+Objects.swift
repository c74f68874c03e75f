import Foundation
import KMIPTTLV
import KMSCore
import KMSService

/// The object operations: Create, Register, Get, the attribute operations, the lifecycle (Activate, Revoke, Destroy),
/// Re-key and Locate. Every operation finds its object by the Unique Identifier it names (or the batch's ID
/// Placeholder); an object the caller does not own and no grant shares is `Item Not Found`, exactly as one that does
/// not exist.
extension KMIPFrontEnd {
    // MARK: - Create and Register

    func create(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) async throws -> [TTLVItem]? {
        let type = try fields.required(.objectType).enumeration()
        guard type == ManagedObject.ObjectType.symmetricKey.rawValue else {
            throw KMIPFailure(.invalidField, "kmsd creates Symmetric Keys only (register Secret Data with Register)")
        }
        let attributes = try templateAttributes(fields.optional(.templateAttribute))
        try fields.finish()
        var object = ManagedObject(id: Self.newID(), owner: request.identity, type: .symmetricKey, created: request.now,
                                   materialLength: 0)
        try KMIPAttributes.apply(attributes, to: &object, now: request.now)
        try checkNames(object.names, request)
        if object.usageMask == nil { object.usageMask = 0x0C }  // Encrypt | Decrypt
        guard object.algorithm == 3 else { throw KMIPFailure(.invalidField, "Create needs Cryptographic Algorithm AES") }
        guard let length = object.length, [128, 192, 256].contains(length) else {
            throw KMIPFailure(.invalidField, "Create needs Cryptographic Length 128, 192 or 256")
        }
        object.materialLength = Int(length) / 8
        service.noteObject(object.id)
        try await service.createManagedObject(object, generating: object.materialLength, wrappingKey: try wrappingKey(request),
                                              ownerQuota: request.configuration.maxObjectsPerOwner)
        return [.enumeration(.objectType, type), .text(.uniqueIdentifier, object.id)]
    }

    func register(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) async throws -> [TTLVItem]? {
        let typeValue = try fields.required(.objectType).enumeration()
        guard let type = ManagedObject.ObjectType(rawValue: typeValue) else {
            throw KMIPFailure(.invalidField, "kmsd registers Symmetric Keys and Secret Data only")
        }
        let attributes = try templateAttributes(fields.optional(.templateAttribute))
        let objectItem = try fields.required(type == .symmetricKey ? .symmetricKey : .secretData)
        try fields.finish()
        var object = ManagedObject(id: Self.newID(), owner: request.identity, type: type, created: request.now,
                                   materialLength: 0)
        let material = try KMIPKeyBlock.read(objectItem, into: &object)
        try KMIPAttributes.apply(attributes, to: &object, now: request.now)
        try checkNames(object.names, request)
        if type == .symmetricKey && object.usageMask == nil { object.usageMask = 0x0C }
        service.noteObject(object.id)
        try await service.storeManagedObject(object, material: material, wrappingKey: try wrappingKey(request),
                                             ownerQuota: request.configuration.maxObjectsPerOwner)
        return [.text(.uniqueIdentifier, object.id)]
    }

    /// The attributes of a Template-Attribute (templates by name are not kept: they are deprecated, and kmsd has none).
    func templateAttributes(_ item: TTLVItem?) throws(KMIPFailure) -> [KMIPAttribute] {
        guard let item else { return [] }
        var fields = try KMIPFields(item)
        if fields.optional(.name) != nil { throw KMIPFailure(.invalidField, "kmsd keeps no templates: give the attributes themselves") }
        var attributes: [KMIPAttribute] = []
        for attribute in fields.all(.attribute) { attributes.append(try KMIPAttribute(attribute)) }
        try fields.finish()
        return attributes
    }

    // MARK: - Get

    func get(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) async throws -> [TTLVItem]? {
        let id = try objectID(&fields, request)
        let format = try fields.optional(.keyFormatType)?.enumeration()
        // Compression concerns elliptic-curve keys only: for a symmetric key or secret data there is nothing to compress.
        _ = try fields.optional(.keyCompressionType)?.enumeration()
        if fields.optional(.keyWrappingSpecification) != nil {
            throw KMIPFailure(.featureNotSupported, "kmsd does not wrap returned keys with a client key; use TLS")
        }
        if let wrapType = try fields.optional(.keyWrapType)?.enumeration(), wrapType != 1 {
            throw KMIPFailure(.featureNotSupported, "kmsd returns keys not wrapped (Key Wrap Type Not Wrapped)")
        }
        try fields.finish()
        let object = try await load(id, request)
        guard request.node.identity.matches(any: request.configuration.export) else {
            service.events.record("forbidden")
            throw KMIPFailure(.permissionDenied, "\(request.node.identity) may not export key material (kmip.export)")
        }
        guard object.hasMaterial else {
            throw KMIPFailure(.keyValueNotPresent, "the object is destroyed: its key material is gone", recordedAs: .conflict)
        }
        let material = try await service.openManagedObject(object, wrappingKey: try wrappingKey(request),
                                                           legacySeals: request.configuration.acceptLegacySeals)
        let item = try KMIPKeyBlock.item(object, material: material, format: format)
        return [.enumeration(.objectType, object.type.rawValue), .text(.uniqueIdentifier, object.id), item]
    }

    // MARK: - Attributes

    func getAttributes(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) async throws -> [TTLVItem]? {
        let id = try objectID(&fields, request)
        var names: [String] = []
        for item in fields.all(.attributeName) { names.append(try item.text()) }
        try fields.finish()
        let object = try await load(id, request)
        let all = KMIPAttributes.all(object)
        let chosen = names.isEmpty ? all : all.filter { names.contains($0.name) }
        return [.text(.uniqueIdentifier, object.id)] + chosen.map(\.item)
    }

    func getAttributeList(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) async throws -> [TTLVItem]? {
        let id = try objectID(&fields, request)
        try fields.finish()
        let object = try await load(id, request)
        var names: [String] = []
        for attribute in KMIPAttributes.all(object) where !names.contains(attribute.name) {
            names.append(attribute.name)
        }
        return [.text(.uniqueIdentifier, object.id)] + names.map { .text(.attributeName, $0) }
    }

    func addAttribute(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) async throws -> [TTLVItem]? {
        let id = try objectID(&fields, request)
        let attribute = try KMIPAttribute(try fields.required(.attribute))
        try fields.finish()
        guard attribute.index == nil else { throw KMIPFailure(.invalidField, "Add Attribute takes no Attribute Index: the server assigns it") }
        let added = try await change(id, request) { object throws(KMIPFailure) in
            try Self.checkModifiable(attribute.name, object)
            switch attribute.name {
            case KMIPAttributes.name:
                let value = try KMIPAttributes.nameValue(attribute.value)
                try checkNames([value], request)
                object.names.append(value)
                try KMIPAttributes.checkLimits(object)
                return KMIPAttribute(name: attribute.name, index: Int32(object.names.count - 1), value: attribute.value.value)
            default:
                let existing = object.attributes.filter { $0.name == attribute.name }.count
                if KMIPAttributes.keptAsGiven.contains(attribute.name) {
                    guard existing == 0 else { throw KMIPFailure(.illegalOperation, "\(attribute.name) has a value already; modify it") }
                    _ = try attribute.value.text()
                }
                object.attributes.append(ManagedObject.Attribute(name: attribute.name, value: TTLVEncoder.encode(attribute.value)))
                try KMIPAttributes.checkLimits(object)
                return KMIPAttribute(name: attribute.name, index: Int32(existing), value: attribute.value.value)
            }
        }
        return [.text(.uniqueIdentifier, id), added.item]
    }

    func modifyAttribute(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) async throws -> [TTLVItem]? {
        let id = try objectID(&fields, request)
        let attribute = try KMIPAttribute(try fields.required(.attribute))
        try fields.finish()
        let index = Int(attribute.index ?? 0)
        let modified = try await change(id, request) { object throws(KMIPFailure) in
            try Self.checkModifiable(attribute.name, object)
            switch attribute.name {
            case KMIPAttributes.name:
                guard object.names.indices.contains(index) else { throw KMIPFailure(.itemNotFound, "the object has no Name \(index)") }
                let value = try KMIPAttributes.nameValue(attribute.value)
                try checkNames([value], request)
                object.names[index] = value
            default:
                let positions = object.attributes.indices.filter { object.attributes[$0].name == attribute.name }
                guard positions.indices.contains(index) else {
                    throw KMIPFailure(.itemNotFound, "the object has no \(attribute.name.prefix(64)) \(index)")
                }
                if KMIPAttributes.keptAsGiven.contains(attribute.name) { _ = try attribute.value.text() }
                object.attributes[positions[index]].value = TTLVEncoder.encode(attribute.value)
                try KMIPAttributes.checkLimits(object)
            }
            return KMIPAttribute(name: attribute.name, index: Int32(index), value: attribute.value.value)
        }
        return [.text(.uniqueIdentifier, id), modified.item]
    }

    func deleteAttribute(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) async throws -> [TTLVItem]? {
        let id = try objectID(&fields, request)
        let name = try fields.required(.attributeName).text()
        let index = Int(try fields.optional(.attributeIndex)?.integer() ?? 0)
        try fields.finish()
        let deleted = try await change(id, request) { object throws(KMIPFailure) in
            try Self.checkModifiable(name, object)
            switch name {
            case KMIPAttributes.name:
                guard object.names.indices.contains(index) else { throw KMIPFailure(.itemNotFound, "the object has no Name \(index)") }
                let value = object.names.remove(at: index)
                return KMIPAttribute(name: name, index: Int32(index), value: KMIPAttributes.nameItem(value))
            default:
                let positions = object.attributes.indices.filter { object.attributes[$0].name == name }
                guard positions.indices.contains(index) else { throw KMIPFailure(.itemNotFound, "the object has no \(name.prefix(64)) \(index)") }
                let removed = object.attributes.remove(at: positions[index])
                let value = (try? TTLVDecoder.decode(removed.value).value) ?? .textString("")
                return KMIPAttribute(name: name, index: Int32(index), value: value)
            }
        }
        return [.text(.uniqueIdentifier, id), deleted.item]
    }

    private static func checkModifiable(_ name: String, _ object: ManagedObject) throws(KMIPFailure) {
        guard KMIPAttributes.isClientModifiable(name) else {
            throw KMIPFailure(.permissionDenied, "\(name.prefix(64)) cannot be changed by a client")
        }
        guard !object.state.isDestroyed else { throw KMIPFailure(.permissionDenied, "the object is destroyed", recordedAs: .conflict) }
    }

    // MARK: - Lifecycle

    func activate(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) async throws -> [TTLVItem]? {
        let id = try objectID(&fields, request)
        try fields.finish()
        _ = try await change(id, request) { object throws(KMIPFailure) in
            try Self.lifecycle(.permissionDenied) { () throws(ManagedObject.LifecycleRefusal) in try object.activate(at: request.now) }
        }
        return [.text(.uniqueIdentifier, id)]
    }

    func revoke(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) async throws -> [TTLVItem]? {
        let id = try objectID(&fields, request)
        var reasonFields = try KMIPFields(try fields.required(.revocationReason))
        let code = try reasonFields.required(.revocationReasonCode).enumeration()
        let message = try reasonFields.optional(.revocationMessage)?.text()
        if let message { try KMIPAttributes.checkText(message, "Revocation Message") }
        try reasonFields.finish()
        let occurred = try fields.optional(.compromiseOccurrenceDate)?.dateTime()
        try fields.finish()
        _ = try await change(id, request) { object throws(KMIPFailure) in
            try Self.lifecycle(.illegalOperation) { () throws(ManagedObject.LifecycleRefusal) in
                try object.revoke(ManagedObject.Revocation(code: code, message: message.map { String($0.prefix(256)) }),
                                  occurred: occurred, at: request.now)
            }
        }
        return [.text(.uniqueIdentifier, id)]
    }

    func destroy(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) async throws -> [TTLVItem]? {
        let id = try objectID(&fields, request)
        try fields.finish()
        _ = try await change(id, request) { object throws(KMIPFailure) in
            try Self.lifecycle(.permissionDenied) { () throws(ManagedObject.LifecycleRefusal) in try object.destroy(at: request.now) }
        }
        return [.text(.uniqueIdentifier, id)]
    }

    /// Re-key: a new key of the same algorithm and length, with the old key's names (taken from it) and custom
    /// attributes, linked both ways (Replaced Object and Replacement Object). It is Active at once when the old key
    /// was (or from Offset after now, when given), Pre-Active otherwise.
    func reKey(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) async throws -> [TTLVItem]? {
        let id = try objectID(&fields, request)
        let offset = try fields.optional(.offset)?.interval()
        let attributes = try templateAttributes(fields.optional(.templateAttribute))
        try fields.finish()
        let old = try await load(id, request)
        try checkOwner(old, request)
        guard old.type == .symmetricKey else { throw KMIPFailure(.illegalOperation, "only a Symmetric Key is re-keyed") }
        guard old.state == .preActive || old.state == .active || old.state == .deactivated else {
            throw KMIPFailure(.permissionDenied, "the object is \(old.state.name) and cannot be re-keyed", recordedAs: .conflict)
        }
        var replacement = ManagedObject(id: Self.newID(), owner: old.owner, type: .symmetricKey, algorithm: old.algorithm,
                                        length: old.length, usageMask: old.usageMask, names: old.names, created: request.now,
                                        materialLength: old.materialLength)
        replacement.attributes = old.attributes
        let settable = attributes.filter { $0.name != KMIPAttributes.cryptographicAlgorithm && $0.name != KMIPAttributes.cryptographicLength }
        try KMIPAttributes.apply(settable, to: &replacement, now: request.now)
        try checkNames(replacement.names, request)
        if let offset {
            replacement.dates.activation = request.now + Int64(offset)
            if offset == 0 { replacement.state = .active }
        } else if old.state == .active {
            replacement.state = .active
            replacement.dates.activation = request.now
        }
        replacement.links = [ManagedObject.Link(type: 0x107, id: old.id)]
        service.noteDetail("replacement \(replacement.id)")
        try await service.createManagedObject(replacement, generating: replacement.materialLength, wrappingKey: try wrappingKey(request),
                                              ownerQuota: request.configuration.maxObjectsPerOwner)
        // The names move to the replacement; the old key keeps a link to it. Retried if the old key changed meanwhile.
        _ = try await change(id, request) { (object: inout ManagedObject) throws(KMIPFailure) in
            object.names = []
            object.links.append(ManagedObject.Link(type: 0x106, id: replacement.id))
        }
        service.noteObject(id)
        return [.text(.uniqueIdentifier, replacement.id)]
    }

    // MARK: - Locate

    /// Locate: the caller's objects (and those grants share) matching every attribute given, oldest first, from
    /// Offset Items, at most Maximum Items; Located Items (1.3) counts every match.
    func locate(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) async throws -> [TTLVItem]? {
        let maximum = try fields.optional(.maximumItems)?.integer()
        let offset = try fields.optional(.offsetItems)?.integer() ?? 0
        _ = try fields.optional(.storageStatusMask)?.integer()
        _ = try fields.optional(.objectGroupMember)?.enumeration()
        var filters: [KMIPAttribute] = []
        for item in fields.all(.attribute) { filters.append(try KMIPAttribute(item)) }
        try fields.finish()
        guard (maximum ?? 1) >= 0, offset >= 0 else { throw KMIPFailure(.invalidField, "Maximum Items and Offset Items must not be negative") }
        var criteria = try filters.map { (filter) throws(KMIPFailure) in try LocateCriterion(filter) }
        // Destroyed objects keep their description but are not located unless asked for by State: a client that
        // lists its keys at startup (MySQL's keyring) or needs a name to be unique (pg_tde) must not find them.
        if !filters.contains(where: { $0.name == KMIPAttributes.state }) {
            criteria.append(LocateCriterion { !$0.state.isDestroyed })
        }
        // Only the owners whose objects the caller may see are read (an index on owner): its own, and those of the
        // owners its grants name. What the message's Locate items read together is bounded (`kmip.max_locate_scan`).
        // Each owner listed counts against the budget as one object read.
        let overBudget = KMIPFailure(.responseTooLarge, "Locate would read more than \(request.scanBudget.limit) objects in one message "
                                     + "(kmip.max_locate_scan); filter by Name, or page with Maximum Items in separate messages")
        var owners = request.ownNames
        let grants = request.configuration.grants.filter { request.node.identity.matches(any: $0.identities) }
        if !grants.isEmpty {
            let all = try await service.managedObjectOwners()
            guard request.scanBudget.take(all.count) else { throw overBudget }
            for owner in all where !owners.contains(owner)
                && grants.contains(where: { grant in grant.owners.contains { ClientIdentity.matches($0, owner) } }) {
                owners.append(owner)
            }
        }
        var matches: [ManagedObject] = []
        for owner in owners {
            var after: String?
            while true {
                // Never more than the budget has left (and one more, to tell a full budget from an exhausted one).
                let limit = min(500, request.scanBudget.left + 1)
                let page = try await service.managedObjects(owner: owner, after: after, limit: limit)
                guard request.scanBudget.take(page.count) else { throw overBudget }
                for object in page where visible(object, request) && criteria.allSatisfy({ $0.matches(object) }) {
                    matches.append(object)
                }
                guard let last = page.last, page.count == limit else { break }
                after = last.id
            }
        }
        // Oldest first across owners, as identifiers sort.
        matches.sort { $0.id < $1.id }
        // Oldest first (identifiers are time-ordered): a client paging with Offset Items while keys are added sees
        // each key once, since new keys come after the pages it has read.
        let window = matches.dropFirst(Int(offset)).prefix(maximum.map(Int.init) ?? Int.max)
        var payload: [TTLVItem] = []
        if request.version >= KMIPVersion(1, 3) { payload.append(.integer(.locatedItems, Int32(clamping: matches.count))) }
        payload += window.map { .text(.uniqueIdentifier, $0.id) }
        return payload
    }

    // MARK: - Helpers

    /// A new Unique Identifier: a version 7 UUID (the time in milliseconds, then random bits), so identifiers sort in
    /// the order objects were made.
    static func newID() -> String {
        var bytes = (0 ..< 16).map { _ in UInt8.random(in: 0 ... 255) }
        let milliseconds = UInt64(Date().timeIntervalSince1970 * 1000)
        for index in 0 ..< 6 { bytes[index] = UInt8(truncatingIfNeeded: milliseconds >> (40 - 8 * UInt64(index))) }
        bytes[6] = 0x70 | (bytes[6] & 0x0F)
        bytes[8] = 0x80 | (bytes[8] & 0x3F)
        let hex = bytes.map { String(format: "%02x", $0) }.joined()
        let parts = [hex.prefix(8), hex.dropFirst(8).prefix(4), hex.dropFirst(12).prefix(4), hex.dropFirst(16).prefix(4), hex.dropFirst(20)]
        return parts.joined(separator: "-")
    }

    /// Runs a lifecycle change; its refusal is answered with `reason`.
    static func lifecycle(_ reason: KMIPResultReason, _ body: () throws(ManagedObject.LifecycleRefusal) -> Void) throws(KMIPFailure) {
        do {
            try body()
        } catch {
            throw KMIPFailure(reason, error.description, recordedAs: .conflict)
        }
    }

    /// The object an operation names: its Unique Identifier, or the batch's ID Placeholder.
    func objectID(_ fields: inout KMIPFields, _ request: KMIPOperationRequest) throws(KMIPFailure) -> String {
        if let item = fields.optional(.uniqueIdentifier) { return try item.text() }
        guard let placeholder = request.placeholder else {
            throw KMIPFailure(.invalidField, "no Unique Identifier, and no earlier item of the batch left an ID Placeholder")
        }
        return placeholder
    }

    /// The object with `id` if the caller may see it (as of now: the service applies activation and deactivation
    /// dates), else `Item Not Found`, the same answer as for an object that does not exist.
    func load(_ id: String, _ request: KMIPOperationRequest) async throws -> ManagedObject {
        service.noteObject(id)
        guard id.utf8.count <= 128, let object = try await service.managedObject(id), visible(object, request) else {
            throw KMIPFailure(.itemNotFound, "no object \(id.prefix(128))")
        }
        // An object owned under the name kmsd used to take for the owner (the certificate's first name) moves to the
        // stable owner name at its first use (resealed, as the seal binds the owner). Best effort: it stays visible.
        if object.owner != request.identity && object.owner == request.legacyIdentity {
            var moved = object
            moved.owner = request.identity
            if (try? await service.updateManagedObject(moved, from: object, wrappingKey: try wrappingKey(request),
                                                       legacySeals: request.configuration.acceptLegacySeals)) == true,
               let reread = try? await service.managedObject(id) {
                return reread
            }
        }
        return object
    }

    /// Reads the object, applies `body`, and writes it back unless another change came first (then reads it again,
    /// up to three times).
    func change<T>(_ id: String, _ request: KMIPOperationRequest,
                   _ body: (inout ManagedObject) throws(KMIPFailure) -> T) async throws -> T {
        for _ in 0 ..< 3 {
            let previous = try await load(id, request)
            try checkOwner(previous, request)
            var object = previous
            let result = try body(&object)
            object.dates.lastChange = request.now
            if try await service.updateManagedObject(object, from: previous, wrappingKey: try wrappingKey(request),
                                                     legacySeals: request.configuration.acceptLegacySeals) { return result }
        }
        throw KMIPFailure(.generalFailure, "the object kept changing; retry")
    }

    /// Owner, or a grant from the object's owner sharing one of its names with the caller.
    func visible(_ object: ManagedObject, _ request: KMIPOperationRequest) -> Bool {
        if request.ownNames.contains(object.owner) { return true }
        return request.configuration.grants.contains { grant in
            request.node.identity.matches(any: grant.identities) && grant.owners.contains { ClientIdentity.matches($0, object.owner) }
                && object.names.contains { $0.hasPrefix(grant.namePrefix) }
        }
    }

    /// Changes (attributes, the lifecycle, Re-key) are the owner's: a grant shares use, not control.
    func checkOwner(_ object: ManagedObject, _ request: KMIPOperationRequest) throws(KMIPFailure) {
        guard request.ownNames.contains(object.owner) else {
            throw KMIPFailure(.permissionDenied, "only the object's owner changes it; a grant shares its use", recordedAs: .forbidden)
        }
    }

    /// A Name under a granted prefix is given only by an owner that grant covers: another identity could otherwise
    /// place an object among those the grant shares (a keyring loading every key of its group would load it).
    func checkNames(_ names: [String], _ request: KMIPOperationRequest) throws(KMIPFailure) {
        for name in names {
            for grant in request.configuration.grants where name.hasPrefix(grant.namePrefix) {
                guard request.node.identity.matches(any: grant.owners) else {
                    throw KMIPFailure(.permissionDenied, "Names starting with \(grant.namePrefix.prefix(64)) are given by the owners kmip.grants names",
                                      recordedAs: .forbidden)
                }
            }
        }
    }

    func wrappingKey(_ request: KMIPOperationRequest) throws(KMIPFailure) -> KeyName {
        guard let key = request.configuration.wrappingKey else {
            throw KMIPFailure(.generalFailure, "kmsd has no kmip.wrapping_key configured")
        }
        return key
    }
}

/// One attribute a Locate request filters by.
struct LocateCriterion {
    let match: (ManagedObject) -> Bool

    init(_ match: @escaping (ManagedObject) -> Bool) {
        self.match = match
    }

    init(_ filter: KMIPAttribute) throws(KMIPFailure) {
        let value = filter.value
        switch filter.name {
        case KMIPAttributes.name:
            let name = try KMIPAttributes.nameValue(value)
            match = { $0.names.contains(name) }
        case KMIPAttributes.objectType:
            let type = try value.enumeration(of: .objectType)
            match = { $0.type.rawValue == type }
        case KMIPAttributes.state:
            let state = try value.enumeration(of: .state)
            match = { $0.state.rawValue == state }
        case KMIPAttributes.cryptographicAlgorithm:
            let algorithm = try value.enumeration(of: .cryptographicAlgorithm)
            match = { $0.algorithm == algorithm }
        case KMIPAttributes.cryptographicLength:
            let length = try value.integer()
            match = { $0.length == length }
        case KMIPAttributes.cryptographicUsageMask:
            let mask = try value.integer()
            match = { ($0.usageMask ?? 0) & mask == mask }
        case KMIPAttributes.uniqueIdentifier:
            let id = try value.text()
            match = { $0.id == id }
        case let other where KMIPAttributes.isCustom(other) || KMIPAttributes.keptAsGiven.contains(other):
            let encoded = TTLVEncoder.encode(value)
            match = { $0.attributes.contains { $0.name == other && $0.value == encoded } }
        default:
            throw KMIPFailure(.invalidField, "Locate does not filter by \(filter.name.prefix(64))")
        }
    }

    func matches(_ object: ManagedObject) -> Bool { match(object) }
}
