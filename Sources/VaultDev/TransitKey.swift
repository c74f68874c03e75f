import Crypto
import Foundation
import KMSCore
import VaultWire

/// One transit key (type aes256-gcm96) with its versions, as Vault keeps it.
struct TransitKey: Codable, Sendable {
    struct Version: Codable, Sendable {
        var key: [UInt8]
        var createdAt: Int
    }

    var name: String
    var derived = false
    var convergent = false
    var exportable = false
    var allowPlaintextBackup = false
    var deletionAllowed = false
    var autoRotatePeriod = 0
    var latestVersion = 1
    var minDecryptionVersion = 1
    var minEncryptionVersion = 0
    var minAvailableVersion = 0
    var versions: [Int: Version] = [:]

    init(name: String, derived: Bool, convergent: Bool, now: Int) {
        self.name = name
        self.derived = derived
        self.convergent = convergent
        versions[1] = Version(key: Self.randomKey(), createdAt: now)
    }

    static func randomKey() -> [UInt8] {
        SymmetricKey(size: .bits256).withUnsafeBytes { [UInt8]($0) }
    }

    mutating func rotate(now: Int) {
        latestVersion += 1
        versions[latestVersion] = Version(key: Self.randomKey(), createdAt: now)
    }

    /// The key-info object Vault returns from reads and writes.
    var info: [String: JSONValue] {
        var keys: [String: JSONValue] = [:]
        for (number, version) in versions where number >= minDecryptionVersion && number <= latestVersion {
            keys[String(number)] = .int(version.createdAt)
        }
        var info: [String: JSONValue] = [
            "name": .string(name), "type": "aes256-gcm96", "derived": .bool(derived),
            "deletion_allowed": .bool(deletionAllowed), "exportable": .bool(exportable),
            "allow_plaintext_backup": .bool(allowPlaintextBackup), "auto_rotate_period": .int(autoRotatePeriod),
            "latest_version": .int(latestVersion), "min_available_version": .int(minAvailableVersion),
            "min_decryption_version": .int(minDecryptionVersion), "min_encryption_version": .int(minEncryptionVersion),
            "keys": .object(keys), "supports_encryption": true, "supports_decryption": true,
            "supports_derivation": true, "supports_signing": false, "imported_key": false,
        ]
        if derived {
            info["kdf"] = "hkdf_sha256"
            info["convergent_encryption"] = .bool(convergent)
        }
        return info
    }

    // MARK: - Encryption

    /// The version an encryption uses: `requested` 0 means the latest.
    func encryptionVersion(_ requested: Int) throws -> Int {
        if requested < 0 { throw VaultError.badRequest("requested version for encryption is negative") }
        if requested > latestVersion {
            throw VaultError.badRequest("requested version for encryption is higher than the latest key version")
        }
        if requested == 0 { return latestVersion }
        if minEncryptionVersion > 0 && requested < minEncryptionVersion {
            throw VaultError.badRequest("requested version for encryption is less than the minimum encryption key version")
        }
        guard versions[requested] != nil, requested >= minAvailableVersion else {
            throw VaultError.badRequest("no such key version")
        }
        return requested
    }

    /// The encryption key of a version, derived from `context` for derived keys. For convergent keys also the HMAC key
    /// that makes the nonce.
    private func keys(version: Int, context: [UInt8]?) throws -> (SymmetricKey, SymmetricKey?) {
        guard let material = versions[version] else { throw VaultError.badRequest("no such key version") }
        guard derived else { return (SymmetricKey(data: material.key), nil) }
        guard let context, !context.isEmpty else {
            throw VaultError.badRequest(
                "missing 'context' for key derivation; the key was created using a derived key, which means additional, per-request information must be included in order to perform operations with the key")
        }
        let length = convergent ? 64 : 32
        let derivedBytes = HKDF<SHA256>.deriveKey(
            inputKeyMaterial: SymmetricKey(data: material.key), info: context, outputByteCount: length
        ).withUnsafeBytes { [UInt8]($0) }
        let key = SymmetricKey(data: derivedBytes[0..<32])
        return (key, convergent ? SymmetricKey(data: derivedBytes[32..<64]) : nil)
    }

    func encrypt(_ plaintext: [UInt8], version requested: Int, context: [UInt8]?, aad: [UInt8]?) throws -> (String, Int) {
        let version = try encryptionVersion(requested)
        let (key, hmacKey) = try keys(version: version, context: context)
        let nonce: AES.GCM.Nonce
        if let hmacKey {
            let mac = HMAC<SHA256>.authenticationCode(for: plaintext, using: hmacKey)
            nonce = try AES.GCM.Nonce(data: Array(mac).prefix(12))
        } else {
            nonce = AES.GCM.Nonce()
        }
        let box = try AES.GCM.seal(plaintext, using: key, nonce: nonce, authenticating: aad ?? [])
        guard let combined = box.combined else { throw VaultError(500, "could not encode ciphertext") }
        return ("vault:v\(version):" + Data(combined).base64EncodedString(), version)
    }

    /// Parses `vault:v<N>:<base64>` with Vault's checks and messages, then opens it.
    func decrypt(_ ciphertext: String, context: [UInt8]?, aad: [UInt8]?) throws -> ([UInt8], Int) {
        let parsed = try TransitCiphertext.parse(ciphertext, latest: latestVersion) { version in
            version >= minDecryptionVersion && versions[version] != nil
        }
        let (version, blob) = (parsed.version, parsed.blob)
        guard blob.count >= 12 else { throw VaultError.badRequest("invalid ciphertext length") }
        let (key, _) = try keys(version: version, context: context)
        do {
            let box = try AES.GCM.SealedBox(combined: blob)
            return ([UInt8](try AES.GCM.open(box, using: key, authenticating: aad ?? [])), version)
        } catch {
            throw VaultError.badRequest("cipher: message authentication failed")
        }
    }
}
