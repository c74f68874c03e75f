#if canImport(Glibc)
import Glibc
#endif

/// kms-load's command line. Every value is checked; a mistake is a usage error (exit 2), never a silent default.
struct LoadOptions {
    var host = "127.0.0.1"
    var port = 0
    /// The name the server certificate is checked against.
    var serverName = "localhost"
    var ca = ""
    var cert = ""
    var key = ""
    var connections = 16
    var seconds = 5.0
    /// Requests per second over all connections; 0 runs a closed loop.
    var rate = 0.0
    var method = "POST"
    var path = "/"
    var body: [UInt8] = []
    var threads = 1

    static let usage = """
        usage: kms-load --port P --ca CA.pem --cert CERT.pem --key KEY.pem [--host 127.0.0.1] [--server-name localhost]
                        [--connections 16] [--seconds 5] [--rate R (open loop, requests/s; default: closed loop)]
                        [--method POST] [--path /v1/keys/K/datakey] [--body-file FILE] [--threads 1]
        """

    struct UsageError: Error, CustomStringConvertible {
        let description: String
    }

    init(arguments: [String]) throws {
        var index = 0
        func value(_ name: String) throws -> String {
            index += 1
            guard index < arguments.count else { throw UsageError(description: "\(name) needs a value") }
            return arguments[index]
        }
        func number<T: LosslessStringConvertible & Comparable>(_ name: String, _ range: ClosedRange<T>) throws -> T {
            let text = try value(name)
            guard let parsed = T(text), range.contains(parsed) else {
                throw UsageError(description: "\(name) must be a number in \(range.lowerBound)…\(range.upperBound), not '\(text)'")
            }
            return parsed
        }
        while index < arguments.count {
            let name = arguments[index]
            switch name {
            case "--host": host = try value(name)
            case "--port": port = try number(name, 1...65535)
            case "--server-name": serverName = try value(name)
            case "--ca": ca = try value(name)
            case "--cert": cert = try value(name)
            case "--key": key = try value(name)
            case "--connections": connections = try number(name, 1...4096)
            case "--seconds": seconds = try number(name, 0.1...86_400)
            case "--rate": rate = try number(name, 0...10_000_000)
            case "--method": method = try value(name)
            case "--path": path = try value(name)
            case "--body-file": body = try Self.read(try value(name))
            case "--threads": threads = try number(name, 1...64)
            default: throw UsageError(description: "unknown option '\(name)'")
            }
            index += 1
        }
        guard port > 0 else { throw UsageError(description: "--port is required") }
        guard !ca.isEmpty, !cert.isEmpty, !key.isEmpty else { throw UsageError(description: "--ca, --cert and --key are required (mutual TLS)") }
        guard path.hasPrefix("/"), !path.contains(" "), !method.isEmpty, method.allSatisfy({ $0.isLetter }) else {
            throw UsageError(description: "--path must start with / and have no spaces; --method must be letters")
        }
    }

    /// The whole file, or a usage error naming it.
    static func read(_ path: String) throws -> [UInt8] {
        guard let file = fopen(path, "rb") else { throw UsageError(description: "cannot read \(path)") }
        defer { fclose(file) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65_536)
        while true {
            let count = fread(&chunk, 1, chunk.count, file)
            if count > 0 { bytes += chunk[0..<count] }
            if count < chunk.count { break }
            guard bytes.count <= 16 << 20 else { throw UsageError(description: "\(path) is larger than 16 MiB") }
        }
        guard ferror(file) == 0 else { throw UsageError(description: "cannot read \(path)") }
        return bytes
    }
}
