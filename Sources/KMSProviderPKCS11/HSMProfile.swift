public import PKCS11

/// What kmsd needs to know about an HSM family: its quirks as data, so the provider never branches on a vendor name.
/// The shipped profiles live in `hsm-profiles/*.yaml`; `softhsm2` is also built in for tests and development.
public struct HSMProfile: Sendable, Equatable {
    /// Who chooses the GCM IV.
    public enum IVSource: String, Sendable, Codable {
        /// kmsd draws 96 random bits per wrap and passes them in `pIv`.
        case caller
        /// The token generates the IV and writes it back into `pIv` (FIPS-mode HSMs that refuse caller IVs).
        case token
    }

    public var name: String
    /// Which `CK_GCM_PARAMS` layout the token accepts.
    public var gcmLayout: GCMParameterLayout
    public var ivSource: IVSource
    /// Sessions the token allows this application, if the token's own `ulMaxRwSessionCount` understates or omits it.
    public var maxSessions: Int?
    /// How the token reports a GCM tag mismatch from `C_Decrypt` (the standard says `CKR_ENCRYPTED_DATA_INVALID`;
    /// SoftHSM says `CKR_GENERAL_ERROR`). These codes mean "bad input", not device trouble.
    public var badTagReturnValues: Set<UInt>
    /// Mechanisms the token must offer for kmsd to use it.
    public var requiredMechanisms: [UInt]

    public init(
        name: String, gcmLayout: GCMParameterLayout = .v240, ivSource: IVSource = .caller, maxSessions: Int? = nil,
        badTagReturnValues: Set<UInt> = [PKCS11ReturnValue.encryptedDataInvalid],
        requiredMechanisms: [UInt] = [MechanismType.aesKeyGen, MechanismType.aesGCM]
    ) {
        self.name = name
        self.gcmLayout = gcmLayout
        self.ivSource = ivSource
        self.maxSessions = maxSessions
        self.badTagReturnValues = badTagReturnValues
        self.requiredMechanisms = requiredMechanisms
    }

    /// SoftHSM2 2.6: v2.40 GCM parameters, caller IVs, `CKR_GENERAL_ERROR` for a bad tag.
    public static let softhsm2 = HSMProfile(
        name: "softhsm2",
        badTagReturnValues: [PKCS11ReturnValue.encryptedDataInvalid, PKCS11ReturnValue.generalError])
}
