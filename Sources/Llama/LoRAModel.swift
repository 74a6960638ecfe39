import Foundation
import Kernels
import Quantization

/// The seven linear layers of a LLaMA block LoRA can adapt, named as Hugging Face / PEFT name them.
public enum LoRATarget: String, CaseIterable, Sendable, Hashable {
    case q = "q_proj", k = "k_proj", v = "v_proj", o = "o_proj"
    case gate = "gate_proj", up = "up_proj", down = "down_proj"

    /// "self_attn" or "mlp".
    public var block: String {
        switch self {
        case .q, .k, .v, .o: return "self_attn"
        case .gate, .up, .down: return "mlp"
        }
    }

    /// (in, out) features of the adapted linear for `config`.
    public func shape(_ c: LlamaConfig) -> (inp: Int, out: Int) {
        switch self {
        case .q: return (c.hiddenSize, c.qDim)
        case .k, .v: return (c.hiddenSize, c.kvDim)
        case .o: return (c.qDim, c.hiddenSize)
        case .gate, .up: return (c.hiddenSize, c.intermediateSize)
        case .down: return (c.intermediateSize, c.hiddenSize)
        }
    }

    var index: Int { LoRATarget.allCases.firstIndex(of: self)! }
}

/// A small seeded generator (xoshiro256** seeded by SplitMix64) for LoRA initialisation.
public struct LoRARandom: RandomNumberGenerator, Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)
    public init(seed: UInt64) {
        var z = seed
        func next() -> UInt64 {
            z &+= 0x9E3779B97F4A7C15
            var x = z
            x = (x ^ (x >> 30)) &* 0xBF58476D1CE4E5B9
            x = (x ^ (x >> 27)) &* 0x94D049BB133111EB
            return x ^ (x >> 31)
        }
        s = (next(), next(), next(), next())
    }
    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0; s.3 ^= s.1; s.1 ^= s.2; s.0 ^= s.3; s.2 ^= t
        s.3 = (s.3 << 45) | (s.3 >> 19)
        return result
    }
    /// Uniform in [lo, hi).
    public mutating func uniform(_ lo: Float, _ hi: Float) -> Float {
        lo + (hi - lo) * Float(next() >> 40) / Float(1 << 24)
    }
}

/// A LLaMA-family model with frozen base weights (float32 or 4-bit) and trainable LoRA adapters,
/// trained llm.c style: every activation and gradient buffer is allocated once in `init` for a fixed
/// batch [batchSize, seqLen]; `forwardBackward` runs the explicit forward then backward and allocates
/// nothing.
///
/// Conventions:
/// - `inputIds`, `labels`, `segmentStarts` are [batchSize · seqLen], row-major (row b, token t).
/// - `labels` are NOT shifted (as Hugging Face passes them): position t is trained to predict
///   labels[t+1] when t+1 is in the same row and the same packed segment; the last token of a row or
///   segment predicts nothing. Labels of −100 are ignored.
/// - `segmentStarts[b·T + t]` is the index in row b of the first token of t's segment (packing):
///   t attends to s with segmentStarts ≤ s ≤ t, and its RoPE position is t − segmentStarts. nil = one
///   segment per row.
/// - LoRA on a target linear W [out, in]: y = W x + scale · B (A dropout(x)), A [r, in], B [out, r],
///   scale = alpha / r (alpha / √r with rsLoRA). The base weights, norms, embeddings and LM head are frozen.
/// - Gradients of A and B accumulate (`+=`) over calls; `zeroGradients()` clears them.
/// Not thread-safe.
public final class LoRAModel {
    public let config: LlamaConfig
    public let weights: LlamaWeights
    public let batchSize: Int
    public let seqLen: Int
    public let rank: Int
    public let alpha: Float
    public let scale: Float
    public let dropout: Float
    public let targets: [LoRATarget]
    public let gradientCheckpointing: Bool
    /// Seed of the dropout masks; the masks of a call depend on (dropoutSeed, step, layer, module).
    public var dropoutSeed: UInt64
    /// Incremented by every `forwardBackward` (after it); selects the dropout masks.
    public var step: UInt64 = 0
    /// When set, `forward` / `forwardBackward` add their wall time per phase and op kind to it (benchmarks).
    public var profile: LoRAStepProfile?
    var phase: LoRAStepProfile.Phase = .forward

