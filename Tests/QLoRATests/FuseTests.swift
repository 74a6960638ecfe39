// `qlora fuse` / `fuseModel` against PEFT: Tests/Fixtures/fuse/* are made by scripts/make_fuse_fixtures.py
// (a tiny fp32 Llama with a byte-level BPE tokenizer, a PEFT LoRA adapter for it, and model.safetensors of
// PeftModel.merge_and_unload() + save_pretrained in float32, float16 and bfloat16).
import Foundation
import Testing
import _TestSupport
@testable import QLoRA

@Suite struct FuseTests {
    let base = Fixtures.path("fuse/tiny-bpe")
    let adapter = Fixtures.path("fuse/adapter")

    func temporaryPath(_ tag: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("fuse-\(tag)-\(UUID().uuidString)").path
    }

    func floats(_ file: SafetensorsFile, _ name: String) throws -> [Float] {
        var v = [Float](repeating: 0, count: try file.shape(of: name).reduce(1, *))
        try v.withUnsafeMutableBufferPointer { try file.readFloat32(name, into: $0) }
        return v
    }

    func maxDifference(_ a: [Float], _ b: [Float]) -> Float {
        a.count == b.count ? zip(a, b).map { abs($0 - $1) }.max() ?? 0 : .infinity
    }

    /// Merging into the float32 base (--quantize none) gives PEFT's merged tensors within 1e-6, a folder
    /// with the tokenizer and a tied head, and logits of base + adapter (drift < 1e-4).
    @Test func float32MergeEqualsPEFTMergeAndUnload() throws {
        let out = temporaryPath("f32")
        defer { try? FileManager.default.removeItem(atPath: out) }
        let s = try fuseModel(model: base, adapter: adapter, output: out,
                              options: FuseOptions(format: .safetensors, dtype: .float32, quantization: .none))
        #expect(s.mergedModules == 14 && s.tensorCount == 20)
        let ours = try SafetensorsFile(path: out + "/model.safetensors")
        let peft = try SafetensorsFile(path: Fixtures.path("fuse/merged-f32.safetensors"))
        #expect(ours.tensorNames.sorted() == peft.tensorNames.sorted())   // tied: no lm_head.weight
        for name in peft.tensorNames {
            let dt = try ours.dtype(name)
            #expect(dt == .f32)
            let d = maxDifference(try floats(ours, name), try floats(peft, name))
            #expect(d <= 1e-6, "\(name): max |ours − PEFT| = \(d)")
        }
        let config = try #require(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/config.json"))) as? [String: Any])
        #expect(config["dtype"] as? String == "float32" && config["tie_word_embeddings"] as? Bool == true)
        #expect(Set(s.files).isSuperset(of: ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]))

        // The folder, loaded again, gives PEFT's logits (the merged model run by transformers).
        let j = try #require(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: Fixtures.path("fuse/expected.json")))) as? [String: Any])
        let ids = try #require(j["ids"] as? [Int]), expected = try #require(j["merged_last_logits"] as? [Double]).map(Float.init)
        let bundle = try ModelBundle(path: out, contextLength: 64, quantization: .none)
        #expect(bundle.rawPrompt(try #require(j["prompt"] as? String)) == ids)
        let logits = try bundle.model.forward(tokens: ids, startPosition: 0, logits: .last)
        #expect(maxDifference(logits, expected) < 1e-4, "max |Δ last logits| vs transformers: \(maxDifference(logits, expected))")

        let drift = try #require(s.drift)
        #expect(drift.maxAbs < 1e-4, "drift \(drift.maxAbs)")
        #expect(drift.adapterEffectMaxAbs > 1e-2, "the adapter should change the logits (\(drift.adapterEffectMaxAbs))")
        #expect(drift.unroundedMaxAbs == nil && drift.tokenizerRoundTrips)
    }

