import Foundation
import ModelFormats
import Quantization

// The one place that spells checkpoint tensor names: Hugging Face (`model.layers.N.self_attn.q_proj.weight`)
// and GGUF (`blk.N.attn_q.weight`, SPEC §8.4).

extension LlamaWeights {
    /// Which naming a tensor source uses.
    public enum Naming: Sendable { case huggingFace, gguf }

    /// Loads every parameter from `source`, checking each shape against `config`. `file` names the
    /// source in errors. GGUF names are detected by `token_embd.weight`; for GGUF files of the
    /// llama architecture the Q/K row permutation of llama.cpp's converter is undone (SPEC §8.5) so
    /// one rotate_half RoPE serves both formats.
    ///
    /// `policy` decides how the linear weights are held. When it quantizes, they are quantized one
    /// tensor at a time (peak memory ≈ the quantized model + one float32 tensor; no float32 slab for
    /// them). A `QuantizedTensorSource` tensor stored in 4 bits is used as stored (no requantization),
    /// or dequantized into float32 under `.none`. A GGUF's Q8_0 `token_embd.weight` / `output.weight`
    /// is kept in its Q8_0 blocks (`EmbeddingMatrix.q8_0`, 34 bytes per 32 values) under every
    /// policy; other embedding types are dequantized into float32.
    public convenience init(config: LlamaConfig, source: TensorSource, file: String,
                            policy: QuantizationPolicy = .none) throws {
        try policy.validate()
        let naming: Naming = source.contains("token_embd.weight") ? .gguf : .huggingFace
        let separate: Bool
        switch naming {
        case .huggingFace: separate = !config.tieWordEmbeddings
        case .gguf: separate = source.contains("output.weight")
        }
        var q8Embedding: Q8Matrix? = nil, q8LMHead: Q8Matrix? = nil
        if naming == .gguf, let gguf = source as? GGUFFile {
            let shape = [config.vocabularySize, config.hiddenSize]
            q8Embedding = try LlamaWeights.q8Tensor(gguf, "token_embd.weight", shape: shape, file: file)
            if separate { q8LMHead = try LlamaWeights.q8Tensor(gguf, "output.weight", shape: shape, file: file) }
        }
        self.init(config: config, separateLMHead: separate, denseLinear: !policy.isQuantized,
                  q8Embedding: q8Embedding, q8LMHead: q8LMHead)
        if naming == .gguf, source.contains("rope_freqs.weight") {
            throw LlamaError.invalidConfig(file: file, key: "rope_freqs.weight", value: "present",
                                           expected: "no rope frequency factors (llama3 GGUF rope scaling is not supported)")
        }
        let C = config.hiddenSize, I = config.intermediateSize, V = config.vocabularySize
        let qd = config.qDim, kvd = config.kvDim
        let unpermute = naming == .gguf && config.modelType == "llama"

        func load(_ name: String, _ shape: [Int], _ dst: UnsafeMutablePointer<Float>, permuteHeads: Int? = nil) throws {
            guard source.contains(name) else { throw LlamaError.missingTensor(file: file, name: name) }
            let actual = try source.shape(of: name)
            guard actual == shape else {
                throw LlamaError.shapeMismatch(file: file, tensor: name, expected: shape, actual: actual)
            }
            let count = shape.reduce(1, *)
            guard let heads = permuteHeads else {
                try source.readFloat32(name, into: UnsafeMutableBufferPointer(start: dst, count: count))
                return
            }
            let tmp = UnsafeMutableBufferPointer<Float>.allocate(capacity: count)
            defer { tmp.deallocate() }
            try source.readFloat32(name, into: tmp)
            unpermuteRoPERows(out: dst, inp: UnsafePointer(tmp.baseAddress!), heads: heads,
                              headDim: config.headDim, columns: shape.count == 2 ? shape[1] : 1)
        }

        let quantizedSource = source as? QuantizedTensorSource
        var scratch: [Float] = []      // one float32 linear tensor at a time (reused)
        func linear(_ name: String, _ shape: [Int], _ slot: LinearWeight, permuteHeads: Int? = nil) throws -> LinearWeight {
            guard source.contains(name) else { throw LlamaError.missingTensor(file: file, name: name) }
            if let stored = try quantizedSource?.quantized4Bit(name) {
                guard stored.shape == shape else {
                    throw LlamaError.shapeMismatch(file: file, tensor: name, expected: shape, actual: stored.shape)
                }
                guard case let .dense(dst, _, _) = slot, !policy.isQuantized else { return .quantized(stored) }
                stored.dequantize(start: 0, into: UnsafeMutableBufferPointer(start: dst, count: stored.count))
                return slot
            }
            if case let .dense(dst, _, _) = slot, !policy.isQuantized {
                try load(name, shape, dst, permuteHeads: permuteHeads)
                return slot
            }
            let count = shape.reduce(1, *)
            if scratch.count != count { scratch = [Float](repeating: 0, count: count) }
            try scratch.withUnsafeMutableBufferPointer { try load(name, shape, $0.baseAddress!, permuteHeads: permuteHeads) }
            do {
                let q = try QuantizedTensor4Bit.quantize(scratch, shape: shape, dtype: .float32,
                                                         quantType: policy.quantType.quantType!,
                                                         blocksize: policy.blocksize, doubleQuant: policy.doubleQuant)
                return .quantized(q)
            } catch {
                throw LlamaError.invalidInput(field: "\(file): \(name)", value: "\(error)", expected: "a quantizable tensor")
            }
        }

        switch naming {
        case .huggingFace:
            if let p = embedding.densePointer { try load("model.embed_tokens.weight", [V, C], p) }
            try load("model.norm.weight", [C], finalNorm)
            if separate, let p = lmHead.densePointer { try load("lm_head.weight", [V, C], p) }
            for (n, l) in layers.enumerated() {
                let p = "model.layers.\(n)."
                try load(p + "input_layernorm.weight", [C], l.attentionNorm)
                layers[n].wq = try linear(p + "self_attn.q_proj.weight", [qd, C], l.wq)
                layers[n].wk = try linear(p + "self_attn.k_proj.weight", [kvd, C], l.wk)
                layers[n].wv = try linear(p + "self_attn.v_proj.weight", [kvd, C], l.wv)
                layers[n].wo = try linear(p + "self_attn.o_proj.weight", [C, qd], l.wo)
                if let b = l.bq { try load(p + "self_attn.q_proj.bias", [qd], b) }
                if let b = l.bk { try load(p + "self_attn.k_proj.bias", [kvd], b) }
                if let b = l.bv { try load(p + "self_attn.v_proj.bias", [kvd], b) }
                if let b = l.bo { try load(p + "self_attn.o_proj.bias", [C], b) }
                try load(p + "post_attention_layernorm.weight", [C], l.mlpNorm)
                layers[n].wGate = try linear(p + "mlp.gate_proj.weight", [I, C], l.wGate)
                layers[n].wUp = try linear(p + "mlp.up_proj.weight", [I, C], l.wUp)
                layers[n].wDown = try linear(p + "mlp.down_proj.weight", [C, I], l.wDown)
                if let b = l.bGate { try load(p + "mlp.gate_proj.bias", [I], b) }
                if let b = l.bUp { try load(p + "mlp.up_proj.bias", [I], b) }
                if let b = l.bDown { try load(p + "mlp.down_proj.bias", [C], b) }
            }
        case .gguf:
            if let p = embedding.densePointer { try load("token_embd.weight", [V, C], p) }
            try load("output_norm.weight", [C], finalNorm)
            if separate, let p = lmHead.densePointer { try load("output.weight", [V, C], p) }
            let qh = unpermute ? config.headCount : nil, kh = unpermute ? config.kvHeadCount : nil
            for (n, l) in layers.enumerated() {
                let p = "blk.\(n)."
                try load(p + "attn_norm.weight", [C], l.attentionNorm)
                layers[n].wq = try linear(p + "attn_q.weight", [qd, C], l.wq, permuteHeads: qh)
                layers[n].wk = try linear(p + "attn_k.weight", [kvd, C], l.wk, permuteHeads: kh)
                layers[n].wv = try linear(p + "attn_v.weight", [kvd, C], l.wv)
                layers[n].wo = try linear(p + "attn_output.weight", [C, qd], l.wo)
                if let b = l.bq { try load(p + "attn_q.bias", [qd], b, permuteHeads: qh) }
                if let b = l.bk { try load(p + "attn_k.bias", [kvd], b, permuteHeads: kh) }
                if let b = l.bv { try load(p + "attn_v.bias", [kvd], b) }
                try load(p + "ffn_norm.weight", [C], l.mlpNorm)
                layers[n].wGate = try linear(p + "ffn_gate.weight", [I, C], l.wGate)
                layers[n].wUp = try linear(p + "ffn_up.weight", [I, C], l.wUp)
                layers[n].wDown = try linear(p + "ffn_down.weight", [C, I], l.wDown)
            }
        }
    }
}

