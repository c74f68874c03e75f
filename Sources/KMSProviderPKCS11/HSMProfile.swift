public import PKCS11
import KMSCore

/// What kmsd needs to know about an HSM family: its quirks as data, so the provider never branches on a vendor name.
/// The shipped profiles live in `hsm-profiles/*.yaml` (see `HSMProfile.load`); `softhsm2` is also built in for tests
/// and development.
public struct HSMProfile: Sendable, Equatable {
    /// Who chooses the GCM IV.
    public enum IVSource: String, Sendable, Codable {
        /// kmsd draws 96 random bits per wrap and passes them in `pIv`.
        case caller
        /// The token generates the IV and writes it back into `pIv` (FIPS-mode HSMs that refuse caller IVs).
        case token
    }

    /// What one `C_Login` covers.
    public enum LoginScope: String, Sendable, Codable {
        /// The standard: a login holds for every session of the application on the token.
        case perApplication = "per-application"
        /// Each session must log in by itself.
        case perSession = "per-session"
    }

    public var name: String
    public var vendor: String
    /// Whether kmsd's CI exercises this profile against a real module.
    public var tested: Bool
    /// Where the vendor's PKCS#11 module is usually installed (hints for operators and `kms-probe`).
    public var modulePaths: [String]
    /// Which `CK_GCM_PARAMS` layout the token accepts.
    public var gcmLayout: GCMParameterLayout
    public var ivSource: IVSource
    /// Sessions the token allows this application, if the token's own `ulMaxRwSessionCount` understates or omits it.
    public var maxSessions: Int?
    /// The HSM drops sessions idle for this long; the pool then meets `CKR_SESSION_HANDLE_INVALID` and replaces them.
    public var idleSessionTimeout: Duration?
    public var login: LoginScope
    /// How the token reports a GCM tag mismatch from `C_Decrypt` (the standard says `CKR_ENCRYPTED_DATA_INVALID`;
    /// SoftHSM says `CKR_GENERAL_ERROR`). These codes mean "bad input", not device trouble.
    public var badTagReturnValues: Set<UInt>
    /// Mechanisms the token must offer for kmsd to use it.
    public var requiredMechanisms: [UInt]
    /// What the PIN looks like (`plain`, `user:password`, …), for operators.
    public var pinFormat: String
    public var notes: String

    public init(
        name: String, vendor: String = "", tested: Bool = false, modulePaths: [String] = [],
        gcmLayout: GCMParameterLayout = .v240, ivSource: IVSource = .caller, maxSessions: Int? = nil,
        idleSessionTimeout: Duration? = nil, login: LoginScope = .perApplication,
        badTagReturnValues: Set<UInt> = [PKCS11ReturnValue.encryptedDataInvalid],
        requiredMechanisms: [UInt] = [MechanismType.aesKeyGen, MechanismType.aesGCM], pinFormat: String = "plain",
        notes: String = ""
    ) {
        self.name = name
        self.vendor = vendor
        self.tested = tested
        self.modulePaths = modulePaths
        self.gcmLayout = gcmLayout
        self.ivSource = ivSource
        self.maxSessions = maxSessions
        self.idleSessionTimeout = idleSessionTimeout
        self.login = login
        self.badTagReturnValues = badTagReturnValues
        self.requiredMechanisms = requiredMechanisms
        self.pinFormat = pinFormat
        self.notes = notes
    }

    /// SoftHSM2 2.6: v2.40 GCM parameters, caller IVs, `CKR_GENERAL_ERROR` for a bad tag. The same values as
    /// `hsm-profiles/softhsm2.yaml` (a test checks that they agree).
    public static let softhsm2 = HSMProfile(
        name: "softhsm2", vendor: "OpenDNSSEC SoftHSM 2.6", tested: true,
        modulePaths: ["/usr/lib/softhsm/libsofthsm2.so"],
        badTagReturnValues: [PKCS11ReturnValue.encryptedDataInvalid, PKCS11ReturnValue.generalError])
}

extension HSMProfile {
    /// The IV buffer for one AES-GCM encryption: 96 random bits from the system's CSPRNG when kmsd chooses the IV,
    /// zeros for the token to overwrite when it does (`iv_source`).
    func initialIV() -> [UInt8] {
        var iv = [UInt8](repeating: 0, count: 12)
        if ivSource == .caller {
            iv.withUnsafeMutableBytes { Randomness.fill($0) }
        }
        return iv
    }
}
