import Foundation
import KMSCore
import KMSRotation
import KMSService
import KMSState
import KMSTestSupport
import Testing

/// What the seal of a managed object's material binds, and what the service refuses to store: tested with the
/// in-memory provider as the wrapping key's backend and the store written behind the service's back, as someone who
/// can write kmsd's database but not use its HSM would.
@Suite("Managed object custody")
struct ManagedObjectCustodyTests {
    static let owner = "uri:spiffe://test/storage/node-1"
    static let wrapping = TestIdentities.orders

    static func make() async throws -> (KMSService, InMemoryService) {
        let base = try await InMemoryService.make()
        return (KMSService(policy: base.policy, rotation: base.rotation, audit: base.audit), base)
    }

    static func key(_ id: String, names: [String] = ["db-key"]) -> ManagedObject {
        ManagedObject(id: id, owner: owner, type: .symmetricKey, algorithm: 3, length: 256, names: names, created: 100, materialLength: 32)
    }

    static func randomMaterial() -> SecretBytes { SecretBytes.random(count: 32) }

    /// Rewrites the stored description as a database writer would (owner column and JSON alike).
    static func tamper(_ base: InMemoryService, _ id: String, _ change: (inout ManagedObject) -> Void) async throws {
        var record = try #require(try await base.rotation.store.managedObject(id))
        var object = try JSONDecoder().decode(ManagedObject.self, from: Data(record.metadata.utf8))
        change(&object)
        record.owner = object.owner
        record.metadata = String(decoding: try JSONEncoder().encode(object), as: UTF8.self)
        #expect(try await base.rotation.store.updateManagedObject(record))
    }

