import Quantization

/// Published LLaMA-1 shapes, for memory and time measurements at sizes that cannot be downloaded
/// here. The weights are synthesized (`LlamaWeights.synthetic`), not trained.
public enum SyntheticModelShape: String, CaseIterable, Sendable {
    case llama7b = "llama-7b"
    case llama13b = "llama-13b"
    case llama33b = "llama-33b"

    /// The Hugging Face config of the published model (hidden, intermediate, layers, heads, vocab
    /// 32000, untied LM head, rms_norm_eps 1e-6, 2048 positions).
    public var config: LlamaConfig {
        let (c, i, l, h): (Int, Int, Int, Int)
        switch self {
        case .llama7b: (c, i, l, h) = (4096, 11008, 32, 32)
        case .llama13b: (c, i, l, h) = (5120, 13824, 40, 40)
        case .llama33b: (c, i, l, h) = (6656, 17920, 60, 52)
        }
        // The shapes are valid by construction, so the validating init cannot throw.
        return try! LlamaConfig(hiddenSize: c, intermediateSize: i, layerCount: l, headCount: h, kvHeadCount: h,
                                vocabularySize: 32000, rmsNormEpsilon: 1e-6, maxPositionEmbeddings: 2048,
                                tieWordEmbeddings: false, bosTokenId: 1, eosTokenIds: [2],
                                file: "synthetic \(rawValue)")
    }
}

extension LlamaWeights {
    /// A model of `config`'s shape whose seven linear weights per layer are NF4 with double-quantized
    /// absmax, synthesized directly in that form from a seeded generator: uniformly random 4-bit codes
    /// (NF4's 16 levels are equiprobable for normal weights) and per-block absmax drawn around
    /// `absmaxScale` (±30 %), then double-quantized as bitsandbytes does (8-bit signed dynamic map,
    /// 256 blocks per nested absmax, mean offset). No float32 copy of any linear weight ever exists;
    /// at most one tensor's codes are held twice while it is built.
    ///
    /// Embeddings and the LM head are float32 uniform in ±`embeddingScale`; RMSNorm weights are 1 ± 0.05.
    /// The same seed gives the same weights.
    public static func synthetic(config: LlamaConfig, seed: UInt64 = 0, blocksize: Int = 64,
                                 absmaxScale: Float = 0.05, embeddingScale: Float = 0.02) throws -> LlamaWeights {
        guard QuantizedTensor4Bit.validBlocksizes.contains(blocksize) else {
            throw LlamaError.invalidInput(field: "blocksize", value: "\(blocksize)",
                                          expected: "one of \(QuantizedTensor4Bit.validBlocksizes)")
        }
        guard absmaxScale > 0, absmaxScale.isFinite else {
            throw LlamaError.invalidInput(field: "absmaxScale", value: "\(absmaxScale)", expected: "> 0")
        }
        let w = LlamaWeights(config: config, separateLMHead: nil, denseLinear: false)
        var rng = LoRARandom(seed: seed ^ 0x5EED_0F_5717_7E71)
        let C = config.hiddenSize, V = config.vocabularySize
        // float32 parts: embeddings (and LM head), norms, biases (zero).
        if let p = w.embedding.densePointer { fillUniform(p, count: V * C, scale: embeddingScale, rng: &rng) }
        if w.hasSeparateLMHead, let p = w.lmHead.densePointer { fillUniform(p, count: V * C, scale: embeddingScale, rng: &rng) }
        func norm(_ p: UnsafeMutablePointer<Float>) { for i in 0..<C { p[i] = 1 + rng.uniform(-0.05, 0.05) } }
        norm(w.finalNorm)
        let qd = config.qDim, kvd = config.kvDim, I = config.intermediateSize
        for l in 0..<config.layerCount {
            norm(w.layers[l].attentionNorm)
            norm(w.layers[l].mlpNorm)
            func make(_ rows: Int, _ cols: Int) throws -> LinearWeight {
                .quantized(try syntheticNF4(rows: rows, cols: cols, blocksize: blocksize, absmaxScale: absmaxScale, rng: &rng))
            }
            w.layers[l].wq = try make(qd, C)
            w.layers[l].wk = try make(kvd, C)
            w.layers[l].wv = try make(kvd, C)
            w.layers[l].wo = try make(C, qd)
            w.layers[l].wGate = try make(I, C)
            w.layers[l].wUp = try make(I, C)
            w.layers[l].wDown = try make(C, I)
        }
        return w
    }

    private static func fillUniform(_ p: UnsafeMutablePointer<Float>, count: Int, scale: Float, rng: inout LoRARandom) {
        for i in 0..<count { p[i] = rng.uniform(-scale, scale) }
    }

    /// One NF4 + double-quantized tensor [rows, cols] with random codes and plausible absmax.
    static func syntheticNF4(rows: Int, cols: Int, blocksize: Int, absmaxScale: Float,
                             rng: inout LoRARandom) throws -> QuantizedTensor4Bit {
        let n = rows * cols
        var packed = [UInt8](repeating: 0, count: (n + 1) / 2)
        packed.withUnsafeMutableBytes { raw in
            let words = raw.count / 8
            let p64 = raw.baseAddress!.bindMemory(to: UInt64.self, capacity: words)
            for i in 0..<words { p64[i] = rng.next() }
            let bytes = raw.baseAddress!.assumingMemoryBound(to: UInt8.self)
            for i in (words * 8)..<raw.count { bytes[i] = UInt8(truncatingIfNeeded: rng.next()) }
        }
        let nb = (n + blocksize - 1) / blocksize
        var absmax = [Float](repeating: 0, count: nb)
        var sum = 0.0
        for b in 0..<nb { absmax[b] = absmaxScale * rng.uniform(0.7, 1.3); sum += Double(absmax[b]) }
        // Double quantization as bitsandbytes: subtract the mean, 8-bit blockwise (256) signed dynamic map.
        let offset = Float(sum / Double(nb))
        for b in 0..<nb { absmax[b] -= offset }
        let (codes, nested) = quantizeBlockwise8Bit(absmax, map: Codebooks.signedDynamicMap, blocksize: 256)
        absmax = []
        let dq = DoubleQuantization(codes: codes, nestedAbsmax: nested, offset: offset)
        return try QuantizedTensor4Bit(quantType: .nf4, blocksize: blocksize, shape: [rows, cols], dtype: .float32,
                                       packed: packed, scales: .doubleQuantized(dq))
    }
}
