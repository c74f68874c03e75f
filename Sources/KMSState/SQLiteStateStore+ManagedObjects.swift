import Foundation
import GRDB

/// Managed objects in the SQLite store (`managed_objects`; the envelope in base64).
extension SQLiteStateStore {
    public func insertManagedObject(_ object: ManagedObjectRecord) async throws {
        let inserted = try await guarded("store a managed object") { [queue] in
            try await queue.write { db in
                try db.execute(sql: """
                    INSERT INTO managed_objects (id, owner, metadata, material, wrapping_version, revision) VALUES (?, ?, ?, ?, ?, 0)
                    ON CONFLICT (id) DO NOTHING
                    """, arguments: [object.id, object.owner, object.metadata, object.material.map { Data($0).base64EncodedString() },
                                     Int64(object.wrappingVersion)])
                return db.changesCount == 1
            }
        }
        guard inserted else { throw ManagedObjectExists(id: object.id) }
    }

    public func managedObject(_ id: String) async throws -> ManagedObjectRecord? {
        try await guarded("read a managed object") { [queue] in
            try await queue.read { db in
                try Row.fetchOne(db, sql: "SELECT * FROM managed_objects WHERE id = ?", arguments: [id]).map(Self.managedObject)
            }
        }
    }

    public func updateManagedObject(_ object: ManagedObjectRecord) async throws -> Bool {
        try await guarded("update a managed object") { [queue] in
            try await queue.write { db in
                try db.execute(sql: """
                    UPDATE managed_objects SET owner = ?, metadata = ?, material = ?, wrapping_version = ?, revision = revision + 1
                    WHERE id = ? AND revision = ?
                    """, arguments: [object.owner, object.metadata, object.material.map { Data($0).base64EncodedString() },
                                     Int64(object.wrappingVersion), object.id, object.revision])
                return db.changesCount == 1
            }
        }
    }

    public func managedObjects(after: String?, limit: Int) async throws -> [ManagedObjectRecord] {
        try await guarded("list managed objects") { [queue] in
            try await queue.read { db in
                try Row.fetchAll(db, sql: "SELECT * FROM managed_objects WHERE id > ? ORDER BY id LIMIT ?",
                                 arguments: [after ?? "", max(0, limit)]).map(Self.managedObject)
            }
        }
    }

    public func managedObjects(owner: String, after: String?, limit: Int) async throws -> [ManagedObjectRecord] {
        try await guarded("list an owner's managed objects") { [queue] in
            try await queue.read { db in
                try Row.fetchAll(db, sql: "SELECT * FROM managed_objects WHERE owner = ? AND id > ? ORDER BY id LIMIT ?",
                                 arguments: [owner, after ?? "", max(0, limit)]).map(Self.managedObject)
            }
        }
    }

    public func countManagedObjects(owner: String) async throws -> Int {
        try await guarded("count an owner's managed objects") { [queue] in
            try await queue.read { db in
                try Int.fetchOne(db, sql: "SELECT count(*) FROM managed_objects WHERE owner = ?", arguments: [owner]) ?? 0
            }
        }
    }

    public func managedObjectOwners() async throws -> [String] {
        try await guarded("list the owners of managed objects") { [queue] in
            try await queue.read { db in try String.fetchAll(db, sql: "SELECT DISTINCT owner FROM managed_objects ORDER BY owner") }
        }
    }

    public func managedObjects(wrappedBelow version: UInt32, after: String?, limit: Int) async throws -> [ManagedObjectRecord] {
        try await guarded("list managed objects to rewrap") { [queue] in
            try await queue.read { db in
                try Row.fetchAll(db, sql: """
                    SELECT * FROM managed_objects WHERE material IS NOT NULL AND wrapping_version < ? AND id > ? ORDER BY id LIMIT ?
                    """, arguments: [Int64(version), after ?? "", max(0, limit)]).map(Self.managedObject)
            }
        }
    }

    public func countManagedObjects(wrappedBelow version: UInt32) async throws -> Int {
        try await guarded("count managed objects to rewrap") { [queue] in
            try await queue.read { db in
                try Int.fetchOne(db, sql: "SELECT count(*) FROM managed_objects WHERE material IS NOT NULL AND wrapping_version < ?",
                                 arguments: [Int64(version)]) ?? 0
            }
        }
    }

    private static func managedObject(_ row: Row) throws -> ManagedObjectRecord {
        let material: String? = row["material"]
        let version: Int64 = row["wrapping_version"]
        return ManagedObjectRecord(
            id: row["id"], owner: row["owner"], metadata: row["metadata"],
            material: try material.map(ManagedObjectRecord.decodeMaterial), wrappingVersion: UInt32(clamping: version),
            revision: row["revision"])
    }
}

extension ManagedObjectRecord {
    /// The envelope from its base64 column; a value that is not base64 is a corrupt store, not an empty key.
    static func decodeMaterial(_ text: String) throws -> [UInt8] {
        guard let data = Data(base64Encoded: text) else { throw StateStoreError("a managed object's material is not base64") }
        return [UInt8](data)
    }
}
