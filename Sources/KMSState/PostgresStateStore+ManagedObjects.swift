import Foundation
import PostgresNIO

/// Managed objects in the PostgreSQL store (`kmsd_managed_objects`; the envelope in base64).
extension PostgresStateStore {
    public func insertManagedObject(_ object: ManagedObjectRecord) async throws {
        let material = object.material.map { Data($0).base64EncodedString() }
        let inserted = try await guarded("store a managed object") { [logger] client in
            let rows = try await client.query("""
                INSERT INTO kmsd_managed_objects (id, owner, metadata, material, wrapping_version, revision)
                VALUES (\(object.id), \(object.owner), \(object.metadata), \(material), \(Int64(object.wrappingVersion)), 0)
                ON CONFLICT (id) DO NOTHING RETURNING id
                """, logger: logger)
            var count = 0
            for try await _ in rows.decode(String.self) { count += 1 }
            return count == 1
        }
        guard inserted else { throw ManagedObjectExists(id: object.id) }
    }

    public func managedObject(_ id: String) async throws -> ManagedObjectRecord? {
        try await select("read a managed object", "WHERE id = \(id)").first
    }

    public func updateManagedObject(_ object: ManagedObjectRecord) async throws -> Bool {
        let material = object.material.map { Data($0).base64EncodedString() }
        return try await guarded("update a managed object") { [logger] client in
            let rows = try await client.query("""
                UPDATE kmsd_managed_objects SET owner = \(object.owner), metadata = \(object.metadata), material = \(material),
                    wrapping_version = \(Int64(object.wrappingVersion)), revision = revision + 1
                WHERE id = \(object.id) AND revision = \(object.revision) RETURNING id
                """, logger: logger)
            var count = 0
            for try await _ in rows.decode(String.self) { count += 1 }
            return count == 1
        }
    }

    public func managedObjects(after: String?, limit: Int) async throws -> [ManagedObjectRecord] {
        try await select("list managed objects", "WHERE id > \(after ?? "") ORDER BY id LIMIT \(max(0, limit))")
    }

    public func managedObjects(owner: String, after: String?, limit: Int) async throws -> [ManagedObjectRecord] {
        try await select("list an owner's managed objects", "WHERE owner = \(owner) AND id > \(after ?? "") ORDER BY id LIMIT \(max(0, limit))")
    }

    public func countManagedObjects(owner: String) async throws -> Int {
        try await count("count an owner's managed objects", "WHERE owner = \(owner)")
    }

    public func managedObjectOwners() async throws -> [String] {
        try await guarded("list the owners of managed objects") { [logger] client in
            let rows = try await client.query("SELECT DISTINCT owner FROM kmsd_managed_objects ORDER BY owner", logger: logger)
            var owners: [String] = []
            for try await owner in rows.decode(String.self) { owners.append(owner) }
            return owners
        }
    }

    public func managedObjects(wrappedBelow version: UInt32, after: String?, limit: Int) async throws -> [ManagedObjectRecord] {
        try await select("list managed objects to rewrap", """
            WHERE material IS NOT NULL AND wrapping_version < \(Int64(version)) AND id > \(after ?? "") ORDER BY id LIMIT \(max(0, limit))
            """)
    }

    public func countManagedObjects(wrappedBelow version: UInt32) async throws -> Int {
        try await count("count managed objects to rewrap", "WHERE material IS NOT NULL AND wrapping_version < \(Int64(version))")
    }

    private func count(_ what: String, _ condition: PostgresQuery) async throws -> Int {
        try await guarded(what) { [logger] client in
            var query = PostgresQuery(unsafeSQL: "SELECT count(*) FROM kmsd_managed_objects ")
            query.sql += condition.sql
            query.binds = condition.binds
            let rows = try await client.query(query, logger: logger)
            var count = 0
            for try await value in rows.decode(Int64.self) { count = Int(value) }
            return count
        }
    }

    private func select(_ what: String, _ condition: PostgresQuery) async throws -> [ManagedObjectRecord] {
        try await guarded(what) { [logger] client in
            var query = PostgresQuery(unsafeSQL: "SELECT id, owner, metadata, material, wrapping_version, revision FROM kmsd_managed_objects ")
            query.sql += condition.sql
            query.binds = condition.binds
            let rows = try await client.query(query, logger: logger)
            var result: [ManagedObjectRecord] = []
            for try await (id, owner, metadata, material, version, revision) in rows.decode((String, String, String, String?, Int64, Int64).self) {
                result.append(ManagedObjectRecord(id: id, owner: owner, metadata: metadata, material: try material.map(ManagedObjectRecord.decodeMaterial),
                                                  wrappingVersion: UInt32(clamping: version), revision: revision))
            }
            return result
        }
    }
}
