import Foundation
import Llama

/// Monotonic seconds.
@inline(__always)
func benchNow() -> Double { Double(DispatchTime.now().uptimeNanoseconds) * 1e-9 }

/// Median of a non-empty array (mean of the two middle values for an even count); 0 when empty.
func median(_ xs: [Double]) -> Double {
    guard !xs.isEmpty else { return 0 }
    let s = xs.sorted(), n = s.count
    return n % 2 == 1 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2])
}

extension MemoryPlan.Throughput {
    /// Calibrates the FLOP rate on this machine, now: times `LoRAModel.forwardBackward` of one
    /// synthetic NF4+DQ layer of `config`'s layer shape (heads, head size, GQA, SwiGLU) and divides
    /// its flops (`MemoryPlan.stepWork` for that one-layer model), less the dequantization at the
    /// built-in rate, by the time. The rows are capped at 1024 (SmolLM2's 256 × 4 runs at full size),
    /// and to keep the probe short (about a second) the layer is narrowed (hidden, intermediate and
    /// heads divided by a power of two, the head size kept) while it would exceed `flopBudget` operations.
    /// The best of `repeats` runs is kept (other processes only ever slow a run down). (An earlier
    /// two-point fit, time = a · flops + d through two row counts, missed by up to 45 %: the
    /// difference of two noisy times. NF4Gemm decodes the 4-bit weights inside its packing, so the
    /// dequantization term is a few percent and needs no probe of its own.)
    public static func measure(config cfg: LlamaConfig, options o: MemoryPlanOptions,
                               flopBudget: Double = 25e9, repeats: Int = 5) throws -> MemoryPlan.Throughput {
        let targets = LoRATarget.allCases.filter(o.targets.contains)
        let r = max(o.rank, 1)
        var B = max(o.batchSize, 1), T = max(o.seqLen, 16)
        if B * T > 1024 { B = max(1, 1024 / T); T = min(T, 1024) }
        var div = 1
        func probeConfig(_ d: Int) throws -> LlamaConfig {
            let group = max(1, cfg.headCount / max(cfg.kvHeadCount, 1))
            let kvHeads = max(1, cfg.kvHeadCount / d), heads = kvHeads * group
            let hidden = d == 1 ? cfg.hiddenSize : heads * cfg.headDim
            return try LlamaConfig(modelType: cfg.modelType, hiddenSize: hidden,
                                   intermediateSize: max(64, cfg.intermediateSize / d / 64 * 64), layerCount: 1,
                                   headCount: heads, kvHeadCount: kvHeads, headDim: cfg.headDim,
                                   vocabularySize: 64, ropeTheta: cfg.ropeTheta, maxPositionEmbeddings: max(T, 16),
                                   tieWordEmbeddings: false, file: "plan probe")
        }
        var pc = try probeConfig(1)
        func work(_ c: LlamaConfig, _ t: Int) -> (flops: Double, dequantized: Double) {
            MemoryPlan.stepWork(config: c, batchSize: B, seqLen: t, rank: r, targets: targets,
                                gradientCheckpointing: o.gradientCheckpointing, quantizedBase: true)
        }
        while work(pc, T).flops > flopBudget && cfg.kvHeadCount / (div * 2) >= 1 && pc.hiddenSize > 512 { div *= 2; pc = try probeConfig(div) }
        let weights = try LlamaWeights.synthetic(config: pc, seed: 1)
        let model = try LoRAModel(weights: weights, batchSize: B, seqLen: T, rank: r, alpha: 2 * Float(r),
                                  targets: targets, gradientCheckpointing: o.gradientCheckpointing)
        for p in model.parameters { for i in 0..<p.count { p[i] = 0.01 } }   // LoRA B ≠ 0: its products run in full
        var rng = SeededRandom(seed: 2)
        let ids = (0..<(B * T)).map { _ in Int(rng.next() % 64) }
        _ = try model.forwardBackward(inputIds: ids, labels: ids, lossScale: 1, rowLength: T)   // warm-up
        var best = Double.infinity
        for _ in 0..<max(repeats, 1) {
            let t0 = benchNow()
            _ = try model.forwardBackward(inputIds: ids, labels: ids, lossScale: 1, rowLength: T)
            best = min(best, benchNow() - t0)
        }
        let w = work(pc, T), dequantizeRate = MemoryPlan.Throughput.calibrated.dequantizedPerSecond
        let compute = max(best - w.dequantized / dequantizeRate, 0.5 * best)
        let shape = "1 layer, hidden \(pc.hiddenSize), intermediate \(pc.intermediateSize), \(pc.headCount) heads, \(B) × \(T) rows"
        return MemoryPlan.Throughput(flopsPerSecond: w.flops / compute, dequantizedPerSecond: dequantizeRate,
                                     source: "measured now (\(shape); best of \(max(repeats, 1)))")
    }
}
