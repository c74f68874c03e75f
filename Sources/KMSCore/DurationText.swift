public import Foundation

/// Durations in the configuration and on the command line: `500ms`, `30s`, `5m`, `1h`, `90d`, `2w`.
public enum DurationText {
    public static func parse(_ text: String) -> TimeInterval? {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600), ("d", 86400), ("w", 7 * 86400)]
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        for (suffix, factor) in units where trimmed.hasSuffix(suffix) {
            let number = trimmed.dropLast(suffix.count)
            // "ms" must not be read as minutes of "…m" followed by "s".
            if suffix == "s" && number.hasSuffix("m") { continue }
            guard let value = Double(number), value > 0, value.isFinite else { return nil }
            return value * factor
        }
        return nil
    }

    /// `90d`, `1h30m`-style rounding for tables: the two largest units.
    public static func format(_ seconds: TimeInterval) -> String {
        let negative = seconds < 0
        var rest = Int(abs(seconds).rounded())
        let units: [(String, Int)] = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)]
        var parts: [String] = []
        for (suffix, size) in units where rest >= size || (suffix == "s" && parts.isEmpty) {
            parts.append("\(rest / size)\(suffix)")
            rest %= size
            if parts.count == 2 { break }
        }
        return (negative ? "-" : "") + parts.joined()
    }
}
