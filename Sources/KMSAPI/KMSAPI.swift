/// The request and response bodies of kmsd's API v1 and its route paths, shared by the server and the clients
/// (`KMSClient`, `kmsctl`). Binary fields are standard base64 strings. Unknown fields in a request are an error (the
/// server decodes strictly); clients ignore unknown fields in responses.
public enum KMSAPI {
    public static let version = "v1"

    /// Every route's path. The server registers its routes from these with the placeholders below, so the server
    /// and the clients cannot disagree on a path.
    public enum Path {
        /// The path parameters, as the server's router names them.
        public static let keyParameter = "{name}"
        public static let versionParameter = "{version}"
        public static func datakey(_ key: String) -> String { "/v1/keys/\(key)/datakey" }
        public static func unwrap(_ key: String) -> String { "/v1/keys/\(key)/unwrap" }
        public static func rewrap(_ key: String) -> String { "/v1/keys/\(key)/rewrap" }
        public static func batchUnwrap(_ key: String) -> String { "/v1/keys/\(key)/unwrap/batch" }
        public static func batchRewrap(_ key: String) -> String { "/v1/keys/\(key)/rewrap/batch" }
        public static let adminKeys = "/v1/admin/keys"
        public static func adminKey(_ key: String) -> String { "/v1/admin/keys/\(key)" }
        public static func adminRotate(_ key: String) -> String { "/v1/admin/keys/\(key)/rotate" }
        public static func adminRetire(_ key: String, _ version: UInt32) -> String { adminRetire(key, version: "\(version)") }
        public static func adminRetire(_ key: String, version: String) -> String { "/v1/admin/keys/\(key)/versions/\(version)/retire" }
        public static func adminVersions(_ key: String) -> String { "/v1/admin/keys/\(key)/versions" }
        public static let adminSchedule = "/v1/admin/schedule"
        /// KMIP managed objects (docs/kmip.md).
        public static let objectParameter = "{id}"
        public static let adminObjects = "/v1/admin/kmip/objects"
        public static func adminObject(_ id: String) -> String { "/v1/admin/kmip/objects/\(id)" }
        public static func adminObjectRevoke(_ id: String) -> String { "/v1/admin/kmip/objects/\(id)/revoke" }
        public static func adminObjectDestroy(_ id: String) -> String { "/v1/admin/kmip/objects/\(id)/destroy" }
        public static let adminStatus = "/v1/admin/status"
        public static let live = "/v1/health/live"
        public static let ready = "/v1/health/ready"
    }
}

// MARK: - Storage-node operations

public struct DataKeyRequest: StrictRequest, Codable, Sendable, Equatable {
    public var context: [String: String]?
    public init(context: [String: String]? = nil) { self.context = context }
    public enum CodingKeys: String, CodingKey, CaseIterable { case context }
}

public struct DataKeyResponse: Codable, Sendable, Equatable {
    public var key: String
    public var version: UInt32
    /// Base64 DEK.
    public var plaintext: String
    /// Base64 envelope.
    public var wrapped: String
    public init(key: String, version: UInt32, plaintext: String, wrapped: String) {
        self.key = key
        self.version = version
        self.plaintext = plaintext
        self.wrapped = wrapped
    }
}

public struct UnwrapRequest: StrictRequest, Codable, Sendable, Equatable {
    public var wrapped: String
    public var context: [String: String]?
    public init(wrapped: String, context: [String: String]? = nil) {
        self.wrapped = wrapped
        self.context = context
    }
    public enum CodingKeys: String, CodingKey, CaseIterable { case wrapped, context }
}

public struct UnwrapResponse: Codable, Sendable, Equatable {
    public var key: String
    public var version: UInt32
    public var plaintext: String
    public init(key: String, version: UInt32, plaintext: String) {
        self.key = key
        self.version = version
        self.plaintext = plaintext
    }
}

/// Rewrap takes what unwrap takes: the envelope and its context (which the new envelope keeps).
public typealias RewrapRequest = UnwrapRequest

public struct RewrapResponse: Codable, Sendable, Equatable {
    public var key: String
    public var version: UInt32
    public var wrapped: String
    public init(key: String, version: UInt32, wrapped: String) {
        self.key = key
        self.version = version
        self.wrapped = wrapped
    }
}

