@testable import KMSService
import Testing

@Suite("Identity patterns")
struct IdentityGlobTests {
    /// Every string of up to `length` characters over `alphabet`.
    static func strings(_ alphabet: [UInt8], upTo length: Int) -> [[UInt8]] {
        var all: [[UInt8]] = [[]]
        var previous: [[UInt8]] = [[]]
        for _ in 0..<length {
            previous = previous.flatMap { prefix in alphabet.map { prefix + [$0] } }
            all += previous
        }
        return all
    }

    /// The linear fast path (an exact name, or one `*`) answers exactly as the general table does, over every pattern
    /// of up to four characters from an alphabet with both separators and the star, against every name of up to four
    /// characters from the same alphabet without the star.
    @Test func theFastPathAgreesWithTheTable() {
        let separators: Set<UInt8> = [UInt8(ascii: "/"), UInt8(ascii: ".")]
        let patterns = Self.strings(Array("a/.*".utf8), upTo: 4)
        let names = Self.strings(Array("a/.".utf8), upTo: 4)
        var disagreements: [String] = []
        for pattern in patterns {
            for name in names where ClientIdentity.glob(pattern, name, separators: separators)
                != ClientIdentity.globByTable(pattern, name, separators: separators)
            {
                disagreements.append("\(String(decoding: pattern, as: UTF8.self)) vs \(String(decoding: name, as: UTF8.self))")
            }
        }
        #expect(patterns.count == 341 && names.count == 121)
        #expect(disagreements.isEmpty, "\(disagreements.prefix(10))")
    }
}
