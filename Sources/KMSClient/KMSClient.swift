import AsyncHTTPClient
import Foundation
public import KMSAPI
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import NIOSSL
import Synchronization

/// A client of kmsd's API v1 over mutual TLS, for storage nodes and `kmsctl`.
///
/// It takes one kmsd endpoint or several (replicas sharing a state store) and spreads requests across those that
/// answer, in turn. An endpoint that cannot be reached or answers 503 is skipped for `downPeriod`. A request that is
/// safe to repeat (data keys, unwraps, rewraps, reads) and fails that way is tried again on the next endpoint (at
/// once, when there is one that is not skipped; otherwise after a jittered backoff), up to `retries` plus one attempt
/// per endpoint and within `deadline`. Creating, rotating and retiring keys are sent once: a lost connection or a 503
/// past kmsd's request deadline does not say the change was not made, and repeating it elsewhere could make it twice;
/// with several endpoints they go to the first that answers a liveness check. Everything else is returned or thrown
/// at once. Lifecycle: `shutdown()` when done.
public final class KMSClient: Sendable {
    public struct Configuration: Sendable {
        /// kmsd's endpoints, `https://kms-1.internal:8443` (at least one).
        public var servers: [String]
        /// The first endpoint.
        public var server: String { servers.first ?? "" }
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
        /// How long an endpoint that could not be reached or answered 503 is skipped.
        public var downPeriod: Duration
        /// The longest one call takes, retries and failover included.
        public var deadline: Duration

        /// `server` is one endpoint or several separated by commas (`https://kms-1:8443,https://kms-2:8443`).
        public init(server: String, caFile: String, certificateFile: String, keyFile: String, adminToken: String? = nil,
                    timeout: Duration = .seconds(10), retries: Int = 2, cache: DEKCache.Limits? = nil,
                    downPeriod: Duration = .seconds(5), deadline: Duration = .seconds(30)) {
            servers = server.split(separator: ",").map { item in
                let trimmed = item.trimmingCharacters(in: .whitespaces)
                return trimmed.hasSuffix("/") ? String(trimmed.dropLast()) : trimmed
            }.filter { !$0.isEmpty }
            self.caFile = caFile
            self.certificateFile = certificateFile
            self.keyFile = keyFile
            self.adminToken = adminToken
            self.timeout = timeout
            self.retries = retries
            self.cache = cache
            self.downPeriod = downPeriod
            self.deadline = deadline
        }
    }

    public let configuration: Configuration
    private let http: HTTPClient
    /// The DEK cache, when configured.
    public let cache: DEKCache?

    private let endpoints: Endpoints

    public init(_ configuration: Configuration) throws {
        guard !configuration.servers.isEmpty else {
            throw KMSClientError(status: 0, code: "no_server", message: "no kmsd endpoint given")
        }
        self.configuration = configuration
        endpoints = Endpoints(count: configuration.servers.count)
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
        try await send("POST", KMSAPI.Path.adminKeys, CreateKeyRequest(name: key, provider: provider), idempotent: false)
    }
    public func rotate(_ key: String, reason: String? = nil, dryRun: Bool = false) async throws -> RotateResponse {
        try await send("POST", KMSAPI.Path.adminRotate(key), RotateRequest(reason: reason, dryRun: dryRun ? true : nil), idempotent: dryRun)
    }
    public func retire(_ key: String, version: UInt32, force: Bool = false) async throws -> KeyBody {
        try await send("POST", KMSAPI.Path.adminRetire(key, version), RetireRequest(force: force ? true : nil), idempotent: false)
    }
    public func versions(_ key: String) async throws -> VersionsBody {
        try await send("GET", KMSAPI.Path.adminVersions(key), Optional<String>.none)
    }
    public func schedule() async throws -> ScheduleBody { try await send("GET", KMSAPI.Path.adminSchedule, Optional<String>.none) }
    public func status() async throws -> StatusBody { try await send("GET", KMSAPI.Path.adminStatus, Optional<String>.none) }

    /// KMIP managed objects, a page at a time (`after`: the previous page's `next`).
    public func listObjects(after: String? = nil, limit: Int = 100) async throws -> ManagedObjectListBody {
        var path = KMSAPI.Path.adminObjects + "?limit=\(limit)"
        if let after, let escaped = after.addingPercentEncoding(withAllowedCharacters: .alphanumerics) { path += "&after=" + escaped }
        return try await send("GET", path, Optional<String>.none)
    }
    public func showObject(_ id: String) async throws -> ManagedObjectBody {
        try await send("GET", KMSAPI.Path.adminObject(Self.pathSegment(id)), Optional<String>.none)
    }
    public func revokeObject(_ id: String, reason: String, message: String? = nil) async throws -> ManagedObjectBody {
        try await send("POST", KMSAPI.Path.adminObjectRevoke(Self.pathSegment(id)), RevokeObjectRequest(reason: reason, message: message),
                       idempotent: false)
    }
    public func destroyObject(_ id: String) async throws -> ManagedObjectBody {
        try await send("POST", KMSAPI.Path.adminObjectDestroy(Self.pathSegment(id)), Optional<String>.none, idempotent: false)
    }

    static func pathSegment(_ text: String) -> String {
        text.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? text
    }

    // MARK: - Transport

