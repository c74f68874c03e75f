internal import CPKCS11
#if canImport(Glibc)
internal import Glibc
#endif

/// One attribute of a template (`CK_ATTRIBUTE`), with its value held in Swift until the call.
public struct PKCS11Attribute: Sendable {
    public enum Value: Sendable, Equatable {
        case bool(Bool)
        case ulong(UInt)
        case bytes([UInt8])
    }

    public let type: UInt
    public let value: Value

    public init(type: UInt, value: Value) {
        self.type = type
        self.value = value
    }

    public static func `class`(_ objectClass: ObjectClass) -> Self { .init(type: UInt(CKA_CLASS), value: .ulong(objectClass.rawValue)) }
    public static func keyType(_ keyType: KeyType) -> Self { .init(type: UInt(CKA_KEY_TYPE), value: .ulong(keyType.rawValue)) }
    public static func label(_ label: String) -> Self { .init(type: UInt(CKA_LABEL), value: .bytes(Array(label.utf8))) }
    public static func id(_ id: [UInt8]) -> Self { .init(type: UInt(CKA_ID), value: .bytes(id)) }
    public static func token(_ on: Bool) -> Self { .init(type: UInt(CKA_TOKEN), value: .bool(on)) }
    public static func `private`(_ on: Bool) -> Self { .init(type: UInt(CKA_PRIVATE), value: .bool(on)) }
    public static func sensitive(_ on: Bool) -> Self { .init(type: UInt(CKA_SENSITIVE), value: .bool(on)) }
    public static func extractable(_ on: Bool) -> Self { .init(type: UInt(CKA_EXTRACTABLE), value: .bool(on)) }
    public static func encrypt(_ on: Bool) -> Self { .init(type: UInt(CKA_ENCRYPT), value: .bool(on)) }
    public static func decrypt(_ on: Bool) -> Self { .init(type: UInt(CKA_DECRYPT), value: .bool(on)) }
    public static func wrap(_ on: Bool) -> Self { .init(type: UInt(CKA_WRAP), value: .bool(on)) }
    public static func unwrap(_ on: Bool) -> Self { .init(type: UInt(CKA_UNWRAP), value: .bool(on)) }
    public static func sign(_ on: Bool) -> Self { .init(type: UInt(CKA_SIGN), value: .bool(on)) }
    public static func verify(_ on: Bool) -> Self { .init(type: UInt(CKA_VERIFY), value: .bool(on)) }
    public static func derive(_ on: Bool) -> Self { .init(type: UInt(CKA_DERIVE), value: .bool(on)) }
    public static func modifiable(_ on: Bool) -> Self { .init(type: UInt(CKA_MODIFIABLE), value: .bool(on)) }
    public static func valueLength(_ length: UInt) -> Self { .init(type: UInt(CKA_VALUE_LEN), value: .ulong(length)) }
    public static func ecParameters(_ der: [UInt8]) -> Self { .init(type: UInt(CKA_EC_PARAMS), value: .bytes(der)) }
    /// `CKA_START_DATE` as the eight ASCII digits `YYYYMMDD` of a `CK_DATE`.
    public static func startDate(year: Int, month: Int, day: Int) -> Self {
        .init(type: UInt(CKA_START_DATE), value: .bytes(Array(ckDate(year: year, month: month, day: day).utf8)))
    }

