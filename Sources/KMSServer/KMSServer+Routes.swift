import Foundation
import Hummingbird
import KMSAPI
import KMSCore
import KMSRotation
import KMSAudit
import Logging

extension KMSServer {
    // MARK: - Storage nodes

    func datakey(_ request: Request, _ context: KMSRequestContext) async throws -> Response {
        let (key, identity) = try await authorizeKey(request, context)
        let body = try await decode(DataKeyRequest.self, request, allowed: ["context"])
        let encryption = try self.context(body.context)
        AuditNote.context(encryption)
        let dataKey = try await perform { try await key.provider.generateDataKey(key.name, context: encryption) }
        AuditNote.version(dataKey.version)
        logger.info("datakey", metadata: ["identity": "\(identity)", "key": "\(key.name)", "version": "\(dataKey.version)"])
        return try json(DataKeyResponse(
            key: key.name.rawValue, version: dataKey.version.rawValue,
            plaintext: dataKey.plaintext.withUnsafeBytes { Data($0).base64EncodedString() },
            wrapped: Data(dataKey.wrapped).base64EncodedString()))
    }

    func unwrap(_ request: Request, _ context: KMSRequestContext) async throws -> Response {
        let (key, identity) = try await authorizeKey(request, context)
        let body = try await decode(UnwrapRequest.self, request, allowed: ["wrapped", "context"])
        var outcome = AuditEvent.ItemOutcome()
        let result = try await unwrapOne(key, body, &outcome)
        logger.info("unwrap", metadata: ["identity": "\(identity)", "key": "\(key.name)", "version": "\(result.version)"])
        return try json(result)
    }

    func rewrap(_ request: Request, _ context: KMSRequestContext) async throws -> Response {
        let (key, identity) = try await authorizeKey(request, context)
        let body = try await decode(RewrapRequest.self, request, allowed: ["wrapped", "context"])
        var outcome = AuditEvent.ItemOutcome()
        let result = try await rewrapOne(key, UnwrapRequest(wrapped: body.wrapped, context: body.context), &outcome)
        logger.info("rewrap", metadata: ["identity": "\(identity)", "key": "\(key.name)", "version": "\(result.version)"])
        return try json(result)
    }

    func batchUnwrap(_ request: Request, _ context: KMSRequestContext) async throws -> Response {
        let (key, _) = try await authorizeKey(request, context)
        let body = try await decode(BatchRequest.self, request, allowed: ["items"])
        try checkBatch(body)
        AuditNote.items(body.items.count)
        let items = try await eachItem(body.items) { item, outcome in try await unwrapOne(key, item, &outcome) }
        return try json(BatchUnwrapResponse(items: items.map { .init(result: $0, error: $1) }))
    }

    func batchRewrap(_ request: Request, _ context: KMSRequestContext) async throws -> Response {
        let (key, _) = try await authorizeKey(request, context)
        let body = try await decode(BatchRequest.self, request, allowed: ["items"])
        try checkBatch(body)
        AuditNote.items(body.items.count)
        let items = try await eachItem(body.items) { item, outcome in try await rewrapOne(key, item, &outcome) }
        return try json(BatchRewrapResponse(items: items.map { .init(result: $0, error: $1) }))
    }

    /// Runs `operation` on every item in order, answering each with its result or its error, and notes each item's
    /// outcome for the audit record (kept current after every item, so a batch cut short by a 503 still says which
    /// items ran). A 503 ends the batch: the backend is down for all of them.
    private func eachItem<Result: Sendable>(
        _ items: [UnwrapRequest],
        _ operation: (UnwrapRequest, inout AuditEvent.ItemOutcome) async throws -> Result
    ) async throws -> [(Result?, ErrorBody.Detail?)] {
        var answers: [(Result?, ErrorBody.Detail?)] = []
        var outcomes: [AuditEvent.ItemOutcome] = []
        for item in items {
            var outcome = AuditEvent.ItemOutcome()
            do {
                let result = try await operation(item, &outcome)
                answers.append((result, nil))
                outcomes.append(outcome)
            } catch let error as APIError where error.status != .serviceUnavailable {
                outcome.result = error.isAuthenticationFailure ? .denied : .failed
                outcome.code = error.code
                outcomes.append(outcome)
                answers.append((nil, ErrorBody.Detail(code: error.code, message: error.message)))
            } catch {
                outcome.result = .failed
                outcome.code = (error as? APIError)?.code
                outcomes.append(outcome)
                AuditNote.outcomes(outcomes)
                throw error
            }
            AuditNote.outcomes(outcomes)
        }
        return answers
    }

