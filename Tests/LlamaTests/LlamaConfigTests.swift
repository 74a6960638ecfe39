// Fixtures: scripts/make_llama_fixtures.py (config.json / config-4x.json of the tiny models).
import Foundation
import Testing
import ModelFormats
import _TestSupport
@testable import Llama

@Suite struct LlamaConfigTests {
    static func smolLM2Dict() -> [String: Any] {
        ["model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
         "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152,
         "rms_norm_eps": 9.999999747378752e-06, "rope_parameters": ["rope_theta": 100000.0, "rope_type": "default"],
         "max_position_embeddings": 8192, "tie_word_embeddings": true, "attention_bias": false, "mlp_bias": false,
         "bos_token_id": 1, "eos_token_id": 2, "dtype": "float32", "hidden_act": "silu"]
    }

    @Test func parsesSmolLM2Config() throws {
        let c = try LlamaConfig(huggingFaceConfig: Self.smolLM2Dict(), file: "config.json")
        #expect(c.hiddenSize == 576 && c.intermediateSize == 1536 && c.layerCount == 30)
        #expect(c.headCount == 9 && c.kvHeadCount == 3 && c.headDim == 64 && c.vocabularySize == 49152)
        #expect(c.ropeTheta == 100000 && c.ropeScaling == nil && c.rmsNormEpsilon == 1e-5)
        #expect(c.tieWordEmbeddings && !c.attentionBias && !c.mlpBias && c.bosTokenId == 1 && c.eosTokenIds == [2])
    }

