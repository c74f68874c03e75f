import Foundation
import Hummingbird
import KMSAPI
import KMSCore
import KMSRotation
import KMSState
import KMSService

/// Each route: the authenticated caller (from the route's context) and the path to the service, a closure that
/// decodes the body (called by the service once the caller is authorized for the key), and the result to JSON.
extension KMSServer {
    // MARK: - Storage nodes

    func datakey(_ request: Request, _ context: NodeRequestContext) async throws -> Response {
        let (name, dataKey) = try await service.dataKey(context.caller, key: keyName(context)) {
            try await decode(DataKeyRequest.self, request)
        }
        return json(bytes: DataKeyResponse(
            key: name.rawValue, version: dataKey.version.rawValue,
            plaintext: dataKey.plaintext.withUnsafeBytes { Data($0).base64EncodedString() },
            wrapped: Data(dataKey.wrapped).base64EncodedString()).jsonBytes)
    }

    func unwrap(_ request: Request, _ context: NodeRequestContext) async throws -> Response {
        let (name, result) = try await service.unwrap(context.caller, key: keyName(context)) {
            .request(try await decode(UnwrapRequest.self, request))
        }
        return json(bytes: Self.unwrapResponse(name, result).jsonBytes)
    }

    func rewrap(_ request: Request, _ context: NodeRequestContext) async throws -> Response {
        let (name, result) = try await service.rewrap(context.caller, key: keyName(context)) {
            .request(try await decode(RewrapRequest.self, request))
        }
        return json(bytes: Self.rewrapResponse(name, result).jsonBytes)
    }

    func batchUnwrap(_ request: Request, _ context: NodeRequestContext) async throws -> Response {
        let (name, answers) = try await service.unwrapBatch(context.caller, key: keyName(context)) {
            try await decode(BatchRequest.self, request).items.map(KMSService.WrappedInput.request)
        }
        return try json(BatchUnwrapResponse(items: answers.map { result, error in
            .init(result: result.map { Self.unwrapResponse(name, $0) }, error: error.map(Self.errorDetail))
        }))
    }

    func batchRewrap(_ request: Request, _ context: NodeRequestContext) async throws -> Response {
        let (name, answers) = try await service.rewrapBatch(context.caller, key: keyName(context)) {
            try await decode(BatchRequest.self, request).items.map(KMSService.WrappedInput.request)
        }
        return try json(BatchRewrapResponse(items: answers.map { result, error in
            .init(result: result.map { Self.rewrapResponse(name, $0) }, error: error.map(Self.errorDetail))
        }))
    }

    private func keyName(_ context: some RequestContext) -> String { context.parameters.get("name") ?? "" }

    private static func unwrapResponse(_ name: KeyName, _ result: UnwrappedKey) -> UnwrapResponse {
        UnwrapResponse(key: name.rawValue, version: result.version.rawValue,
                       plaintext: result.plaintext.withUnsafeBytes { Data($0).base64EncodedString() })
    }

    private static func rewrapResponse(_ name: KeyName, _ result: WrappedKey) -> RewrapResponse {
        RewrapResponse(key: name.rawValue, version: result.version.rawValue, wrapped: Data(result.wrapped).base64EncodedString())
    }

    private static func errorDetail(_ error: ServiceError) -> ErrorBody.Detail {
        ErrorBody.Detail(code: error.code.rawValue, message: error.message)
    }

    // MARK: - Administration

    private func body(_ name: KeyName, _ provider: String, _ description: KeyDescription) -> KeyBody {
        KeyBody(name: name.rawValue, provider: provider, versions: description.versions.map {
            KeyVersionBody(version: $0.version.rawValue, state: $0.state.rawValue,
                           createdAt: $0.createdAt.map(Self.time))
        })
    }

    func listKeys(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        let keys = try await service.listKeys(context.caller)
        return try json(KeyListBody(keys: keys.map { KeyListBody.Entry(name: $0.name.rawValue, provider: $0.providerName) }))
    }

    func showKey(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        let (key, description) = try await service.describeKey(context.caller, key: keyName(context))
        return try json(body(key.name, key.providerName, description))
    }

    func createKey(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        let (key, description) = try await service.createKey(context.caller) {
            try await decode(CreateKeyRequest.self, request)
        }
        return try json(body(key.name, key.providerName, description), status: .created)
    }

    func rotate(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        let (key, outcome) = try await service.rotate(context.caller, key: keyName(context)) {
            try await decode(RotateRequest.self, request)
        }
        return try json(RotateResponse(
            name: key.name.rawValue, provider: key.providerName, previousVersion: outcome.previousVersion.rawValue,
            version: outcome.newVersion.rawValue, dryRun: outcome.dryRun, nextRotationAt: outcome.nextRotationAt.map(Self.time),
            nextRotationReason: outcome.nextTrigger?.rawValue, versions: body(key.name, key.providerName, outcome.description).versions,
            joined: outcome.joined ? true : nil))
    }

