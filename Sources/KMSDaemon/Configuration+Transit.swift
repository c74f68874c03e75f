import Foundation
import KMSCore
import KMSService
import KMSTransit
import VaultWire

/// `listen.transit` and `transit:`: the Vault transit front end (docs/transit-frontend.md).
extension Reader {
    mutating func transit(_ value: Any?, listening: Bool, tls: Bool, keys: Set<KeyName>) -> TransitConfiguration? {
        guard let value, !(value is NSNull) else {
            if listening { problem("transit", "listen.transit is set: add a transit section (its keys and tokens)") }
            return nil
        }
        guard let transitMap = map(value, "transit", known: ["mount", "keys", "tokens", "login_ttl", "max_login_tokens"]) else { return nil }
        if !listening { problem("listen.transit", "the transit section needs an address to listen on (host:port)") }
        if !tls { problem("transit", "the transit listener needs the tls section (it always serves HTTPS)") }
        var configuration = TransitConfiguration()
        let mount = string(transitMap, "mount", "transit") ?? "transit"
        let mountParts = mount.split(separator: "/", omittingEmptySubsequences: false)
        if mount.isEmpty || mountParts.contains(where: { !VaultRequestLine.isValidKeyName(String($0)) }) || ["sys", "auth"].contains(String(mountParts[0])) {
            problem("transit.mount", "expected a path such as transit or kv/transit (not under sys/ or auth/)")
        }
        configuration.mount = mount
        if transitMap["keys"] != nil && !(transitMap["keys"] is [String: Any]) { problem("transit.keys", "expected a mapping of transit name to kmsd key") }
        for (name, entry) in (transitMap["keys"] as? [String: Any] ?? [:]).sorted(by: { $0.key < $1.key }) {
            let path = "transit.keys.\(name)"
            if !VaultRequestLine.isValidKeyName(name) { problem(path, "not a valid transit key name (letters, digits, - _ .)") }
            var keyText: String?
            var derived = false
            if let text = entry as? String {
                keyText = text
            } else {
                let entryMap = map(entry, path, known: ["key", "derived"])
                keyText = string(entryMap, "key", path, required: true)
                derived = bool(entryMap, "derived", path, default: false)
            }
            guard let keyText else { continue }
            guard let key = try? KeyName(keyText), keys.contains(key) else {
                problem(path, "'\(keyText.prefix(64))' is not a key in the keys section")
                continue
            }
            configuration.keys[name] = .init(key: key, derived: derived)
        }
        if transitMap["tokens"] != nil && !(transitMap["tokens"] is [Any]) { problem("transit.tokens", "expected a list") }
        for (index, entry) in (transitMap["tokens"] as? [Any] ?? []).enumerated() {
            let path = "transit.tokens[\(index)]"
            let tokenMap = map(entry, path, known: ["sha256", "identity", "ttl", "renewable", "max_ttl", "policies"])
            let hash = (string(tokenMap, "sha256", path, required: true) ?? "").lowercased()
            guard hash.count == 64, let bytes = Hex.decode(hash) else {
                problem("\(path).sha256", "expected the token's SHA-256 in hex (64 digits), never the token itself")
                continue
            }
            guard let text = string(tokenMap, "identity", path, required: true), let identity = identityPattern(text, "\(path).identity") else {
                continue
            }
            guard !identity.contains("*") else {
                problem("\(path).identity", "one identity, not a pattern: no wildcards")
                continue
            }
            let ttl = optionalDuration(tokenMap, "ttl", path)
            let maxTTL = optionalDuration(tokenMap, "max_ttl", path)
            let renewable = bool(tokenMap, "renewable", path, default: false)
            if renewable && ttl == nil { problem("\(path).renewable", "a renewable token needs a ttl") }
            let policies = strings(tokenMap, "policies", path)
            configuration.tokens.append(.init(hash: bytes, identity: identity, ttl: ttl, renewable: renewable, maxTTL: maxTTL,
                                              policies: policies.isEmpty ? ["default"] : policies))
        }
        configuration.loginTTL = duration(transitMap, "login_ttl", "transit", default: .seconds(3600))
        configuration.maxLoginTokens = int(transitMap, "max_login_tokens", "transit", default: 10_000, range: 1...1_000_000)
        return configuration
    }
}
