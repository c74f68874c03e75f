import Crypto
import Foundation
public import KMSCore
import KMSRotation
import Logging
import KMSState
import Synchronization

/// Managed objects in the state store, their key material sealed under kmsd's wrapping key. A front end (KMIP) calls
/// these inside an operation's audit scope after it authenticated and authorized the caller; they do no access checks
/// of their own. The material is sealed with the wrapping key's provider like any wrap (its usage limits, deadline and
/// fail-closed behaviour), bound as context to the object's id and to what decides who may use it (its owner, type and
/// names: `sealingContext`), so an envelope copied onto another object does not open, and neither does an object
/// whose owner or names were changed in the database behind kmsd's back.
extension KMSService {
    /// Names the managed object the current operation concerns in its audit record.
    public func noteObject(_ id: String) { AuditNote.object(id) }

    /// Adds free text (no secrets) to the current operation's audit record.
    public func noteDetail(_ detail: String) { AuditNote.detail(detail) }

    /// Makes key material of `count` bytes for `object`, seals it under `wrappingKey` and stores the object. A key of
    /// the length the providers make (`DataKey.length`) comes from the wrapping key's provider (the HSM's generator);
    /// another length from the operating system's generator, as the API's other data key lengths do. Refused when the
    /// owner has `ownerQuota` objects already.
    public func createManagedObject(_ object: ManagedObject, generating count: Int, wrappingKey: KeyName,
                                    ownerQuota: Int? = nil) async throws(ServiceError) {
        try await checkQuota(object.owner, ownerQuota)
        let provider = try wrappingProvider(wrappingKey)
        var object = object
        object.sealing = Self.currentSealing
        let context = Self.sealingContext(object)
        let sealed = try await wrappingCall(wrappingKey) {
            if count == DataKey.length {
                let key = try await provider.generateDataKey(wrappingKey, context: context)
                return WrappedKey(key: key.key, version: key.version, wrapped: key.wrapped)
            }
            return try await provider.wrap(wrappingKey, plaintext: SecretBytes.random(count: count), context: context)
        }
        try await insert(object, sealed: sealed)
    }

    /// Seals `material` under `wrappingKey` and stores `object` with it (refused when its owner has `ownerQuota`
    /// objects). A symmetric key that is no key (all one byte
    /// value, or a short run of bytes repeated: all zeros, a doubled 128-bit key, a test pattern) is refused.
    public func storeManagedObject(_ object: ManagedObject, material: SecretBytes, wrappingKey: KeyName,
                                   ownerQuota: Int? = nil) async throws(ServiceError) {
        if object.type == .symmetricKey, let period = Self.repetitionPeriod(material) {
            throw ServiceError(.badRequest, .invalidInput,
                               "the key material is weak: its \(material.count) bytes repeat a run of \(period) byte(s); register a key from a random generator")
        }
        try await checkQuota(object.owner, ownerQuota)
        let provider = try wrappingProvider(wrappingKey)
        var object = object
        object.sealing = Self.currentSealing
        let context = Self.sealingContext(object)
        let sealed = try await wrappingCall(wrappingKey) { try await provider.wrap(wrappingKey, plaintext: material, context: context) }
        try await insert(object, sealed: sealed)
    }

    private func insert(_ object: ManagedObject, sealed: WrappedKey) async throws(ServiceError) {
        var object = object
        object.adopt(sealed)
        let record = try Self.record(object)
        try await storeCall("store the managed object") { store in try await store.insertManagedObject(record) }
    }

    /// The shortest run of bytes whose repetition makes up `material` when it is at most half of it (one byte
    /// repeated: all zeros; 16 bytes twice: a doubled key), else nil. Examined in place, never copied.
    static func repetitionPeriod(_ material: SecretBytes) -> Int? {
        material.withUnsafeBytes { bytes -> Int? in
            let count = bytes.count
            guard count >= 2 else { return nil }
            for period in 1...(count / 2) where count % period == 0 {
                var repeats = true
                for index in period..<count where bytes[index] != bytes[index - period] {
                    repeats = false
                    break
                }
                if repeats { return period }
            }
            return nil
        }
    }

