import Foundation
import KMSCore
import HTTPTypes
import Hummingbird
import HummingbirdCore
public import Logging
import HummingbirdTLS
import NIOCore
import NIOSSL
import VaultWire

/// vault-dev: an HTTP server that speaks the subset of Vault's API kmsd and its tests use (see
/// `shared/vault-transit-contract.md`): transit, tokens, AppRole, health, seal and unseal. For tests and development
/// only; it keeps key material in memory (and, when asked, in a state file), and listens on loopback by default.
public struct VaultDevServer: Sendable {
    public static let version = "1.17.0-vault-dev"

    public struct Configuration: Sendable {
        public var host: String
        /// 0 picks a free port; `run` reports the one chosen.
        public var port: Int
        public var rootToken: String
        public var unsealKey: String
        public var stateFile: String?
        /// PEM certificate chain and key: serve HTTPS.
        public var tlsCertificate: String?
        public var tlsKey: String?

        public init(
            host: String = "127.0.0.1", port: Int = 8200, rootToken: String? = nil, unsealKey: String? = nil,
            stateFile: String? = nil, tlsCertificate: String? = nil, tlsKey: String? = nil
        ) {
            self.host = host
            self.port = port
            self.rootToken = rootToken ?? "hvs.dev-" + UUID().uuidString.lowercased()
            self.unsealKey = unsealKey ?? Data((0..<32).map { _ in UInt8.random(in: 0...255) }).base64EncodedString()
            self.stateFile = stateFile
            self.tlsCertificate = tlsCertificate
            self.tlsKey = tlsKey
        }
    }

    public let configuration: Configuration
    private let core: VaultCore

    public init(_ configuration: Configuration) throws {
        self.configuration = configuration
        core = try VaultCore(rootToken: configuration.rootToken, unsealKey: configuration.unsealKey, stateFile: configuration.stateFile)
    }

    /// Serves until the task is cancelled (or SIGTERM/SIGINT when `gracefulShutdownSignals` is set). `onRunning` gets
    /// the bound port.
    public func run(logger: Logger = Logger(label: "vault-dev"), gracefulShutdownSignals: Bool = false,
                    onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) async throws {
        let server: HTTPServerBuilder
        if let certificate = configuration.tlsCertificate, let key = configuration.tlsKey {
            let chain = try NIOSSLCertificate.fromPEMFile(certificate).map { NIOSSLCertificateSource.certificate($0) }
            let tls = TLSConfiguration.makeServerConfiguration(
                certificateChain: chain, privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
            server = try .tls(.http1AcceptingList, tlsConfiguration: tls)
        } else {
            server = .http1AcceptingList
        }
        let app = Application(
            responder: Responder(core: core),
            server: server,
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: nil),
            onServerRunning: { channel in await onRunning(channel.localAddress?.port ?? 0) },
            logger: logger)
        if gracefulShutdownSignals {
            try await app.runService()
        } else {
            try await app.run()
        }
    }

    /// Turns HTTP requests into `VaultCore` calls and Vault-shaped responses.
    struct Responder: HTTPResponder {
        typealias Context = BasicRequestContext
        let core: VaultCore
        static let bodyLimit = 32 * 1024 * 1024

        func respond(to request: Request, context: BasicRequestContext) async throws -> Response {
            let isHead = request.method == .head
            do {
                var path = request.uri.path
                guard path.hasPrefix("/v1/") else { throw VaultError(404, "no handler for route \"\(path)\". route entry not found.") }
                path.removeFirst(4)
                var body: [UInt8] = []
                do {
                    let buffer = try await request.body.collect(upTo: Self.bodyLimit)
                    body = Array(buffer.readableBytesView)
                } catch {
                    throw VaultError(413, "http: request body too large")
                }
                var token = request.headers[HTTPField.Name("X-Vault-Token")!]
                if token == nil, let bearer = request.headers[.authorization], bearer.hasPrefix("Bearer ") {
                    token = String(bearer.dropFirst("Bearer ".count))
                }
                let reply = try await core.handle(VaultCore.Request(
                    method: request.method.rawValue, path: path, query: VaultRequestLine.query(request.uri.query), token: token,
                    body: body, contentType: request.headers[.contentType]))
                return Self.response(reply, head: isHead)
            } catch let error as VaultError {
                let (status, body) = error.rendered(head: isHead)
                return Self.json(status: status, body)
            }
        }

        static func response(_ reply: VaultReply, head: Bool) -> Response {
            if case .noContent = reply { return Response(status: .noContent, headers: [.cacheControl: "no-store"]) }
            let (status, body) = reply.rendered(head: head)
            return json(status: status, body)
        }

        static func json(status: Int, _ body: [UInt8]?) -> Response {
            let status = (100...599).contains(status) ? status : 500
            var headers: HTTPFields = [.contentType: "application/json", .cacheControl: "no-store"]
            guard let body else { return Response(status: .init(code: status), headers: headers) }
            headers[.contentLength] = String(body.count)
            return Response(status: .init(code: status), headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
        }
    }
}
