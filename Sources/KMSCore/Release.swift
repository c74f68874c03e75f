/// This build of kmsd, as replicas report it to each other (`kmsctl status`).
public enum KMSDRelease {
    public static let version = "0.1.0"
}
