// A first look at kmsd's HSM provider, until the daemon exists: makes a SoftHSM2 token in a temporary directory,
// creates a key, wraps and unwraps a data key, rotates, retires the old version and shows that old wrapped keys
// still unwrap. Prints no secret: DEKs are shown only by their length.
import Foundation
import KMSCore
import PKCS11
import KMSProviderPKCS11
import KMSTestSupport

func hexPrefix(_ bytes: [UInt8], _ count: Int = 24) -> String {
    bytes.prefix(count).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() + (bytes.count > count ? "…" : "")
}

do {
    let token = try SoftHSMToken.create(label: "kmsd-demo")
    print("token        \(token.uri) (SoftHSM2, temporary)")
    let provider = try await PKCS11KeyProvider.start(PKCS11ProviderConfiguration(
        modulePath: token.module.path, token: token.uri, pin: token.pin, profile: .softhsm2, maxSessions: 4))
    let name = try KeyName("demo")
    let context: EncryptionContext = ["cluster": "pg-7", "table": "orders"]

    let created = try await provider.createKey(name)
    print("create       key '\(name)' \(created.versions.map(\.description).joined(separator: ", "))")
    let dataKey = try await provider.generateDataKey(name, context: context)
    print("datakey      \(dataKey.plaintext.count)-byte DEK under \(dataKey.version), wrapped \(dataKey.wrapped.count) bytes: \(hexPrefix(dataKey.wrapped))")
    let unwrapped = try await provider.unwrap(name, wrapped: dataKey.wrapped, context: context)
    print("unwrap       \(unwrapped.version): \(unwrapped.plaintext == dataKey.plaintext ? "same DEK" : "DIFFERENT DEK")")
    do {
        _ = try await provider.unwrap(name, wrapped: dataKey.wrapped, context: ["cluster": "pg-8", "table": "orders"])
        print("wrong context unwrapped: this is a bug")
    } catch let error as KMSError {
        print("wrong ctx    refused: \(error)")
    }
    let v2 = try await provider.rotateKey(name)
    print("rotate       now wrapping with \(v2.version)")
    try await provider.retireVersion(name, version: .first)
    let described = try await provider.describeKey(name)
    print("versions     " + described.versions.map { "\($0.version) \($0.state)" }.joined(separator: ", "))
    let old = try await provider.unwrap(name, wrapped: dataKey.wrapped, context: context)
    print("old blob     still unwraps under \(old.version): \(old.plaintext == dataKey.plaintext ? "same DEK" : "DIFFERENT DEK")")
    print("new datakey  under \(try await provider.generateDataKey(name, context: context).version)")
    await provider.shutdown()
} catch {
    print("demo failed: \(error)")
    exit(1)
}
