import Foundation
import Llama

/// Errors of the benchmarks; each names the field or the figure and its value.
public enum BenchmarkError: Error, Equatable, CustomStringConvertible {
    case invalidOption(field: String, value: String, expected: String)
    /// The data packs into fewer rows than one batch needs.
    case notEnoughData(file: String, tokens: Int, rows: Int, needed: Int)
    /// The first step's loss is not the plain LlamaModel forward's loss: the number is refused.
    case referenceMismatch(loss: Double, reference: Double, tolerance: Double)
    case nonFiniteLoss(step: Int, loss: Double)
    /// Decoded logits in int16 arithmetic are not within tolerance of float32's: the number is refused.
    case decodeMismatch(arithmetic: String, error: Double, tolerance: Double)

    public var description: String {
        switch self {
        case let .invalidOption(field, value, expected): return "benchmark option \(field) = \(value): expected \(expected)"
        case let .notEnoughData(file, tokens, rows, needed):
            return "\(file): \(tokens) tokens pack into \(rows) rows, the batch needs \(needed)"
        case let .referenceMismatch(loss, reference, tolerance):
            return "refusing to report: first-step loss \(loss) differs from the reference forward's \(reference) by more than \(tolerance)"
        case let .nonFiniteLoss(step, loss): return "step \(step): loss is \(loss)"
        case let .decodeMismatch(arithmetic, error, tolerance):
            return "refusing to report: \(arithmetic) decode logits differ from float32's by \(error) of the largest logit (tolerance \(tolerance))"
        }
    }
}

/// Training rows made the way the peer script (train_peer.py) makes them: every example's tokens
/// back to back in one stream (no attention reset between examples), cut into rows of `seqLen`
/// (the tail that fills no row is dropped); step s uses rows (s·B + j) mod rows, j < B.
public struct PackedRows: Sendable, Equatable {
    public var seqLen: Int
    public var inputIds: [[Int]]
    public var labels: [[Int]]
    public var examples: Int
    public var streamTokens: Int
    /// Tokens with a label (not −100) in the stream.
    public var labelledTokens: Int
    public var source: String

    public var rowCount: Int { inputIds.count }

    /// Packs `examples`. With `labelToEnd` every token from an example's first labelled token to
    /// its end is labelled (the peer trains the completion plus the template's "<|im_end|>\n"; our
    /// chat masking stops after <|im_end|>).
    public static func pack(_ examples: [TrainingExample], seqLen: Int, labelToEnd: Bool = true,
                            source: String = "data") throws -> PackedRows {
        guard seqLen >= 2 else { throw BenchmarkError.invalidOption(field: "seqLen", value: "\(seqLen)", expected: "≥ 2") }
        var ids: [Int] = [], labels: [Int] = []
        let ignore = TrainingExample.ignoreIndex
        for e in examples {
            var l = e.labels
            if labelToEnd, let first = l.firstIndex(where: { $0 != ignore }) {
                for t in first..<l.count { l[t] = e.inputIds[t] }
            }
            ids += e.inputIds
            labels += l
        }
        let n = ids.count / seqLen
        return PackedRows(seqLen: seqLen,
                          inputIds: (0..<n).map { Array(ids[($0 * seqLen)..<(($0 + 1) * seqLen)]) },
                          labels: (0..<n).map { Array(labels[($0 * seqLen)..<(($0 + 1) * seqLen)]) },
                          examples: examples.count, streamTokens: ids.count,
                          labelledTokens: labels.reduce(0) { $0 + ($1 == ignore ? 0 : 1) }, source: source)
    }

    /// `rows` rows of seeded random ids in 0..<vocab, every token labelled (the peer's --data synthetic).
    public static func synthetic(vocabularySize: Int, seqLen: Int, rows: Int = 64, seed: UInt64 = 0) -> PackedRows {
        var rng = SeededRandom(seed: seed)
        let v = UInt64(max(vocabularySize, 1))
        let ids = (0..<rows).map { _ in (0..<seqLen).map { _ in Int(rng.next() % v) } }
        return PackedRows(seqLen: seqLen, inputIds: ids, labels: ids, examples: rows, streamTokens: rows * seqLen,
                          labelledTokens: rows * seqLen, source: "synthetic")
    }

