import Foundation

/// A managed object (KMIP's word): a symmetric key or secret data that kmsd keeps for a storage system, with its
/// owner, lifecycle state and dates, names and attributes. Its key material is not here: the store holds it only as an
/// envelope under kmsd's wrapping key (`KMSService.storeManagedObject`), and it is opened for one operation at a time.
///
/// Values of the KMIP enumerations (object type, state, algorithm, revocation reason) are kept as KMIP numbers, since
/// KMIP is what these objects are for; the service enforces the lifecycle (the extension below), so kmsctl and every
/// front end get the same rules.
public struct ManagedObject: Sendable, Equatable, Codable {
    public enum ObjectType: UInt32, Sendable, Codable, CaseIterable {
        case symmetricKey = 2
        case secretData = 7
    }

    /// KMIP's states (State enumeration values).
    public enum State: UInt32, Sendable, Codable {
        case preActive = 1
        case active = 2
        case deactivated = 3
        case compromised = 4
        case destroyed = 5
        case destroyedCompromised = 6

        public var isDestroyed: Bool { self == .destroyed || self == .destroyedCompromised }
    }

    /// Times in seconds since 1970, as KMIP's Date-Time.
    public struct Dates: Sendable, Equatable, Codable {
        public var initial: Int64
        public var activation: Int64?
        public var deactivation: Int64?
        public var compromise: Int64?
        public var compromiseOccurrence: Int64?
        public var destroy: Int64?
        public var lastChange: Int64

        public init(initial: Int64) {
            self.initial = initial
            self.lastChange = initial
        }
    }

    public struct Revocation: Sendable, Equatable, Codable {
        /// The Revocation Reason Code value (1 Unspecified, 2 Key Compromise, …).
        public var code: UInt32
        public var message: String?

        public init(code: UInt32, message: String?) {
            self.code = code
            self.message = message
        }
    }

    public struct Link: Sendable, Equatable, Codable {
        /// The Link Type value (0x106 Replacement Object, 0x107 Replaced Object, …).
        public var type: UInt32
        public var id: String

        public init(type: UInt32, id: String) {
            self.type = type
            self.id = id
        }
    }

    /// An attribute the service stores as the front end gives it: a custom (`x-…`) attribute or a standard one the
    /// service does not interpret. `value` is the front end's encoding of the value (KMIP: its TTLV item).
    public struct Attribute: Sendable, Equatable, Codable {
        public var name: String
        public var value: [UInt8]

        public init(name: String, value: [UInt8]) {
            self.name = name
            self.value = value
        }
    }

    public var id: String
    /// The identity that created or registered it.
    public var owner: String
    public var type: ObjectType
    public var state: State
    /// Cryptographic Algorithm value (3: AES) and length in bits, for keys.
    public var algorithm: UInt32?
    public var length: Int32?
    /// Cryptographic Usage Mask bits.
    public var usageMask: Int32?
    /// Secret Data Type value (1 Password, 2 Seed) for secret data.
    public var secretDataType: UInt32?
    /// Key Format Type value the material was given or made in (1 Raw, 2 Opaque, 7 Transparent Symmetric Key).
    public var keyFormat: UInt32
    public var names: [String]
    public var dates: Dates
    public var revocation: Revocation?
    public var links: [Link]
    public var attributes: [Attribute]
    /// The material's length in bytes (kept so Get Attributes needs no unwrap).
    public var materialLength: Int

    /// The kmsd key that sealed the material (an object keeps opening with it if `kmip.wrapping_key` changes).
    public internal(set) var sealedBy: String?
    /// What the material's seal binds: 2, the object's id, owner, type and names (what decides who may use it);
    /// nil for objects sealed before kmsd bound more than the id, resealed at their next use or by the rewrap job.
    public internal(set) var sealing: Int?

    /// The stored envelope and the wrapping key version under it, and the revision read (not part of the description).
    public internal(set) var envelope: [UInt8]?
    public internal(set) var wrappingVersion: UInt32 = 0
    public internal(set) var revision: Int64 = 0

    enum CodingKeys: String, CodingKey {
        case id, owner, type, state, algorithm, length, usageMask = "usage_mask", secretDataType = "secret_data_type",
             keyFormat = "key_format", names, dates, revocation, links, attributes, materialLength = "material_length",
             sealedBy = "sealed_by", sealing
    }

