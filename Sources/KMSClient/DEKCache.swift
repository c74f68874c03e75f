import Foundation
import Synchronization

/// An optional cache of unwrapped DEKs in the client, for nodes that open the same files often.
///
/// Bounded three ways: at most `maxEntries` DEKs (least recently used leave first), each for at most `ttl` after it
/// was unwrapped, and for at most `maxUses` hits. An entry past its TTL is never served, even while kmsd is
/// unreachable: the cache saves round trips, it is not a fallback. Evicted plaintext is overwritten with zeros.
public final class DEKCache: Sendable {
    public struct Limits: Sendable {
        public var maxEntries: Int
        public var ttl: Duration
        public var maxUses: Int
        public init(maxEntries: Int = 1024, ttl: Duration = .seconds(300), maxUses: Int = 10_000) {
            self.maxEntries = maxEntries
            self.ttl = ttl
            self.maxUses = maxUses
        }
    }

    /// Plaintext that is wiped when the entry goes.
    final class Secret: @unchecked Sendable {
        // @unchecked: `bytes` is written only in init and deinit.
        var bytes: [UInt8]
        init(_ bytes: [UInt8]) { self.bytes = bytes }
        deinit {
            bytes.withUnsafeMutableBytes { buffer in
                guard let base = buffer.baseAddress else { return }
                memset(base, 0, buffer.count)
            }
        }
    }

    struct Entry {
        let secret: Secret
        let version: UInt32
        let expiresAt: ContinuousClock.Instant
        var usesLeft: Int
        var lastUsed: UInt64
    }

    public let limits: Limits
    private let clock: @Sendable () -> ContinuousClock.Instant
    private let state = Mutex<(entries: [[UInt8]: Entry], tick: UInt64)>(([:], 0))

    public init(_ limits: Limits = Limits(), clock: @escaping @Sendable () -> ContinuousClock.Instant = { .now }) {
        self.limits = limits
        self.clock = clock
    }

    /// The cache key, from the exact UTF-8 bytes of every part, as kmsd binds a context (its canonical encoding is
    /// byte-exact). Swift's `String` equality treats canonically equivalent text as equal (NFC "é" equals NFD
    /// "e\u{301}"), so a key built from `String`s would hand out a DEK for a context kmsd would refuse.
    static func key(_ name: String, _ wrapped: String, _ context: [String: String]?) -> [UInt8] {
        var out: [UInt8] = []
        func field(_ bytes: [UInt8]) {
            withUnsafeBytes(of: UInt32(bytes.count).bigEndian) { out += $0 }
            out += bytes
        }
        field(Array(name.utf8))
        field(Array(wrapped.utf8))
        // Keys are unique as bytes too (two Strings that differ only in normalization are one dictionary key).
        for (key, value) in (context ?? [:]).map({ (Array($0.key.utf8), Array($0.value.utf8)) }).sorted(by: { $0.0.lexicographicallyPrecedes($1.0) }) {
            field(key)
            field(value)
        }
        return out
    }

    /// The cached DEK (plaintext bytes, version), if present, within its TTL and uses; counts a use.
    func lookup(_ name: String, _ wrapped: String, _ context: [String: String]?) -> ([UInt8], UInt32)? {
        let now = clock()
        let key = Self.key(name, wrapped, context)
        return state.withLock { state in
            guard var entry = state.entries[key] else { return nil }
            guard entry.expiresAt > now, entry.usesLeft > 0 else {
                state.entries[key] = nil
                return nil
            }
            state.tick += 1
            entry.usesLeft -= 1
            entry.lastUsed = state.tick
            state.entries[key] = entry.usesLeft > 0 ? entry : nil
            return (entry.secret.bytes, entry.version)
        }
    }

    func store(_ name: String, _ wrapped: String, _ context: [String: String]?, plaintext: [UInt8], version: UInt32) {
        let now = clock()
        let key = Self.key(name, wrapped, context)
        state.withLock { state in
            state.tick += 1
            state.entries[key] = Entry(secret: Secret(plaintext), version: version, expiresAt: now + limits.ttl,
                                       usesLeft: limits.maxUses, lastUsed: state.tick)
            // Expired entries first, then the least recently used, until within bounds.
            state.entries = state.entries.filter { $0.value.expiresAt > now }
            while state.entries.count > limits.maxEntries, let oldest = state.entries.min(by: { $0.value.lastUsed < $1.value.lastUsed }) {
                state.entries[oldest.key] = nil
            }
        }
    }

    /// Entries held now (expired ones may still be counted until the next store).
    public var count: Int { state.withLock { $0.entries.count } }

    /// Drops every entry (wiping the plaintext).
    public func removeAll() {
        state.withLock { $0.entries.removeAll() }
    }
}