    // LoRA parameters: per layer, per LoRATarget index (nil when not targeted): offsets into storage.
    struct Adapter { let a: UnsafeMutablePointer<Float>, b: UnsafeMutablePointer<Float>
                     let da: UnsafeMutablePointer<Float>, db: UnsafeMutablePointer<Float>
                     let inp: Int, out: Int }
    var adapters: [[Adapter?]]
    let parameterStorage: UnsafeMutableBufferPointer<Float>
    let gradientStorage: UnsafeMutableBufferPointer<Float>

    /// One layer's saved activations (N = B·T rows).
    struct Activations {
        let xn1, q, k, v, att, x2, xn2, gate, up, act: UnsafeMutablePointer<Float>
        let h: UnsafeMutablePointer<Float>   // [7, N, r] LoRA intermediates
    }
    var acts: [Activations]                  // L sets, or 1 with checkpointing
    let layerInputs: UnsafeMutablePointer<Float>     // [L+1, N, C] residual stream at each layer's input (+ final)
    let xf: UnsafeMutablePointer<Float>              // [N, C] final normed
    let logits: UnsafeMutablePointer<Float>          // [N, V] (dlogits in place after backward)
    let losses: UnsafeMutablePointer<Float>          // [N]
    let targetsBuf: UnsafeMutablePointer<Int>        // [N] shifted targets
    let segBuf: UnsafeMutablePointer<Int>            // [N]
    let idsBuf: UnsafeMutablePointer<Int>            // [N] token ids (rows `rowLength` apart)
    let headRows: UnsafeMutablePointer<Int>          // [N] rows with a trained target (fused LM head)
    let headTargets: UnsafeMutablePointer<Int>       // [N] their targets
    let headIn: UnsafeMutablePointer<Float>          // [N, C] their final-layer inputs
    let ropeCos, ropeSin: UnsafeMutablePointer<Float>         // [T, D/2] positions 0..<T
    let tokCos, tokSin: UnsafeMutablePointer<Float>           // [N, D/2] per token positions
    let tmp: UnsafeMutablePointer<Float>             // [N, C]
    // gradients of activations
    let dx, dxn, dq, dk, dv, datt, dgate, dup, dact: UnsafeMutablePointer<Float>
    let attScratch: UnsafeMutablePointer<Float>
    let loraScratch: UnsafeMutablePointer<Float>     // loraBackward scratch
    let maskedInput: UnsafeMutablePointer<Float>     // [N, maxIn]
    let mask: UnsafeMutablePointer<UInt8>            // [N, maxIn]
    let workspace: NF4Workspace
    private var allocations: [UnsafeMutableRawPointer] = []

    /// Positions per row the current call computes (≤ seqLen): activations are [batchSize, rowLength].
    var rowLength: Int
    var N: Int { batchSize * rowLength }
    /// Rows of logits the fused LM head + cross-entropy of `forwardBackward` materializes at a time.
    static let headChunk = 256

    /// Floats of the LoRA scratch: one adapter's backward with a dropout mask, or the shared q|k|v group's.
    public static func loraScratchCount(rows N: Int, config cfg: LlamaConfig, rank: Int) -> Int {
        let maxIn = max(cfg.hiddenSize, cfg.intermediateSize, cfg.qDim)
        return max(loraBackwardScratchCount(rows: N, inChannels: maxIn, rank: rank, dropout: true),
                   loraSharedScratchCount(rows: N, inChannels: cfg.hiddenSize, rank: rank, parts: 3))
    }