/// Batch unwrap or rewrap: up to `BatchRequest.maxItems` items, answered in order, each with a result or an error.
public struct BatchRequest: StrictRequest, Codable, Sendable, Equatable {
    public static let maxItems = 256
    public var items: [UnwrapRequest]
    public init(items: [UnwrapRequest]) { self.items = items }
    public enum CodingKeys: String, CodingKey, CaseIterable { case items }
}

public struct BatchUnwrapResponse: Codable, Sendable, Equatable {
    public struct Item: Codable, Sendable, Equatable {
        public var result: UnwrapResponse?
        public var error: ErrorBody.Detail?
        public init(result: UnwrapResponse? = nil, error: ErrorBody.Detail? = nil) {
            self.result = result
            self.error = error
        }
    }
    public var items: [Item]
    public init(items: [Item]) { self.items = items }
}

public struct BatchRewrapResponse: Codable, Sendable, Equatable {
    public struct Item: Codable, Sendable, Equatable {
        public var result: RewrapResponse?
        public var error: ErrorBody.Detail?
        public init(result: RewrapResponse? = nil, error: ErrorBody.Detail? = nil) {
            self.result = result
            self.error = error
        }
    }
    public var items: [Item]
    public init(items: [Item]) { self.items = items }
}

// MARK: - Administration

public struct CreateKeyRequest: StrictRequest, Codable, Sendable, Equatable {
    public var name: String
    /// The configured provider to create it in; the key's configured provider when omitted.
    public var provider: String?
    public init(name: String, provider: String? = nil) {
        self.name = name
        self.provider = provider
    }
    public enum CodingKeys: String, CodingKey, CaseIterable { case name, provider }
}

public struct KeyVersionBody: Codable, Sendable, Equatable {
    public var version: UInt32
    public var state: String
    /// RFC 3339, when the backend records it.
    public var createdAt: String?
    public init(version: UInt32, state: String, createdAt: String?) {
        self.version = version
        self.state = state
        self.createdAt = createdAt
    }
    enum CodingKeys: String, CodingKey {
        case version, state
        case createdAt = "created_at"
    }
}

public struct KeyBody: Codable, Sendable, Equatable {
    public var name: String
    public var provider: String
    public var versions: [KeyVersionBody]
    public init(name: String, provider: String, versions: [KeyVersionBody]) {
        self.name = name
        self.provider = provider
        self.versions = versions
    }
}

public struct KeyListBody: Codable, Sendable, Equatable {
    public struct Entry: Codable, Sendable, Equatable {
        public var name: String
        public var provider: String
        public init(name: String, provider: String) {
            self.name = name
            self.provider = provider
        }
    }
    public var keys: [Entry]
    public init(keys: [Entry]) { self.keys = keys }
}

public struct StatusBody: Codable, Sendable, Equatable {
    public struct Provider: Codable, Sendable, Equatable {
        public var name: String
        public var kind: String
        public var state: String
        public var lastError: String?
        public var details: [String: String]
        public init(name: String, kind: String, state: String, lastError: String?, details: [String: String]) {
            self.name = name
            self.kind = kind
            self.state = state
            self.lastError = lastError
            self.details = details
        }
        enum CodingKeys: String, CodingKey {
            case name, kind, state, details
            case lastError = "last_error"
        }
    }
    /// The state store and the kmsd processes sharing it.
    public struct StateStore: Codable, Sendable, Equatable {
        public struct Replica: Codable, Sendable, Equatable {
            public var id: String
            public var address: String
            public var version: String
            public var startedAt: String
            public var lastSeen: String
            /// Leases it holds (`rotate/<key>` while it rotates that key).
            public var leases: [String]
            public init(id: String, address: String, version: String, startedAt: String, lastSeen: String, leases: [String]) {
                self.id = id
                self.address = address
                self.version = version
                self.startedAt = startedAt
                self.lastSeen = lastSeen
                self.leases = leases
            }
            enum CodingKeys: String, CodingKey {
                case id, address, version, leases
                case startedAt = "started_at"
                case lastSeen = "last_seen"
            }
        }
        /// `sqlite:PATH` or `postgres://USER@HOST:PORT/DATABASE`.
        public var location: String
        /// `ok`, or `unavailable` (then `lastError` and `since`).
        public var state: String
        public var since: String?
        public var lastError: String?
        /// Every replica seen within a day (this one included), by id; empty when the store cannot be read.
        public var replicas: [Replica]
        public init(location: String, state: String, since: String?, lastError: String?, replicas: [Replica]) {
            self.location = location
            self.state = state
            self.since = since
            self.lastError = lastError
            self.replicas = replicas
        }
        enum CodingKeys: String, CodingKey {
            case location, state, since, replicas
            case lastError = "last_error"
        }
    }
    public var mode: String
    public var ready: Bool
    public var providers: [Provider]
    /// Refusals and other security events since start, by kind.
    public var securityEvents: [String: Int]?
    public var stateStore: StateStore?
    public init(mode: String, ready: Bool, providers: [Provider], securityEvents: [String: Int]? = nil, stateStore: StateStore? = nil) {
        self.mode = mode
        self.ready = ready
        self.providers = providers
        self.securityEvents = securityEvents
        self.stateStore = stateStore
    }
    enum CodingKeys: String, CodingKey {
        case mode, ready, providers
        case securityEvents = "security_events"
        case stateStore = "state_store"
    }
}

