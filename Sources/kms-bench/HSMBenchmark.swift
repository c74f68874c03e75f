import ArgumentParser
import Foundation
import KMSCore
import KMSProviderPKCS11
import KMSTestSupport
import PKCS11

/// `kms-bench hsm`: the raw PKCS#11 wrap and unwrap loops (each thread with its own session, no pool, no executor:
/// the limit) against `PKCS11KeyProvider` through its session pool, at the same concurrencies, on one SoftHSM token.
struct HSMBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hsm", abstract: "Raw PKCS#11 loop vs PKCS11KeyProvider on one SoftHSM token.")

    @Option(help: "Seconds per measurement.")
    var seconds: Double = 3

    @Option(parsing: .upToNextOption, help: "Concurrencies to measure.")
    var concurrency: [Int] = [1, 2, 8]

    @Option(help: "Provider pool sessions.")
    var sessions: Int = 8

    @Option(help: "PKCS#11 module (SoftHSM2 by default).")
    var module: String = SoftHSMToken.defaultModulePath

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func validate() throws {
        guard seconds > 0, !concurrency.isEmpty, concurrency.allSatisfy({ $0 >= 1 }), sessions >= 1 else {
            throw ValidationError("seconds, concurrency and sessions must be positive")
        }
    }

    func run() async throws {
        let token = try SoftHSMToken.create(modulePath: module)
        let provider = try await PKCS11KeyProvider.start(PKCS11ProviderConfiguration(
            modulePath: module, token: token.uri, pin: token.pin, profile: .softhsm2, maxSessions: sessions,
            callTimeout: .seconds(5)))
        let name = try KeyName("bench")
        _ = try await provider.createKey(name)
        let context: EncryptionContext = ["cluster": "bench", "table": "t"]
        let sample = try await provider.generateDataKey(name, context: context)
        let envelope = try Envelope(parsing: sample.wrapped)
        let raw = try RawLoop(token: token, envelope: envelope, context: context)

        var rows: [Row] = []
        for n in concurrency {
            let rawWrap = try raw.measure(threads: n, seconds: seconds, operation: .wrap)
            let providerWrap = try await measureProvider(tasks: n, seconds: seconds) {
                _ = try await provider.generateDataKey(name, context: context)
            }
            rows.append(Row(operation: "wrap (datakey)", concurrency: n, raw: rawWrap, provider: providerWrap))
            let rawUnwrap = try raw.measure(threads: n, seconds: seconds, operation: .unwrap)
            let providerUnwrap = try await measureProvider(tasks: n, seconds: seconds) {
                _ = try await provider.unwrap(name, wrapped: sample.wrapped, context: context)
            }
            rows.append(Row(operation: "unwrap", concurrency: n, raw: rawUnwrap, provider: providerUnwrap))
        }
        let stats = provider.poolStatistics
        await provider.shutdown()
        report(rows, stats)
    }

    struct Row: Encodable {
        let operation: String
        let concurrency: Int
        let raw: Double
        let provider: Double
        var ratio: Double { provider / raw }

        enum CodingKeys: String, CodingKey { case operation, concurrency, raw, provider, ratio }
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(operation, forKey: .operation)
            try container.encode(concurrency, forKey: .concurrency)
            try container.encode(raw.rounded(), forKey: .raw)
            try container.encode(provider.rounded(), forKey: .provider)
            try container.encode((ratio * 1000).rounded() / 1000, forKey: .ratio)
        }
    }

    private func measureProvider(tasks: Int, seconds: Double, _ operation: @escaping @Sendable () async throws -> Void) async throws -> Double {
        // Warm-up so the pool has its sessions.
        for _ in 0..<tasks { try await operation() }
        let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        let start = ContinuousClock.now
        let total = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<tasks {
                group.addTask {
                    var count = 0
                    while ContinuousClock.now < end {
                        try await operation()
                        count += 1
                    }
                    return count
                }
            }
            return try await group.reduce(0, +)
        }
        return Double(total) / (ContinuousClock.now - start).seconds
    }

    private func report(_ rows: [Row], _ stats: PoolStatistics) {
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            if let data = try? encoder.encode(rows) { print(String(decoding: data, as: UTF8.self)) }
            return
        }
        print("kms-bench hsm: SoftHSM2 token, AES-256-GCM wrap of a 32-byte DEK, \(seconds) s per measurement")
        print("raw = one session per thread calling PKCS#11 directly; provider = PKCS11KeyProvider, pool of \(sessions)")
        print("")
        print(pad("operation", 16) + pad("conc", 6) + pad("raw ops/s", 12) + pad("provider ops/s", 16) + "ratio")
        for row in rows {
            print(pad(row.operation, 16) + pad("\(row.concurrency)", 6) + pad(String(format: "%.0f", row.raw), 12)
                + pad(String(format: "%.0f", row.provider), 16) + String(format: "%.2f", row.ratio))
        }
        print("")
        print("pool: sessions opened \(stats.sessionsOpened), high-water mark \(stats.highWaterMark), "
            + "overruns \(stats.deadlineOverruns), checkout timeouts \(stats.checkoutTimeouts)")
    }

    private func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
