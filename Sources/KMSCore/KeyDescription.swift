public import Foundation

/// Whether a version may wrap new DEKs. Both states unwrap; destroyed versions no longer exist.
public enum KeyVersionState: String, Sendable, Codable, CustomStringConvertible {
    /// Wraps and unwraps. Only the latest active version is used for new wraps.
    case active
    /// Unwraps only.
    case retired
    public var description: String { rawValue }
}

/// One version of a key as its backend reports it.
public struct KeyVersionInfo: Sendable, Equatable, CustomStringConvertible {
    public let version: KeyVersion
    public let state: KeyVersionState
    /// When the backend created the version, if the backend records it (Vault does; PKCS#11 objects carry no
    /// portable creation time, so kmsd's state store keeps it). `nil` if unknown.
    public let createdAt: Date?
    /// The backend's identifier of this version (PKCS#11 `CKA_ID`). Not secret.
    public let keyID: [UInt8]

    public init(version: KeyVersion, state: KeyVersionState, createdAt: Date?, keyID: [UInt8]) {
        self.version = version
        self.state = state
        self.createdAt = createdAt
        self.keyID = keyID
    }

    public var description: String {
        "\(version) \(state) id=\(Hex.encode(keyID))"
    }
}

/// A key and all of its versions.
public struct KeyDescription: Sendable, Equatable {
    public let name: KeyName
    public let provider: ProviderKind
    /// Ascending by version.
    public let versions: [KeyVersionInfo]

    public init(name: KeyName, provider: ProviderKind, versions: [KeyVersionInfo]) {
        self.name = name
        self.provider = provider
        self.versions = versions.sorted { $0.version < $1.version }
    }

    /// The highest version, active or not.
    public var latestVersion: KeyVersion? { versions.last?.version }
    /// The version new wraps use: the highest active one.
    public var wrappingVersion: KeyVersionInfo? { versions.last { $0.state == .active } }
    public func version(_ version: KeyVersion) -> KeyVersionInfo? { versions.first { $0.version == version } }
}
