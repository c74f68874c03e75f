import Crypto
public import Foundation
import SwiftASN1
public import X509

/// A certificate revocation list (RFC 5280 `CertificateList`, DER or PEM), checked against the CA that signed it.
/// kmsd refuses requests from a client certificate whose serial number it lists.
///
/// Only what kmsd needs is read: the issuer's signature (ECDSA P-256/P-384 or RSA through swift-certificates' key
/// types is not needed here — the CA's key must be ECDSA P-256, as kmsd's dev PKI and most internal PKIs for mTLS
/// use; any other key type is reported as an error, never silently accepted), `nextUpdate`, and the revoked serials.
/// Revocation is matched by issuer and serial: the list speaks only for certificates its CA issued. Freshness: past
/// `nextUpdate` plus a grace, kmsd no longer trusts it to say a certificate of that CA is not revoked (`isStale`).
public struct RevocationList: Sendable {
    public let revokedSerials: Set<[UInt8]>
    /// The CA the list speaks for (the CRL's issuer name).
    public let issuer: DistinguishedName
    /// When the CA issued this list; a list older than the one in force is refused (rollback).
    public let thisUpdate: Date
    public let nextUpdate: Date?

    public struct ParseError: Error, CustomStringConvertible {
        public let description: String
    }

    /// Parses `data` (PEM `X509 CRL` or DER) and verifies its signature with one of `issuers`.
    public init(data: Data, issuers: [Certificate]) throws {
        var bytes = [UInt8](data)
        if let text = String(data: data, encoding: .utf8), text.contains("-----BEGIN X509 CRL-----") {
            let document = try PEMDocument(pemString: text)
            bytes = document.derBytes
        }
        let root = try DER.parse(bytes)
        guard case .constructed(let parts) = root.content else { throw ParseError(description: "the CRL is not a SEQUENCE") }
        var iterator = parts.makeIterator()
        guard let tbs = iterator.next(), let _ = iterator.next(), let signatureNode = iterator.next() else {
            throw ParseError(description: "the CRL lacks its signed part or signature")
        }
        let signatureBits = try ASN1BitString(derEncoded: signatureNode)
        let signed = Array(tbs.encodedBytes)
        let verified = issuers.contains { issuer in
            guard let key = P256.Signing.PublicKey(issuer.publicKey),
                  let signature = try? P256.Signing.ECDSASignature(derRepresentation: signatureBits.bytes)
            else { return false }
            return key.isValidSignature(signature, for: signed)
        }
        guard verified else { throw ParseError(description: "the CRL's signature does not verify with the client CA (ECDSA P-256)") }

        guard case .constructed(let fields) = tbs.content else { throw ParseError(description: "the CRL's tbsCertList is not a SEQUENCE") }
        var serials: Set<[UInt8]> = []
        var times: [Date] = []
        var leadingSequences: [ASN1Node] = []  // signature algorithm, issuer
        for node in fields {
            if node.identifier == .utcTime, let time = try? UTCTime(derEncoded: node) {
                times.append(Self.date(time.year, time.month, time.day, time.hours, time.minutes, time.seconds))
            } else if node.identifier == .generalizedTime, let time = try? GeneralizedTime(derEncoded: node) {
                times.append(Self.date(time.year, time.month, time.day, time.hours, time.minutes, time.seconds))
            } else if node.identifier == .sequence, times.isEmpty {
                leadingSequences.append(node)
            } else if node.identifier == .sequence, times.count >= 1, case .constructed(let entries) = node.content {
                for entry in entries {
                    guard case .constructed(let entryFields) = entry.content,
                          let serialNode = entryFields.first(where: { _ in true }), serialNode.identifier == .integer,
                          case .primitive(let serial) = serialNode.content
                    else { throw ParseError(description: "a revoked-certificate entry is malformed") }
                    serials.insert(Self.normalized(serial))
                }
            }
        }
        guard leadingSequences.count == 2, let issuer = try? DistinguishedName(derEncoded: leadingSequences[1]) else {
            throw ParseError(description: "the CRL's issuer name is missing or malformed")
        }
        guard let thisUpdate = times.first else { throw ParseError(description: "the CRL has no thisUpdate time") }
        self.issuer = issuer
        self.thisUpdate = thisUpdate
        revokedSerials = serials
        nextUpdate = times.count >= 2 ? times[1] : nil
    }

    /// Whether this list speaks for certificates issued by `issuer`.
    public func covers(issuer: DistinguishedName?) -> Bool { issuer == self.issuer }

    /// The certificate with this issuer and serial (big-endian, leading zeros dropped) is revoked.
    public func isRevoked(serial: [UInt8], issuer: DistinguishedName?) -> Bool {
        covers(issuer: issuer) && revokedSerials.contains(Self.normalized(serial[...]))
    }

    public func isRevoked(_ certificate: Certificate) -> Bool {
        isRevoked(serial: Array(certificate.serialNumber.bytes), issuer: certificate.issuer)
    }

    /// Past `nextUpdate` by more than `grace`: the CA promised a newer list by then, so this one no longer proves
    /// that a certificate is not revoked. A list without `nextUpdate` never goes stale.
    public func isStale(at now: Date, grace: Duration) -> Bool {
        guard let nextUpdate else { return false }
        return now > nextUpdate.addingTimeInterval(Double(grace.components.seconds))
    }

    /// Big-endian serial without leading zero bytes.
    static func normalized(_ bytes: ArraySlice<UInt8>) -> [UInt8] {
        Array(bytes.drop { $0 == 0 })
    }

    static func date(_ year: Int, _ month: Int, _ day: Int, _ hours: Int, _ minutes: Int, _ seconds: Int) -> Date {
        var components = DateComponents()
        (components.year, components.month, components.day) = (year, month, day)
        (components.hour, components.minute, components.second) = (hours, minutes, seconds)
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC") ?? .current
        return calendar.date(from: components) ?? .distantPast
    }
}
