import KMIPTTLV
import KMSCore
@testable import KMSKMIP
import KMSService
import KMSTestSupport
import Testing

/// The KMIP front end over the service and an in-memory provider, message bytes in and out: no TLS, no HSM.
@Suite("KMIP front end")
struct KMIPFrontEndTests {
    static let node = PeerCertificate(identity: TestIdentities.node1)

    static func frontEnd(allow: [String] = ["uri:spiffe://test/storage/*"]) async throws -> (KMIPFrontEnd, InMemoryService) {
        let base = try await InMemoryService.make()
        var configuration = KMIPConfiguration()
        configuration.allow = allow
        let service = KMSService(policy: base.policy, rotation: base.rotation, audit: base.audit)
        return (KMIPFrontEnd(service: service, configuration: configuration, now: { 1_700_000_000 }), base)
    }

    static func version(_ major: Int32, _ minor: Int32) -> TTLVItem {
        .structure(.protocolVersion, [.integer(.protocolVersionMajor, major), .integer(.protocolVersionMinor, minor)])
    }

    /// A request message: `header` fields after the version, then the items (operation, payload fields).
    static func request(_ items: [(UInt32, [TTLVItem])], version: (Int32, Int32) = (1, 4), header: [TTLVItem] = []) -> [UInt8] {
        let batch = items.enumerated().map { index, item in
            TTLVItem.structure(.batchItem, [.enumeration(.operation, item.0)]
                + (items.count > 1 ? [.bytes(.uniqueBatchItemID, [UInt8(index + 1)])] : [])
                + [.structure(.requestPayload, item.1)])
        }
        return TTLVEncoder.encode(.structure(.requestMessage, [
            .structure(.requestHeader, [Self.version(version.0, version.1)] + header + [.integer(.batchCount, Int32(items.count))]),
        ] + batch))
    }

    /// The response's header version and each batch item's fields.
    static func parse(_ bytes: [UInt8]) throws -> (version: TTLVItem, items: [[TTLVItem]]) {
        let message = try TTLVDecoder.decode(bytes)
        guard message.tag == .responseMessage, case .structure(let parts) = message.value,
              case .structure(let header) = parts[0].value else { throw TTLVError(.wrongLength, at: 0) }
        let items = parts.dropFirst().map { item -> [TTLVItem] in
            guard case .structure(let fields) = item.value else { return [] }
            return fields
        }
        return (header[0], items)
    }

    static func field(_ fields: [TTLVItem], _ tag: TTLVTag) -> TTLVValue? { fields.first { $0.tag == tag }?.value }

