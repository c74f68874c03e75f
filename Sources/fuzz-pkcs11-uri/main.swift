// libFuzzer target: the PKCS#11 URI parser (RFC 7512). See fuzz-envelope for how it is built and replayed.
import PKCS11
import FuzzSupport

let fuzzPKCS11URI: FuzzTarget = { start, count in
    guard let start else { return 0 }
    let text = String(decoding: UnsafeBufferPointer(start: start, count: count), as: UTF8.self)
    guard let uri = try? PKCS11URI(parsing: text) else { return 0 }
    // A parsed URI printed and parsed again is the same URI.
    let again = try? PKCS11URI(parsing: uri.description)
    precondition(again == uri, "URI round trip changed it")
    return 0
}

/// libFuzzer's own `main` (linked under -sanitize=fuzzer) calls this.
@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { fuzzPKCS11URI(data, size) }

try fuzzMain(fuzzPKCS11URI)
