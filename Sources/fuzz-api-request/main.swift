// libFuzzer target: API request decoding as the server does it (strict JSON, then the fields' own validation: key
// names, encryption context, base64). See fuzz-envelope for how it is built and replayed.
import Foundation
import KMSAPI
import KMSCore
import FuzzSupport

let fuzzAPIRequest: FuzzTarget = { start, count in
    guard let start else { return 0 }
    let data = Data(UnsafeBufferPointer(start: start, count: count))
    if let request = try? StrictJSON.decode(DataKeyRequest.self, from: data) {
        _ = try? EncryptionContext(request.context ?? [:])
    }
    if let request = try? StrictJSON.decode(UnwrapRequest.self, from: data) {
        _ = try? EncryptionContext(request.context ?? [:])
        if let bytes = Data(base64Encoded: request.wrapped) { _ = try? Envelope(parsing: bytes) }
    }
    if let batch = try? StrictJSON.decode(BatchRequest.self, from: data) {
        for item in batch.items.prefix(BatchRequest.maxItems) { _ = try? EncryptionContext(item.context ?? [:]) }
    }
    if let request = try? StrictJSON.decode(CreateKeyRequest.self, from: data) {
        _ = try? KeyName(request.name)
    }
    _ = try? StrictJSON.decode(RotateRequest.self, from: data)
    _ = try? StrictJSON.decode(RetireRequest.self, from: data)
    return 0
}

/// libFuzzer's own `main` (linked under -sanitize=fuzzer) calls this.
@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt { fuzzAPIRequest(data, size) }

try fuzzMain(fuzzAPIRequest)
