import Foundation
public import KMSCore
import KMSService
import Synchronization

/// The transit listener's settings (`transit:` in kmsd's configuration; docs/transit-frontend.md).
public struct TransitConfiguration: Sendable {
    /// A transit key name and the kmsd key it serves.
    public struct Key: Sendable, Equatable {
        public let key: KeyName
        /// Every request must carry a `context` (Vault's derived keys). The context is bound as AAD either way.
        public let derived: Bool
        public init(key: KeyName, derived: Bool = false) {
            self.key = key
            self.derived = derived
        }
    }

    /// A token from the configuration, for clients that cannot present a certificate: only its SHA-256 is kept.
    public struct StaticToken: Sendable, Equatable {
        /// SHA-256 of the token.
        public let hash: [UInt8]
        /// The kmsd identity the token acts as (matched against `keys.*.allow` and `admin.identities`).
        public let identity: String
        /// How long the token is valid from kmsd's start (and from each renewal); nil: until kmsd stops.
        public let ttl: Duration?
        /// Whether `auth/token/renew-self` extends it by `ttl` again.
        public let renewable: Bool
        /// The latest a renewal can extend it to, counted from kmsd's start; nil: no limit.
        public let maxTTL: Duration?
        /// Reported by `lookup-self` (Vault clients read them); kmsd decides access by `identity` only.
        public let policies: [String]

        public init(hash: [UInt8], identity: String, ttl: Duration? = nil, renewable: Bool = false, maxTTL: Duration? = nil,
                    policies: [String] = ["default"]) {
            self.hash = hash
            self.identity = identity
            self.ttl = ttl
            self.renewable = renewable
            self.maxTTL = maxTTL
            self.policies = policies
        }
    }

    /// The mount path clients use (`/v1/<mount>/…`).
    public var mount: String
    public var keys: [String: Key]
    public var tokens: [StaticToken]
    /// Lifetime of a token from `auth/cert/login`.
    public var loginTTL: Duration
    /// At most this many login tokens live at once (then logins are refused until some expire; each identity keeps
    /// at most `TransitTokens.loginsPerIdentity`, its oldest dropped first).
    public var maxLoginTokens: Int

    public init(mount: String = "transit", keys: [String: Key] = [:], tokens: [StaticToken] = [], loginTTL: Duration = .seconds(3600),
                maxLoginTokens: Int = 10_000) {
        self.mount = mount
        self.keys = keys
        self.tokens = tokens
        self.loginTTL = loginTTL
        self.maxLoginTokens = maxLoginTokens
    }

    /// SHA-256 of a token, as the configuration lists it (`sha256:` in hex).
    public static func hash(_ token: String) -> [UInt8] { KMSServerPolicy.digest(token) }
}

/// The transit listener's tokens: the configured ones (with their expiry and renewals) and those issued by
/// `auth/cert/login`. Tokens are looked up by their SHA-256; no token is kept in the clear.
final class TransitTokens: Sendable {
    /// What a token stands for.
    struct Entry: Sendable {
        let identity: ClientIdentity
        let policies: [String]
        let issuedAt: Date
        /// nil: no expiry.
        var expiresAt: Date?
        let ttl: Duration?
        let renewable: Bool
        let renewLimit: Date?
        /// The configured token it came from (nil for a login token).
        var configured: TransitConfiguration.StaticToken? = nil
        /// Issued by a certificate login (as opposed to configured).
        var login: Bool { configured == nil }
    }

    private struct State {
        var entries: [[UInt8]: Entry] = [:]
        /// Live login tokens by identity, oldest first.
        var logins: [String: [[UInt8]]] = [:]
        var loginCount: Int { logins.values.reduce(0) { $0 + $1.count } }

        /// Forgets a login token (expired, or the oldest of its identity).
        mutating func forget(_ hash: [UInt8], of identity: String) {
            guard entries.removeValue(forKey: hash) != nil else { return }
            logins[identity]?.removeAll { $0 == hash }
            if logins[identity]?.isEmpty == true { logins[identity] = nil }
        }

        /// Forgets every expired login token (when the cap is reached).
        mutating func pruneExpired(now: Date) {
            for (hash, entry) in entries where entry.login && (entry.expiresAt.map { $0 <= now } ?? false) {
                forget(hash, of: entry.identity.description)
            }
        }
    }
    private let state: Mutex<State>
    /// An identity keeps at most this many live login tokens; a new login drops its oldest, never another's.
    static let loginsPerIdentity = 8