    public init(id: String, owner: String, type: ObjectType, state: State = .preActive, algorithm: UInt32? = nil, length: Int32? = nil,
                usageMask: Int32? = nil, secretDataType: UInt32? = nil, keyFormat: UInt32 = 1, names: [String] = [], created: Int64,
                materialLength: Int) {
        self.id = id
        self.owner = owner
        self.type = type
        self.state = state
        self.algorithm = algorithm
        self.length = length
        self.usageMask = usageMask
        self.secretDataType = secretDataType
        self.keyFormat = keyFormat
        self.names = names
        self.dates = Dates(initial: created)
        self.revocation = nil
        self.links = []
        self.attributes = []
        self.materialLength = materialLength
    }
}

/// The lifecycle, KMIP's state machine: Pre-Active → Active (Activate) → Deactivated (Revoke for a reason other than
/// compromise); Revoke for Key or CA Compromise makes any live object Compromised (and a destroyed one Destroyed
/// Compromised); Destroy takes a Pre-Active, Deactivated or Compromised object to Destroyed (Destroyed Compromised),
/// never an Active one. Compromised is terminal but for Destroy. Each refusal says why (`LifecycleRefusal`); a front end
/// maps it to its own reason.
extension ManagedObject {
    public struct LifecycleRefusal: Error, Sendable, CustomStringConvertible {
        public let description: String
        /// The refusal concerns the state the object is in (rather than the request).
        public let wrongState: Bool
    }

    public mutating func activate(at now: Int64) throws(LifecycleRefusal) {
        guard state == .preActive else { throw LifecycleRefusal(description: "the object is \(state.name), not Pre-Active", wrongState: true) }
        state = .active
        dates.activation = now
        dates.lastChange = now
    }

    /// Revokes: Key Compromise (code 2) or CA Compromise (3) makes it Compromised (Destroyed Compromised if destroyed),
    /// with `occurred` as the Compromise Occurrence Date; any other reason deactivates an Active object.
    public mutating func revoke(_ reason: Revocation, occurred: Int64?, at now: Int64) throws(LifecycleRefusal) {
        if reason.code == 2 || reason.code == 3 {
            switch state {
            case .compromised, .destroyedCompromised:
                throw LifecycleRefusal(description: "the object is \(state.name) already", wrongState: true)
            case .destroyed: state = .destroyedCompromised
            case .preActive, .active, .deactivated: state = .compromised
            }
            dates.compromise = now
            dates.compromiseOccurrence = occurred ?? now
        } else {
            guard state == .active else {
                throw LifecycleRefusal(description: "the object is \(state.name); only an Active one is revoked for a reason other than compromise",
                                       wrongState: true)
            }
            state = .deactivated
            dates.deactivation = now
        }
        revocation = reason
        dates.lastChange = now
    }

    /// Destroys: the material goes (the envelope is dropped); the description stays, in state Destroyed.
    public mutating func destroy(at now: Int64) throws(LifecycleRefusal) {
        switch state {
        case .active: throw LifecycleRefusal(description: "the object is Active: revoke it first", wrongState: true)
        case .destroyed, .destroyedCompromised: throw LifecycleRefusal(description: "the object is destroyed already", wrongState: true)
        case .compromised: state = .destroyedCompromised
        case .preActive, .deactivated: state = .destroyed
        }
        dates.destroy = now
        dates.lastChange = now
        envelope = nil
        wrappingVersion = 0
    }

    /// The object as of `now`: a Pre-Active object whose Activation Date passed is Active, an Active one whose
    /// Deactivation Date passed is Deactivated. The service applies it to every object it reads, so the dates a
    /// client set take effect for every front end and kmsctl without a background job.
    public func advanced(at now: Int64) -> ManagedObject {
        var object = self
        if object.state == .preActive, let activation = object.dates.activation, activation <= now { object.state = .active }
        if object.state == .active, let deactivation = object.dates.deactivation, deactivation <= now { object.state = .deactivated }
        return object
    }

    /// Whether the material may protect data (Encrypt): Active only.
    public var canProtect: Bool { state == .active }

    /// Whether the material may process data already protected (Decrypt) or be exported (Get): not destroyed. A
    /// Compromised key still opens what it protected, at the owner's risk, as KMIP allows.
    public var hasMaterial: Bool { !state.isDestroyed && envelope != nil }
}

extension ManagedObject.State {
    /// The specification's name ("Pre-Active").
    public var name: String {
        switch self {
        case .preActive: "Pre-Active"
        case .active: "Active"
        case .deactivated: "Deactivated"
        case .compromised: "Compromised"
        case .destroyed: "Destroyed"
        case .destroyedCompromised: "Destroyed Compromised"
        }
    }
}
