public import Foundation

/// When a key rotates and what protects it while rotation fails (`keys.<name>.rotation` in the configuration).
///
/// Every field is optional except the usage bound: a key with no `period` rotates only by hand or by usage.
public struct RotationPolicy: Sendable, Equatable {
    /// AES-GCM with random 96-bit IVs stays within NIST SP 800-38D's collision bound below 2^32 encryptions per key;
    /// the default rotates at a quarter of that.
    public static let defaultMaxWraps: UInt64 = 1 << 30
    /// The ceiling `max_wraps` may be set to: 2^32 minus a margin for wraps in flight while a rotation runs.
    public static let maxWrapsCeiling: UInt64 = (1 << 32) - (1 << 24)
    public static let defaultRetireQuietPeriod: TimeInterval = 7 * 86400

    /// Rotate when the latest version is this old (due = created(latest) + period).
    public var period: TimeInterval?
    /// Warn this long before a period rotation is due.
    public var notice: TimeInterval?
    /// Rotate when the latest version has wrapped this many secrets.
    public var maxWraps: UInt64
    /// Past this age of the latest version, wrapping is refused until a rotation succeeds (unwrapping continues).
    public var maxAge: TimeInterval?
    /// `retire` refuses a version that unwrapped within this period, unless forced.
    public var retireQuietPeriod: TimeInterval

    public init(period: TimeInterval? = nil, notice: TimeInterval? = nil, maxWraps: UInt64 = RotationPolicy.defaultMaxWraps,
                maxAge: TimeInterval? = nil, retireQuietPeriod: TimeInterval = RotationPolicy.defaultRetireQuietPeriod) {
        self.period = period
        self.notice = notice
        self.maxWraps = maxWraps
        self.maxAge = maxAge
        self.retireQuietPeriod = retireQuietPeriod
    }

    /// Problems with the combination of fields, each naming its field (`notice`, `max_age`, …).
    public var problems: [String] {
        var problems: [String] = []
        if maxWraps == 0 || maxWraps > Self.maxWrapsCeiling {
            problems.append("max_wraps: must be between 1 and \(Self.maxWrapsCeiling) (AES-GCM's bound is 2^32 wraps per key)")
        }
        if let notice, let period, notice >= period { problems.append("notice: must be shorter than period") }
        if notice != nil && period == nil { problems.append("notice: needs a period") }
        if let maxAge, let period, maxAge <= period { problems.append("max_age: must be longer than period (it is the limit when rotation keeps failing)") }
        return problems
    }
}

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
