public import Foundation

/// What the planner decided for one key at one instant.
public struct RotationPlan: Sendable, Equatable {
    public enum Trigger: String, Sendable, Codable {
        /// The latest version reached `created + period`.
        case period
        /// The latest version reached `max_wraps`.
        case usage
    }

    /// When a period rotation is due (nil without a period).
    public var periodDueAt: Date?
    /// When the advance notice starts (nil without `notice`).
    public var noticeAt: Date?
    /// Why the key must rotate now; nil when it need not.
    public var due: Trigger?
    /// Inside the notice window and not yet due.
    public var inNotice: Bool
    /// When wrapping with the latest version stops being allowed (`created + max_age`), if `max_age` is set.
    public var wrapDeadline: Date?
    /// Past `max_age`: wrapping with the latest version is refused until a rotation succeeds.
    public var wrapRefused: Bool
    /// The next rotation: now (when due) or the period due time; nil when only usage or a person will rotate it.
    public var nextRotationAt: Date?
    /// Why the next rotation will happen.
    public var nextTrigger: Trigger?
}

/// Decides when keys rotate. Pure: the same inputs give the same plan, so a restarted scheduler plans the same.
public enum RotationPlanner {
    /// - Parameters:
    ///   - latestCreatedAt: when the latest version was created (backend time, or kmsd's record of it).
    ///   - latestWraps: secrets wrapped with the latest version so far.
    public static func plan(_ policy: RotationPolicy, latestCreatedAt: Date, latestWraps: UInt64, now: Date) -> RotationPlan {
        let periodDueAt = policy.period.map { latestCreatedAt.addingTimeInterval($0) }
        let noticeAt: Date? = if let periodDueAt, let notice = policy.notice { periodDueAt.addingTimeInterval(-notice) } else { nil }
        let wrapDeadline = policy.maxAge.map { latestCreatedAt.addingTimeInterval($0) }
        let due: RotationPlan.Trigger? =
            if latestWraps >= policy.maxWraps { .usage }
            else if let periodDueAt, now >= periodDueAt { .period }
            else { nil }
        let inNotice = due == nil && noticeAt.map { now >= $0 } == true
        return RotationPlan(
            periodDueAt: periodDueAt, noticeAt: noticeAt, due: due, inNotice: inNotice, wrapDeadline: wrapDeadline,
            wrapRefused: wrapDeadline.map { now >= $0 } == true,
            nextRotationAt: due != nil ? now : periodDueAt,
            nextTrigger: due ?? (periodDueAt != nil ? .period : nil))
    }

    /// The wait before retry `attempt` (1, 2, …) after failed rotations: 5 s doubling up to 10 minutes.
    public static func retryDelay(afterFailures attempt: Int) -> TimeInterval {
        min(600, 5 * pow(2, Double(max(0, min(attempt - 1, 16)))))
    }
}
