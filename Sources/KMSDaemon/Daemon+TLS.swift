import Foundation
import NIOCore
import KMSService
public import NIOSSL
import SwiftASN1
import X509

/// TLS and revocation: the server's TLS configuration, the CA bundles' certificates and subjects, and the CRL.
extension Daemon {
    /// The server's TLS: its certificate and key, client certificates from `client_ca` required (or optional), the
    /// configured minimum version.
    public static func tlsConfiguration(_ tls: Configuration.TLS, adminCA: String? = nil) throws -> TLSConfiguration {
        let chain = try NIOSSLCertificate.fromPEMFile(tls.certificate).map { NIOSSLCertificateSource.certificate($0) }
        var configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: chain, privateKey: .privateKey(try NIOSSLPrivateKey(file: tls.key, format: .pem)))
        // Admin certificates from `admin.client_ca` pass the handshake too; which CA issued a certificate is then
        // checked per request (`KMSServerPolicy.adminIssuers`, `nodeIssuers`).
        configuration.trustRoots = .certificates(
            try NIOSSLCertificate.fromPEMFile(tls.clientCA) + (try adminCA.map { try NIOSSLCertificate.fromPEMFile($0) } ?? []))
        configuration.certificateVerification = tls.clientAuth == .required ? .noHostnameVerification : .optionalVerification
        configuration.minimumTLSVersion = tls.minimumVersion == "1.3" ? .tlsv13 : .tlsv12
        configuration.cipherSuites = tls.ciphers
        // Closing a connection (idle timeout, maximum age) sends close_notify and waits for the peer's; a peer that
        // never answers holds its slot at most this long.
        configuration.shutdownTimeout = .seconds(1)
        return configuration
    }

    /// The transit listener's TLS: the API's, with client certificates accepted but not required (token clients).
    static func transitTLS(_ api: TLSConfiguration) -> TLSConfiguration {
        var configuration = api
        configuration.certificateVerification = .optionalVerification
        return configuration
    }

    /// The certificates of a PEM CA bundle (`key` names the setting in errors).
    static func certificates(_ path: String, key: String) throws -> [Certificate] {
        do {
            let text = try String(contentsOfFile: path, encoding: .utf8)
            return try PEMDocument.parseMultiple(pemString: text).map { try Certificate(derEncoded: $0.derBytes) }
        } catch {
            throw ConfigurationError(["\(key): cannot read the CA certificates in \(path): \(error)"])
        }
    }

    /// The CRL named by `tls.crl`, verified with the client CA; nil without one.
    static func revocation(_ tls: Configuration.TLS?) throws -> RevocationList? {
        guard let tls, let crl = tls.crl else { return nil }
        guard let data = FileManager.default.contents(atPath: crl) else { throw ConfigurationError(["tls.crl: cannot read \(crl)"]) }
        do {
            return try RevocationList(data: data, issuers: certificates(tls.clientCA, key: "tls.client_ca"))
        } catch {
            throw ConfigurationError(["tls.crl: \(error)"])
        }
    }
}