    /// The seal new objects get (`ManagedObject.sealing`).
    static let currentSealing = 2

    /// The context an object's material is sealed under: its id and, from sealing 2 on, a digest of its owner, type
    /// and names, which decide who may see and use it (the owner; grants by owner and Name prefix). A change to any
    /// of them through kmsd reseals the material (`updateManagedObject`); a change in the database alone leaves a seal
    /// that no longer opens. Objects sealed before (sealing nil) are bound to their id only until resealed.
    static func sealingContext(_ object: ManagedObject) -> EncryptionContext {
        guard object.sealing == currentSealing else { return ["kmsd_managed_object": object.id] }
        var access = SHA256()
        for part in [object.owner, String(object.type.rawValue)] + object.names.sorted() {
            access.update(data: Array(part.utf8) + [0])
        }
        return ["kmsd_managed_object": object.id, "kmsd_access": Hex.encode(access.finalize())]
    }

    /// The object with `id` as of now (its dates applied: `ManagedObject.advanced`), with the revision read; or nil.
    public func managedObject(_ id: String) async throws(ServiceError) -> ManagedObject? {
        guard let record = try await storeCall("read the managed object", { store in try await store.managedObject(id) }) else { return nil }
        return try object(record).advanced(at: Self.now())
    }

    static func now() -> Int64 { Int64(Date().timeIntervalSince1970) }

    /// Writes `object` back if nobody changed it since `previous` was read; false when another change came first.
    /// When the change concerns what the seal binds (owner, type, names), or `previous` has the old seal, the
    /// material is resealed first: opened with the context it was sealed under, sealed with the new one, by the key
    /// that sealed it (`wrappingKey` for objects from before kmsd recorded that key; without one, an object with the
    /// old seal keeps it until the rewrap job reseals it).
    public func updateManagedObject(_ object: ManagedObject, from previous: ManagedObject,
                                    wrappingKey: KeyName? = nil, legacySeals: Bool = true) async throws(ServiceError) -> Bool {
        if previous.envelope != nil { try Self.checkSeal(previous, legacySeals: legacySeals) }
        var object = object
        object.sealing = previous.sealing
        let bindingChanged = Self.sealingContext(object) != Self.sealingContext(previous)
        if let envelope = previous.envelope, object.envelope == envelope, bindingChanged || previous.sealing != Self.currentSealing {
            if let key = previous.sealedBy.flatMap({ try? KeyName($0) }) ?? wrappingKey {
                object.sealing = Self.currentSealing
                let resealed = try await reseal(envelope, key: key, from: Self.sealingContext(previous), to: Self.sealingContext(object))
                object.adopt(resealed)
            } else if bindingChanged {
                throw ServiceError(.unavailable, .unavailable, "the object \(object.id) records no key that sealed it; kmsd cannot reseal it for this change")
            }
        }
        let record = try Self.record(object)
        return try await storeCall("update the managed object") { store in try await store.updateManagedObject(record) }
    }

    /// Opens `envelope` under `old` and seals the material again under `new`, with `key`'s provider.
    private func reseal(_ envelope: [UInt8], key: KeyName, from old: EncryptionContext, to new: EncryptionContext) async throws(ServiceError) -> WrappedKey {
        let provider = try wrappingProvider(key)
        return try await wrappingCall(key) {
            let material = try await provider.unwrap(key, wrapped: envelope, context: old).plaintext
            return try await provider.wrap(key, plaintext: material, context: new)
        }
    }

    /// Up to `limit` objects of `owner` after `after`, by id.
    public func managedObjects(owner: String, after: String?, limit: Int) async throws(ServiceError) -> [ManagedObject] {
        try objects(try await storeCall("list managed objects") { store in try await store.managedObjects(owner: owner, after: after, limit: limit) })
    }

    /// Every owner that has an object.
    public func managedObjectOwners() async throws(ServiceError) -> [String] {
        try await storeCall("list the owners of managed objects") { store in try await store.managedObjectOwners() }
    }

