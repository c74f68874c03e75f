public import KMSCore
public import PKCS11

/// How `PKCS11KeyProvider` reaches its token. The PIN is a `SecretBytes` and is never printed.
public struct PKCS11ProviderConfiguration: Sendable, CustomStringConvertible {
    /// Path of the PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`).
    public var modulePath: String
    /// Which token: `pkcs11:token=<label>` or with `serial=`; matched on every reconnect, never by remembered slot id.
    public var token: PKCS11URI
    /// The user PIN.
    public var pin: SecretBytes
    /// The token's quirks.
    public var profile: HSMProfile
    /// Pool sessions (the anchor session holding the login is extra). Capped by the token's `ulMaxRwSessionCount` − 1
    /// and by the profile's `maxSessions` − 1.
    public var maxSessions: Int
    /// How long a caller waits for a free session before getting `unavailable`.
    public var checkoutWait: Duration
    /// The deadline of each HSM call; a call that overruns it returns `unavailable` and its session is written off.
    public var callTimeout: Duration
    /// How many callers may wait for a session at once; more get `unavailable` at once.
    public var maxWaiters: Int
    /// How old the cached list of a key's versions may get before a wrap re-reads it from the token (replicas see
    /// each other's rotations within this interval; unwrap never depends on it, it finds KEKs by `CKA_ID`).
    public var catalogRefreshInterval: Duration
    /// After the HSM is lost, the first reconnect attempt comes after about this long; each failure doubles the wait
    /// (with jitter) up to `reconnectMaxDelay`.
    public var reconnectInitialDelay: Duration
    public var reconnectMaxDelay: Duration
    /// What the session pool's checkout wait is measured on (tests move a manual clock).
    var poolClock: any PoolClock = SystemPoolClock()

    /// The same, with the token given as the text of a PKCS#11 URI (as the configuration file has it).
    public init(
        modulePath: String, tokenURI: String, pin: SecretBytes, profile: HSMProfile, maxSessions: Int = 8,
        checkoutWait: Duration = .seconds(2), callTimeout: Duration = .seconds(1)
    ) throws {
        self.init(modulePath: modulePath, token: try PKCS11URI(parsing: tokenURI), pin: pin, profile: profile,
                  maxSessions: maxSessions, checkoutWait: checkoutWait, callTimeout: callTimeout)
    }

    public init(
        modulePath: String, token: PKCS11URI, pin: SecretBytes, profile: HSMProfile, maxSessions: Int = 8,
        checkoutWait: Duration = .seconds(2), callTimeout: Duration = .seconds(1), maxWaiters: Int = 1024,
        catalogRefreshInterval: Duration = .seconds(30), reconnectInitialDelay: Duration = .milliseconds(50),
        reconnectMaxDelay: Duration = .seconds(1)
    ) {
        self.modulePath = modulePath
        self.token = token
        self.pin = pin
        self.profile = profile
        self.maxSessions = maxSessions
        self.checkoutWait = checkoutWait
        self.callTimeout = callTimeout
        self.maxWaiters = maxWaiters
        self.catalogRefreshInterval = catalogRefreshInterval
        self.reconnectInitialDelay = reconnectInitialDelay
        self.reconnectMaxDelay = reconnectMaxDelay
    }

    public var description: String {
        "PKCS11ProviderConfiguration(module: \(modulePath), token: \(token), pin: <redacted>, profile: \(profile.name), "
            + "sessions: \(maxSessions), checkoutWait: \(checkoutWait), callTimeout: \(callTimeout))"
    }
}
