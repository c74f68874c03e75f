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