    /// Refuses a new object of `owner` when it has `quota` objects already (destroyed ones count: their description
    /// stays). Checked before the object is made; objects made at the same moment may pass it together.
    private func checkQuota(_ owner: String, _ quota: Int?) async throws(ServiceError) {
        guard let quota else { return }
        let count = try await storeCall("count the owner's managed objects") { store in try await store.countManagedObjects(owner: owner) }
        guard count < quota else {
            events.record("object_quota")
            throw ServiceError(.conflict, .conflict, "\(owner.prefix(128)) has \(count) objects, its quota (kmip.max_objects_per_owner); destroy some first")
        }
    }

    /// Up to `limit` objects after `after`, by id.
    public func managedObjects(after: String?, limit: Int) async throws(ServiceError) -> [ManagedObject] {
        try objects(try await storeCall("list managed objects") { store in try await store.managedObjects(after: after, limit: limit) })
    }

    /// The objects stored records describe, as of now.
    private func objects(_ records: [ManagedObjectRecord]) throws(ServiceError) -> [ManagedObject] {
        let now = Self.now()
        var objects: [ManagedObject] = []
        for record in records { objects.append(try object(record).advanced(at: now)) }
        return objects
    }

    /// The object's key material, opened with the key that sealed it (`wrappingKey` for objects stored before kmsd
    /// recorded it). The backend must be up: kmsd fails closed.
    public func openManagedObject(_ object: ManagedObject, wrappingKey: KeyName, legacySeals: Bool = true) async throws(ServiceError) -> SecretBytes {
        guard let envelope = object.envelope else { throw ServiceError(.conflict, .conflict, "the object has no key material (destroyed)") }
        try Self.checkSeal(object, legacySeals: legacySeals)
        let key = object.sealedBy.flatMap { try? KeyName($0) } ?? wrappingKey
        let provider = try wrappingProvider(key)
        let context = Self.sealingContext(object)
        let material = try await wrappingCall(key) { try await provider.unwrap(key, wrapped: envelope, context: context).plaintext }
        if object.sealing != Self.currentSealing { await resealInPlace(object, material: material, key: key) }
        return material
    }

    /// Refuses an object with the old seal (its id only) once an operator said none may remain (`kmip.legacy_seals:
    /// refuse`): a database writer who sets an object back to the old seal with an envelope from an old copy of the
    /// database would otherwise open it under any owner.
    static func checkSeal(_ object: ManagedObject, legacySeals: Bool) throws(ServiceError) {
        guard object.sealing == currentSealing || legacySeals else {
            throw ServiceError(.internal, .internal,
                               "the managed object \(object.id) has the old seal (its id only), which kmip.legacy_seals: refuse does not open")
        }
    }

    /// Seals an object with the old seal (its id only) again under the current one, now that its material is open.
    /// Best effort: a failure or a change that came first leaves it for its next use or the rewrap job.
    private func resealInPlace(_ object: ManagedObject, material: SecretBytes, key: KeyName) async {
        var resealed = object
        resealed.sealing = Self.currentSealing
        let context = Self.sealingContext(resealed)
        guard let provider = try? wrappingProvider(key),
              let sealed = try? await wrappingCall(key, { try await provider.wrap(key, plaintext: material, context: context) }) else { return }
        resealed.adopt(sealed)
        guard let record = try? Self.record(resealed) else { return }
        _ = try? await storeCall("reseal the managed object") { store in try await store.updateManagedObject(record) }
    }

    /// One pass of rewrapping: what it did, and where the next pass of the same sweep starts.
    public struct RewrapPass: Sendable {
        public var rewrapped = 0
        /// Objects whose envelope did not open or whose rewrap failed for a reason of their own (not an outage); they
        /// are passed over, and the next sweep tries them again.
        public var failed = 0
        /// Objects sealed by another kmsd key (a former `kmip.wrapping_key`): they keep opening with it.
        public var skipped = 0
        /// The last id looked at; nil when the sweep is done.
        public var next: String?
    }

