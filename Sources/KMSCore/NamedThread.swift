import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// kmsd's own threads (HSM calls, the audit writer, the deadline sweepers), named so that `top -H`, perf and gdb tell
/// them apart.
public enum NamedThread {
    /// Starts a thread named `name` (at most 15 bytes reach the kernel) that runs `body`.
    public static func start(_ name: String, _ body: @escaping @Sendable () -> Void) {
        let thread = Thread {
            // Named from inside. Foundation's setter does not always reach the kernel (about half the runs of
            // HSMExecutorTests left a thread with the name it inherited), so the kernel's name is set directly too.
            Thread.current.name = name
            setKernelName(name)
            body()
        }
        thread.start()
    }

    /// Names the calling thread in the kernel (`/proc/thread-self/comm`; Swift cannot call the variadic `prctl`, and
    /// Glibc's module does not export `pthread_setname_np`). Best effort: a name is a diagnostic aid.
    static func setKernelName(_ name: String) {
        let descriptor = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
        guard descriptor >= 0 else { return }
        let bytes = Array(name.utf8.prefix(15))
        _ = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
        close(descriptor)
    }
}