    @Test func theTagsTheFrontEndNamesAreTheSpecificationsTags() {
        let named: [(TTLVTag, String)] = [
            (.activationDate, "Activation Date"), (.asynchronousIndicator, "Asynchronous Indicator"),
            (.attestationCapableIndicator, "Attestation Capable Indicator"), (.attestationType, "Attestation Type"),
            (.authentication, "Authentication"), (.batchCount, "Batch Count"),
            (.batchErrorContinuationOption, "Batch Error Continuation Option"), (.batchItem, "Batch Item"),
            (.batchOrderOption, "Batch Order Option"), (.clientCorrelationValue, "Client Correlation Value"),
            (.criticalityIndicator, "Criticality Indicator"), (.maximumResponseSize, "Maximum Response Size"),
            (.messageExtension, "Message Extension"), (.objectType, "Object Type"), (.operation, "Operation"),
            (.protocolVersion, "Protocol Version"), (.protocolVersionMajor, "Protocol Version Major"),
            (.protocolVersionMinor, "Protocol Version Minor"), (.queryFunction, "Query Function"),
            (.requestHeader, "Request Header"), (.requestMessage, "Request Message"), (.requestPayload, "Request Payload"),
            (.responseHeader, "Response Header"), (.responseMessage, "Response Message"), (.responsePayload, "Response Payload"),
            (.resultMessage, "Result Message"), (.resultReason, "Result Reason"), (.resultStatus, "Result Status"),
            (.serverCorrelationValue, "Server Correlation Value"), (.timeStamp, "Time Stamp"),
            (.uniqueBatchItemID, "Unique Batch Item ID"), (.vendorIdentification, "Vendor Identification"),
        ]
        let objects: [(TTLVTag, String)] = [
            (.attribute, "Attribute"),
            (.attributeIndex, "Attribute Index"),
            (.attributeName, "Attribute Name"),
            (.attributeValue, "Attribute Value"),
            (.authenticatedEncryptionAdditionalData, "Authenticated Encryption Additional Data"),
            (.authenticatedEncryptionTag, "Authenticated Encryption Tag"),
            (.blockCipherMode, "Block Cipher Mode"),
            (.compromiseOccurrenceDate, "Compromise Occurrence Date"),
            (.cryptographicAlgorithm, "Cryptographic Algorithm"),
            (.cryptographicLength, "Cryptographic Length"),
            (.cryptographicParameters, "Cryptographic Parameters"),
            (.cryptographicUsageMask, "Cryptographic Usage Mask"),
            (.data, "Data"),
            (.ivCounterNonce, "IV Counter Nonce"),
            (.ivLength, "IV Length"),
            (.key, "Key"),
            (.keyBlock, "Key Block"),
            (.keyCompressionType, "Key Compression Type"),
            (.keyFormatType, "Key Format Type"),
            (.keyMaterial, "Key Material"),
            (.keyValue, "Key Value"),
            (.keyWrappingData, "Key Wrapping Data"),
            (.keyWrappingSpecification, "Key Wrapping Specification"),
            (.keyWrapType, "Key Wrap Type"),
            (.link, "Link"),
            (.linkType, "Link Type"),
            (.linkedObjectIdentifier, "Linked Object Identifier"),
            (.locatedItems, "Located Items"),
            (.maximumItems, "Maximum Items"),
            (.name, "Name"),
            (.nameType, "Name Type"),
            (.nameValue, "Name Value"),
            (.objectGroupMember, "Object Group Member"),
            (.offset, "Offset"),
            (.offsetItems, "Offset Items"),
            (.paddingMethod, "Padding Method"),
            (.randomIV, "Random IV"),
            (.revocationMessage, "Revocation Message"),
            (.revocationReason, "Revocation Reason"),
            (.revocationReasonCode, "Revocation Reason Code"),
            (.secretData, "Secret Data"),
            (.secretDataType, "Secret Data Type"),
            (.state, "State"),
            (.storageStatusMask, "Storage Status Mask"),
            (.symmetricKey, "Symmetric Key"),
            (.tagLength, "Tag Length"),
            (.templateAttribute, "Template Attribute"),
            (.uniqueIdentifier, "Unique Identifier"),
        ]
        for (tag, name) in named + objects { #expect(tag.name == name) }
        #expect(KMIPOperation.discoverVersions.description == "Discover Versions")
        #expect(KMIPResultReason.generalFailure.description == "General Failure")
    }

    @Test func aLaterMinorVersionIsAnsweredIn1_4AndEachItemIsOneAuditRecord() async throws {
        let (frontEnd, base) = try await Self.frontEnd()
        let response = try Self.parse(await frontEnd.respond(to: Self.request([(0x1E, []), (0x18, [.enumeration(.queryFunction, 3)])], version: (1, 7)),
                                                             peer: Self.node))
        #expect(response.version == Self.version(1, 4))
        #expect(response.items.count == 2)
        #expect(response.items.allSatisfy { Self.field($0, .resultStatus) == .enumeration(0) })
        #expect(Self.field(response.items[1], .responsePayload) == .structure([.text(.vendorIdentification, "kmsd \(KMSDRelease.version)")]))
        let records = try await base.records(atLeast: 2).filter { $0["frontend"] as? String == "kmip" }
        #expect(records.map { $0["action"] as? String } == ["kmip.discover_versions", "kmip.query"])
        #expect(records.allSatisfy { $0["identity"] as? String == "uri:spiffe://test/storage/node-1" && $0["result"] as? String == "ok" })
    }

    @Test func anIdentityOutsideAllowIsDeniedAndRecorded() async throws {
        let (frontEnd, base) = try await Self.frontEnd(allow: ["uri:spiffe://test/other/*"])
        let response = try Self.parse(await frontEnd.respond(to: Self.request([(0x1E, [])]), peer: Self.node))
        #expect(Self.field(response.items[0], .resultReason) == .enumeration(KMIPResultReason.permissionDenied.rawValue))
        let records = try await base.records(atLeast: 1).filter { $0["frontend"] as? String == "kmip" }
        #expect(records.count == 1 && records[0]["type"] as? String == "authorization")
        let anonymous = try Self.parse(await frontEnd.respond(to: Self.request([(0x1E, [])]), peer: nil))
        #expect(Self.field(anonymous.items[0], .resultReason) == .enumeration(KMIPResultReason.authenticationNotSuccessful.rawValue))
    }

    @Test func refusalsCarryTheSpecificationsReasons() async throws {
        let (frontEnd, _) = try await Self.frontEnd()
        func reason(_ bytes: [UInt8]) async throws -> TTLVValue? {
            Self.field(try Self.parse(await frontEnd.respond(to: bytes, peer: Self.node)).items[0], .resultReason)
        }
        // Undo cannot be honoured; a field Discover Versions does not take; an operation kmsd does not offer (Create Key
        // Pair); a value that is not an operation; Batch Count that disagrees with the items; KMIP 2.0.
        #expect(try await reason(Self.request([(0x1E, [])], header: [.enumeration(.batchErrorContinuationOption, 3)]))
                == .enumeration(KMIPResultReason.featureNotSupported.rawValue))
        #expect(try await reason(Self.request([(0x1E, [.integer(.batchCount, 1)])])) == .enumeration(KMIPResultReason.invalidField.rawValue))
        #expect(try await reason(Self.request([(0x02, [])])) == .enumeration(KMIPResultReason.operationNotSupported.rawValue))
        #expect(try await reason(Self.request([(0x7F, [])])) == .enumeration(KMIPResultReason.invalidField.rawValue))
        let miscounted = TTLVEncoder.encode(.structure(.requestMessage, [
            .structure(.requestHeader, [Self.version(1, 2), .integer(.batchCount, 2)]),
            .structure(.batchItem, [.enumeration(.operation, 0x1E)]),
        ]))
        #expect(try await reason(miscounted) == .enumeration(KMIPResultReason.invalidMessage.rawValue))
        #expect(try await reason(Self.request([(0x1E, [])], version: (2, 0))) == .enumeration(KMIPResultReason.invalidMessage.rawValue))
    }

    @Test func aResponseOverTheClientsMaximumIsReplacedByResponseTooLarge() async throws {
        let (frontEnd, _) = try await Self.frontEnd()
        let response = try Self.parse(await frontEnd.respond(
            to: Self.request([(0x1E, [])], header: [.integer(.maximumResponseSize, 64)]), peer: Self.node))
        #expect(Self.field(response.items[0], .resultReason) == .enumeration(KMIPResultReason.responseTooLarge.rawValue))
        #expect(Self.field(response.items[0], .responsePayload) == nil)
    }

    @Test func resultMessagesAreASCII() {
        #expect(KMIPResult.ascii("KMIP 1.0–1.4 … “x” é\u{0}") == "KMIP 1.0-1.4 . \"x\" ??")
    }
}