    private func checkBatch(_ body: BatchRequest) throws {
        guard (1...BatchRequest.maxItems).contains(body.items.count) else {
            throw APIError(.badRequest, "invalid_input", "a batch holds 1 to \(BatchRequest.maxItems) items")
        }
    }

    /// Decodes one item's wrapped key and context, filling in what the audit record shows of it.
    private func itemInput(_ item: UnwrapRequest, _ outcome: inout AuditEvent.ItemOutcome) throws -> ([UInt8], EncryptionContext) {
        let wrapped = try base64(item.wrapped, field: "wrapped")
        if let envelope = try? Envelope(parsing: wrapped) { outcome.version = envelope.header.version.rawValue }
        let encryption = try self.context(item.context)
        outcome.contextDigest = AuditNote.digest(encryption)
        AuditNote.context(encryption)
        return (wrapped, encryption)
    }

    private func unwrapOne(_ key: KMSServerPolicy.Key, _ item: UnwrapRequest, _ outcome: inout AuditEvent.ItemOutcome) async throws -> UnwrapResponse {
        let (wrapped, encryption) = try itemInput(item, &outcome)
        let result = try await perform { try await key.provider.unwrap(key.name, wrapped: wrapped, context: encryption) }
        AuditNote.version(result.version)
        outcome.version = result.version.rawValue
        return UnwrapResponse(key: key.name.rawValue, version: result.version.rawValue,
                              plaintext: result.plaintext.withUnsafeBytes { Data($0).base64EncodedString() })
    }

    private func rewrapOne(_ key: KMSServerPolicy.Key, _ item: UnwrapRequest, _ outcome: inout AuditEvent.ItemOutcome) async throws -> RewrapResponse {
        let (wrapped, encryption) = try itemInput(item, &outcome)
        let result = try await perform { try await key.provider.rewrap(key.name, wrapped: wrapped, context: encryption) }
        AuditNote.version(result.version)
        outcome.version = result.version.rawValue
        return RewrapResponse(key: key.name.rawValue, version: result.version.rawValue,
                              wrapped: Data(result.wrapped).base64EncodedString())
    }

    // MARK: - Administration

    private func adminKey(_ context: KMSRequestContext) throws -> KMSServerPolicy.Key {
        let nameText = context.parameters.get("name") ?? ""
        guard let name = try? KeyName(nameText) else {
            throw APIError(.badRequest, "invalid_input", "'\(nameText.prefix(80))' is not a valid key name")
        }
        AuditNote.key(name)
        guard let key = policy.keys[name] else {
            throw APIError(.notFound, "not_found", "no key named '\(name)' in the configuration")
        }
        return key
    }

    private func body(_ name: KeyName, _ provider: String, _ description: KeyDescription) -> KeyBody {
        KeyBody(name: name.rawValue, provider: provider, versions: description.versions.map {
            KeyVersionBody(version: $0.version.rawValue, state: $0.state.rawValue,
                           createdAt: $0.createdAt.map(Self.time))
        })
    }

    func listKeys(_ request: Request, _ context: KMSRequestContext) async throws -> Response {
        _ = try await authorizeAdmin(request, context)
        let entries = policy.keys.values.sorted { $0.name < $1.name }.map {
            KeyListBody.Entry(name: $0.name.rawValue, provider: $0.providerName)
        }
        return try json(KeyListBody(keys: entries))
    }

    func showKey(_ request: Request, _ context: KMSRequestContext) async throws -> Response {
        _ = try await authorizeAdmin(request, context)
        let key = try adminKey(context)
        let description = try await perform { try await key.provider.describeKey(key.name) }
        return try json(body(key.name, key.providerName, description))
    }

    func createKey(_ request: Request, _ context: KMSRequestContext) async throws -> Response {
        let caller = try await authorizeAdmin(request, context)
        let body = try await decode(CreateKeyRequest.self, request, allowed: ["name", "provider"])
        guard let name = try? KeyName(body.name) else {
            throw APIError(.badRequest, "invalid_input", "'\(body.name.prefix(80))' is not a valid key name")
        }
        // A key is served only when the configuration names it (that is where its allow list lives).
        guard let key = policy.keys[name] else {
            throw APIError(.badRequest, "invalid_input", "add key '\(name)' to the configuration (provider and allow list) first")
        }
        AuditNote.key(name)
        if let provider = body.provider, provider != key.providerName {
            throw APIError(.badRequest, "invalid_input", "key '\(name)' is configured for provider '\(key.providerName)', not '\(provider)'")
        }
        let description = try await perform { try await key.provider.createKey(name) }
        await rotation.didCreate(name, description: description, actor: caller)
        logger.notice("key created", metadata: ["admin": "\(caller)", "key": "\(name)", "provider": "\(key.providerName)"])
        return try json(self.body(name, key.providerName, description), status: .created)
    }

