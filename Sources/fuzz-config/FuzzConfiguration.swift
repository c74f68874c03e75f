// libFuzzer target: the configuration parser (YAML, then validation). See fuzz-envelope for how it is built and
// replayed. Paths in a fuzzed file resolve under a directory that does not exist, so nothing is read or written.
import Foundation
import KMSDaemon
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfiguration(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: start, count: count), as: UTF8.self)
    _ = try? Configuration.parse(yaml: text, source: "/nonexistent-kmsd-fuzz/kmsd.yaml")
    return 0
}

#if !FUZZING
@main
struct Replay {
    static func main() throws { try replayCorpus(fuzzConfiguration) }
}
#endif
