import Foundation

/// Runs a fuzz target over files (or every file in directories) given on the command line: the corpus as a
/// regression test, without libFuzzer. A crash is a failure, as it would be under the fuzzer.
public func replayCorpus(_ target: (UnsafePointer<UInt8>, Int) -> CInt) throws {
    var files: [String] = []
    for argument in CommandLine.arguments.dropFirst() {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: argument, isDirectory: &isDirectory) else {
            throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: argument])
        }
        if isDirectory.boolValue {
            let names = try FileManager.default.contentsOfDirectory(atPath: argument).sorted()
            files += names.map { URL(fileURLWithPath: argument).appendingPathComponent($0).path }
        } else {
            files.append(argument)
        }
    }
    for file in files {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file))) + [0]  // never an empty buffer
        _ = bytes.withUnsafeBufferPointer { buffer -> CInt in
            guard let base = buffer.baseAddress else { return 0 }
            return target(base, buffer.count - 1)
        }
    }
    print("replayed \(files.count) input(s)")
}
