#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes a file atomically: everything goes to a temporary file next to the target, which is
/// flushed and renamed over the target only when complete.
final class AtomicFileWriter {
    let path: String
    let tempPath: String
    private let fd: Int32
    private var buffer: [UInt8] = []
    private var open_ = true

    init(path: String) throws {
        self.path = path
        tempPath = path + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        fd = open(tempPath, O_WRONLY | O_CREAT | O_EXCL, 0o644)
        guard fd >= 0 else {
            throw ModelFormatError.unreadable(file: path, reason: "cannot create \(tempPath): \(String(cString: strerror(errno)))")
        }
        buffer.reserveCapacity(1 << 20)
    }

    private func flushBuffer() throws {
        try buffer.withUnsafeBytes { try writeAll($0) }
        buffer.removeAll(keepingCapacity: true)
    }

    private func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw ModelFormatError.unreadable(file: path, reason: "write failed: \(String(cString: strerror(errno)))")
            }
            done += n
        }
    }

    func write(_ bytes: [UInt8]) throws {
        buffer.append(contentsOf: bytes)
        if buffer.count >= 1 << 20 { try flushBuffer() }
    }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        if bytes.count < 1 << 16 {
            buffer.append(contentsOf: bytes)
            if buffer.count >= 1 << 20 { try flushBuffer() }
        } else {
            try flushBuffer()
            try writeAll(bytes)
        }
    }

    func zeros(_ count: Int) throws {
        buffer.append(contentsOf: repeatElement(0, count: count))
        if buffer.count >= 1 << 20 { try flushBuffer() }
    }

    /// Flushes, syncs and renames over the target.
    func commit() throws {
        do {
            try flushBuffer()
            guard fsync(fd) == 0 else {
                throw ModelFormatError.unreadable(file: path, reason: "fsync failed: \(String(cString: strerror(errno)))")
            }
        }
        close(fd)
        open_ = false
        guard rename(tempPath, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(tempPath)
            throw ModelFormatError.unreadable(file: path, reason: "rename failed: \(reason)")
        }
    }

    /// Removes the temporary file (no-op after a successful commit).
    func abandon() {
        guard open_ else { return }
        open_ = false
        close(fd)
        unlink(tempPath)
    }

    deinit { abandon() }
}
