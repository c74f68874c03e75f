import Foundation
import KMSCore
#if canImport(Glibc)
import Glibc
#endif

/// The audit line, written by hand: the same JSON as `JSONEncoder` with sorted keys would produce, at a fraction of
/// the cost (the writer thread serializes every record on the request path's critical section).
extension AuditRecord {
    var jsonLine: [UInt8] {
        var out = JSONObjectWriter(capacity: 320)
        // Keys in sorted order: action, checkpoint, code, context_digest, detail, frontend, identity, items, key, outcomes, prev,
        // replica, result, seq, time, type, version.
        out.string("action", event.action)
        if let checkpoint {
            var nested = JSONObjectWriter(capacity: 160)
            nested.bool("closing", checkpoint.closing)
            nested.string("key_id", checkpoint.keyID)
            nested.number("records", checkpoint.records)
            nested.string("signature", checkpoint.signature)
            nested.number("v", checkpoint.version.map { UInt64(clamping: $0) })
            out.raw("checkpoint", nested.finish())
        }
        out.string("code", event.code)
        out.string("context_digest", event.contextDigest)
        out.string("detail", event.detail)
        out.string("frontend", event.frontend)
        out.string("identity", event.identity)
        out.number("items", event.items.map { UInt64(clamping: $0) })
        out.string("key", event.key)
        if let outcomes = event.outcomes {
            var list: [UInt8] = [UInt8(ascii: "[")]
            for (index, outcome) in outcomes.enumerated() {
                if index > 0 { list.append(UInt8(ascii: ",")) }
                // Keys in sorted order: code, context_digest, result, version.
                var item = JSONObjectWriter(capacity: 128)
                item.string("code", outcome.code)
                item.string("context_digest", outcome.contextDigest)
                item.string("result", outcome.result.rawValue)
                item.number("version", outcome.version.map(UInt64.init))
                list += item.finish()
            }
            list.append(UInt8(ascii: "]"))
            out.raw("outcomes", list)
        }
        out.string("prev", prev)
        out.string("replica", replica)
        out.string("result", event.result.rawValue)
        out.number("seq", seq)
        out.string("time", time)
        out.string("type", event.kind.rawValue)
        out.number("version", event.version.map(UInt64.init))
        return out.finish()
    }
}

/// RFC 3339 UTC with milliseconds (`2026-12-01T00:33:17.123Z`), without a formatter object.
enum AuditTime {
    static func now() -> String {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        var seconds = spec.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        let millis = Int(spec.tv_nsec / 1_000_000)
        let fraction = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(fraction)Z"
    }
}
