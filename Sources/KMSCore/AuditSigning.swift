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
