import Foundation
import GRDB
import KMIPTTLV
import KMSCore
import KMSRotation
@testable import KMSKMIP
import KMSService
import KMSState
import KMSTestSupport
import Testing

/// What one allowed identity can make the KMIP front end do with small requests, and the bounds it meets: the size
/// of an answer, the objects a Locate reads, how many objects it may own.
@Suite("KMIP front end under abuse")
struct KMIPAbuseTests {
    static let owner = "uri:spiffe://test/storage/node-1"

    static func frontEnd(_ configure: (inout KMIPConfiguration) -> Void = { _ in }) async throws -> (KMIPFrontEnd, InMemoryService) {
        let base = try await InMemoryService.make()
        var configuration = KMIPConfiguration()
        configuration.allow = ["uri:spiffe://test/storage/*"]
        configuration.export = ["uri:spiffe://test/storage/*"]
        configuration.wrappingKey = TestIdentities.orders
        configure(&configuration)
        let service = KMSService(policy: base.policy, rotation: base.rotation, audit: base.audit)
        return (KMIPFrontEnd(service: service, configuration: configuration, now: { 1_700_000_000 }), base)
    }

    /// Stores an object description directly (Locate and Get Attributes read descriptions only).
    static func insert(_ base: InMemoryService, _ object: ManagedObject) async throws {
        try await base.rotation.store.insertManagedObject(ManagedObjectRecord(
            id: object.id, owner: object.owner, metadata: String(decoding: try JSONEncoder().encode(object), as: UTF8.self),
            material: nil, wrappingVersion: 0))
    }

    /// Stores many object descriptions in one transaction, straight into the store's SQLite file (one insert each
    /// through the store would be a transaction and its fsyncs each: seconds of disk for a test that needs a crowd).
    static func insertMany(_ base: InMemoryService, _ objects: [ManagedObject]) async throws {
        let store = try #require(base.rotation.store as? SQLiteStateStore)
        let queue = try DatabaseQueue(path: store.path)
        let rows = try objects.map { ($0.id, $0.owner, String(decoding: try JSONEncoder().encode($0), as: UTF8.self)) }
        try await queue.write { db in
            for (id, owner, metadata) in rows {
                try db.execute(sql: "INSERT INTO managed_objects (id, owner, metadata, material, wrapping_version, revision) VALUES (?, ?, ?, NULL, 0, 0)",
                               arguments: [id, owner, metadata])
            }
        }
        try queue.close()
    }

