// libFuzzer target: the envelope parser. Built by ci/fuzz with -sanitize=fuzzer (FUZZING defined), libFuzzer drives it;
// in a normal build it replays the files named on its command line, so the committed corpus runs in ci/test.
import KMSCore
import FuzzSupport

let fuzzEnvelope: FuzzTarget = { start, count in
    guard let start else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: start, count: count))
    guard let envelope = try? Envelope(parsing: bytes) else { return 0 }
    // What parses must serialize back to the same bytes.
    precondition(envelope.bytes == bytes, "envelope round trip changed the bytes")
    return 0
}

/// libFuzzer's own `main` (linked under -sanitize=fuzzer) calls this.
@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { fuzzEnvelope(data, size) }

try fuzzMain(fuzzEnvelope)
