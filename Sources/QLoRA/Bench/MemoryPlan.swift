import Foundation
import Kernels
import Llama
import Quantization

/// What a training run will allocate: the inputs of `MemoryPlan.estimate`.
public struct MemoryPlanOptions: Sendable, Equatable {
    public var batchSize: Int
    public var seqLen: Int
    public var rank: Int
    public var targets: [LoRATarget]
    public var gradientCheckpointing: Bool
    /// AdamW state: 32 (two float32 moments) or 8 (adamw-8bit).
    public var optimizerStateBits: Int
    /// KV-cache positions of the inference `LlamaModel` held next to the training model (a
    /// `ModelBundle` loaded with contextLength = seqLen has seqLen); 0 when there is none.
    public var inferenceContext: Int
    /// Whether a forward-only pass of the training model runs (a validation loss, the benchmark's
    /// forward split): it materializes all logits [N, V], where a training step holds only
    /// `LoRAModel.trainingLogitRows` rows of them at a time.
    public var forwardOnlyLogits: Bool

    public init(batchSize: Int = 1, seqLen: Int = 512, rank: Int = 16, targets: [LoRATarget] = LoRATarget.allCases,
                gradientCheckpointing: Bool = true, optimizerStateBits: Int = 32, inferenceContext: Int? = nil,
                forwardOnlyLogits: Bool = false) {
        self.batchSize = batchSize; self.seqLen = seqLen; self.rank = rank; self.targets = targets
        self.gradientCheckpointing = gradientCheckpointing; self.optimizerStateBits = optimizerStateBits
        self.inferenceContext = inferenceContext ?? seqLen
        self.forwardOnlyLogits = forwardOnlyLogits
    }
}

/// A prediction of the peak resident memory and the time of one training step, made before
/// training from the model's shape alone.
///
/// Memory: the sum of what is resident while the training steps run — the base weights as held
/// (4-bit codes and scales as `QuantizedTensor4Bit` keeps them, embeddings / norms / LM head), every
/// buffer `LoRAModel.init` allocates as far as a step touches it (`LoRAModel.memoryBuffers`:
/// activations of every layer, or of one with gradient checkpointing; the residual stream at each
/// layer input; `LoRAModel.trainingLogitRows` rows of logits — the fused LM head never materializes
/// [N, V]; gradient buffers; attention, LoRA and RoPE scratch; the tiles of the NF4 workspace), LoRA
/// parameters and gradients, the AdamW state, the inference model of the bundle (KV cache), and a
/// constant process overhead measured on this machine (Swift runtime, Foundation, OpenBLAS thread
/// buffers, tokenizer tables). A forward-only pass (validation loss) materializes all logits: see
/// `MemoryPlanOptions.forwardOnlyLogits`. Loading transients (e.g. a tensor dequantized while
/// quantizing) are not part of it.
///
/// Time: floating-point operations of the step (`stepWork`: forward, backward of the inputs of the
/// frozen linears, LoRA, attention, LM head; plus the recomputed forward with checkpointing) at a
/// FLOP rate, plus dequantizing every 4-bit weight once per pass at a dequantization rate. The rates
/// (`Throughput`) are measured on the machine by `Throughput.measure` (a probe layer) or fixed.
public struct MemoryPlan: Sendable, Equatable {
    public struct Item: Sendable, Equatable {
        public var name: String
        public var bytes: Int
    }

    /// Rates of this machine the time prediction uses.
    public struct Throughput: Sendable, Equatable {
        /// Achieved float32 rate of the training step's products (FLOP/s).
        public var flopsPerSecond: Double
        /// 4-bit weights dequantized per second (elements/s).
        public var dequantizedPerSecond: Double
        /// Where the rates come from (printed with the plan).
        public var source: String
        public init(flopsPerSecond: Double, dequantizedPerSecond: Double, source: String = "given") {
            self.flopsPerSecond = flopsPerSecond; self.dequantizedPerSecond = dequantizedPerSecond
            self.source = source
        }
        /// Fixed rates from this repository's idle 2-core AVX2 machine (2026-11-28: SmolLM2 256 × 4,
        /// 791 GFLOP in 5.15–5.6 s, about 150 GFLOP/s for the whole step; the 4-bit weights are decoded
        /// inside NF4Gemm's packing, a few percent of it); `measure` calibrates on the machine at hand.
        public static let calibrated = Throughput(flopsPerSecond: 150e9, dequantizedPerSecond: 20e9,
                                                  source: "built-in constants (idle 2-core AVX2 machine)")
    }

