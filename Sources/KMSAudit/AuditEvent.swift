import Foundation

/// One audited event. The schema is documented in `docs/audit.md`; it never carries key bytes, PINs, tokens or
/// encryption-context values (only a digest of the context).
public struct AuditEvent: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable {
        /// Who connected: a missing, unknown or revoked client certificate.
        case authentication
        /// A caller refused for a key or the admin API.
        case authorization
        /// datakey, unwrap, rewrap (and their batch forms).
        case keyAccess = "key_access"
        /// create, rotate, retire, configuration and certificate reloads.
        case admin
        /// Provider outages, breaker transitions, HSM errors, rate limits, refusals to start.
        case security
        /// A signed checkpoint of the chain (written by the log itself).
        case checkpoint
        /// The first record of a file after a size rotation, naming the file before it.
        case fileStart = "file_start"
    }

    public enum Result: String, Sendable, Codable {
        case ok, denied, failed, refused
    }

    public var kind: Kind
    public var action: String
    public var result: Result
    /// The caller's certificate identity, `admin-token`, or `scheduler`.
    public var identity: String?
    public var key: String?
    public var version: UInt32?
    /// Lower-case hex SHA-256 of the context's canonical encoding (envelope v1), so equal contexts can be matched
    /// without recording their values.
    public var contextDigest: String?
    /// For batch requests: how many items.
    public var items: Int?
    /// A stable error code (`forbidden`, `unavailable`, …) for results other than ok.
    public var code: String?
    /// For batch requests: each item in order, so an investigation can tell which DEKs were unwrapped.
    public var outcomes: [ItemOutcome]?
    /// Free text without secrets (an error message, the reason of a rotation, a CK_RV name).
    public var detail: String?
    /// The wire protocol the request came in on, for front ends other than kmsd's own API (`transit`); absent for
    /// kmsd's API and for kmsd's own events.
    public var frontend: String?
    /// The managed object (KMIP) the operation concerns: its unique identifier.
    public var object: String?

    public init(_ kind: Kind, _ action: String, result: Result, identity: String? = nil, key: String? = nil,
                version: UInt32? = nil, contextDigest: String? = nil, items: Int? = nil, code: String? = nil,
                detail: String? = nil, outcomes: [ItemOutcome]? = nil) {
        self.outcomes = outcomes
        self.kind = kind
        self.action = action
        self.result = result
        self.identity = identity
        self.key = key
        self.version = version
        self.contextDigest = contextDigest
        self.items = items
        self.code = code
        self.detail = detail
    }

    enum CodingKeys: String, CodingKey {
        case kind = "type"
        case action, result, identity, key, version, items, code, detail, outcomes, frontend, object
        case contextDigest = "context_digest"
    }

    /// One item of a batch: `ok`; `denied` (the wrapped key failed authentication: wrong context, wrong key or
    /// tampered data — what probing looks like); or `failed` with its code. The version is the envelope's, read
    /// before the unwrap, so a failed item still says which version it named.
    public struct ItemOutcome: Sendable, Equatable, Codable {
        public var result: Result
        public var version: UInt32?
        public var contextDigest: String?
        public var code: String?

        public init(result: Result = .ok, version: UInt32? = nil, contextDigest: String? = nil, code: String? = nil) {
            self.result = result
            self.version = version
            self.contextDigest = contextDigest
            self.code = code
        }

        enum CodingKeys: String, CodingKey {
            case result, version, code
            case contextDigest = "context_digest"
        }
    }
}

/// What is written: the event plus its place in the chain.
struct AuditRecord: Encodable {
    let seq: UInt64
    let time: String
    /// Lower-case hex SHA-256 of the previous record's line (without its newline); 64 zeros for the first record.
    let prev: String
    let event: AuditEvent
    /// Checkpoints only.
    var checkpoint: Checkpoint?
    /// The kmsd replica whose chain this is (replicas sharing a PostgreSQL state store); absent for a single kmsd.
    var replica: String?

    struct Checkpoint: Encodable {
        /// Base64 of the raw ECDSA P-256 signature (r‖s, 64 bytes) over SHA-256 of `AuditChain.checkpointMessageV2`
        /// (v1 checkpoints, written before kmsd 0.3: of `AuditChain.checkpointMessage`). Empty while the record is
        /// being hashed for its own signature.
        var signature: String
        /// The first 16 hex digits of SHA-256 of the public key (DER SubjectPublicKeyInfo).
        let keyID: String
        /// The last record of a file or of a run: nothing may follow it in this file.
        let closing: Bool
        /// Records in the chain so far (equal to seq).
        let records: UInt64
        /// The checkpoint format: 2 signs the whole record (`AuditChain.checkpointMessageV2`); absent in v1.
        var version: Int? = 2
        enum CodingKeys: String, CodingKey {
            case signature, closing, records
            case keyID = "key_id"
            case version = "v"
        }
    }

    func encode(to encoder: any Encoder) throws {
        enum Keys: String, CodingKey { case seq, time, prev, checkpoint, replica }
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(seq, forKey: .seq)
        try container.encode(time, forKey: .time)
        try container.encode(prev, forKey: .prev)
        try container.encodeIfPresent(checkpoint, forKey: .checkpoint)
        try container.encodeIfPresent(replica, forKey: .replica)
        try event.encode(to: encoder)
    }
}

/// The chain's shared definitions, used by the writer and the verifier.
public enum AuditChain {
    public static let genesis = String(repeating: "0", count: 64)

    /// What a v1 checkpoint signed (through SHA-256): the format tag, its sequence number and the hash of the record
    /// before it. Written by earlier versions; still verified (and reported as v1). It does not cover `closing`, so a
    /// v1 log cut after a periodic checkpoint whose `closing` was flipped would verify.
    public static func checkpointMessage(seq: UInt64, prev: String) -> [UInt8] {
        Array("kmsd-audit-checkpoint-v1\n\(seq)\n\(prev)".utf8)
    }

    /// What a v2 checkpoint signs (through SHA-256): every field a verifier relies on — the sequence number, the hash
    /// of the record before it, `closing`, `records`, `key_id`, the time — and the SHA-256 of the checkpoint's own
    /// line written with an empty signature, which covers every other byte of the record. The tag differs from v1's,
    /// so a v2 signature can never be passed off as a v1 one.
    public static func checkpointMessageV2(seq: UInt64, prev: String, unsignedLineHash: String, closing: Bool, records: UInt64,
                                           keyID: String, time: String) -> [UInt8] {
        Array("kmsd-audit-checkpoint-v2\n\(seq)\n\(prev)\n\(unsignedLineHash)\n\(closing)\n\(records)\n\(keyID)\n\(time)".utf8)
    }

    /// A checkpoint line with its signature's value removed (`"signature":""`), as it was hashed for signing; nil
    /// when the line does not hold exactly one `"signature":"…"` (base64 has no quotes, and quotes inside other
    /// values are escaped, so a well-formed line holds exactly one).
    public static func unsignedCheckpointLine(_ line: some Collection<UInt8>) -> [UInt8]? {
        let bytes = Array(line)
        let markers = bytes.ranges(of: Array(#""signature":""#.utf8))
        guard markers.count == 1, let valueStart = markers.first?.upperBound,
              let end = bytes[valueStart...].firstIndex(of: UInt8(ascii: "\""))
        else { return nil }
        return Array(bytes[..<valueStart]) + Array(bytes[end...])
    }
}
