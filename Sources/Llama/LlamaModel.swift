import Foundation
import Kernels
import Quantization

/// A LLaMA-family decoder (Llama, Mistral, Qwen2) running fp32 inference with a KV cache.
///
/// Every buffer is allocated once in `init` (llm.c's ActivationTensors): activations for up to
/// `chunkSize` tokens, the KV cache for `maxContext` positions and the RoPE tables. `forward` runs a
/// prompt in chunks of at most `chunkSize` tokens with sgemm, and single tokens with GEMV split over
/// the cores. 4-bit linear weights (`LinearWeight.quantized`) run prefill through `NF4Matmul.forward`
/// (`NF4Gemm`, float32) and decode through the fused 4-bit GEMV (16-bit integer products by default:
/// `decodeArithmetic`). LoRA branches attached with `attachLoRA` are added unmerged to their projections'
/// outputs (y = base(x) + scale·(x·Aᵀ)·Bᵀ), in prefill and decode alike and on top of the fused
/// float32 q|k|v and gate|up GEMVs. Not thread-safe: one forward at a time.
public final class LlamaModel {
    /// Which logits `forward` returns.
    public enum Logits: Sendable { case last, all }

    public let config: LlamaConfig
    public let weights: LlamaWeights
    public let maxContext: Int
    /// Tokens per prefill step (activation buffers are sized for this many).
    public let chunkSize: Int
    /// Number of positions held in the KV cache (the next token's position).
    public private(set) var cachedCount = 0
    /// How a single decoded token's 4-bit GEMVs multiply; prefill chunks always run in float32.
    public var decodeArithmetic: DecodeArithmetic = .int16

    // Activations, [chunkSize, ·]. C = hidden, I = intermediate.
    private let x: UnsafeMutablePointer<Float>        // [T, C] residual stream
    private let xb: UnsafeMutablePointer<Float>       // [T, C] normed input of a sublayer
    private let xb2: UnsafeMutablePointer<Float>      // [T, C] sublayer output
    private let q: UnsafeMutablePointer<Float>        // [T, heads·D]
    private let att: UnsafeMutablePointer<Float>      // [T, heads·D] attention output
    private let gate: UnsafeMutablePointer<Float>     // [T, I] gate, then [T, I] up (for the chunk's T)
    private let qkv: UnsafeMutablePointer<Float>      // [heads·D + 2·kvHeads·D] one token's fused q|k|v
    private let scratch: UnsafeMutablePointer<Float>  // attention scores, per worker [T, maxContext]
    // KV cache [L, maxContext, kvHeads·D] and RoPE tables [maxContext, D/2].
    private let keyCache: UnsafeMutablePointer<Float>
    private let valueCache: UnsafeMutablePointer<Float>
    private let ropeCos: UnsafeMutablePointer<Float>
    private let ropeSin: UnsafeMutablePointer<Float>
    private let allocations: [UnsafeMutableRawPointer]
    /// Scratch for dequantized weight tiles (4-bit prefill); allocated once.
    public let workspace: NF4Workspace
    /// Attached LoRA branches: `lora[layer][LoRATarget.index]`, or empty when none are attached.
    public private(set) var lora: [[LinearLoRA?]] = []
    /// [max(chunkSize, 3), largest attached rank]: the LoRA intermediate x·Aᵀ; allocated by `attachLoRA`.
    private var loraScratch: UnsafeMutablePointer<Float>?

    public init(config: LlamaConfig, weights: LlamaWeights, maxContext: Int, chunkSize: Int = 128) throws {
        guard maxContext > 0 else {
            throw LlamaError.invalidInput(field: "maxContext", value: "\(maxContext)", expected: "> 0")
        }
        guard chunkSize > 0 else {
            throw LlamaError.invalidInput(field: "chunkSize", value: "\(chunkSize)", expected: "> 0")
        }
        guard weights.config == config else {
            throw LlamaError.invalidInput(field: "weights.config", value: "\(weights.config)", expected: "\(config)")
        }
        self.config = config
        self.weights = weights
        self.maxContext = maxContext
        let T = min(chunkSize, maxContext)
        self.chunkSize = T
        let C = config.hiddenSize, I = config.intermediateSize, half = config.headDim / 2
        var allocations: [UnsafeMutableRawPointer] = []
        func buffer(_ n: Int) -> UnsafeMutablePointer<Float> {
            let p = UnsafeMutablePointer<Float>.allocate(capacity: max(n, 1))
            p.initialize(repeating: 0, count: max(n, 1))
            allocations.append(UnsafeMutableRawPointer(p))
            return p
        }
        x = buffer(T * C); xb = buffer(T * C); xb2 = buffer(T * C)
        q = buffer(T * config.qDim); att = buffer(T * config.qDim)
        gate = buffer(2 * T * I)
        qkv = buffer(config.qDim + 2 * config.kvDim)
        scratch = buffer(attentionScratchCount(tokens: T, keys: maxContext, heads: config.headCount))
        keyCache = buffer(config.layerCount * maxContext * config.kvDim)
        valueCache = buffer(config.layerCount * maxContext * config.kvDim)
        ropeCos = buffer(maxContext * half); ropeSin = buffer(maxContext * half)
        self.allocations = allocations
        // Large enough for ~64 rows of the widest linear weight, at least 1 MiB.
        workspace = NF4Workspace(capacity: max(1 << 18, 64 * max(C, I, config.qDim)))

        let invFreq = LlamaModel.inverseFrequencies(config)
        for p in 0..<maxContext {
            for i in 0..<half {
                let angle = Float(p) * invFreq[i]          // float32 product, as HF's matmul of positions
                ropeCos[p * half + i] = Foundation.cos(angle)
                ropeSin[p * half + i] = Foundation.sin(angle)
            }
        }
    }