    public var options: MemoryPlanOptions
    public var items: [Item]
    /// The part of `peakBytes` that the training `LoRAModel` holds (its buffers as far as a step
    /// touches them, LoRA parameters and gradients): `LoRAModel.memoryBuffers`' trainingBytes.
    public var trainingModelBytes: Int
    public var flopsPerStep: Double
    public var dequantizedPerStep: Double
    public var throughput: Throughput

    /// Predicted peak resident bytes while training.
    public var peakBytes: Int { items.reduce(0) { $0 + $1.bytes } }
    /// Predicted seconds of one optimizer step (one micro-batch).
    public var secondsPerStep: Double {
        flopsPerStep / throughput.flopsPerSecond + dequantizedPerStep / throughput.dequantizedPerSecond
    }
    public var tokensPerSecond: Double { Double(options.batchSize * options.seqLen) / max(secondsPerStep, 1e-12) }

    /// Resident bytes of a process that has loaded nothing yet, plus the runtime buffers of one
    /// training step not sized by the model (measured: see README "Performance").
    public static let processOverheadBytes = 48 << 20

    // MARK: - Base weights

    /// Bytes the weights hold in memory: float32 storage plus each 4-bit tensor's codes and scales
    /// (the double-quantized codes and nested absmax are held twice by `QuantizedTensor4Bit`: once
    /// in `scales`, once in the C view).
    public static func baseBytes(_ weights: LlamaWeights) -> Int {
        var total = weights.storage.count * 4
        // A GGUF's Q8_0 embedding / LM head: 34 bytes per 32 values, outside `storage`.
        if let q = weights.embedding.q8Matrix { total += q.storageBytes }
        if weights.hasSeparateLMHead, let q = weights.lmHead.q8Matrix { total += q.storageBytes }
        for layer in weights.layers {
            for w in layer.linearWeights {
                guard let q = w.quantizedTensor else { continue }
                total += quantizedBytes(count: q.count, blocksize: q.blocksize, doubleQuant: q.isDoubleQuantized)
            }
        }
        return total
    }

    /// `baseBytes` of `config` loaded under `policy`, computed from the shapes. `embedding` / `lmHead`:
    /// how the checkpoint's embedding and separate head will be held (`embeddingStorage(path:)`;
    /// Q8_0 for a GGUF storing them in Q8_0, else float32).
    public static func baseBytes(config: LlamaConfig, policy: QuantizationPolicy, separateLMHead: Bool? = nil,
                                 embedding: EmbeddingStorage = .float32, lmHead: EmbeddingStorage = .float32) -> Int {
        let separate = separateLMHead ?? !config.tieWordEmbeddings
        let r = BaseMemoryReport.estimate(config: config, separateLMHead: separate, policy: policy,
                                          embedding: embedding, lmHead: lmHead)
        var total = r.embedding.bytes + r.lmHead.bytes + r.normsAndBiases.bytes + r.linearFloat32.bytes
        guard policy.isQuantized else { return total }
        for _ in 0..<config.layerCount {
            for (rows, cols) in linearShapes(config) {
                total += quantizedBytes(count: rows * cols, blocksize: policy.blocksize, doubleQuant: policy.doubleQuant)
            }
        }
        return total
    }

    static func quantizedBytes(count n: Int, blocksize: Int, doubleQuant: Bool) -> Int {
        let nb = (n + blocksize - 1) / blocksize
        let tables = 2 * 16 * 4 + (doubleQuant ? 2 * 256 * 4 : 0)
        let scales = doubleQuant ? 2 * nb + 2 * 4 * ((nb + 255) / 256) : 2 * 4 * nb
        return (n + 1) / 2 + scales + tables
    }

