import Quantization

/// The parameters of a LLaMA-family model (llm.c's ParameterTensors). Shapes are PyTorch's: a linear
/// weight is [out, in], row-major. Norms and biases are float32 views into one allocation
/// (`storage`); the embedding and LM head are `EmbeddingMatrix`es: float32 in `storage` too, or a
/// GGUF's Q8_0 blocks as stored (then `storage` holds no float32 copy of them); each linear weight
/// (q, k, v, o, gate, up, down) is a `LinearWeight`: float32 in `storage` too, or 4-bit (then
/// `storage` holds no linear weights at all).
/// Loading from a checkpoint lives in LlamaModel+Loading.swift; this file knows no tensor names.
public final class LlamaWeights {
    /// One decoder layer's parameters. Optional pointers are the biases the config may enable.
    /// When `LlamaWeights.hasFusedDenseLayout`: wq, wk, wv are float32 and consecutive (one
    /// [heads·D + 2·kvHeads·D, C] matrix), and so are wGate, wUp (one [2I, C] matrix). bq, bk, bv
    /// are always consecutive, and so are bGate, bUp.
    public struct Layer {
        public let attentionNorm: UnsafeMutablePointer<Float>      // [C]
        public internal(set) var wq: LinearWeight                  // [heads·D, C]
        public internal(set) var wk: LinearWeight                  // [kvHeads·D, C]
        public internal(set) var wv: LinearWeight                  // [kvHeads·D, C]
        public internal(set) var wo: LinearWeight                  // [C, heads·D]
        public let bq, bk, bv: UnsafeMutablePointer<Float>?        // [heads·D], [kvHeads·D] ×2 (attentionBias)
        public let bo: UnsafeMutablePointer<Float>?                // [C] (outputBias)
        public let mlpNorm: UnsafeMutablePointer<Float>            // [C]
        public internal(set) var wGate: LinearWeight               // [I, C]
        public internal(set) var wUp: LinearWeight                 // [I, C]
        public internal(set) var wDown: LinearWeight               // [C, I]
        public let bGate, bUp, bDown: UnsafeMutablePointer<Float>? // [I], [I], [C] (mlpBias)

        /// The seven linear weights, in checkpoint order.
        public var linearWeights: [LinearWeight] { [wq, wk, wv, wo, wGate, wUp, wDown] }
    }

    public let config: LlamaConfig
    public let embedding: EmbeddingMatrix                          // [V, C]
    public internal(set) var layers: [Layer]
    public let finalNorm: UnsafeMutablePointer<Float>              // [C]
    /// [V, C]; the same matrix as `embedding` when `hasSeparateLMHead` is false (tied).
    public let lmHead: EmbeddingMatrix
    public let hasSeparateLMHead: Bool
    /// Every float32 parameter, back to back (the linear weights only when they are float32).
    public let storage: UnsafeMutableBufferPointer<Float>
    /// True when every linear weight is float32 in `storage` (the consecutive layout of `Layer`).
    public let hasFusedDenseLayout: Bool

    /// Zero-filled float32 weights for `config`, with a separate LM head unless `separateLMHead` is
    /// false (default: `!config.tieWordEmbeddings`).
    public convenience init(config: LlamaConfig, separateLMHead: Bool? = nil) {
        self.init(config: config, separateLMHead: separateLMHead, denseLinear: true)
    }

    /// With `denseLinear` false no float32 memory is taken for the linear weights: the loader must
    /// set every one of them (they start as empty placeholders). A given `q8Embedding` / `q8LMHead`
    /// ([V, C]) is held as is, and no float32 memory is taken for it.
    init(config: LlamaConfig, separateLMHead: Bool?, denseLinear: Bool, q8Embedding: Q8Matrix? = nil,
         q8LMHead: Q8Matrix? = nil) {
        self.config = config
        let separate = separateLMHead ?? !config.tieWordEmbeddings
        hasSeparateLMHead = separate
        hasFusedDenseLayout = denseLinear
        let C = config.hiddenSize, I = config.intermediateSize, V = config.vocabularySize
        let qd = config.qDim, kvd = config.kvDim
        let attnBias = config.attentionBias ? qd + 2 * kvd : 0
        let linear = denseLinear ? qd * C + 2 * kvd * C + C * qd + 3 * I * C : 0
        let perLayer = 2 * C + linear + attnBias + (config.outputBias ? C : 0) + (config.mlpBias ? 2 * I + C : 0)
        let embeddingFloats = q8Embedding == nil ? V * C : 0
        let headFloats = separate && q8LMHead == nil ? V * C : 0
        let total = embeddingFloats + C + headFloats + config.layerCount * perLayer
        storage = .allocate(capacity: total)
        storage.initialize(repeating: 0)

        var next = storage.baseAddress!
        let placeholder = storage.baseAddress!
        func take(_ n: Int) -> UnsafeMutablePointer<Float> { defer { next += n }; return next }
        func takeIf(_ on: Bool, _ n: Int) -> UnsafeMutablePointer<Float>? { on ? take(n) : nil }
        func lin(_ rows: Int, _ cols: Int) -> LinearWeight {
            denseLinear ? .dense(take(rows * cols), rows: rows, cols: cols) : .dense(placeholder, rows: 0, cols: 0)
        }
        let embedding: EmbeddingMatrix = q8Embedding.map { .q8_0($0) } ?? .dense(take(V * C), rows: V, cols: C)
        self.embedding = embedding
        finalNorm = take(C)
        if !separate { lmHead = embedding }
        else { lmHead = q8LMHead.map { .q8_0($0) } ?? .dense(take(V * C), rows: V, cols: C) }
        var layers: [Layer] = []
        for _ in 0..<config.layerCount {
            let attentionNorm = take(C)
            let wq = lin(qd, C), wk = lin(kvd, C), wv = lin(kvd, C), wo = lin(C, qd)
            let bq = takeIf(config.attentionBias, qd), bk = takeIf(config.attentionBias, kvd)
            let bv = takeIf(config.attentionBias, kvd), bo = takeIf(config.outputBias, C)
            let mlpNorm = take(C)
            let wGate = lin(I, C), wUp = lin(I, C), wDown = lin(C, I)
            layers.append(Layer(
                attentionNorm: attentionNorm, wq: wq, wk: wk, wv: wv, wo: wo, bq: bq, bk: bk, bv: bv, bo: bo,
                mlpNorm: mlpNorm, wGate: wGate, wUp: wUp, wDown: wDown,
                bGate: takeIf(config.mlpBias, I), bUp: takeIf(config.mlpBias, I), bDown: takeIf(config.mlpBias, C)))
        }
        self.layers = layers
    }

