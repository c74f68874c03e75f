import ArgumentParser
import Foundation
import KMSCore
import KMSProviderPKCS11
import KMSRotation
import KMSState
import KMSTestSupport
import PKCS11

/// `kms-bench hsm`: the raw PKCS#11 wrap and unwrap loops (each thread with its own session, no pool, no executor:
/// the limit) against `PKCS11KeyProvider` through its session pool, at the same concurrencies, on one SoftHSM token.
struct HSMBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hsm", abstract: "Raw PKCS#11 loop vs PKCS11KeyProvider on one SoftHSM token.")

    @Option(help: "Seconds per measurement (raw and provider each), split over the rounds.")
    var seconds: Double = 3

    @Option(help: "Rounds per measurement: raw and provider alternate, and the ratio reported is the median of the per-round ratios, so drift in the token's speed (SoftHSM's file locks, the machine) hits both sides alike.")
    var rounds: Int = 5

    @Option(parsing: .upToNextOption, help: "Concurrencies to measure.")
    var concurrency: [Int] = [1, 2, 8]

    @Option(help: "Provider pool sessions.")
    var sessions: Int = 8

    @Option(help: "PKCS#11 module (SoftHSM2 by default).")
    var module: String = SoftHSMToken.defaultModulePath

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func validate() throws {
        guard seconds > 0, rounds >= 1, !concurrency.isEmpty, concurrency.allSatisfy({ $0 >= 1 }), sessions >= 1 else {
            throw ValidationError("seconds, rounds, concurrency and sessions must be positive")
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

        // Usage counting as the daemon does it: TrackedProvider over the same provider, counters flushed every second
        // to a state store in a temporary directory.
        let storeDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("kms-bench-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: storeDirectory) }
        let rotation = RotationManager(
            keys: [.init(name: name, providerName: "hsm", provider: provider, policy: RotationPolicy())],
            store: try SQLiteStateStore(path: storeDirectory.appendingPathComponent("rotation.sqlite").path))
        try await rotation.start()
        let tracked = TrackedProvider(provider, manager: rotation)
        let flusher = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .seconds(1))
                await rotation.flush()
            }
        }
        defer { flusher.cancel() }

        var rows: [Row] = []
        let slice = seconds / Double(rounds)
        for n in concurrency {
            rows.append(try await compare("wrap (datakey)", n, slice) {
                try raw.measure(threads: n, seconds: slice, operation: .wrap)
            } provider: {
                try await measureProvider(tasks: n, seconds: slice) {
                    _ = try await provider.generateDataKey(name, context: context)
                }
            })
            rows.append(try await compare("unwrap", n, slice) {
                try raw.measure(threads: n, seconds: slice, operation: .unwrap)
            } provider: {
                try await measureProvider(tasks: n, seconds: slice) {
                    _ = try await provider.unwrap(name, wrapped: sample.wrapped, context: context)
                }
            })
            rows.append(try await compare("datakey counted", n, slice) {
                try await measureProvider(tasks: n, seconds: slice) {
                    _ = try await provider.generateDataKey(name, context: context)
                }
            } provider: {
                try await measureProvider(tasks: n, seconds: slice) {
                    _ = try await tracked.generateDataKey(name, context: context)
                }
            })
        }
        let stats = provider.poolStatistics
        await provider.shutdown()
        report(rows, stats)
    }

    /// Alternates raw and provider rounds; reports the median of each and the median of the per-round ratios.
    private func compare(
        _ operation: String, _ concurrency: Int, _ slice: Double, raw: () async throws -> Double,
        provider: () async throws -> Double
    ) async throws -> Row {
        var raws: [Double] = []
        var providers: [Double] = []
        for _ in 0..<rounds {
            raws.append(try await raw())
            providers.append(try await provider())
        }
        let ratios = zip(providers, raws).map { $0 / $1 }
        return Row(operation: operation, concurrency: concurrency, raw: median(raws), provider: median(providers),
                   ratio: median(ratios), ratioMin: ratios.min() ?? 0, ratioMax: ratios.max() ?? 0)
    }

    private func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return 0 }
        let middle = sorted.count / 2
        return sorted.count % 2 == 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
    }

    struct Row: Encodable {
        let operation: String
        let concurrency: Int
        let raw: Double
        let provider: Double
        let ratio: Double
        let ratioMin: Double
        let ratioMax: Double

        enum CodingKeys: String, CodingKey { case operation, concurrency, raw, provider, ratio, ratioMin, ratioMax }
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(operation, forKey: .operation)
            try container.encode(concurrency, forKey: .concurrency)
            try container.encode(raw.rounded(), forKey: .raw)
            try container.encode(provider.rounded(), forKey: .provider)
            try container.encode((ratio * 1000).rounded() / 1000, forKey: .ratio)
            try container.encode((ratioMin * 1000).rounded() / 1000, forKey: .ratioMin)
            try container.encode((ratioMax * 1000).rounded() / 1000, forKey: .ratioMax)
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
        print("kms-bench hsm: SoftHSM2 token, AES-256-GCM wrap of a 32-byte DEK, \(seconds) s per side in \(rounds) alternating rounds")
        print("raw = one session per thread calling PKCS#11 directly; provider = PKCS11KeyProvider, pool of \(sessions)")
        print("")
        print("ops/s are medians over the rounds; ratio = median of per-round provider/raw (range in brackets)")
        print("'datakey counted': raw = the provider alone, provider = the same with rotation usage counting (TrackedProvider)")
        print("")
        print(pad("operation", 16) + pad("conc", 6) + pad("raw ops/s", 12) + pad("provider ops/s", 16) + "ratio")
        for row in rows {
            print(pad(row.operation, 16) + pad("\(row.concurrency)", 6) + pad(String(format: "%.0f", row.raw), 12)
                + pad(String(format: "%.0f", row.provider), 16)
                + String(format: "%.2f  [%.2f–%.2f]", row.ratio, row.ratioMin, row.ratioMax))
        }
        print("")
        print("pool: sessions opened \(stats.sessionsOpened), high-water mark \(stats.highWaterMark), "
            + "overruns \(stats.deadlineOverruns), checkout timeouts \(stats.checkoutTimeouts)")
    }

    private func pad(_ text: String, _ width: Int) -> String {
        text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
    }
}