    /// One call: an endpoint in turn, and on a lost connection (`idempotent` calls only) or a 503, the next one.
    private func send<Body: Encodable, Reply: Decodable>(_ method: String, _ path: String, _ body: Body?,
                                                       idempotent: Bool = true) async throws -> Reply {
        try await exchange(method, path, body, idempotent: idempotent).reply
    }

    /// `send`, and which endpoint answered.
    private func exchange<Body: Encodable, Reply: Decodable>(_ method: String, _ path: String, _ body: Body?,
                                                           idempotent: Bool) async throws -> (reply: Reply, endpoint: Int) {
        let began = ContinuousClock.now
        let attempts = idempotent ? configuration.retries + configuration.servers.count : 1
        // A change is sent once: to an endpoint that just answered (the liveness check fails over like any read).
        let target = idempotent || configuration.servers.count == 1 ? nil : try await liveEndpoint()
        var attempt = 0
        var failed: Int?
        while true {
            attempt += 1
            let (index, available) = target.map { ($0, true) } ?? endpoints.pick(avoiding: failed)
            if failed != nil, !available || index == failed { try await backoff(attempt - 1) }
            let server = configuration.servers[index]
            var request = HTTPClientRequest(url: server + path)
            request.method = HTTPMethod(rawValue: method)
            request.headers.add(name: "Accept", value: "application/json")
            if let token = configuration.adminToken { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
            if let body, !(body is Optional<String>) {
                request.headers.add(name: "Content-Type", value: "application/json")
                request.body = .bytes(ByteBuffer(data: try JSONEncoder().encode(body)))
            }
            let left = configuration.deadline - (ContinuousClock.now - began)
            let canRetry = attempt < attempts && left > .zero
            let response: HTTPClientResponse
            let bytes: ByteBuffer
            do {
                let timeout = max(.milliseconds(100), min(configuration.timeout, left))
                response = try await http.execute(request, timeout: .nanoseconds(Self.nanoseconds(timeout)))
                bytes = try await response.body.collect(upTo: 8 << 20)
            } catch {
                endpoints.markDown(index, for: configuration.downPeriod)
                if idempotent, canRetry {
                    failed = index
                    continue
                }
                throw KMSClientError(status: 0, code: "unreachable", message: "cannot reach kmsd at \(server): \(error)")
            }
            let status = Int(response.status.code)
            let data = Data(buffer: bytes)
            if (200..<300).contains(status) {
                endpoints.markUp(index)
                do {
                    return (try JSONDecoder().decode(Reply.self, from: data), index)
                } catch {
                    throw KMSClientError(status: status, code: "malformed_response", message: "kmsd's answer could not be read: \(error)")
                }
            }
            let detail = (try? JSONDecoder().decode(ErrorBody.self, from: data))?.error
            if status == 503 {
                endpoints.markDown(index, for: configuration.downPeriod)
                if idempotent, canRetry {
                    failed = index
                    continue
                }
            }
            throw KMSClientError(status: status, code: detail?.code ?? "http_\(status)", message: detail?.message ?? "HTTP \(status)")
        }
    }

    /// The endpoint that answers `GET /v1/health/live` first, trying them in turn (with failover).
    private func liveEndpoint() async throws -> Int {
        let (_, endpoint): (HealthBody, Int) = try await exchange("GET", KMSAPI.Path.live, Optional<String>.none, idempotent: true)
        return endpoint
    }

    private func backoff(_ attempt: Int) async throws {
        let base = 100.0 * Double(1 << min(attempt - 1, 5))
        try await Task.sleep(for: .milliseconds(Int64(base * Double.random(in: 0.5...1.0))))
    }

    static func nanoseconds(_ duration: Duration) -> Int64 {
        let parts = duration.components
        return parts.seconds * 1_000_000_000 + parts.attoseconds / 1_000_000_000
    }

    /// Which endpoint is next, and which are skipped until when.
    final class Endpoints: Sendable {
        private struct State {
            var next = 0
            var downUntil: [ContinuousClock.Instant?]
        }
        private let state: Mutex<State>

        init(count: Int) {
            state = Mutex(State(downUntil: Array(repeating: nil, count: count)))
        }

        /// The next endpoint in turn that is not skipped (and not `avoiding`, when another is available), or, when
        /// every one is skipped, the one skipped the shortest; whether it was available.
        func pick(avoiding: Int?) -> (index: Int, available: Bool) {
            state.withLock { state in
                let now = ContinuousClock.now
                let count = state.downUntil.count
                for pass in [true, false] {
                    for offset in 0..<count {
                        let index = (state.next + offset) % count
                        guard state.downUntil[index].map({ $0 <= now }) ?? true else { continue }
                        if pass, index == avoiding, count > 1 { continue }
                        state.next = (index + 1) % count
                        return (index, true)
                    }
                }
                let soonest = state.downUntil.indices.min { (state.downUntil[$0] ?? now) < (state.downUntil[$1] ?? now) } ?? 0
                return (soonest, false)
            }
        }

        func markDown(_ index: Int, for period: Duration) {
            state.withLock { $0.downUntil[index] = ContinuousClock.now + period }
        }

        func markUp(_ index: Int) {
            state.withLock { $0.downUntil[index] = nil }
        }
    }
}

/// An error answer from kmsd (or no answer: status 0).
public struct KMSClientError: Error, Sendable, CustomStringConvertible {
    public let status: Int
    public let code: String
    public let message: String
    public var description: String { status == 0 ? message : "\(code) (HTTP \(status)): \(message)" }
}
