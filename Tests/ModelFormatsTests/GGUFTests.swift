// Fixtures: Tests/Fixtures/formats/{quants.gguf,quants_expected.safetensors,tiny_c5.gguf,smollm2_expected.safetensors},
// made by scripts/make_format_fixtures.py (gguf-py 0.19 quantize/dequantize).
import Foundation
import Testing
import _TestSupport
@testable import ModelFormats

@Suite struct GGUFTests {
    private func expectRejected(_ bytes: [UInt8], _ parts: [String], sourceLocation: SourceLocation = #_sourceLocation) throws {
        let path = try makeTempDir() + "/bad.gguf"
        try writeBytes(bytes, path)
        expectFormatError([path] + parts, sourceLocation: sourceLocation) { _ = try GGUFFile(path: path) }
    }

    @Test func validHandBuiltFileLoads() throws {
        let path = try makeTempDir() + "/ok.gguf"
        try writeBytes(G.validFile, path)
        let g = try GGUFFile(path: path)
        #expect(try g.float32Array("t") == (0..<8).map(Float.init))
        #expect(g.metadata["general.architecture"]?.string == "llama")
        // GGUF v2 has the same layout (64-bit counts) and is accepted.
        var v2 = G.validFile; v2[4] = 2
        try writeBytes(v2, path)
        #expect(try GGUFFile(path: path).version == 2)
    }

    @Test func rejectsHeaderProblems() throws {
        var bad = G.validFile; bad[3] = UInt8(ascii: "X")
        try expectRejected(bad, ["magic", "0x47475558"])
        try expectRejected(G.file(version: 1, kvs: [], tensors: [], data: []), ["version", "v1"])
        try expectRejected(G.file(version: 4, kvs: [], tensors: [], data: []), ["version = 4", "2 or 3"])
        try expectRejected(G.file(version: 0x0300_0000, kvs: [], tensors: [], data: []), ["version = 50331648", "byte-swapped"])
        try expectRejected(G.file(kvs: [], tensors: [], data: [], kvCount: UInt64.max), ["metadata_kv_count", String(UInt64.max)])
        try expectRejected(G.file(kvs: [], tensors: [], data: [], tensorCount: 1 << 60), ["tensor_count", String(UInt64(1) << 60)])
    }

    @Test func rejectsTruncationAtEveryField() throws {
        let full = try readBytes(Fixtures.path("formats/tiny_c5.gguf"))
        // Spot checks: which field each cut lands in.
        let cases: [(Int, String)] = [(2, "magic"), (6, "version"), (12, "tensor_count"), (20, "metadata_kv_count"),
                                      (0x1C, "metadata[0].key length"), (0x30, "metadata[0].key"),
                                      (0x36, "metadata[general.architecture].type"), (0x3E, "general.architecture length"),
                                      (0x41, "general.architecture"), (0x100, "tokenizer.ggml.tokens.element_type"),
                                      (0x104, "tokenizer.ggml.tokens.count"), (0x110, "tokenizer.ggml.tokens (array of 2 STRING)"),
                                      (0x11A, "tokenizer.ggml.tokens[1]"),
                                      (0x15E, "tensor token_embd.weight.n_dims"), (0x164, "tensor token_embd.weight.dims[0]"), (0x1F0, "tensor blk.0.attn_k.weight.offset"),
                                      (0x300, "tensor blk.0.attn_q.weight data")]
        for (cut, field) in cases {
            try expectRejected(Array(full[..<cut]), ["truncated", field, "has \(cut) bytes"])
        }
        // Every prefix that cuts into the last tensor's data (0x360 + 36 bytes; the rest is
        // padding) must be rejected with a ModelFormatError.
        for cut in 0..<(0x360 + 36) {
            #expect(throws: ModelFormatError.self) { _ = try GGUFFile(mapping: MappedFile(path: "cut\(cut).gguf", bytes: Array(full[..<cut]))) }
        }
    }