    /// Flat [B · T] ids and labels of step `step` (0-based), and the number of trained positions
    /// (t + 1 < T with labels[t + 1] ≠ −100).
    public func batch(step: Int, batchSize: Int) -> (ids: [Int], labels: [Int], trained: Int) {
        var ids: [Int] = [], labels: [Int] = [], trained = 0
        for j in 0..<batchSize {
            let r = (step * batchSize + j) % max(rowCount, 1)
            ids += inputIds[r]
            labels += self.labels[r]
            for t in 1..<seqLen where self.labels[r][t] != TrainingExample.ignoreIndex { trained += 1 }
        }
        return (ids, labels, trained)
    }
}

public struct TrainBenchmarkOptions: Sendable, Equatable {
    public var seqLen = 256
    public var batchSize = 4
    public var loraRank = 16
    public var loraAlpha = 32.0
    public var steps = 5
    public var warmupSteps = 1
    public var learningRate = 2e-4
    /// The peer's default is off.
    public var gradientCheckpointing = false
    public var seed: UInt64 = 0
    /// |first-step loss − reference| allowed, relative to max(1, |reference|).
    public var lossTolerance = 1e-3
    /// Time one extra forward-only pass after the timed steps to split forward from backward.
    public var measureForward = true
    /// Calibrate the plan's time prediction with `MemoryPlan.Throughput.measure` before the
    /// reference forward (about a second; outside the timed steps); false: the fixed rates.
    public var probeThroughput = true
    public init() {}

    public func validate() throws {
        func check(_ ok: Bool, _ f: String, _ v: Any, _ e: String) throws {
            if !ok { throw BenchmarkError.invalidOption(field: f, value: "\(v)", expected: e) }
        }
        try check(seqLen >= 2, "seqLen", seqLen, "≥ 2")
        try check(batchSize >= 1, "batchSize", batchSize, "≥ 1")
        try check(loraRank >= 1, "loraRank", loraRank, "≥ 1")
        try check(loraAlpha > 0, "loraAlpha", loraAlpha, "> 0")
        try check(steps >= 1, "steps", steps, "≥ 1")
        try check(warmupSteps >= 0, "warmupSteps", warmupSteps, "≥ 0")
        try check(learningRate > 0, "learningRate", learningRate, "> 0")
        try check(lossTolerance >= 0, "lossTolerance", lossTolerance, "≥ 0")
    }
}

/// What `TrainBenchmark.run` measured. Times are medians over the timed steps.
public struct TrainBenchmarkResult: Sendable {
    public var options: TrainBenchmarkOptions
    /// B · T tokens per step divided by the median step time (as the peer reports).
    public var tokensPerSecond: Double
    public var secondsPerStep: Double
    public var stepSeconds: [Double]
    /// Forward-only pass (a separate timed call); backward = forward+backward − forward (it includes
    /// the recomputed forward with checkpointing); optimizer = zero-grad + AdamW step.
    public var forwardSeconds: Double?
    public var backwardSeconds: Double?
    public var forwardBackwardSeconds: Double
    public var optimizerSeconds: Double
    /// Peak RSS of the whole process (loading included).
    public var peakRSSBytes: Int?
    /// Peak RSS while the LoRA model is allocated and the optimizer steps run (what `MemoryPlan`
    /// predicts; the reference forward before and the forward-only split pass after are excluded,
    /// see `phasePeakRSSBytes`), if the kernel let the peak be reset.
    public var trainingPeakRSSBytes: Int?
    /// Peak RSS of each phase of `run` (Linux, where the peak can be reset per phase): "reference"
    /// (the plain forward), "model" (LoRAModel and AdamW allocated), "steps" (the optimizer steps:
    /// what `MemoryPlan` predicts), "forward" (the forward-only split pass, which materializes all
    /// logits [N, V]). Empty where the peak cannot be reset.
    public var phasePeakRSSBytes: [(phase: String, bytes: Int)] = []
    /// Resident bytes when `run` started (weights loaded, nothing of the run allocated).
    public var startRSSBytes: Int?
    public var lossFirst: Double
    public var lossLast: Double
    public var losses: [Double]
    /// Mean loss of the first batch by the plain `LlamaModel` forward.
    public var referenceLoss: Double
    public var tokensPerStep: Int
    public var trainedTokensFirstStep: Int
    public var trainableParameters: Int
    public var baseBytes: Int
    public var plan: MemoryPlan
    /// Wall seconds per op kind and phase (forward, recompute, backward), mean over the timed steps,
    /// from `LoRAModel.profile`. The fused LM head + cross-entropy (forward and dX in one call) is
    /// booked to the forward phase.
    public var opSeconds: [LoRAStepProfile.Kind: [LoRAStepProfile.Phase: Double]] = [:]
}