extension LlamaWeights {
    /// The GGUF tensor `name` as a `Q8Matrix` when it is stored in Q8_0, else nil (absent or another
    /// type: the float32 path loads it). Throws `LlamaError.shapeMismatch` when its shape is not
    /// `shape`, and `Q8MatrixError` naming the tensor when its bytes do not match the shape.
    static func q8Tensor(_ gguf: GGUFFile, _ name: String, shape: [Int], file: String) throws -> Q8Matrix? {
        guard gguf.contains(name) else { return nil }
        let info = try gguf.tensorInfo(name)
        guard info.type == .q8_0 else { return nil }
        guard info.shape == shape else {
            throw LlamaError.shapeMismatch(file: file, tensor: name, expected: shape, actual: info.shape)
        }
        return try Q8Matrix(gguf: gguf, name: name)
    }
}

/// Undoes llama.cpp's Q/K row permutation (SPEC §8.5): within each head of `headDim` rows,
/// HF row (j·D/2 + i) ← GGUF row (2i + j), for i < D/2, j ∈ {0, 1}. Rows are `columns` floats.
func unpermuteRoPERows(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, heads: Int, headDim D: Int,
                       columns: Int) {
    let half = D / 2
    for h in 0..<heads {
        for i in 0..<half {
            for j in 0..<2 {
                (out + (h * D + j * half + i) * columns).update(from: inp + (h * D + 2 * i + j) * columns, count: columns)
            }
        }
    }
}