    /// Seals the material of up to `limit` objects (ids after `after`) still under older versions of `wrappingKey`
    /// again under its wrapping version. An object changed meanwhile is left for the next sweep; an outage ends the
    /// pass with the error (nothing is lost: the old version still opens what it sealed).
    public func rewrapManagedObjects(wrappingKey: KeyName, after: String?, limit: Int) async throws(ServiceError) -> RewrapPass {
        let provider = try wrappingProvider(wrappingKey)
        let current = try await currentVersion(wrappingKey, provider)
        let stale = try await storeCall("list managed objects to rewrap") { store in
            try await store.managedObjects(wrappedBelow: current, after: after, limit: limit)
        }
        var pass = RewrapPass(next: stale.count == limit ? stale.last?.id : nil)
        for record in stale {
            guard let envelope = record.material else { continue }
            guard (try? object(record))?.sealedBy.map({ $0 == wrappingKey.rawValue }) ?? true else {
                pass.skipped += 1
                continue
            }
            guard let described = try? object(record) else {
                pass.failed += 1
                continue
            }
            let context = Self.sealingContext(described)
            let rewrapped: WrappedKey
            do {
                rewrapped = try await wrappingCall(wrappingKey) { try await provider.rewrap(wrappingKey, wrapped: envelope, context: context) }
            } catch {
                if error.kind == .unavailable { throw error }
                pass.failed += 1
                logger.warning("a managed object could not be rewrapped", metadata: ["object": "\(record.id)", "error": "\(error)"])
                continue
            }
            var updated = record
            updated.material = rewrapped.wrapped
            updated.wrappingVersion = rewrapped.version.rawValue
            let rewrappedRecord = updated
            if try await storeCall("rewrap a managed object", { store in try await store.updateManagedObject(rewrappedRecord) }) {
                pass.rewrapped += 1
            }
        }
        return pass
    }

    /// Reseals, with the current seal, up to `limit` objects (ids after `after`) that still have the old one (bound
    /// to their id only: objects stored before kmsd bound their owner and names). `rewrapped` counts those resealed;
    /// `next` is where the next page starts, nil at the end. An outage ends the pass with the error.
    public func resealLegacyManagedObjects(wrappingKey: KeyName, after: String?, limit: Int) async throws(ServiceError) -> RewrapPass {
        let records = try await storeCall("list managed objects to reseal") { store in try await store.managedObjects(after: after, limit: limit) }
        var pass = RewrapPass(next: records.count == limit ? records.last?.id : nil)
        for record in records {
            guard let previous = try? object(record) else {
                pass.failed += 1
                continue
            }
            guard previous.sealing != Self.currentSealing, let envelope = previous.envelope else { continue }
            let key = previous.sealedBy.flatMap { try? KeyName($0) } ?? wrappingKey
            // Sealed by a key no longer configured: it cannot be opened here, and is counted, not retried in a loop.
            guard policy.keys[key] != nil else {
                pass.failed += 1
                continue
            }
            var resealed = previous
            resealed.sealing = Self.currentSealing
            let sealed: WrappedKey
            do {
                sealed = try await reseal(envelope, key: key, from: Self.sealingContext(previous), to: Self.sealingContext(resealed))
            } catch {
                if error.kind == .unavailable { throw error }
                pass.failed += 1
                continue
            }
            resealed.adopt(sealed)
            let updated = try Self.record(resealed)
            if try await storeCall("reseal a managed object", { store in try await store.updateManagedObject(updated) }) {
                pass.rewrapped += 1
            } else {
                pass.failed += 1
            }
        }
        return pass
    }

    /// How many objects hold material under a version of `wrappingKey` older than its latest.
    public func managedObjectsToRewrap(wrappingKey: KeyName) async throws(ServiceError) -> Int {
        let current = try await currentVersion(wrappingKey, try wrappingProvider(wrappingKey))
        return try await storeCall("count managed objects to rewrap") { store in try await store.countManagedObjects(wrappedBelow: current) }
    }

    private func currentVersion(_ key: KeyName, _ provider: any KeyProvider) async throws(ServiceError) -> UInt32 {
        try await wrappingCall(key) { try await provider.describeKey(key).wrappingVersion?.version.rawValue ?? 0 }
    }


