#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A whole file mapped read-only into memory. Tensors are read straight from the mapping,
/// so a model's weights are never copied into a second buffer.
public final class MappedFile: @unchecked Sendable {
    /// The path the file was opened with (used in error messages).
    public let path: String
    /// Size of the file in bytes.
    public let size: Int
    /// Start of the mapping (a valid pointer even for an empty file).
    public let base: UnsafeRawPointer
    private let mapped: UnsafeMutableRawPointer?
    private let owned: UnsafeMutableRawPointer?

    /// Maps `path`; throws `ModelFormatError.unreadable` if it cannot be opened, is not a
    /// regular file, or cannot be mapped.
    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            throw ModelFormatError.unreadable(file: path, reason: String(cString: strerror(errno)))
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw ModelFormatError.unreadable(file: path, reason: String(cString: strerror(errno)))
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw ModelFormatError.unreadable(file: path, reason: "not a regular file")
        }
        size = Int(st.st_size)
        owned = nil
        if size == 0 {
            mapped = nil
            base = UnsafeRawPointer(MappedFile.emptyByte)
            return
        }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else {
            throw ModelFormatError.unreadable(file: path, reason: "mmap failed: \(String(cString: strerror(errno)))")
        }
        mapped = p
        base = UnsafeRawPointer(p)
    }

    /// An in-memory copy of `bytes` standing in for a file named `path` (tests, fuzzing).
    public init(path: String, bytes: [UInt8]) {
        self.path = path
        size = bytes.count
        mapped = nil
        let p = UnsafeMutableRawPointer.allocate(byteCount: max(1, bytes.count), alignment: 64)
        bytes.withUnsafeBytes { if let b = $0.baseAddress { p.copyMemory(from: b, byteCount: bytes.count) } }
        owned = p
        base = UnsafeRawPointer(p)
    }

    deinit {
        if let mapped { munmap(mapped, size) }
        owned?.deallocate()
    }

    private static let emptyByte: UnsafeMutableRawPointer = {
        let p = UnsafeMutableRawPointer.allocate(byteCount: 8, alignment: 8)
        p.storeBytes(of: 0, as: UInt64.self)
        return p
    }()

    /// The bytes `[offset, offset + count)`; the caller must have checked the range.
    public func bytes(at offset: Int, count: Int) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base + offset, count: count)
    }

    /// A bounds-checked little-endian cursor starting at `offset`.
    public func reader(at offset: Int = 0) -> ByteReader {
        ByteReader(file: path, base: base, size: size, offset: offset)
    }
}

/// A bounds-checked little-endian reader over a byte range. Every read names the field it reads,
/// so a short file gives `ModelFormatError.truncated` saying which field did not fit.
public struct ByteReader {
    public let file: String
    public let base: UnsafeRawPointer
    public let size: Int
    public var offset: Int

    public init(file: String, base: UnsafeRawPointer, size: Int, offset: Int = 0) {
        self.file = file; self.base = base; self.size = size; self.offset = offset
    }

    /// Bytes left after the cursor.
    public var remaining: Int { max(0, size - offset) }

    /// Throws `.truncated` unless `count` bytes remain at the cursor.
    public func require(_ count: Int, _ field: @autoclosure () -> String) throws {
        if count < 0 || offset > size || count > size - offset {
            throw ModelFormatError.truncated(file: file, field: field(), offset: offset, needed: count, size: size)
        }
    }

    @inline(__always)
    private mutating func load<T: FixedWidthInteger>(_ type: T.Type, _ field: @autoclosure () -> String) throws -> T {
        try require(MemoryLayout<T>.size, field())
        let v = base.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
        return T(littleEndian: v)
    }

    public mutating func u8(_ field: @autoclosure () -> String) throws -> UInt8 { try load(UInt8.self, field()) }
    public mutating func i8(_ field: @autoclosure () -> String) throws -> Int8 { try load(Int8.self, field()) }
    public mutating func u16(_ field: @autoclosure () -> String) throws -> UInt16 { try load(UInt16.self, field()) }
    public mutating func i16(_ field: @autoclosure () -> String) throws -> Int16 { try load(Int16.self, field()) }
    public mutating func u32(_ field: @autoclosure () -> String) throws -> UInt32 { try load(UInt32.self, field()) }
    public mutating func i32(_ field: @autoclosure () -> String) throws -> Int32 { try load(Int32.self, field()) }
    public mutating func u64(_ field: @autoclosure () -> String) throws -> UInt64 { try load(UInt64.self, field()) }
    public mutating func i64(_ field: @autoclosure () -> String) throws -> Int64 { try load(Int64.self, field()) }
    public mutating func f32(_ field: @autoclosure () -> String) throws -> Float {
        Float(bitPattern: try load(UInt32.self, field()))
    }
    public mutating func f64(_ field: @autoclosure () -> String) throws -> Double {
        Double(bitPattern: try load(UInt64.self, field()))
    }

    /// `count` raw bytes (checked against what remains before anything is allocated).
    public mutating func bytes(_ count: Int, _ field: @autoclosure () -> String) throws -> UnsafeRawBufferPointer {
        try require(count, field())
        let b = UnsafeRawBufferPointer(start: base + offset, count: count)
        offset += count
        return b
    }

    /// Skips `count` bytes.
    public mutating func skip(_ count: Int, _ field: @autoclosure () -> String) throws {
        try require(count, field())
        offset += count
    }
}