public enum TrainBenchmarkEvent: Sendable {
    case reference(loss: Double, seconds: Double)
    case step(index: Int, warmup: Bool, loss: Double, seconds: Double)
}

/// The training benchmark (`qlora bench train`): W untimed, then N timed optimizer steps of LoRA on
/// the frozen `weights`, with AdamW (lr, β = 0.9/0.999, ε 1e-8, no decay, no clipping — the peer's
/// torch.optim.AdamW), LoRA dropout 0, all seven projections targeted.
///
/// Before training, the first batch's mean loss is computed by the plain `LlamaModel` forward; the
/// first training step (LoRA B = 0, so the adapters add nothing) must reproduce it within
/// `lossTolerance`, or the run throws `BenchmarkError.referenceMismatch` instead of reporting.
public enum TrainBenchmark {
    public static func run(weights: LlamaWeights, rows: PackedRows, options o: TrainBenchmarkOptions,
                           inferenceContext: Int = 0,
                           progress: (TrainBenchmarkEvent) -> Void = { _ in }) throws -> TrainBenchmarkResult {
        try o.validate()
        guard rows.seqLen == o.seqLen else {
            throw BenchmarkError.invalidOption(field: "rows.seqLen", value: "\(rows.seqLen)", expected: "\(o.seqLen) (options.seqLen)")
        }
        guard rows.rowCount >= o.batchSize else {
            throw BenchmarkError.notEnoughData(file: rows.source, tokens: rows.streamTokens, rows: rows.rowCount, needed: o.batchSize)
        }
        let cfg = weights.config
        let peakBefore = ProcessMemory.peakResidentBytes()
        let startRSS = ProcessMemory.residentBytes()
        let canReset = ProcessMemory.resetPeak()
        var phases: [(phase: String, bytes: Int)] = []
        /// Ends a phase: records its peak, then resets the peak to the current RSS.
        func endPhase(_ name: String) {
            guard canReset, let p = ProcessMemory.peakResidentBytes() else { return }
            phases.append((name, p))
            ProcessMemory.resetPeak()
        }

        let planOptions = MemoryPlanOptions(batchSize: o.batchSize, seqLen: o.seqLen, rank: o.loraRank,
                                            gradientCheckpointing: o.gradientCheckpointing,
                                            inferenceContext: inferenceContext)
        let throughput = o.probeThroughput ? try MemoryPlan.Throughput.measure(config: cfg, options: planOptions)
            : .calibrated

        // Reference: the plain inference forward of the first batch (freed before training starts).
        let first = rows.batch(step: 0, batchSize: o.batchSize)
        let refStart = benchNow()
        let reference = try referenceLoss(weights: weights, ids: first.ids, labels: first.labels,
                                          batchSize: o.batchSize, seqLen: o.seqLen)
        progress(.reference(loss: reference, seconds: benchNow() - refStart))
        endPhase("reference")

        let model = try LoRAModel(weights: weights, batchSize: o.batchSize, seqLen: o.seqLen, rank: o.loraRank,
                                  alpha: Float(o.loraAlpha), targets: LoRATarget.allCases, dropout: 0,
                                  seed: o.seed, gradientCheckpointing: o.gradientCheckpointing)
        let optimizer = try AdamW(sizes: model.parameters.map(\.count), config: AdamWConfig(maxGradNorm: nil))
        endPhase("model")

        var losses: [Double] = [], stepSeconds: [Double] = [], fb: [Double] = [], opt: [Double] = []
        var last = first
        let profile = LoRAStepProfile()
        var opSeconds: [LoRAStepProfile.Kind: [LoRAStepProfile.Phase: Double]] = [:]
        model.profile = profile
        for s in 0..<(o.warmupSteps + o.steps) {
            let b = s == 0 ? first : rows.batch(step: s, batchSize: o.batchSize)
            last = b
            profile.reset()
            let t0 = benchNow()
            model.zeroGradients()
            let r = try model.forwardBackward(inputIds: b.ids, labels: b.labels, segmentStarts: nil,
                                              lossScale: Float(1.0 / Double(max(b.trained, 1))))
            let t1 = benchNow()
            _ = try optimizer.step(parameters: model.parameters, gradients: model.gradients, lr: o.learningRate)
            let t2 = benchNow()
            let loss = r.lossSum / Double(max(r.tokenCount, 1))
            guard loss.isFinite else { throw BenchmarkError.nonFiniteLoss(step: s + 1, loss: loss) }
            if s == 0 { try checkReference(loss: loss, reference: reference, tolerance: o.lossTolerance) }
            losses.append(loss)
            let warm = s < o.warmupSteps
            if !warm {
                stepSeconds.append(t2 - t0); fb.append(t1 - t0); opt.append(t2 - t1)
                for k in LoRAStepProfile.Kind.allCases {
                    for p in LoRAStepProfile.Phase.allCases {
                        opSeconds[k, default: [:]][p, default: 0] += profile.seconds(p, k) / Double(o.steps)
                    }
                }
            }
            progress(.step(index: s + 1, warmup: warm, loss: loss, seconds: t2 - t0))
        }
        endPhase("steps")
        model.profile = nil
        var forward: Double? = nil
        if o.measureForward {
            let t0 = benchNow()
            _ = try model.forward(inputIds: last.ids, labels: last.labels, segmentStarts: nil, training: false)
            forward = benchNow() - t0
            endPhase("forward")
        }
        let trainingPeak = phases.first(where: { $0.phase == "steps" })?.bytes
        let processPeak = [peakBefore, ProcessMemory.peakResidentBytes()].compactMap { $0 }.max()
        let base = MemoryPlan.baseBytes(weights)
        let quantized = weights.layers.first?.wq.quantizedTensor != nil
        let plan = MemoryPlan.estimate(config: cfg, baseBytes: base, options: planOptions, quantizedBase: quantized,
                                       q8Head: weights.lmHead.q8Matrix != nil, throughput: throughput)
        let step = median(stepSeconds), fbm = median(fb)
        return TrainBenchmarkResult(
            options: o, tokensPerSecond: Double(o.batchSize * o.seqLen) / max(step, 1e-12), secondsPerStep: step,
            stepSeconds: stepSeconds, forwardSeconds: forward, backwardSeconds: forward.map { max(fbm - $0, 0) },
            forwardBackwardSeconds: fbm, optimizerSeconds: median(opt), peakRSSBytes: processPeak,
            trainingPeakRSSBytes: trainingPeak, phasePeakRSSBytes: phases, startRSSBytes: startRSS, lossFirst: losses[0], lossLast: losses[losses.count - 1], losses: losses,
            referenceLoss: reference, tokensPerStep: o.batchSize * o.seqLen, trainedTokensFirstStep: first.trained,
            trainableParameters: model.trainableParameterCount, baseBytes: base, plan: plan, opSeconds: opSeconds)
    }