    @Test func rejectsBadMetadata() throws {
        let t = [G.tensor("t", dims: [8], type: 0, offset: 0)]
        let d = [UInt8](repeating: 0, count: 32)
        try expectRejected(G.file(kvs: [G.kv("k", type: 13) { $0.u32(0) }], tensors: t, data: d), ["metadata[k].type = 13"])
        try expectRejected(G.file(kvs: [G.kv("nest", type: 9) { $0.u32(9); $0.u64(1) }], tensors: t, data: d),
                           ["nest.element_type", "9 (ARRAY)", "nested"])
        try expectRejected(G.file(kvs: [G.kv("arr", type: 9) { $0.u32(4); $0.u64(1 << 40) }], tensors: t, data: d),
                           ["truncated", "arr (array of 1099511627776 UINT32)"])
        try expectRejected(G.file(kvs: [G.kv("s", type: 8) { $0.u64(UInt64.max) }], tensors: t, data: d), ["truncated", "s", "needs \(Int.max)"])
        try expectRejected(G.file(kvs: [G.kvU32("a", 1), G.kvU32("a", 2)], tensors: t, data: d), ["metadata[1].key", "= a", "duplicate"])
        try expectRejected(G.file(kvs: [G.kv("b", type: 7) { $0.u8(2) }], tensors: t, data: d), ["invalid b = 2", "BOOL"])
        try expectRejected(G.file(kvs: [G.kvU32("general.alignment", 24)], tensors: t, data: d), ["general.alignment", "uint32(24)", "power of two"])
        try expectRejected(G.file(kvs: [G.kv("general.alignment", type: 10) { $0.u64(32) }], tensors: t, data: d),
                           ["general.alignment", "uint64(32)"])
        var badKey = Bytes(); badKey.u64(2); badKey.raw([0xC3, 0x28]); badKey.u32(4); badKey.u32(1)
        try expectRejected(G.file(kvs: [badKey.b], tensors: t, data: d), ["metadata[0].key", "UTF-8"])
    }

    @Test func rejectsBadTensorInfos() throws {
        let d = [UInt8](repeating: 0, count: 64)
        func one(_ name: String = "t", dims: [UInt64] = [8], type: UInt32 = 0, offset: UInt64 = 0) -> [UInt8] {
            G.file(kvs: [], tensors: [G.tensor(name, dims: dims, type: type, offset: offset)], data: d)
        }
        try expectRejected(one(dims: [1, 1, 1, 1, 1]), ["tensor t.n_dims = 5", "at most 4"])
        try expectRejected(one(dims: [8, 0]), ["tensor t.dims[1] = 0", "positive"])
        try expectRejected(one(dims: [1 << 32, 1 << 32, 1 << 32]), ["tensor t.dims", "fits in 63 bits"])
        try expectRejected(one(type: 99), ["tensor t.type = 99", "ggml type"])
        try expectRejected(one(type: 4), ["tensor t.type = 4"])
        try expectRejected(one(dims: [30], type: 2), ["tensor t.dims[0] = 30", "Q4_0", "32"])
        try expectRejected(one(offset: 16), ["tensor t.offset = 16", "alignment 32"])
        try expectRejected(one(offset: 64), ["truncated", "tensor t data", "needs 32 bytes"])
        try expectRejected(one(dims: [1 << 20]), ["truncated", "tensor t data", "needs 4194304 bytes"])
        try expectRejected(one(String(repeating: "n", count: 64)), ["tensor_info[0].name", "fewer than 64"])
        try expectRejected(G.file(kvs: [], tensors: [G.tensor("t", dims: [8], type: 0, offset: 0), G.tensor("t", dims: [8], type: 0, offset: 32)], data: d),
                           ["tensor_info[1].name = t", "duplicate"])
    }

    @Test func unsupportedTypeIsReportedOnRead() throws {
        let path = try makeTempDir() + "/q2k.gguf"
        try writeBytes(G.file(kvs: [], tensors: [G.tensor("w.q2", dims: [256], type: 10, offset: 0)], data: [UInt8](repeating: 0, count: 96)), path)
        let g = try GGUFFile(path: path)
        #expect(try g.tensorInfo("w.q2").type == .q2_K)
        #expect(try g.tensorInfo("w.q2").byteCount == 84)
        expectFormatError([path, "w.q2", "Q2_K", "unsupported dtype"]) { _ = try g.float32Array("w.q2") }
    }

