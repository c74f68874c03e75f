import AsyncHTTPClient
import Foundation
public import KMSAPI
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL

/// A client of kmsd's API v1 over mutual TLS, for storage nodes and `kmsctl`.
///
/// Requests that kmsd answers 503 (backend unavailable) are retried with jittered backoff, up to `retries` times;
/// everything else is returned or thrown at once. Lifecycle: `shutdown()` when done.
public final class KMSClient: Sendable {
    public struct Configuration: Sendable {
        /// `https://kms.internal:8443`
        public var server: String
        /// PEM CA bundle that signed kmsd's certificate.
        public var caFile: String
        /// This client's certificate and key (PEM).
        public var certificateFile: String
        public var keyFile: String
        /// Admin token (`Authorization: Bearer`), for admin calls without an admin certificate.
        public var adminToken: String?
        public var timeout: Duration
        public var retries: Int
        /// Cache unwrapped DEKs in this process (off by default).
        public var cache: DEKCache.Limits?

        public init(server: String, caFile: String, certificateFile: String, keyFile: String, adminToken: String? = nil,
                    timeout: Duration = .seconds(10), retries: Int = 2, cache: DEKCache.Limits? = nil) {
            self.server = server.hasSuffix("/") ? String(server.dropLast()) : server
            self.caFile = caFile
            self.certificateFile = certificateFile
            self.keyFile = keyFile
            self.adminToken = adminToken
            self.timeout = timeout
            self.retries = retries
            self.cache = cache
        }
    }

    public let configuration: Configuration
    private let http: HTTPClient
    /// The DEK cache, when configured.
    public let cache: DEKCache?

    public init(_ configuration: Configuration) throws {
        self.configuration = configuration
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(configuration.caFile))
        tls.certificateChain = try NIOSSLCertificate.fromPEMFile(configuration.certificateFile).map { .certificate($0) }
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: configuration.keyFile, format: .pem))
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(tlsConfiguration: tls))
        cache = configuration.cache.map { DEKCache($0) }
    }

    public func shutdown() async {
        try? await http.shutdown()
    }

    // MARK: - Storage-node calls

    public func datakey(_ key: String, context: [String: String]? = nil) async throws -> DataKeyResponse {
        try await send("POST", KMSAPI.Path.datakey(key), DataKeyRequest(context: context))
    }

    /// Unwraps through kmsd, or from the DEK cache when it holds this envelope and context within its limits.
    public func unwrap(_ key: String, wrapped: String, context: [String: String]? = nil) async throws -> UnwrapResponse {
        if let cache, let (plaintext, version) = cache.lookup(key, wrapped, context) {
            return UnwrapResponse(key: key, version: version, plaintext: Data(plaintext).base64EncodedString())
        }
        let response: UnwrapResponse = try await send("POST", KMSAPI.Path.unwrap(key), UnwrapRequest(wrapped: wrapped, context: context))
        if let cache, var bytes = Data(base64Encoded: response.plaintext).map({ [UInt8]($0) }) {
            cache.store(key, wrapped, context, plaintext: bytes, version: response.version)
            bytes.withUnsafeMutableBytes { buffer in
                if let base = buffer.baseAddress { memset(base, 0, buffer.count) }
            }
        }
        return response
    }

    public func rewrap(_ key: String, wrapped: String, context: [String: String]? = nil) async throws -> RewrapResponse {
        try await send("POST", KMSAPI.Path.rewrap(key), RewrapRequest(wrapped: wrapped, context: context))
    }

    public func batchUnwrap(_ key: String, _ items: [UnwrapRequest]) async throws -> BatchUnwrapResponse {
        try await send("POST", KMSAPI.Path.batchUnwrap(key), BatchRequest(items: items))
    }

    // MARK: - Administration

    public func listKeys() async throws -> KeyListBody { try await send("GET", KMSAPI.Path.adminKeys, Optional<String>.none) }
    public func showKey(_ key: String) async throws -> KeyBody { try await send("GET", KMSAPI.Path.adminKey(key), Optional<String>.none) }
    public func createKey(_ key: String, provider: String? = nil) async throws -> KeyBody {
        try await send("POST", KMSAPI.Path.adminKeys, CreateKeyRequest(name: key, provider: provider))
    }
    public func rotate(_ key: String, reason: String? = nil, dryRun: Bool = false) async throws -> RotateResponse {
        try await send("POST", KMSAPI.Path.adminRotate(key), RotateRequest(reason: reason, dryRun: dryRun ? true : nil))
    }
    public func retire(_ key: String, version: UInt32, force: Bool = false) async throws -> KeyBody {
        try await send("POST", KMSAPI.Path.adminRetire(key, version), RetireRequest(force: force ? true : nil))
    }
    public func versions(_ key: String) async throws -> VersionsBody {
        try await send("GET", KMSAPI.Path.adminVersions(key), Optional<String>.none)
    }
    public func schedule() async throws -> ScheduleBody { try await send("GET", KMSAPI.Path.adminSchedule, Optional<String>.none) }
    public func status() async throws -> StatusBody { try await send("GET", KMSAPI.Path.adminStatus, Optional<String>.none) }

    // MARK: - Transport

    private func send<Body: Encodable, Reply: Decodable>(_ method: String, _ path: String, _ body: Body?) async throws -> Reply {
        var attempt = 0
        while true {
            attempt += 1
            var request = HTTPClientRequest(url: configuration.server + path)
            request.method = HTTPMethod(rawValue: method)
            request.headers.add(name: "Accept", value: "application/json")
            if let token = configuration.adminToken { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
            if let body, !(body is Optional<String>) {
                request.headers.add(name: "Content-Type", value: "application/json")
                request.body = .bytes(ByteBuffer(data: try JSONEncoder().encode(body)))
            }
            let response: HTTPClientResponse
            let bytes: ByteBuffer
            do {
                let seconds = configuration.timeout.components.seconds
                response = try await http.execute(request, timeout: .seconds(max(1, seconds)))
                bytes = try await response.body.collect(upTo: 8 << 20)
            } catch {
                if attempt <= configuration.retries {
                    try await backoff(attempt)
                    continue
                }
                throw KMSClientError(status: 0, code: "unreachable", message: "cannot reach kmsd at \(configuration.server): \(error)")
            }
            let status = Int(response.status.code)
            let data = Data(buffer: bytes)
            if (200..<300).contains(status) {
                do {
                    return try JSONDecoder().decode(Reply.self, from: data)
                } catch {
                    throw KMSClientError(status: status, code: "malformed_response", message: "kmsd's answer could not be read: \(error)")
                }
            }
            let detail = (try? JSONDecoder().decode(ErrorBody.self, from: data))?.error
            if status == 503 && attempt <= configuration.retries {
                try await backoff(attempt)
                continue
            }
            throw KMSClientError(status: status, code: detail?.code ?? "http_\(status)", message: detail?.message ?? "HTTP \(status)")
        }
    }

    private func backoff(_ attempt: Int) async throws {
        let base = 100.0 * Double(1 << min(attempt - 1, 5))
        try await Task.sleep(for: .milliseconds(Int64(base * Double.random(in: 0.5...1.0))))
    }
}

/// An error answer from kmsd (or no answer: status 0).
public struct KMSClientError: Error, Sendable, CustomStringConvertible {
    public let status: Int
    public let code: String
    public let message: String
    public var description: String { status == 0 ? message : "\(code) (HTTP \(status)): \(message)" }
}
