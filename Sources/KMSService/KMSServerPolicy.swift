import Crypto
import Foundation
public import KMSCore
import Synchronization
public import X509

/// Which provider serves each key, who may use it, who may administer, and the request limits: everything the
/// server needs to decide a request, built by the daemon from the validated configuration.
public struct KMSServerPolicy: Sendable {
    public struct Key: Sendable {
        public let name: KeyName
        public let providerName: String
        public let provider: any KeyProvider
        public let allow: [String]

        public init(name: KeyName, providerName: String, provider: any KeyProvider, allow: [String]) {
            self.name = name
            self.providerName = providerName
            self.provider = provider
            self.allow = allow
        }
    }

    public struct Limits: Sendable {
        public var maxBodyBytes: Int
        public var requestTimeout: Duration
        public var ratePerSecond: Double
        public var burst: Int

        public init(maxBodyBytes: Int = 256 * 1024, requestTimeout: Duration = .seconds(10), ratePerSecond: Double = 1000,
                    burst: Int = 2000) {
            self.maxBodyBytes = maxBodyBytes
            self.requestTimeout = requestTimeout
            self.ratePerSecond = ratePerSecond
            self.burst = burst
        }
    }

    public var keys: [KeyName: Key]
    public var providers: [String: any KeyProvider]
    public var adminIdentities: [String]
    /// Lower-case hex SHA-256 of admin tokens.
    public var adminTokenHashes: [String]
    public var limits: Limits
    public var mode: String
    /// How a certificate's names become its identity (`tls.identity`).
    public var identityMode: ClientIdentity.Mode = .names
    /// With `admin.client_ca`: the CAs whose certificates may administer, and those whose certificates may use keys.
    /// Nil: any CA the handshake trusts, for both.
    public var adminIssuers: [DistinguishedName]?
    public var nodeIssuers: [DistinguishedName]?

    public init(keys: [KeyName: Key], providers: [String: any KeyProvider], adminIdentities: [String],
                adminTokenHashes: [String], limits: Limits, mode: String) {
        self.keys = keys
        self.providers = providers
        self.adminIdentities = adminIdentities
        self.adminTokenHashes = adminTokenHashes
        self.limits = limits
        self.mode = mode
    }

    /// Constant-time comparison of the token's SHA-256 with every configured hash.
    public func isAdminToken(_ token: String) -> Bool {
        let digest = Self.digest(token)
        var matched = false
        for hash in adminTokenHashes {
            guard let expected = Hex.decode(hash), expected.count == digest.count else { continue }
            var difference: UInt8 = 0
            for index in digest.indices { difference |= digest[index] ^ expected[index] }
            matched = matched || difference == 0
        }
        return matched
    }

    /// SHA-256 of a token: what kmsd keeps of admin and transit tokens.
    public static func digest(_ token: String) -> [UInt8] { Array(SHA256.hash(data: Array(token.utf8))) }

    /// Lower-case hex SHA-256 of a token, as `admin.token_hashes` lists it.
    public static func hexDigest(_ token: String) -> String { Hex.encode(digest(token)) }
}

/// Token buckets per caller identity.
public final class RateLimiter: Sendable {
    private struct Bucket {
        var tokens: Double
        var updated: ContinuousClock.Instant
    }

    private let rate: Double
    private let burst: Double
    private let buckets = Mutex<[String: Bucket]>([:])

    public init(ratePerSecond: Double, burst: Int) {
        rate = ratePerSecond
        self.burst = Double(burst)
    }

    /// Takes one token for `caller`; false when the bucket is empty.
    public func allow(_ caller: String, now: ContinuousClock.Instant = .now) -> Bool {
        buckets.withLock { buckets in
            var bucket = buckets[caller] ?? Bucket(tokens: burst, updated: now)
            let elapsed = now - bucket.updated
            let seconds = elapsed.seconds
            bucket.tokens = min(burst, bucket.tokens + seconds * rate)
            bucket.updated = now
            let allowed = bucket.tokens >= 1
            if allowed { bucket.tokens -= 1 }
            buckets[caller] = bucket
            if buckets.count > 100_000 { buckets = buckets.filter { $0.value.tokens < burst } }
            return allowed
        }
    }
}