public struct HealthBody: Codable, Sendable, Equatable {
    public var status: String
    /// On readiness: `ok`, or `unavailable` when the state store does not answer (kmsd still serves unwraps, and wraps
    /// while the blocks it reserved last; `kmsctl status` says why).
    public var stateStore: String?
    public init(status: String, stateStore: String? = nil) {
        self.status = status
        self.stateStore = stateStore
    }
    enum CodingKeys: String, CodingKey {
        case status
        case stateStore = "state_store"
    }
}

/// `{"error":{"code":"…","message":"…"}}`: every error response. Codes are stable (`KMSError.Code` plus
/// `unauthenticated`, `rate_limited`, `payload_too_large`, `not_found` for unknown routes).
public struct ErrorBody: Codable, Sendable, Equatable {
    public struct Detail: Codable, Sendable, Equatable {
        public var code: String
        public var message: String
        public init(code: String, message: String) {
            self.code = code
            self.message = message
        }
    }
    public var error: Detail
    public init(code: String, message: String) { error = Detail(code: code, message: message) }
}

// MARK: - Rotation

/// `POST /v1/admin/keys/{name}/rotate`.
public struct RotateRequest: StrictRequest, Codable, Sendable, Equatable {
    /// Why, for the journal (`kmsctl rotate --reason`).
    public var reason: String?
    /// Only say what would happen.
    public var dryRun: Bool?
    public init(reason: String? = nil, dryRun: Bool? = nil) {
        self.reason = reason
        self.dryRun = dryRun
    }
    public enum CodingKeys: String, CodingKey, CaseIterable {
        case reason
        case dryRun = "dry_run"
    }
}

public struct RotateResponse: Codable, Sendable, Equatable {
    public var name: String
    public var provider: String
    public var previousVersion: UInt32
    /// The new version (or, for a dry run, the one a rotation would create).
    public var version: UInt32
    public var dryRun: Bool
    /// When the new version will rotate next, RFC 3339 (nil: only by usage or by hand).
    public var nextRotationAt: String?
    /// `period` or `usage`.
    public var nextRotationReason: String?
    /// The key's versions after the rotation (before it, for a dry run).
    public var versions: [KeyVersionBody]
    /// True when another rotation of the key, asked for at the same time (on this replica or another), made `version`
    /// and this request created no version of its own; absent otherwise.
    public var joined: Bool?
    public init(name: String, provider: String, previousVersion: UInt32, version: UInt32, dryRun: Bool, nextRotationAt: String?,
                nextRotationReason: String?, versions: [KeyVersionBody], joined: Bool? = nil) {
        self.joined = joined
        self.name = name
        self.provider = provider
        self.previousVersion = previousVersion
        self.version = version
        self.dryRun = dryRun
        self.nextRotationAt = nextRotationAt
        self.nextRotationReason = nextRotationReason
        self.versions = versions
    }
    enum CodingKeys: String, CodingKey {
        case name, provider, version, versions, joined
        case previousVersion = "previous_version"
        case dryRun = "dry_run"
        case nextRotationAt = "next_rotation_at"
        case nextRotationReason = "next_rotation_reason"
    }
}

