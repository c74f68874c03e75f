/// A PKCS#11 URI (RFC 7512), e.g. `pkcs11:token=kms;object=orders?module-path=/usr/lib/softhsm/libsofthsm2.so`.
///
/// Parsing is strict, because a URI in kmsd's configuration selects the token that holds master keys: an unknown
/// attribute (a typo such as `tokn=`) is an error rather than ignored, each attribute may appear once, and
/// percent-encoding must be well formed. Vendor attributes (`x-…`, RFC 7512 §2.3) are accepted and kept.
/// `description` never prints `pin-value`.
public struct PKCS11URI: Sendable, Equatable, CustomStringConvertible {
    // Token (path) attributes.
    public var token: String?
    public var manufacturer: String?
    public var serial: String?
    public var model: String?
    // Library attributes.
    public var libraryManufacturer: String?
    public var libraryDescription: String?
    public var libraryVersion: String?
    // Slot attributes.
    public var slotID: UInt?
    public var slotDescription: String?
    public var slotManufacturer: String?
    // Object attributes.
    public var object: String?
    public var type: String?
    public var id: [UInt8]?
    // Query attributes.
    public var modulePath: String?
    public var moduleName: String?
    public var pinSource: String?
    public var pinValue: String?
    /// `x-` attributes, path and query, in order of appearance.
    public var vendorAttributes: [(name: String, value: String)] = []
    /// Vendor (`x-`) attributes of the query section, kept apart so printing the URI puts them back there.
    public var vendorQueryAttributes: [(name: String, value: String)] = []

