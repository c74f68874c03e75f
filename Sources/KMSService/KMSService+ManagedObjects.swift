import Foundation
public import KMSCore
import KMSRotation
import Logging
import KMSState
import Synchronization

/// Managed objects in the state store, their key material sealed under kmsd's wrapping key. A front end (KMIP) calls
/// these inside an operation's audit scope after it authenticated and authorized the caller; they do no access checks
/// of their own. The material is sealed with the wrapping key's provider like any wrap (its usage limits, deadline and
/// fail-closed behaviour), bound to the object's id as context, so an envelope copied onto another object does not open.
extension KMSService {
    /// Names the managed object the current operation concerns in its audit record.
    public func noteObject(_ id: String) { AuditNote.object(id) }

    /// Adds free text (no secrets) to the current operation's audit record.
    public func noteDetail(_ detail: String) { AuditNote.detail(detail) }

    /// Makes key material of `count` bytes for `object`, seals it under `wrappingKey` and stores the object. A key of
    /// the length the providers make (`DataKey.length`) comes from the wrapping key's provider (the HSM's generator);
    /// another length from the operating system's generator, as the API's other data key lengths do.
    public func createManagedObject(_ object: ManagedObject, generating count: Int, wrappingKey: KeyName) async throws(ServiceError) {
        let provider = try wrappingProvider(wrappingKey)
        let context = Self.sealingContext(object.id)
        let sealed = try await wrappingCall(wrappingKey) {
            if count == DataKey.length {
                let key = try await provider.generateDataKey(wrappingKey, context: context)
                return WrappedKey(key: key.key, version: key.version, wrapped: key.wrapped)
            }
            return try await provider.wrap(wrappingKey, plaintext: SecretBytes.random(count: count), context: context)
        }
        try await insert(object, sealed: sealed)
    }

    /// Seals `material` under `wrappingKey` and stores `object` with it.
    public func storeManagedObject(_ object: ManagedObject, material: SecretBytes, wrappingKey: KeyName) async throws(ServiceError) {
        let provider = try wrappingProvider(wrappingKey)
        let context = Self.sealingContext(object.id)
        let sealed = try await wrappingCall(wrappingKey) { try await provider.wrap(wrappingKey, plaintext: material, context: context) }
        try await insert(object, sealed: sealed)
    }

    private func insert(_ object: ManagedObject, sealed: WrappedKey) async throws(ServiceError) {
        var object = object
        object.envelope = sealed.wrapped
        object.wrappingVersion = sealed.version.rawValue
        object.sealedBy = sealed.key.rawValue
        let record = try Self.record(object)
        try await storeCall("store the managed object") { store in try await store.insertManagedObject(record) }
    }

    /// The context an object's material is sealed under.
    static func sealingContext(_ id: String) -> EncryptionContext { ["kmsd_managed_object": id] }

    /// The object with `id` as of now (its dates applied: `ManagedObject.advanced`), with the revision read; or nil.
    public func managedObject(_ id: String) async throws(ServiceError) -> ManagedObject? {
        guard let record = try await storeCall("read the managed object", { store in try await store.managedObject(id) }) else { return nil }
        return try object(record).advanced(at: Self.now())
    }

    static func now() -> Int64 { Int64(Date().timeIntervalSince1970) }

    /// Writes `object` back if nobody changed it since it was read; false when another change came first.
    public func updateManagedObject(_ object: ManagedObject) async throws(ServiceError) -> Bool {
        let record = try Self.record(object)
        return try await storeCall("update the managed object") { store in try await store.updateManagedObject(record) }
    }

    /// Up to `limit` objects after `after`, by id.
    public func managedObjects(after: String?, limit: Int) async throws(ServiceError) -> [ManagedObject] {
        let records = try await storeCall("list managed objects") { store in try await store.managedObjects(after: after, limit: limit) }
        var objects: [ManagedObject] = []
        let now = Self.now()
        for record in records { objects.append(try object(record).advanced(at: now)) }
        return objects
    }

    /// The object's key material, opened with the key that sealed it (`wrappingKey` for objects stored before kmsd
    /// recorded it). The backend must be up: kmsd fails closed.
    public func openManagedObject(_ object: ManagedObject, wrappingKey: KeyName) async throws(ServiceError) -> SecretBytes {
        guard let envelope = object.envelope else { throw ServiceError(.conflict, .conflict, "the object has no key material (destroyed)") }
        let key = object.sealedBy.flatMap { try? KeyName($0) } ?? wrappingKey
        let provider = try wrappingProvider(key)
        let context = Self.sealingContext(object.id)
        return try await wrappingCall(key) { try await provider.unwrap(key, wrapped: envelope, context: context).plaintext }
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
            let context = Self.sealingContext(record.id)
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

    /// How many objects hold material under a version of `wrappingKey` older than its latest.
    public func managedObjectsToRewrap(wrappingKey: KeyName) async throws(ServiceError) -> Int {
        let current = try await currentVersion(wrappingKey, try wrappingProvider(wrappingKey))
        return try await storeCall("count managed objects to rewrap") { store in try await store.countManagedObjects(wrappedBelow: current) }
    }

    private func currentVersion(_ key: KeyName, _ provider: any KeyProvider) async throws(ServiceError) -> UInt32 {
        try await wrappingCall(key) { try await provider.describeKey(key).wrappingVersion?.version.rawValue ?? 0 }
    }

    private func seal(_ material: SecretBytes, id: String, wrappingKey: KeyName) async throws(ServiceError) -> WrappedKey {
        let provider = try wrappingProvider(wrappingKey)
        let context = Self.sealingContext(id)
        return try await wrappingCall(wrappingKey) { try await provider.wrap(wrappingKey, plaintext: material, context: context) }
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
