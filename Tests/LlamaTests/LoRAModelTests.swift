// No fixtures: tiny LLaMA models built in memory from seeded random values.
// The whole-model QLoRA step (LoRAModel) against central finite differences of its own loss, against
// the inference model (LlamaModel) with B = 0, against a float32 twin of a 4-bit base, with and
// without gradient checkpointing, and a few SGD steps.
import Foundation
import Testing
import Quantization
@testable import Llama

private func tinyConfig(tied: Bool = true) throws -> LlamaConfig {
    try LlamaConfig(hiddenSize: 24, intermediateSize: 40, layerCount: 2, headCount: 4, kvHeadCount: 2, headDim: 6,
                    vocabularySize: 50, rmsNormEpsilon: 1e-5, ropeTheta: 10000, tieWordEmbeddings: tied)
}

/// Float32 weights filled from `seed`: everything U(±0.3), norm weights 1 + U(±0.1).
private func tinyWeights(_ config: LlamaConfig, seed: UInt64) -> LlamaWeights {
    let w = LlamaWeights(config: config)
    var rng = LoRARandom(seed: seed)
    for i in 0..<w.storage.count { w.storage[i] = rng.uniform(-0.3, 0.3) }
    let C = config.hiddenSize
    func norm(_ p: UnsafeMutablePointer<Float>) { for i in 0..<C { p[i] = 1 + rng.uniform(-0.1, 0.1) } }
    norm(w.finalNorm)
    for l in w.layers { norm(l.attentionNorm); norm(l.mlpNorm) }
    return w
}

/// Sets every LoRA B to U(±bound) from `seed` (PEFT starts B at 0; non-zero B makes A's gradient flow).
private func randomizeB(_ m: LoRAModel, seed: UInt64, bound: Float = 0.3) {
    var rng = LoRARandom(seed: seed)
    for (i, p) in m.parameters.enumerated() where i % 2 == 1 {
        for j in 0..<p.count { p[j] = rng.uniform(-bound, bound) }
    }
}

private struct Batch { var ids: [Int]; var labels: [Int]; var segments: [Int]? }

private func tinyBatch(B: Int, T: Int, V: Int, packed: Bool, seed: UInt64) -> Batch {
    var rng = LoRARandom(seed: seed)
    let ids = (0..<(B * T)).map { _ in Int(rng.next() % UInt64(V)) }
    var labels = ids
    labels[1] = -100                                  // an ignored label (prompt token)
    var segments: [Int]? = nil
    if packed {
        // row 0: segments [0,3) [3,T); row 1: [0,2) [2,5) [5,T)
        var s = [Int](repeating: 0, count: B * T)
        for t in 0..<T { s[t] = t < 3 ? 0 : 3 }
        if B > 1 { for t in 0..<T { s[T + t] = t < 2 ? 0 : (t < 5 ? 2 : 5) } }
        segments = s
    }
    return Batch(ids: ids, labels: labels, segments: segments)
}

private func flatGradients(_ m: LoRAModel) -> [Float] { m.gradients.flatMap { Array($0) } }

@Suite struct LoRAModelTests {
    /// dLoss/dA and dLoss/dB of the mean loss equal central finite differences on sampled entries
    /// of every tensor (plain causal, and packed segments with LoRA dropout).
    @Test(arguments: [false, true])
    func gradientsMatchFiniteDifferences(_ packed: Bool) throws {
        let cfg = try tinyConfig(tied: !packed)
        let weights = tinyWeights(cfg, seed: 1)
        let B = 2, T = 7
        let m = try LoRAModel(weights: weights, batchSize: B, seqLen: T, rank: 4, alpha: 8,
                              dropout: packed ? 0.2 : 0, seed: 7, gradientCheckpointing: true)
        randomizeB(m, seed: 3)
        let batch = tinyBatch(B: B, T: T, V: cfg.vocabularySize, packed: packed, seed: 11)
        m.zeroGradients()
        m.step = 5
        let (sum, count) = try m.forwardBackward(inputIds: batch.ids, labels: batch.labels,
                                                 segmentStarts: batch.segments, lossScale: 1)
        #expect(count > 0 && sum > 0)
        // count: row 0 drops its last token and label[1]; packing drops each segment's last token
        #expect(count == (packed ? 2 * T - 5 - 1 : 2 * T - 2 - 1))
        let grads = m.gradients.map { Array($0) }
        let params = m.parameters
        let eps: Float = 4e-3
        var rng = LoRARandom(seed: 99)
        var worst: Float = 0, checked = 0, sumSqErr: Double = 0, sumSqRef: Double = 0
        for (ti, p) in params.enumerated() {
            for _ in 0..<3 {
                let j = Int(rng.next() % UInt64(p.count))
                let orig = p[j]
                func loss() throws -> Double {
                    m.step = 5
                    return try m.forward(inputIds: batch.ids, labels: batch.labels, segmentStarts: batch.segments,
                                         training: true).lossSum
                }
                p[j] = orig + eps; let lp = try loss()
                p[j] = orig - eps; let lm = try loss()
                p[j] = orig
                let fd = Float((lp - lm) / Double(2 * eps))
                let g = grads[ti][j]
                let err = abs(g - fd)
                worst = max(worst, err / (abs(fd) + 1e-2))
                sumSqErr += Double(err * err); sumSqRef += Double(fd * fd)
                #expect(err <= 2e-2 * abs(fd) + 2e-3, "tensor \(ti) entry \(j): analytic \(g) vs fd \(fd)")
                checked += 1
            }
        }
        #expect(checked == params.count * 3)
        #expect((sumSqErr / sumSqRef).squareRoot() < 2e-3, "relative error over \(checked) entries")
        #expect(sumSqRef > 0)
    }

