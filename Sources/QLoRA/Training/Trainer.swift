import Foundation
import Llama

/// Settings of a LoRA / QLoRA training run (qlora.py's defaults where it has them).
public struct TrainerOptions: Sendable, Equatable {
    public enum Optimizer: String, CaseIterable, Sendable {
        case adamw
        case adamw8bit = "adamw-8bit"
        case pagedAdamw = "paged-adamw"
    }

    /// Optimizer steps.
    public var steps: Int = 100
    /// When set, overrides `steps`: ⌈epochs × micro-batches per epoch / gradAccum⌉ optimizer steps.
    public var epochs: Double? = nil
    /// Rows per micro-batch.
    public var batchSize: Int = 1
    /// Micro-batches per optimizer step.
    public var gradAccum: Int = 1
    /// Row length T (every micro-batch is padded to exactly T).
    public var maxSeqLen: Int = 512
    public var learningRate: Double = 2e-4
    public var loraRank: Int = 16
    public var loraAlpha: Double = 32
    public var loraDropout: Double = 0.05
    public var useRSLoRA: Bool = false
    public var targets: [LoRATarget] = LoRATarget.allCases
    public var seed: UInt64 = 42
    /// Validation loss every this many steps (and after the last); 0 disables it.
    public var evalEvery: Int = 0
    public var lrSchedule: LRSchedule.Kind = .constant
    public var warmupSteps: Int = 0
    /// When set, overrides `warmupSteps`: ⌈ratio × total steps⌉.
    public var warmupRatio: Double? = nil
    /// Write a full checkpoint (adapter, optimizer, schedule, RNG, data cursor) every N steps; 0: only at the end.
    public var saveEvery: Int = 0
    /// Checkpoints kept (oldest deleted first; the best one is kept apart in DIR/best).
    public var saveTotalLimit: Int = 2
    /// Stop after this many validations without a better validation loss; 0: off.
    public var earlyStoppingPatience: Int = 0
    public var optimizer: Optimizer = .adamw
    public var weightDecay: Double = 0
    /// nil disables clipping.
    public var maxGradNorm: Double? = 0.3
    /// Pack examples into rows of exactly `maxSeqLen` tokens instead of length-grouped padded rows.
    public var pack: Bool = false
    public var trainOnPrompt: Bool = false
    /// Examples longer than `maxSeqLen`: truncated (default) or dropped; counted either way.
    public var dropLongExamples: Bool = false
    /// Skip (and count) malformed JSONL lines instead of failing on the first.
    public var skipBadLines: Bool = false
    public var gradientCheckpointing: Bool = true

    public init() {}

    /// Throws `TrainerError.invalidOption` naming the first bad field.
    public func validate() throws {
        func check(_ ok: Bool, _ field: String, _ value: Any, _ expected: String) throws {
            if !ok { throw TrainerError.invalidOption(field: field, value: "\(value)", expected: expected) }
        }
        try check(steps >= 1, "steps", steps, "≥ 1")
        try check(batchSize >= 1, "batchSize", batchSize, "≥ 1")
        try check(gradAccum >= 1, "gradAccum", gradAccum, "≥ 1")
        try check(maxSeqLen >= 2, "maxSeqLen", maxSeqLen, "≥ 2")
        try check(learningRate > 0 && learningRate.isFinite, "learningRate", learningRate, "> 0")
        try check(loraRank >= 1, "loraRank", loraRank, "≥ 1")
        try check(loraAlpha > 0 && loraAlpha.isFinite, "loraAlpha", loraAlpha, "> 0")
        try check(loraDropout >= 0 && loraDropout < 1, "loraDropout", loraDropout, "0 ≤ p < 1")
        try check(!targets.isEmpty, "targets", targets, "at least one module")
        try check(evalEvery >= 0, "evalEvery", evalEvery, "≥ 0")
        try check(warmupSteps >= 0, "warmupSteps", warmupSteps, "≥ 0")
        try check(weightDecay >= 0, "weightDecay", weightDecay, "≥ 0")
        if let g = maxGradNorm { try check(g > 0, "maxGradNorm", g, "> 0 or nil") }
    }

    /// How examples are tokenized for these options.
    public var dataOptions: TrainingDataOptions {
        TrainingDataOptions(maxSeqLen: maxSeqLen, longExamples: dropLongExamples ? .drop : .truncate,
                            trainOnPrompt: trainOnPrompt, skipBadLines: skipBadLines)
    }
}

