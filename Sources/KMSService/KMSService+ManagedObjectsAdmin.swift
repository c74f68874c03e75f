import Foundation
import KMSCore

/// Managed objects for administrators (`kmsctl kmip objects`): every owner's objects, never their key material, and
/// the two changes a security engineer makes by hand, Revoke and Destroy, under the same lifecycle rules as KMIP.
extension KMSService {
    /// Up to `limit` objects after `after`, by id; and whether more follow.
    public func listManagedObjects(_ admin: Administrator, after: String?, limit: Int) async throws(ServiceError) -> ([ManagedObject], more: Bool) {
        try await administered(admin, "kmip.list_objects") { _ in
            let page = try await managedObjects(after: after, limit: limit + 1)
            return (Array(page.prefix(limit)), page.count > limit)
        }
    }

    public func showManagedObject(_ admin: Administrator, id: String) async throws(ServiceError) -> ManagedObject {
        try await administered(admin, "kmip.show_object") { _ in
            AuditNote.object(id)
            return try await existingObject(id)
        }
    }

    /// Revokes for `code` (a KMIP Revocation Reason Code value): key or CA compromise makes the object Compromised.
    public func revokeManagedObject(_ admin: Administrator, id: String, code: UInt32, message: String?) async throws(ServiceError) -> ManagedObject {
        try await administered(admin, "kmip.revoke_object") { _ in
            AuditNote.object(id)
            AuditNote.detail("reason \(code)")
            return try await changeObject(id) { object, now throws(ManagedObject.LifecycleRefusal) in
                try object.revoke(ManagedObject.Revocation(code: code, message: message.map { String($0.prefix(256)) }), occurred: nil, at: now)
            }
        }
    }

    /// Destroys: the key material's envelope is deleted; the description stays, Destroyed.
    public func destroyManagedObject(_ admin: Administrator, id: String) async throws(ServiceError) -> ManagedObject {
        try await administered(admin, "kmip.destroy_object") { _ in
            AuditNote.object(id)
            return try await changeObject(id) { object, now throws(ManagedObject.LifecycleRefusal) in try object.destroy(at: now) }
        }
    }

    private func existingObject(_ id: String) async throws(ServiceError) -> ManagedObject {
        guard id.utf8.count <= 128, let object = try await managedObject(id) else {
            throw ServiceError(.notFound, .notFound, "no managed object \(id.prefix(128))")
        }
        return object
    }

    private func changeObject(
        _ id: String, _ change: (inout ManagedObject, Int64) throws(ManagedObject.LifecycleRefusal) -> Void
    ) async throws(ServiceError) -> ManagedObject {
        for _ in 0 ..< 3 {
            let previous = try await existingObject(id)
            var object = previous
            do {
                try change(&object, Int64(Date().timeIntervalSince1970))
            } catch {
                throw ServiceError(.conflict, .conflict, error.description)
            }
            if try await updateManagedObject(object, from: previous) { return object }
        }
        throw ServiceError(.conflict, .conflict, "the object kept changing; retry")
    }
}
