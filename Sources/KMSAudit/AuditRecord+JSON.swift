import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The audit line, written by hand: the same JSON as `JSONEncoder` with sorted keys would produce, at a fraction of
/// the cost (the writer thread serializes every record on the request path's critical section).
extension AuditRecord {
    var jsonLine: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(320)
        var first = true
        func key(_ name: String) {
            out.append(first ? UInt8(ascii: "{") : UInt8(ascii: ","))
            first = false
            Self.string(name, into: &out)
            out.append(UInt8(ascii: ":"))
        }
        func string(_ name: String, _ value: String?) {
            guard let value else { return }
            key(name)
            Self.string(value, into: &out)
        }
        func number(_ name: String, _ value: UInt64?) {
            guard let value else { return }
            key(name)
            out += Array(String(value).utf8)
        }
        // Keys in sorted order: action, checkpoint, code, context_digest, detail, identity, items, key, outcomes, prev,
        // result, seq, time, type, version.
        string("action", event.action)
        if let checkpoint {
            key("checkpoint")
            out += Array(#"{"closing":"#.utf8) + Array((checkpoint.closing ? "true" : "false").utf8)
            out += Array(#","key_id":"#.utf8)
            Self.string(checkpoint.keyID, into: &out)
            out += Array(#","records":\#(checkpoint.records),"signature":"#.utf8)
            Self.string(checkpoint.signature, into: &out)
            if let version = checkpoint.version { out += Array(#","v":\#(version)"#.utf8) }
            out.append(UInt8(ascii: "}"))
        }
        string("code", event.code)
        string("context_digest", event.contextDigest)
        string("detail", event.detail)
        string("identity", event.identity)
        if let items = event.items { number("items", UInt64(clamping: items)) }
        string("key", event.key)
        if let outcomes = event.outcomes {
            key("outcomes")
            out.append(UInt8(ascii: "["))
            for (index, outcome) in outcomes.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                // Keys in sorted order: code, context_digest, result, version.
                var fields: [(String, [UInt8])] = []
                func quoted(_ text: String) -> [UInt8] {
                    var bytes: [UInt8] = []
                    Self.string(text, into: &bytes)
                    return bytes
                }
                if let code = outcome.code { fields.append(("code", quoted(code))) }
                if let digest = outcome.contextDigest { fields.append(("context_digest", quoted(digest))) }
                fields.append(("result", quoted(outcome.result.rawValue)))
                if let version = outcome.version { fields.append(("version", Array(String(version).utf8))) }
                out.append(UInt8(ascii: "{"))
                for (position, field) in fields.enumerated() {
                    if position > 0 { out.append(UInt8(ascii: ",")) }
                    Self.string(field.0, into: &out)
                    out.append(UInt8(ascii: ":"))
                    out += field.1
                }
                out.append(UInt8(ascii: "}"))
            }
            out.append(UInt8(ascii: "]"))
        }
        string("prev", prev)
        string("result", event.result.rawValue)
        number("seq", seq)
        string("time", time)
        string("type", event.kind.rawValue)
        number("version", event.version.map(UInt64.init))
        out.append(UInt8(ascii: "}"))
        return out
    }

    /// A JSON string: quotes, backslashes and control characters escaped; everything else (including `/` and
    /// non-ASCII UTF-8) as is.
    static func string(_ text: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case 0x0A: out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case 0x0D: out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case 0x09: out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case 0x08: out += [UInt8(ascii: "\\"), UInt8(ascii: "b")]
            case 0x0C: out += [UInt8(ascii: "\\"), UInt8(ascii: "f")]
            case 0x00..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out += Array("\\u00".utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
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