public enum TrainerError: Error, Equatable, CustomStringConvertible {
    case invalidOption(field: String, value: String, expected: String)
    case nonFiniteLoss(step: Int, loss: Double)
    case emptyDataset(split: String)
    case cannotWrite(file: String, reason: String)

    public var description: String {
        switch self {
        case let .invalidOption(field, value, expected): return "training option \(field) = \(value): expected \(expected)"
        case let .nonFiniteLoss(step, loss): return "step \(step): loss is \(loss) (training diverged; try a lower learning rate)"
        case let .emptyDataset(split): return "the \(split) split has no examples with trained tokens"
        case let .cannotWrite(file, reason): return "\(file): cannot write: \(reason)"
        }
    }
}

/// One optimizer step's figures.
public struct TrainerStepMetrics: Equatable, Sendable {
    /// 1-based.
    public var step: Int
    /// Mean loss over the trained tokens of the accumulated batch.
    public var loss: Double
    public var learningRate: Double
    /// Global gradient norm before clipping.
    public var gradNorm: Double
    /// Real (non-padding) tokens of the step, per second of wall time.
    public var tokensPerSecond: Double
    public var trainedTokens: Int
}

public enum TrainerEvent: Equatable, Sendable {
    /// `firstStep` > 1 when resuming.
    case started(trainExamples: Int, validExamples: Int, trainableParameters: Int, firstStep: Int, totalSteps: Int)
    case step(TrainerStepMetrics)
    case validation(step: Int, loss: Double, tokens: Int, isBest: Bool)
    case checkpoint(step: Int, directory: String)
    /// Training ended before `totalSteps`.
    case stopped(step: Int, reason: StopReason)
    case saved(directory: String)

    public enum StopReason: Equatable, Sendable {
        /// `shouldStop` returned true (Ctrl-C in the CLI).
        case interrupted
        /// `earlyStoppingPatience` validations without improvement.
        case earlyStopping(bestStep: Int, bestLoss: Double)
    }
}

public struct TrainerSummary: Equatable, Sendable {
    public var steps: Int
    public var firstLoss: Double
    public var finalLoss: Double
    public var finalValidLoss: Double?
    public var trainedTokens: Int
    public var seconds: Double
    public var outputDirectory: String
    public var trainableParameters: Int
}

/// Trains LoRA adapters on a frozen base (float32 or 4-bit) and writes a PEFT adapter plus
/// `metrics.jsonl` into the output directory. Each optimizer step draws `gradAccum` micro-batches,
/// scales every micro-batch's loss gradient by 1 / (trained tokens of all of them), then takes an
/// AdamW step at the scheduled learning rate. Never prints: progress goes to the callback.
public final class Trainer {
    public let bundle: ModelBundle
    public let options: TrainerOptions
    public let outputDirectory: String
    public let model: LoRAModel
    private let train: [TrainingExample]
    private let valid: [TrainingExample]

    public static let metricsFileName = "metrics.jsonl"

    /// `data` is tokenized with `options.dataOptions` (see `loadData`).
    public init(bundle: ModelBundle, data: TrainingDataSplits, options: TrainerOptions, outputDirectory: String) throws {
        try options.validate()
        let trainable = data.train.examples.filter { $0.trainedTokenCount > 0 && $0.count <= options.maxSeqLen }
        guard !trainable.isEmpty else { throw TrainerError.emptyDataset(split: "train") }
        train = trainable
        valid = (data.valid?.examples ?? []).filter { $0.count > 0 && $0.count <= options.maxSeqLen }
        self.bundle = bundle
        self.options = options
        self.outputDirectory = outputDirectory
        model = try LoRAModel(weights: bundle.model.weights, batchSize: options.batchSize, seqLen: options.maxSeqLen,
                              rank: options.loraRank, alpha: Float(options.loraAlpha), targets: options.targets,
                              dropout: Float(options.loraDropout), useRSLoRA: options.useRSLoRA, seed: options.seed,
                              gradientCheckpointing: options.gradientCheckpointing)
    }

    /// Loads a JSONL file or a folder (train.jsonl, optional valid.jsonl) with the bundle's tokenizer.
    public static func loadData(path: String, bundle: ModelBundle, options: TrainerOptions) throws -> TrainingDataSplits {
        let tokenizer = try TrainingTokenizer(bundle: bundle.tokenizer, options: options.dataOptions)
        return try TrainingData.load(path: path, tokenizer: tokenizer)
    }

    private var padTokenId: Int { bundle.tokenizer.eosTokenIds.first ?? 0 }