    /// Every supported type against gguf-py's dequantization: bit-exact (compared as bit patterns).
    @Test func dequantizationMatchesGGUFPyBitExactly() throws {
        let g = try GGUFFile(path: Fixtures.path("formats/quants.gguf"))
        let expected = try SafetensorsFile(path: Fixtures.path("formats/quants_expected.safetensors"))
        let types: [String: GGMLType] = ["f32": .f32, "f16": .f16, "bf16": .bf16, "q4_0": .q4_0, "q4_1": .q4_1, "q5_0": .q5_0,
                                         "q5_1": .q5_1, "q8_0": .q8_0, "q4_k": .q4_K, "q5_k": .q5_K, "q6_k": .q6_K, "cube": .f32]
        #expect(Set(g.tensorNames) == Set(types.keys))
        for (name, type) in types {
            let info = try g.tensorInfo(name)
            #expect(info.type == type, "\(name)")
            #expect(info.shape == (try expected.shape(of: name)), "\(name)")
            #expect(info.dims == info.shape.reversed())
            let got = try g.float32Array(name)
            let want = try expected.float32Array(name)
            #expect(got.count == want.count)
            let mismatches = zip(got, want).filter { $0.bitPattern != $1.bitPattern }.count
            #expect(mismatches == 0, "\(name): \(mismatches) values differ from gguf-py")
            // Reading a row range gives the same values as the whole tensor.
            let rowLength = info.dims[0], rowCount = info.elementCount / rowLength
            var rows = [Float](repeating: .nan, count: (rowCount - 1) * rowLength)
            try rows.withUnsafeMutableBufferPointer { try g.readFloat32Rows(name, rows: 1..<rowCount, into: $0) }
            #expect(rows.map(\.bitPattern) == got[rowLength...].map(\.bitPattern), "\(name) rows")
        }
        #expect(try g.shape(of: "cube") == [2, 3, 4])
        var one = [Float](repeating: 0, count: 512)
        expectFormatError(["q4_0 rows", "2..<4", "0..<3"]) {
            try one.withUnsafeMutableBufferPointer { try g.readFloat32Rows("q4_0", rows: 2..<4, into: $0) }
        }
        // The destination must have the right size.
        var small = [Float](repeating: 0, count: 3)
        expectFormatError(["q4_0 destination count", "3", "1536"]) {
            try small.withUnsafeMutableBufferPointer { try g.readFloat32("q4_0", into: $0) }
        }
    }

