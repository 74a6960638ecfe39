/// The parameters of a LLaMA-family model in float32, as named views into one allocation (llm.c's
/// ParameterTensors). Shapes are PyTorch's: a linear weight is [out, in], row-major.
/// Loading from a checkpoint lives in LlamaModel+Loading.swift; this file knows no tensor names.
public final class LlamaWeights {
    /// One decoder layer's parameters. Optional pointers are the biases the config may enable.
    /// Layout guarantee used by decoding: wq, wk, wv are consecutive (one [heads·D + 2·kvHeads·D, C]
    /// matrix), so are bq, bk, bv, and so are wGate, wUp (one [2I, C] matrix) and bGate, bUp.
    public struct Layer {
        public let attentionNorm: UnsafeMutablePointer<Float>      // [C]
        public let wq: UnsafeMutablePointer<Float>                 // [heads·D, C]
        public let wk: UnsafeMutablePointer<Float>                 // [kvHeads·D, C]
        public let wv: UnsafeMutablePointer<Float>                 // [kvHeads·D, C]
        public let wo: UnsafeMutablePointer<Float>                 // [C, heads·D]
        public let bq, bk, bv: UnsafeMutablePointer<Float>?        // [heads·D], [kvHeads·D] ×2 (attentionBias)
        public let bo: UnsafeMutablePointer<Float>?                // [C] (outputBias)
        public let mlpNorm: UnsafeMutablePointer<Float>            // [C]
        public let wGate: UnsafeMutablePointer<Float>              // [I, C]
        public let wUp: UnsafeMutablePointer<Float>                // [I, C]
        public let wDown: UnsafeMutablePointer<Float>              // [C, I]
        public let bGate, bUp, bDown: UnsafeMutablePointer<Float>? // [I], [I], [C] (mlpBias)
    }

    public let config: LlamaConfig
    public let embedding: UnsafeMutablePointer<Float>              // [V, C]
    public let layers: [Layer]
    public let finalNorm: UnsafeMutablePointer<Float>              // [C]
    /// [V, C]; the same memory as `embedding` when `hasSeparateLMHead` is false (tied).
    public let lmHead: UnsafeMutablePointer<Float>
    public let hasSeparateLMHead: Bool
    /// Every parameter, back to back.
    public let storage: UnsafeMutableBufferPointer<Float>

    /// Zero-filled weights for `config`, with a separate LM head unless `separateLMHead` is false
    /// (default: `!config.tieWordEmbeddings`).
    public init(config: LlamaConfig, separateLMHead: Bool? = nil) {
        self.config = config
        let separate = separateLMHead ?? !config.tieWordEmbeddings
        hasSeparateLMHead = separate
        let C = config.hiddenSize, I = config.intermediateSize, V = config.vocabularySize
        let qd = config.qDim, kvd = config.kvDim
        let attnBias = config.attentionBias ? qd + 2 * kvd : 0
        let perLayer = 2 * C + qd * C + 2 * kvd * C + C * qd + 3 * I * C + attnBias
            + (config.outputBias ? C : 0) + (config.mlpBias ? 2 * I + C : 0)
        let total = V * C + C + (separate ? V * C : 0) + config.layerCount * perLayer
        storage = .allocate(capacity: total)
        storage.initialize(repeating: 0)

        var next = storage.baseAddress!
        func take(_ n: Int) -> UnsafeMutablePointer<Float> { defer { next += n }; return next }
        func takeIf(_ on: Bool, _ n: Int) -> UnsafeMutablePointer<Float>? { on ? take(n) : nil }
        embedding = take(V * C)
        finalNorm = take(C)
        lmHead = separate ? take(V * C) : embedding
        var layers: [Layer] = []
        for _ in 0..<config.layerCount {
            layers.append(Layer(
                attentionNorm: take(C), wq: take(qd * C), wk: take(kvd * C), wv: take(kvd * C), wo: take(C * qd),
                bq: takeIf(config.attentionBias, qd), bk: takeIf(config.attentionBias, kvd),
                bv: takeIf(config.attentionBias, kvd), bo: takeIf(config.outputBias, C),
                mlpNorm: take(C), wGate: take(I * C), wUp: take(I * C), wDown: take(C * I),
                bGate: takeIf(config.mlpBias, I), bUp: takeIf(config.mlpBias, I), bDown: takeIf(config.mlpBias, C)))
        }
        self.layers = layers
    }

    deinit { storage.deallocate() }

    /// Number of float32 parameters held (the tied head counted once).
    public var parameterCount: Int { storage.count }
}