    /// Floats of `LoRAModel`'s NF4 workspace a training step touches: only a Q8_0 LM head uses it
    /// (the 4-bit weights go through NF4Gemm's packing buffers), dequantizing tiles of capacity /
    /// hidden whole rows; its capacity is max(256 Ki, 64 · widest input, min(largest weight, 4 Mi)) floats.
    static func headTileFloats(_ c: LlamaConfig) -> Int {
        let shapes = linearShapes(c)
        let maxIn = max(c.hiddenSize, c.intermediateSize, c.qDim)
        let largest = shapes.map { $0.0 * $0.1 }.max() ?? 0
        let capacity = max(1 << 18, 64 * maxIn, min(largest, 1 << 22))
        return max(1, min(c.vocabularySize, capacity / c.hiddenSize)) * c.hiddenSize
    }

    static func linearShapes(_ c: LlamaConfig) -> [(Int, Int)] {
        let C = c.hiddenSize, I = c.intermediateSize
        return [(c.qDim, C), (c.kvDim, C), (c.kvDim, C), (C, c.qDim), (I, C), (I, C), (C, I)]
    }

    // MARK: - Estimate

    /// The plan for `config` whose base weights take `baseBytes` (see `baseBytes(_:)`).
    public static func estimate(config cfg: LlamaConfig, baseBytes: Int, options o: MemoryPlanOptions,
                                quantizedBase: Bool = true, q8Head: Bool = false,
                                throughput: Throughput = .calibrated) -> MemoryPlan {
        let L = cfg.layerCount, C = cfg.hiddenSize, I = cfg.intermediateSize, V = cfg.vocabularySize
        let qd = cfg.qDim, kvd = cfg.kvDim, half = cfg.headDim / 2, H = cfg.headCount
        let B = max(o.batchSize, 1), T = max(o.seqLen, 1), r = max(o.rank, 1), N = B * T
        let maxIn = max(C, I, qd)
        let targets = LoRATarget.allCases.filter(o.targets.contains)
        func shape(_ t: LoRATarget) -> (inp: Int, out: Int) { t.shape(cfg) }
        let loraPerLayer = targets.reduce(0) { $0 + r * (shape($1).inp + shape($1).out) }
        let P = L * loraPerLayer

        var items: [Item] = []
        items.append(Item(name: "base weights", bytes: baseBytes))
        items.append(Item(name: "LoRA parameters + gradients", bytes: 2 * 4 * P))
        let sizes = targets.flatMap { [r * shape($0).inp, r * shape($0).out] }
        var optimizer = 0
        for _ in 0..<L {
            for n in sizes {
                let b = o.optimizerStateBits == 8 && n >= 4096 ? 2 * n + 2 * 4 * ((n + 255) / 256) : 8 * n
                optimizer += (b + 63) / 64 * 64
            }
        }
        items.append(Item(name: "AdamW state", bytes: optimizer))
        // Every buffer LoRAModel.init allocates (see `LoRAModel.memoryBuffers`), as much of it as a
        // training step touches: all of it but the logits (the fused LM head writes `headChunk` rows
        // at a time) and the NF4 workspace (tiles of whole rows of the widest weight).
        let modelItemsStart = items.count
        let sets = o.gradientCheckpointing ? 1 : L
        let perSet = N * (3 * C + 2 * qd + 2 * kvd + 3 * I) + 7 * N * r
        items.append(Item(name: "saved activations (\(sets) layer\(sets == 1 ? "" : "s"))", bytes: 4 * sets * perSet))
        items.append(Item(name: "residual stream at each layer input", bytes: 4 * (L + 1) * N * C))
        items.append(Item(name: "final norm and LM head inputs", bytes: 4 * (2 * N * C + N)))
        let logitRows = min(N, LoRAModel.trainingLogitRows)
        items.append(Item(name: "logits (\(logitRows) of \(N) rows at a time)", bytes: 4 * logitRows * V))
        let grads = N * (3 * C + 2 * qd + 2 * kvd + 3 * I)          // tmp, dx, dxn, dq..datt, dgate/dup/dact
        items.append(Item(name: "activation gradients", bytes: 4 * grads))
        let att = max(attentionTrainForwardScratchCount(tokens: T, heads: H),
                      attentionBackwardScratchCount(tokens: T, heads: H, kvHeads: cfg.kvHeadCount, headDim: cfg.headDim))
        let scratch = att + LoRAModel.loraScratchCount(rows: N, config: cfg, rank: r) + N * maxIn
            + 2 * T * half + 2 * N * half
        items.append(Item(name: "attention, LoRA and RoPE scratch", bytes: 4 * scratch + 5 * MemoryLayout<Int>.stride * N + N * maxIn))
        items.append(Item(name: "NF4Gemm packing and Q8_0 head tiles",
                          bytes: (quantizedBase ? NF4GemmWorkspace.defaultBytes : 0) + (q8Head ? 4 * headTileFloats(cfg) : 0)))
        let modelBytes = 2 * 4 * P + items[modelItemsStart...].reduce(0) { $0 + $1.bytes }
        if o.forwardOnlyLogits {
            items.append(Item(name: "logits of a forward-only pass [N, V]", bytes: 4 * (N - logitRows) * V))
        }
        if o.inferenceContext > 0 {
            // The bundle's LlamaModel: every buffer but its NF4 workspace is zeroed in init (resident);
            // the workspace is touched only when the bundle itself runs a multi-token forward.
            let ctx = o.inferenceContext, t = min(128, ctx)
            let floats = 3 * t * C + 2 * t * qd + 2 * t * I + qd + 2 * kvd
                + attentionScratchCount(tokens: t, keys: ctx, heads: H) + 2 * L * ctx * kvd + 2 * ctx * half
            items.append(Item(name: "inference model (KV cache \(ctx))", bytes: 4 * floats))
        }
        items.append(Item(name: "batch arrays", bytes: 8 * 4 * N))
        items.append(Item(name: "process overhead (measured)", bytes: processOverheadBytes))

        let work = stepWork(config: cfg, batchSize: B, seqLen: T, rank: r, targets: targets,
                            gradientCheckpointing: o.gradientCheckpointing, quantizedBase: quantizedBase)
        return MemoryPlan(options: o, items: items, trainingModelBytes: modelBytes, flopsPerStep: work.flops,
                          dequantizedPerStep: work.dequantized, throughput: throughput)
    }