    func rotate(_ request: Request, _ context: KMSRequestContext) async throws -> Response {
        let caller = try await authorizeAdmin(request, context)
        let key = try adminKey(context)
        let body = try await decode(RotateRequest.self, request, allowed: ["reason", "dry_run"])
        let reason = "manual" + (body.reason.map { ": \($0.prefix(200))" } ?? "")
        AuditNote.detail((body.dryRun == true ? "dry run; " : "") + reason)
        guard let outcome = try await perform({ [rotation] in
            try await rotation.rotate(key.name, trigger: reason, actor: caller, dryRun: body.dryRun ?? false)
        }) else {
            throw APIError(.conflict, "conflict", "the rotation of '\(key.name)' did not run")
        }
        AuditNote.version(outcome.newVersion)
        return try json(RotateResponse(
            name: key.name.rawValue, provider: key.providerName, previousVersion: outcome.previousVersion.rawValue,
            version: outcome.newVersion.rawValue, dryRun: outcome.dryRun, nextRotationAt: outcome.nextRotationAt.map(Self.time),
            nextRotationReason: outcome.nextTrigger?.rawValue, versions: self.body(key.name, key.providerName, outcome.description).versions))
    }

    func retire(_ request: Request, _ context: KMSRequestContext) async throws -> Response {
        let caller = try await authorizeAdmin(request, context)
        let key = try adminKey(context)
        guard let number = context.parameters.get("version").flatMap(UInt32.init), let version = try? KeyVersion(number) else {
            throw APIError(.badRequest, "invalid_input", "the version must be a positive integer")
        }
        let body = try await decode(RetireRequest.self, request, allowed: ["force"])
        AuditNote.version(version)
        if body.force == true { AuditNote.detail("forced") }
        try await perform { [rotation] in try await rotation.retire(key.name, version: version, force: body.force ?? false, actor: caller) }
        let description = try await perform { try await key.provider.describeKey(key.name) }
        return try json(self.body(key.name, key.providerName, description))
    }

    func versions(_ request: Request, _ context: KMSRequestContext) async throws -> Response {
        _ = try await authorizeAdmin(request, context)
        let key = try adminKey(context)
        let (configured, entries) = try await perform { [rotation] in try await rotation.versions(key.name) }
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

    func schedule(_ request: Request, _ context: KMSRequestContext) async throws -> Response {
        _ = try await authorizeAdmin(request, context)
        let now = rotation.clock()
        let entries = await rotation.schedule()
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

    func status(_ request: Request, _ context: KMSRequestContext) async throws -> Response {
        _ = try await authorizeAdmin(request, context)
        let providers = await providerHealth()
        return try json(StatusBody(mode: policy.mode, ready: providers.allSatisfy { $0.state == "ok" }, providers: providers,
                                   securityEvents: events.snapshot))
    }

    // MARK: - Health

    func providerHealth() async -> [StatusBody.Provider] {
        var result: [StatusBody.Provider] = []
        for (name, provider) in policy.providers.sorted(by: { $0.key < $1.key }) {
            let health = await provider.health()
            result.append(StatusBody.Provider(name: name, kind: provider.kind.description, state: health.state.rawValue,
                                              lastError: health.lastError, details: health.details))
        }
        return result
    }

    /// 200 when every provider is serving; 503 (with `Retry-After`) when any is not.
    func ready() async throws -> Response {
        if let audit, !audit.statistics.writable {
            throw APIError(.serviceUnavailable, "unavailable", "the audit log cannot be written")
        }
        if let problem = revocationProblem() {
            throw APIError(.serviceUnavailable, "revocation_unavailable", problem)
        }
        let providers = await providerHealth()
        guard providers.allSatisfy({ $0.state != "unavailable" }) else {
            let down = providers.filter { $0.state == "unavailable" }.map(\.name).joined(separator: ", ")
            throw APIError(.serviceUnavailable, "unavailable", "provider(s) unavailable: \(down)")
        }
        return try json(HealthBody(status: "ready"))
    }
}