    /// SPEC Appendix C.5 (the script checks the file's SHA-256 against the SPEC).
    @Test func specTinyFileParses() throws {
        let g = try GGUFFile(path: Fixtures.path("formats/tiny_c5.gguf"))
        #expect(g.version == 3)
        #expect(g.metadataKeys == ["general.architecture", "llama.block_count", "llama.embedding_length", "llama.rope.freq_base",
                                   "tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.add_bos_token"])
        #expect(g.metadata["general.architecture"] == .string("llama"))
        #expect(g.metadata["llama.block_count"] == .uint32(1))
        #expect(g.metadata["llama.embedding_length"] == .uint32(32))
        #expect(g.metadata["llama.rope.freq_base"] == .float32(100000))
        #expect(g.metadata["tokenizer.ggml.model"] == .string("gpt2"))
        #expect(g.metadata["tokenizer.ggml.tokens"]?.stringArray == ["a", "b"])
        #expect(g.metadata["tokenizer.ggml.add_bos_token"] == .bool(false))
        #expect(try g.string("tokenizer.ggml.model") == "gpt2")
        #expect(try g.int("llama.block_count") == 1)
        #expect(try g.float("llama.rope.freq_base") == 100000)
        #expect(try g.stringArray("tokenizer.ggml.tokens") == ["a", "b"])
        expectFormatError(["tiny_c5.gguf", "llama.context_length", "missing"]) { _ = try g.int("llama.context_length") }
        expectFormatError(["tiny_c5.gguf", "tokenizer.ggml.model", "gpt2", "integer"]) { _ = try g.int("tokenizer.ggml.model") }
        #expect(g.alignment == 32 && g.dataOffset == 0x200)
        #expect(g.tensorNames == ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_k.weight"])
        let e = try g.tensorInfo("token_embd.weight"), q = try g.tensorInfo("blk.0.attn_q.weight"), k = try g.tensorInfo("blk.0.attn_k.weight")
        #expect(e.type == .f32 && e.dims == [32, 2] && e.shape == [2, 32] && e.offset == 0 && e.byteCount == 256)
        #expect(q.type == .q8_0 && q.offset == 256 && q.byteCount == 68)
        #expect(k.type == .q4_0 && k.offset == 352 && k.byteCount == 36)
        let x = (0..<64).map { (Float($0) - 32) / 8 }
        #expect(try g.float32Array("token_embd.weight") == x)
        let q8 = try g.float32Array("blk.0.attn_q.weight")
        let d8 = Float(Float16(bitPattern: 0x2808))
        #expect(q8[0] == -127 * d8)
        for (a, b) in zip(q8, x) { #expect(abs(a - b) <= d8 / 2 * 1.001) }
        let q4 = try g.float32Array("blk.0.attn_k.weight")
        #expect(q4[0] == -4 && q4[16] == -2)
        // Block 1 (x = 0 ... 3.875): the signed max is positive, so d = 3.875 / -8 is negative.
        #expect(q4[32] == 0 && q4[63] == Float(0 - 8) * Float(Float16(bitPattern: 0xB7C0)))
        #expect(q4[63] == 3.875)
    }

    /// The real SmolLM2 Q4_1 GGUF (fails if missing): keys, tensor types, and values vs gguf-py.
    @Test func realSmolLM2File() throws {
        let path = Fixtures.smolLM2GGUF
        let t0 = Date()
        let g = try GGUFFile(path: path)
        let openTime = Date().timeIntervalSince(t0)
        #expect(g.metadata["general.architecture"]?.string == "llama")
        #expect(g.metadataKeys.count == 33)
        #expect(g.metadata["llama.block_count"]?.int == 30)
        #expect(g.metadata["llama.embedding_length"]?.int == 576)
        #expect(g.metadata["llama.attention.head_count_kv"]?.int == 3)
        #expect(g.metadata["llama.rope.freq_base"]?.float == 100000)
        #expect(g.metadata["tokenizer.ggml.tokens"]?.stringArray?.count == 49152)
        #expect(g.metadata["tokenizer.ggml.merges"]?.stringArray?.count == 48900)
        #expect(g.metadata["tokenizer.ggml.token_type"]?.intArray?.count == 49152)
        #expect(g.tensorInfos.count == 272)
        var counts: [GGMLType: Int] = [:]
        for t in g.tensorInfos { counts[t.type, default: 0] += 1 }
        #expect(counts == [.q4_1: 210, .f32: 61, .q8_0: 1])
        #expect(try g.tensorInfo("token_embd.weight").shape == [49152, 576])
        #expect(try g.tensorInfo("blk.0.ffn_down.weight").dims == [1536, 576])

        let expected = try SafetensorsFile(path: Fixtures.path("formats/smollm2_expected.safetensors"))
        for name in expected.tensorNames where !name.hasSuffix(".tail") {
            let all = try g.float32Array(name)
            let head = try expected.float32Array(name), tail = try expected.float32Array(name + ".tail")
            #expect(Array(all.prefix(64)).map(\.bitPattern) == head.map(\.bitPattern), "\(name) head")
            #expect(Array(all.suffix(64)).map(\.bitPattern) == tail.map(\.bitPattern), "\(name) tail")
        }

        var row = [Float](repeating: 0, count: 576)
        try row.withUnsafeMutableBufferPointer { try g.readFloat32Rows("token_embd.weight", rows: 49151..<49152, into: $0) }
        #expect(row.suffix(64).map(\.bitPattern) == (try expected.float32Array("token_embd.weight.tail")).map(\.bitPattern))

        // Dequantize every tensor (into one reused buffer, so this times the dequantization) and time it.
        let buffer = UnsafeMutableBufferPointer<Float>.allocate(capacity: g.tensorInfos.map(\.elementCount).max()!)
        defer { buffer.deallocate() }
        buffer.initialize(repeating: 0)
        let t1 = Date()
        var total = 0
        for t in g.tensorInfos {
            try g.readFloat32(t.name, into: UnsafeMutableBufferPointer(rebasing: buffer[0..<t.elementCount]))
            total += t.elementCount
        }
        let loadTime = Date().timeIntervalSince(t1)
        print("SmolLM2 GGUF: open \(String(format: "%.3f", openTime)) s, dequantize all \(total) values \(String(format: "%.3f", loadTime)) s")
        #expect(total == 134_515_008)
        #expect(loadTime < 1.0)
    }
}
