import Foundation
import KMSTestSupport

/// `kms-bench e2e --frontend transit`: one kmsd (audit on, as `ci/dev` runs it) with its Vault transit listener, driven
/// by kms-load through both front ends in turn — kmsd's datakey and unwrap against transit's datakey and decrypt, the
/// same key and an equivalent context — so the transit front end's cost shows as a ratio measured in the same run.
extension EndToEndBenchmark {
    func compareTransit() async throws {
        let setup = try BenchSetup(kmsd: kmsd, sessions: sessions)
        defer { setup.remove() }
        let kmsd = try await setup.start(audit: true, name: "transit", pool: connections.max() ?? 1, transit: true)
        var measurements: [(native: Measurement, transit: Measurement)] = []
        do {
            // The same pair on both sides: transit's context maps to kmsd's `transit.context` (docs/transit-frontend.md).
            let context = Data("bench".utf8).base64EncodedString()
            let nativeDatakey = #"{"context":{"transit.context":"\#(context)"}}"#
            let transitDatakey = #"{"context":"\#(context)"}"#
            let (status, body) = try await kmsd.post(kmsd.node, "/v1/transit/datakey/wrapped/bench", transitDatakey, port: kmsd.transitPort)
            guard status == 200,
                  let ciphertext = ((try JSONSerialization.jsonObject(with: body) as? [String: Any])?["data"] as? [String: Any])?["ciphertext"] as? String
            else { throw FixtureError("the transit listener gave no data key (HTTP \(status))") }
            let envelope = String(ciphertext.drop { $0 != ":" }.dropFirst().drop { $0 != ":" }.dropFirst())
            let nativeUnwrap = #"{"wrapped":"\#(envelope)","context":{"transit.context":"\#(context)"}}"#
            let transitDecrypt = #"{"ciphertext":"\#(ciphertext)","context":"\#(context)"}"#
            for n in connections {
                measurements.append((
                    try measure("datakey", n, "api", kmsd, setup, "/v1/keys/bench/datakey", nativeDatakey),
                    try measure("datakey", n, "transit", kmsd, setup, "/v1/transit/datakey/plaintext/bench", transitDatakey, port: kmsd.transitPort)))
                measurements.append((
                    try measure("unwrap", n, "api", kmsd, setup, "/v1/keys/bench/unwrap", nativeUnwrap),
                    try measure("decrypt", n, "transit", kmsd, setup, "/v1/transit/decrypt/bench", transitDecrypt, port: kmsd.transitPort)))
            }
        } catch {
            await kmsd.stop()
            throw error
        }
        await kmsd.stop()
        if json {
            let rows = measurements.map { ["api": $0.native, "transit": $0.transit] }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            if let data = try? encoder.encode(rows) { print(String(decoding: data, as: UTF8.self)) }
            return
        }
        print("kms-bench e2e --frontend transit: one kmsd (audit on), kmsd's API and its Vault transit listener in turn,")
        print("\(seconds) s per measurement; cpu µs/req = kmsd's own CPU per answered request")
        print("")
        print(pad("operation", 18) + pad("conns", 7) + pad("api ops/s", 11) + pad("transit ops/s", 15) + pad("÷api", 7)
            + pad("api p99 ms", 12) + pad("transit p99 ms", 16) + pad("api cpu µs", 12) + pad("transit cpu µs", 16) + "errors")
        for (native, transit) in measurements {
            print(pad("\(native.operation) / \(transit.operation)", 18) + pad("\(native.connections)", 7)
                + pad(String(format: "%.0f", native.opsPerSecond), 11) + pad(String(format: "%.0f", transit.opsPerSecond), 15)
                + pad(String(format: "%.2f", native.opsPerSecond > 0 ? transit.opsPerSecond / native.opsPerSecond : 0), 7)
                + pad(String(format: "%.2f", native.p99Ms), 12) + pad(String(format: "%.2f", transit.p99Ms), 16)
                + pad(String(format: "%.0f", native.cpuMicrosPerRequest), 12) + pad(String(format: "%.0f", transit.cpuMicrosPerRequest), 16)
                + "\(native.errors + transit.errors)")
        }
    }
}