    /// Recomputing each layer in backward (checkpointing) gives the same gradients as keeping all activations.
    @Test func checkpointingGivesIdenticalGradients() throws {
        let cfg = try tinyConfig()
        let weights = tinyWeights(cfg, seed: 2)
        let batch = tinyBatch(B: 2, T: 7, V: cfg.vocabularySize, packed: true, seed: 5)
        var results: [[Float]] = []
        var losses: [Double] = []
        for ckpt in [true, false] {
            let m = try LoRAModel(weights: weights, batchSize: 2, seqLen: 7, rank: 4, alpha: 8, dropout: 0.1, seed: 3,
                                  gradientCheckpointing: ckpt)
            randomizeB(m, seed: 4)
            let r = try m.forwardBackward(inputIds: batch.ids, labels: batch.labels, segmentStarts: batch.segments,
                                          lossScale: 1 / Float(13))
            losses.append(r.lossSum)
            results.append(flatGradients(m))
        }
        #expect(losses[0] == losses[1])
        #expect(results[0] == results[1])
        #expect(results[0].contains { $0 != 0 })
    }

    /// Gradients accumulate over calls: two identical calls give twice one call's gradients.
    @Test func gradientsAccumulate() throws {
        let cfg = try tinyConfig()
        let m = try LoRAModel(weights: tinyWeights(cfg, seed: 2), batchSize: 1, seqLen: 6, rank: 2, alpha: 4, seed: 1)
        randomizeB(m, seed: 8)
        let batch = tinyBatch(B: 1, T: 6, V: cfg.vocabularySize, packed: false, seed: 2)
        _ = try m.forwardBackward(inputIds: batch.ids, labels: batch.labels, lossScale: 1)
        let once = flatGradients(m)
        _ = try m.forwardBackward(inputIds: batch.ids, labels: batch.labels, lossScale: 1)
        let twice = flatGradients(m)
        #expect(zip(once, twice).allSatisfy { abs(2 * $0 - $1) <= 1e-6 * max(1, abs($1)) })
        m.zeroGradients()
        #expect(flatGradients(m).allSatisfy { $0 == 0 })
    }

    /// With B = 0 (PEFT init) the logits equal LlamaModel's and the loss equals the cross-entropy of
    /// those logits against the shifted labels.
    @Test func zeroBMatchesInferenceModel() throws {
        let cfg = try tinyConfig(tied: false)
        let weights = tinyWeights(cfg, seed: 6)
        let B = 2, T = 7, V = cfg.vocabularySize
        let m = try LoRAModel(weights: weights, batchSize: B, seqLen: T, rank: 4, alpha: 8, seed: 1)
        let batch = tinyBatch(B: B, T: T, V: V, packed: false, seed: 9)
        let (sum, count) = try m.forward(inputIds: batch.ids, labels: batch.labels)
        let ours = Array(m.lastLogits)
        let ref = try LlamaModel(config: cfg, weights: weights, maxContext: T)
        var expectedSum = 0.0, expectedCount = 0
        for b in 0..<B {
            ref.reset()
            let row = Array(batch.ids[(b * T)..<((b + 1) * T)])
            let logits = try ref.forward(tokens: row, startPosition: 0, logits: .all)
            let mine = Array(ours[(b * T * V)..<((b + 1) * T * V)])
            #expect(maxAbsDiff(mine, logits) < 1e-5)
            for t in 0..<(T - 1) where batch.labels[b * T + t + 1] != -100 {
                let r = logits[(t * V)..<((t + 1) * V)].map(Double.init)
                let mx = r.max()!
                let lse = mx + log(r.reduce(0) { $0 + exp($1 - mx) })
                expectedSum += lse - r[batch.labels[b * T + t + 1]]
                expectedCount += 1
            }
        }
        #expect(count == expectedCount)
        #expect(abs(sum - expectedSum) < 1e-4 * expectedSum)
    }