    deinit { storage.deallocate() }

    /// Number of parameters held (the tied head counted once).
    public var parameterCount: Int { memoryReport.totalParameters }

    /// Parameters and bytes of the weights as held, by kind.
    public var memoryReport: BaseMemoryReport {
        var r = BaseMemoryReport()
        let C = config.hiddenSize, V = config.vocabularySize
        r.embedding = .init(parameters: V * C, bytes: embedding.bytes)
        if hasSeparateLMHead { r.lmHead = .init(parameters: V * C, bytes: lmHead.bytes) }
        let linearFloats = layers.reduce(0) { s, l in
            s + l.linearWeights.reduce(0) { $0 + ($1.quantizedTensor == nil ? $1.rows * $1.cols : 0) }
        }
        let embeddingFloats = (embedding.densePointer != nil ? V * C : 0)
            + (hasSeparateLMHead && lmHead.densePointer != nil ? V * C : 0)
        let other = storage.count - embeddingFloats - linearFloats
        r.normsAndBiases = .init(parameters: other, bytes: 4 * other)
        for l in layers {
            for w in l.linearWeights {
                if w.quantizedTensor != nil { r.linear4Bit.add(w.rows * w.cols, w.bytes) }
                else { r.linearFloat32.add(w.rows * w.cols, w.bytes) }
            }
        }
        return r
    }
}

/// Parameters and bytes of a base model as held in memory, by kind of tensor.
public struct BaseMemoryReport: Sendable, Equatable {
    public struct Part: Sendable, Equatable {
        public var parameters = 0
        public var bytes = 0
        public init(parameters: Int = 0, bytes: Int = 0) { self.parameters = parameters; self.bytes = bytes }
        mutating func add(_ p: Int, _ b: Int) { parameters += p; bytes += b }
        public var bitsPerParameter: Double { parameters > 0 ? Double(8 * bytes) / Double(parameters) : 0 }
    }

    /// Linear weights held in 4 bits (codes + block scales).
    public var linear4Bit = Part()
    /// Linear weights held in float32.
    public var linearFloat32 = Part()
    /// Token embeddings (float32 or Q8_0; the tied LM head shares them).
    public var embedding = Part()
    /// RMSNorm weights and biases (float32).
    public var normsAndBiases = Part()
    /// A separate LM head (float32 or Q8_0), empty when tied.
    public var lmHead = Part()

    public init() {}

    public var parts: [(name: String, part: Part)] {
        [("linear 4-bit", linear4Bit), ("linear float32", linearFloat32), ("embeddings", embedding),
         ("norms+biases", normsAndBiases), ("LM head", lmHead)]
    }
    public var totalParameters: Int { parts.reduce(0) { $0 + $1.part.parameters } }
    public var totalBytes: Int { parts.reduce(0) { $0 + $1.part.bytes } }
    /// Bits per parameter of the whole base as held.
    public var bitsPerParameter: Double { totalParameters > 0 ? Double(8 * totalBytes) / Double(totalParameters) : 0 }

    /// What loading `config` under `policy` would hold (every linear weight quantized by the policy;
    /// the embedding and a separate LM head held as `embedding` / `lmHead` say: Q8_0 for a GGUF that
    /// stores them in Q8_0, float32 otherwise).
    public static func estimate(config: LlamaConfig, separateLMHead: Bool, policy: QuantizationPolicy,
                                embedding: EmbeddingStorage = .float32, lmHead: EmbeddingStorage = .float32) -> BaseMemoryReport {
        var r = BaseMemoryReport()
        let C = config.hiddenSize, I = config.intermediateSize, V = config.vocabularySize
        let qd = config.qDim, kvd = config.kvDim
        r.embedding = .init(parameters: V * C, bytes: embedding.bytes(parameters: V * C))
        if separateLMHead { r.lmHead = .init(parameters: V * C, bytes: lmHead.bytes(parameters: V * C)) }
        let perLayerOther = 2 * C + (config.attentionBias ? qd + 2 * kvd : 0) + (config.outputBias ? C : 0)
            + (config.mlpBias ? 2 * I + C : 0)
        let other = C + config.layerCount * perLayerOther
        r.normsAndBiases = .init(parameters: other, bytes: 4 * other)
        for _ in 0..<config.layerCount {
            for (rows, cols) in [(qd, C), (kvd, C), (kvd, C), (C, qd), (I, C), (I, C), (C, I)] {
                if policy.isQuantized { r.linear4Bit.add(rows * cols, policy.linearBytes(rows: rows, cols: cols)) }
                else { r.linearFloat32.add(rows * cols, 4 * rows * cols) }
            }
        }
        return r
    }
}
