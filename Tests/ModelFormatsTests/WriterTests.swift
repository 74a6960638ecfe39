// Fixtures: Tests/Fixtures/formats/reference.safetensors, made by scripts/make_format_fixtures.py (Python safetensors)
import Foundation
import Testing
import _TestSupport
@testable import ModelFormats

@Suite struct WriterTests {
    @Test func safetensorsOutputIsByteIdenticalToPython() throws {
        let refPath = Fixtures.path("formats/reference.safetensors")
        let ref = try SafetensorsFile(path: refPath)
        var w = SafetensorsWriter(metadata: ref.metadata)
        // Add in reverse name order: the writer must reorder like the reference writer.
        for name in ref.tensorNames.sorted().reversed() {
            let info = try ref.info(name)
            try w.add(name, dtype: info.dtype, shape: info.shape, bytes: Array(try ref.rawBytes(name)))
        }
        let out = try makeTempDir() + "/out.safetensors"
        try w.write(to: out)
        #expect(try readBytes(out) == readBytes(refPath))
    }

    @Test func safetensorsRoundTripWithProviderAndAtomicity() throws {
        let dir = try makeTempDir()
        let path = dir + "/rt.safetensors"
        var w = SafetensorsWriter(metadata: ["format": "pt", "k": "v\"\n"])
        let values: [Float] = (0..<300).map { Float($0) / 7 }
        try w.add("big", dtype: .f32, shape: [3, 100]) { emit in try values.withUnsafeBytes { try emit($0) } }
        try w.add("h", dtype: .f16, shape: [2], bytes: [0x00, 0x3C, 0x00, 0xC0])
        try w.write(to: path)
        let f = try SafetensorsFile(path: path)
        #expect(f.metadata == ["format": "pt", "k": "v\"\n"])
        #expect(try f.float32Array("big") == values)
        #expect(try f.float32Array("h") == [1, -2])
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["rt.safetensors"])
        // A provider that fails leaves the old file in place and no temporary file.
        var bad = SafetensorsWriter()
        try bad.add("x", dtype: .f32, shape: [2]) { emit in try emit(UnsafeRawBufferPointer(start: nil, count: 0)) }
        expectFormatError(["x byte count", "0"]) { try bad.write(to: path) }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["rt.safetensors"])
        #expect(try SafetensorsFile(path: path).tensorNames.count == 2)
        expectFormatError(["y byte count", "3", "8"]) { try bad.add("y", dtype: .f32, shape: [2], bytes: [1, 2, 3]) }
    }

    @Test func ggufRoundTripAllValueTypes() throws {
        var w = try GGUFWriter()
        let values: [(String, GGUFValue)] = [
            ("general.architecture", .string("llama")), ("u8", .uint8(200)), ("i8", .int8(-5)), ("u16", .uint16(60000)),
            ("i16", .int16(-300)), ("u32", .uint32(4_000_000_000)), ("i32", .int32(-7)), ("f32", .float32(1.5)),
            ("b", .bool(true)), ("s", .string("héllo")), ("u64", .uint64(UInt64.max)), ("i64", .int64(Int64.min)),
            ("f64", .float64(-0.125)),
            ("ai32", .array(.integers(elementType: 5, values: [1, -2, 3]))),
            ("au8", .array(.integers(elementType: 0, values: [0, 255]))),
            ("af32", .array(.floats(elementType: 6, values: [0.5, -1]))),
            ("af64", .array(.floats(elementType: 12, values: [1e300]))),
            ("ab", .array(.bools([true, false]))), ("as", .array(.string(["a", "", "ü c"]))),
        ]
        for (k, v) in values { try w.add(k, v) }
        let a: [Float] = (0..<64).map { Float($0) - 20.5 }
        try w.addTensor("a", shape: [2, 32], values: a)
        try w.addTensor("h", shape: [3], values: [1, 0.5, -65504], type: .f16)
        let path = try makeTempDir() + "/rt.gguf"
        try w.write(to: path)
        let g = try GGUFFile(path: path)
        #expect(g.version == 3)
        #expect(g.metadataKeys == values.map(\.0))
        for (k, v) in values { #expect(g.metadata[k] == v, "\(k)") }
        #expect(try g.tensorInfo("a").dims == [32, 2])
        #expect(try g.tensorInfo("h").offset == 256)
        #expect(try g.float32Array("a") == a)
        #expect(try g.float32Array("h") == [1, 0.5, -65504])
        expectFormatError(["metadata key", "u8", "unique"]) { try w.add("u8", .uint8(1)) }
        // Non-default alignment.
        var w64 = try GGUFWriter(alignment: 64)
        try w64.addTensor("x", shape: [3], values: [1, 2, 3])
        try w64.addTensor("y", shape: [1], values: [4])
        try w64.write(to: path)
        let g64 = try GGUFFile(path: path)
        #expect(g64.alignment == 64 && g64.dataOffset % 64 == 0)
        #expect(try g64.tensorInfo("y").offset == 64)
        #expect(try g64.float32Array("y") == [4])
    }
}