    /// A 4-bit (NF4) base gives the loss and gradients of the float32 model built from its dequantized weights.
    @Test func fourBitBaseEqualsDequantizedTwin() throws {
        let cfg = try tinyConfig()
        let quantized = tinyWeights(cfg, seed: 12)
        let twin = tinyWeights(cfg, seed: 12)
        for l in 0..<cfg.layerCount {
            var layer = quantized.layers[l]
            var lin = layer.linearWeights
            for (i, w) in lin.enumerated() {
                guard case let .dense(p, rows, cols) = w else { Issue.record("expected dense"); continue }
                let q = try QuantizedTensor4Bit.quantize(Array(UnsafeBufferPointer(start: p, count: rows * cols)),
                                                         shape: [rows, cols], quantType: .nf4, blocksize: 64)
                lin[i] = .quantized(q)
                guard case let .dense(tp, _, _) = twin.layers[l].linearWeights[i] else { continue }
                q.dequantize(start: 0, into: UnsafeMutableBufferPointer(start: tp, count: rows * cols))
            }
            layer.wq = lin[0]; layer.wk = lin[1]; layer.wv = lin[2]; layer.wo = lin[3]
            layer.wGate = lin[4]; layer.wUp = lin[5]; layer.wDown = lin[6]
            quantized.layers[l] = layer
        }
        #expect(quantized.layers.allSatisfy { $0.linearWeights.allSatisfy { $0.quantizedTensor != nil } })
        let batch = tinyBatch(B: 2, T: 7, V: cfg.vocabularySize, packed: true, seed: 13)
        var losses: [Double] = [], grads: [[Float]] = []
        for w in [quantized, twin] {
            let m = try LoRAModel(weights: w, batchSize: 2, seqLen: 7, rank: 4, alpha: 8, seed: 2)
            randomizeB(m, seed: 5)
            let r = try m.forwardBackward(inputIds: batch.ids, labels: batch.labels, segmentStarts: batch.segments,
                                          lossScale: 1)
            losses.append(r.lossSum / Double(r.tokenCount))
            grads.append(flatGradients(m))
        }
        #expect(abs(losses[0] - losses[1]) < 1e-4)
        #expect(maxAbsDiff(grads[0], grads[1]) < 1e-4)
        // and the quantization changed the model
        let dense = try LoRAModel(weights: tinyWeights(cfg, seed: 12), batchSize: 2, seqLen: 7, rank: 4, alpha: 8, seed: 2)
        randomizeB(dense, seed: 5)
        let d = try dense.forward(inputIds: batch.ids, labels: batch.labels, segmentStarts: batch.segments)
        #expect(abs(d.lossSum / Double(d.tokenCount) - losses[0]) > 1e-4)
    }

    /// A few plain SGD steps on one batch (PEFT init, B = 0) lower the loss.
    @Test func sgdLowersLoss() throws {
        let cfg = try tinyConfig()
        let m = try LoRAModel(weights: tinyWeights(cfg, seed: 21), batchSize: 2, seqLen: 7, rank: 4, alpha: 8, seed: 4)
        let batch = tinyBatch(B: 2, T: 7, V: cfg.vocabularySize, packed: true, seed: 22)
        var history: [Double] = []
        for _ in 0..<8 {
            m.zeroGradients()
            let r = try m.forwardBackward(inputIds: batch.ids, labels: batch.labels, segmentStarts: batch.segments,
                                          lossScale: 1 / Float(13))
            history.append(r.lossSum / Double(r.tokenCount))
            for (p, g) in zip(m.parameters, m.gradients) { for j in 0..<p.count { p[j] -= 1.0 * g[j] } }
        }
        #expect(history.last! < history.first! - 0.1, "\(history)")
    }

