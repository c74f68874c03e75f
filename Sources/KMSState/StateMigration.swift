import Foundation

/// Moves one store's state into another (`kmsctl state migrate`): a single process's SQLite file into the PostgreSQL
/// database replicas will share. Usage counts, creation times, wrap budgets, the journal (in order, with its times) and
/// managed objects are copied; leases are not (they expire within minutes and belong to processes that must be stopped for the move).
public enum StateMigration {
    public struct Summary: Sendable, Equatable {
        public var versions: Int
        public var usageRows: Int
        public var wraps: UInt64
        public var journalEntries: Int
        public var budgets: Int
        public var managedObjects: Int = 0
    }

    /// Copies everything in `source` into `target`. Refuses a target that already holds state: adding counts twice
    /// (a second run) would overstate usage, and merging two deployments' journals is not a migration. The copy is
    /// several operations, not one transaction: one that fails part-way leaves a partial target to drop and recreate.
    public static func copy(from source: any StateStore, to target: any StateStore) async throws -> Summary {
        let existing = try await target.allUsage().count + target.versionCreationTimes().count + target.journal(key: nil, limit: 1).count
            + target.reservedWraps().count + target.managedObjects(after: nil, limit: 1).count
        guard existing == 0 else {
            throw StateStoreError("\(target.location) already holds state (usage, versions, budgets, journal or managed objects); migrate into an empty "
                                  + "database (nothing was copied; after a copy that failed part-way, drop and create the database again)")
        }
        let usage = try await source.allUsage()
        let created = try await source.versionCreationTimes()
        let journal = try await source.journal(key: nil, limit: Int(Int32.max))
        for (version, date) in created.sorted(by: { $0.key < $1.key }) {
            _ = try await target.recordVersionCreated(version, at: date)
        }
        for entry in journal { try await target.append(entry) }
        // Reserved blocks are never issued again, in the new store either.
        let budgets = try await source.reservedWraps()
        for (version, reserved) in budgets.sorted(by: { $0.key < $1.key }) where reserved > 0 {
            _ = try await target.reserveWraps(version, count: reserved, limit: reserved)
        }
        // Managed objects as they are: descriptions and envelopes (the wrapping key lives in the backend, not here).
        var objects = 0
        var after: String?
        while true {
            let page = try await source.managedObjects(after: after, limit: 500)
            for object in page { try await target.insertManagedObject(object) }
            objects += page.count
            guard let last = page.last, page.count == 500 else { break }
            after = last.id
        }
        // Counts last: a copy that fails earlier has at least not counted anything.
        try await target.addUsage(usage)
        return Summary(versions: created.count, usageRows: usage.count, wraps: usage.values.reduce(0) { $0 + $1.wraps },
                       journalEntries: journal.count, budgets: budgets.count, managedObjects: objects)
    }
}