    public init(weights: LlamaWeights, batchSize: Int, seqLen: Int, rank: Int = 8, alpha: Float = 16,
                targets: [LoRATarget] = LoRATarget.allCases, dropout: Float = 0, useRSLoRA: Bool = false,
                seed: UInt64 = 0, gradientCheckpointing: Bool = true) throws {
        let cfg = weights.config
        guard batchSize > 0 else { throw LlamaError.invalidInput(field: "batchSize", value: "\(batchSize)", expected: "> 0") }
        guard seqLen > 0 else { throw LlamaError.invalidInput(field: "seqLen", value: "\(seqLen)", expected: "> 0") }
        guard rank > 0 else { throw LlamaError.invalidInput(field: "rank", value: "\(rank)", expected: "> 0") }
        guard dropout >= 0, dropout < 1 else {
            throw LlamaError.invalidInput(field: "dropout", value: "\(dropout)", expected: "0 ≤ p < 1")
        }
        if let w = cfg.slidingWindow, w < seqLen {
            throw LlamaError.invalidInput(field: "config.slidingWindow", value: "\(w)",
                                          expected: "≥ seqLen \(seqLen) (sliding-window training is not supported)")
        }
        config = cfg
        self.weights = weights
        self.batchSize = batchSize
        self.seqLen = seqLen
        self.rank = rank
        self.alpha = alpha
        scale = useRSLoRA ? alpha / Float(rank).squareRoot() : alpha / Float(rank)
        self.dropout = dropout
        var seen = Set<LoRATarget>()
        self.targets = LoRATarget.allCases.filter { t in targets.contains(t) && seen.insert(t).inserted }
        self.gradientCheckpointing = gradientCheckpointing
        rowLength = seqLen
        dropoutSeed = seed ^ 0xD1B54A32D192ED03

        let L = cfg.layerCount, C = cfg.hiddenSize, I = cfg.intermediateSize, V = cfg.vocabularySize
        let qd = cfg.qDim, kvd = cfg.kvDim, half = cfg.headDim / 2, T = seqLen
        let N = batchSize * seqLen
        let maxIn = max(C, I, qd)

        // parameters
        var total = 0
        for _ in 0..<L { for t in self.targets { let s = t.shape(cfg); total += rank * (s.inp + s.out) } }
        parameterStorage = .allocate(capacity: max(total, 1)); parameterStorage.initialize(repeating: 0)
        gradientStorage = .allocate(capacity: max(total, 1)); gradientStorage.initialize(repeating: 0)
        var rng = LoRARandom(seed: seed)
        var off = 0
        var adapters: [[Adapter?]] = []
        for _ in 0..<L {
            var row = [Adapter?](repeating: nil, count: 7)
            for t in self.targets {
                let s = t.shape(cfg)
                let a = parameterStorage.baseAddress! + off, da = gradientStorage.baseAddress! + off
                off += rank * s.inp
                let b = parameterStorage.baseAddress! + off, db = gradientStorage.baseAddress! + off
                off += rank * s.out
                let bound = 1 / Float(s.inp).squareRoot()      // PEFT: kaiming_uniform(a=√5) = U(±1/√in)
                for i in 0..<(rank * s.inp) { a[i] = rng.uniform(-bound, bound) }
                row[t.index] = Adapter(a: a, b: b, da: da, db: db, inp: s.inp, out: s.out)
            }
            adapters.append(row)
        }
        self.adapters = adapters

        var allocs: [UnsafeMutableRawPointer] = []
        func buf(_ n: Int) -> UnsafeMutablePointer<Float> {
            let p = UnsafeMutablePointer<Float>.allocate(capacity: max(n, 1))
            p.initialize(repeating: 0, count: max(n, 1))
            allocs.append(UnsafeMutableRawPointer(p))
            return p
        }
        let sets = gradientCheckpointing ? 1 : L
        var acts: [Activations] = []
        for _ in 0..<sets {
            acts.append(Activations(xn1: buf(N * C), q: buf(N * qd), k: buf(N * kvd), v: buf(N * kvd), att: buf(N * qd),
                                    x2: buf(N * C), xn2: buf(N * C), gate: buf(N * I), up: buf(N * I), act: buf(N * I),
                                    h: buf(7 * N * rank)))
        }
        self.acts = acts
        layerInputs = buf((L + 1) * N * C)
        xf = buf(N * C); losses = buf(N); headIn = buf(N * C)
        // Not touched until used: `forwardBackward` writes only `headChunk` rows of it; `forward` all.
        logits = .allocate(capacity: N * V)
        allocs.append(UnsafeMutableRawPointer(logits))
        ropeCos = buf(T * half); ropeSin = buf(T * half); tokCos = buf(N * half); tokSin = buf(N * half)
        tmp = buf(N * C)
        dx = buf(N * C); dxn = buf(N * C); dq = buf(N * qd); dk = buf(N * kvd); dv = buf(N * kvd); datt = buf(N * qd)
        dgate = buf(N * I); dup = buf(N * I); dact = buf(N * I)
        attScratch = buf(max(attentionTrainForwardScratchCount(tokens: T, heads: cfg.headCount),
                             attentionBackwardScratchCount(tokens: T, heads: cfg.headCount, kvHeads: cfg.kvHeadCount,
                                                           headDim: cfg.headDim)))
        loraScratch = buf(Self.loraScratchCount(rows: N, config: cfg, rank: rank))
        maskedInput = buf(N * maxIn)
        let ints = UnsafeMutablePointer<Int>.allocate(capacity: 5 * N)
        ints.initialize(repeating: 0, count: 5 * N)
        allocs.append(UnsafeMutableRawPointer(ints))
        targetsBuf = ints; segBuf = ints + N; idsBuf = ints + 2 * N; headRows = ints + 3 * N; headTargets = ints + 4 * N
        mask = UnsafeMutablePointer<UInt8>.allocate(capacity: N * maxIn)
        mask.initialize(repeating: 1, count: N * maxIn)
        allocs.append(UnsafeMutableRawPointer(mask))
        allocations = allocs
        // Room for the largest 4-bit weight dequantized whole (one sgemm per product), up to 16 MiB.
        var largest = 0
        for layer in weights.layers { for w in layer.linearWeights where w.quantizedTensor != nil { largest = max(largest, w.rows * w.cols) } }
        workspace = NF4Workspace(capacity: max(1 << 18, 64 * maxIn, min(largest, 1 << 22)))

        let invFreq = LlamaModel.inverseFrequencies(cfg)
        for p in 0..<T {
            for i in 0..<half {
                let angle = Float(p) * invFreq[i]
                ropeCos[p * half + i] = Foundation.cos(angle)
                ropeSin[p * half + i] = Foundation.sin(angle)
            }
        }
    }

