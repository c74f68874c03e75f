import Foundation

/// A managed object (KMIP) as the state store keeps it: its id and owner, a description in the service's own
/// encoding (JSON: type, state, names, dates, attributes), and its key material only as an envelope under kmsd's
/// wrapping key, with the version that wrapped it. Nothing here recovers a key without the backend.
public struct ManagedObjectRecord: Sendable, Equatable {
    public var id: String
    public var owner: String
    /// The object's description (never key material).
    public var metadata: String
    /// The envelope of the key material (base64 in the database); nil once destroyed.
    public var material: [UInt8]?
    /// The wrapping key's version the envelope is under (0 without material), so a background job finds what to rewrap.
    public var wrappingVersion: UInt32
    /// Bumped by each update; an update names the revision it read and fails if another came first.
    public var revision: Int64

    public init(id: String, owner: String, metadata: String, material: [UInt8]?, wrappingVersion: UInt32, revision: Int64 = 0) {
        self.id = id
        self.owner = owner
        self.metadata = metadata
        self.material = material
        self.wrappingVersion = wrappingVersion
        self.revision = revision
    }
}

/// What a store says when an object with the id exists already.
public struct ManagedObjectExists: Error, CustomStringConvertible, Sendable {
    public let id: String
    public var description: String { "a managed object with id \(id) exists already" }
}
