import Foundation
import KMSCore
import PKCS11

/// One KEK version object on the token.
struct KEKRecord: Sendable, Equatable {
    let name: KeyName
    let version: KeyVersion
    let keyID: [UInt8]
    let handle: ObjectHandle
    let state: KeyVersionState
    let createdAt: Date?

    var info: KeyVersionInfo { KeyVersionInfo(version: version, state: state, createdAt: createdAt, keyID: keyID) }
}

/// KEK labels: `kmsd/<key>/v<N>`.
enum KEKLabel {
    static func make(_ name: KeyName, _ version: KeyVersion) -> String { "kmsd/\(name.rawValue)/v\(version.rawValue)" }

    static func parse(_ label: String) -> (KeyName, KeyVersion)? {
        let parts = label.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0] == "kmsd", parts[2].first == "v",
            let number = UInt32(parts[2].dropFirst()), String(number) == parts[2].dropFirst(),
            let name = try? KeyName(String(parts[1])), let version = try? KeyVersion(number)
        else { return nil }
        return (name, version)
    }
}

/// What the provider remembers about KEK objects: versions per key (refreshed after `refreshInterval` for wraps) and
/// handles by `CKA_ID` (for unwraps). Forgotten entirely when the library is re-initialized, since handles change.
struct KEKCatalog {
    private var keys: [KeyName: (records: [KEKRecord], refreshedAt: ContinuousClock.Instant)] = [:]
    private var byID: [[UInt8]: KEKRecord] = [:]

    /// The version new wraps use, if the cached list is fresh enough.
    func wrappingRecord(_ name: KeyName, now: ContinuousClock.Instant, maxAge: Duration) -> KEKRecord? {
        guard let entry = keys[name], now - entry.refreshedAt < maxAge else { return nil }
        return entry.records.last { $0.state == .active }
    }

    func record(_ name: KeyName, _ version: KeyVersion, now: ContinuousClock.Instant, maxAge: Duration) -> KEKRecord? {
        guard let entry = keys[name], now - entry.refreshedAt < maxAge else { return nil }
        return entry.records.last { $0.version == version }
    }

    func record(id: [UInt8]) -> KEKRecord? { byID[id] }

    /// Replaces what is known of `name` with a fresh read of the token (ascending versions).
    mutating func replace(_ name: KeyName, with records: [KEKRecord], at now: ContinuousClock.Instant) {
        for old in keys[name]?.records ?? [] where byID[old.keyID]?.name == name { byID[old.keyID] = nil }
        keys[name] = (records.sorted { $0.version < $1.version }, now)
        for record in records { byID[record.keyID] = record }
    }

    mutating func remember(_ record: KEKRecord) { byID[record.keyID] = record }

    mutating func forget(id: [UInt8]) { byID[id] = nil }

    mutating func forgetAll() {
        keys.removeAll()
        byID.removeAll()
    }
}

/// Reading KEK objects from the token (inside a leased session).
enum KEKStore {
    /// Every kmsd KEK on the token, or only those of `name`. Throws `CKR_USER_NOT_LOGGED_IN` when the session cannot
    /// see private objects, so an empty answer is never mistaken for "no keys".
    static func load(_ session: PKCS11Session, only name: KeyName?) throws -> [KEKRecord] {
        try requireLogin(session)
        var records: [KEKRecord] = []
        for handle in try session.findObjects([.class(.secretKey), .keyType(.aes), .token(true)]) {
            if let record = try read(session, handle), name == nil || record.name == name {
                records.append(record)
            }
        }
        return records.sorted { ($0.name, $0.version) < ($1.name, $1.version) }
    }

    /// The KEK with `CKA_ID` = `keyID` whose label is `kmsd/<name>/v<version>`; `nil` if there is none.
    /// Throws `KMSError.invalidInput` if an object has that id but belongs to another key or version.
    static func find(_ session: PKCS11Session, name: KeyName, version: KeyVersion, keyID: [UInt8]) throws -> KEKRecord? {
        let handles = try session.findObjects([.class(.secretKey), .id(keyID)])
        if handles.isEmpty {
            try requireLogin(session)
            return nil
        }
        for handle in handles {
            guard let record = try read(session, handle) else { continue }
            if record.name == name && record.version == version { return record }
        }
        throw KMSError.invalidInput("the wrapped key names a key version that does not belong to key '\(name)'")
    }

    private static func requireLogin(_ session: PKCS11Session) throws {
        guard try session.info().isUserLoggedIn else {
            throw PKCS11Error(returnValue: PKCS11ReturnValue.userNotLoggedIn, function: "C_GetSessionInfo")
        }
    }

    private static func read(_ session: PKCS11Session, _ handle: ObjectHandle) throws -> KEKRecord? {
        let values = try session.attributes([AttributeType.label, AttributeType.id, AttributeType.encrypt], of: handle)
        guard let label = values[AttributeType.label].flatMap({ String(validating: $0, as: UTF8.self) }),
            let (name, version) = KEKLabel.parse(label), let id = values[AttributeType.id]
        else { return nil }
        let encrypt = values[AttributeType.encrypt]?.first.map { $0 != 0 } ?? false
        return KEKRecord(
            name: name, version: version, keyID: id, handle: handle, state: encrypt ? .active : .retired, createdAt: nil)
    }
}
