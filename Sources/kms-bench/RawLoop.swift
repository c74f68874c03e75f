import Foundation
import KMSCore
import KMSTestSupport
import PKCS11

/// The raw limit: each thread opens its own session and calls PKCS#11 in a tight loop, doing the same cryptographic
/// work as the provider (32 random bytes from the token, a random 96-bit IV, AES-256-GCM with the same AAD), with no
/// pool, executor, catalog or envelope parsing in between.
struct RawLoop: Sendable {
    enum Operation: Sendable { case wrap, unwrap }

    let token: SoftHSMToken
    let key: ObjectHandle
    let aad: [UInt8]
    let envelope: Envelope

    init(token: SoftHSMToken, envelope: Envelope, context: EncryptionContext) throws {
        self.token = token
        self.envelope = envelope
        aad = envelope.header.additionalData(context: context)
        let session = try token.module.openSession(token.slot)
        defer { try? session.close() }
        guard let handle = try session.findObjects([.class(.secretKey), .id(envelope.header.keyID)]).first else {
            throw FixtureError("benchmark KEK not found")
        }
        key = handle
    }

    /// Operations per second over `seconds`, summed over `threads` threads.
    func measure(threads: Int, seconds: Double, operation: Operation) throws -> Double {
        let sessions = try (0..<threads).map { _ in try token.module.openSession(token.slot) }
        defer { for session in sessions { try? session.close() } }
        let counts = Counts(threads)
        let group = DispatchGroup()
        let deadline = Date().addingTimeInterval(seconds)
        let start = Date()
        for (index, session) in sessions.enumerated() {
            group.enter()
            Thread.detachNewThread { [self] in
                var count = 0
                do {
                    while Date() < deadline {
                        try once(session, operation)
                        count += 1
                    }
                } catch {
                    counts.fail("\(error)")
                }
                counts.set(index, count)
                group.leave()
            }
        }
        group.wait()
        if let failure = counts.failure { throw FixtureError("raw loop failed: \(failure)") }
        return Double(counts.total) / Date().timeIntervalSince(start)
    }

    private func once(_ session: PKCS11Session, _ operation: Operation) throws {
        switch operation {
        case .wrap:
            var dek = [UInt8](repeating: 0, count: 32)
            try dek.withUnsafeMutableBytes { try session.generateRandom(into: $0) }
            var iv = [UInt8](repeating: 0, count: 12)
            iv.withUnsafeMutableBytes { Randomness.fill($0) }
            var out = [UInt8](repeating: 0, count: 48)
            _ = try iv.withUnsafeMutableBytes { ivBuffer in
                try aad.withUnsafeBytes { aadBuffer in
                    try dek.withUnsafeBytes { input in
                        try out.withUnsafeMutableBytes { output in
                            try session.encryptGCM(key: key, iv: ivBuffer, aad: aadBuffer, layout: .v240, plaintext: input, ciphertext: output)
                        }
                    }
                }
            }
        case .unwrap:
            var out = [UInt8](repeating: 0, count: envelope.ciphertext.count)
            _ = try envelope.iv.withUnsafeBytes { ivBuffer in
                try aad.withUnsafeBytes { aadBuffer in
                    try envelope.ciphertext.withUnsafeBytes { input in
                        try out.withUnsafeMutableBytes { output in
                            try session.decryptGCM(key: key, iv: ivBuffer, aad: aadBuffer, layout: .v240, ciphertext: input, plaintext: output)
                        }
                    }
                }
            }
        }
    }
}

/// Per-thread counts.
private final class Counts: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Int]
    private(set) var failure: String?

    init(_ count: Int) { values = Array(repeating: 0, count: count) }
    func set(_ index: Int, _ value: Int) { lock.withLock { values[index] = value } }
    func fail(_ message: String) { lock.withLock { failure = message } }
    var total: Int { lock.withLock { values.reduce(0, +) } }
}
