import Crypto
import Foundation
public import KMSCore
import PKCS11

/// Signs audit checkpoints with an ECDSA P-256 key pair on a PKCS#11 token (raw `CKM_ECDSA` over the SHA-256
/// digest kmsd computes). The private key is generated on the token — sensitive, not extractable — the first time and
/// found by label afterwards; only the public key leaves the token.
final class PKCS11AuditSigner: AuditSigner {
    let provider: PKCS11KeyProvider
    let objectID: [UInt8]
    let publicKeyPEM: String

    /// DER of the P-256 curve's object identifier (1.2.840.10045.3.1.7), for `CKA_EC_PARAMS`.
    static let p256Parameters: [UInt8] = [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07]

    private init(provider: PKCS11KeyProvider, keyID: [UInt8], publicKeyPEM: String) {
        self.provider = provider
        self.objectID = keyID
        self.publicKeyPEM = publicKeyPEM
    }

    static func load(_ provider: PKCS11KeyProvider, label: String) async throws -> PKCS11AuditSigner {
        let (id, point) = try await provider.perform("find or create the audit signing key") { session -> ([UInt8], [UInt8]) in
            if let existing = try publicKey(session, label: label) {
                let id = try session.attribute(AttributeType.id, of: existing)
                guard try session.findObjects([.class(.privateKey), .id(id)], limit: 1).first != nil else {
                    throw KMSError.notFound("the token has the public key '\(label)' but not its private key")
                }
                return (id, try session.attribute(AttributeType.ecPoint, of: existing))
            }
            let id = try session.generateRandom(count: 16)
            let (publicKey, _) = try session.generateKeyPair(
                mechanism: MechanismType.ecKeyPairGen,
                publicTemplate: [.class(.publicKey), .keyType(.ec), .ecParameters(p256Parameters), .token(true), .verify(true),
                                 .label(label), .id(id)],
                privateTemplate: [.class(.privateKey), .keyType(.ec), .token(true), .private(true), .sensitive(true),
                                  .extractable(false), .sign(true), .label(label), .id(id)])
            return (id, try session.attribute(AttributeType.ecPoint, of: publicKey))
        }
        return PKCS11AuditSigner(provider: provider, keyID: id, publicKeyPEM: try publicKeyPEM(point: point, label: label))
    }

    /// The public key of the audit key pair `label`, read from the token; nothing is created. For
    /// `kmsctl audit verify --public-key-from-hsm`.
    static func existingPublicKeyPEM(_ provider: PKCS11KeyProvider, label: String) async throws -> String {
        let point = try await provider.perform("read the audit public key") { session -> [UInt8] in
            guard let key = try publicKey(session, label: label) else {
                throw KMSError.notFound("the token has no audit public key labelled '\(label)'")
            }
            return try session.attribute(AttributeType.ecPoint, of: key)
        }
        return try publicKeyPEM(point: point, label: label)
    }

    /// The audit public key labelled `label`, or nil. Two with one label are refused: the signer and a verifier must
    /// never pick different ones.
    private static func publicKey(_ session: PKCS11Session, label: String) throws -> ObjectHandle? {
        let found = try session.findObjects([.class(.publicKey), .keyType(.ec), .label(label)], limit: 2)
        guard found.count <= 1 else { throw KMSError.conflict("the token has more than one public key labelled '\(label)'") }
        return found.first
    }

    private static func publicKeyPEM(point: [UInt8], label: String) throws -> String {
        do {
            return try P256.Signing.PublicKey(x963Representation: unwrapOctetString(point)).pemRepresentation
        } catch {
            throw KMSError.unsupported("the audit key '\(label)' on the token is not a P-256 key")
        }
    }

    /// `CKA_EC_POINT` is a DER OCTET STRING around the uncompressed point (some tokens return the bare point).
    static func unwrapOctetString(_ bytes: [UInt8]) -> [UInt8] {
        if bytes.count == 65, bytes.first == 0x04 { return bytes }
        if bytes.count == 67, bytes[0] == 0x04, bytes[1] == 0x41 { return Array(bytes[2...]) }
        return bytes
    }

    /// Called on the audit writer's own thread, which waits for the HSM's answer (never on the cooperative pool).
    func sign(digest: SHA256Digest) throws -> [UInt8] {
        let data = Array(digest)
        let keyID = objectID
        let signature = try provider.performBlocking("sign an audit checkpoint") { session in
            guard let key = try session.findObjects([.class(.privateKey), .id(keyID)], limit: 1).first else {
                throw KMSError.notFound("the audit signing key is no longer on the token")
            }
            return try session.sign(mechanism: MechanismType.ecdsa, key: key, data: data)
        }
        guard signature.count == 64 else {
            throw KMSError.internal("the token returned a \(signature.count)-byte ECDSA signature, not 64")
        }
        return signature
    }
}

extension PKCS11KeyProvider: AuditSigningKeyHolder {
    public func auditSigner(label: String) async throws -> any AuditSigner {
        try await PKCS11AuditSigner.load(self, label: label)
    }

    public func auditPublicKeyPEM(label: String) async throws -> String {
        try await PKCS11AuditSigner.existingPublicKeyPEM(self, label: label)
    }
}
