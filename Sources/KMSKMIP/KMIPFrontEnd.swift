import Foundation
public import KMIPTTLV
import KMSAudit
public import KMSCore
public import KMSService
import Synchronization

/// `kmip:`: who may use the KMIP listener and how its messages are bounded (docs/kmip.md).
public struct KMIPConfiguration: Sendable {
    /// Identity patterns (as in a key's `allow`) that may use KMIP at all.
    public var allow: [String] = []
    /// Identity patterns that may Get key material; the rest of `allow` may still Encrypt and Decrypt.
    public var export: [String] = []
    /// The kmsd key that wraps every managed object's key material in the state store.
    public var wrappingKey: KeyName?
    /// Objects shared beyond their owner: identities matching `identities` see and use (Locate, Get Attributes,
    /// Encrypt, Decrypt; Get with `export`) the objects of owners matching `owners` that have a Name starting with
    /// `namePrefix`. Only those owners may give an object a Name under the prefix; changes stay the owner's.
    public var grants: [Grant] = []
    /// How often the background job looks for objects to rewrap after the wrapping key rotated.
    public var rewrapInterval: Duration = .seconds(10)
    /// The most bytes, nesting and items one request message may have.
    public var limits = TTLVLimits(maxMessageBytes: 1 << 20, maxDepth: 16, maxItems: 16_384)
    /// The most bytes one response message may have, whatever the client's Maximum Response Size: a batch whose
    /// answers would be larger stops at the item that goes over and is answered with Response Too Large.
    public var maxResponseBytes = 1 << 20
    /// The most objects one owner may have (Create, Register and Re-key beyond it are refused).
    public var maxObjectsPerOwner = 10_000
    /// The most objects the Locate items of one message may read together (the caller's and those its grants share).
    public var maxLocateScan = 20_000
    /// Whether objects with the old seal (bound to their id only: stored before kmsd bound owner and names) are opened
    /// and resealed (`kmip.legacy_seals: open`, the default while upgrading), or refused (`refuse`, once the rewrap
    /// job has resealed every one).
    public var acceptLegacySeals = true

    public init() {}

    public struct Grant: Sendable, Equatable {
        public var identities: [String]
        public var owners: [String]
        public var namePrefix: String

        public init(identities: [String], owners: [String], namePrefix: String) {
            self.identities = identities
            self.owners = owners
            self.namePrefix = namePrefix
        }
    }
}

/// kmsd's KMIP front end: reads a request message, runs each of its batch items as one operation in its own audit
/// scope over the service layer (authentication by the connection's client certificate, `kmip.allow`, the rate limit,
/// the audit record), and writes the response message. It holds no connection state: the listener
/// (`KMIPListener`) hands it each message with the connection's peer. Safe to share.
public final class KMIPFrontEnd: Sendable {
    static let frontend = "kmip"

    public let service: KMSService
    private let state: Mutex<KMIPConfiguration>
    /// Seconds since 1970, for response time stamps (a test may fix it).
    let now: @Sendable () -> Int64

    public convenience init(service: KMSService, configuration: KMIPConfiguration) {
        self.init(service: service, configuration: configuration, now: { Int64(Date().timeIntervalSince1970) })
    }

    init(service: KMSService, configuration: KMIPConfiguration, now: @escaping @Sendable () -> Int64) {
        self.service = service
        self.state = Mutex(configuration)
        self.now = now
    }

    public var configuration: KMIPConfiguration { state.withLock { $0 } }

    /// Replaces the section for messages that start from now on (a reload).
    public func reload(_ configuration: KMIPConfiguration) { state.withLock { $0 = configuration } }