    public init() {}

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.description == rhs.description && lhs.pinValue == rhs.pinValue }

    /// Parses `text`; throws `PKCS11URIError` saying what is wrong and where.
    public init(parsing text: String) throws {
        guard let colon = text.firstIndex(of: ":"), text[..<colon].lowercased() == "pkcs11" else {
            throw PKCS11URIError("a PKCS#11 URI starts with \"pkcs11:\"")
        }
        let rest = text[text.index(after: colon)...]
        let path: Substring
        let query: Substring?
        if let mark = rest.firstIndex(of: "?") {
            path = rest[..<mark]
            query = rest[rest.index(after: mark)...]
        } else {
            path = rest
            query = nil
        }
        var seen: Set<String> = []
        for component in path.split(separator: ";", omittingEmptySubsequences: false) where !(component.isEmpty && path.isEmpty) {
            let (name, raw) = try Self.splitAttribute(component, section: "path")
            guard seen.insert(name).inserted else { throw PKCS11URIError("attribute \"\(name)\" appears twice") }
            try assignPath(name, raw)
        }
        if let query {
            for component in query.split(separator: "&", omittingEmptySubsequences: false) {
                let (name, raw) = try Self.splitAttribute(component, section: "query")
                guard seen.insert("?" + name).inserted else { throw PKCS11URIError("query attribute \"\(name)\" appears twice") }
                try assignQuery(name, raw)
            }
        }
        if pinSource != nil && pinValue != nil {
            throw PKCS11URIError("pin-source and pin-value cannot both be given")
        }
    }

    private static func splitAttribute(_ component: Substring, section: String) throws -> (String, Substring) {
        guard let equals = component.firstIndex(of: "=") else {
            throw PKCS11URIError("\(section) attribute \"\(component)\" has no \"=\"")
        }
        let name = String(component[..<equals])
        guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
            throw PKCS11URIError("\(section) attribute name \"\(name)\" is not valid")
        }
        return (name, component[component.index(after: equals)...])
    }

    private mutating func assignPath(_ name: String, _ raw: Substring) throws {
        switch name {
        case "token": token = try Self.text(raw, name, maxBytes: 32)
        case "manufacturer": manufacturer = try Self.text(raw, name, maxBytes: 32)
        case "serial": serial = try Self.text(raw, name, maxBytes: 16)
        case "model": model = try Self.text(raw, name, maxBytes: 16)
        case "library-manufacturer": libraryManufacturer = try Self.text(raw, name, maxBytes: 32)
        case "library-description": libraryDescription = try Self.text(raw, name, maxBytes: 32)
        case "library-version":
            let value = try Self.text(raw, name)
            let parts = value.split(separator: ".", omittingEmptySubsequences: false)
            guard (1...2).contains(parts.count), parts.allSatisfy({ !$0.isEmpty && UInt8($0) != nil }) else {
                throw PKCS11URIError("library-version \"\(value)\" is not M or M.N")
            }
            libraryVersion = value
        case "slot-id":
            let value = try Self.text(raw, name)
            guard !value.isEmpty, value.allSatisfy(\.isASCII), let number = UInt(value) else {
                throw PKCS11URIError("slot-id \"\(value)\" is not a decimal number")
            }
            slotID = number
        case "slot-description": slotDescription = try Self.text(raw, name, maxBytes: 64)
        case "slot-manufacturer": slotManufacturer = try Self.text(raw, name, maxBytes: 32)
        case "object": object = try Self.text(raw, name)
        case "type":
            let value = try Self.text(raw, name)
            guard ["public", "private", "cert", "secret-key", "data"].contains(value) else {
                throw PKCS11URIError("type \"\(value)\" is not one of public, private, cert, secret-key, data")
            }
            type = value
        case "id": id = try Self.percentDecoded(raw, name)
        default:
            guard name.hasPrefix("x-") else { throw PKCS11URIError("unknown path attribute \"\(name)\"") }
            vendorAttributes.append((name, try Self.text(raw, name)))
        }
    }

    private mutating func assignQuery(_ name: String, _ raw: Substring) throws {
        switch name {
        case "module-path":
            let value = try Self.text(raw, name)
            guard value.hasPrefix("/") else { throw PKCS11URIError("module-path must be an absolute path") }
            modulePath = value
        case "module-name": moduleName = try Self.text(raw, name)
        case "pin-source": pinSource = try Self.text(raw, name)
        case "pin-value": pinValue = try Self.text(raw, name)
        default:
            guard name.hasPrefix("x-") else { throw PKCS11URIError("unknown query attribute \"\(name)\"") }
            vendorQueryAttributes.append((name, try Self.text(raw, name)))
        }
    }

    private static func text(_ raw: Substring, _ name: String, maxBytes: Int? = nil) throws -> String {
        let bytes = try percentDecoded(raw, name)
        guard let string = String(validating: bytes, as: UTF8.self) else {
            throw PKCS11URIError("value of \(name) is not valid UTF-8")
        }
        if let maxBytes, bytes.count > maxBytes {
            throw PKCS11URIError("value of \(name) is \(bytes.count) bytes; PKCS#11 allows at most \(maxBytes)")
        }
        return string
    }

    /// Decodes `%XX` escapes. Raw bytes outside printable ASCII and malformed escapes are errors.
    static func percentDecoded(_ raw: Substring, _ name: String) throws -> [UInt8] {
        var output: [UInt8] = []
        var iterator = Array(raw.utf8).makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else {
                    throw PKCS11URIError("value of \(name) has a malformed percent-escape")
                }
                output.append(high << 4 | low)
            } else if byte > 0x20 && byte < 0x7F {
                output.append(byte)
            } else {
                throw PKCS11URIError("value of \(name) has a character that must be percent-encoded")
            }
        }
        return output
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    /// Whether the token described by `info` has every token attribute this URI names.
    public func matches(_ info: TokenInfo) -> Bool {
        if let token, token != info.label { return false }
        if let manufacturer, manufacturer != info.manufacturerID { return false }
        if let serial, serial != info.serialNumber { return false }
        if let model, model != info.model { return false }
        return true
    }

    /// The URI with every value percent-encoded where needed; `pin-value` is shown as `<redacted>`.
    public var description: String {
        var path: [String] = []
        func add(_ name: String, _ value: String?) { if let value { path.append("\(name)=\(Self.encode(Array(value.utf8)))") } }
        add("token", token)
        add("manufacturer", manufacturer)
        add("serial", serial)
        add("model", model)
        add("library-manufacturer", libraryManufacturer)
        add("library-description", libraryDescription)
        add("library-version", libraryVersion)
        if let slotID { path.append("slot-id=\(slotID)") }
        add("slot-description", slotDescription)
        add("slot-manufacturer", slotManufacturer)
        add("object", object)
        add("type", type)
        if let id { path.append("id=" + id.map { "%" + ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()) }
        var query: [String] = []
        if let modulePath { query.append("module-path=\(Self.encode(Array(modulePath.utf8)))") }
        if let moduleName { query.append("module-name=\(Self.encode(Array(moduleName.utf8)))") }
        if let pinSource { query.append("pin-source=\(Self.encode(Array(pinSource.utf8)))") }
        if pinValue != nil { query.append("pin-value=<redacted>") }
        for (name, value) in vendorAttributes { path.append("\(name)=\(Self.encode(Array(value.utf8)))") }
        for (name, value) in vendorQueryAttributes { query.append("\(name)=\(Self.encode(Array(value.utf8)))") }
        return "pkcs11:" + path.joined(separator: ";") + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))
    }

    private static func encode(_ bytes: [UInt8]) -> String {
        var out = ""
        for byte in bytes {
            let c = Character(Unicode.Scalar(byte))
            if byte < 0x80, c.isLetter || c.isNumber || "-._~:/@!$'()*+,".contains(c) {
                out.append(c)
            } else {
                out += "%" + (byte < 16 ? "0" : "") + String(byte, radix: 16, uppercase: true)
            }
        }
        return out
    }
}

/// A PKCS#11 URI that cannot be parsed; the message names the attribute and never echoes a `pin-value`.
public struct PKCS11URIError: Error, Sendable, Equatable, CustomStringConvertible {
    public let message: String
    init(_ message: String) { self.message = message }
    public var description: String { "invalid PKCS#11 URI: \(message)" }
}
