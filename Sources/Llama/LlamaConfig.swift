import Foundation
import ModelFormats

/// The hyperparameters of a LLaMA-family decoder (Llama 1–3, Mistral, Qwen2), read from a Hugging Face
/// config.json (transformers 4.x or 5.x spelling) or from GGUF metadata.
public struct LlamaConfig: Equatable, Sendable {
    /// Llama 3 RoPE frequency scaling (`rope_type: "llama3"`).
    public struct RopeScaling: Equatable, Sendable {
        public var factor: Double
        public var lowFreqFactor: Double
        public var highFreqFactor: Double
        public var originalMaxPositionEmbeddings: Int
        public init(factor: Double, lowFreqFactor: Double, highFreqFactor: Double, originalMaxPositionEmbeddings: Int) {
            self.factor = factor
            self.lowFreqFactor = lowFreqFactor
            self.highFreqFactor = highFreqFactor
            self.originalMaxPositionEmbeddings = originalMaxPositionEmbeddings
        }
    }

    public var modelType: String             // "llama", "mistral" or "qwen2"
    public var hiddenSize: Int               // C
    public var intermediateSize: Int         // MLP width
    public var layerCount: Int               // L
    public var headCount: Int                // query heads
    public var kvHeadCount: Int              // key/value heads (GQA when < headCount)
    public var headDim: Int                  // D
    public var vocabularySize: Int           // V
    public var rmsNormEpsilon: Float
    public var ropeTheta: Double
    public var ropeScaling: RopeScaling?
    public var maxPositionEmbeddings: Int
    public var tieWordEmbeddings: Bool
    public var attentionBias: Bool           // q/k/v biases (Qwen2; Llama's attention_bias also biases o_proj)
    public var outputBias: Bool              // o_proj bias (Llama attention_bias only)
    public var mlpBias: Bool
    public var slidingWindow: Int?           // Mistral: a query sees only the last `slidingWindow` positions
    public var bosTokenId: Int?
    public var eosTokenIds: [Int]

    public init(modelType: String = "llama", hiddenSize: Int, intermediateSize: Int, layerCount: Int, headCount: Int,
                kvHeadCount: Int, headDim: Int? = nil, vocabularySize: Int, rmsNormEpsilon: Float = 1e-5,
                ropeTheta: Double = 10000, ropeScaling: RopeScaling? = nil, maxPositionEmbeddings: Int = 2048,
                tieWordEmbeddings: Bool = false, attentionBias: Bool = false, outputBias: Bool = false,
                mlpBias: Bool = false, slidingWindow: Int? = nil, bosTokenId: Int? = nil, eosTokenIds: [Int] = [],
                file: String = "LlamaConfig") throws {
        self.modelType = modelType
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.layerCount = layerCount
        self.headCount = headCount
        self.kvHeadCount = kvHeadCount
        self.headDim = headDim ?? (headCount > 0 ? hiddenSize / headCount : 0)
        self.vocabularySize = vocabularySize
        self.rmsNormEpsilon = rmsNormEpsilon
        self.ropeTheta = ropeTheta
        self.ropeScaling = ropeScaling
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.tieWordEmbeddings = tieWordEmbeddings
        self.attentionBias = attentionBias
        self.outputBias = outputBias
        self.mlpBias = mlpBias
        self.slidingWindow = slidingWindow
        self.bosTokenId = bosTokenId
        self.eosTokenIds = eosTokenIds
        try validate(file: file, headDimGiven: headDim != nil)
    }

    /// Query width heads·D and key/value width kvHeads·D.
    public var qDim: Int { headCount * headDim }
    public var kvDim: Int { kvHeadCount * headDim }

    // MARK: - Hugging Face config.json