    /// The response to one request message (its bytes, as framed by the listener). Never throws: a message that
    /// does not decode or does not parse is answered with one failed batch item (`Invalid Message` or `Invalid
    /// Field`), and every batch item's failure is that item's result.
    public func respond(to bytes: [UInt8], peer: PeerCertificate?) async -> [UInt8] {
        let configuration = configuration
        let message: TTLVItem
        do {
            message = try TTLVDecoder.decode(bytes, limits: configuration.limits)
        } catch {
            service.events.record("kmip_malformed")
            return refusal(KMIPRequest.bestEffortVersion(nil),
                           KMIPFailure(error.isInvalidMessage ? .invalidMessage : .invalidField, error.description))
        }
        let request: KMIPRequest
        do {
            request = try KMIPRequest(message)
        } catch {
            service.events.record("kmip_malformed")
            return refusal(KMIPRequest.bestEffortVersion(message), error)
        }
        // kmsd's own bound on the answer, and the client's when it asked for less: a small request must not become a
        // huge answer (64 Get Attributes of a large object made 19 MB of a 6 KB request), nor its work go on past it.
        let responseLimit = min(configuration.maxResponseBytes, request.maximumResponseSize ?? Int.max)
        var responseBytes = 0
        var overLimit: Int?
        var results: [KMIPResult] = []
        var placeholder: String?
        let scanBudget = KMIPScanBudget(configuration.maxLocateScan)
        for item in request.items {
            let (outcome, admitted) = await perform(item, version: request.version, peer: peer, configuration: configuration,
                                                    placeholder: placeholder, scanBudget: scanBudget)
            let result = KMIPResult(operation: item.operation, id: item.id, outcome: outcome)
            results.append(result)
            // Counted as the batch goes, to stop before running items whose answers could not be sent; a message of
            // one item is measured once, when encoded below.
            if request.items.count > 1 {
                responseBytes += TTLVEncoder.encodedLength(result.item)
                if responseBytes > responseLimit {
                    overLimit = results.count - 1
                    break
                }
            }
            switch outcome {
            case .success(let payload):
                // The ID Placeholder: what Create, Register, Re-key and Locate (its first hit) return.
                if Self.setsPlaceholder.contains(item.operation) {
                    if case .textString(let id)? = payload?.first(where: { $0.tag == .uniqueIdentifier })?.value { placeholder = id } else { placeholder = nil }
                }
            case .failure:
                placeholder = nil
            }
            // A caller who was not admitted (no valid certificate, outside kmip.allow, over its rate) gets one answer
            // per message, whatever the batch asks: each further item would only add a refusal record.
            if case .failure = outcome, request.batchErrorContinuation == .stop || !admitted { break }
        }
        let whose = responseLimit < configuration.maxResponseBytes ? "the request allows" : "kmsd answers at most (kmip.max_response_bytes)"
        let tooLarge = KMIPFailure(.responseTooLarge, "the response would be over \(responseLimit) bytes; \(whose) \(responseLimit)")
        if let first = overLimit {
            // The items that ran before keep their answers (they fit, and a Create or Destroy among them took effect);
            // the one that went over and those never run say Response Too Large (a client matches answers to items).
            service.events.record("kmip_response_too_large")
            results = Array(results[..<first]) + request.items[first...].map { KMIPResult(operation: $0.operation, id: $0.id, outcome: .failure(tooLarge)) }
        }
        var response = TTLVEncoder.encode(KMIPResponse.message(request.version, results, now: now()))
        if response.count > responseLimit {
            if overLimit == nil { service.events.record("kmip_response_too_large") }
            results = request.items.map { KMIPResult(operation: $0.operation, id: $0.id, outcome: .failure(tooLarge)) }
            response = TTLVEncoder.encode(KMIPResponse.message(request.version, results, now: now()))
        }
        return response
    }

    /// A response with one failed batch item and no operation: the message could not be read.
    private func refusal(_ version: KMIPVersion, _ failure: KMIPFailure) -> [UInt8] {
        TTLVEncoder.encode(KMIPResponse.message(version, [KMIPResult(operation: nil, id: nil, outcome: .failure(failure))], now: now()))
    }

    /// One batch item as one audited operation: the caller is authenticated by the connection's certificate and must
    /// match `kmip.allow` before the operation sees its payload.
    private func perform(_ item: KMIPRequest.Item, version: KMIPVersion, peer: PeerCertificate?, configuration: KMIPConfiguration,
                         placeholder: String?, scanBudget: KMIPScanBudget) async -> (Result<[TTLVItem]?, KMIPFailure>, admitted: Bool) {
        var admitted = false
        do {
            let payload = try await service.audited(.keyAccess, item.operation.auditAction, frontend: Self.frontend) {
                let node = try service.authenticateNode(peer)
                guard node.identity.matches(any: configuration.allow) else {
                    service.events.record("forbidden")
                    throw KMIPFailure(.permissionDenied, "\(node.identity) may not use KMIP (kmip.allow)")
                }
                admitted = true
                let request = KMIPOperationRequest(operation: item.operation, version: version, node: node, payload: item.payload,
                                                   configuration: configuration, placeholder: placeholder, now: now(), scanBudget: scanBudget)
                return try await operate(request)
            }
            return (.success(payload), admitted)
        } catch {
            return (.failure(KMIPFailure.from(error)), admitted)
        }
    }

    /// The operations whose Unique Identifier becomes the ID Placeholder for the batch's next items.
    static let setsPlaceholder: Set<KMIPOperation> = [.create, .register, .reKey, .locate]

    /// Runs one operation for an authenticated, allowed caller; the Response Payload's fields. Throws a `KMIPFailure`,
    /// or a service error (the backend or the store unavailable) that the audit scope records as what it was.
    private func operate(_ request: KMIPOperationRequest) async throws -> [TTLVItem]? {
        // The parser let only values of the Operation enumeration through.
        guard let operation = Self.operations[request.operation], operation.since <= request.version else {
            throw KMIPFailure(.operationNotSupported, "kmsd does not offer \(request.operation) in KMIP \(request.version)")
        }
        let fields = try request.payload.map { (payload) throws(KMIPFailure) in try KMIPFields(payload) }
            ?? KMIPFields(children: [], in: "Request Payload")
        return try await operation.run(self, request, fields)
    }
}

