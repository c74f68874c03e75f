import KMSService
import Testing

/// KMIP's state machine as the service enforces it for every front end and kmsctl.
@Suite("Managed object lifecycle")
struct ManagedObjectLifecycleTests {
    static func key(_ state: ManagedObject.State = .preActive) -> ManagedObject {
        var object = ManagedObject(id: "k", owner: "uri:spiffe://test/db", type: .symmetricKey, algorithm: 3, length: 256, created: 100,
                                   materialLength: 32)
        object.state = state
        return object
    }

    @Test func activateRevokeDestroyInOrder() throws {
        var object = Self.key()
        try object.activate(at: 110)
        #expect(object.state == .active && object.dates.activation == 110 && object.canProtect)
        #expect(throws: ManagedObject.LifecycleRefusal.self) { try object.activate(at: 111) }
        #expect(throws: ManagedObject.LifecycleRefusal.self) { try object.destroy(at: 112) }
        try object.revoke(.init(code: 5, message: "superseded"), occurred: nil, at: 120)
        #expect(object.state == .deactivated && object.dates.deactivation == 120 && !object.canProtect)
        try object.destroy(at: 130)
        #expect(object.state == .destroyed && object.dates.destroy == 130)
        #expect(throws: ManagedObject.LifecycleRefusal.self) { try object.destroy(at: 131) }
        #expect(throws: ManagedObject.LifecycleRefusal.self) { try object.revoke(.init(code: 1, message: nil), occurred: nil, at: 132) }
        // A compromise learned after destruction is still recorded.
        try object.revoke(.init(code: 2, message: "found later"), occurred: 90, at: 140)
        #expect(object.state == .destroyedCompromised && object.dates.compromiseOccurrence == 90 && object.dates.compromise == 140)
    }

    @Test func compromisedIsTerminalButForDestroy() throws {
        for start in [ManagedObject.State.preActive, .active, .deactivated] {
            var object = Self.key(start)
            try object.revoke(.init(code: 3, message: nil), occurred: nil, at: 200)
            #expect(object.state == .compromised && object.dates.compromiseOccurrence == 200)
            #expect(throws: ManagedObject.LifecycleRefusal.self) { try object.activate(at: 201) }
            #expect(throws: ManagedObject.LifecycleRefusal.self) { try object.revoke(.init(code: 2, message: nil), occurred: nil, at: 202) }
            #expect(throws: ManagedObject.LifecycleRefusal.self) { try object.revoke(.init(code: 5, message: nil), occurred: nil, at: 203) }
            #expect(!object.canProtect)
            try object.destroy(at: 204)
            #expect(object.state == .destroyedCompromised)
        }
    }

    @Test func onlyAnActiveObjectIsDeactivatedByRevocation() {
        var object = Self.key(.preActive)
        #expect(throws: ManagedObject.LifecycleRefusal.self) { try object.revoke(.init(code: 1, message: nil), occurred: nil, at: 300) }
        #expect(object.state == .preActive && object.revocation == nil)
    }
}
