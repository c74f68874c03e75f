import Foundation
import Hummingbird
import KMSAPI
import KMSCore
import KMSService

/// The admin routes over KMIP managed objects (`kmsctl kmip objects`).
extension KMSServer {
    func listObjects(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        let after = request.uri.queryParameters.get("after")
        let limitText = request.uri.queryParameters.get("limit") ?? "100"
        guard let limit = Int(limitText), (1 ... 1000).contains(limit) else {
            throw APIError(.badRequest, .invalidInput, "limit must be 1 to 1000")
        }
        let (objects, more) = try await service.listManagedObjects(context.caller, after: after, limit: limit)
        return try json(ManagedObjectListBody(objects: objects.map(Self.objectBody), next: more ? objects.last?.id : nil))
    }

    func showObject(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        try json(Self.objectBody(try await service.showManagedObject(context.caller, id: objectID(context))))
    }

    func revokeObject(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        let body = try await decode(RevokeObjectRequest.self, request)
        guard let code = RevokeObjectRequest.reasons.first(where: { $0.name == body.reason })?.code else {
            throw APIError(.badRequest, .invalidInput,
                           "reason must be one of " + RevokeObjectRequest.reasons.map(\.name).joined(separator: ", "))
        }
        return try json(Self.objectBody(try await service.revokeManagedObject(context.caller, id: objectID(context), code: code,
                                                                            message: body.message)))
    }

    func destroyObject(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        try json(Self.objectBody(try await service.destroyManagedObject(context.caller, id: objectID(context))))
    }

    private func objectID(_ context: AdminRequestContext) throws -> String {
        guard let id = context.parameters.get("id"), !id.isEmpty, id.utf8.count <= 128 else {
            throw APIError(.badRequest, .invalidInput, "expected an object id")
        }
        return id
    }

    static func objectBody(_ object: ManagedObject) -> ManagedObjectBody {
        func time(_ seconds: Int64?) -> String? { seconds.map { Self.time(Date(timeIntervalSince1970: TimeInterval($0))) } }
        let linkNames: [UInt32: String] = [0x106: "replacement", 0x107: "replaced"]
        return ManagedObjectBody(
            id: object.id, owner: object.owner, type: object.type == .symmetricKey ? "symmetric_key" : "secret_data",
            state: snake(object.state.name), names: object.names, algorithm: object.algorithm == 3 ? "AES" : object.algorithm.map { "\($0)" },
            length: object.length, createdAt: time(object.dates.initial) ?? "", activatedAt: time(object.dates.activation),
            deactivatedAt: time(object.dates.deactivation), compromisedAt: time(object.dates.compromise), destroyedAt: time(object.dates.destroy),
            lastChangeAt: time(object.dates.lastChange) ?? "",
            revocationReason: object.revocation.map { code in RevokeObjectRequest.reasons.first { $0.code == code.code }?.name ?? "\(code.code)" },
            revocationMessage: object.revocation?.message,
            links: object.links.map { .init(type: linkNames[$0.type] ?? "0x" + String($0.type, radix: 16), id: $0.id) },
            attributes: object.attributes.map(\.name), wrappingVersion: object.envelope == nil ? nil : object.wrappingVersion)
    }

    private static func snake(_ name: String) -> String {
        name.lowercased().replacingOccurrences(of: "-", with: "_").replacingOccurrences(of: " ", with: "_")
    }
}
