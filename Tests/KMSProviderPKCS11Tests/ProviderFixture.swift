import KMSCore
@testable import KMSProviderPKCS11
import KMSTestSupport
import PKCS11

/// Starts a provider on `token`, runs `body`, and always shuts the provider down.
func withProvider<T>(
    on token: SoftHSMToken, sessions: Int = 4, checkoutWait: Duration = .seconds(2), callTimeout: Duration = .seconds(5),
    clock: (any PoolClock)? = nil, _ body: (PKCS11KeyProvider) async throws -> T
) async throws -> T {
    var configuration = configuration(token, sessions: sessions, checkoutWait: checkoutWait, callTimeout: callTimeout)
    if let clock { configuration.poolClock = clock }
    let provider = try await PKCS11KeyProvider.start(configuration)
    do {
        let result = try await body(provider)
        await provider.shutdown()
        return result
    } catch {
        await provider.shutdown()
        throw error
    }
}

func configuration(
    _ token: SoftHSMToken, sessions: Int = 4, checkoutWait: Duration = .seconds(2), callTimeout: Duration = .seconds(5)
) -> PKCS11ProviderConfiguration {
    PKCS11ProviderConfiguration(
        modulePath: token.module.path, token: token.uri, pin: token.pin, profile: .softhsm2, maxSessions: sessions,
        checkoutWait: checkoutWait, callTimeout: callTimeout)
}

/// A logged-in session of our own on the token, to look at the objects the provider made.
func inspectionSession(_ token: SoftHSMToken) throws -> PKCS11Session {
    let session = try token.module.openSession(token.slot)
    try Array(token.userPIN.utf8).withUnsafeBytes { try session.login(pin: $0) }
    return session
}

let orders = try! KeyName("orders")
let invoices = try! KeyName("invoices")