    /// Floating-point operations of one training step (forward; backward of the inputs of the
    /// frozen linears, LoRA and attention; the LM head forward and backward; the recomputed forward
    /// with checkpointing) and 4-bit weights dequantized (every weight once per pass: forward,
    /// backward, and recompute).
    static func stepWork(config cfg: LlamaConfig, batchSize B: Int, seqLen T: Int, rank r: Int, targets: [LoRATarget],
                         gradientCheckpointing: Bool, quantizedBase: Bool) -> (flops: Double, dequantized: Double) {
        let C = cfg.hiddenSize, V = cfg.vocabularySize, qd = cfg.qDim, N = B * T
        let loraPerLayer = targets.reduce(0) { $0 + r * ($1.shape(cfg).inp + $1.shape(cfg).out) }
        let linearMACs = Double(linearShapes(cfg).reduce(0) { $0 + $1.0 * $1.1 })  // per token per layer
        let Nd = Double(N), Ld = Double(cfg.layerCount)
        let attention = Double(B) * 2 * 2 * Double(T) * Double(T + 1) / 2 * Double(qd)   // QKᵀ and PV, causal
        let lora = 2 * Nd * Double(loraPerLayer)
        let layerForward = 2 * Nd * linearMACs + attention + lora
        let head = 2 * Nd * Double(C) * Double(V)
        let forward = Ld * layerForward + head
        let backward = Ld * (2 * Nd * linearMACs + 2 * attention + 2 * lora) + head
        let recompute = gradientCheckpointing ? Ld * layerForward : 0
        let passes = gradientCheckpointing ? 3.0 : 2.0
        let dequant = quantizedBase ? passes * Ld * linearMACs : 0
        return (forward + backward + recompute, dequant)
    }

