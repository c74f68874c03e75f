import Foundation
import KMSState
import Testing

/// Managed objects in both stores: insert once, read back, update only from the revision read, page by id, find
/// what a rotated wrapping key must rewrap.
@Suite("Managed objects in the state store")
struct ManagedObjectStoreTests {
    static func record(_ id: String, version: UInt32 = 1, material: [UInt8]? = [1, 2, 3, 0xFF]) -> ManagedObjectRecord {
        ManagedObjectRecord(id: id, owner: "uri:spiffe://test/db/1", metadata: #"{"state":1}"#, material: material, wrappingVersion: version)
    }

    @Test(arguments: StoreKind.allCases)
    func anObjectIsStoredOnceAndUpdatedOnlyFromTheRevisionRead(_ kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            try await store.insertManagedObject(Self.record("a"))
            await #expect(throws: ManagedObjectExists.self) { try await store.insertManagedObject(Self.record("a", material: nil)) }
            let stored = try #require(try await store.managedObject("a"))
            #expect(stored == Self.record("a"))
            #expect(try await store.managedObject("b") == nil)

            var changed = stored
            changed.metadata = #"{"state":2}"#
            changed.material = nil
            changed.wrappingVersion = 0
            #expect(try await store.updateManagedObject(changed))
            // A second writer that read the same revision loses; nothing it wrote is kept.
            var stale = stored
            stale.metadata = #"{"state":9}"#
            #expect(try await store.updateManagedObject(stale) == false)
            let now = try #require(try await store.managedObject("a"))
            #expect(now.metadata == #"{"state":2}"# && now.material == nil && now.revision == 1)
        }
    }

    @Test(arguments: StoreKind.allCases)
    func objectsPageByIdAndThoseUnderAnOldWrappingVersionAreFound(_ kind: StoreKind) async throws {
        try await withStore(kind) { store, _ in
            for (index, id) in ["c", "a", "e", "b", "d"].enumerated() {
                try await store.insertManagedObject(Self.record(id, version: UInt32(index % 2 + 1), material: id == "e" ? nil : [UInt8(index)]))
            }
            #expect(try await store.managedObjects(after: nil, limit: 2).map(\.id) == ["a", "b"])
            #expect(try await store.managedObjects(after: "b", limit: 10).map(\.id) == ["c", "d", "e"])
            // Versions: c 1, a 2, e 1 (no material), b 2, d 1.
            #expect(try await store.managedObjects(wrappedBelow: 2, after: nil, limit: 10).map(\.id) == ["c", "d"])
            #expect(try await store.managedObjects(wrappedBelow: 2, after: "c", limit: 10).map(\.id) == ["d"])
            #expect(try await store.countManagedObjects(wrappedBelow: 2) == 2)
            #expect(try await store.countManagedObjects(wrappedBelow: 3) == 4)
        }
    }
}