/// `POST /v1/admin/keys/{name}/versions/{n}/retire`.
public struct RetireRequest: StrictRequest, Codable, Sendable, Equatable {
    /// Retire even though the version unwrapped within the quiet period.
    public var force: Bool?
    public init(force: Bool? = nil) { self.force = force }
    public enum CodingKeys: String, CodingKey, CaseIterable { case force }
}

/// `GET /v1/admin/schedule`.
public struct ScheduleBody: Codable, Sendable, Equatable {
    public struct Entry: Codable, Sendable, Equatable {
        public var key: String
        public var provider: String
        public var latestVersion: UInt32?
        public var latestCreatedAt: String?
        public var ageSeconds: Int?
        /// Wraps with the latest version, and the bound that rotates it.
        public var wraps: UInt64
        public var maxWraps: UInt64
        public var periodSeconds: Int?
        public var nextRotationAt: String?
        /// `period` or `usage`; nil when only a person rotates it.
        public var nextRotationReason: String?
        public var wrapRefused: Bool
        public var failures: Int
        public var lastError: String?
        public var warnings: [String]
        public init(key: String, provider: String, latestVersion: UInt32?, latestCreatedAt: String?, ageSeconds: Int?, wraps: UInt64,
                    maxWraps: UInt64, periodSeconds: Int?, nextRotationAt: String?, nextRotationReason: String?, wrapRefused: Bool,
                    failures: Int, lastError: String?, warnings: [String]) {
            self.key = key
            self.provider = provider
            self.latestVersion = latestVersion
            self.latestCreatedAt = latestCreatedAt
            self.ageSeconds = ageSeconds
            self.wraps = wraps
            self.maxWraps = maxWraps
            self.periodSeconds = periodSeconds
            self.nextRotationAt = nextRotationAt
            self.nextRotationReason = nextRotationReason
            self.wrapRefused = wrapRefused
            self.failures = failures
            self.lastError = lastError
            self.warnings = warnings
        }
        enum CodingKeys: String, CodingKey {
            case key, provider, wraps, failures, warnings
            case latestVersion = "latest_version"
            case latestCreatedAt = "latest_created_at"
            case ageSeconds = "age_seconds"
            case maxWraps = "max_wraps"
            case periodSeconds = "period_seconds"
            case nextRotationAt = "next_rotation_at"
            case nextRotationReason = "next_rotation_reason"
            case wrapRefused = "wrap_refused"
            case lastError = "last_error"
        }
    }
    public var keys: [Entry]
    public init(keys: [Entry]) { self.keys = keys }
}

/// `GET /v1/admin/keys/{name}/versions`: each version with its counted use.
public struct VersionsBody: Codable, Sendable, Equatable {
    public struct Entry: Codable, Sendable, Equatable {
        public var version: UInt32
        public var state: String
        public var createdAt: String?
        /// The version new wraps use.
        public var wrapping: Bool
        public var wraps: UInt64
        public var unwraps: UInt64
        public var lastWrapAt: String?
        public var lastUnwrapAt: String?
        /// Unwrapped within the retire quiet period: its data still needs rewrapping before it is retired.
        public var inUse: Bool
        /// When the quiet period after its last unwrap ends.
        public var quietAfter: String?
        public init(version: UInt32, state: String, createdAt: String?, wrapping: Bool, wraps: UInt64, unwraps: UInt64,
                    lastWrapAt: String?, lastUnwrapAt: String?, inUse: Bool, quietAfter: String?) {
            self.version = version
            self.state = state
            self.createdAt = createdAt
            self.wrapping = wrapping
            self.wraps = wraps
            self.unwraps = unwraps
            self.lastWrapAt = lastWrapAt
            self.lastUnwrapAt = lastUnwrapAt
            self.inUse = inUse
            self.quietAfter = quietAfter
        }
        enum CodingKeys: String, CodingKey {
            case version, state, wrapping, wraps, unwraps
            case createdAt = "created_at"
            case lastWrapAt = "last_wrap_at"
            case lastUnwrapAt = "last_unwrap_at"
            case inUse = "in_use"
            case quietAfter = "quiet_after"
        }
    }
    public var name: String
    public var provider: String
    public var retireQuietPeriodSeconds: Int
    public var versions: [Entry]
    public init(name: String, provider: String, retireQuietPeriodSeconds: Int, versions: [Entry]) {
        self.name = name
        self.provider = provider
        self.retireQuietPeriodSeconds = retireQuietPeriodSeconds
        self.versions = versions
    }
    enum CodingKeys: String, CodingKey {
        case name, provider, versions
        case retireQuietPeriodSeconds = "retire_quiet_period_seconds"
    }
}