    /// Throws `referenceMismatch` when |loss − reference| > tolerance · max(1, |reference|).
    public static func checkReference(loss: Double, reference: Double, tolerance: Double) throws {
        let allowed = tolerance * max(1, abs(reference))
        guard loss.isFinite, reference.isFinite, abs(loss - reference) <= allowed else {
            throw BenchmarkError.referenceMismatch(loss: loss, reference: reference, tolerance: allowed)
        }
    }

    /// Mean next-token loss of flat [B · T] ids over positions t with labels[t + 1] ≠ −100 (within a
    /// row), by `LlamaModel.forward` with all logits — the inference path, independent of LoRAModel.
    public static func referenceLoss(weights: LlamaWeights, ids: [Int], labels: [Int], batchSize: Int,
                                     seqLen T: Int) throws -> Double {
        let model = try LlamaModel(config: weights.config, weights: weights, maxContext: T, chunkSize: min(128, T))
        let V = weights.config.vocabularySize
        var logits = [Float](repeating: 0, count: T * V)
        var sum = 0.0, count = 0
        for b in 0..<batchSize {
            let row = Array(ids[(b * T)..<((b + 1) * T)])
            try logits.withUnsafeMutableBufferPointer { out in
                try model.forward(tokens: row, startPosition: 0, logits: .all, into: out)
                for t in 0..<(T - 1) {
                    let y = labels[b * T + t + 1]
                    if y == TrainingExample.ignoreIndex { continue }
                    sum += PerplexityEvaluator.negativeLogLikelihood(out.baseAddress! + t * V, count: V, target: y)
                    count += 1
                }
            }
        }
        return count > 0 ? sum / Double(count) : 0
    }
}