    /// float16 / bfloat16 output is the float32 merge rounded to nearest even, as torch's `.to(dtype)`:
    /// our rounding of PEFT's float32 tensors is bit-identical to torch's, and our own merge differs from
    /// PEFT's stored bits only where the float32 merges differ by an ulp (at most one step of the half type).
    @Test(arguments: [(WeightDType.float16, "f16"), (WeightDType.bfloat16, "bf16")])
    func halfPrecisionRoundsLikeTorch(_ dtype: WeightDType, _ tag: String) throws {
        let out = temporaryPath(tag)
        defer { try? FileManager.default.removeItem(atPath: out) }
        let s = try fuseModel(model: base, adapter: adapter, output: out,
                              options: FuseOptions(format: .safetensors, dtype: dtype, quantization: .none))
        let ours = try SafetensorsFile(path: out + "/model.safetensors")
        let torch = try SafetensorsFile(path: Fixtures.path("fuse/merged-\(tag).safetensors"))
        let peft32 = try SafetensorsFile(path: Fixtures.path("fuse/merged-f32.safetensors"))
        var differing = 0, total = 0
        for name in torch.tensorNames {
            let dt = try ours.dtype(name)
            #expect(dt == (dtype == .float16 ? SafetensorsDType.f16 : .bf16))
            let theirs = Array(try torch.rawBytes(name))
            #expect(dtype.encode(try floats(peft32, name)) == theirs, "\(name): our rounding of PEFT's float32 merge ≠ torch's")
            let mine = Array(try ours.rawBytes(name))
            for i in stride(from: 0, to: mine.count, by: 2) where mine[i] != theirs[i] || mine[i + 1] != theirs[i + 1] {
                let a = Int(UInt16(mine[i]) | UInt16(mine[i + 1]) << 8), b = Int(UInt16(theirs[i]) | UInt16(theirs[i + 1]) << 8)
                #expect(abs(a - b) == 1, "\(name)[\(i / 2)]: bits \(a) vs \(b)")
                differing += 1
            }
            total += mine.count / 2
        }
        #expect(differing * 1000 < total, "\(differing) of \(total) elements differ from torch's")
        let config = try #require(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/config.json"))) as? [String: Any])
        #expect(config["dtype"] as? String == dtype.rawValue)
        let drift = try #require(s.drift)
        let unrounded = try #require(drift.unroundedMaxAbs)
        #expect(unrounded < 1e-4 && drift.maxAbs > unrounded && drift.maxAbs < 0.1, "drift \(drift.maxAbs), unrounded \(unrounded)")
    }

    /// The default NF4 base: the linear weights written are the 4-bit base dequantized plus scaling·B·A
    /// (computed here by plain loops), everything else is the source's; drift of the merge < 1e-4.
    @Test func nf4BaseIsMergedDequantized() throws {
        let out = temporaryPath("nf4")
        defer { try? FileManager.default.removeItem(atPath: out) }
        let s = try fuseModel(model: base, adapter: adapter, output: out, options: FuseOptions(dtype: .float32))
        #expect(s.quantization == .nf4)
        let ours = try SafetensorsFile(path: out + "/model.safetensors")
        let source = try SafetensorsFile(path: base + "/model.safetensors")
        for name in ["model.embed_tokens.weight", "model.layers.1.input_layernorm.weight"] {
            let a = try floats(ours, name), b = try floats(source, name)
            #expect(a == b, "\(name)")
        }
        let lora = try AdapterFile.read(directory: adapter)
        let scale = Float(lora.config.scaling)
        for (layer, module, group) in [(0, "q_proj", "self_attn"), (1, "down_proj", "mlp")] {
            let name = "model.layers.\(layer).\(group).\(module).weight"
            let shape = try source.shape(of: name)
            let q = try QuantizedTensor4Bit.quantize(try floats(source, name), shape: shape, dtype: .float32, quantType: .nf4,
                                                     blocksize: 64, doubleQuant: true)
            var expected = q.dequantize()
            let pair = try #require(lora.layers[layer][module])
            for r in 0..<shape[0] {
                for c in 0..<shape[1] {
                    var d: Float = 0
                    for k in 0..<pair.a.rows { d += pair.b.values[r * pair.b.cols + k] * pair.a.values[k * pair.a.cols + c] }
                    expected[r * shape[1] + c] += scale * d
                }
            }
            let got = try floats(ours, name)
            #expect(maxDifference(got, expected) < 1e-6, "\(name): \(maxDifference(got, expected))")
            #expect(maxDifference(got, try floats(source, name)) > 1e-3, "\(name) should differ from the unquantized source")
        }
        let drift = try #require(s.drift)
        #expect(drift.maxAbs < 1e-4, "drift \(drift.maxAbs)")
    }

