public import Foundation
public import KMSAPI
import KMSAudit
public import KMSCore
public import KMSRotation
public import KMSState
import Logging

/// The administrative operations, for an authenticated `Administrator` (an admin certificate identity or an admin
/// token).
extension KMSService {
    /// An admin operation's audit scope, with the administrator noted and the policy read once for the operation.
    func administered<T>(
        _ admin: Administrator, _ action: String, _ body: (KMSServerPolicy) async throws -> T
    ) async throws(ServiceError) -> T {
        try await audited(.admin, action) {
            AuditNote.identity(admin.actor)
            return try await body(policy)
        }
    }

    /// The configured keys with their providers, by name.
    public func listKeys(_ admin: Administrator) async throws(ServiceError) -> [KMSServerPolicy.Key] {
        try await administered(admin, "list_keys") { policy in
            policy.keys.values.sorted { $0.name < $1.name }
        }
    }

    public func describeKey(_ admin: Administrator, key nameText: String) async throws(ServiceError) -> (KMSServerPolicy.Key, KeyDescription) {
        try await administered(admin, "show_key") { policy in
            let key = try adminKey(nameText, policy: policy)
            return (key, try await perform { try await key.provider.describeKey(key.name) })
        }
    }

    /// Creates version 1 of a key the configuration names (that is where its allow list lives).
    public func createKey(_ admin: Administrator, input: () async throws -> CreateKeyRequest) async throws(ServiceError)
        -> (KMSServerPolicy.Key, KeyDescription)
    {
        try await administered(admin, "create_key") { policy in
            let actor = admin.actor
            let body = try await input()
            guard let name = try? KeyName(body.name) else {
                throw ServiceError(.badRequest, .invalidInput, "'\(body.name.prefix(80))' is not a valid key name")
            }
            guard let key = policy.keys[name] else {
                throw ServiceError(.badRequest, .invalidInput, "add key '\(name)' to the configuration (provider and allow list) first")
            }
            AuditNote.key(name)
            if let provider = body.provider, provider != key.providerName {
                throw ServiceError(.badRequest, .invalidInput, "key '\(name)' is configured for provider '\(key.providerName)', not '\(provider)'")
            }
            let description = try await perform { [rotation] in
                try await rotation.create(name, actor: .administrator(actor)) { try await key.provider.createKey(name) }
            }
            logger.notice("key created", metadata: ["admin": "\(actor)", "key": "\(name)", "provider": "\(key.providerName)"])
            return (key, description)
        }
    }

    public func rotate(_ admin: Administrator, key nameText: String, input: () async throws -> RotateRequest) async throws(ServiceError)
        -> (KMSServerPolicy.Key, RotationManager.Outcome)
    {
        try await administered(admin, "rotate") { policy in
            let actor = admin.actor
            let key = try adminKey(nameText, policy: policy)
            let body = try await input()
            let trigger = RotationTrigger.manual(reason: body.reason.map { String($0.prefix(200)) })
            AuditNote.detail((body.dryRun == true ? "dry run; " : "") + trigger.description)
            guard let outcome = try await perform({ [rotation] in
                try await rotation.rotate(key.name, trigger: trigger, actor: .administrator(actor), dryRun: body.dryRun ?? false)
            }) else {
                throw ServiceError(.conflict, .conflict, "the rotation of '\(key.name)' did not run")
            }
            AuditNote.version(outcome.newVersion)
            return (key, outcome)
        }
    }

    /// Retires `versionText` of the key; returns the key's versions afterwards.
    public func retire(_ admin: Administrator, key nameText: String, version versionText: String?, input: () async throws -> RetireRequest)
        async throws(ServiceError) -> (KMSServerPolicy.Key, KeyDescription)
    {
        try await administered(admin, "retire") { policy in
            let actor = admin.actor
            let key = try adminKey(nameText, policy: policy)
            guard let number = versionText.flatMap(UInt32.init), let version = try? KeyVersion(number) else {
                throw ServiceError(.badRequest, .invalidInput, "the version must be a positive integer")
            }
            let body = try await input()
            AuditNote.version(version)
            if body.force == true { AuditNote.detail("forced") }
            try await perform { [rotation] in try await rotation.retire(key.name, version: version, force: body.force ?? false, actor: .administrator(actor)) }
            return (key, try await perform { try await key.provider.describeKey(key.name) })
        }
    }

