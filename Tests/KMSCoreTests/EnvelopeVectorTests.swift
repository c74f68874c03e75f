import Crypto
import Foundation
import KMSCore
import Testing

/// Envelope v1 against known-answer vectors made by an independent implementation (`Vectors/generate.py`).
@Suite("Envelope v1 known-answer vectors")
struct EnvelopeVectorTests {
    struct Vectors: Decodable {
        struct Valid: Decodable {
            let description, provider, key: String
            let version: UInt32
            let key_id, kek, iv, dek, header, aad, envelope: String
            let context: [String: String]
        }
        struct Invalid: Decodable {
            let description, envelope, error: String
        }
        let valid: [Valid]
        let invalid: [Invalid]
    }

    static let vectors: Vectors = {
        do {
            guard let url = Bundle.module.url(forResource: "envelope-v1", withExtension: "json", subdirectory: "Vectors") else {
                throw CocoaError(.fileNoSuchFile)
            }
            return try JSONDecoder().decode(Vectors.self, from: Data(contentsOf: url))
        } catch {
            preconditionFailure("cannot read Vectors/envelope-v1.json: \(error)")
        }
    }()

    @Test func thereAreVectors() {
        #expect(Self.vectors.valid.count >= 4)
        #expect(Self.vectors.invalid.count >= 15)
    }

    @Test(arguments: vectors.valid.map(\.description))
    func sealsAndParsesLikeTheReference(_ description: String) throws {
        let v = try #require(Self.vectors.valid.first { $0.description == description })
        let provider: ProviderKind = switch v.provider {
        case "pkcs11": .pkcs11
        case "vault-transit": .vaultTransit
        default: .inMemory
        }
        let header = try EnvelopeHeader(provider: provider, keyName: try KeyName(v.key), version: try KeyVersion(v.version),
                                        keyID: hex(v.key_id))
        let context = try EncryptionContext(v.context)
        #expect(header.encoded == hex(v.header))
        #expect(header.additionalData(context: context) == hex(v.aad))

        // Sealing with the same KEK, IV and DEK gives the reference envelope byte for byte.
        let sealed = try AES.GCM.seal(hex(v.dek), using: SymmetricKey(data: hex(v.kek)),
                                      nonce: AES.GCM.Nonce(data: hex(v.iv)), authenticating: header.additionalData(context: context))
        let envelope = try Envelope(header: header, iv: hex(v.iv), ciphertext: Array(sealed.ciphertext) + Array(sealed.tag))
        #expect(envelope.bytes == hex(v.envelope))

        // Parsing the reference envelope gives back every field, and it opens.
        let parsed = try Envelope(parsing: hex(v.envelope))
        #expect(parsed == envelope)
        let box = try AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: parsed.iv), ciphertext: parsed.ciphertext.dropLast(16),
                                        tag: parsed.ciphertext.suffix(16))
        let opened = try AES.GCM.open(box, using: SymmetricKey(data: hex(v.kek)),
                                      authenticating: parsed.header.additionalData(context: context))
        #expect(Array(opened) == hex(v.dek))
    }

    @Test(arguments: vectors.invalid.map(\.description))
    func rejectsMalformedInputClearly(_ description: String) throws {
        let v = try #require(Self.vectors.invalid.first { $0.description == description })
        do {
            _ = try Envelope(parsing: hex(v.envelope))
            Issue.record("\(description): parsed")
        } catch {
            #expect(error.code == .invalidInput)
            #expect(error.message.contains(v.error), "\(description): \(error.message)")
        }
    }

    @Test func noInputTraps() throws {
        // Random inputs and every one-byte mutation and truncation of a valid envelope: parsing either succeeds or
        // throws invalidInput; it never traps.
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            let length = Int.random(in: 0...300, using: &generator)
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            do { _ = try Envelope(parsing: bytes) } catch { #expect(error.code == .invalidInput) }
        }
        let valid = hex(Self.vectors.valid[1].envelope)
        for index in valid.indices {
            for value: UInt8 in [0, 1, 0x7F, 0x80, 0xFF] {
                var mutated = valid
                mutated[index] = value
                do { _ = try Envelope(parsing: mutated) } catch { #expect(error.code == .invalidInput) }
            }
            do { _ = try Envelope(parsing: valid.prefix(index)) } catch { #expect(error.code == .invalidInput) }
        }
    }
}

func hex(_ string: String) -> [UInt8] {
    var bytes: [UInt8] = []
    var index = string.startIndex
    while index < string.endIndex {
        let next = string.index(index, offsetBy: 2)
        bytes.append(UInt8(string[index..<next], radix: 16) ?? 0)
        index = next
    }
    return bytes
}