    /// Parses config.json bytes. `file` is used in error messages.
    public init(huggingFaceConfig data: Data, file: String) throws {
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: data) } catch {
            throw LlamaError.invalidConfig(file: file, key: "(json)", value: "\(error.localizedDescription)", expected: "a JSON object")
        }
        guard let dict = object as? [String: Any] else {
            throw LlamaError.invalidConfig(file: file, key: "(json)", value: "\(type(of: object))", expected: "a JSON object")
        }
        try self.init(huggingFaceConfig: dict, file: file)
    }

    /// Reads a config.json file.
    public init(huggingFaceConfigFile path: String) throws {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw LlamaError.invalidConfig(file: path, key: "(file)", value: "unreadable", expected: "a readable config.json")
        }
        try self.init(huggingFaceConfig: data, file: path)
    }

    /// Parses a decoded config.json. Accepts transformers 4.x (`rope_theta`, `rope_scaling`, `torch_dtype`)
    /// and 5.x (`rope_parameters`, `dtype`) spellings; `head_dim` is optional (hidden / heads).
    public init(huggingFaceConfig c: [String: Any], file: String) throws {
        let r = HFReader(dict: c, file: file)
        guard let type = try r.string("model_type") else {
            throw LlamaError.invalidConfig(file: file, key: "model_type", value: "missing", expected: "llama, mistral or qwen2")
        }
        guard ["llama", "mistral", "qwen2"].contains(type) else {
            throw LlamaError.unsupportedArchitecture(file: file, key: "model_type", value: type)
        }
        if let act = try r.string("hidden_act"), act != "silu" {
            throw LlamaError.invalidConfig(file: file, key: "hidden_act", value: act, expected: "silu")
        }
        // Defaults of transformers' LlamaConfig / MistralConfig / Qwen2Config.
        let d: (vocab: Int, inter: Int, maxPos: Int, eps: Double, kv: Int?) = switch type {
        case "qwen2": (151936, 22016, 32768, 1e-6, nil)
        case "mistral": (32000, 14336, 131072, 1e-6, 8)
        default: (32000, 11008, 2048, 1e-6, nil)
        }
        let hidden = try r.int("hidden_size") ?? 4096
        let heads = try r.int("num_attention_heads") ?? 32
        let kvHeads = try r.int("num_key_value_heads") ?? d.kv ?? heads

        // RoPE: 5.x puts theta and scaling in rope_parameters; 4.x uses rope_theta and rope_scaling.
        let ropeParameters = try r.dict("rope_parameters")
        let ropeScalingDict = try r.dict("rope_scaling")
        var theta = try r.double("rope_theta") ?? 10000
        var scalingSource = ropeScalingDict
        var scalingKey = "rope_scaling"
        if let p = ropeParameters {
            let pr = HFReader(dict: p, file: file, prefix: "rope_parameters.")
            if let t = try pr.double("rope_theta") { theta = t }
            scalingSource = p
            scalingKey = "rope_parameters"
        }
        var scaling: RopeScaling?
        if let s = scalingSource {
            let sr = HFReader(dict: s, file: file, prefix: scalingKey + ".")
            let kind = try sr.string("rope_type") ?? sr.string("type") ?? "default"
            switch kind {
            case "default": break
            case "llama3":
                guard let factor = try sr.double("factor"), let low = try sr.double("low_freq_factor"),
                      let high = try sr.double("high_freq_factor"),
                      let orig = try sr.int("original_max_position_embeddings") else {
                    throw LlamaError.invalidConfig(file: file, key: scalingKey, value: "\(s)",
                                                   expected: "factor, low_freq_factor, high_freq_factor, original_max_position_embeddings")
                }
                guard factor > 0, low > 0, high > low, orig > 0 else {
                    throw LlamaError.invalidConfig(file: file, key: scalingKey, value: "\(s)",
                                                   expected: "factor > 0, 0 < low_freq_factor < high_freq_factor, original_max_position_embeddings > 0")
                }
                scaling = RopeScaling(factor: factor, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: orig)
            default:
                throw LlamaError.invalidConfig(file: file, key: scalingKey + ".rope_type", value: kind, expected: "default or llama3")
            }
        }

        var window: Int?
        if type == "mistral" { window = try r.int("sliding_window") }
        if type == "qwen2", try r.bool("use_sliding_window") == true {
            throw LlamaError.invalidConfig(file: file, key: "use_sliding_window", value: "true", expected: "false (Qwen2 sliding window is not supported)")
        }
        let attentionBias = type == "qwen2" ? true : (try r.bool("attention_bias") ?? false)
        let eos: [Int]
        if let list = c["eos_token_id"] as? [Any] {
            eos = try list.enumerated().map { i, v in
                guard let n = (v as? NSNumber)?.intValue else {
                    throw LlamaError.invalidConfig(file: file, key: "eos_token_id[\(i)]", value: "\(v)", expected: "an integer")
                }
                return n
            }
        } else {
            eos = try r.int("eos_token_id").map { [$0] } ?? []
        }
        try self.init(modelType: type, hiddenSize: hidden, intermediateSize: try r.int("intermediate_size") ?? d.inter,
                      layerCount: try r.int("num_hidden_layers") ?? 32, headCount: heads, kvHeadCount: kvHeads,
                      headDim: try r.int("head_dim"), vocabularySize: try r.int("vocab_size") ?? d.vocab,
                      rmsNormEpsilon: Float(try r.double("rms_norm_eps") ?? d.eps), ropeTheta: theta, ropeScaling: scaling,
                      maxPositionEmbeddings: try r.int("max_position_embeddings") ?? d.maxPos,
                      tieWordEmbeddings: try r.bool("tie_word_embeddings") ?? false,
                      attentionBias: attentionBias, outputBias: type == "llama" && attentionBias,
                      mlpBias: try r.bool("mlp_bias") ?? false, slidingWindow: window,
                      bosTokenId: try r.int("bos_token_id"), eosTokenIds: eos, file: file)
        if let dtype = try r.string("dtype") ?? r.string("torch_dtype"),
           !["float32", "float16", "bfloat16"].contains(dtype) {
            throw LlamaError.invalidConfig(file: file, key: c["dtype"] != nil ? "dtype" : "torch_dtype", value: dtype,
                                           expected: "float32, float16 or bfloat16")
        }
    }

    // MARK: - GGUF metadata

    /// Reads `general.architecture` ("llama" or "qwen2") and the `{arch}.*` keys (SPEC §8.3).
    /// GGUF does not say whether embeddings are tied: `tieWordEmbeddings` is true here and the loader
    /// uses `output.weight` when the file has one.
    public init(ggufMetadata m: [String: GGUFValue], file: String) throws {
        guard let arch = m["general.architecture"]?.string else {
            throw LlamaError.invalidConfig(file: file, key: "general.architecture", value: "missing", expected: "a string")
        }
        guard arch == "llama" || arch == "qwen2" else {
            throw LlamaError.unsupportedArchitecture(file: file, key: "general.architecture", value: arch)
        }
        func int(_ key: String, _ fallback: Int? = nil) throws -> Int {
            let full = "\(arch).\(key)"
            guard let v = m[full] else {
                if let fallback { return fallback }
                throw LlamaError.invalidConfig(file: file, key: full, value: "missing", expected: "an integer")
            }
            guard let n = v.int else { throw LlamaError.invalidConfig(file: file, key: full, value: "\(v)", expected: "an integer") }
            return n
        }
        func double(_ key: String, _ fallback: Double?) throws -> Double {
            let full = "\(arch).\(key)"
            guard let v = m[full] else {
                if let fallback { return fallback }
                throw LlamaError.invalidConfig(file: file, key: full, value: "missing", expected: "a number")
            }
            guard let x = v.double else { throw LlamaError.invalidConfig(file: file, key: full, value: "\(v)", expected: "a number") }
            return x
        }
        let hidden = try int("embedding_length")
        let heads = try int("attention.head_count")
        let headDim = try int("attention.key_length", heads > 0 ? hidden / heads : 0)
        if let rd = m["\(arch).rope.dimension_count"]?.int, rd != headDim {
            throw LlamaError.invalidConfig(file: file, key: "\(arch).rope.dimension_count", value: "\(rd)",
                                           expected: "\(headDim) (partial RoPE is not supported)")
        }
        if let s = m["\(arch).rope.scaling.type"]?.string, s != "none" {
            throw LlamaError.invalidConfig(file: file, key: "\(arch).rope.scaling.type", value: s, expected: "none")
        }
        let vocab: Int
        if let v = m["\(arch).vocab_size"] {
            guard let n = v.int else { throw LlamaError.invalidConfig(file: file, key: "\(arch).vocab_size", value: "\(v)", expected: "an integer") }
            vocab = n
        } else if case let .array(a)? = m["tokenizer.ggml.tokens"] {
            vocab = a.count
        } else {
            throw LlamaError.invalidConfig(file: file, key: "\(arch).vocab_size", value: "missing",
                                           expected: "an integer (or tokenizer.ggml.tokens)")
        }
        try self.init(modelType: arch, hiddenSize: hidden, intermediateSize: try int("feed_forward_length"),
                      layerCount: try int("block_count"), headCount: heads,
                      kvHeadCount: try int("attention.head_count_kv", heads), headDim: headDim, vocabularySize: vocab,
                      rmsNormEpsilon: Float(try double("attention.layer_norm_rms_epsilon", nil)),
                      ropeTheta: try double("rope.freq_base", 10000), ropeScaling: nil,
                      maxPositionEmbeddings: try int("context_length"), tieWordEmbeddings: true,
                      attentionBias: arch == "qwen2", outputBias: false, mlpBias: false, slidingWindow: nil,
                      bosTokenId: m["tokenizer.ggml.bos_token_id"]?.int,
                      eosTokenIds: m["tokenizer.ggml.eos_token_id"]?.int.map { [$0] } ?? [], file: file)
    }

    // MARK: - Validation

    private func validate(file: String, headDimGiven: Bool) throws {
        func positive(_ key: String, _ v: Int) throws {
            if v <= 0 { throw LlamaError.invalidConfig(file: file, key: key, value: "\(v)", expected: "> 0") }
        }
        try positive("hidden_size", hiddenSize)
        try positive("intermediate_size", intermediateSize)
        try positive("num_hidden_layers", layerCount)
        try positive("num_attention_heads", headCount)
        try positive("num_key_value_heads", kvHeadCount)
        try positive("vocab_size", vocabularySize)
        try positive("max_position_embeddings", maxPositionEmbeddings)
        if !headDimGiven && hiddenSize % headCount != 0 {
            throw LlamaError.invalidConfig(file: file, key: "num_attention_heads", value: "\(headCount)",
                                           expected: "a divisor of hidden_size \(hiddenSize)")
        }
        try positive("head_dim", headDim)
        if headDim % 2 != 0 {
            throw LlamaError.invalidConfig(file: file, key: "head_dim", value: "\(headDim)", expected: "an even number (RoPE pairs)")
        }
        if headCount % kvHeadCount != 0 {
            throw LlamaError.invalidConfig(file: file, key: "num_key_value_heads", value: "\(kvHeadCount)",
                                           expected: "a divisor of num_attention_heads \(headCount)")
        }
        if !(rmsNormEpsilon > 0) || !rmsNormEpsilon.isFinite {
            throw LlamaError.invalidConfig(file: file, key: "rms_norm_eps", value: "\(rmsNormEpsilon)", expected: "a positive number")
        }
        if !(ropeTheta > 0) || !ropeTheta.isFinite {
            throw LlamaError.invalidConfig(file: file, key: "rope_theta", value: "\(ropeTheta)", expected: "a positive number")
        }
        if let w = slidingWindow, w <= 0 {
            throw LlamaError.invalidConfig(file: file, key: "sliding_window", value: "\(w)", expected: "> 0 or null")
        }
        for (key, id) in [("bos_token_id", bosTokenId)] + eosTokenIds.map({ ("eos_token_id", Optional($0)) }) {
            if let id, id < 0 || id >= vocabularySize {
                throw LlamaError.invalidConfig(file: file, key: key, value: "\(id)", expected: "0 ..< vocab_size \(vocabularySize)")
            }
        }
    }
}