    /// 64 Get Attributes of an object as large as kmsd allows made a 19 MB answer of a 6 KB request; now the batch
    /// stops at kmsd's own limit (`kmip.max_response_bytes`, 1 MiB by default; 64 KiB here, with an object of 32 KB,
    /// to keep the test light), whatever the client's Maximum Response Size, and every item says Response Too Large.
    @Test func aSmallRequestCannotBecomeAHugeAnswer() async throws {
        let (frontEnd, base) = try await Self.frontEnd { $0.maxResponseBytes = 64 << 10 }
        var object = ManagedObject(id: "big", owner: Self.owner, type: .secretData, created: 100, materialLength: 16)
        object.names = (0..<KMIPAttributes.maxNames).map { "name-\($0)-" + String(repeating: "n", count: 200) }
        object.attributes = (0..<24).map { index in
            ManagedObject.Attribute(name: "x-big-\(index)", value: TTLVEncoder.encode(.text(.attributeValue, String(repeating: "a", count: 1000))))
        }
        try await Self.insert(base, object)
        let one = try KMIPFrontEndTests.parse(await frontEnd.respond(
            to: KMIPFrontEndTests.request([(0x0B, [.text(.uniqueIdentifier, "big")])]), peer: KMIPFrontEndTests.node))
        #expect(KMIPFrontEndTests.field(one.items[0], .resultStatus) == .enumeration(0), "one Get Attributes of the object is answered")

        let request = KMIPFrontEndTests.request(Array(repeating: (0x0B, [.text(.uniqueIdentifier, "big")]), count: 64))
        let answer = await frontEnd.respond(to: request, peer: KMIPFrontEndTests.node)
        #expect(answer.count <= 64 << 10, "a \(request.count)-byte request made a \(answer.count)-byte answer")

        let parsed = try KMIPFrontEndTests.parse(answer)
        #expect(parsed.items.count == 64)
        // The items that fit keep their answers; from the one that went over on, Response Too Large, and those after
        // it never ran.
        let answered = parsed.items.prefix { KMIPFrontEndTests.field($0, .resultStatus) == .enumeration(0) }.count
        #expect(answered >= 1 && answered < 8, "\(answered) items answered within 64 KiB")
        #expect(parsed.items.dropFirst(answered).allSatisfy {
            KMIPFrontEndTests.field($0, .resultReason) == .enumeration(KMIPResultReason.responseTooLarge.rawValue)
        })
        print("KMIP amplification: a \(request.count)-byte request, a \(answer.count)-byte answer (limit \(64 << 10)), \(parsed.items.prefix { KMIPFrontEndTests.field($0, .resultStatus) == .enumeration(0) }.count) items answered")
        #expect(frontEnd.service.events.snapshot["kmip_response_too_large"] == 1)
    }

    /// Locate reads only the caller's objects (and those its grants share), through the store's owner index: with
    /// 3,000 objects of other owners, it reads its own few, within a scan budget they would have exhausted.
    /// The budget is the message's, not the item's: a batch of Locates cannot multiply it.
    @Test func locateReadsOnlyTheCallersObjectsAndItsWorkIsBounded() async throws {
        let (frontEnd, base) = try await Self.frontEnd { $0.maxLocateScan = 500 }
        try await Self.insertMany(base, (0..<3000).map { index in
            ManagedObject(id: String(format: "other-%05d", index), owner: "uri:spiffe://test/storage/other-\(index % 7)", type: .secretData,
                          created: 100, materialLength: 16)
        } + (0..<3).map { ManagedObject(id: "mine-\($0)", owner: Self.owner, type: .secretData, created: 100, materialLength: 16) })
        let located = try KMIPFrontEndTests.parse(await frontEnd.respond(to: KMIPFrontEndTests.request([(0x08, [])]), peer: KMIPFrontEndTests.node))
        #expect(KMIPFrontEndTests.field(located.items[0], .resultStatus) == .enumeration(0))
        let payload = KMIPFrontEndTests.field(located.items[0], .responsePayload)
        guard case .structure(let fields)? = payload else {
            Issue.record("no payload")
            return
        }
        #expect(fields.filter { $0.tag == .uniqueIdentifier }.map(\.value) == ["mine-0", "mine-1", "mine-2"].map { .textString($0) })

        // 170 of the caller's own objects, located by 3 items of one message: 510 reads, over the budget of 500.
        try await Self.insertMany(base, (3..<170).map { index in
            ManagedObject(id: String(format: "mine-%03d", index), owner: Self.owner, type: .secretData, created: 100, materialLength: 16)
        })
        let batch = try KMIPFrontEndTests.parse(await frontEnd.respond(
            to: KMIPFrontEndTests.request(Array(repeating: (0x08, []), count: 3)), peer: KMIPFrontEndTests.node))
        #expect(KMIPFrontEndTests.field(batch.items[0], .resultStatus) == .enumeration(0))
        #expect(batch.items.contains { KMIPFrontEndTests.field($0, .resultReason) == .enumeration(KMIPResultReason.responseTooLarge.rawValue) },
                "three Locates of 170 objects each read past a budget of 500")
    }

    /// Register beyond the owner's quota is refused, and Register of a weak key is refused with the reason.
    @Test func createAndRegisterMeetTheOwnersQuota() async throws {
        let (frontEnd, _) = try await Self.frontEnd { $0.maxObjectsPerOwner = 2 }
        let create: [TTLVItem] = [
            .enumeration(.objectType, 2),
            .structure(.templateAttribute, [
                .structure(.attribute, [.text(.attributeName, "Cryptographic Algorithm"), .enumeration(.attributeValue, 3)]),
                .structure(.attribute, [.text(.attributeName, "Cryptographic Length"), .integer(.attributeValue, 256)]),
            ]),
        ]
        var reasons: [TTLVValue?] = []
        for _ in 0..<3 {
            let answer = try KMIPFrontEndTests.parse(await frontEnd.respond(to: KMIPFrontEndTests.request([(0x01, create)]), peer: KMIPFrontEndTests.node))
            reasons.append(KMIPFrontEndTests.field(answer.items[0], .resultReason))
        }
        #expect(reasons[0] == nil && reasons[1] == nil, "\(reasons)")
        #expect(reasons[2] != nil, "a third object was created with a quota of 2")
    }

    /// Objects owned under the name kmsd used to take for the owner (the certificate's first name) stay their owner's
    /// and move to the stable owner name at their first use: a certificate listing `…/b` before `…/a` owned its
    /// objects as `…/b`, and now as `…/a` (the least URI name).
    @Test func objectsOfTheOldOwnerNameStayTheOwnersAndMove() async throws {
        let (frontEnd, base) = try await Self.frontEnd()
        let both = PeerCertificate(identity: ClientIdentity(names: ["uri:spiffe://test/storage/b", "uri:spiffe://test/storage/a"]))
        try await Self.insert(base, ManagedObject(id: "legacy-1", owner: "uri:spiffe://test/storage/b", type: .secretData, created: 100,
                                                  materialLength: 16))
        let answer = try KMIPFrontEndTests.parse(await frontEnd.respond(
            to: KMIPFrontEndTests.request([(0x0C, [.text(.uniqueIdentifier, "legacy-1")])]), peer: both))
        #expect(KMIPFrontEndTests.field(answer.items[0], .resultStatus) == .enumeration(0))
        #expect(try await base.rotation.store.managedObject("legacy-1")?.owner == "uri:spiffe://test/storage/a")
        // Another identity whose first name is …/b but that is not …/a sees nothing now.
        let other = PeerCertificate(identity: ClientIdentity(names: ["uri:spiffe://test/storage/b"]))
        let refused = try KMIPFrontEndTests.parse(await frontEnd.respond(
            to: KMIPFrontEndTests.request([(0x0C, [.text(.uniqueIdentifier, "legacy-1")])]), peer: other))
        #expect(KMIPFrontEndTests.field(refused.items[0], .resultReason) == .enumeration(KMIPResultReason.itemNotFound.rawValue))
    }
}
