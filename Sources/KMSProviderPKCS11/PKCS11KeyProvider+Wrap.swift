public import KMSCore
import PKCS11
import Synchronization

extension PKCS11KeyProvider {
    public func generateDataKey(_ name: KeyName, context: EncryptionContext, version: KeyVersion?) async throws -> DataKey {
        let cached = cachedRecord(name, version)
        let profile = configuration.profile
        return try await perform("generate a data key") { [self] session in
            let plaintext = try SecretBytes(count: DataKey.length) { try session.generateRandom(into: $0) }
            let (record, envelope) = try sealWithRetry(session, name, version: version, cached: cached) { record in
                try Self.seal(session, record, plaintext, context, profile)
            }
            return DataKey(key: name, version: record.version, plaintext: plaintext, wrapped: envelope.bytes)
        }
    }

    public func wrap(_ name: KeyName, plaintext: SecretBytes, context: EncryptionContext, version: KeyVersion?) async throws
        -> WrappedKey
    {
        guard (0...Envelope.maxPlaintextLength).contains(plaintext.count) else {
            throw KMSError.invalidInput("a wrapped secret must be 0 to \(Envelope.maxPlaintextLength) bytes")
        }
        let cached = cachedRecord(name, version)
        let profile = configuration.profile
        return try await perform("wrap a key") { [self] session in
            let (record, envelope) = try sealWithRetry(session, name, version: version, cached: cached) { record in
                try Self.seal(session, record, plaintext, context, profile)
            }
            return WrappedKey(key: name, version: record.version, wrapped: envelope.bytes)
        }
    }

    /// The catalog's active record for `version` (or the wrapping version) while it is fresh; otherwise the token is
    /// read (and a retired version refused) by `sealWithRetry`.
    private func cachedRecord(_ name: KeyName, _ version: KeyVersion?) -> KEKRecord? {
        let maxAge = configuration.catalogRefreshInterval
        return catalog.withLock { catalog in
            guard let version else { return catalog.wrappingRecord(name, now: .now, maxAge: maxAge) }
            return catalog.record(name, version, now: .now, maxAge: maxAge).flatMap { $0.state == .active ? $0 : nil }
        }
    }

    public func unwrap(_ name: KeyName, wrapped: [UInt8], context: EncryptionContext) async throws -> UnwrappedKey {
        let envelope = try Envelope(parsing: wrapped, madeBy: .pkcs11, backend: "an HSM key", for: name)
        let header = envelope.header
        let cached = catalog.withLock { $0.record(id: header.keyID) }
            .flatMap { $0.name == name && $0.version == header.version ? $0 : nil }
        let profile = configuration.profile
        return try await perform("unwrap a key") { [self] session in
            var record = try cached ?? locate(session, header)
            do {
                return UnwrappedKey(key: name, version: record.version, plaintext: try Self.open(session, record, envelope, context, profile))
            } catch let error as PKCS11Error where error.isHandleInvalid {
                // The object was destroyed or handles changed: look it up again once.
                catalog.withLock { $0.forget(id: header.keyID) }
                record = try locate(session, header)
                return UnwrappedKey(key: name, version: record.version, plaintext: try Self.open(session, record, envelope, context, profile))
            }
        }
    }

    /// Finds the KEK an envelope names, by `CKA_ID`, checking that its label matches the key and version.
    private func locate(_ session: PKCS11Session, _ header: EnvelopeHeader) throws -> KEKRecord {
        guard let record = try KEKStore.find(session, name: header.keyName, version: header.version, keyID: header.keyID) else {
            throw KMSError.notFound("\(header.version) of key '\(header.keyName)' does not exist (destroyed, or another token)")
        }
        catalog.withLock { $0.remember(record) }
        return record
    }

    /// Seals with the cached record if there is one; re-reads the key's versions from the token when there is none, or
    /// when the token says the cached handle is gone or no longer allowed to encrypt (another replica retired or
    /// destroyed it), and tries once more.
    private func sealWithRetry(
        _ session: PKCS11Session, _ name: KeyName, version: KeyVersion?, cached: KEKRecord?,
        _ seal: (KEKRecord) throws -> Envelope
    ) throws -> (KEKRecord, Envelope) {
        if let cached {
            do {
                return (cached, try seal(cached))
            } catch let error as PKCS11Error where error.isHandleInvalid || error.isKeyFunctionNotPermitted {
                // Fall through to a fresh read.
            }
        }
        let records = try reload(session, name)
        guard !records.isEmpty else { throw KMSError.notFound("key '\(name)' does not exist") }
        let record: KEKRecord
        if let version {
            guard let found = records.first(where: { $0.version == version }) else {
                throw KMSError.notFound("key '\(name)' has no version \(version.rawValue)")
            }
            guard found.state == .active else {
                throw KMSError.versionRetired("\(version) of key '\(name)' is retired: it unwraps but no longer wraps")
            }
            record = found
        } else {
            guard let found = records.last(where: { $0.state == .active }) else {
                throw KMSError.versionRetired("every version of key '\(name)' is retired; rotate it to wrap again")
            }
            record = found
        }
        return (record, try seal(record))
    }

    /// AES-256-GCM under the KEK, AAD = header + canonical context. The IV is 96 random bits from the system's CSPRNG,
    /// or chosen by the token when the profile says so.
    static func seal(
        _ session: PKCS11Session, _ record: KEKRecord, _ plaintext: SecretBytes, _ context: EncryptionContext,
        _ profile: HSMProfile
    ) throws -> Envelope {
        let header = try EnvelopeHeader(provider: .pkcs11, keyName: record.name, version: record.version, keyID: record.keyID)
        let aad = header.additionalData(context: context)
        var iv = profile.initialIV()
        let ciphertext = try plaintext.withUnsafeBytes {
            try session.encryptGCM(key: record.handle, iv: &iv, aad: aad, layout: profile.gcmLayout, plaintext: $0)
        }
        guard ciphertext.count == plaintext.count + Envelope.tagLength else {
            throw KMSError.internal("the HSM returned \(ciphertext.count) bytes of ciphertext; expected \(plaintext.count + Envelope.tagLength)")
        }
        if profile.ivSource == .token && iv.allSatisfy({ $0 == 0 }) {
            throw KMSError.internal("the HSM profile says the token chooses the IV, but it returned none")
        }
        return try Envelope(header: header, iv: iv, ciphertext: ciphertext)
    }

    /// Decrypts an envelope into wiped storage. Modules may insist on an output buffer as large as the ciphertext
    /// (SoftHSM does), so the decryption lands in a ciphertext-sized scratch secret and is copied to the exact size.
    static func open(
        _ session: PKCS11Session, _ record: KEKRecord, _ envelope: Envelope, _ context: EncryptionContext,
        _ profile: HSMProfile
    ) throws -> SecretBytes {
        let aad = envelope.header.additionalData(context: context)
        let expected = envelope.ciphertext.count - Envelope.tagLength
        var written = 0
        let scratch = try SecretBytes(count: envelope.ciphertext.count) { output in
            written = try session.decryptGCM(
                key: record.handle, iv: envelope.iv, aad: aad, layout: profile.gcmLayout, ciphertext: envelope.ciphertext, plaintext: output)
        }
        guard written == expected else {
            throw KMSError.internal("the HSM returned \(written) bytes of plaintext; expected \(expected)")
        }
        return scratch.withUnsafeBytes { source in
            SecretBytes(count: expected) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[0..<expected])) }
        }
    }
}