    private static func ckDate(year: Int, month: Int, day: Int) -> String {
        func pad(_ value: Int, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return pad(year, 4) + pad(month, 2) + pad(day, 2)
    }
}

/// `CKO_*` object classes kmsd uses.
public struct ObjectClass: RawRepresentable, Sendable, Hashable {
    public let rawValue: UInt
    public init(rawValue: UInt) { self.rawValue = rawValue }
    public static let secretKey = ObjectClass(rawValue: UInt(CKO_SECRET_KEY))
    public static let privateKey = ObjectClass(rawValue: UInt(CKO_PRIVATE_KEY))
    public static let publicKey = ObjectClass(rawValue: UInt(CKO_PUBLIC_KEY))
    public static let data = ObjectClass(rawValue: UInt(CKO_DATA))
}

/// `CKK_*` key types kmsd uses.
public struct KeyType: RawRepresentable, Sendable, Hashable {
    public let rawValue: UInt
    public init(rawValue: UInt) { self.rawValue = rawValue }
    public static let aes = KeyType(rawValue: UInt(CKK_AES))
    public static let ec = KeyType(rawValue: UInt(CKK_EC))
}

/// `CKA_*` attribute types kmsd reads by name.
public enum AttributeType {
    public static let `class` = UInt(CKA_CLASS)
    public static let keyType = UInt(CKA_KEY_TYPE)
    public static let label = UInt(CKA_LABEL)
    public static let id = UInt(CKA_ID)
    public static let value = UInt(CKA_VALUE)
    public static let valueLength = UInt(CKA_VALUE_LEN)
    public static let token = UInt(CKA_TOKEN)
    public static let `private` = UInt(CKA_PRIVATE)
    public static let sensitive = UInt(CKA_SENSITIVE)
    public static let extractable = UInt(CKA_EXTRACTABLE)
    public static let neverExtractable = UInt(CKA_NEVER_EXTRACTABLE)
    public static let alwaysSensitive = UInt(CKA_ALWAYS_SENSITIVE)
    public static let encrypt = UInt(CKA_ENCRYPT)
    public static let decrypt = UInt(CKA_DECRYPT)
    public static let startDate = UInt(CKA_START_DATE)
    public static let ecPoint = UInt(CKA_EC_POINT)
    public static let ecParameters = UInt(CKA_EC_PARAMS)
}

/// Lays a template out in one contiguous allocation for the duration of `body`, then wipes and frees it.
///
/// Attribute values never outlive the call, so a value that must not linger (none of kmsd's templates holds key
/// material, but a caller's might) is zeroed before the memory is returned.
func withTemplate<R>(
    _ attributes: [PKCS11Attribute], _ body: (UnsafeMutablePointer<CK_ATTRIBUTE>?, CK_ULONG) throws -> R
) rethrows -> R {
    if attributes.isEmpty { return try body(nil, 0) }
    let sizes = attributes.map { attribute -> Int in
        switch attribute.value {
        case .bool: return MemoryLayout<CK_BBOOL>.size
        case .ulong: return MemoryLayout<CK_ULONG>.size
        case .bytes(let bytes): return bytes.count
        }
    }
    let total = sizes.reduce(0) { $0 + (($1 + 7) & ~7) }
    let base = UnsafeMutableRawPointer.allocate(byteCount: max(total, 8), alignment: 8)
    let array = UnsafeMutablePointer<CK_ATTRIBUTE>.allocate(capacity: attributes.count)
    defer {
        explicit_bzero(base, max(total, 8))
        base.deallocate()
        array.deallocate()
    }
    var offset = 0
    for (index, attribute) in attributes.enumerated() {
        let pointer = base + offset
        switch attribute.value {
        case .bool(let on): pointer.storeBytes(of: CK_BBOOL(on ? 1 : 0), as: CK_BBOOL.self)
        case .ulong(let value): pointer.storeBytes(of: CK_ULONG(value), as: CK_ULONG.self)
        case .bytes(let bytes): bytes.withUnsafeBytes { UnsafeMutableRawBufferPointer(start: pointer, count: bytes.count).copyMemory(from: $0) }
        }
        array.advanced(by: index).initialize(
            to: CK_ATTRIBUTE(type: CK_ATTRIBUTE_TYPE(attribute.type), pValue: pointer, ulValueLen: CK_ULONG(sizes[index])))
        offset += (sizes[index] + 7) & ~7
    }
    return try body(array, CK_ULONG(attributes.count))
}
