public import Foundation
public import X509

/// Who is calling, from the verified client certificate. Every name is typed by where it came from, and a pattern
/// matches only names of its own kind:
/// - `uri:<URI SAN>` (e.g. `uri:spiffe://prod/storage/db-1`),
/// - `dns:<DNS SAN>`,
/// - `cn:<subject common name>`.
/// So a URI SAN that reads `CN=security-x` is `uri:CN=security-x` and never matches the pattern `cn:security-*`.
///
/// With `tls.identity: spiffe` the identity is the certificate's one URI SAN (a SPIFFE ID) and nothing else; a
/// certificate with no URI SAN, several, or one that is not `spiffe://` is refused.
public struct ClientIdentity: Sendable, Equatable, CustomStringConvertible {
    /// How names are taken from a certificate (`tls.identity`).
    public enum Mode: String, Sendable {
        /// Every URI SAN, DNS SAN and common name, typed.
        case names
        /// Exactly one URI SAN, with the `spiffe` scheme.
        case spiffe
    }

    /// Why a certificate has no usable identity (`tls.identity: spiffe`).
    public struct Refusal: Error, CustomStringConvertible {
        public let description: String
    }

    /// The kinds of name, each with the characters that end one segment for `*` (`**` crosses them).
    public enum Kind: String, Sendable, CaseIterable {
        case uri, dns, cn

        var separators: Set<UInt8> {
            switch self {
            case .uri: [UInt8(ascii: "/")]
            case .dns: [UInt8(ascii: ".")]
            case .cn: [UInt8(ascii: "/"), UInt8(ascii: ".")]
            }
        }

        /// Splits `kind:value`; nil if the text does not start with a known kind.
        static func split(_ typed: String) -> (Kind, Substring)? {
            guard let colon = typed.firstIndex(of: ":"), let kind = Kind(rawValue: String(typed[..<colon])) else { return nil }
            return (kind, typed[typed.index(after: colon)...])
        }
    }

    /// Typed names (`uri:…`, `dns:…`, `cn:…`).
    public let names: [String]
    /// The certificate's serial number (big-endian, no leading zeros), for revocation checks.
    public let serial: [UInt8]
    /// The issuing CA's name: a CRL speaks only for certificates its issuer signed, and `admin.client_ca` admits
    /// only certificates its CAs issued.
    public let issuer: DistinguishedName?
    /// The certificate's validity period (checked on every request too: a TLS session resumed from a ticket skips
    /// the handshake's check).
    public let notBefore: Date
    public let notAfter: Date

    public init(names: [String], serial: [UInt8] = [], issuer: DistinguishedName? = nil, notBefore: Date = .distantPast,
                notAfter: Date = .distantFuture) {
        self.names = names
        self.serial = serial
        self.issuer = issuer
        self.notBefore = notBefore
        self.notAfter = notAfter
    }

    public func isValid(at date: Date) -> Bool { notBefore <= date && date <= notAfter }

    /// The name that owns what this identity makes (KMIP's managed objects), stable across certificate renewals that
    /// list the same names in another order: the least URI name (in byte order), else the least DNS name, else the
    /// common name. With `tls.identity: spiffe` it is the one SPIFFE ID.
    public var owner: String {
        for kind in ["uri:", "dns:", "cn:"] {
            if let least = names.filter({ $0.hasPrefix(kind) }).min(by: { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }) { return least }
        }
        return description
    }

    /// The first URI name, else the first DNS name, else the common name, typed: how the identity is shown in logs
    /// and audit records, in the same spelling as the patterns that match it.
    public var description: String { names.first ?? "<anonymous>" }

