import KMIPTTLV

/// A Request Message, read from its TTLV: the header's fields kmsd acts on, and the batch items.
struct KMIPRequest {
    enum BatchErrorContinuation: UInt32 {
        case `continue` = 1
        case stop = 2
        case undo = 3
    }

    struct Item {
        /// The operation's value (checked against the Operation enumeration by the parser).
        let operation: KMIPOperation
        let id: [UInt8]?
        /// The Request Payload; nil when the item has none.
        let payload: TTLVItem?
    }

    /// The most batch items one message may hold: each is an operation with its own audit record.
    static let maxBatchItems = 64
    static let maxBatchItemIDBytes = 64

    /// The version the client asked for.
    var requested: KMIPVersion
    var maximumResponseSize: Int?
    var batchErrorContinuation = BatchErrorContinuation.stop
    var items: [Item] = []

    /// The version of the response: the one asked for when kmsd speaks it; a later 1.x is answered in 1.4 (the
    /// specification's rule for a minor version the server does not support).
    var version: KMIPVersion { min(requested, KMIPVersion.supported[0]) }

    /// Parses `message` (a decoded Request Message). Faults in its shape are `Invalid Message`; a field of the wrong
    /// type or an unknown value is `Invalid Field`.
    init(_ message: TTLVItem) throws(KMIPFailure) {
        guard message.tag == .requestMessage, case .structure = message.value else {
            throw KMIPFailure(.invalidMessage, "the message is not a Request Message")
        }
        var fields = try KMIPFields(message)
        let header = try fields.required(.requestHeader, missing: .invalidMessage)
        let batch = fields.all(.batchItem)
        try fields.finish()

        var headerFields = try KMIPFields(header)
        let version = try Self.version(try headerFields.required(.protocolVersion, missing: .invalidMessage))
        guard version.major == 1 else {
            throw KMIPFailure(.invalidMessage, "KMIP \(version) is not supported; kmsd speaks KMIP 1.0 to 1.4")
        }
        requested = version
        if let size = headerFields.optional(.maximumResponseSize) {
            let value = try size.integer()
            guard value > 0 else { throw KMIPFailure(.invalidField, "Maximum Response Size must be positive") }
            maximumResponseSize = Int(value)
        }
        // Credentials in the header are not how kmsd authenticates (the client certificate is); they are read and
        // ignored, as is a time stamp (TLS already rules out replay) and the asynchronous indicator (every operation
        // is answered synchronously, which a client that allows asynchronous answers accepts).
        _ = headerFields.optional(.authentication)
        _ = try headerFields.optional(.timeStamp)?.dateTime()
        _ = try headerFields.optional(.asynchronousIndicator)?.boolean()
        _ = try headerFields.optional(.attestationCapableIndicator)?.boolean()
        for attestation in headerFields.all(.attestationType) { _ = try attestation.enumeration() }
        _ = try headerFields.optional(.clientCorrelationValue)?.text()
        _ = try headerFields.optional(.serverCorrelationValue)?.text()
        if let option = headerFields.optional(.batchErrorContinuationOption) {
            guard let value = BatchErrorContinuation(rawValue: try option.enumeration()) else {
                throw KMIPFailure(.invalidField, "unknown Batch Error Continuation Option")
            }
            guard value != .undo else {
                throw KMIPFailure(.featureNotSupported, "kmsd cannot undo a batch (Batch Error Continuation Option Undo); use Stop or Continue")
            }
            batchErrorContinuation = value
        }
        // Items are always processed in order, which every Batch Order Option allows.
        _ = try headerFields.optional(.batchOrderOption)?.boolean()
        let count = try headerFields.required(.batchCount, missing: .invalidMessage).integer()
        try headerFields.finish()

        guard !batch.isEmpty, Int(count) == batch.count else {
            throw KMIPFailure(.invalidMessage, "Batch Count is \(count) but the message holds \(batch.count) batch items")
        }
        guard batch.count <= Self.maxBatchItems else {
            throw KMIPFailure(.invalidMessage, "a message holds at most \(Self.maxBatchItems) batch items")
        }
        for item in batch {
            var itemFields = try KMIPFields(item)
            let operation = KMIPOperation(rawValue: try itemFields.required(.operation, missing: .invalidMessage).enumeration())
            let id = try itemFields.optional(.uniqueBatchItemID)?.bytes()
            // Echoed in every answer: bounded, so that a refusal of the whole batch stays small.
            if let id, id.count > Self.maxBatchItemIDBytes {
                throw KMIPFailure(.invalidMessage, "a Unique Batch Item ID has at most \(Self.maxBatchItemIDBytes) bytes")
            }
            if batch.count > 1, id == nil {
                throw KMIPFailure(.invalidMessage, "each item of a batch of several needs a Unique Batch Item ID")
            }
            let payload = itemFields.optional(.requestPayload)
            if let payload, case .structure = payload.value {} else if payload != nil {
                throw KMIPFailure(.invalidField, "Request Payload must be a Structure")
            }
            if let extensionItem = itemFields.optional(.messageExtension) {
                var extensionFields = try KMIPFields(extensionItem)
                if try extensionFields.optional(.criticalityIndicator)?.boolean() == true {
                    throw KMIPFailure(.featureNotSupported, "kmsd knows no message extensions, and this one is critical")
                }
            }
            try itemFields.finish()
            items.append(Item(operation: operation, id: id, payload: payload))
        }
    }