    /// A call to the wrapping key's provider under the request deadline. The key missing from its backend is kmsd's
    /// configuration problem, not the caller's: it is reported as unavailable, naming the key, never as "not found".
    private func wrappingCall<T: Sendable>(_ key: KeyName, _ body: @escaping @Sendable () async throws -> T) async throws(ServiceError) -> T {
        do {
            return try await perform(body)
        } catch {
            let classified = Self.classified(error)
            guard classified.kind == .notFound else { throw classified }
            throw ServiceError(.unavailable, .unavailable,
                               "the wrapping key \(key) does not exist in its backend; an operator creates it (kmsctl keys create \(key))")
        }
    }

    private func wrappingProvider(_ key: KeyName) throws(ServiceError) -> any KeyProvider {
        guard let entry = policy.keys[key] else {
            throw ServiceError(.unavailable, .unavailable, "the wrapping key \(key) is not configured")
        }
        return entry.provider
    }

    private func storeCall<T: Sendable>(_ what: String, _ body: @escaping @Sendable (any StateStore) async throws -> T) async throws(ServiceError) -> T {
        let store = rotation.store
        do {
            return try await perform { try await body(store) }
        } catch let error as ManagedObjectExists {
            throw ServiceError(.conflict, .alreadyExists, error.description)
        } catch let error as ServiceError {
            throw error
        } catch let error as KMSError {
            throw ServiceError(error)
        } catch {
            events.record("state_unavailable")
            throw ServiceError(.unavailable, .stateUnavailable, "kmsd's state store cannot \(what) now; retry later", detail: "\(error)")
        }
    }

    static func record(_ object: ManagedObject) throws(ServiceError) -> ManagedObjectRecord {
        let metadata: String
        do {
            metadata = String(decoding: try JSONEncoder().encode(object), as: UTF8.self)
        } catch {
            throw ServiceError(.internal, .internal, "cannot encode the managed object")
        }
        return ManagedObjectRecord(id: object.id, owner: object.owner, metadata: metadata, material: object.envelope,
                                   wrappingVersion: object.wrappingVersion, revision: object.revision)
    }

    /// The object a stored record describes. Decoding the JSON was the largest cost of a KMIP Get after the HSM call
    /// (a profile under load: 6 % of kmsd's samples), so the last decoding of each object is kept and reused while
    /// the stored JSON is the same; the record is still read from the store every time (another replica may change it).
    func object(_ record: ManagedObjectRecord) throws(ServiceError) -> ManagedObject {
        var object: ManagedObject
        if let cached = decodedObjects.object(record.id, metadata: record.metadata) {
            object = cached
        } else {
            do {
                object = try JSONDecoder().decode(ManagedObject.self, from: Data(record.metadata.utf8))
            } catch {
                throw ServiceError(.internal, .internal, "the managed object \(record.id) in the state store cannot be read")
            }
            decodedObjects.keep(record.id, metadata: record.metadata, object: object)
        }
        // A seal kmsd does not know (a later kmsd's, or a value written into the database) is never opened as the
        // old one.
        if let sealing = object.sealing, sealing != Self.currentSealing {
            throw ServiceError(.internal, .internal, "the managed object \(record.id) has a seal (\(sealing)) this kmsd does not know")
        }
        object.envelope = record.material
        object.wrappingVersion = record.wrappingVersion
        object.revision = record.revision
        return object
    }
}

/// The last decoding of each managed object's JSON, by id: at most `capacity` entries (emptied when full: objects in
/// use come back at their next read). Holds descriptions only, never key material. Safe to share.
final class DecodedObjects: Sendable {
    private let entries = Mutex<[String: (metadata: String, object: ManagedObject)]>([:])
    let capacity: Int

    init(capacity: Int = 4096) {
        self.capacity = capacity
    }

    func object(_ id: String, metadata: String) -> ManagedObject? {
        entries.withLock { entries in
            guard let entry = entries[id], entry.metadata == metadata else { return nil }
            return entry.object
        }
    }

    func keep(_ id: String, metadata: String, object: ManagedObject) {
        entries.withLock { entries in
            if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
            entries[id] = (metadata, object)
        }
    }
}

extension ManagedObject {
    /// Takes `sealed` as the object's material: its envelope, the wrapping version under it, the key that sealed it.
    mutating func adopt(_ sealed: WrappedKey) {
        envelope = sealed.wrapped
        wrappingVersion = sealed.version.rawValue
        sealedBy = sealed.key.rawValue
    }
}
