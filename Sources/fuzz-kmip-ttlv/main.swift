// libFuzzer target: the KMIP TTLV decoder. Built by ci/fuzz with -sanitize=fuzzer (FUZZING defined), libFuzzer drives
// it; in a normal build it replays the files named on its command line, so the committed corpus runs in ci/test.
import FuzzSupport
import KMIPTTLV

let limits = TTLVLimits(maxMessageBytes: 1 << 16, maxDepth: 16, maxItems: 4096)

let fuzzTTLV: FuzzTarget = { start, count in
    guard let start else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: start, count: count))
    // The stream framing must agree with the decoder: a message it frames at a length decodes from exactly that many
    // bytes or fails, and never reads past them.
    let framed = try? TTLVDecoder.messageLength(header: bytes.prefix(TTLVDecoder.headerLength), limits: limits)
    guard let item = try? TTLVDecoder.decode(bytes, limits: limits) else { return 0 }
    // Decoding is strict, so what decodes encodes back to the same bytes.
    precondition(TTLVEncoder.encode(item) == bytes, "TTLV round trip changed the bytes")
    if item.type == .structure, item.tag.isSpecified || item.tag.isExtension {
        precondition(framed == bytes.count, "the framing disagrees with the decoder about a message's length")
    }
    _ = item.description
    return 0
}

/// libFuzzer's own `main` (linked under -sanitize=fuzzer) calls this.
@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { fuzzTTLV(data, size) }

try fuzzMain(fuzzTTLV)
