import Foundation
public import KMSAudit
public import KMSCore
public import KMSRotation
import KMSState
public import KMSService

/// The keys and identities the HSM-free tests use: two storage nodes (node 1 may use `orders`, node 2 `invoices`) and
/// an admin.
public enum TestIdentities {
    public static let orders = try! KeyName("orders")
    public static let invoices = try! KeyName("invoices")
    public static let node1 = ClientIdentity(names: ["uri:spiffe://test/storage/node-1"])
    public static let node2 = ClientIdentity(names: ["uri:spiffe://test/storage/node-2"])
    public static let admin = ClientIdentity(names: ["cn:security-admin"])
    public static let adminToken = "admin-token"
}

/// The service layer over an in-memory provider, for tests above the provider layer (the service, the routes, the
/// client): no HSM, its own directory for the state store and the audit log, so such tests run in parallel.
public struct InMemoryService: Sendable {
    public let provider: InMemoryKeyProvider
    public let policy: KMSServerPolicy
    public let rotation: RotationManager
    public let audit: AuditLog
    public let auditPath: String

    public static func make(maxWraps: UInt64 = 1_000_000, ratePerSecond: Double = 1000, burst: Int = 2000,
                            requestTimeout: Duration = .seconds(5), maxBodyBytes: Int = 64 * 1024) async throws -> InMemoryService {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("service-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let provider = InMemoryKeyProvider()
        let allowed = [TestIdentities.orders: "uri:spiffe://test/storage/node-1", TestIdentities.invoices: "uri:spiffe://test/storage/node-2"]
        for name in allowed.keys { _ = try await provider.createKey(name) }
        let rotation = RotationManager(
            keys: allowed.keys.map { .init(name: $0, providerName: "memory", provider: provider, policy: RotationPolicy(maxWraps: maxWraps)) },
            store: try SQLiteStateStore(path: directory.appendingPathComponent("rotation.sqlite").path))
        try await rotation.start()
        let auditPath = directory.appendingPathComponent("audit.jsonl").path
        // Checkpoints signed with a key in a file, so the log verifies as a production log does.
        let signingKey = directory.appendingPathComponent("audit-key.pem").path
        try FileAuditSigner.createIfMissing(path: signingKey)
        let audit = try AuditLog(.init(path: auditPath, failClosed: true, signer: try FileAuditSigner(path: signingKey)))
        let policy = KMSServerPolicy(
            keys: allowed.reduce(into: [:]) { keys, entry in
                keys[entry.key] = .init(name: entry.key, providerName: "memory", provider: TrackedProvider(provider, manager: rotation),
                                        allow: [entry.value])
            },
            providers: ["memory": provider], adminIdentities: ["cn:security-*"],
            adminTokenHashes: [KMSServerPolicy.hexDigest(TestIdentities.adminToken)],
            limits: .init(maxBodyBytes: maxBodyBytes, requestTimeout: requestTimeout, ratePerSecond: ratePerSecond, burst: burst),
            mode: "development")
        return InMemoryService(provider: provider, policy: policy, rotation: rotation, audit: audit, auditPath: auditPath)
    }

    /// The operations' audit records so far (checkpoints left out), waiting up to 2 s for at least `count`
    /// (refusals are submitted, not awaited); throws if fewer arrive.
    public func records(atLeast count: Int = 0) async throws -> [[String: Any]] {
        var records: [[String: Any]] = []
        let enough = try await eventually(within: .seconds(2)) {
            let text = (try? String(contentsOfFile: auditPath, encoding: .utf8)) ?? ""
            records = text.split(separator: "\n").compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
                .filter { $0["checkpoint"] == nil }
            return records.count >= count
        }
        guard enough else { throw KMSError.notFound("\(records.count) audit records, fewer than \(count)") }
        return records
    }
}
