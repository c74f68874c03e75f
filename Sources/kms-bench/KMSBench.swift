import ArgumentParser

@main
struct KMSBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kms-bench",
        abstract: "Measures kmsd against the raw limit of its backend, in one run on one token.",
        subcommands: [HSMBenchmark.self, EndToEndBenchmark.self, KMIPBenchmark.self, SoakBenchmark.self, ChaosBenchmark.self])
}