    @Test func anOwnerOrNamesChangedInTheDatabaseNoLongerOpen() async throws {
        let (service, base) = try await Self.make()
        let material = Self.randomMaterial()
        try await service.storeManagedObject(Self.key("k-1"), material: material, wrappingKey: Self.wrapping)
        let stored = try #require(try await service.managedObject("k-1"))
        #expect(stored.sealing == 2)
        #expect(try await service.openManagedObject(stored, wrappingKey: Self.wrapping).unsafeCopiedBytes() == material.unsafeCopiedBytes())

        try await Self.tamper(base, "k-1") { $0.owner = "uri:spiffe://test/storage/intruder" }
        let stolen = try #require(try await service.managedObject("k-1"))
        await #expect(throws: ServiceError.self, "an object whose owner was changed in the database opened") {
            _ = try await service.openManagedObject(stolen, wrappingKey: Self.wrapping)
        }
        try await Self.tamper(base, "k-1") { $0.owner = Self.owner; $0.names = ["shared-db-key"] }
        let renamed = try #require(try await service.managedObject("k-1"))
        await #expect(throws: ServiceError.self, "an object renamed in the database (into a grant's prefix) opened") {
            _ = try await service.openManagedObject(renamed, wrappingKey: Self.wrapping)
        }
    }

    /// A change through kmsd of what the seal binds (a Name) reseals the material, so the object keeps opening.
    @Test func aRenameThroughKMSDResealsTheMaterial() async throws {
        let (service, _) = try await Self.make()
        let material = Self.randomMaterial()
        try await service.storeManagedObject(Self.key("k-2"), material: material, wrappingKey: Self.wrapping)
        let previous = try #require(try await service.managedObject("k-2"))
        var renamed = previous
        renamed.names = ["db-key", "db-key-alias"]
        #expect(try await service.updateManagedObject(renamed, from: previous, wrappingKey: Self.wrapping))
        let after = try #require(try await service.managedObject("k-2"))
        #expect(after.names == ["db-key", "db-key-alias"] && after.envelope != previous.envelope)
        #expect(try await service.openManagedObject(after, wrappingKey: Self.wrapping).unsafeCopiedBytes() == material.unsafeCopiedBytes())
    }

    /// An object stored before kmsd bound owner and names (its seal binds the id only) still opens, and is resealed:
    /// at its first use, and by the rewrap job's pass; after that a changed owner no longer opens it.
    @Test func objectsWithTheOldSealOpenAndAreResealed() async throws {
        let (service, base) = try await Self.make()
        let material = Self.randomMaterial()
        for id in ["old-1", "old-2"] {
            let sealed = try await base.provider.wrap(Self.wrapping, plaintext: material, context: ["kmsd_managed_object": id])
            let object = Self.key(id)
            try await base.rotation.store.insertManagedObject(ManagedObjectRecord(
                id: id, owner: Self.owner, metadata: String(decoding: try JSONEncoder().encode(object), as: UTF8.self),
                material: sealed.wrapped, wrappingVersion: sealed.version.rawValue))
        }
        let old = try #require(try await service.managedObject("old-1"))
        #expect(old.sealing == nil)
        #expect(try await service.openManagedObject(old, wrappingKey: Self.wrapping).unsafeCopiedBytes() == material.unsafeCopiedBytes())
        #expect(try await service.managedObject("old-1")?.sealing == 2, "the first use did not reseal it")

        let pass = try await service.resealLegacyManagedObjects(wrappingKey: Self.wrapping, after: nil, limit: 100)
        #expect(pass.rewrapped == 1 && pass.failed == 0 && pass.next == nil)
        #expect(try await service.managedObject("old-2")?.sealing == 2)
        #expect(try await service.resealLegacyManagedObjects(wrappingKey: Self.wrapping, after: nil, limit: 100).rewrapped == 0)

        try await Self.tamper(base, "old-2") { $0.owner = "uri:spiffe://test/storage/intruder" }
        let stolen = try #require(try await service.managedObject("old-2"))
        await #expect(throws: ServiceError.self) { _ = try await service.openManagedObject(stolen, wrappingKey: Self.wrapping) }
    }

    /// Once an operator says no object with the old seal may remain (`kmip.legacy_seals: refuse`), one is not opened
    /// (a database writer could set an object back to it with an envelope from an old copy); a seal kmsd does not
    /// know is never read as the old one.
    @Test func theOldSealIsRefusedWhenAskedAndAnUnknownSealAlways() async throws {
        let (service, base) = try await Self.make()
        let material = Self.randomMaterial()
        let sealed = try await base.provider.wrap(Self.wrapping, plaintext: material, context: ["kmsd_managed_object": "old"])
        try await base.rotation.store.insertManagedObject(ManagedObjectRecord(
            id: "old", owner: Self.owner, metadata: String(decoding: try JSONEncoder().encode(Self.key("old")), as: UTF8.self),
            material: sealed.wrapped, wrappingVersion: sealed.version.rawValue))
        let old = try #require(try await service.managedObject("old"))
        await #expect(throws: ServiceError.self) { _ = try await service.openManagedObject(old, wrappingKey: Self.wrapping, legacySeals: false) }
        var renamed = old
        renamed.names = ["other"]
        await #expect(throws: ServiceError.self) {
            _ = try await service.updateManagedObject(renamed, from: old, wrappingKey: Self.wrapping, legacySeals: false)
        }
        #expect(try await service.managedObject("old")?.sealing == nil, "a refused object was resealed")

        try await service.storeManagedObject(Self.key("new"), material: material, wrappingKey: Self.wrapping)
        var record = try #require(try await base.rotation.store.managedObject("new"))
        record.metadata = record.metadata.replacingOccurrences(of: "\"sealing\":2", with: "\"sealing\":3")
        #expect(record.metadata.contains("\"sealing\":3"))
        #expect(try await base.rotation.store.updateManagedObject(record))
        await #expect(throws: ServiceError.self) { _ = try await service.managedObject("new") }
    }

    /// Key material that is no key: all one byte value, or a short run repeated (a doubled 128-bit key).
    @Test func weakSymmetricKeysAreRefusedWithAClearError() async throws {
        let (service, _) = try await Self.make()
        let half = (0..<16).map { _ in UInt8.random(in: 0...255) }
        let weak: [(String, [UInt8])] = [
            ("all zero", [UInt8](repeating: 0, count: 32)), ("one byte repeated", [UInt8](repeating: 0xA5, count: 16)),
            ("two bytes repeated", Array([[UInt8]](repeating: [0x01, 0x02], count: 16).joined())), ("a doubled 128-bit key", half + half),
        ]
        for (label, bytes) in weak {
            let material = SecretBytes(count: bytes.count) { buffer in buffer.copyBytes(from: bytes) }
            do {
                try await service.storeManagedObject(Self.key("weak-\(label.count)"), material: material, wrappingKey: Self.wrapping)
                Issue.record("\(label): stored")
            } catch {
                #expect(error.kind == .badRequest && error.message.contains("weak"), "\(label): \(error.message)")
            }
        }
        try await service.storeManagedObject(Self.key("strong"), material: Self.randomMaterial(), wrappingKey: Self.wrapping)
        // Secret Data (a password, a passphrase) is not a key: it is stored as given.
        var secret = Self.key("secret")
        secret.type = .secretData
        try await service.storeManagedObject(secret, material: SecretBytes(count: 8) { $0.copyBytes(from: [UInt8](repeating: 0x61, count: 8)) },
                                             wrappingKey: Self.wrapping)
    }

    @Test func anOwnerBeyondItsQuotaIsRefused() async throws {
        let (service, _) = try await Self.make()
        try await service.storeManagedObject(Self.key("q-1"), material: Self.randomMaterial(), wrappingKey: Self.wrapping, ownerQuota: 2)
        try await service.createManagedObject(Self.key("q-2"), generating: 32, wrappingKey: Self.wrapping, ownerQuota: 2)
        await #expect(throws: ServiceError.self) {
            try await service.createManagedObject(Self.key("q-3"), generating: 32, wrappingKey: Self.wrapping, ownerQuota: 2)
        }
        #expect(service.events.snapshot["object_quota"] == 1)
        #expect(try await service.managedObject("q-3") == nil)
    }

    /// The owner is the same name however a renewed certificate orders its names.
    @Test func theOwnerIsTheLeastNameOfTheFirstKindPresent() {
        let one = ClientIdentity(names: ["uri:spiffe://b/db", "uri:spiffe://a/db", "dns:db.example", "cn:db"])
        let renewed = ClientIdentity(names: ["uri:spiffe://a/db", "cn:db", "uri:spiffe://b/db", "dns:db.example"])
        #expect(one.owner == "uri:spiffe://a/db" && renewed.owner == one.owner)
        #expect(ClientIdentity(names: ["cn:db", "dns:z.example", "dns:a.example"]).owner == "dns:a.example")
        #expect(ClientIdentity(names: ["cn:db"]).owner == "cn:db")
    }
}