    /// The largest batch size ≤ `maxBatchSize` whose plan fits in `budget` bytes, without gradient
    /// checkpointing when any batch size fits that way (it is faster per token), else with it.
    /// nil when not even batch 1 with checkpointing fits.
    public static func fit(budget: Int, config: LlamaConfig, baseBytes: Int, options: MemoryPlanOptions,
                           maxBatchSize: Int, quantizedBase: Bool = true,
                           q8Head: Bool = false) -> (batchSize: Int, gradientCheckpointing: Bool)? {
        for checkpointing in [false, true] {
            var best: Int? = nil
            var o = options
            o.gradientCheckpointing = checkpointing
            for b in 1...max(maxBatchSize, 1) {
                o.batchSize = b
                if estimate(config: config, baseBytes: baseBytes, options: o, quantizedBase: quantizedBase,
                            q8Head: q8Head).peakBytes <= budget {
                    best = b
                } else {
                    break
                }
            }
            if let best { return (best, checkpointing) }
        }
        return nil
    }
}

extension MemoryPlan {
    /// How loading the checkpoint at `path` holds its embedding and LM head: Q8_0 for a GGUF's Q8_0
    /// `token_embd.weight` / `output.weight`, float32 otherwise (Hugging Face folders, other types).
    public static func embeddingStorage(path: String) throws -> (embedding: EmbeddingStorage, lmHead: EmbeddingStorage) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ModelFormatError.unreadable(file: path, reason: "no such file or directory")
        }
        guard !isDirectory.boolValue else { return (.float32, .float32) }
        let gguf = try GGUFFile(path: path)
        func kind(_ name: String) throws -> EmbeddingStorage {
            guard gguf.contains(name) else { return .float32 }
            return try gguf.tensorInfo(name).type == .q8_0 ? .q8_0 : .float32
        }
        return (try kind("token_embd.weight"), try kind("output.weight"))
    }

    /// The config of the model at `path` (a .gguf file or a Hugging Face folder) and whether it has
    /// a separate LM head, read from the metadata only (no weights are loaded).
    public static func modelShape(path: String) throws -> (config: LlamaConfig, separateLMHead: Bool) {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ModelFormatError.unreadable(file: path, reason: "no such file or directory")
        }
        if isDirectory.boolValue {
            let config = try LlamaConfig(huggingFaceConfigFile: (path as NSString).appendingPathComponent("config.json"))
            return (config, !config.tieWordEmbeddings)
        }
        let gguf = try GGUFFile(path: path)
        let config = try LlamaConfig(ggufMetadata: gguf.metadata, file: path)
        return (config, gguf.tensorNames.contains("output.weight"))
    }
}

/// Share of the machine's cores used by other processes between two samples (Linux /proc/stat
/// minus this process's own CPU time), as the peer script records it.
public struct CPUSample: Sendable {
    let busy: Double, total: Double, own: Double

    public static func now() -> CPUSample? {
        guard let stat = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
              let line = stat.split(separator: "\n").first(where: { $0.hasPrefix("cpu ") }),
              let me = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8),
              let close = me.lastIndex(of: ")") else { return nil }
        let v = line.split(separator: " ").dropFirst().compactMap { Double($0) }
        guard v.count >= 8 else { return nil }
        let idle = v[3] + v[4]
        let total = v[0..<8].reduce(0, +)
        // fields after the command name: state is field 3; utime, stime are fields 14, 15.
        let rest = me[me.index(after: close)...].split(separator: " ")
        guard rest.count > 13, let u = Double(rest[11]), let s = Double(rest[12]) else { return nil }
        return CPUSample(busy: total - idle, total: total, own: u + s)
    }

    /// Other processes' CPU time as a share of all cores' time since `earlier` (0 … 1).
    public func otherShare(since earlier: CPUSample) -> Double {
        let dt = total - earlier.total
        guard dt > 0 else { return 0 }
        return max(0, min(1, ((busy - earlier.busy) - (own - earlier.own)) / dt))
    }
}
