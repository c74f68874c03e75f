import Foundation
import KMIPTTLV
import KMSCore
import KMSKMIP

/// `listen.kmip` and `kmip:`: the KMIP front end (docs/kmip.md).
extension Reader {
    /// The `kmip` section; nil when there is none. It needs the tls section (KMIP is always mutual TLS), the
    /// identities that may use it (`allow`) and the kmsd key that wraps managed objects (`wrapping_key`).
    mutating func kmip(_ value: Any?, listening: Bool, tls: Bool, keys: Set<KeyName>) -> KMIPConfiguration? {
        guard let value, !(value is NSNull) else {
            if listening { problem("kmip", "listen.kmip is set: add a kmip section (allow, wrapping_key)") }
            return nil
        }
        guard let kmipMap = map(value, "kmip", known: [
            "allow", "export", "wrapping_key", "grants", "max_message_bytes", "rewrap_interval", "max_response_bytes", "max_objects_per_owner",
            "max_locate_scan", "legacy_seals",
        ]) else { return nil }
        if !tls { problem("kmip", "the KMIP listener needs the tls section (KMIP is always mutual TLS)") }
        var configuration = KMIPConfiguration()
        configuration.allow = identityPatterns(kmipMap, "allow", "kmip")
        if configuration.allow.isEmpty { problem("kmip.allow", "list the identities that may use KMIP (e.g. uri:spiffe://prod/db/*)") }
        configuration.export = identityPatterns(kmipMap, "export", "kmip")
        if let text = string(kmipMap, "wrapping_key", "kmip", required: true) {
            if let key = try? KeyName(text), keys.contains(key) {
                configuration.wrappingKey = key
            } else {
                problem("kmip.wrapping_key", "'\(text.prefix(64))' is not a key in the keys section")
            }
        }
        if kmipMap["grants"] != nil && !(kmipMap["grants"] is [Any]) { problem("kmip.grants", "expected a list") }
        for (index, entry) in (kmipMap["grants"] as? [Any] ?? []).enumerated() {
            let path = "kmip.grants[\(index)]"
            let grantMap = map(entry, path, known: ["identities", "owners", "name_prefix"])
            let identities = identityPatterns(grantMap, "identities", path)
            if identities.isEmpty { problem("\(path).identities", "list the identities the grant shares objects with") }
            let owners = identityPatterns(grantMap, "owners", path)
            if owners.isEmpty { problem("\(path).owners", "list the owners whose objects the grant shares (only they may name objects under the prefix)") }
            guard let prefix = string(grantMap, "name_prefix", path, required: true) else { continue }
            if prefix.isEmpty { problem("\(path).name_prefix", "a grant shares the objects whose Name starts with a prefix; it cannot be empty") }
            configuration.grants.append(.init(identities: identities, owners: owners, namePrefix: prefix))
        }
        configuration.rewrapInterval = duration(kmipMap, "rewrap_interval", "kmip", default: .seconds(10))
        configuration.limits.maxMessageBytes = int(kmipMap, "max_message_bytes", "kmip", default: 1 << 20, range: 4096...(64 << 20))
        configuration.maxResponseBytes = int(kmipMap, "max_response_bytes", "kmip", default: 1 << 20, range: 4096...(64 << 20))
        configuration.maxObjectsPerOwner = int(kmipMap, "max_objects_per_owner", "kmip", default: 10_000, range: 1...100_000_000)
        configuration.maxLocateScan = int(kmipMap, "max_locate_scan", "kmip", default: 20_000, range: 500...100_000_000)
        switch string(kmipMap, "legacy_seals", "kmip") ?? "open" {
        case "open": configuration.acceptLegacySeals = true
        case "refuse": configuration.acceptLegacySeals = false
        default: problem("kmip.legacy_seals", "expected open (objects with the old seal, bound to their id only, are opened and resealed) or refuse")
        }
        return configuration
    }
}