    static func version(_ item: TTLVItem) throws(KMIPFailure) -> KMIPVersion {
        var fields = try KMIPFields(item)
        let major = try fields.required(.protocolVersionMajor).integer()
        let minor = try fields.required(.protocolVersionMinor).integer()
        try fields.finish()
        return KMIPVersion(major, minor)
    }

    /// The version of a message that did not parse, as far as it can be read, for the response to say it in; KMIP
    /// 1.0 when none can.
    static func bestEffortVersion(_ message: TTLVItem?) -> KMIPVersion {
        guard let message, case .structure(let parts) = message.value,
              let header = parts.first(where: { $0.tag == .requestHeader }), case .structure(let fields) = header.value,
              let item = fields.first(where: { $0.tag == .protocolVersion }),
              let version = try? version(item), version.major == 1
        else { return KMIPVersion(1, 0) }
        return min(version, KMIPVersion.supported[0])
    }
}

/// One batch item's answer.
struct KMIPResult {
    var operation: KMIPOperation?
    var id: [UInt8]?
    var outcome: Result<[TTLVItem]?, KMIPFailure>

    /// The Batch Item of the Response Message.
    var item: TTLVItem {
        var fields: [TTLVItem] = []
        if let operation { fields.append(.enumeration(.operation, operation.rawValue)) }
        if let id { fields.append(.bytes(.uniqueBatchItemID, id)) }
        switch outcome {
        case .success(let payload):
            fields.append(.enumeration(.resultStatus, 0))
            if let payload { fields.append(.structure(.responsePayload, payload)) }
        case .failure(let failure):
            fields.append(.enumeration(.resultStatus, 1))
            fields.append(.enumeration(.resultReason, failure.reason.rawValue))
            fields.append(.text(.resultMessage, Self.ascii(failure.message)))
        }
        return .structure(.batchItem, fields)
    }
}

extension KMIPResult {
    /// Result Messages are plain ASCII: some clients (PyKMIP 0.11) cannot decode a Text String with other characters,
    /// and would fail on the error message instead of reporting it.
    static func ascii(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.map { scalar in
            switch scalar {
            case "\u{2013}", "\u{2014}": "-"
            case "\u{2018}", "\u{2019}": "'"
            case "\u{201C}", "\u{201D}": "\""
            case "\u{2026}": "."
            default: scalar.isASCII && scalar.value >= 0x20 ? scalar : "?"
            }
        }))
    }
}

enum KMIPResponse {
    /// A Response Message in `version` with `results`, time-stamped `now`.
    static func message(_ version: KMIPVersion, _ results: [KMIPResult], now: Int64) -> TTLVItem {
        let header = TTLVItem.structure(.responseHeader, [
            .structure(.protocolVersion, [.integer(.protocolVersionMajor, version.major), .integer(.protocolVersionMinor, version.minor)]),
            .dateTime(.timeStamp, now),
            .integer(.batchCount, Int32(results.count)),
        ])
        return .structure(.responseMessage, [header] + results.map(\.item))
    }
}
