public import Foundation
public import NIOSSL
import SwiftASN1
public import X509

/// Who is calling, from the verified client certificate: every URI SAN (e.g. a SPIFFE ID), every DNS SAN as
/// `dns:<name>`, and the subject common name as `CN=<name>`. Policies match patterns against all of them.
public struct ClientIdentity: Sendable, Equatable, CustomStringConvertible {
    public let names: [String]
    /// The certificate's serial number (big-endian, no leading zeros), for revocation checks.
    public let serial: [UInt8]
    /// The issuing CA's name: a CRL speaks only for certificates its issuer signed.
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

    /// The first URI SAN, else the first DNS SAN, else the CN: how the identity is shown in logs and audit.
    public var description: String { names.first ?? "<anonymous>" }

    public init(certificate: NIOSSLCertificate) throws {
        let parsed = try Certificate(derEncoded: try certificate.toDERBytes())
        var uris: [String] = []
        var dns: [String] = []
        if let names = try parsed.extensions.subjectAlternativeNames {
            for name in names {
                switch name {
                case .uniformResourceIdentifier(let uri): uris.append(uri)
                case .dnsName(let host): dns.append("dns:\(host)")
                default: break
                }
            }
        }
        var common: [String] = []
        for rdn in parsed.subject {
            for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
                common.append("CN=\(attribute.value)")
            }
        }
        names = uris + dns + common
        serial = Array(parsed.serialNumber.bytes.drop { $0 == 0 })
        issuer = parsed.issuer
        notBefore = parsed.notValidBefore
        notAfter = parsed.notValidAfter
    }

    /// True when any name matches any pattern. `*` matches any run of characters (including none); everything else
    /// is compared exactly.
    public func matches(any patterns: [String]) -> Bool {
        patterns.contains { pattern in names.contains { Self.glob(pattern, $0) } }
    }

    static func glob(_ pattern: String, _ text: String) -> Bool {
        let p = Array(pattern.utf8)
        let t = Array(text.utf8)
        var (pi, ti) = (0, 0)
        var star = -1
        var mark = 0
        while ti < t.count {
            if pi < p.count && p[pi] == UInt8(ascii: "*") {
                star = pi
                mark = ti
                pi += 1
            } else if pi < p.count && p[pi] == t[ti] {
                pi += 1
                ti += 1
            } else if star >= 0 {
                pi = star + 1
                mark += 1
                ti = mark
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == UInt8(ascii: "*") { pi += 1 }
        return pi == p.count
    }
}
