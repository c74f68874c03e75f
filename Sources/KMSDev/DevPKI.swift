import Crypto
public import Foundation
import SwiftASN1
import X509

/// A development PKI (ECDSA P-256): a CA, a server certificate for localhost, and client certificates for storage
/// nodes and an administrator. For `ci/dev` and tests only; production certificates come from the operator's PKI.
public struct DevPKI: Sendable {
    public struct Issued: Sendable {
        public let certificatePEM: String
        public let privateKeyPEM: String
    }

    public enum Subject: Sendable {
        case server(hosts: [String])
        /// A client with a URI SAN (e.g. a SPIFFE ID) and a common name.
        case client(uri: String?, commonName: String)
        /// A client with any number of URI and DNS SANs (tests of identity rules).
        case clientNames(uris: [String], dns: [String], commonName: String)
    }

    let caKey: P256.Signing.PrivateKey
    let caCertificate: Certificate
    public var caPEM: String { (try? caCertificate.serializeAsPEM().pemString) ?? "" }

    /// A new CA named `name`.
    public init(name: String = "kmsd development CA") throws {
        caKey = P256.Signing.PrivateKey()
        let subject = try DistinguishedName { CommonName(name) }
        let now = Date()
        caCertificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(caKey.publicKey),
            notValidBefore: now.addingTimeInterval(-300), notValidAfter: now.addingTimeInterval(10 * 365 * 86400),
            issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.isCertificateAuthority(maxPathLength: nil))
                Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            },
            issuerPrivateKey: .init(caKey))
    }

    /// Loads a CA written by `write(to:)`.
    public init(caCertificatePEM: String, caKeyPEM: String) throws {
        caCertificate = try Certificate(pemEncoded: caCertificatePEM)
        caKey = try P256.Signing.PrivateKey(pemRepresentation: caKeyPEM)
    }

    public var caKeyPEM: String { caKey.pemRepresentation }

    /// Issues a certificate valid from `notBefore` for `days`.
    public func issue(_ subject: Subject, notBefore: Date = Date().addingTimeInterval(-300), days: Double = 825) throws -> Issued {
        let key = P256.Signing.PrivateKey()
        let name: DistinguishedName
        var sans: [GeneralName] = []
        let usage: ExtendedKeyUsage
        switch subject {
        case .server(let hosts):
            name = try DistinguishedName { CommonName(hosts.first ?? "localhost") }
            for host in hosts {
                if let address = Self.ipv4(host) {
                    sans.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(address))))
                } else {
                    sans.append(.dnsName(host))
                }
            }
            usage = try ExtendedKeyUsage([.serverAuth])
        case .client(let uri, let commonName):
            name = try DistinguishedName { CommonName(commonName) }
            if let uri { sans.append(.uniformResourceIdentifier(uri)) }
            usage = try ExtendedKeyUsage([.clientAuth])
        case .clientNames(let uris, let dns, let commonName):
            name = try DistinguishedName { CommonName(commonName) }
            sans = uris.map { .uniformResourceIdentifier($0) } + dns.map { .dnsName($0) }
            usage = try ExtendedKeyUsage([.clientAuth])
        }
        let certificate = try Certificate(
            version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey), notValidBefore: notBefore,
            notValidAfter: notBefore.addingTimeInterval(days * 86400), issuer: caCertificate.subject, subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: try Certificate.Extensions {
                Critical(BasicConstraints.notCertificateAuthority)
                Critical(KeyUsage(digitalSignature: true))
                usage
                if !sans.isEmpty { SubjectAlternativeNames(sans) }
            },
            issuerPrivateKey: .init(caKey))
        return Issued(certificatePEM: try certificate.serializeAsPEM().pemString, privateKeyPEM: key.pemRepresentation)
    }

    /// A CRL (PEM) signed by this CA, listing `revoked` certificates (PEM), valid for a day.
    /// A CRL revoking `revoked` (PEM certificates), issued at `thisUpdate` (default a minute ago), next due at
    /// `nextUpdate` (default in a day).
    public func revocationList(revoking revoked: [String], thisUpdate: Date? = nil, nextUpdate: Date? = nil) throws -> String {
        let now = Date()
        func utc(_ date: Date) throws -> UTCTime {
            var calendar = Calendar(identifier: .gregorian)
            calendar.timeZone = TimeZone(identifier: "UTC") ?? .current
            let c = calendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: date)
            return try UTCTime(year: c.year ?? 2000, month: c.month ?? 1, day: c.day ?? 1, hours: c.hour ?? 0,
                               minutes: c.minute ?? 0, seconds: c.second ?? 0)
        }
        let serials = try revoked.map { try Certificate(pemEncoded: $0).serialNumber.bytes }
        let algorithm: ASN1ObjectIdentifier = [1, 2, 840, 10045, 4, 3, 2]  // ecdsa-with-SHA256
        var tbs = DER.Serializer()
        try tbs.appendConstructedNode(identifier: .sequence) { coder in
            try coder.serialize(1)  // v2
            try coder.appendConstructedNode(identifier: .sequence) { try $0.serialize(algorithm) }
            try coder.serialize(caCertificate.subject)
            try coder.serialize(try utc(thisUpdate ?? now.addingTimeInterval(-60)))
            try coder.serialize(try utc(nextUpdate ?? now.addingTimeInterval(86400)))
            if !serials.isEmpty {
                try coder.appendConstructedNode(identifier: .sequence) { list in
                    for serial in serials {
                        try list.appendConstructedNode(identifier: .sequence) { entry in
                            try entry.serialize(serial)
                            try entry.serialize(try utc(now.addingTimeInterval(-60)))
                        }
                    }
                }
            }
        }
        let signed = tbs.serializedBytes
        let signature = try caKey.signature(for: signed).derRepresentation
        var crl = DER.Serializer()
        try crl.appendConstructedNode(identifier: .sequence) { coder in
            coder.serializeRawBytes(signed)
            try coder.appendConstructedNode(identifier: .sequence) { try $0.serialize(algorithm) }
            try coder.serialize(ASN1BitString(bytes: ArraySlice(signature)))
        }
        return PEMDocument(type: "X509 CRL", derBytes: crl.serializedBytes).pemString
    }

    static func ipv4(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ".")
        guard parts.count == 4 else { return nil }
        let bytes = parts.compactMap { UInt8($0) }
        return bytes.count == 4 ? bytes : nil
    }

    /// Writes `name.pem` and `name-key.pem` (0600) into `directory`.
    public static func write(_ issued: Issued, name: String, to directory: URL) throws {
        try Data(issued.certificatePEM.utf8).write(to: directory.appendingPathComponent("\(name).pem"))
        let keyFile = directory.appendingPathComponent("\(name)-key.pem")
        try Data(issued.privateKeyPEM.utf8).write(to: keyFile)
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: keyFile.path)
    }
}