    private func batching(batchSize: Int, mode: BatchingOptions.Mode) -> BatchingOptions {
        BatchingOptions(batchSize: batchSize, maxSeqLen: options.maxSeqLen, mode: mode, padTokenId: padTokenId,
                        seed: options.seed)
    }

    /// A batch as the model's flat [batchSize · T] arrays: rows padded to T, missing rows all padding.
    private func flatten(_ batch: TrainingBatch) -> (ids: [Int], labels: [Int], starts: [Int], realTokens: Int) {
        let T = options.maxSeqLen, B = options.batchSize, ignore = TrainingExample.ignoreIndex
        var ids = [Int](repeating: padTokenId, count: B * T)
        var labels = [Int](repeating: ignore, count: B * T)
        var starts = [Int](repeating: 0, count: B * T)
        for b in 0..<B { for t in 0..<T { starts[b * T + t] = t } }
        var real = 0
        for (b, row) in batch.rows.prefix(B).enumerated() {
            let n = min(row.inputIds.count, T)
            for t in 0..<n {
                ids[b * T + t] = row.inputIds[t]
                labels[b * T + t] = row.labels[t]
                starts[b * T + t] = row.segmentStarts[t]
            }
            real += min(row.length, T)
        }
        return (ids, labels, starts, real)
    }

    /// Mean loss over the valid split (nil without one).
    public func validationLoss() throws -> (loss: Double, tokens: Int)? {
        guard !valid.isEmpty else { return nil }
        var stream = try BatchStream(examples: valid, options: batching(batchSize: options.batchSize, mode: .groupByLength))
        var sum = 0.0, count = 0
        for _ in 0..<stream.batchesPerEpoch {
            guard let batch = stream.next() else { break }
            let f = flatten(batch)
            let r = try model.forward(inputIds: f.ids, labels: f.labels, segmentStarts: f.starts, training: false)
            sum += r.lossSum; count += r.tokenCount
        }
        return count > 0 ? (sum / Double(count), count) : nil
    }

