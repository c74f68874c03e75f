public import Crypto
import Foundation

/// Lower-case hexadecimal text of bytes (digests, key ids). On the request path (the audit record's context digest),
/// so it writes into the string's storage directly rather than formatting byte by byte.
public enum Hex {
    private static let digits: [UInt8] = Array("0123456789abcdef".utf8)

    public static func encode(_ digest: some Digest) -> String {
        digest.withUnsafeBytes { encode($0) }
    }

    public static func encode<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> String {
        String(unsafeUninitializedCapacity: bytes.count * 2) { buffer in
            var index = 0
            for byte in bytes {
                buffer[index] = digits[Int(byte >> 4)]
                buffer[index + 1] = digits[Int(byte & 0x0F)]
                index += 2
            }
            return index
        }
    }
}
