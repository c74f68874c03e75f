public import KMSCore

/// Why the service refused or failed an operation, in terms every front end can translate: a kind (what class of
/// refusal it is, from which a front end picks its status), a stable code (the `code` of kmsd's API error body), a
/// message safe for the caller, and operator detail for the audit record and the log (never secret).
public struct ServiceError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case badRequest
        /// No usable identity: no certificate, an expired or revoked one, or revocation that cannot be checked.
        case unauthenticated
        case forbidden
        case notFound
        case conflict
        case tooLarge
        case rateLimited
        /// The backend, the audit log or a rotation is not available now; retry later.
        case unavailable
        case `internal`
    }

    public let kind: Kind
    /// The stable code, shared with `KMSError`'s codes.
    public let code: KMSError.Code
    public let message: String
    /// What operators need and callers do not get (a backend's CK_RV, say); audit and logs only.
    public var detail: String?
    /// The front end's own error this one classifies (`FrontEndError`), handed back so the front end answers it in
    /// its own words.
    public var underlying: (any FrontEndError)?

    public init(_ kind: Kind, _ code: KMSError.Code, _ message: String, detail: String? = nil) {
        self.kind = kind
        self.code = code
        self.message = message
        self.detail = detail
    }

    /// A provider's or the rotation layer's error, classified by its code.
    public init(_ error: KMSError) {
        let kind: Kind = switch error.code {
        case .notFound: .notFound
        case .alreadyExists, .conflict, .versionRetired: .conflict
        case .forbidden: .forbidden
        case .invalidInput, .unsupported: .badRequest
        case .unavailable, .rotationRequired, .stateUnavailable: .unavailable
        default: .internal
        }
        self.init(kind, error.code, error.message, detail: error.detail)
    }

    public var description: String { "\(code): \(message)" }

    /// A wrapped key that failed its AEAD check (wrong context, wrong key or tampered data).
    public var isAuthenticationFailure: Bool { KMSError(code, message).isAuthenticationFailure }
}

/// An error a front end throws inside an operation's audit scope in its own wire protocol's words (a Vault-shaped
/// refusal, say): the record classifies it as `serviceError`, and the front end gets it back as
/// `ServiceError.underlying` to answer it exactly.
public protocol FrontEndError: Error, Sendable {
    var serviceError: ServiceError { get }
}
