import ModelFormats

/// Golden hashes from SPEC Appendix B/C: SHA-256 of bytes, or of float32 values as little-endian bytes.
enum SHA256 {
    static func hex(_ data: [UInt8]) -> String { SHA256Hasher.hex(data) }

    static func hex(floats: [Float]) -> String {
        SHA256Hasher.hex(floats.flatMap { v in withUnsafeBytes(of: v.bitPattern.littleEndian) { Array($0) } })
    }
}