    /// Computing only the first rowLength positions of each row (padding dropped, inferred from the
    /// labels or given) gives the loss and gradients of the full-length step; forward's logits are the
    /// full ones' first rows; a trained label beyond rowLength is rejected.
    @Test func shorterRowLengthGivesTheFullLengthResult() throws {
        let cfg = try tinyConfig()
        let weights = tinyWeights(cfg, seed: 31)
        let B = 2, T = 16, V = cfg.vocabularySize
        var rng = LoRARandom(seed: 32)
        let ids = (0..<(B * T)).map { _ in Int(rng.next() % UInt64(V)) }   // "padding" is random too
        var labels = [Int](repeating: -100, count: B * T)
        for t in 2..<5 { labels[t] = ids[t] }                 // row 0: 5 real tokens, 2 prompt
        for t in 1..<9 { labels[T + t] = ids[T + t] }         // row 1: 9 real tokens
        var results: [(Double, Int, [Float])] = []
        for ckpt in [true, false] {
            for rowLength in [T, nil, 9] {
                let m = try LoRAModel(weights: weights, batchSize: B, seqLen: T, rank: 3, alpha: 6, dropout: 0.1, seed: 4,
                                      gradientCheckpointing: ckpt)
                randomizeB(m, seed: 6)
                if rowLength == nil { #expect(m.inferredRowLength(labels: labels) == 8) }
                let r = try m.forwardBackward(inputIds: ids, labels: labels, lossScale: 0.1, rowLength: rowLength)
                results.append((r.lossSum, r.tokenCount, flatGradients(m)))
            }
        }
        let ref = results[0]
        #expect(ref.1 == 3 + 8 && ref.0 > 0)             // targets at positions 1…3 and 0…7
        for r in results.dropFirst() {
            #expect(r.1 == ref.1)
            #expect(abs(r.0 - ref.0) < 1e-5 * ref.0)
            #expect(maxAbsDiff(r.2, ref.2) < 1e-5 * max(1, ref.2.map { abs($0) }.max()!))
        }
        let m = try LoRAModel(weights: weights, batchSize: B, seqLen: T, rank: 3, alpha: 6, seed: 4)
        randomizeB(m, seed: 6)
        _ = try m.forward(inputIds: ids, labels: labels)
        let full = Array(m.lastLogits)
        let short = try m.forward(inputIds: ids, labels: labels, rowLength: 8)
        #expect(short.tokenCount == ref.1)
        let part = Array(m.lastLogits)
        #expect(part.count == B * 8 * V)
        for b in 0..<B {
            #expect(maxAbsDiff(Array(part[(b * 8 * V)..<((b + 1) * 8 * V)]), Array(full[(b * T * V)..<((b * T + 8) * V)])) < 1e-5)
        }
        #expect(throws: LlamaError.self) {
            try m.forwardBackward(inputIds: ids, labels: labels, lossScale: 1, rowLength: 7)
        }
        #expect(throws: LlamaError.self) {
            try m.forwardBackward(inputIds: ids, labels: labels, lossScale: 1, rowLength: T + 1)
        }
    }

    /// PEFT names and shapes, and export → import round trip.
    @Test func adapterTensorsRoundTrip() throws {
        let cfg = try tinyConfig()
        let w = tinyWeights(cfg, seed: 1)
        let m = try LoRAModel(weights: w, batchSize: 1, seqLen: 4, rank: 2, alpha: 4, targets: [.q, .v, .down], seed: 1)
        randomizeB(m, seed: 2)
        let t = m.adapterTensors()
        #expect(t.count == 2 * 3 * 2)
        #expect(t[0].name == "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" && t[0].shape == [2, 24])
        #expect(t[3].name == "base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight" && t[3].shape == [12, 2])
        #expect(t[5].name == "base_model.model.model.layers.0.mlp.down_proj.lora_B.weight" && t[5].shape == [24, 2])
        let other = try LoRAModel(weights: w, batchSize: 1, seqLen: 4, rank: 2, alpha: 4, targets: [.q, .v, .down], seed: 9)
        try other.loadAdapterTensors(t)
        #expect(other.parameters.flatMap { Array($0) } == m.parameters.flatMap { Array($0) })
        #expect(throws: LlamaError.self) { try other.loadAdapterTensors(Array(t.dropLast())) }
    }
}