/// What an operation is given: the batch item's operation and payload, the negotiated version, the caller.
struct KMIPOperationRequest {
    let operation: KMIPOperation
    let version: KMIPVersion
    let node: KMSService.Node
    let payload: TTLVItem?
    let configuration: KMIPConfiguration
    /// The ID Placeholder: the Unique Identifier an earlier item of the batch returned, for items that name none.
    let placeholder: String?
    /// Now, in seconds since 1970.
    let now: Int64

    /// The caller's identity as objects record their owner (`ClientIdentity.owner`: stable when a renewed
    /// certificate lists its names in another order).
    var identity: String { node.identity.owner }
    /// The name kmsd took for the owner before (the certificate's first name); objects owned under it are the
    /// caller's too, and move to `identity` at their first use.
    var legacyIdentity: String { node.identity.description }
    /// The owner names that are the caller's.
    var ownNames: [String] { identity == legacyIdentity ? [identity] : [identity, legacyIdentity] }
    /// What Locate items of this message may still look at (one budget for the whole batch).
    let scanBudget: KMIPScanBudget
}

/// How many objects the Locate items of one message may still read, shared by the message's items.
final class KMIPScanBudget: Sendable {
    private let remaining: Mutex<Int>
    let limit: Int

    init(_ limit: Int) {
        self.limit = limit
        remaining = Mutex(limit)
    }

    /// Takes `count` objects from the budget; false (and the budget spent) when fewer were left.
    func take(_ count: Int) -> Bool {
        remaining.withLock { remaining in
            remaining -= count
            return remaining >= 0
        }
    }

    /// What is left (never negative).
    var left: Int { max(0, remaining.withLock { $0 }) }
}

/// One operation kmsd offers over KMIP, from the version that introduced it.
struct KMIPOperationHandler: Sendable {
    let since: KMIPVersion
    let run: @Sendable (KMIPFrontEnd, KMIPOperationRequest, KMIPFields) async throws -> [TTLVItem]?
}

extension KMIPFrontEnd {
    /// Every operation kmsd offers, by Operation value. Query Operations answers from this table, so it never
    /// advertises an operation that is not here.
    static let operations: [KMIPOperation: KMIPOperationHandler] = [
        // KMIP 1.1 defined Discover Versions; it is answered in a 1.0 message too, since a client negotiates with it.
        .discoverVersions: KMIPOperationHandler(since: KMIPVersion(1, 0)) { frontEnd, request, fields in
            var fields = fields
            return try frontEnd.discoverVersions(request, &fields)
        },
        .query: KMIPOperationHandler(since: KMIPVersion(1, 0)) { frontEnd, request, fields in
            var fields = fields
            return try frontEnd.query(request, &fields)
        },
        .create: handler(KMIPVersion(1, 0)) { try await $0.create($1, &$2) },
        .register: handler(KMIPVersion(1, 0)) { try await $0.register($1, &$2) },
        .get: handler(KMIPVersion(1, 0)) { try await $0.get($1, &$2) },
        .getAttributes: handler(KMIPVersion(1, 0)) { try await $0.getAttributes($1, &$2) },
        .getAttributeList: handler(KMIPVersion(1, 0)) { try await $0.getAttributeList($1, &$2) },
        .addAttribute: handler(KMIPVersion(1, 0)) { try await $0.addAttribute($1, &$2) },
        .modifyAttribute: handler(KMIPVersion(1, 0)) { try await $0.modifyAttribute($1, &$2) },
        .deleteAttribute: handler(KMIPVersion(1, 0)) { try await $0.deleteAttribute($1, &$2) },
        .activate: handler(KMIPVersion(1, 0)) { try await $0.activate($1, &$2) },
        .revoke: handler(KMIPVersion(1, 0)) { try await $0.revoke($1, &$2) },
        .destroy: handler(KMIPVersion(1, 0)) { try await $0.destroy($1, &$2) },
        .reKey: handler(KMIPVersion(1, 0)) { try await $0.reKey($1, &$2) },
        .locate: handler(KMIPVersion(1, 0)) { try await $0.locate($1, &$2) },
        .encrypt: handler(KMIPVersion(1, 2)) { try await $0.encrypt($1, &$2) },
        .decrypt: handler(KMIPVersion(1, 2)) { try await $0.decrypt($1, &$2) },
    ]

    private static func handler(
        _ since: KMIPVersion, _ run: @escaping @Sendable (KMIPFrontEnd, KMIPOperationRequest, inout KMIPFields) async throws -> [TTLVItem]?
    ) -> KMIPOperationHandler {
        KMIPOperationHandler(since: since) { frontEnd, request, fields in
            var fields = fields
            return try await run(frontEnd, request, &fields)
        }
    }
}