extension LlamaModel {
    /// Loads a Hugging Face model folder (config.json + *.safetensors). Needs ModelFormats'
    /// `SafetensorsModel(directory:)`.
    public convenience init(huggingFaceDirectory directory: String, maxContext: Int,
                            policy: QuantizationPolicy = .none) throws {
        let configPath = (directory as NSString).appendingPathComponent("config.json")
        let config = try LlamaConfig(huggingFaceConfigFile: configPath)
        let source = try SafetensorsModel(directory: directory)
        let weights = try LlamaWeights(config: config, source: source, file: directory, policy: policy)
        try self.init(config: config, weights: weights, maxContext: maxContext)
    }
}

extension LlamaModel {
    /// Loads a GGUF file (llama or qwen2 architecture), dequantizing every tensor to float32 except
    /// a Q8_0 embedding / LM head (kept in Q8_0) and, under a 4-bit `policy`, the linear weights.
    public convenience init(ggufPath path: String, maxContext: Int, policy: QuantizationPolicy = .none) throws {
        let file = try GGUFFile(path: path)
        let config = try LlamaConfig(ggufMetadata: file.metadata, file: path)
        let weights = try LlamaWeights(config: config, source: file, file: path, policy: policy)
        try self.init(config: config, weights: weights, maxContext: maxContext)
    }
}
