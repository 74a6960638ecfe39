// Fixtures: Tests/Fixtures/formats/*.safetensors, made by scripts/make_format_fixtures.py
import Foundation
import Testing
import _TestSupport
@testable import ModelFormats

/// u64 length + header text + data.
private func st(_ header: String, _ data: [UInt8] = []) -> [UInt8] {
    var b = Bytes(); b.u64(UInt64(header.utf8.count)); b.raw(Array(header.utf8)); b.raw(data); return b.b
}

@Suite struct SafetensorsTests {
    private func load(_ bytes: [UInt8]) throws -> (SafetensorsFile, String) {
        let path = try makeTempDir() + "/x.safetensors"
        try writeBytes(bytes, path)
        return (try SafetensorsFile(path: path), path)
    }

    private func expectRejected(_ bytes: [UInt8], _ parts: [String], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let path = try makeTempDir() + "/bad.safetensors"
        try writeBytes(bytes, path)
        expectFormatError([path] + parts, sourceLocation: sourceLocation) { _ = try SafetensorsFile(path: path) }
    }

    @Test func readsReferenceFileWrittenByPython() throws {
        let f = try SafetensorsFile(path: Fixtures.path("formats/reference.safetensors"))
        #expect(f.metadata == ["format": "pt"])
        #expect(f.tensorNames.first == "ids")
        #expect(f.tensorNames.count == 10)
        #expect(try f.shape(of: "model.layers.0.weight") == [4, 6])
        #expect(try f.shape(of: "scalar") == [])
        #expect(try f.shape(of: "empty") == [0, 3])
        #expect(try f.dtype("bias") == .f16)
        #expect(try f.dtype("flag") == .bool)
        #expect(try f.float32Array("model.layers.0.weight") == (0..<24).map { Float($0) * 0.25 - 3 })
        #expect(try f.float32Array("bias") == [1.5, -2.0, 3.25])
        var rows = [Float](repeating: 0, count: 12)
        try rows.withUnsafeMutableBufferPointer { try f.readFloat32Rows("model.layers.0.weight", rows: 2..<4, into: $0) }
        #expect(rows == (12..<24).map { Float($0) * 0.25 - 3 })
        #expect(try f.float32Array("empty") == [])
        let ids = try f.rawBytes("ids")
        #expect(ids.count == 32)
        #expect(ids.loadUnaligned(fromByteOffset: 24, as: Int64.self) == -4)
        #expect(try f.float32Array("é-unicode \"quoted\" back\\slash\ttab\u{01}") == [0.5])
        expectFormatError(["ids", "I64"]) { _ = try f.float32Array("ids") }
        expectFormatError(["missing tensor", "nope"]) { _ = try f.shape(of: "nope") }
    }

    @Test func widensBF16AndF16() throws {
        // BF16 1.0 = 0x3F80, -2.0 = 0xC000; F16 0.5 = 0x3800, smallest subnormal 0x0001.
        let (f, _) = try load(st(#"{"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"F16","shape":[2],"data_offsets":[4,8]}}"#,
                                 [0x80, 0x3F, 0x00, 0xC0, 0x00, 0x38, 0x01, 0x00]))
        #expect(try f.float32Array("a") == [1.0, -2.0])
        #expect(try f.float32Array("b") == [0.5, Float(Float16(bitPattern: 1))])
        #expect(f.tensorNames == ["a", "b"])
    }

    @Test func rejectsShortFileAndBadHeaderLength() throws {
        try expectRejected([1, 2, 3], ["truncated", "header length", "needs 8 bytes", "has 3 bytes"])
        var b = Bytes(); b.u64(200_000_000)
        try expectRejected(b.b, ["header length", "200000000", "100000000"])
        try expectRejected(st("{}").dropLast(1).map { $0 }, ["truncated", "header (JSON, 2 bytes)"])
        var huge = Bytes(); huge.u64(UInt64.max)
        try expectRejected(huge.b, ["header length", String(UInt64.max)])
    }