    /// GGUF output of an HF source: tensors in llama.cpp names with Q/K rows permuted, the
    /// tokenizer built from tokenizer.json; read back by ModelBundle it gives the safetensors output's logits.
    @Test func ggufOutputLoadsWithTheSafetensorsLogits() throws {
        let gguf = temporaryPath("gguf") + ".gguf", st = temporaryPath("st")
        defer { try? FileManager.default.removeItem(atPath: gguf); try? FileManager.default.removeItem(atPath: st) }
        // float32 so that the two files hold the same values (a GGUF keeps its norms F32 in any dtype); the
        // F16 typing is checked on SmolLM2 by FuseCommandTests.
        let options = FuseOptions(format: .gguf, dtype: .float32, quantization: .none)
        let s = try fuseModel(model: base, adapter: adapter, output: gguf, options: options)
        var stOptions = options
        stOptions.format = .safetensors
        _ = try fuseModel(model: base, adapter: adapter, output: st, options: stOptions)

        let file = try GGUFFile(path: gguf)
        #expect(file.metadata["general.architecture"]?.string == "llama")
        #expect(file.metadata["general.file_type"]?.int == 0)
        #expect(file.metadata["tokenizer.ggml.pre"]?.string == "gpt-2")
        #expect(file.metadata["tokenizer.ggml.model"]?.string == "gpt2")
        #expect(file.metadata["tokenizer.ggml.eos_token_id"]?.int == 2)
        #expect(file.metadata["tokenizer.chat_template"]?.string?.contains("<|im_start|>") == true)
        #expect(file.tensorInfos.count == 20 && !file.contains("output.weight"))
        let types = try ["blk.0.attn_norm.weight", "blk.0.attn_q.weight", "token_embd.weight"].map { try file.tensorInfo($0).type }
        #expect(types == [GGMLType.f32, .f32, .f32])

        // Q rows permuted llama.cpp's way: GGUF row 2i+j of a head = HF row j·D/2+i.
        let safetensors = try SafetensorsFile(path: st + "/model.safetensors")
        let hf = try floats(safetensors, "model.layers.1.self_attn.k_proj.weight")
        let gg = try file.float32Array("blk.1.attn_k.weight")
        let D = 16, cols = 64
        #expect(Array(gg[(D + 2) * cols ..< (D + 3) * cols]) == Array(hf[(D + 1) * cols ..< (D + 2) * cols]))   // head 1, i=1, j=0
        #expect(Array(gg[(D + 3) * cols ..< (D + 4) * cols]) == Array(hf[(D + 9) * cols ..< (D + 10) * cols]))  // head 1, i=1, j=1

        let a = try ModelBundle(path: gguf, contextLength: 64, quantization: .none)
        let b = try ModelBundle(path: st, contextLength: 64, quantization: .none)
        for text in ["The quick brown fox jumps over the lazy dog. 12345", "<|im_start|>user\nhi<|im_end|>\n", "  tabs\tand ü"] {
            #expect(a.rawPrompt(text) == b.rawPrompt(text), "\(text)")
        }
        #expect(a.chatTemplate != nil)
        let ids = b.rawPrompt("The quick brown fox jumps over the lazy dog. 12345")
        let la = try a.model.forward(tokens: ids, startPosition: 0, logits: .all)
        let lb = try b.model.forward(tokens: ids, startPosition: 0, logits: .all)
        #expect(maxDifference(la, lb) < 1e-5, "GGUF vs safetensors logits: \(maxDifference(la, lb))")
        let drift = try #require(s.drift)
        #expect(drift.tokenizerRoundTrips && drift.maxAbs < 0.05, "drift \(drift.maxAbs)")
    }