    deinit {
        for p in allocations { p.deallocate() }
        loraScratch?.deallocate()
    }

    /// Attaches LoRA branches applied unmerged in every later forward: `branches[layer][target]`
    /// (one dictionary per decoder layer; an empty one adapts nothing in that layer). Replaces any
    /// branches attached before and forgets the KV cache. The scratch for the branches is allocated
    /// here, once. Throws `LlamaError.invalidInput` naming the layer and projection when the number
    /// of layers or a branch's in/out features do not match the model.
    public func attachLoRA(_ branches: [[LoRATarget: LinearLoRA]]) throws {
        guard branches.count == config.layerCount else {
            throw LlamaError.invalidInput(field: "lora layers", value: "\(branches.count)", expected: "\(config.layerCount) (the model's layers)")
        }
        var table: [[LinearLoRA?]] = []
        var maxRank = 0
        for (l, layer) in branches.enumerated() {
            var row = [LinearLoRA?](repeating: nil, count: LoRATarget.allCases.count)
            for (target, branch) in layer {
                let shape = target.shape(config)
                guard branch.inFeatures == shape.inp, branch.outFeatures == shape.out else {
                    throw LlamaError.invalidInput(
                        field: "lora layers.\(l).\(target.block).\(target.rawValue) [out, in]",
                        value: "[\(branch.outFeatures), \(branch.inFeatures)]", expected: "[\(shape.out), \(shape.inp)]")
                }
                row[target.index] = branch
                maxRank = max(maxRank, branch.rank)
            }
            table.append(row)
        }
        detachLoRA()
        guard maxRank > 0 else { return }
        let rows = max(chunkSize, 3)   // a decoded token's q|k|v branches keep their h side by side
        let scratch = UnsafeMutablePointer<Float>.allocate(capacity: rows * maxRank)
        scratch.initialize(repeating: 0, count: rows * maxRank)
        loraScratch = scratch
        lora = table
    }

    /// Removes the attached LoRA branches (the base alone again) and forgets the KV cache.
    public func detachLoRA() {
        lora = []
        loraScratch?.deallocate()
        loraScratch = nil
        cachedCount = 0
    }

    /// Bytes held by the attached LoRA branches.
    public var loraBytes: Int { lora.reduce(0) { $0 + $1.reduce(0) { $0 + ($1?.bytes ?? 0) } } }

    /// Forgets the KV cache.
    public func reset() { cachedCount = 0 }

    /// RoPE inverse frequencies as Hugging Face computes them, in float32: theta^(−2i/D), then the
    /// llama3 low/high-frequency rescaling when configured.
    public static func inverseFrequencies(_ config: LlamaConfig) -> [Float] {
        let D = config.headDim
        let base = Float(config.ropeTheta)
        var inv = (0..<(D / 2)).map { i in 1 / Foundation.pow(base, Float(2 * i) / Float(D)) }
        if let s = config.ropeScaling {
            let factor = Float(s.factor), low = Float(s.lowFreqFactor), high = Float(s.highFreqFactor)
            let old = Float(s.originalMaxPositionEmbeddings)
            let lowWavelen = old / low, highWavelen = old / high
            inv = inv.map { f in
                let wavelen = 2 * Float.pi / f
                let scaled = wavelen > lowWavelen ? f / factor : f
                if wavelen < highWavelen || wavelen > lowWavelen { return scaled }
                let smooth = (old / wavelen - low) / (high - low)
                return (1 - smooth) * scaled / factor + smooth * scaled
            }
        }
        return inv
    }

