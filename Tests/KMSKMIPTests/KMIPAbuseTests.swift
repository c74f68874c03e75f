import Foundation
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

    /// 64 Get Attributes of an object as large as kmsd allows made a 19 MB answer of a 6 KB request; now the batch
    /// stops at kmsd's own limit (1 MiB by default), whatever the client's Maximum Response Size, and every item says
    /// Response Too Large.
    @Test func aSmallRequestCannotBecomeAHugeAnswer() async throws {
        let (frontEnd, base) = try await Self.frontEnd()
        var object = ManagedObject(id: "big", owner: Self.owner, type: .secretData, created: 100, materialLength: 16)
        object.names = (0..<KMIPAttributes.maxNames).map { "name-\($0)-" + String(repeating: "n", count: 200) }
        object.attributes = (0..<KMIPAttributes.maxAttributes).map { index in
            ManagedObject.Attribute(name: "x-big-\(index)",
                                    value: TTLVEncoder.encode(.text(.attributeValue, String(repeating: "a", count: KMIPAttributes.maxValueBytes - 16))))
        }
        try await Self.insert(base, object)
        let one = try KMIPFrontEndTests.parse(await frontEnd.respond(
            to: KMIPFrontEndTests.request([(0x0B, [.text(.uniqueIdentifier, "big")])]), peer: KMIPFrontEndTests.node))
        #expect(KMIPFrontEndTests.field(one.items[0], .resultStatus) == .enumeration(0), "one Get Attributes of the object is answered")

        let request = KMIPFrontEndTests.request(Array(repeating: (0x0B, [.text(.uniqueIdentifier, "big")]), count: 64))
        let answer = await frontEnd.respond(to: request, peer: KMIPFrontEndTests.node)
        #expect(answer.count <= 1 << 20, "a \(request.count)-byte request made a \(answer.count)-byte answer")
        let parsed = try KMIPFrontEndTests.parse(answer)
        #expect(parsed.items.count == 64)
        #expect(parsed.items.allSatisfy { KMIPFrontEndTests.field($0, .resultReason) == .enumeration(KMIPResultReason.responseTooLarge.rawValue) })
        #expect(frontEnd.service.events.snapshot["kmip_response_too_large"] == 1)
    }

    /// Locate reads only the caller's objects (and those its grants share), through the store's owner index: with
    /// thousands of other owners' objects, it reads its own few, within a scan budget they would have exhausted.
    /// The budget is the message's, not the item's: a batch of Locates cannot multiply it.
    @Test func locateReadsOnlyTheCallersObjectsAndItsWorkIsBounded() async throws {
        let (frontEnd, base) = try await Self.frontEnd { $0.maxLocateScan = 500 }
        for index in 0..<3000 {
            try await Self.insert(base, ManagedObject(id: String(format: "other-%05d", index), owner: "uri:spiffe://test/storage/other-\(index % 7)",
                                                      type: .secretData, created: 100, materialLength: 16))
        }
        for index in 0..<3 {
            try await Self.insert(base, ManagedObject(id: "mine-\(index)", owner: Self.owner, type: .secretData, created: 100, materialLength: 16))
        }
        let located = try KMIPFrontEndTests.parse(await frontEnd.respond(to: KMIPFrontEndTests.request([(0x08, [])]), peer: KMIPFrontEndTests.node))
        #expect(KMIPFrontEndTests.field(located.items[0], .resultStatus) == .enumeration(0))
        let payload = KMIPFrontEndTests.field(located.items[0], .responsePayload)
        guard case .structure(let fields)? = payload else {
            Issue.record("no payload")
            return
        }
        #expect(fields.filter { $0.tag == .uniqueIdentifier }.map(\.value) == ["mine-0", "mine-1", "mine-2"].map { .textString($0) })

        // 200 of the caller's own objects, located by 3 items of one message: 600 reads, over the budget of 500.
        for index in 3..<200 {
            try await Self.insert(base, ManagedObject(id: String(format: "mine-%03d", index), owner: Self.owner, type: .secretData, created: 100,
                                                      materialLength: 16))
        }
        let batch = try KMIPFrontEndTests.parse(await frontEnd.respond(
            to: KMIPFrontEndTests.request(Array(repeating: (0x08, []), count: 3)), peer: KMIPFrontEndTests.node))
        #expect(KMIPFrontEndTests.field(batch.items[0], .resultStatus) == .enumeration(0))
        #expect(batch.items.contains { KMIPFrontEndTests.field($0, .resultReason) == .enumeration(KMIPResultReason.responseTooLarge.rawValue) },
                "three Locates of 200 objects each read past a budget of 500")
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
}
