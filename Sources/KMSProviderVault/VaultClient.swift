import AsyncHTTPClient
import Foundation
import KMSCore
import Logging
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL

/// A Vault response with its status and parsed JSON body.
struct VaultResponse: Sendable {
    let status: Int
    let body: [String: JSONValue]

    /// `errors` of an error body, joined.
    var errorText: String {
        guard case .array(let errors)? = body["errors"] else { return "" }
        return errors.compactMap(\.string).joined(separator: "; ")
    }

    var data: [String: JSONValue]? { body["data"]?.object }
    var auth: [String: JSONValue]? { body["auth"]?.object }
}

/// Why a request got no usable answer from Vault. Turned into `KMSError` by the provider; never contains a token.
enum VaultTransportError: Error, CustomStringConvertible {
    /// No connection, timeout, TLS failure: nothing reached Vault or nothing came back.
    case unreachable(String)
    /// The response could not be read as Vault's JSON.
    case malformed(String)

    var description: String {
        switch self {
        case .unreachable(let reason): "Vault is unreachable: \(reason)"
        case .malformed(let reason): "Vault sent a malformed response: \(reason)"
        }
    }
}

/// HTTP to Vault: one `HTTPClient`, JSON in and out, the token header, the namespace header, a timeout per request.
final class VaultClient: Sendable {
    let configuration: VaultProviderConfiguration
    private let http: HTTPClient
    static let maxResponseBytes = 4 * 1024 * 1024

    init(configuration: VaultProviderConfiguration) throws {
        self.configuration = configuration
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        if let file = configuration.caCertificateFile {
            do {
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(file))
            } catch {
                throw KMSError.invalidInput("cannot read the Vault CA bundle \(file): \(error)")
            }
        }
        var http = HTTPClient.Configuration(tlsConfiguration: tls)
        http.redirectConfiguration = .disallow
        http.timeout = .init(connect: .seconds(Int64(max(1, configuration.requestTimeout.components.seconds))))
        self.http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: http)
    }

    func shutdown() async {
        try? await http.shutdown()
    }

    /// Sends one request. Throws `VaultTransportError` when no well-formed answer came back; any HTTP status is a
    /// result.
    func send(_ method: HTTPMethod, _ path: String, token: String?, body: [String: JSONValue]? = nil) async throws -> VaultResponse {
        var request = HTTPClientRequest(url: "\(configuration.address)/v1/\(path)")
        request.method = method
        request.headers.add(name: "X-Vault-Request", value: "true")
        if let token { request.headers.add(name: "X-Vault-Token", value: token) }
        if let namespace = configuration.namespace { request.headers.add(name: "X-Vault-Namespace", value: namespace) }
        if let body {
            // Typed values written by kmsd's own JSON writer (`JSONValue.serialized`), not `[String: Any]` through
            // `JSONSerialization`: no bridging, and a value of the wrong type cannot get in.
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: JSONValue.object(body).serialized()))
        }
        let response: HTTPClientResponse
        let bytes: ByteBuffer
        let timeout = TimeAmount.nanoseconds(
            configuration.requestTimeout.components.seconds * 1_000_000_000
                + configuration.requestTimeout.components.attoseconds / 1_000_000_000)
        do {
            response = try await http.execute(request, timeout: timeout)
            bytes = try await response.body.collect(upTo: Self.maxResponseBytes)
        } catch let error as HTTPClientError where error == .deadlineExceeded {
            throw VaultTransportError.unreachable("no answer within \(configuration.requestTimeout)")
        } catch {
            throw VaultTransportError.unreachable(String(describing: error))
        }
        let status = Int(response.status.code)
        if bytes.readableBytes == 0 { return VaultResponse(status: status, body: [:]) }
        let contentType = response.headers.first(name: "Content-Type") ?? ""
        // A proxy or load balancer in front of Vault answering 5xx with HTML: a server error, not a malformed answer.
        if status >= 500 && !contentType.lowercased().hasPrefix("application/json") {
            return VaultResponse(status: status, body: [:])
        }
        guard contentType.lowercased().hasPrefix("application/json") else {
            throw VaultTransportError.malformed("HTTP \(status) with content type '\(contentType)', expected application/json")
        }
        guard let json = try? JSONDecoder().decode(JSONValue.self, from: Data(buffer: bytes)) else {
            throw VaultTransportError.malformed("HTTP \(status) with a body that is not valid JSON")
        }
        guard case .object(let object) = json else {
            throw VaultTransportError.malformed("HTTP \(status) with JSON that is not an object")
        }
        return VaultResponse(status: status, body: object)
    }
}
