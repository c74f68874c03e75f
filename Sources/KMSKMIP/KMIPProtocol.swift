import KMIPTTLV
public import KMSService
import Foundation
import KMSCore

/// A KMIP protocol version. kmsd speaks 1.0 to 1.4 (`supported`, most preferred first).
public struct KMIPVersion: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let major: Int32
    public let minor: Int32

    public init(_ major: Int32, _ minor: Int32) {
        self.major = major
        self.minor = minor
    }

    /// What kmsd answers Discover Versions with, in this order.
    public static let supported = [KMIPVersion(1, 4), KMIPVersion(1, 3), KMIPVersion(1, 2), KMIPVersion(1, 1), KMIPVersion(1, 0)]

    public static func < (lhs: KMIPVersion, rhs: KMIPVersion) -> Bool { (lhs.major, lhs.minor) < (rhs.major, rhs.minor) }
    public var description: String { "\(major).\(minor)" }
}

/// The tags the front end reads and writes, named.
extension TTLVTag {
    static let activationDate = TTLVTag(0x420001)
    static let asynchronousIndicator = TTLVTag(0x420007)
    static let attestationCapableIndicator = TTLVTag(0x4200D3)
    static let attestationType = TTLVTag(0x4200C7)
    static let authentication = TTLVTag(0x42000C)
    static let batchCount = TTLVTag(0x42000D)
    static let batchErrorContinuationOption = TTLVTag(0x42000E)
    static let batchItem = TTLVTag(0x42000F)
    static let batchOrderOption = TTLVTag(0x420010)
    static let clientCorrelationValue = TTLVTag(0x420105)
    static let criticalityIndicator = TTLVTag(0x420026)
    static let maximumResponseSize = TTLVTag(0x420050)
    static let messageExtension = TTLVTag(0x420051)
    static let objectType = TTLVTag(0x420057)
    static let operation = TTLVTag(0x42005C)
    static let protocolVersion = TTLVTag(0x420069)
    static let protocolVersionMajor = TTLVTag(0x42006A)
    static let protocolVersionMinor = TTLVTag(0x42006B)
    static let queryFunction = TTLVTag(0x420074)
    static let requestHeader = TTLVTag(0x420077)
    static let requestMessage = TTLVTag(0x420078)
    static let requestPayload = TTLVTag(0x420079)
    static let responseHeader = TTLVTag(0x42007A)
    static let responseMessage = TTLVTag(0x42007B)
    static let responsePayload = TTLVTag(0x42007C)
    static let resultMessage = TTLVTag(0x42007D)
    static let resultReason = TTLVTag(0x42007E)
    static let resultStatus = TTLVTag(0x42007F)
    static let serverCorrelationValue = TTLVTag(0x420106)
    static let timeStamp = TTLVTag(0x420092)
    static let uniqueBatchItemID = TTLVTag(0x420093)
    static let vendorIdentification = TTLVTag(0x42009D)
}

/// The operations of KMIP 1.0–1.4 by their enumeration value (the Operation enumeration).
public struct KMIPOperation: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let create = KMIPOperation(rawValue: 0x01)
    public static let register = KMIPOperation(rawValue: 0x03)
    public static let reKey = KMIPOperation(rawValue: 0x04)
    public static let locate = KMIPOperation(rawValue: 0x08)
    public static let get = KMIPOperation(rawValue: 0x0A)
    public static let getAttributes = KMIPOperation(rawValue: 0x0B)
    public static let getAttributeList = KMIPOperation(rawValue: 0x0C)
    public static let addAttribute = KMIPOperation(rawValue: 0x0D)
    public static let modifyAttribute = KMIPOperation(rawValue: 0x0E)
    public static let deleteAttribute = KMIPOperation(rawValue: 0x0F)
    public static let activate = KMIPOperation(rawValue: 0x12)
    public static let revoke = KMIPOperation(rawValue: 0x13)
    public static let destroy = KMIPOperation(rawValue: 0x14)
    public static let query = KMIPOperation(rawValue: 0x18)
    public static let discoverVersions = KMIPOperation(rawValue: 0x1E)
    public static let encrypt = KMIPOperation(rawValue: 0x1F)
    public static let decrypt = KMIPOperation(rawValue: 0x20)

    /// The specification's name ("Discover Versions"), or the value in hex.
    public var description: String {
        KMIPSpecification.enumerationName(.operation, rawValue) ?? "0x" + String(rawValue, radix: 16, uppercase: true)
    }

    /// The audit record's action: `kmip.` and the name in lower case with underscores (`kmip.discover_versions`).
    var auditAction: String {
        "kmip." + (KMIPSpecification.enumerationName(.operation, rawValue) ?? "unknown").lowercased().replacingOccurrences(of: " ", with: "_")
    }
}

