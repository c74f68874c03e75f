#if canImport(Glibc)
internal import Glibc
#elseif canImport(Darwin)
internal import Darwin
#endif

/// Secret bytes (a DEK, a PIN, a token): held in memory that is wiped when the last reference goes away, and never
/// printed, dumped or reflected.
///
/// Immutable after initialization, hence `Sendable`. Read the bytes with `withUnsafeBytes` and do not copy them into
/// ordinary arrays that outlive the call: those are not wiped.
public final class SecretBytes: @unchecked Sendable, CustomStringConvertible, CustomDebugStringConvertible,
    CustomReflectable, Equatable
{
    // @unchecked: the buffer is written only inside init and read-only afterwards.
    private let storage: UnsafeMutableRawBufferPointer

    /// The number of secret bytes.
    public var count: Int { byteCount }

    /// Allocates `count` bytes and lets `initializer` fill them in place (for example with an HSM's random generator
    /// or a decryption), so the secret never exists outside wiped storage. If `initializer` throws, the memory is
    /// wiped and freed (by deinit, which Swift runs for a fully initialized object whose init throws).
    public init(count: Int, initializer: (UnsafeMutableRawBufferPointer) throws -> Void) rethrows {
        precondition(count >= 0, "SecretBytes count must not be negative")
        byteCount = count
        storage = .allocate(byteCount: max(count, 1), alignment: 16)
        storage.initializeMemory(as: UInt8.self, repeating: 0)
        // If the initializer throws, the object is released and deinit wipes and frees the storage.
        try initializer(UnsafeMutableRawBufferPointer(rebasing: storage[0..<count]))
    }

    /// The secret's length (the allocation is at least one byte so that an empty secret still has an address).
    private let byteCount: Int

    /// Copies `bytes` into wiped storage. The caller remains responsible for the source.
    public convenience init(copying bytes: some Collection<UInt8>) {
        self.init(count: bytes.count) { buffer in
            _ = buffer.initializeMemory(as: UInt8.self, from: bytes)
        }
    }

    /// Copies a string's UTF-8 bytes (for a PIN or token read from the environment or a file).
    public convenience init(utf8 string: String) {
        self.init(copying: Array(string.utf8))
    }

    /// `count` bytes from the system's cryptographically secure generator.
    public static func random(count: Int) -> SecretBytes {
        SecretBytes(count: count) { Randomness.fill($0) }
    }

    /// Gives `body` read access to the secret. Threading: safe from any thread.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(rebasing: storage[0..<byteCount]))
    }

    /// Constant-time comparison (the time depends on the lengths only).
    public static func == (lhs: SecretBytes, rhs: SecretBytes) -> Bool {
        lhs.withUnsafeBytes { a in
            rhs.withUnsafeBytes { b in
                guard a.count == b.count else { return false }
                var difference: UInt8 = 0
                for index in 0..<a.count { difference |= a[index] ^ b[index] }
                return difference == 0
            }
        }
    }

    /// Copies the secret out as an array, for handing to a serializer at the very edge (a response body, a test).
    /// The copy is not wiped: prefer `withUnsafeBytes`.
    public func unsafeCopiedBytes() -> [UInt8] { withUnsafeBytes { Array($0) } }

    public var description: String { "<redacted>" }
    public var debugDescription: String { "<redacted>" }
    public var customMirror: Mirror { Mirror(self, children: [], displayStyle: .struct) }

    deinit {
        Self.wipe(storage)
        storage.deallocate()
    }

    private static func wipe(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress else { return }
        #if canImport(Glibc)
        explicit_bzero(base, buffer.count)
        #else
        memset_s(base, buffer.count, 0, buffer.count)
        #endif
    }
}
