// `qlora quantize` / `quantizeModel` against bitsandbytes: Tests/Fixtures/bnb/* are folders written by
// transformers 5.24 + bitsandbytes 0.50.2 (save_pretrained of the 4-bit model) from the tiny fp32
// models in Tests/Fixtures/llama, made by scripts/make_bnb_fixtures.py (which also loads OUR output
// with transformers: Tests/Fixtures/bnb/roundtrip.json).
import Foundation
import QLoRA
import Testing
import _TestSupport

@Suite(.serialized) struct QuantizeCommandTests {
    func temporaryPath(_ tag: String) -> String {
        FileManager.default.temporaryDirectory.appendingPathComponent("quantize-\(tag)-\(UUID().uuidString)").path
    }

    func jsonFile(_ path: String) throws -> [String: Any] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        return try #require(JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    /// Our output's model.safetensors is byte-identical to the one transformers + bitsandbytes saved,
    /// and its config.json has the same quantization_config.
    func expectSameAsTransformers(_ out: String, _ fixture: String) throws {
        let ours = try Data(contentsOf: URL(fileURLWithPath: out + "/model.safetensors"))
        let theirs = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path(fixture + "/model.safetensors")))
        #expect(ours == theirs, "\(fixture): model.safetensors differs (\(ours.count) vs \(theirs.count) bytes)")
        if ours != theirs {  // say which tensor
            let a = try SafetensorsFile(path: out + "/model.safetensors")
            let b = try SafetensorsFile(path: Fixtures.path(fixture + "/model.safetensors"))
            #expect(a.tensorNames.sorted() == b.tensorNames.sorted())
            for n in b.tensorNames where a.contains(n) {
                #expect(Array(try a.rawBytes(n)) == Array(try b.rawBytes(n)), "\(fixture) \(n)")
            }
        }
        let ourConfig = try jsonFile(out + "/config.json"), theirConfig = try jsonFile(Fixtures.path(fixture + "/config.json"))
        let q1 = try #require(ourConfig["quantization_config"] as? NSDictionary)
        let q2 = try #require(theirConfig["quantization_config"] as? NSDictionary)
        #expect(q1 == q2, "\(fixture) quantization_config")
        #expect(ourConfig["dtype"] as? String == theirConfig["dtype"] as? String)
        // In fact config.json is the same text too (sorted keys, indent 2, floats as floats).
        let ourText = try String(contentsOfFile: out + "/config.json", encoding: .utf8)
        #expect(ourText == (try String(contentsOfFile: Fixtures.path(fixture + "/config.json"), encoding: .utf8)), "\(fixture) config.json")
    }

    @Test func huggingFaceSourceGivesTheBitsAndBytesFile() throws {
        let cases: [(String, String, QuantType4Bit, Bool)] = [
            ("llama/tiny-llama-gqa-tied", "bnb/gqa-tied-nf4-dq", .nf4, true),
            ("llama/tiny-llama-gqa-tied", "bnb/gqa-tied-fp4", .fp4, false),
            ("llama/tiny-llama-untied", "bnb/untied-nf4-dq", .nf4, true),
        ]
        for (source, fixture, qt, dq) in cases {
            let out = temporaryPath("hf")
            defer { try? FileManager.default.removeItem(atPath: out) }
            let s = try quantizeModel(source: Fixtures.path(source), output: out,
                                      options: QuantizeOptions(quantType: qt, doubleQuant: dq, blocksize: 64, dtype: .float32))
            #expect(s.quantizedTensorCount == 14)
            #expect(s.tensorCount == (source.hasSuffix("untied") ? 21 : 20))
            try expectSameAsTransformers(out, fixture)
            // And we read back what we wrote.
            let model = try BitsAndBytesModel(directory: out)
            #expect(model.quantizedTensorNames.count == 14)
        }
    }

    @Test func ggufSourceGivesTheSameFileAsTheHuggingFaceFolder() throws {
        // tiny-llama-gqa-tied.gguf holds the same F32 weights with Q/K rows permuted llama.cpp's way.
        let out = temporaryPath("gguf")
        defer { try? FileManager.default.removeItem(atPath: out) }
        _ = try quantizeModel(source: Fixtures.path("llama/tiny-llama-gqa-tied.gguf"), output: out,
                              options: QuantizeOptions(quantType: .nf4, doubleQuant: true, dtype: .float32))
        let a = try SafetensorsFile(path: out + "/model.safetensors")
        let b = try SafetensorsFile(path: Fixtures.path("bnb/gqa-tied-nf4-dq/model.safetensors"))
        #expect(a.tensorNames.sorted() == b.tensorNames.sorted())
        for n in b.tensorNames where a.contains(n) {
            #expect(Array(try a.rawBytes(n)) == Array(try b.rawBytes(n)), "\(n)")
        }
        let config = try LlamaConfig(huggingFaceConfigFile: out + "/config.json")
        let expected = try LlamaConfig(huggingFaceConfigFile: Fixtures.path("llama/tiny-llama-gqa-tied/config.json"))
        #expect(config == expected)
    }

    @Test func commandPrintsASummaryAndRefusesToOverwrite() throws {
        let out = temporaryPath("cli")
        defer { try? FileManager.default.removeItem(atPath: out) }
        let r = try runQLoRA(["quantize", "--model", Fixtures.path("llama/tiny-llama-untied"), "--output", out,
                              "--quant-type", "fp4", "--no-double-quant", "--blocksize", "128", "--dtype", "bfloat16"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("14 in 4-bit fp4") && r.stdout.contains("bits/parameter") && r.stdout.contains("time:"), "\(r.stdout)")
        let model = try BitsAndBytesModel(directory: out)
        let q = try #require(try model.quantized4Bit("model.layers.0.mlp.down_proj.weight"))
        #expect(q.quantType == .fp4 && q.blocksize == 128 && !q.isDoubleQuantized && q.dtype == .bfloat16)
        #expect(try model.weights.dtype("model.embed_tokens.weight") == .bf16)
        #expect(try model.weights.dtype("lm_head.weight") == .bf16)
        let again = try runQLoRA(["quantize", "--model", Fixtures.path("llama/tiny-llama-untied"), "--output", out])
        #expect(again.status != 0 && again.stderr.contains("already exists"), "\(again.stderr)")
        let bad = try runQLoRA(["quantize", "--model", Fixtures.path("llama/tiny-llama-untied"), "--output", out + "x", "--blocksize", "48"])
        #expect(bad.status != 0 && bad.stderr.contains("--blocksize"), "\(bad.stderr)")
        #expect(!FileManager.default.fileExists(atPath: out + "x"))
    }

    @Test func smolLM2GGUFExportsATokenizerThatEncodesLikeTheGGUF() throws {
        let out = temporaryPath("smol")
        defer { try? FileManager.default.removeItem(atPath: out) }
        let s = try quantizeModel(source: Fixtures.smolLM2GGUF, output: out)
        #expect(s.quantizedTensorCount == 30 * 7)
        #expect(s.dtype == .bfloat16)
        #expect(s.quantizedBitsPerParameter > 4.1 && s.quantizedBitsPerParameter < 4.2)
        let gguf = try GGUFFile(path: Fixtures.smolLM2GGUF)
        let reference = try TokenizerBundle.load(ggufMetadata: gguf.metadata, file: Fixtures.smolLM2GGUF)
        let exported = try TokenizerBundle.load(huggingFaceDirectory: out)
        for text in ["Hello, world! 12345 tokens", "<|im_start|>user\nWhat is 2+2?<|im_end|>\n", "  spaces\tand\nnew lines ü ß 漢字"] {
            #expect(exported.tokenizer.encode(text, addSpecialTokens: true) == reference.tokenizer.encode(text, addSpecialTokens: true), "\(text)")
        }
        #expect(exported.chatTemplate == reference.chatTemplate)
        #expect(exported.eosToken == "<|im_end|>")
        let model = try BitsAndBytesModel(directory: out)
        #expect(model.quantizedTensorNames.count == 210)
    }

    /// The transformers-saved 4-bit folders run through our Llama forward (4-bit weights used as
    /// stored, or dequantized to float32) give transformers' 4-bit logits (compute dtype float32).
    @Test(arguments: ["gqa-tied-nf4-dq", "gqa-tied-fp4", "untied-nf4-dq"])
    func transformersCheckpointGivesTransformersLogits(_ fixture: String) throws {
        let dir = Fixtures.path("bnb/" + fixture)
        let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/expected.json"))
        let j = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let prompt = try #require(j["prompt"] as? [Int])
        let expected = try #require(j["logits"] as? [[Double]]).flatMap { $0.map(Float.init) }
        let config = try LlamaConfig(huggingFaceConfigFile: dir + "/config.json")
        let source = try BitsAndBytesModel(directory: dir)
        // Any quantizing policy keeps the stored 4-bit tensors (no requantization); .none dequantizes them.
        for policy in [QuantizationPolicy(quantType: .nf4), QuantizationPolicy.none] {
            let weights = try LlamaWeights(config: config, source: source, file: dir, policy: policy)
            let model = try LlamaModel(config: config, weights: weights, maxContext: 64)
            let logits = try model.forward(tokens: prompt, startPosition: 0, logits: .all)
            #expect(logits.count == expected.count)
            let diff = zip(logits, expected).map { abs($0 - $1) }.max() ?? .infinity
            #expect(diff < 1e-3, "\(fixture) policy \(policy): max |Δlogit| = \(diff)")
        }
    }

    @Test func unsupportedGGUFTokenizersAreRejectedByName() throws {
        let tokens = GGUFValue.array(.string(["a", "b", "ab"]))
        let merges = GGUFValue.array(.string(["a b"]))
        func message(_ m: [String: GGUFValue]) -> String {
            do { _ = try HuggingFaceTokenizerFiles(ggufMetadata: m, file: "x.gguf"); return "no error" } catch { return "\(error)" }
        }
        var e = message(["tokenizer.ggml.model": .string("llama"), "tokenizer.ggml.tokens": tokens])
        #expect(e.contains("x.gguf") && e.contains("tokenizer.ggml.model") && e.contains("SentencePiece"), "\(e)")
        e = message(["tokenizer.ggml.model": .string("gpt2"), "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
                     "tokenizer.ggml.pre": .string("made-up")])
        #expect(e.contains("tokenizer.ggml.pre") && e.contains("made-up"), "\(e)")
        e = message(["tokenizer.ggml.model": .string("gpt2"), "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
                     "tokenizer.ggml.pre": .string("smollm"), "tokenizer.ggml.eos_token_id": .uint32(7)])
        #expect(e.contains("tokenizer.ggml.eos_token_id") && e.contains("0..<3"), "\(e)")
        let ok = try HuggingFaceTokenizerFiles(ggufMetadata: ["tokenizer.ggml.model": .string("gpt2"), "tokenizer.ggml.tokens": tokens,
                                                              "tokenizer.ggml.merges": merges, "tokenizer.ggml.pre": .string("smollm")],
                                               file: "x.gguf")
        let model = try #require(ok.tokenizerJSON["model"] as? [String: Any])
        #expect(model["vocab"] as? [String: Int] == ["a": 0, "b": 1, "ab": 2])
        #expect(model["merges"] as? [[String]] == [["a", "b"]])
    }
}
