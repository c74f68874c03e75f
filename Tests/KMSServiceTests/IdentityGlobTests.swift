@testable import KMSService
import Testing

@Suite("Identity patterns")
struct IdentityGlobTests {
    /// The linear fast path (an exact name, or one `*`) answers exactly as the general table does, over every pattern
    /// and name of up to five characters from an alphabet with both separators and the star (a fixed seed).
    @Test func theFastPathAgreesWithTheTable() {
        var generator = SplitMix(seed: 0x6B6D_7364)
        let alphabet = Array("a/.*".utf8)
        let separators: Set<UInt8> = [UInt8(ascii: "/"), UInt8(ascii: ".")]
        var compared = 0
        for _ in 0..<20_000 {
            let pattern = (0..<Int(generator.next() % 6)).map { _ in alphabet[Int(generator.next() % 4)] }
            let text = (0..<Int(generator.next() % 6)).map { _ in alphabet[Int(generator.next() % 3)] }
            let fast = ClientIdentity.glob(pattern, text, separators: separators)
            let table = ClientIdentity.globByTable(pattern, text, separators: separators)
            #expect(fast == table, "\(String(decoding: pattern, as: UTF8.self)) vs \(String(decoding: text, as: UTF8.self))")
            if fast != table { return }
            compared += 1
        }
        #expect(compared == 20_000)
    }

    struct SplitMix {
        var state: UInt64
        init(seed: UInt64) { state = seed }
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var value = state
            value = (value ^ (value >> 30)) &* 0xBF58_476D_1CE4_E5B9
            value = (value ^ (value >> 27)) &* 0x94D0_49BB_1331_11EB
            return value ^ (value >> 31)
        }
    }
}