    /// The 4.x spelling (rope_theta, rope_scaling with rope_type, torch_dtype, no head_dim) parses to
    /// the same config as the 5.x one.
    @Test func transformers4And5SpellingsAgree() throws {
        let dir = Fixtures.path("llama/tiny-llama3-rope")
        let v5 = try LlamaConfig(huggingFaceConfigFile: dir + "/config.json")
        let v4 = try LlamaConfig(huggingFaceConfigFile: dir + "/config-4x.json")
        #expect(v4 == v5)
        #expect(v5.ropeTheta == 500000)
        #expect(v5.ropeScaling == .init(factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 16))
        // the old "type" key of rope_scaling too
        var d = Self.smolLM2Dict()
        d["rope_parameters"] = nil
        d["rope_theta"] = 500000.0
        d["rope_scaling"] = ["type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 8192]
        #expect(try LlamaConfig(huggingFaceConfig: d, file: "c").ropeScaling?.factor == 8)
    }

    @Test func qwen2AndMistralSpecifics() throws {
        let q = try LlamaConfig(huggingFaceConfigFile: Fixtures.path("llama/tiny-qwen2/config.json"))
        #expect(q.modelType == "qwen2" && q.attentionBias && !q.outputBias && q.slidingWindow == nil)
        let m = try LlamaConfig(huggingFaceConfigFile: Fixtures.path("llama/tiny-mistral/config.json"))
        #expect(m.modelType == "mistral" && m.slidingWindow == 6 && m.headDim == 16)
        // head_dim absent or null: hidden / heads
        var d = Self.smolLM2Dict()
        d["head_dim"] = NSNull()
        #expect(try LlamaConfig(huggingFaceConfig: d, file: "c").headDim == 64)
        // a list of eos ids (Llama 3)
        d["eos_token_id"] = [2, 0]
        #expect(try LlamaConfig(huggingFaceConfig: d, file: "c").eosTokenIds == [2, 0])
    }

    @Test func rejectsUnsupportedAndInvalidConfigs() throws {
        var d = Self.smolLM2Dict()
        d["model_type"] = "gpt2"
        #expect(throws: LlamaError.unsupportedArchitecture(file: "f.json", key: "model_type", value: "gpt2")) {
            try LlamaConfig(huggingFaceConfig: d, file: "f.json")
        }
        d = Self.smolLM2Dict()
        d["num_key_value_heads"] = 4
        #expect(throws: LlamaError.invalidConfig(file: "f.json", key: "num_key_value_heads", value: "4",
                                                 expected: "a divisor of num_attention_heads 9")) {
            try LlamaConfig(huggingFaceConfig: d, file: "f.json")
        }
        d = Self.smolLM2Dict()
        d["head_dim"] = nil
        d["num_attention_heads"] = 7
        d["num_key_value_heads"] = 7
        #expect(throws: LlamaError.invalidConfig(file: "f.json", key: "num_attention_heads", value: "7",
                                                 expected: "a divisor of hidden_size 576")) {
            try LlamaConfig(huggingFaceConfig: d, file: "f.json")
        }
        d = Self.smolLM2Dict()
        d["hidden_size"] = "576"
        #expect(throws: LlamaError.invalidConfig(file: "f.json", key: "hidden_size", value: "576", expected: "an integer")) {
            try LlamaConfig(huggingFaceConfig: d, file: "f.json")
        }
        d = Self.smolLM2Dict()
        d["num_hidden_layers"] = 0
        #expect(throws: LlamaError.invalidConfig(file: "f.json", key: "num_hidden_layers", value: "0", expected: "> 0")) {
            try LlamaConfig(huggingFaceConfig: d, file: "f.json")
        }
        d = Self.smolLM2Dict()
        d["rope_parameters"] = ["rope_theta": 1e4, "rope_type": "yarn", "factor": 4.0]
        #expect(throws: LlamaError.invalidConfig(file: "f.json", key: "rope_parameters.rope_type", value: "yarn",
                                                 expected: "default or llama3")) {
            try LlamaConfig(huggingFaceConfig: d, file: "f.json")
        }
        #expect(throws: LlamaError.self) { try LlamaConfig(huggingFaceConfig: Data("[1]".utf8), file: "f.json") }
    }

    @Test func parsesGGUFMetadata() throws {
        var m: [String: GGUFValue] = [
            "general.architecture": .string("llama"), "llama.context_length": .uint32(8192),
            "llama.embedding_length": .uint32(576), "llama.block_count": .uint32(30),
            "llama.feed_forward_length": .uint32(1536), "llama.attention.head_count": .uint32(9),
            "llama.attention.head_count_kv": .uint32(3), "llama.rope.freq_base": .float32(100000),
            "llama.attention.layer_norm_rms_epsilon": .float32(1e-5), "llama.rope.dimension_count": .uint32(64),
            "llama.vocab_size": .uint32(49152), "tokenizer.ggml.bos_token_id": .uint32(1),
            "tokenizer.ggml.eos_token_id": .uint32(2),
        ]
        let c = try LlamaConfig(ggufMetadata: m, file: "m.gguf")
        var hf = try LlamaConfig(huggingFaceConfig: Self.smolLM2Dict(), file: "config.json")
        hf.maxPositionEmbeddings = 8192
        #expect(c == hf)
        m["llama.block_count"] = .string("30")
        #expect(throws: LlamaError.invalidConfig(file: "m.gguf", key: "llama.block_count", value: "\(GGUFValue.string("30"))",
                                                 expected: "an integer")) {
            try LlamaConfig(ggufMetadata: m, file: "m.gguf")
        }
        m["llama.block_count"] = nil
        #expect(throws: LlamaError.invalidConfig(file: "m.gguf", key: "llama.block_count", value: "missing", expected: "an integer")) {
            try LlamaConfig(ggufMetadata: m, file: "m.gguf")
        }
        m["general.architecture"] = .string("gemma")
        #expect(throws: LlamaError.unsupportedArchitecture(file: "m.gguf", key: "general.architecture", value: "gemma")) {
            try LlamaConfig(ggufMetadata: m, file: "m.gguf")
        }
    }

    /// Plain theta^(−2i/D), and llama3 scaling: high frequencies kept, low ones divided by factor.
    @Test func inverseFrequencies() throws {
        let c = try LlamaConfig(hiddenSize: 64, intermediateSize: 8, layerCount: 1, headCount: 4, kvHeadCount: 4,
                                vocabularySize: 8, ropeTheta: 10000)
        let inv = LlamaModel.inverseFrequencies(c)
        #expect(inv.count == 8 && inv[0] == 1)
        for i in 0..<8 { #expect(abs(inv[i] - Float(pow(10000.0, -Double(2 * i) / 16))) <= 1e-6 * inv[i]) }
        var s = c
        s.ropeScaling = .init(factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 16)
        let scaled = LlamaModel.inverseFrequencies(s)
        for i in 0..<8 {
            let wavelen = 2 * Double.pi / Double(inv[i])
            if wavelen < 4 { #expect(scaled[i] == inv[i]) }
            if wavelen > 16 { #expect(abs(scaled[i] - inv[i] / 8) <= 1e-7 * inv[i]) }
        }
    }
}