    @Test func rejectsInvalidJSONHeader() throws {
        try expectRejected(st("[1,2]"), ["header", "first byte 0x5b"])
        try expectRejected(st("{\"a\":"), ["header", "unexpected end of JSON"])
        try expectRejected(st("{\"a\":{}} x"), ["header", "unexpected data after the JSON value"])
        var nonUTF8 = Array("{\"".utf8); nonUTF8 += [0xFF, 0xFE]; nonUTF8 += Array("\":{}}".utf8)
        var b = Bytes(); b.u64(UInt64(nonUTF8.count)); b.raw(nonUTF8)
        try expectRejected(b.b, ["header", "not valid UTF-8"])
        try expectRejected(st(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, Array(repeating: 0, count: 8)),
                           ["header", "duplicate key \"a\""])
        try expectRejected(st(#"{"__metadata__":{"format":1}}"#), ["__metadata__.format", "number", "a string"])
    }

    @Test func rejectsBadEntries() throws {
        try expectRejected(st(#"{"w":{"dtype":"F17","shape":[1],"data_offsets":[0,4]}}"#, [0, 0, 0, 0]), ["w.dtype", "F17"])
        try expectRejected(st(#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}"#, [0, 0, 0, 0]),
                           ["w.data_offsets", "[0, 4]", "8 bytes"])
        try expectRejected(st(#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, [0, 0, 0, 0]), ["w.shape", "-1"])
        try expectRejected(st(#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}"#, [0, 0, 0, 0]), ["w.data_offsets", "begin <= end"])
        try expectRejected(st(#"{"w":{"dtype":"F32","shape":[1]}}"#, [0, 0, 0, 0]), ["w.data_offsets", "missing"])
        try expectRejected(st(#"{"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,4]}}"#, [0, 0, 0, 0]),
                           ["w.data_offsets", "overflowing"])
        try expectRejected(st(#"{"w":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}"#, [0]), ["w.data_offsets", "not whole bytes"])
    }

    @Test func rejectsHolesOverlapsAndWrongBufferSize() throws {
        let four = [UInt8](repeating: 0, count: 4)
        try expectRejected(st(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#, four + four + four),
                           ["b.data_offsets", "[8, 12]", "start at 4", "hole"])
        try expectRejected(st(#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, four + four),
                           ["b.data_offsets", "[4, 8]", "start at 8", "overlap"])
        try expectRejected(st(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, four + four), ["a.data_offsets", "start at 0", "hole"])
        try expectRejected(st(#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, four + [0]), ["data buffer size", "5 bytes", "4 bytes"])
        try expectRejected(st(#"{"a":{"dtype":"F32","shape":[100],"data_offsets":[0,400]}}"#, four), ["data buffer size", "4 bytes", "400 bytes"])
    }

    @Test func rejectsUnreadableFile() {
        expectFormatError(["/nonexistent/x.safetensors", "cannot read"]) { _ = try SafetensorsFile(path: "/nonexistent/x.safetensors") }
    }

    @Test func modelFolderVariants() throws {
        // single file
        let d1 = try makeTempDir()
        var w = SafetensorsWriter(metadata: ["format": "pt"])
        try w.add("a", shape: [2], float32: [1, 2])
        try w.write(to: d1 + "/model.safetensors")
        let m1 = try SafetensorsModel(directory: d1)
        #expect(m1.tensorNames == ["a"])
        #expect(try m1.float32Array("a") == [1, 2])

        // sharded with an index
        let d2 = try makeTempDir()
        var s1 = SafetensorsWriter(); try s1.add("x", shape: [1], float32: [3]); try s1.write(to: d2 + "/model-00001-of-00002.safetensors")
        var s2 = SafetensorsWriter(); try s2.add("y", shape: [2, 1], float32: [4, 5]); try s2.write(to: d2 + "/model-00002-of-00002.safetensors")
        let index = #"{"metadata":{"total_size":12},"weight_map":{"x":"model-00001-of-00002.safetensors","y":"model-00002-of-00002.safetensors"}}"#
        try writeBytes(Array(index.utf8), d2 + "/model.safetensors.index.json")
        let m2 = try SafetensorsModel(directory: d2)
        #expect(Set(m2.tensorNames) == ["x", "y"])
        #expect(try m2.shape(of: "y") == [2, 1])
        #expect(try m2.float32Array("y") == [4, 5])

        // missing shard
        try FileManager.default.removeItem(atPath: d2 + "/model-00002-of-00002.safetensors")
        expectFormatError(["model.safetensors.index.json", "weight_map.y", "model-00002-of-00002.safetensors", "present"]) {
            _ = try SafetensorsModel(directory: d2)
        }

        // index pointing at the wrong shard / a tensor absent from its shard
        let d3 = try makeTempDir()
        try s1.write(to: d3 + "/a.safetensors")
        try writeBytes(Array(#"{"weight_map":{"x":"a.safetensors","q":"a.safetensors"}}"#.utf8), d3 + "/model.safetensors.index.json")
        expectFormatError(["a.safetensors", "missing tensor", "'q'"]) { _ = try SafetensorsModel(directory: d3) }

        // every *.safetensors, tensor in two files
        let d4 = try makeTempDir()
        try s1.write(to: d4 + "/one.safetensors")
        try s1.write(to: d4 + "/two.safetensors")
        expectFormatError(["tensor x", "also in", "one.safetensors", "exactly one shard"]) { _ = try SafetensorsModel(directory: d4) }
        try FileManager.default.removeItem(atPath: d4 + "/two.safetensors")
        #expect(try SafetensorsModel(directory: d4).tensorNames == ["x"])

        let empty = try makeTempDir()
        expectFormatError([empty, "no model.safetensors"]) { _ = try SafetensorsModel(directory: empty) }
    }
}
