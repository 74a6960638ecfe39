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
    /// Calibrates the rates on this machine, now: times `LoRAModel.forwardBackward` of one synthetic
    /// NF4+DQ layer of `config`'s layer shape (heads, head size, GQA, SwiGLU), at two row counts, and
    /// fits time = flops / flopsPerSecond + dequantized / dequantizedPerSecond through the two
    /// points (the flops and dequantized counts are `MemoryPlan`'s for that one-layer model). To
    /// keep the probe short (about a second) the layer is narrowed (hidden, intermediate and heads
    /// divided by a power of two, the head size kept) and the rows capped at 512 when one full
    /// layer of the configuration would exceed `flopBudget` operations. The best of `repeats`
    /// runs per point is kept (other processes only ever slow a run down).
    public static func measure(config cfg: LlamaConfig, options o: MemoryPlanOptions,
                               flopBudget: Double = 25e9, repeats: Int = 2) throws -> MemoryPlan.Throughput {
        let targets = LoRATarget.allCases.filter(o.targets.contains)
        let r = max(o.rank, 1)
        var B = max(o.batchSize, 1), T = max(o.seqLen, 16)
        if B * T > 512 { B = max(1, 512 / T); T = min(T, 512) }
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
        let short = max(8, T / 2)
        func labels(_ rowLength: Int) -> [Int] {
            (0..<(B * T)).map { $0 % T < rowLength ? ids[$0] : TrainingExample.ignoreIndex }
        }
        let full = labels(T), half = labels(short)
        func time(_ labels: [Int], _ rowLength: Int) throws -> Double {
            var best = Double.infinity
            for _ in 0..<max(repeats, 1) {
                let t0 = benchNow()
                _ = try model.forwardBackward(inputIds: ids, labels: labels, lossScale: 1, rowLength: rowLength)
                best = min(best, benchNow() - t0)
            }
            return best
        }
        _ = try model.forwardBackward(inputIds: ids, labels: labels(8), lossScale: 1, rowLength: 8)   // warm-up
        let t1 = try time(full, T), t2 = try time(half, short)
        let w1 = work(pc, T), w2 = work(pc, short)
        // t = a · flops + d (d: the dequantization, the same at both row counts)
        var a = (t1 - t2) / max(w1.flops - w2.flops, 1)
        if !(a > 0) { a = t1 / w1.flops }
        let d = max(t1 - a * w1.flops, 0.02 * t1)
        let shape = "1 layer, hidden \(pc.hiddenSize), intermediate \(pc.intermediateSize), \(pc.headCount) heads, \(B) × \(T) and \(B) × \(short) rows"
        return MemoryPlan.Throughput(flopsPerSecond: 1 / a, dequantizedPerSecond: w1.dequantized / d,
                                     source: "measured now (\(shape); best of \(max(repeats, 1)))")
    }
}