    /// The identity of a parsed certificate (the handshake has verified its chain).
    public init(certificate parsed: Certificate, mode: Mode = .names) throws {
        var uris: [String] = []
        var dns: [String] = []
        if let names = try parsed.extensions.subjectAlternativeNames {
            for name in names {
                switch name {
                case .uniformResourceIdentifier(let uri): uris.append(uri)
                case .dnsName(let host): dns.append(host)
                default: break
                }
            }
        }
        switch mode {
        case .names:
            var common: [String] = []
            for rdn in parsed.subject {
                for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
                    common.append("cn:\(attribute.value)")
                }
            }
            names = uris.map { "uri:\($0)" } + dns.map { "dns:\($0)" } + common
        case .spiffe:
            guard uris.count == 1, let uri = uris.first else {
                throw Refusal(description: "tls.identity is spiffe: the certificate must carry exactly one URI SAN, not \(uris.count)")
            }
            guard uri.lowercased().hasPrefix("spiffe://") else {
                throw Refusal(description: "tls.identity is spiffe: the certificate's URI SAN is not a spiffe:// ID")
            }
            names = ["uri:\(uri)"]
        }
        serial = Array(parsed.serialNumber.bytes.drop { $0 == 0 })
        issuer = parsed.issuer
        notBefore = parsed.notValidBefore
        notAfter = parsed.notValidAfter
    }

    /// True when any name matches any pattern of its own kind (see `matches(_:_:)`).
    public func matches(any patterns: [String]) -> Bool {
        patterns.contains { pattern in names.contains { Self.matches(pattern, $0) } }
    }

    /// `pattern` and `name` are both typed (`kind:value`) and of the same kind, and the value matches: `*` matches
    /// a run of characters within one segment (a URI path segment, a DNS label; for a CN, up to a `.` or `/`), `**`
    /// any run across segments, everything else exactly.
    public static func matches(_ pattern: String, _ name: String) -> Bool {
        guard let (patternKind, patternValue) = Kind.split(pattern), let (nameKind, nameValue) = Kind.split(name),
              patternKind == nameKind
        else { return false }
        return glob(Array(patternValue.utf8), Array(nameValue.utf8), separators: patternKind.separators)
    }

    /// A configured pattern in its typed spelling. The old spellings are still read: `CN=name` becomes `cn:name`, and
    /// a bare URI (`spiffe://…`, anything with `://`) becomes `uri:…`; `renamed` says so, for a deprecation warning.
    /// Nil when the text names no kind.
    public static func typedPattern(_ text: String) -> (pattern: String, renamed: Bool)? {
        if let (kind, value) = Kind.split(text), !value.isEmpty { return ("\(kind.rawValue):\(value)", false) }
        if text.hasPrefix("CN="), text.count > 3 { return ("cn:\(text.dropFirst(3))", true) }
        if text.contains("://") { return ("uri:\(text)", true) }
        return nil
    }

    private enum Token: Equatable {
        case byte(UInt8)
        case star
        case doubleStar
    }

    /// Whether `text` matches `pattern` (`*` within a segment, `**` across, `separators` end a segment).
    static func glob(_ pattern: [UInt8], _ text: [UInt8], separators: Set<UInt8>) -> Bool {
        // The usual patterns, in linear time without tables: an exact name, or one `*` within a segment.
        let stars = pattern.indices.filter { pattern[$0] == UInt8(ascii: "*") }
        if stars.isEmpty { return pattern == text }
        if stars.count == 1, let star = stars.first {
            let prefix = pattern[..<star]
            let suffix = pattern[(star + 1)...]
            guard text.count >= prefix.count + suffix.count, text.starts(with: prefix), text.reversed().starts(with: suffix.reversed()) else {
                return false
            }
            return !text[prefix.count..<(text.count - suffix.count)].contains { separators.contains($0) }
        }
        return globByTable(pattern, text, separators: separators)
    }

    /// Any pattern: dynamic programming over (pattern token, text position), linear in their product whatever the
    /// stars.
    static func globByTable(_ pattern: [UInt8], _ text: [UInt8], separators: Set<UInt8>) -> Bool {
        var tokens: [Token] = []
        var index = 0
        while index < pattern.count {
            if pattern[index] == UInt8(ascii: "*") {
                if index + 1 < pattern.count, pattern[index + 1] == UInt8(ascii: "*") {
                    tokens.append(.doubleStar)
                    index += 2
                    while index < pattern.count, pattern[index] == UInt8(ascii: "*") { index += 1 }
                } else {
                    tokens.append(.star)
                    index += 1
                }
            } else {
                tokens.append(.byte(pattern[index]))
                index += 1
            }
        }
        // next[j]: tokens[i+1...] match text[j...]; current[j]: tokens[i...] match text[j...]. Two rows, swapped
        // per token (every entry of `current` is written before it is read), so a match allocates twice, not once
        // per pattern character: it runs on every request.
        var next = [Bool](repeating: false, count: text.count + 1)
        next[text.count] = true
        var current = next
        for token in tokens.reversed() {
            for position in stride(from: text.count, through: 0, by: -1) {
                let more = position < text.count
                switch token {
                case .byte(let byte):
                    current[position] = more && text[position] == byte && next[position + 1]
                case .star:
                    current[position] = next[position] || (more && !separators.contains(text[position]) && current[position + 1])
                case .doubleStar:
                    current[position] = next[position] || (more && current[position + 1])
                }
            }
            swap(&next, &current)
        }
        return next[0]
    }
}