    @Test func refusesAnExistingOutputAndSentencePieceGGUFTokenizers() throws {
        let out = temporaryPath("exists")
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: out) }
        do {
            _ = try fuseModel(model: base, adapter: adapter, output: out)
            Issue.record("expected an error")
        } catch { #expect("\(error)".contains(out) && "\(error)".contains("already exists"), "\(error)") }

        // A SentencePiece tokenizer.json cannot become tokenizer.ggml.* yet: refused by name, nothing written.
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("fuse-spm-\(UUID().uuidString)")
        try Fixtures.linkTinyLlama2Model(at: folder)
        let adapterDir = folder.path + "-adapter", gguf = folder.path + ".gguf"
        defer { try? FileManager.default.removeItem(at: folder); try? FileManager.default.removeItem(atPath: adapterDir) }
        let config = try LlamaConfig(huggingFaceConfigFile: folder.path + "/config.json")
        var rng = SeededRandom(seed: 3)
        func m(_ r: Int, _ c: Int) -> LoRAMatrix { LoRAMatrix(rows: r, cols: c, values: (0..<r * c).map { _ in rng.nextUnitFloat() - 0.5 }) }
        let layers = (0..<config.layerCount).map { _ in ["q_proj": LoRAPair(a: m(2, config.hiddenSize), b: m(config.qDim, 2))] }
        try AdapterFile.write(LoRAAdapterWeights(config: LoRAAdapterConfig(r: 2, loraAlpha: 4, targetModules: ["q_proj"]), layers: layers), to: adapterDir)
        do {
            _ = try fuseModel(model: folder.path, adapter: adapterDir, output: gguf, options: FuseOptions(format: .gguf, quantization: .none))
            Issue.record("expected an error")
        } catch { #expect("\(error)".contains("tokenizer.json") && "\(error)".contains("byte-level"), "\(error)") }
        #expect(!FileManager.default.fileExists(atPath: gguf))
    }
}

/// The real model: one CLI run fusing a rank-2 adapter into SmolLM2 (NF4 base) as a GGUF f16.
@Suite(.serialized) struct FuseCommandTests {
    @Test func smolLM2FusesToGGUFWithASmallDrift() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fuse-smol-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let gguf = try GGUFFile(path: Fixtures.smolLM2GGUF)
        let config = try LlamaConfig(ggufMetadata: gguf.metadata, file: Fixtures.smolLM2GGUF)
        var rng = SeededRandom(seed: 5)
        func m(_ r: Int, _ c: Int, _ s: Float) -> LoRAMatrix { LoRAMatrix(rows: r, cols: c, values: (0..<r * c).map { _ in (rng.nextUnitFloat() - 0.5) * s }) }
        let layers = (0..<config.layerCount).map { _ in
            ["q_proj": LoRAPair(a: m(2, config.hiddenSize, 0.1), b: m(config.qDim, 2, 0.1)),
             "v_proj": LoRAPair(a: m(2, config.hiddenSize, 0.1), b: m(config.kvDim, 2, 0.1))]
        }
        try AdapterFile.write(LoRAAdapterWeights(config: LoRAAdapterConfig(r: 2, loraAlpha: 4, targetModules: ["q_proj", "v_proj"]), layers: layers),
                              to: dir + "/adapter")
        let r = try runQLoRA(["fuse", "--model", Fixtures.smolLM2GGUF, "--adapter", dir + "/adapter", "--output", dir + "/fused.gguf",
                              "--format", "gguf", "--dtype", "f16", "--probe", "The capital of France is Paris. It is known for"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("60 linear weights merged") && r.stdout.contains("base held as nf4"), "\(r.stdout)")
        // "merge drift over N probe tokens: max |Δlogit| X, mean Y ...; before float16 rounding: max U, ..."
        let line = try #require(r.stdout.split(separator: "\n").first { $0.hasPrefix("merge drift") }).description
        let maxText = try #require(line.components(separatedBy: "max |Δlogit| ").last?.split(separator: ",").first)
        let drift = try #require(Float(maxText))
        #expect(drift < 0.2 && line.contains("before float16 rounding"), "\(line)")
        let out = try GGUFFile(path: dir + "/fused.gguf")
        #expect(out.metadata["tokenizer.ggml.pre"]?.string == "smollm" && out.metadata["tokenizer.ggml.tokens"]?.stringArray?.count == 49152)
        let types = try ["blk.3.attn_q.weight", "output_norm.weight"].map { try out.tensorInfo($0).type }
        #expect(types == [GGMLType.f16, .f32])
    }
}