    deinit {
        for p in allocations { p.deallocate() }
        parameterStorage.deallocate()
        gradientStorage.deallocate()
    }

    // MARK: - Parameters

    /// The trainable tensors in a fixed order: per layer, per target (q, k, v, o, gate, up, down), A then B.
    public var parameters: [UnsafeMutableBufferPointer<Float>] { tensors(gradients: false) }
    /// The gradients of `parameters`, same order and shapes.
    public var gradients: [UnsafeMutableBufferPointer<Float>] { tensors(gradients: true) }
    /// Number of trainable parameters.
    public var trainableParameterCount: Int { parameterStorage.count }

    private func tensors(gradients g: Bool) -> [UnsafeMutableBufferPointer<Float>] {
        var out: [UnsafeMutableBufferPointer<Float>] = []
        for row in adapters {
            for case let ad? in row {
                out.append(UnsafeMutableBufferPointer(start: g ? ad.da : ad.a, count: rank * ad.inp))
                out.append(UnsafeMutableBufferPointer(start: g ? ad.db : ad.b, count: ad.out * rank))
            }
        }
        return out
    }

    /// Sets every gradient to zero.
    public func zeroGradients() { gradientStorage.update(repeating: 0) }

    /// PEFT name of a LoRA tensor, e.g. base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight.
    public static func peftName(layer: Int, target: LoRATarget, isA: Bool) -> String {
        "base_model.model.model.layers.\(layer).\(target.block).\(target.rawValue).lora_\(isA ? "A" : "B").weight"
    }

