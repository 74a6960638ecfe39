// Fixtures: Tests/Fixtures/bnb/*, folders written by transformers 5.24 + bitsandbytes 0.50.2
// save_pretrained from the tiny fp32 models in Tests/Fixtures/llama (scripts/make_bnb_fixtures.py).
import Foundation
import ModelFormats
import Quantization
import Testing
import _TestSupport

@Suite struct BitsAndBytesModelTests {
    /// (fixture folder, fp32 source folder, quant type, double quant)
    static let variants: [(String, String, QuantType4Bit, Bool)] = [
        ("bnb/gqa-tied-nf4-dq", "llama/tiny-llama-gqa-tied", .nf4, true),
        ("bnb/gqa-tied-fp4", "llama/tiny-llama-gqa-tied", .fp4, false),
        ("bnb/untied-nf4-dq", "llama/tiny-llama-untied", .nf4, true),
    ]

    @Test func storedTensorsEqualOurQuantization() throws {
        for (fixture, source, quantType, dq) in Self.variants {
            let model = try BitsAndBytesModel(directory: Fixtures.path(fixture))
            let fp32 = try SafetensorsModel(directory: Fixtures.path(source))
            // Every Linear of the decoder layers is stored in 4 bits (7 per layer, 2 layers); nothing else.
            #expect(model.quantizedTensorNames.count == 14, "\(fixture)")
            #expect(Set(model.tensorNames) == Set(fp32.tensorNames), "\(fixture)")
            for name in model.tensorNames {
                #expect(try model.shape(of: name) == fp32.shape(of: name), "\(fixture) \(name)")
                guard let stored = try model.quantized4Bit(name) else {
                    #expect(try model.float32Array(name) == fp32.float32Array(name), "\(fixture) \(name)")
                    continue
                }
                #expect(name.contains("_proj.weight"))
                let ours = try QuantizedTensor4Bit.quantize(fp32.float32Array(name), shape: fp32.shape(of: name),
                                                            dtype: .float32, quantType: quantType, blocksize: 64, doubleQuant: dq)
                #expect(stored.quantType == quantType && stored.isDoubleQuantized == dq && stored.blocksize == 64)
                #expect(stored.packed == ours.packed, "\(fixture) \(name) packed codes")
                #expect(stored.scales == ours.scales, "\(fixture) \(name) scales")
                #expect(stored.quantMap == ours.quantMap, "\(fixture) \(name) quant_map")
                // The JSON blob we would write is the stored one, byte for byte.
                let blobName = name + BitsAndBytesModel.quantStateMarker + quantType.rawValue
                #expect(Array(try model.weights.rawBytes(blobName)) == BitsAndBytesQuantState(ours).jsonBytes, "\(blobName)")
                // readFloat32 dequantizes.
                #expect(try model.float32Array(name) == stored.dequantize())
            }
        }
    }

    @Test func appendixC4BlobIsReproduced() throws {
        let state = BitsAndBytesQuantState(quantType: .nf4, blocksize: 64, dtype: .bfloat16, shape: [3, 128],
                                           nested: (256, 0.875))
        let expected = #"{"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [3, 128], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.875}"#
        #expect(String(decoding: state.jsonBytes, as: UTF8.self) == expected)
        #expect(state.jsonBytes.count == 154)
        #expect(try BitsAndBytesQuantState(jsonBytes: state.jsonBytes, file: "f", field: "x") == state)
    }

    // MARK: - Damaged copies

    typealias Entry = (name: String, dtype: SafetensorsDType, shape: [Int], bytes: [UInt8])

    /// Copies `fixture` to a temporary folder, rewriting model.safetensors through `edit`
    /// (return nil to drop the tensor).
    func damagedCopy(_ fixture: String, edit: (Entry) -> Entry?) throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("bnb-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: Fixtures.path(fixture + "/config.json"), toPath: dir + "/config.json")
        let file = try SafetensorsFile(path: Fixtures.path(fixture + "/model.safetensors"))
        var w = SafetensorsWriter(metadata: file.metadata)
        for name in file.tensorNames {
            let info = try file.info(name)
            if let e = edit((name, info.dtype, info.shape, Array(try file.rawBytes(name)))) {
                try w.add(e.name, dtype: e.dtype, shape: e.shape, bytes: e.bytes)
            }
        }
        try w.write(to: dir + "/model.safetensors")
        return dir
    }

    func error(_ dir: String) -> String {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            _ = try BitsAndBytesModel(directory: dir)
            return "no error"
        } catch {
            return "\(error)"
        }
    }

    @Test func damagedCheckpointsNameTheTensor() throws {
        let fx = "bnb/gqa-tied-nf4-dq", w = "model.layers.1.mlp.up_proj.weight"
        let marker = w + ".quant_state.bitsandbytes__nf4"
        // An unmodified copy opens.
        #expect(error(try damagedCopy(fx) { $0 }) == "no error")
        // Missing nested absmax.
        var e = error(try damagedCopy(fx) { $0.name == w + ".nested_absmax" ? nil : $0 })
        #expect(e.contains(w + ".nested_absmax") && e.contains("missing"), "\(e)")
        // Missing quant state: the auxiliary keys are orphans.
        e = error(try damagedCopy(fx) { $0.name == marker ? nil : $0 })
        #expect(e.contains(w) && e.contains("quant_state"), "\(e)")
        // Packed bytes do not fit the blob's shape.
        e = error(try damagedCopy(fx) { $0.name == w ? ($0.name, .u8, [$0.shape[0] - 1, 1], Array($0.bytes.dropLast())) : $0 })
        #expect(e.contains("tensor \(w)") && e.contains("packed 4-bit codes") && e.contains("[96, 64]"), "\(e)")
        // absmax count ≠ number of blocks.
        e = error(try damagedCopy(fx) { $0.name == w + ".absmax" ? ($0.name, .u8, [$0.shape[0] + 1], $0.bytes + [0]) : $0 })
        #expect(e.contains(w + ".absmax") && e.contains("blocks of 64"), "\(e)")
        // Unknown quant type in the key.
        e = error(try damagedCopy(fx) { $0.name == marker ? (w + ".quant_state.bitsandbytes__int8", $0.dtype, $0.shape, $0.bytes) : $0 })
        #expect(e.contains(w + ".quant_state.bitsandbytes__int8") && e.contains("nf4 or fp4"), "\(e)")
        // Blob contents.
        func blob(_ text: String) throws -> String {
            try damagedCopy(fx) { $0.name == marker ? ($0.name, .u8, [text.utf8.count], Array(text.utf8)) : $0 }
        }
        e = error(try blob(#"{"quant_type": "int8", "blocksize": 64, "dtype": "float32", "shape": [96, 64]}"#))
        #expect(e.contains(marker) && e.contains("int8"), "\(e)")
        e = error(try blob(#"{"quant_type": "nf4", "blocksize": 64"#))
        #expect(e.contains(marker) && e.contains("JSON"), "\(e)")
        e = error(try blob(#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [96, 96], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.1}"#))
        #expect(e.contains("tensor \(w)") && e.contains("[96, 96]"), "\(e)")
        e = error(try blob(#"{"quant_type": "fp4", "blocksize": 64, "dtype": "float32", "shape": [96, 64], "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.1}"#))
        #expect(e.contains(marker) && e.contains("fp4"), "\(e)")
        // Not double-quantized per the blob, but the absmax is U8 codes.
        e = error(try blob(#"{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [96, 64]}"#))
        #expect(e.contains(w) && (e.contains(".absmax") || e.contains(".nested")), "\(e)")
    }
}