// MARK: - KMIP managed objects (admin)

/// A managed object as kmsctl shows it: never its key material.
public struct ManagedObjectBody: Codable, Sendable, Equatable {
    public struct Link: Codable, Sendable, Equatable {
        public var type: String
        public var id: String
        public init(type: String, id: String) {
            self.type = type
            self.id = id
        }
    }

    public var id: String
    public var owner: String
    /// `symmetric_key` or `secret_data`.
    public var type: String
    /// `pre_active`, `active`, `deactivated`, `compromised`, `destroyed`, `destroyed_compromised`.
    public var state: String
    public var names: [String]
    public var algorithm: String?
    public var length: Int32?
    public var createdAt: String
    public var activatedAt: String?
    public var deactivatedAt: String?
    public var compromisedAt: String?
    public var destroyedAt: String?
    public var lastChangeAt: String
    public var revocationReason: String?
    public var revocationMessage: String?
    public var links: [Link]
    /// Names of the other attributes (custom `x-` attributes and the like).
    public var attributes: [String]
    /// The wrapping key version the key material is sealed under (absent once destroyed).
    public var wrappingVersion: UInt32?

    public init(id: String, owner: String, type: String, state: String, names: [String], algorithm: String?, length: Int32?,
                createdAt: String, activatedAt: String?, deactivatedAt: String?, compromisedAt: String?, destroyedAt: String?,
                lastChangeAt: String, revocationReason: String?, revocationMessage: String?, links: [Link], attributes: [String],
                wrappingVersion: UInt32?) {
        self.id = id
        self.owner = owner
        self.type = type
        self.state = state
        self.names = names
        self.algorithm = algorithm
        self.length = length
        self.createdAt = createdAt
        self.activatedAt = activatedAt
        self.deactivatedAt = deactivatedAt
        self.compromisedAt = compromisedAt
        self.destroyedAt = destroyedAt
        self.lastChangeAt = lastChangeAt
        self.revocationReason = revocationReason
        self.revocationMessage = revocationMessage
        self.links = links
        self.attributes = attributes
        self.wrappingVersion = wrappingVersion
    }

    public enum CodingKeys: String, CodingKey {
        case id, owner, type, state, names, algorithm, length, links, attributes
        case createdAt = "created_at", activatedAt = "activated_at", deactivatedAt = "deactivated_at", compromisedAt = "compromised_at"
        case destroyedAt = "destroyed_at", lastChangeAt = "last_change_at", revocationReason = "revocation_reason"
        case revocationMessage = "revocation_message", wrappingVersion = "wrapping_version"
    }
}

public struct ManagedObjectListBody: Codable, Sendable, Equatable {
    public var objects: [ManagedObjectBody]
    /// The id to ask `after` for the next page; absent on the last page.
    public var next: String?
    public init(objects: [ManagedObjectBody], next: String?) {
        self.objects = objects
        self.next = next
    }
}

public struct RevokeObjectRequest: StrictRequest, Codable, Sendable, Equatable {
    /// `key_compromise`, `ca_compromise`, `affiliation_changed`, `superseded`, `cessation_of_operation`,
    /// `privilege_withdrawn` or `unspecified`.
    public var reason: String
    public var message: String?
    public init(reason: String, message: String? = nil) {
        self.reason = reason
        self.message = message
    }
    public enum CodingKeys: String, CodingKey, CaseIterable { case reason, message }

    /// The reasons by name, with their KMIP Revocation Reason Code values.
    public static let reasons: [(name: String, code: UInt32)] = [
        ("unspecified", 1), ("key_compromise", 2), ("ca_compromise", 3), ("affiliation_changed", 4), ("superseded", 5),
        ("cessation_of_operation", 6), ("privilege_withdrawn", 7),
    ]
}
