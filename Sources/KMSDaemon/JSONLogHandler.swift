import Foundation
public import Logging

/// `log_format: json`: one JSON object per line on standard error (through `LogOutput`) — `time`, `level`, `label`,
/// `message`, `source` and the metadata as strings. kmsd never puts secrets in log metadata; this handler adds nothing
/// of its own.
public struct JSONLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    let label: String
    let output: LogOutput

    public init(label: String, level: Logger.Level, output: LogOutput = .standardError) {
        self.label = label
        logLevel = level
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields: [String: String] = [:]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) { fields[key] = "\(value)" }
        let object: [String: Any] = [
            "time": Date().formatted(.iso8601.time(includingFractionalSeconds: true).year().month().day().dateSeparator(.dash)),
            "level": event.level.rawValue, "label": label, "message": "\(event.message)", "source": event.source,
            "metadata": fields,
        ]
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
        output.write([UInt8](data) + [0x0A])
    }
}
