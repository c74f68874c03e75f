/// The errors kmsd reports across layers, with stable codes that the API maps to HTTP statuses.
///
/// `message` is written for the client and never contains secrets (no key bytes, no PIN, no token, no context value);
/// `detail` adds what an operator needs in a log (e.g. the PKCS#11 function and `CK_RV`), and is likewise free of
/// secrets. Two errors are equal when their codes are equal.
public struct KMSError: Error, Sendable, Equatable, CustomStringConvertible, CustomDebugStringConvertible {
    /// A stable error code. Its `rawValue` is the `code` field of the API's error body.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        private init(_ rawValue: String) { self.rawValue = rawValue }

        public var description: String { rawValue }

        /// The key or version does not exist (or was destroyed).
        public static let notFound = Code("not_found")
        /// A key of that name already exists.
        public static let alreadyExists = Code("already_exists")
        /// The caller may not use this key or operation.
        public static let forbidden = Code("forbidden")
        /// The request or a wrapped key is malformed, was tampered with, or does not match its context.
        public static let invalidInput = Code("invalid_input")
        /// The version is retired: it unwraps but no longer wraps.
        public static let versionRetired = Code("version_retired")
        /// The backend cannot serve now (down, breaker open, pool exhausted, deadline passed). Retry later.
        public static let unavailable = Code("unavailable")
        /// The operation conflicts with the key's state (e.g. retiring the only active version).
        public static let conflict = Code("conflict")
        /// The backend cannot do this at all.
        public static let unsupported = Code("unsupported")
        /// A bug or an unexpected backend answer.
        public static let `internal` = Code("internal")
        /// The version reached its usage bound (`max_wraps`) and the key has not rotated yet: wrapping waits for the
        /// rotation, unwrapping continues. Retry later.
        public static let rotationRequired = Code("rotation_required")
        /// The state store (SQLite or PostgreSQL) cannot hand out wraps now: this kmsd has used the block of wraps
        /// it reserved, and reserving the next one failed. Unwrapping continues. Retry later (or another replica).
        public static let stateUnavailable = Code("state_unavailable")

        // Codes only the service layer answers with (the front ends' error bodies use the same values).

        /// No usable client identity: no certificate, an expired or revoked one, or no admin credential.
        public static let unauthenticated = Code("unauthenticated")
        /// The caller's request rate is over its limit.
        public static let rateLimited = Code("rate_limited")
        /// The request body exceeds `limits.max_body_bytes`.
        public static let payloadTooLarge = Code("payload_too_large")
        /// The audit log cannot take the operation's record; key operations are refused until it can.
        public static let auditUnavailable = Code("audit_unavailable")
        /// The CRL for the caller's CA is past its `nextUpdate` plus the grace.
        public static let revocationUnavailable = Code("revocation_unavailable")
    }

    public let code: Code
    /// Safe to show to the client.
    public let message: String
    /// Operator detail for logs; never a secret.
    public let detail: String?

    public init(_ code: Code, _ message: String, detail: String? = nil) {
        self.code = code
        self.message = message
        self.detail = detail
    }

    public static func notFound(_ message: String, detail: String? = nil) -> KMSError { .init(.notFound, message, detail: detail) }
    public static func alreadyExists(_ message: String, detail: String? = nil) -> KMSError { .init(.alreadyExists, message, detail: detail) }
    public static func forbidden(_ message: String, detail: String? = nil) -> KMSError { .init(.forbidden, message, detail: detail) }
    public static func invalidInput(_ message: String, detail: String? = nil) -> KMSError { .init(.invalidInput, message, detail: detail) }
    public static func versionRetired(_ message: String, detail: String? = nil) -> KMSError { .init(.versionRetired, message, detail: detail) }
    public static func unavailable(_ message: String, detail: String? = nil) -> KMSError { .init(.unavailable, message, detail: detail) }
    public static func conflict(_ message: String, detail: String? = nil) -> KMSError { .init(.conflict, message, detail: detail) }
    public static func unsupported(_ message: String, detail: String? = nil) -> KMSError { .init(.unsupported, message, detail: detail) }
    public static func `internal`(_ message: String, detail: String? = nil) -> KMSError { .init(.internal, message, detail: detail) }
    public static func rotationRequired(_ message: String, detail: String? = nil) -> KMSError { .init(.rotationRequired, message, detail: detail) }
    public static func stateUnavailable(_ message: String, detail: String? = nil) -> KMSError { .init(.stateUnavailable, message, detail: detail) }

    public static func == (lhs: KMSError, rhs: KMSError) -> Bool { lhs.code == rhs.code }

    /// The client's message when a wrapped key fails its AEAD check, the same from every provider.
    public static let authenticationFailureMessage = "the wrapped key failed authentication: wrong context, wrong key or tampered data"

    /// A wrapped key that failed its AEAD check: wrong context, wrong key or tampered data.
    public static func authenticationFailed(detail: String? = nil) -> KMSError {
        .invalidInput(authenticationFailureMessage, detail: detail)
    }

    /// Whether this is `authenticationFailed()`: a wrapped key that failed its AEAD check.
    public var isAuthenticationFailure: Bool { code == .invalidInput && message == Self.authenticationFailureMessage }

    public var description: String { "\(code): \(message)" }
    public var debugDescription: String { detail.map { "\(code): \(message) [\($0)]" } ?? description }
}
