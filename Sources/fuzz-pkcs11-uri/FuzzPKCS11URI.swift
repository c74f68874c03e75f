// libFuzzer target: the PKCS#11 URI parser (RFC 7512). See fuzz-envelope for how it is built and replayed.
import PKCS11
import FuzzSupport

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPKCS11URI(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: start, count: count), as: UTF8.self)
    guard let uri = try? PKCS11URI(parsing: text) else { return 0 }
    // A parsed URI printed and parsed again is the same URI.
    let again = try? PKCS11URI(parsing: uri.description)
    precondition(again == uri, "URI round trip changed it")
    return 0
}

#if !FUZZING
@main
struct Replay {
    static func main() throws { try replayCorpus(fuzzPKCS11URI) }
}
#endif
