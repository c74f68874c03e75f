public import Crypto

/// Signs audit checkpoints: ECDSA P-256 over a SHA-256 digest, returning the raw signature (r‖s, 64 bytes).
public protocol AuditSigner: Sendable {
    /// The public key as PEM (SubjectPublicKeyInfo), for verifiers.
    var publicKeyPEM: String { get }
    /// May block until the signature is made: it is called on the audit writer's own thread, never on the
    /// cooperative pool.
    func sign(digest: SHA256Digest) throws -> [UInt8]
}

/// A provider that can keep the audit signing key pair on its device (`audit.sign: {hsm: …}`), so only its public
/// key ever leaves it.
public protocol AuditSigningKeyHolder: KeyProvider {
    /// The signer for the key pair labelled `label`, generated on the device the first time.
    func auditSigner(label: String) async throws -> any AuditSigner
    /// The public key (PEM) of the existing key pair labelled `label`; nothing is created.
    func auditPublicKeyPEM(label: String) async throws -> String
}

/// A checkpoint as kept outside the log (the state store's audit anchors): deleting or rolling back a replica's
/// log then shows against them (`AuditAnchorCheck` in KMSAudit).
public struct AuditAnchor: Sendable, Equatable {
    /// The replica whose chain it is ("" for a log without one).
    public var replica: String
    public var seq: UInt64
    /// Lower-case hex SHA-256 of the checkpoint's line, as the next record's `prev` names it.
    public var lineHash: String
    /// The checkpoint's signature (base64).
    public var signature: String
    /// The checkpoint's `time`.
    public var time: String
    public var closing: Bool

    public init(replica: String, seq: UInt64, lineHash: String, signature: String, time: String, closing: Bool) {
        self.replica = replica
        self.seq = seq
        self.lineHash = lineHash
        self.signature = signature
        self.time = time
        self.closing = closing
    }
}
