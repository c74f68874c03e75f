import Crypto
import Foundation
import KMSCore
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// The audit log's file: opened for appending, its chain recovered from the last complete line (a torn last line is
/// cut off), reopened when it was moved or replaced, and one way to write to it — `appendDurably`, a full write and
/// an `fdatasync` — used by every record, checkpoint and rotation.
final class AuditFile {
    let path: String
    let logger: Logger
    private(set) var fd: Int32 = -1
    /// Bytes in the current file.
    private(set) var size = 0

    /// The chain as the file ends: the last record's seq and the hash of its line (nil for an empty file).
    struct Tail {
        var seq: UInt64
        var prev: String
    }

    init(path: String, logger: Logger) {
        self.path = path
        self.logger = logger
    }

    var isOpen: Bool { fd >= 0 }

    /// Opens the file for appending and recovers the chain from its last complete line. A torn last line (a crash in
    /// the middle of a write, never acknowledged) is cut off. Returns the tail, or nil for an empty file (it
    /// continues the chain the writer holds: genesis for the very first).
    func open() throws -> Tail? {
        let descriptor = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw AuditError("cannot open the audit log \(path): \(String(cString: strerror(errno)))")
        }
        do {
            let tail = try recover(descriptor)
            fd = descriptor
            return tail
        } catch {
            Glibc.close(descriptor)
            throw error
        }
    }

    private func recover(_ descriptor: Int32) throws -> Tail? {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw AuditError("cannot read the audit log \(path)")
        }
        defer { try? handle.close() }
        let fileSize = Int(try handle.seekToEnd())
        size = fileSize
        guard fileSize > 0 else { return nil }
        let start = max(0, fileSize - 256 * 1024)
        try handle.seek(toOffset: UInt64(start))
        let tail = [UInt8](handle.readDataToEndOfFile())
        var end = tail.count
        if tail.last != UInt8(ascii: "\n") {
            guard let lastNewline = tail.lastIndex(of: UInt8(ascii: "\n")) else {
                throw AuditError("the audit log \(path) ends in a line longer than 256 KiB; refusing to guess where the chain ends")
            }
            end = lastNewline + 1
            guard ftruncate(descriptor, off_t(start + end)) == 0 else {
                throw AuditError("cannot cut the torn last line of \(path): \(String(cString: strerror(errno)))")
            }
            logger.warning("audit log ended in a torn line (a crash during a write); cut it off", metadata: ["file": "\(path)"])
            size = start + end
        }
        let body = tail[..<(end - 1)]
        let lineStart = body.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? body.startIndex
        guard start == 0 || lineStart > body.startIndex else {
            throw AuditError("the audit log \(path) ends in a line longer than 256 KiB")
        }
        let line = Array(body[lineStart...])
        guard let object = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
              let lastSeq = (object["seq"] as? NSNumber)?.uint64Value
        else {
            throw AuditError("the last line of the audit log \(path) is not an audit record; refusing to append to it")
        }
        return Tail(seq: lastSeq, prev: Hex.encode(SHA256.hash(data: line)))
    }

    /// Reopens when the file was moved or replaced (external log rotation) or after a failure. Returns the tail of a
    /// file it (re)opened, nil when the open file was still the one at `path`.
    func ensureOpen() throws -> Tail? {
        if fd >= 0 {
            var onDisk = stat()
            var open = stat()
            if stat(path, &onDisk) == 0, fstat(fd, &open) == 0, onDisk.st_ino == open.st_ino, onDisk.st_dev == open.st_dev {
                return nil
            }
            close()
        }
        return try self.open()
    }

    /// Writes all of `bytes` and syncs them: once this returns, the lines are durable. Returns how long the sync took.
    ///
    /// `fdatasync`, not `fsync`: it writes the data and the metadata needed to read it back (the file's new size),
    /// and skips what reading does not need (the modification time), one inode write fewer per group on ext4.
    @discardableResult
    func appendDurably(_ bytes: [UInt8]) throws -> Duration {
        var offset = 0
        while offset < bytes.count {
            let written = bytes.withUnsafeBytes { buffer -> Int in
                guard let base = buffer.baseAddress else { return 0 }
                return Glibc.write(fd, base.advanced(by: offset), buffer.count - offset)
            }
            if written < 0 {
                if errno == EINTR { continue }
                throw AuditError("write to \(path) failed: \(String(cString: strerror(errno)))")
            }
            offset += written
        }
        let started = ContinuousClock.now
        guard fdatasync(fd) == 0 else { throw AuditError("fdatasync of \(path) failed: \(String(cString: strerror(errno)))") }
        size += bytes.count
        return ContinuousClock.now - started
    }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// Renames the file to `archived` and opens a new, empty one at `path`.
    func archive(as archived: String) throws {
        guard rename(path, archived) == 0 else {
            throw AuditError("cannot rename \(path): \(String(cString: strerror(errno)))")
        }
        close()
        _ = try open()
    }
}