/// Typed access to config.json values, with errors naming the key. `null` counts as absent.
private struct HFReader {
    let dict: [String: Any]
    let file: String
    var prefix = ""

    private func value(_ key: String) -> Any? {
        guard let v = dict[key], !(v is NSNull) else { return nil }
        return v
    }
    /// JSON true/false decode as NSNumber with objCType "c" (char), numbers as "i"/"q"/"d".
    private func isBool(_ n: NSNumber) -> Bool { String(cString: n.objCType) == "c" }
    private func fail(_ key: String, _ v: Any, _ expected: String) -> LlamaError {
        .invalidConfig(file: file, key: prefix + key, value: "\(v)", expected: expected)
    }
    func int(_ key: String) throws -> Int? {
        guard let v = value(key) else { return nil }
        guard let n = v as? NSNumber, !isBool(n), n.doubleValue == n.doubleValue.rounded(),
              abs(n.doubleValue) < 1e15 else { throw fail(key, v, "an integer") }
        return n.intValue
    }
    func double(_ key: String) throws -> Double? {
        guard let v = value(key) else { return nil }
        guard let n = v as? NSNumber, !isBool(n) else { throw fail(key, v, "a number") }
        return n.doubleValue
    }
    func bool(_ key: String) throws -> Bool? {
        guard let v = value(key) else { return nil }
        guard let n = v as? NSNumber, isBool(n) else { throw fail(key, v, "true or false") }
        return n.boolValue
    }
    func string(_ key: String) throws -> String? {
        guard let v = value(key) else { return nil }
        guard let s = v as? String else { throw fail(key, v, "a string") }
        return s
    }
    func dict(_ key: String) throws -> [String: Any]? {
        guard let v = value(key) else { return nil }
        guard let d = v as? [String: Any] else { throw fail(key, v, "an object") }
        return d
    }
}