    /// Runs `tokens` at positions startPosition ..< startPosition+T, appending their keys and values to
    /// the cache (positions ≥ startPosition are overwritten, so a smaller startPosition rewinds).
    /// Returns the logits of the last token [V], or of every token [T, V].
    public func forward(tokens: [Int], startPosition: Int, logits mode: Logits = .last) throws -> [Float] {
        let V = config.vocabularySize
        var out = [Float](repeating: 0, count: mode == .all ? tokens.count * V : V)
        try out.withUnsafeMutableBufferPointer { try forward(tokens: tokens, startPosition: startPosition, logits: mode, into: $0) }
        return out
    }

    /// `forward` writing the logits into `output` ([V] for `.last`, [T, V] for `.all`); allocates nothing.
    public func forward(tokens: [Int], startPosition: Int, logits mode: Logits,
                        into output: UnsafeMutableBufferPointer<Float>) throws {
        let T = tokens.count, V = config.vocabularySize
        guard T > 0 else { throw LlamaError.invalidInput(field: "tokens", value: "[]", expected: "at least one token") }
        guard startPosition >= 0, startPosition <= cachedCount else {
            throw LlamaError.invalidInput(field: "startPosition", value: "\(startPosition)",
                                          expected: "0 ... \(cachedCount) (the cached positions)")
        }
        guard startPosition + T <= maxContext else {
            throw LlamaError.invalidInput(field: "startPosition + tokens.count", value: "\(startPosition + T)",
                                          expected: "≤ maxContext \(maxContext)")
        }
        for (i, t) in tokens.enumerated() where t < 0 || t >= V {
            throw LlamaError.invalidInput(field: "tokens[\(i)]", value: "\(t)", expected: "0 ..< \(V)")
        }
        let needed = mode == .all ? T * V : V
        guard output.count == needed else {
            throw LlamaError.invalidInput(field: "output.count", value: "\(output.count)", expected: "\(needed)")
        }
        tokens.withUnsafeBufferPointer { ids in
            var done = 0
            while done < T {
                let n = min(chunkSize, T - done)
                let chunk = UnsafeBufferPointer(rebasing: ids[done..<(done + n)])
                forwardChunk(chunk, startPosition: startPosition + done)
                switch mode {
                case .all: logitsForward(out: output.baseAddress! + done * V, rows: 0..<n, decoding: T == 1)
                case .last where done + n == T: logitsForward(out: output.baseAddress!, rows: (n - 1)..<n, decoding: T == 1)
                case .last: break
                }
                done += n
            }
        }
        cachedCount = startPosition + T
    }

