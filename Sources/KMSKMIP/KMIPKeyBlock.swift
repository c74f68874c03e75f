import KMIPTTLV
import KMSCore
import KMSService

/// Key Blocks: the key material of a Symmetric Key or Secret Data as Register brings it and Get returns it. kmsd
/// takes and gives material unwrapped and uncompressed (TLS protects it on the wire): Raw or Transparent Symmetric Key
/// format for keys, Opaque or Raw for secret data.
enum KMIPKeyBlock {
    static let raw: UInt32 = 1
    static let opaque: UInt32 = 2
    static let transparentSymmetricKey: UInt32 = 7

    /// Reads the object structure of a Register request into `object` (type details, format, length); the material.
    static func read(_ item: TTLVItem, into object: inout ManagedObject) throws(KMIPFailure) -> SecretBytes {
        var fields = try KMIPFields(item)
        if object.type == .secretData { object.secretDataType = try fields.required(.secretDataType).enumeration() }
        var block = try KMIPFields(try fields.required(.keyBlock))
        try fields.finish()
        let format = try block.required(.keyFormatType).enumeration()
        // Compression applies to elliptic-curve keys only; some clients (libkmip, as pg_tde uses it) send a Key
        // Compression Type for symmetric keys all the same, and it changes nothing.
        _ = try block.optional(.keyCompressionType)?.enumeration()
        if block.optional(.keyWrappingData) != nil {
            throw KMIPFailure(.featureNotSupported, "kmsd takes key material unwrapped (TLS protects it); no Key Wrapping Data")
        }
        let keyValue = try block.required(.keyValue)
        let algorithm = try block.optional(.cryptographicAlgorithm)?.enumeration()
        let length = try block.optional(.cryptographicLength)?.integer()
        try block.finish()
        guard case .structure = keyValue.value else { throw KMIPFailure(.invalidField, "Key Value must be a Structure (unwrapped)") }
        var value = try KMIPFields(keyValue)
        let materialItem = try value.required(.keyMaterial)
        // Attributes inside the Key Value are allowed by KMIP; kmsd keeps the object's attributes apart and ignores them.
        _ = value.all(.attribute)
        try value.finish()

        let bytes: [UInt8]
        switch (object.type, format) {
        case (.symmetricKey, raw), (.secretData, raw), (.secretData, opaque):
            bytes = try materialItem.bytes()
        case (.symmetricKey, transparentSymmetricKey):
            var transparent = try KMIPFields(materialItem, in: "Transparent Symmetric Key")
            bytes = try transparent.required(.key).bytes()
            try transparent.finish()
        default:
            throw KMIPFailure(.keyFormatTypeNotSupported,
                              "kmsd takes \(object.type == .symmetricKey ? "Raw or Transparent Symmetric Key" : "Opaque or Raw") key material")
        }
        switch object.type {
        case .symmetricKey:
            guard algorithm == 3 else { throw KMIPFailure(.invalidField, "a Symmetric Key's key block must say Cryptographic Algorithm AES") }
            guard [16, 24, 32].contains(bytes.count) else { throw KMIPFailure(.invalidField, "an AES key has 128, 192 or 256 bits") }
            guard length == nil || length == Int32(bytes.count * 8) else {
                throw KMIPFailure(.invalidField, "Cryptographic Length \(length ?? 0) does not match the \(bytes.count * 8)-bit key material")
            }
            object.algorithm = 3
            object.length = Int32(bytes.count * 8)
        case .secretData:
            guard (1 ... 4096).contains(bytes.count) else { throw KMIPFailure(.invalidField, "Secret Data holds 1 to 4096 bytes") }
        }
        object.keyFormat = format
        object.materialLength = bytes.count
        return SecretBytes(copying: bytes)
    }

    /// The object structure Get returns, in `format` when asked (a Symmetric Key converts between Raw and Transparent).
    static func item(_ object: ManagedObject, material: SecretBytes, format requested: UInt32?) throws(KMIPFailure) -> TTLVItem {
        let format = requested ?? object.keyFormat
        let bytes = material.unsafeCopiedBytes()
        switch object.type {
        case .symmetricKey:
            let keyMaterial: TTLVItem
            switch format {
            case raw: keyMaterial = .bytes(.keyMaterial, bytes)
            case transparentSymmetricKey: keyMaterial = .structure(.keyMaterial, [.bytes(.key, bytes)])
            default: throw KMIPFailure(.keyFormatTypeNotSupported, "a Symmetric Key is returned Raw or Transparent Symmetric Key")
            }
            return .structure(.symmetricKey, [.structure(.keyBlock, [
                .enumeration(.keyFormatType, format),
                .structure(.keyValue, [keyMaterial]),
                .enumeration(.cryptographicAlgorithm, object.algorithm ?? 3),
                .integer(.cryptographicLength, object.length ?? Int32(bytes.count * 8)),
            ])])
        case .secretData:
            guard format == object.keyFormat || format == raw || format == opaque else {
                throw KMIPFailure(.keyFormatTypeNotSupported, "Secret Data is returned Opaque or Raw")
            }
            return .structure(.secretData, [
                .enumeration(.secretDataType, object.secretDataType ?? 1),
                .structure(.keyBlock, [.enumeration(.keyFormatType, format), .structure(.keyValue, [.bytes(.keyMaterial, bytes)])]),
            ])
        }
    }
}