    /// The adapter tensors with PEFT names and shapes (A [r, in], B [out, r]), in `parameters` order.
    public func adapterTensors() -> [(name: String, shape: [Int], values: [Float])] {
        var out: [(name: String, shape: [Int], values: [Float])] = []
        for (l, row) in adapters.enumerated() {
            for t in targets {
                guard let ad = row[t.index] else { continue }
                out.append((Self.peftName(layer: l, target: t, isA: true), [rank, ad.inp],
                            Array(UnsafeBufferPointer(start: ad.a, count: rank * ad.inp))))
                out.append((Self.peftName(layer: l, target: t, isA: false), [ad.out, rank],
                            Array(UnsafeBufferPointer(start: ad.b, count: ad.out * rank))))
            }
        }
        return out
    }

    /// Loads adapter tensors by PEFT name. Every trainable tensor must be present with its shape;
    /// throws `LlamaError.missingTensor` / `.shapeMismatch` naming the tensor otherwise.
    public func loadAdapterTensors(_ tensors: [(name: String, shape: [Int], values: [Float])], file: String = "adapter") throws {
        var byName: [String: (shape: [Int], values: [Float])] = [:]
        for t in tensors { byName[t.name] = (t.shape, t.values) }
        for (l, row) in adapters.enumerated() {
            for t in targets {
                guard let ad = row[t.index] else { continue }
                for isA in [true, false] {
                    let name = Self.peftName(layer: l, target: t, isA: isA)
                    let shape = isA ? [rank, ad.inp] : [ad.out, rank]
                    guard let v = byName[name] else { throw LlamaError.missingTensor(file: file, name: name) }
                    guard v.shape == shape, v.values.count == shape[0] * shape[1] else {
                        throw LlamaError.shapeMismatch(file: file, tensor: name, expected: shape, actual: v.shape)
                    }
                    let dst = isA ? ad.a : ad.b
                    v.values.withUnsafeBufferPointer { dst.update(from: $0.baseAddress!, count: $0.count) }
                }
            }
        }
    }

    /// Logits [batchSize, rowLength, V] of the last `forward` (rowLength = seqLen unless given).
    /// `forwardBackward` does not materialize them (its fused LM head computes only trained rows).
    public var lastLogits: UnsafeBufferPointer<Float> {
        UnsafeBufferPointer(start: logits, count: N * config.vocabularySize)
    }
}

/// Wall time of `LoRAModel.forward` / `forwardBackward` split by phase and op kind, accumulated over
/// calls while attached as `LoRAModel.profile` (for benchmarks; timing costs ~50 ns per op).
public final class LoRAStepProfile {
    public enum Phase: Int, CaseIterable, Sendable { case forward, recompute, backward }
    /// linear: frozen base products; lora: the adapter branch (and dropout masks); attention: the
    /// attention core; elementwise: embedding, norms, RoPE, SwiGLU, residuals, buffer clears;
    /// head: LM head and cross-entropy (forward and backward, counted in `forward` and `backward`).
    public enum Kind: Int, CaseIterable, Sendable { case linear, lora, attention, elementwise, head }
    private var nanos: [UInt64], cpuNanos: [UInt64]

    public init() {
        nanos = [UInt64](repeating: 0, count: Phase.allCases.count * Kind.allCases.count)
        cpuNanos = nanos
    }

    /// Wall seconds spent in `kind` during `phase` since the last `reset`.
    public func seconds(_ phase: Phase, _ kind: Kind) -> Double {
        Double(nanos[phase.rawValue * Kind.allCases.count + kind.rawValue]) / 1e9
    }

    /// Process CPU seconds (all threads) spent in `kind` during `phase` since the last `reset`: a
    /// measure that holds up when other processes share the cores (BLAS threads spinning count too).
    public func cpuSeconds(_ phase: Phase, _ kind: Kind) -> Double {
        Double(cpuNanos[phase.rawValue * Kind.allCases.count + kind.rawValue]) / 1e9
    }

    public func reset() { for i in nanos.indices { nanos[i] = 0; cpuNanos[i] = 0 } }

    @inline(__always) func add(_ phase: Phase, _ kind: Kind, _ ns: UInt64, _ cpuNs: UInt64) {
        nanos[phase.rawValue * Kind.allCases.count + kind.rawValue] &+= ns
        cpuNanos[phase.rawValue * Kind.allCases.count + kind.rawValue] &+= cpuNs
    }

    /// CPU time of the whole process so far, in nanoseconds.
    static func cpuNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }
}
