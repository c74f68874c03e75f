public import Crypto
import Foundation
public import KMSCore

// `AuditSigner` itself lives in KMSCore, so a provider can hold the signing key (`AuditSigningKeyHolder`) without
// depending on the audit log.

extension AuditSigner {
    /// The first 16 hex digits of SHA-256 of the public key's DER.
    public var keyID: String { AuditKeys.keyID(publicKeyPEM: publicKeyPEM) }
}

public enum AuditKeys {
    public static func keyID(publicKeyPEM: String) -> String {
        guard let key = try? P256.Signing.PublicKey(pemRepresentation: publicKeyPEM) else { return "unknown" }
        return String(Hex.encode(SHA256.hash(data: key.derRepresentation)).prefix(16))
    }
}

/// A signing key in a PEM file (development, or where no HSM is available). The production checklist requires the
/// file to be readable by its owner only; an HSM-held key (`sign: {hsm: …}`) is stronger, since whoever can read the
/// file can forge checkpoints.
public struct FileAuditSigner: AuditSigner {
    private let key: P256.Signing.PrivateKey
    public let publicKeyPEM: String

    public init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw AuditError("cannot read the audit signing key \(path)")
        }
        do {
            key = try P256.Signing.PrivateKey(pemRepresentation: String(decoding: data, as: UTF8.self))
        } catch {
            throw AuditError("the audit signing key \(path) is not a PEM P-256 private key")
        }
        publicKeyPEM = key.publicKey.pemRepresentation
    }

    /// Writes a new key to `path` (mode 0600) unless one exists.
    public static func createIfMissing(path: String) throws {
        guard !FileManager.default.fileExists(atPath: path) else { return }
        let pem = P256.Signing.PrivateKey().pemRepresentation
        guard FileManager.default.createFile(atPath: path, contents: Data(pem.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw AuditError("cannot write the audit signing key \(path)")
        }
    }

    public func sign(digest: SHA256Digest) throws -> [UInt8] {
        Array(try key.signature(for: digest).rawRepresentation)
    }
}

/// The audit log cannot do what was asked. Carries no secrets.
public struct AuditError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
