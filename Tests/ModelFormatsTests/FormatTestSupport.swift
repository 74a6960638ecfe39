import Foundation
import Testing
@testable import ModelFormats

/// A fresh temporary directory for one test.
func makeTempDir() throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mf-tests-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
}

func writeBytes(_ bytes: [UInt8], _ path: String) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

func readBytes(_ path: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
}

/// Runs `body`, which must throw a ModelFormatError whose description contains every string in `parts`.
func expectFormatError(_ parts: [String], sourceLocation: SourceLocation = #_sourceLocation,
                       _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected a ModelFormatError containing \(parts)", sourceLocation: sourceLocation)
    } catch let e as ModelFormatError {
        for p in parts {
            #expect(e.description.contains(p), "error '\(e.description)' does not mention '\(p)'", sourceLocation: sourceLocation)
        }
    } catch {
        Issue.record("unexpected error type: \(error)", sourceLocation: sourceLocation)
    }
}

/// Little-endian byte building for hand-made files.
struct Bytes {
    var b: [UInt8] = []
    mutating func u8(_ v: UInt8) { b.append(v) }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { b += $0 } }
    mutating func f32(_ v: Float) { u32(v.bitPattern) }
    mutating func str(_ s: String) { u64(UInt64(s.utf8.count)); b += Array(s.utf8) }
    mutating func raw(_ r: [UInt8]) { b += r }
}

/// GGUF pieces.
enum G {
    static func kv(_ key: String, type: UInt32, _ value: (inout Bytes) -> Void) -> [UInt8] {
        var x = Bytes(); x.str(key); x.u32(type); value(&x); return x.b
    }
    static func kvU32(_ key: String, _ v: UInt32) -> [UInt8] { kv(key, type: 4) { $0.u32(v) } }
    static func kvString(_ key: String, _ v: String) -> [UInt8] { kv(key, type: 8) { $0.str(v) } }
    static func tensor(_ name: String, dims: [UInt64], type: UInt32, offset: UInt64) -> [UInt8] {
        var x = Bytes(); x.str(name); x.u32(UInt32(dims.count)); dims.forEach { x.u64($0) }; x.u32(type); x.u64(offset); return x.b
    }
    /// A whole file: header, kvs, tensor infos, padding to `alignment`, data.
    static func file(version: UInt32 = 3, kvs: [[UInt8]], tensors: [[UInt8]], data: [UInt8], alignment: Int = 32,
                     tensorCount: UInt64? = nil, kvCount: UInt64? = nil) -> [UInt8] {
        var x = Bytes()
        x.raw(Array("GGUF".utf8)); x.u32(version)
        x.u64(tensorCount ?? UInt64(tensors.count)); x.u64(kvCount ?? UInt64(kvs.count))
        kvs.forEach { x.raw($0) }
        tensors.forEach { x.raw($0) }
        if !tensors.isEmpty { while x.b.count % alignment != 0 { x.u8(0) } }
        x.raw(data)
        return x.b
    }
    /// One F32 tensor "t" of 8 values 0..7.
    static var validFile: [UInt8] {
        var d = Bytes(); (0..<8).forEach { d.f32(Float($0)) }
        return file(kvs: [kvString("general.architecture", "llama")],
                    tensors: [tensor("t", dims: [8], type: 0, offset: 0)], data: d.b)
    }
}

