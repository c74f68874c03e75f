// libFuzzer target: the envelope parser. Built by ci/fuzz with -sanitize=fuzzer (FUZZING defined); in a normal build
// it replays the files named on its command line, so the committed corpus runs in ci/test.
import KMSCore
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzEnvelope(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: start, count: count))
    guard let envelope = try? Envelope(parsing: bytes) else { return 0 }
    // What parses must serialize back to the same bytes.
    precondition(envelope.bytes == bytes, "envelope round trip changed the bytes")
    return 0
}

#if !FUZZING
@main
struct Replay {
    static func main() throws { try replayCorpus(fuzzEnvelope) }
}
#endif