    init(_ configuration: TransitConfiguration, now: Date = Date()) {
        state = Mutex(State())
        replace(configuration.tokens, now: now)
    }

    /// A reload: the configured tokens become `tokens` — one removed from the file stops working now, one kept keeps
    /// its expiry and renewals, a new one starts its TTL now — and login tokens stay.
    func replace(_ tokens: [TransitConfiguration.StaticToken], now: Date = Date()) {
        state.withLock { state in
            var entries = state.entries.filter { $0.value.login }
            for token in tokens {
                if let kept = state.entries[token.hash], kept.configured == token {
                    entries[token.hash] = kept
                    continue
                }
                entries[token.hash] = Entry(
                    identity: ClientIdentity(names: [token.identity]), policies: token.policies, issuedAt: now,
                    expiresAt: token.ttl.map { now.addingTimeInterval($0.seconds) }, ttl: token.ttl, renewable: token.renewable,
                    renewLimit: token.maxTTL.map { now.addingTimeInterval($0.seconds) }, configured: token)
            }
            state.entries = entries
        }
    }

    /// The token's entry if it is known and not expired (an expired login token is forgotten).
    func entry(_ token: String, now: Date = Date()) -> Entry? {
        let hash = TransitConfiguration.hash(token)
        return state.withLock { state in
            guard let entry = state.entries[hash] else { return nil }
            if let expiry = entry.expiresAt, expiry <= now {
                if entry.login { state.forget(hash, of: entry.identity.description) }
                return nil
            }
            return entry
        }
    }

    /// Every live login slot is taken (`max_login_tokens`), by tokens that have not expired.
    struct LoginsFull: Error {}

    /// A new token bound to `identity` (a certificate's), valid for the login TTL or until the certificate expires,
    /// whichever comes first. The identity's oldest token goes when it holds `loginsPerIdentity`; when all
    /// `max_login_tokens` are live, the login is refused rather than dropping another identity's token.
    func issue(for identity: ClientIdentity, ttl: Duration, maxLogins: Int, now: Date = Date()) throws(LoginsFull)
        -> (token: String, entry: Entry)
    {
        let token = Randomness.token(prefix: "kmsd.")
        let hash = TransitConfiguration.hash(token)
        let owner = identity.description
        let issued: Entry? = state.withLock { state in
            let entry = Entry(identity: identity, policies: ["default"], issuedAt: now,
                              expiresAt: min(now.addingTimeInterval(ttl.seconds), identity.notAfter),
                              ttl: ttl, renewable: false, renewLimit: nil)
            for old in state.logins[owner] ?? [] where state.entries[old]?.expiresAt.map({ $0 <= now }) ?? true {
                state.forget(old, of: owner)
            }
            if let oldest = state.logins[owner]?.first, (state.logins[owner]?.count ?? 0) >= Self.loginsPerIdentity {
                state.forget(oldest, of: owner)
            }
            if state.loginCount >= maxLogins { state.pruneExpired(now: now) }
            guard state.loginCount < max(1, maxLogins) else { return nil }
            state.entries[hash] = entry
            state.logins[owner, default: []].append(hash)
            return entry
        }
        guard let issued else { throw LoginsFull() }
        return (token, issued)
    }

    enum RenewalRefusal: Error { case notRenewable, noExpiry }

    /// Extends a renewable token by its TTL (capped by its limit); returns the new entry and whether it was capped.
    func renew(_ token: String, now: Date = Date()) throws(RenewalRefusal) -> (Entry, capped: Bool) {
        let hash = TransitConfiguration.hash(token)
        let outcome: Result<(Entry, Bool), RenewalRefusal> = state.withLock { state in
            guard var entry = state.entries[hash], let ttl = entry.ttl else { return .failure(.noExpiry) }
            guard entry.renewable else { return .failure(.notRenewable) }
            var expiry = now.addingTimeInterval(ttl.seconds)
            var capped = false
            if let limit = entry.renewLimit, expiry > limit {
                expiry = limit
                capped = true
            }
            entry.expiresAt = expiry
            state.entries[hash] = entry
            return .success((entry, capped))
        }
        return try outcome.get()
    }
}
