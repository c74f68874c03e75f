import Foundation

/// The signature of a libFuzzer target (`LLVMFuzzerTestOneInput`).
public typealias FuzzTarget = @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt

#if FUZZING
@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: FuzzTarget
) -> CInt
#endif

/// The entry point of every fuzz executable. Built by ci/fuzz (`-sanitize=fuzzer -DFUZZING`), it hands the command
/// line to libFuzzer; in a normal build it replays the files (or directories) named on the command line — the
/// committed corpus as a regression test. A crash is a failure either way.
public func fuzzMain(_ target: FuzzTarget) throws {
    #if FUZZING
    var argc = CommandLine.argc
    var argv = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, target))
    #else
    try replayCorpus(target)
    #endif
}

func replayCorpus(_ target: FuzzTarget) throws {
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
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: file)))
        _ = bytes.withUnsafeBufferPointer { target($0.baseAddress, $0.count) }
    }
    print("replayed \(files.count) input(s)")
}