    /// Runs `options.steps` optimizer steps, then writes the adapter. `resumeFrom` (an output folder
    /// or one of its checkpoint folders) continues a run bit-identically; `shouldStop` is polled
    /// between steps (Ctrl-C): when it returns true the trainer saves a checkpoint and returns.
    public func run(resumeFrom: String? = nil, progress: (TrainerEvent) -> Void = { _ in },
                    shouldStop: () -> Bool = { false }) throws -> TrainerSummary {
        let start = Date()
        let fm = FileManager.default
        do { try fm.createDirectory(atPath: outputDirectory, withIntermediateDirectories: true) } catch {
            throw TrainerError.cannotWrite(file: outputDirectory, reason: "\(error)")
        }
        let metricsPath = (outputDirectory as NSString).appendingPathComponent(Trainer.metricsFileName)
        guard fm.createFile(atPath: metricsPath, contents: nil), let metrics = FileHandle(forWritingAtPath: metricsPath) else {
            throw TrainerError.cannotWrite(file: metricsPath, reason: "cannot create")
        }
        defer { try? metrics.close() }
        func log(_ object: [String: Any]) throws {
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            do { try metrics.write(contentsOf: data + Data("\n".utf8)) } catch {
                throw TrainerError.cannotWrite(file: metricsPath, reason: "\(error)")
            }
        }

        progress(.started(trainExamples: train.count, validExamples: valid.count,
                          trainableParameters: model.trainableParameterCount, firstStep: 1, totalSteps: options.steps))
        var stream = try BatchStream(examples: train,
                                     options: batching(batchSize: options.batchSize, mode: options.pack ? .pack : .groupByLength))
        var optimizerConfig = AdamWConfig(weightDecay: options.weightDecay, maxGradNorm: options.maxGradNorm)
        switch options.optimizer {
        case .adamw: break
        case .adamw8bit: optimizerConfig.stateBits = 8
        case .pagedAdamw: optimizerConfig.paged = true
        }
        let optimizer = try AdamW(sizes: model.parameters.map(\.count), config: optimizerConfig)
        let schedule = LRSchedule(kind: options.lrSchedule, baseLR: options.learningRate, totalSteps: options.steps,
                                  warmupSteps: options.warmupSteps)

        var firstLoss = Double.nan, lastLoss = Double.nan, lastValid: Double? = nil, trainedTokens = 0
        for step in 1...options.steps {
            let stepStart = Date()
            // Collect the micro-batches first: the loss is normalized by all their trained tokens.
            var micro: [TrainingBatch] = []
            for _ in 0..<options.gradAccum {
                guard let b = stream.next() else { throw TrainerError.emptyDataset(split: "train") }
                micro.append(b)
            }
            let total = micro.reduce(0) { $0 + $1.labelTokenCount }
            let scale = Float(1.0 / Double(max(total, 1)))
            model.zeroGradients()
            var lossSum = 0.0, realTokens = 0
            for b in micro {
                let f = flatten(b)
                let r = try model.forwardBackward(inputIds: f.ids, labels: f.labels, segmentStarts: f.starts, lossScale: scale)
                lossSum += r.lossSum
                realTokens += f.realTokens
            }
            let loss = lossSum / Double(max(total, 1))
            guard loss.isFinite else { throw TrainerError.nonFiniteLoss(step: step, loss: loss) }
            let lr = schedule.learningRate(step: step - 1)
            let gradNorm = try optimizer.step(parameters: model.parameters, gradients: model.gradients, lr: lr)
            guard gradNorm.isFinite else { throw TrainerError.nonFiniteLoss(step: step, loss: gradNorm) }
            let seconds = max(Date().timeIntervalSince(stepStart), 1e-9)
            let tps = Double(realTokens) / seconds
            trainedTokens += total
            if step == 1 { firstLoss = loss }
            lastLoss = loss
            try log(["step": step, "split": "train", "loss": loss, "learning_rate": lr, "tokens_per_second": tps,
                     "grad_norm": gradNorm, "trained_tokens": total])
            progress(.step(TrainerStepMetrics(step: step, loss: loss, learningRate: lr, gradNorm: gradNorm,
                                              tokensPerSecond: tps, trainedTokens: total)))
            if options.evalEvery > 0, step % options.evalEvery == 0 || step == options.steps {
                let evalStart = Date()
                if let v = try validationLoss() {
                    guard v.loss.isFinite else { throw TrainerError.nonFiniteLoss(step: step, loss: v.loss) }
                    let evalTPS = Double(v.tokens) / max(Date().timeIntervalSince(evalStart), 1e-9)
                    lastValid = v.loss
                    try log(["step": step, "split": "valid", "loss": v.loss, "learning_rate": lr,
                             "tokens_per_second": evalTPS])
                    progress(.validation(step: step, loss: v.loss, tokens: v.tokens, isBest: false))
                }
            }
        }
        try saveAdapter()
        progress(.saved(directory: outputDirectory))
        return TrainerSummary(steps: options.steps, firstLoss: firstLoss, finalLoss: lastLoss, finalValidLoss: lastValid,
                              trainedTokens: trainedTokens, seconds: Date().timeIntervalSince(start),
                              outputDirectory: outputDirectory, trainableParameters: model.trainableParameterCount)
    }

    /// The current adapter as PEFT weights.
    public func adapterWeights() -> LoRAAdapterWeights {
        var byName: [String: (shape: [Int], values: [Float])] = [:]
        for t in model.adapterTensors() { byName[t.name] = (t.shape, t.values) }
        var layers: [[String: LoRAPair]] = []
        for layer in 0..<model.config.layerCount {
            var pairs: [String: LoRAPair] = [:]
            for target in model.targets {
                let a = byName[LoRAModel.peftName(layer: layer, target: target, isA: true)]!
                let b = byName[LoRAModel.peftName(layer: layer, target: target, isA: false)]!
                pairs[target.rawValue] = LoRAPair(a: LoRAMatrix(rows: a.shape[0], cols: a.shape[1], values: a.values),
                                                  b: LoRAMatrix(rows: b.shape[0], cols: b.shape[1], values: b.values))
            }
            layers.append(pairs)
        }
        let config = LoRAAdapterConfig(r: options.loraRank, loraAlpha: options.loraAlpha, loraDropout: options.loraDropout,
                                       useRSLoRA: options.useRSLoRA, targetModules: model.targets.map(\.rawValue),
                                       baseModelNameOrPath: bundle.path, chatTemplate: bundle.tokenizer.chatTemplate,
                                       eosTokenIds: bundle.tokenizer.eosTokenIds)
        return LoRAAdapterWeights(config: config, layers: layers)
    }

    /// Writes adapter_model.safetensors and adapter_config.json (each atomically) into the output directory.
    public func saveAdapter() throws {
        try AdapterFile.write(adapterWeights(), to: outputDirectory)
    }
}