/// The Result Reason enumeration's values kmsd answers with.
public struct KMIPResultReason: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let itemNotFound = KMIPResultReason(rawValue: 0x01)
    public static let responseTooLarge = KMIPResultReason(rawValue: 0x02)
    public static let authenticationNotSuccessful = KMIPResultReason(rawValue: 0x03)
    public static let invalidMessage = KMIPResultReason(rawValue: 0x04)
    public static let operationNotSupported = KMIPResultReason(rawValue: 0x05)
    public static let missingData = KMIPResultReason(rawValue: 0x06)
    public static let invalidField = KMIPResultReason(rawValue: 0x07)
    public static let featureNotSupported = KMIPResultReason(rawValue: 0x08)
    public static let cryptographicFailure = KMIPResultReason(rawValue: 0x0A)
    public static let illegalOperation = KMIPResultReason(rawValue: 0x0B)
    public static let permissionDenied = KMIPResultReason(rawValue: 0x0C)
    public static let keyFormatTypeNotSupported = KMIPResultReason(rawValue: 0x10)
    public static let keyCompressionTypeNotSupported = KMIPResultReason(rawValue: 0x11)
    public static let keyValueNotPresent = KMIPResultReason(rawValue: 0x13)
    public static let generalFailure = KMIPResultReason(rawValue: 0x100)

    public var description: String { KMIPSpecification.enumerationName(.resultReason, rawValue) ?? "0x" + String(rawValue, radix: 16) }
}

/// A KMIP refusal or failure: the Result Reason and the Result Message the client gets. Thrown inside an
/// operation's audit scope, it is recorded as the service error it corresponds to (`serviceError`) and answered
/// in KMIP's words. The message never holds key material or a secret.
public struct KMIPFailure: Error, FrontEndError, CustomStringConvertible {
    public let reason: KMIPResultReason
    public let message: String
    /// How the audit record and the security events classify it, when the reason alone would mislead (Permission
    /// Denied for an object in the wrong state is a conflict, not an authorization refusal).
    public let recordedAs: ServiceError.Kind?

    public init(_ reason: KMIPResultReason, _ message: String, recordedAs: ServiceError.Kind? = nil) {
        self.reason = reason
        self.message = message
        self.recordedAs = recordedAs
    }

    public var description: String { "\(reason): \(message)" }

    public var serviceError: ServiceError {
        if let recordedAs {
            let code: KMSError.Code = switch recordedAs {
            case .forbidden: .forbidden
            case .conflict: .conflict
            case .unauthenticated: .unauthenticated
            case .notFound: .notFound
            case .rateLimited: .rateLimited
            case .unavailable: .unavailable
            case .internal: .internal
            case .badRequest, .tooLarge: .invalidInput
            }
            var error = ServiceError(recordedAs, code, message)
            error.underlying = self
            return error
        }
        var error: ServiceError = switch reason {
        case .authenticationNotSuccessful: ServiceError(.unauthenticated, .unauthenticated, message)
        case .permissionDenied: ServiceError(.forbidden, .forbidden, message)
        case .itemNotFound: ServiceError(.notFound, .notFound, message)
        case .illegalOperation: ServiceError(.conflict, .conflict, message)
        case .generalFailure: ServiceError(.internal, .internal, message)
        default: ServiceError(.badRequest, .invalidInput, message)
        }
        error.underlying = self
        return error
    }

    /// A service error in KMIP's words: the front end's own failure when it was one, else by its kind.
    static func from(_ error: ServiceError) -> KMIPFailure {
        if let failure = error.underlying as? KMIPFailure { return failure }
        let reason: KMIPResultReason = switch error.kind {
        case .unauthenticated: .authenticationNotSuccessful
        case .forbidden: .permissionDenied
        case .notFound: .itemNotFound
        case .badRequest: .invalidField
        case .conflict: .illegalOperation
        case .tooLarge: .invalidMessage
        case .rateLimited, .unavailable, .internal: .generalFailure
        }
        return KMIPFailure(reason, error.message)
    }
}