    /// The decoder layers for one chunk of ≤ chunkSize tokens; leaves the residual stream in `x`.
    private func forwardChunk(_ tokens: UnsafeBufferPointer<Int>, startPosition pos: Int) {
        let cfg = config
        let T = tokens.count, C = cfg.hiddenSize, I = cfg.intermediateSize, D = cfg.headDim
        let qd = cfg.qDim, kvd = cfg.kvDim, half = D / 2
        let up = gate + T * I              // so that for T = 1, [gate | up] is one GEMV's output
        let fused = weights.hasFusedDenseLayout, ws = workspace
        let hasLoRA = !lora.isEmpty, hs = loraScratch ?? x   // hs is only used when hasLoRA
        let arith = T == 1 ? decodeArithmetic : .float32
        weights.embedding.lookup(out: x, tokens: tokens)
        for (l, w) in weights.layers.enumerated() {
            let branches: [LinearLoRA?]? = hasLoRA ? lora[l] : nil
            let layerKeys = keyCache + l * maxContext * kvd, layerValues = valueCache + l * maxContext * kvd
            let k = layerKeys + pos * kvd, v = layerValues + pos * kvd   // this chunk's rows of the cache

            // attention: x += o_proj(attention(rope(q), rope(k), v)), q/k/v from rmsnorm(x)
            rmsnormForward(out: xb, inp: x, weight: w.attentionNorm, rows: T, channels: C, epsilon: cfg.rmsNormEpsilon)
            if T == 1, fused, case let .dense(wqkv, _, _) = w.wq {
                // decode: wq|wk|wv (and their biases) are consecutive in memory, so one GEMV does all three
                matmulForward(out: qkv, inp: xb, weight: wqkv, bias: w.bq, rows: 1, inChannels: C, outChannels: qd + 2 * kvd)
                q.update(from: qkv, count: qd)
                k.update(from: qkv + qd, count: kvd)
                v.update(from: qkv + qd + kvd, count: kvd)
                if let b = branches {
                    b[0]?.addForward(out: q, inp: xb, rows: T, h: hs)
                    b[1]?.addForward(out: k, inp: xb, rows: T, h: hs)
                    b[2]?.addForward(out: v, inp: xb, rows: T, h: hs)
                }
            } else if T == 1, LinearWeight.gemvQuantized([(w.wq, q, w.bq), (w.wk, k, w.bk), (w.wv, v, w.bv)], inp: xb,
                                                         arithmetic: arith, lora: branches.map { Array($0[0...2]) }, h: hs) {
                // decode, 4-bit: q, k and v, with their LoRA branches, in one parallel loop
            } else {
                w.wq.forward(out: q, inp: xb, bias: w.bq, rows: T, workspace: ws)
                w.wk.forward(out: k, inp: xb, bias: w.bk, rows: T, workspace: ws)
                w.wv.forward(out: v, inp: xb, bias: w.bv, rows: T, workspace: ws)
                if let b = branches {
                    b[0]?.addForward(out: q, inp: xb, rows: T, h: hs)
                    b[1]?.addForward(out: k, inp: xb, rows: T, h: hs)
                    b[2]?.addForward(out: v, inp: xb, rows: T, h: hs)
                }
            }
            ropeForward(x: q, cos: ropeCos + pos * half, sin: ropeSin + pos * half, rows: T, heads: cfg.headCount,
                        headDim: D, rowStride: qd)
            ropeForward(x: k, cos: ropeCos + pos * half, sin: ropeSin + pos * half, rows: T, heads: cfg.kvHeadCount,
                        headDim: D, rowStride: kvd)
            attentionForward(out: att, q: q, keys: layerKeys, values: layerValues, scratch: scratch, tokens: T,
                             startPosition: pos, heads: cfg.headCount, kvHeads: cfg.kvHeadCount, headDim: D,
                             window: cfg.slidingWindow)
            if !(T == 1 && LinearWeight.gemvQuantized([(w.wo, xb2, w.bo)], inp: att, arithmetic: arith,
                                                      lora: branches.map { [$0[3]] }, h: hs)) {
                w.wo.forward(out: xb2, inp: att, bias: w.bo, rows: T, workspace: ws, arithmetic: arith)
                branches?[3]?.addForward(out: xb2, inp: att, rows: T, h: hs)
            }
            residualForward(out: x, a: x, b: xb2, count: T * C)

            // MLP: x += down(silu(gate(h)) ⊙ up(h)), h = rmsnorm(x)
            rmsnormForward(out: xb, inp: x, weight: w.mlpNorm, rows: T, channels: C, epsilon: cfg.rmsNormEpsilon)
            if T == 1, fused, case let .dense(wgu, _, _) = w.wGate {
                // decode: wGate|wUp are consecutive, and up = gate + I when T = 1
                matmulForward(out: gate, inp: xb, weight: wgu, bias: w.bGate, rows: 1, inChannels: C, outChannels: 2 * I)
                if let b = branches {
                    b[4]?.addForward(out: gate, inp: xb, rows: T, h: hs)
                    b[5]?.addForward(out: up, inp: xb, rows: T, h: hs)
                }
            } else if T == 1, LinearWeight.gemvQuantized([(w.wGate, gate, w.bGate), (w.wUp, up, w.bUp)], inp: xb,
                                                         arithmetic: arith, lora: branches.map { Array($0[4...5]) }, h: hs) {
                // decode, 4-bit: gate and up, with their LoRA branches, in one parallel loop
            } else {
                w.wGate.forward(out: gate, inp: xb, bias: w.bGate, rows: T, workspace: ws)
                w.wUp.forward(out: up, inp: xb, bias: w.bUp, rows: T, workspace: ws)
                if let b = branches {
                    b[4]?.addForward(out: gate, inp: xb, rows: T, h: hs)
                    b[5]?.addForward(out: up, inp: xb, rows: T, h: hs)
                }
            }
            siluMulForward(out: gate, gate: gate, up: up, count: T * I)
            if !(T == 1 && LinearWeight.gemvQuantized([(w.wDown, xb2, w.bDown)], inp: gate, arithmetic: arith,
                                                      lora: branches.map { [$0[6]] }, h: hs)) {
                w.wDown.forward(out: xb2, inp: gate, bias: w.bDown, rows: T, workspace: ws, arithmetic: arith)
                branches?[6]?.addForward(out: xb2, inp: gate, rows: T, h: hs)
            }
            residualForward(out: x, a: x, b: xb2, count: T * C)
        }
    }

    /// Final norm and LM head for rows of the current chunk: out[rows, V]. A decoded token's head
    /// (a Q8_0 one) multiplies in `decodeArithmetic`; a prompt's last row in float32.
    private func logitsForward(out: UnsafeMutablePointer<Float>, rows: Range<Int>, decoding: Bool) {
        let C = config.hiddenSize
        rmsnormForward(out: xb, inp: x + rows.lowerBound * C, weight: weights.finalNorm, rows: rows.count,
                       channels: C, epsilon: config.rmsNormEpsilon)
        weights.lmHead.forward(out: out, inp: xb, rows: rows.count, workspace: workspace,
                               arithmetic: decoding ? decodeArithmetic : .float32)
    }
}
