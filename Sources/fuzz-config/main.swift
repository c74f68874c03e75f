// libFuzzer target: the configuration parser (YAML, then validation). See fuzz-envelope for how it is built and
// replayed. Paths in a fuzzed file resolve under a directory that does not exist, so nothing is read or written.
import Foundation
import KMSDaemon
import FuzzSupport

let fuzzConfiguration: FuzzTarget = { start, count in
    guard let start else { return 0 }
    let text = String(decoding: UnsafeBufferPointer(start: start, count: count), as: UTF8.self)
    _ = try? Configuration.parse(yaml: text, source: "/nonexistent-kmsd-fuzz/kmsd.yaml")
    return 0
}

/// libFuzzer's own `main` (linked under -sanitize=fuzzer) calls this.
@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { fuzzConfiguration(data, size) }

try fuzzMain(fuzzConfiguration)