    func retire(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        let (key, description) = try await service.retire(
            context.caller, key: keyName(context), version: context.parameters.get("version")
        ) {
            try await decode(RetireRequest.self, request)
        }
        return try json(body(key.name, key.providerName, description))
    }

    func versions(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        let (key, configured, entries) = try await service.versions(context.caller, key: keyName(context))
        return try json(VersionsBody(
            name: key.name.rawValue, provider: key.providerName,
            retireQuietPeriodSeconds: Int(configured.policy.retireQuietPeriod), versions: entries.map {
                VersionsBody.Entry(
                    version: $0.version.rawValue, state: $0.state.rawValue, createdAt: $0.createdAt.map(Self.time),
                    wrapping: $0.wrapping, wraps: $0.usage.wraps, unwraps: $0.usage.unwraps,
                    lastWrapAt: $0.usage.lastWrapAt.map(Self.time), lastUnwrapAt: $0.usage.lastUnwrapAt.map(Self.time),
                    inUse: $0.inUse, quietAfter: $0.quietAfter.map(Self.time))
            }))
    }

    func schedule(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        let (now, entries) = try await service.schedule(context.caller)
        return try json(ScheduleBody(keys: entries.map { entry in
            ScheduleBody.Entry(
                key: entry.key.rawValue, provider: entry.providerName, latestVersion: entry.latestVersion?.rawValue,
                latestCreatedAt: entry.latestCreatedAt.map(Self.time),
                ageSeconds: entry.latestCreatedAt.map { Int(now.timeIntervalSince($0)) }, wraps: entry.latestWraps,
                maxWraps: entry.policy.maxWraps, periodSeconds: entry.policy.period.map { Int($0) },
                nextRotationAt: entry.plan?.nextRotationAt.map(Self.time), nextRotationReason: entry.plan?.nextTrigger?.rawValue,
                wrapRefused: entry.plan?.wrapRefused ?? false, failures: entry.failures, lastError: entry.lastError,
                warnings: entry.warnings)
        }))
    }

    static func time(_ date: Date) -> String { date.formatted(.iso8601) }

    func status(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        let status = try await service.status(context.caller)
        let providers = status.providers.map(Self.providerBody)
        let store = StatusBody.StateStore(
            location: status.store.location, state: status.store.failure == nil ? "ok" : "unavailable",
            since: status.store.failure.map { Self.time($0.since) }, lastError: status.store.failure?.error,
            replicas: status.store.replicas.map {
                .init(id: $0.id, address: $0.address, version: $0.version, startedAt: Self.time($0.startedAt), lastSeen: Self.time($0.lastSeen),
                      leases: $0.leases)
            })
        return try json(StatusBody(mode: status.mode, ready: providers.allSatisfy { $0.state == "ok" }, providers: providers,
                                   securityEvents: status.events, stateStore: store))
    }

    // MARK: - Health

    static func providerBody(_ provider: KMSService.ProviderStatus) -> StatusBody.Provider {
        StatusBody.Provider(name: provider.name, kind: provider.kind.description, state: provider.health.state.rawValue,
                            lastError: provider.health.lastError, details: provider.health.details)
    }

    /// 200 when kmsd can serve; 503 (with `Retry-After`) and the reason when it cannot. The state store's state is
    /// reported, not a reason for 503: without it kmsd still unwraps, and wraps from the blocks it holds, and one
    /// database down would otherwise take every replica out of a load balancer at once.
    func ready() async throws -> Response {
        try await service.checkReady()
        return try json(HealthBody(status: "ready", stateStore: service.stateStoreReadiness))
    }
}

// The single-item routes' answers, written by hand (`JSONEncoder` was a measurable share of a request's CPU), with
// the types' fields in their declared order.
extension DataKeyResponse {
    var jsonBytes: [UInt8] {
        var body = JSONObjectWriter(capacity: 200)
        body.string("key", key)
        body.number("version", UInt64(version))
        body.string("plaintext", plaintext)
        body.string("wrapped", wrapped)
        return body.finish()
    }
}

extension UnwrapResponse {
    var jsonBytes: [UInt8] {
        var body = JSONObjectWriter(capacity: 128)
        body.string("key", key)
        body.number("version", UInt64(version))
        body.string("plaintext", plaintext)
        return body.finish()
    }
}

extension RewrapResponse {
    var jsonBytes: [UInt8] {
        var body = JSONObjectWriter(capacity: 160)
        body.string("key", key)
        body.number("version", UInt64(version))
        body.string("wrapped", wrapped)
        return body.finish()
    }
}
