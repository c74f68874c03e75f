// kms-load: a lean HTTP/1.1 load generator over mutual TLS, for measuring kmsd alone (docs/performance.md).
//
// One event-loop thread by default, N keep-alive connections, each sending the same request: in a closed loop (the
// next request when the answer arrives) for S seconds, or in an open loop at a fixed total rate (latency measured
// from when each request was due, so a slow server cannot hide its queue). Prints one JSON object: requests, rate,
// latency percentiles (HdrHistogram, microseconds), status counts and errors. No Foundation and no HTTP client
// library on the request path: requests are prebuilt bytes, answers are parsed just enough (status line,
// Content-Length).
#if canImport(Glibc)
import Glibc
#endif

let options: LoadOptions
do {
    options = try LoadOptions(arguments: Array(CommandLine.arguments.dropFirst()))
} catch {
    printError("kms-load: \(error)\n\(LoadOptions.usage)\n")
    exit(2)
}
do {
    let report = try LoadRun(options).run()
    print(report.json)
    exit(report.completed > 0 ? 0 : 1)
} catch {
    printError("kms-load: \(error)\n")
    exit(1)
}

/// Writes to standard error (file descriptor 2).
func printError(_ text: String) {
    var text = text
    text.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}
