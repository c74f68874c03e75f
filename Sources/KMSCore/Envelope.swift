/// Which backend made a wrapped key. The number is stored in the envelope.
public enum ProviderKind: UInt8, Sendable, CustomStringConvertible, Codable {
    /// A KEK inside a PKCS#11 token; AES-256-GCM performed by the token.
    case pkcs11 = 0x01
    /// A key in Vault's (or OpenBao's) transit engine; `aes256-gcm96` performed by Vault.
    case vaultTransit = 0x02
    /// The in-memory provider used by unit tests above the provider layer. Production mode refuses it.
    case inMemory = 0x7F

    public var description: String {
        switch self {
        case .pkcs11: return "pkcs11"
        case .vaultTransit: return "vault-transit"
        case .inMemory: return "in-memory"
        }
    }
}

/// The fields that name the KEK a DEK is wrapped under. They are fixed before the wrap, so they can be
/// authenticated even by backends that choose the IV themselves.
public struct EnvelopeHeader: Sendable, Equatable {
    public static let formatV1: UInt8 = 0x01
    public static let maxKeyIDLength = 64

    public let provider: ProviderKind
    public let keyName: KeyName
    public let version: KeyVersion
    /// The backend's identifier of the KEK version (PKCS#11: the object's `CKA_ID`); may be empty.
    public let keyID: [UInt8]

    public init(provider: ProviderKind, keyName: KeyName, version: KeyVersion, keyID: [UInt8]) throws(KMSError) {
        guard keyID.count <= Self.maxKeyIDLength else {
            throw .invalidInput("key id is longer than \(Self.maxKeyIDLength) bytes")
        }
        self.provider = provider
        self.keyName = keyName
        self.version = version
        self.keyID = keyID
    }

    /// `format, provider, name length, name, version (u32), key id length, key id`: the first bytes of the envelope.
    public var encoded: [UInt8] {
        var out: [UInt8] = [Self.formatV1, provider.rawValue, UInt8(keyName.rawValue.utf8.count)]
        out.reserveCapacity(8 + keyName.rawValue.utf8.count + keyID.count)
        out.append(contentsOf: keyName.rawValue.utf8)
        out.appendBigEndian(version.rawValue)
        out.append(UInt8(keyID.count))
        out.append(contentsOf: keyID)
        return out
    }

    /// The additional authenticated data of the AES-GCM wrap: the encoded header followed by the canonical encoding of
    /// the caller's context. A blob moved to another key, version or context fails authentication.
    public func additionalData(context: EncryptionContext) -> [UInt8] {
        encoded + context.canonicalEncoding
    }
}

/// A wrapped DEK, envelope format v1 (`docs/envelope-format.md`):
///
///     header (see EnvelopeHeader) | u8 IV length | IV | u16 ciphertext length | ciphertext ‖ 16-byte tag
///
/// All integers are big-endian. Parsing (`Envelope(parsing:)`) rejects every malformed input with
/// `KMSError.invalidInput` and never traps.
public struct Envelope: Sendable, Equatable {
    public static let minIVLength = 12
    public static let maxIVLength = 16
    public static let tagLength = 16
    /// The largest wrapped secret accepted: DEKs are 32 bytes; 4 KiB is what Vault transit clients may encrypt (as much as
    /// AWS KMS's Encrypt takes). An empty secret is allowed (transit encrypts empty plaintexts).
    public static let maxPlaintextLength = 4096
    public static let maxCiphertextLength = maxPlaintextLength + tagLength
    /// The largest possible v1 envelope.
    public static let maxLength = 3 + KeyName.maxLength + 4 + 1 + EnvelopeHeader.maxKeyIDLength + 1 + maxIVLength + 2
        + maxCiphertextLength

    public let header: EnvelopeHeader
    public let iv: [UInt8]
    /// Ciphertext followed by the 16-byte GCM tag.
    public let ciphertext: [UInt8]

    public init(header: EnvelopeHeader, iv: [UInt8], ciphertext: [UInt8]) throws(KMSError) {
        guard (Self.minIVLength...Self.maxIVLength).contains(iv.count) else {
            throw .invalidInput("IV length \(iv.count) is outside \(Self.minIVLength)...\(Self.maxIVLength)")
        }
        guard (Self.tagLength...Self.maxCiphertextLength).contains(ciphertext.count) else {
            throw .invalidInput("ciphertext length \(ciphertext.count) is outside \(Self.tagLength)...\(Self.maxCiphertextLength)")
        }
        self.header = header
        self.iv = iv
        self.ciphertext = ciphertext
    }

    /// The serialized envelope.
    public var bytes: [UInt8] {
        var out = header.encoded
        out.reserveCapacity(out.count + 3 + iv.count + ciphertext.count)
        out.append(UInt8(iv.count))
        out.append(contentsOf: iv)
        out.appendBigEndian(UInt16(ciphertext.count))
        out.append(contentsOf: ciphertext)
        return out
    }
}
