import KMIPTTLV
import KMSCore
import KMSService

/// Discover Versions and Query: what kmsd speaks and offers.
extension KMIPFrontEnd {
    /// The versions kmsd speaks that the client listed (all of them when it listed none), most preferred first.
    func discoverVersions(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) throws(KMIPFailure) -> [TTLVItem]? {
        var offered: [KMIPVersion] = []
        for item in fields.all(.protocolVersion) { offered.append(try KMIPRequest.version(item)) }
        try fields.finish()
        let answer = offered.isEmpty ? KMIPVersion.supported : KMIPVersion.supported.filter(offered.contains)
        return answer.map {
            .structure(.protocolVersion, [.integer(.protocolVersionMajor, $0.major), .integer(.protocolVersionMinor, $0.minor)])
        }
    }

    /// The Query Functions kmsd answers: its operations, its object types and its vendor identification. The others
    /// (application namespaces, extensions, attestation types, RNGs, validations, profiles, capabilities, client
    /// registration methods) are answered with nothing: kmsd has none to list.
    func query(_ request: KMIPOperationRequest, _ fields: inout KMIPFields) throws(KMIPFailure) -> [TTLVItem]? {
        var functions: [UInt32] = []
        for item in fields.all(.queryFunction) { functions.append(try item.enumeration()) }
        try fields.finish()
        var answer: [TTLVItem] = []
        if functions.contains(1) {  // Query Operations
            let offered = Self.operations.filter { $0.value.since <= request.version }.keys.map(\.rawValue).sorted()
            answer += offered.map { .enumeration(.operation, $0) }
        }
        if functions.contains(2) {  // Query Objects
            answer += Self.objectTypes.map { .enumeration(.objectType, $0) }
        }
        if functions.contains(3) {  // Query Server Information
            answer.append(.text(.vendorIdentification, "kmsd \(KMSDRelease.version)"))
        }
        return answer
    }

    /// The object types kmsd manages (Object Type values): Symmetric Key and Secret Data.
    static let objectTypes: [UInt32] = ManagedObject.ObjectType.allCases.map(\.rawValue)
}
