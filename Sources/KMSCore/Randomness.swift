/// The system's cryptographically secure generator, 64 bits per draw (one `getrandom` call each): a draw per byte
/// was 12 system calls for a GCM IV on every wrap.
public enum Randomness {
    /// Fills `buffer` with random bytes.
    public static func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        var generator = SystemRandomNumberGenerator()
        var offset = 0
        while offset < buffer.count {
            let word: UInt64 = generator.next()
            let count = min(8, buffer.count - offset)
            withUnsafeBytes(of: word) { bytes in
                for index in 0..<count { buffer[offset + index] = bytes[index] }
            }
            offset += count
        }
    }

    /// `count` random bytes.
    public static func bytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { fill($0) }
        return out
    }

    /// A bearer token: `prefix` and 32 random bytes in hex.
    public static func token(prefix: String) -> String {
        prefix + Hex.encode(bytes(32))
    }
}

extension Duration {
    /// Whole and fractional seconds.
    public var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
