extension Envelope {
    /// Parses a v1 envelope. Every malformed input — empty, truncated at any field, oversized, an unknown format or
    /// provider, an invalid key name, version 0, an IV or ciphertext length out of range, trailing bytes — throws
    /// `KMSError.invalidInput` saying which field is wrong. Never traps, whatever the input.
    public init(parsing bytes: some Collection<UInt8>) throws(KMSError) {
        guard !bytes.isEmpty else { throw .invalidInput("wrapped key is empty") }
        guard bytes.count <= Self.maxLength else {
            throw .invalidInput("wrapped key is \(bytes.count) bytes; a v1 envelope is at most \(Self.maxLength)")
        }
        var reader = ByteReader(Array(bytes))
        let format = try reader.byte("format")
        guard format == EnvelopeHeader.formatV1 else {
            throw .invalidInput("wrapped key has unsupported format 0x\(String(format, radix: 16)); this kmsd reads format 0x01")
        }
        let providerByte = try reader.byte("provider")
        guard let provider = ProviderKind(rawValue: providerByte) else {
            throw .invalidInput("wrapped key names unknown provider kind 0x\(String(providerByte, radix: 16))")
        }
        let nameLength = Int(try reader.byte("key name length"))
        guard (1...KeyName.maxLength).contains(nameLength) else {
            throw .invalidInput("wrapped key has key name length \(nameLength); allowed 1...\(KeyName.maxLength)")
        }
        let nameBytes = try reader.bytes(nameLength, "key name")
        guard let nameString = String(validating: nameBytes, as: UTF8.self) else {
            throw .invalidInput("wrapped key's key name is not valid UTF-8")
        }
        let name: KeyName
        do {
            name = try KeyName(nameString)
        } catch {
            throw .invalidInput("wrapped key's key name is invalid: \(error.message)")
        }
        let versionNumber = try reader.uint32("key version")
        guard versionNumber >= 1 else { throw .invalidInput("wrapped key has key version 0") }
        let version = try KeyVersion(versionNumber)
        let keyIDLength = Int(try reader.byte("key id length"))
        guard keyIDLength <= EnvelopeHeader.maxKeyIDLength else {
            throw .invalidInput("wrapped key has key id length \(keyIDLength); allowed 0...\(EnvelopeHeader.maxKeyIDLength)")
        }
        let keyID = try reader.bytes(keyIDLength, "key id")
        let ivLength = Int(try reader.byte("IV length"))
        guard (Self.minIVLength...Self.maxIVLength).contains(ivLength) else {
            throw .invalidInput("wrapped key has IV length \(ivLength); allowed \(Self.minIVLength)...\(Self.maxIVLength)")
        }
        let iv = try reader.bytes(ivLength, "IV")
        let ciphertextLength = Int(try reader.uint16("ciphertext length"))
        guard (Self.tagLength...Self.maxCiphertextLength).contains(ciphertextLength) else {
            throw .invalidInput(
                "wrapped key has ciphertext length \(ciphertextLength); allowed \(Self.tagLength)...\(Self.maxCiphertextLength)")
        }
        let ciphertext = try reader.bytes(ciphertextLength, "ciphertext")
        guard reader.remaining == 0 else {
            throw .invalidInput("wrapped key has \(reader.remaining) unexpected bytes after the ciphertext")
        }
        self = try Envelope(
            header: try EnvelopeHeader(provider: provider, keyName: name, version: version, keyID: keyID),
            iv: iv, ciphertext: ciphertext)
    }
}

/// A bounds-checked cursor over bytes; every read names the field so a short input says where it ended.
private struct ByteReader {
    private let bytes: [UInt8]
    private var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { bytes.count - offset }

    mutating func bytes(_ count: Int, _ field: String) throws(KMSError) -> [UInt8] {
        guard count <= remaining else {
            throw .invalidInput("wrapped key is truncated: \(field) needs \(count) bytes, \(remaining) remain")
        }
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }

    mutating func byte(_ field: String) throws(KMSError) -> UInt8 {
        try bytes(1, field)[0]
    }

    mutating func uint16(_ field: String) throws(KMSError) -> UInt16 {
        let b = try bytes(2, field)
        return UInt16(b[0]) << 8 | UInt16(b[1])
    }

    mutating func uint32(_ field: String) throws(KMSError) -> UInt32 {
        let b = try bytes(4, field)
        return UInt32(b[0]) << 24 | UInt32(b[1]) << 16 | UInt32(b[2]) << 8 | UInt32(b[3])
    }
}

extension Envelope {
    /// Parses `bytes` and checks what every provider checks before it unwraps: the envelope was made by a `provider`
    /// key (`backend` names it for the message, "an HSM key") and for key `name`, not moved from another key.
    public init(parsing bytes: [UInt8], madeBy provider: ProviderKind, backend: String, for name: KeyName) throws(KMSError) {
        self = try Envelope(parsing: bytes)
        guard header.provider == provider else {
            throw KMSError.invalidInput("the wrapped key was made by the \(header.provider) provider, not by \(backend)")
        }
        guard header.keyName == name else {
            throw KMSError.invalidInput("the wrapped key belongs to key '\(header.keyName)', not '\(name)'")
        }
    }
}