    public func versions(_ admin: Administrator, key nameText: String) async throws(ServiceError)
        -> (KMSServerPolicy.Key, RotationManager.Key, [RotationManager.VersionEntry])
    {
        try await administered(admin, "versions") { policy in
            let key = try adminKey(nameText, policy: policy)
            let (configured, entries) = try await perform { [rotation] in try await rotation.versions(key.name) }
            return (key, configured, entries)
        }
    }

    /// Every key's rotation schedule, and the time it was computed at.
    public func schedule(_ admin: Administrator) async throws(ServiceError) -> (Date, [RotationManager.ScheduleEntry]) {
        try await administered(admin, "schedule") { _ in
            let now = rotation.clock()
            return (now, await rotation.schedule())
        }
    }

    /// One provider's state, for status and readiness.
    public struct ProviderStatus: Sendable {
        public let name: String
        public let kind: ProviderKind
        public let health: ProviderHealth
    }

    /// The state store's health and the replicas it knows.
    public struct StoreStatus: Sendable {
        public let location: String
        /// Since when the store has not answered, and why; nil while it answers.
        public let failure: (since: Date, error: String)?
        /// Every replica seen within a day, with its leases (empty when the store cannot be read).
        public let replicas: [ReplicaRecord]
    }

    /// The mode, every provider's state, the security event counts, and the state store with its replicas.
    public func status(_ admin: Administrator) async throws(ServiceError)
        -> (mode: String, providers: [ProviderStatus], events: [String: Int], store: StoreStatus)
    {
        try await administered(admin, "status") { policy in
            (policy.mode, await providerHealth(), events.snapshot, await storeStatus())
        }
    }

    public func storeStatus() async -> StoreStatus {
        var failure = rotation.stateStoreFailure
        var replicas: [ReplicaRecord] = []
        do {
            replicas = try await rotation.store.replicas(now: rotation.clock())
        } catch {
            failure = failure ?? (rotation.clock(), "\(error)")
        }
        return StoreStatus(location: rotation.store.location, failure: failure, replicas: replicas)
    }

    /// The state store for readiness: `ok` or `unavailable` (from what the last operations saw; no I/O). Why, and where
    /// the database is, only administrators see (`status`).
    public var stateStoreReadiness: String {
        rotation.stateStoreFailure == nil ? "ok" : "unavailable"
    }

    public func providerHealth() async -> [ProviderStatus] {
        var result: [ProviderStatus] = []
        for (name, provider) in policy.providers.sorted(by: { $0.key < $1.key }) {
            result.append(ProviderStatus(name: name, kind: provider.kind, health: await provider.health()))
        }
        return result
    }

    /// Throws when kmsd cannot serve: the audit log cannot be written, revocation cannot be checked, or a provider
    /// is unavailable.
    public func checkReady() async throws(ServiceError) {
        if let audit, !audit.statistics.writable {
            throw ServiceError(.unavailable, .unavailable, "the audit log cannot be written")
        }
        if let problem = revocationProblem() {
            throw ServiceError(.unavailable, .revocationUnavailable, problem)
        }
        let down = await providerHealth().filter { $0.health.state == .unavailable }.map(\.name)
        guard down.isEmpty else {
            throw ServiceError(.unavailable, .unavailable, "provider(s) unavailable: \(down.joined(separator: ", "))")
        }
    }

    private func adminKey(_ nameText: String, policy: KMSServerPolicy) throws(ServiceError) -> KMSServerPolicy.Key {
        guard let name = try? KeyName(nameText) else {
            throw ServiceError(.badRequest, .invalidInput, "'\(nameText.prefix(80))' is not a valid key name")
        }
        AuditNote.key(name)
        guard let key = policy.keys[name] else {
            throw ServiceError(.notFound, .notFound, "no key named '\(name)' in the configuration")
        }
        return key
    }
}
