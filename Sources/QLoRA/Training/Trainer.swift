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
    /// Checkpoints kept (oldest deleted first; the best one is kept apart in DIR/best); 0 keeps all.
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
        if let e = epochs { try check(e > 0 && e.isFinite, "epochs", e, "> 0 or nil") }
        if let r = warmupRatio { try check(r >= 0 && r <= 1, "warmupRatio", r, "0 ≤ ratio ≤ 1 or nil") }
        try check(saveEvery >= 0, "saveEvery", saveEvery, "≥ 0 (0: only at the end)")
        try check(saveTotalLimit >= 0, "saveTotalLimit", saveTotalLimit, "≥ 0 (0: keep all)")
        try check(earlyStoppingPatience >= 0, "earlyStoppingPatience", earlyStoppingPatience, "≥ 0")
        if earlyStoppingPatience > 0 {
            try check(evalEvery > 0, "evalEvery", evalEvery, "> 0 when earlyStoppingPatience is \(earlyStoppingPatience)")
        }
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
    /// Resuming with a setting (or data / base model) that differs from the checkpoint's.
    case resumeMismatch(file: String, field: String, checkpoint: String, current: String)
    case invalidCheckpoint(file: String, field: String, reason: String)
    /// `resumeFrom` is neither a checkpoint folder nor a run folder holding a complete checkpoint.
    case noCheckpoint(directory: String)

    public var description: String {
        switch self {
        case let .invalidOption(field, value, expected): return "training option \(field) = \(value): expected \(expected)"
        case let .nonFiniteLoss(step, loss): return "step \(step): loss is \(loss) (training diverged; try a lower learning rate)"
        case let .emptyDataset(split): return "the \(split) split has no examples with trained tokens"
        case let .cannotWrite(file, reason): return "\(file): cannot write: \(reason)"
        case let .resumeMismatch(file, field, checkpoint, current):
            return "\(file): cannot resume: \(field) is \(checkpoint) in the checkpoint but \(current) now"
        case let .invalidCheckpoint(file, field, reason): return "\(file): invalid checkpoint: \(field): \(reason)"
        case let .noCheckpoint(directory):
            return "\(directory): no complete checkpoint to resume from (expected a checkpoint folder or a folder holding checkpoint-<step>/)"
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
    /// The last optimizer step done (counting the resumed ones).
    public var steps: Int
    /// Loss of the run's first step (step 1, also when this call resumed later).
    public var firstLoss: Double
    public var finalLoss: Double
    public var finalValidLoss: Double?
    /// Trained tokens of all steps up to `steps` (resumed ones included).
    public var trainedTokens: Int
    /// Wall time of this call.
    public var seconds: Double
    public var outputDirectory: String
    public var trainableParameters: Int
    /// The first step this call trained (> 1 when resumed).
    public var firstStep: Int = 1
    /// The steps the run was set to reach (`options.steps`, or derived from `options.epochs`).
    public var totalSteps: Int = 0
    /// Why the run ended before `totalSteps` (nil: it reached them).
    public var stopReason: TrainerEvent.StopReason? = nil
    public var bestValidLoss: Double? = nil
    public var bestStep: Int? = nil
    /// The checkpoint folder written last.
    public var lastCheckpoint: String? = nil
}

/// Trains LoRA adapters on a frozen base (float32 or 4-bit) and writes a PEFT adapter plus
/// `metrics.jsonl` into the output directory. Each optimizer step draws `gradAccum` micro-batches,
/// scales every micro-batch's loss gradient by 1 / (trained tokens of all of them), then takes an
/// AdamW step at the scheduled learning rate. Checkpoints (see Checkpoint.swift for the layout) hold
/// everything a resumed run needs to continue bit-identically. Never prints: progress goes to the
/// callback.
public final class Trainer {
    public let bundle: ModelBundle
    public let options: TrainerOptions
    public let outputDirectory: String
    public let model: LoRAModel
    /// Optimizer steps of the run: `options.steps`, or ⌈epochs × batchesPerEpoch / gradAccum⌉.
    public let totalSteps: Int
    /// Warmup steps: `options.warmupSteps`, or ⌈warmupRatio × totalSteps⌉.
    public let warmupSteps: Int
    /// Micro-batches in one pass over the train split (of the first epoch, when packing).
    public let batchesPerEpoch: Int
    /// "sha256:<hex>" of the base model's files (`ModelBundle.contentHash(path:)`).
    public let baseModelHash: String
    /// "sha256:<hex>" of the tokenized train and valid examples: a resumed run must see the same data.
    public let dataFingerprint: String
    private let train: [TrainingExample]
    private let valid: [TrainingExample]
    /// PEFT names of `model.parameters`, in order.
    private let parameterNames: [String]

    public static let metricsFileName = "metrics.jsonl"

    /// `run` holds this for its whole duration: one training at a time per process. OpenBLAS's
    /// thread count is process-global (the kernels switch it between 1 and all cores) and its sgemm
    /// results depend on it in the last bits, so two trainings interleaving in one process would
    /// perturb each other and lose bit-identical resume.
    static let runLock = NSLock()

    /// `data` is tokenized with `options.dataOptions` (see `loadData`). Hashes the base model's files.
    public init(bundle: ModelBundle, data: TrainingDataSplits, options: TrainerOptions, outputDirectory: String) throws {
        try options.validate()
        let trainable = data.train.examples.filter { $0.trainedTokenCount > 0 && $0.count <= options.maxSeqLen }
        guard !trainable.isEmpty else { throw TrainerError.emptyDataset(split: "train") }
        train = trainable
        let validExamples = (data.valid?.examples ?? []).filter { $0.count > 0 && $0.count <= options.maxSeqLen }
        valid = validExamples
        if options.earlyStoppingPatience > 0, validExamples.isEmpty { throw TrainerError.emptyDataset(split: "valid") }
        self.bundle = bundle
        self.options = options
        self.outputDirectory = outputDirectory
        model = try LoRAModel(weights: bundle.model.weights, batchSize: options.batchSize, seqLen: options.maxSeqLen,
                              rank: options.loraRank, alpha: Float(options.loraAlpha), targets: options.targets,
                              dropout: Float(options.loraDropout), useRSLoRA: options.useRSLoRA, seed: options.seed,
                              gradientCheckpointing: options.gradientCheckpointing)
        parameterNames = model.adapterTensors().map(\.name)
        let probe = try BatchStream(examples: trainable,
                                    options: Trainer.batching(options, bundle: bundle, batchSize: options.batchSize,
                                                              mode: options.pack ? .pack : .groupByLength))
        batchesPerEpoch = probe.batchesPerEpoch
        var total = options.steps
        if let epochs = options.epochs {
            total = max(1, Int((epochs * Double(probe.batchesPerEpoch) / Double(options.gradAccum)).rounded(.up)))
        }
        totalSteps = total
        warmupSteps = options.warmupRatio.map { Int((Double(total) * $0).rounded(.up)) } ?? options.warmupSteps
        baseModelHash = try ModelBundle.contentHash(path: bundle.path)
        dataFingerprint = Trainer.fingerprint(train: trainable, valid: validExamples)
    }

    /// Loads a JSONL file or a folder (train.jsonl, optional valid.jsonl) with the bundle's tokenizer.
    public static func loadData(path: String, bundle: ModelBundle, options: TrainerOptions) throws -> TrainingDataSplits {
        let tokenizer = try TrainingTokenizer(bundle: bundle.tokenizer, options: options.dataOptions)
        return try TrainingData.load(path: path, tokenizer: tokenizer)
    }

    private var padTokenId: Int { bundle.tokenizer.eosTokenIds.first ?? 0 }

    private static func batching(_ options: TrainerOptions, bundle: ModelBundle, batchSize: Int,
                                 mode: BatchingOptions.Mode) -> BatchingOptions {
        BatchingOptions(batchSize: batchSize, maxSeqLen: options.maxSeqLen, mode: mode,
                        padTokenId: bundle.tokenizer.eosTokenIds.first ?? 0, seed: options.seed)
    }

    private func batching(batchSize: Int, mode: BatchingOptions.Mode) -> BatchingOptions {
        Trainer.batching(options, bundle: bundle, batchSize: batchSize, mode: mode)
    }

    /// SHA-256 over the token ids and labels of every example, train then valid.
    static func fingerprint(train: [TrainingExample], valid: [TrainingExample]) -> String {
        var h = SHA256Hasher()
        for (tag, split) in [(UInt8(ascii: "T"), train), (UInt8(ascii: "V"), valid)] {
            h.update([tag])
            var counts = [Int64(split.count)]
            counts.withUnsafeBytes { h.update($0) }
            for e in split {
                counts = [Int64(e.count)]
                counts.withUnsafeBytes { h.update($0) }
                let ids = e.inputIds.map { Int64($0).littleEndian }, labels = e.labels.map { Int64($0).littleEndian }
                ids.withUnsafeBytes { h.update($0) }
                labels.withUnsafeBytes { h.update($0) }
            }
        }
        return "sha256:" + h.finalizeHex()
    }

    /// The settings a resumed run must share with the checkpoint, in the order they are checked.
    public var resumeFingerprint: [(field: String, value: String)] {
        [("baseModelHash", baseModelHash), ("quantization", bundle.quantization.description),
         ("loraRank", String(options.loraRank)), ("loraAlpha", "\(options.loraAlpha)"), ("loraDropout", "\(options.loraDropout)"),
         ("useRSLoRA", "\(options.useRSLoRA)"), ("targets", model.targets.map(\.rawValue).joined(separator: ",")),
         ("batchSize", String(options.batchSize)), ("gradAccum", String(options.gradAccum)), ("maxSeqLen", String(options.maxSeqLen)),
         ("optimizer", options.optimizer.rawValue), ("seed", String(options.seed)), ("pack", "\(options.pack)"),
         ("trainOnPrompt", "\(options.trainOnPrompt)"), ("dropLongExamples", "\(options.dropLongExamples)"),
         ("data", dataFingerprint)]
    }

    /// Settings recorded in checkpoints for the record only (a resumed run may change them).
    private var recordedSettings: [String: String] {
        ["totalSteps": String(totalSteps), "epochs": options.epochs.map { "\($0)" } ?? "none",
         "learningRate": "\(options.learningRate)", "lrSchedule": options.lrSchedule.rawValue, "warmupSteps": String(warmupSteps),
         "weightDecay": "\(options.weightDecay)", "maxGradNorm": options.maxGradNorm.map { "\($0)" } ?? "none",
         "evalEvery": String(options.evalEvery), "saveEvery": String(options.saveEvery),
         "saveTotalLimit": String(options.saveTotalLimit), "earlyStoppingPatience": String(options.earlyStoppingPatience),
         "gradientCheckpointing": "\(options.gradientCheckpointing)",
         // Bit-identical resume also needs the same BLAS library and thread count.
         "cpuCores": String(coreCount)]
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
            // only the positions that hold a target (padding is not computed)
            let r = try model.forward(inputIds: f.ids, labels: f.labels, segmentStarts: f.starts, training: false,
                                      rowLength: model.inferredRowLength(labels: f.labels, segmentStarts: f.starts))
            sum += r.lossSum; count += r.tokenCount
        }
        return count > 0 ? (sum / Double(count), count) : nil
    }

    /// Where a run is (what a checkpoint records besides the tensors).
    private struct RunProgress {
        var step = 0
        var trainedTokens = 0
        var firstLoss: Double? = nil
        var lastLoss: Double? = nil
        var lastValid: Double? = nil
        var bestLoss: Double? = nil
        var bestStep: Int? = nil
        var sinceImprovement = 0
    }

    private func path(_ name: String) -> String { (outputDirectory as NSString).appendingPathComponent(name) }

    private func makeOptimizer() throws -> AdamW {
        var config = AdamWConfig(weightDecay: options.weightDecay, maxGradNorm: options.maxGradNorm)
        switch options.optimizer {
        case .adamw: break
        case .adamw8bit: config.stateBits = 8
        case .pagedAdamw: config.paged = true
        }
        return try AdamW(sizes: model.parameters.map(\.count), config: config)
    }

    /// Runs the optimizer steps up to `totalSteps`, then writes the adapter. `resumeFrom` (a run
    /// folder, meaning its newest complete checkpoint, or a checkpoint folder) continues that run
    /// bit-identically: the checkpoint's adapter, optimizer state, data cursor, dropout counter and
    /// best validation are restored, metrics.jsonl keeps its lines up to the checkpoint's step, and
    /// checkpoints newer than it are deleted. Settings that change the trained function or the data
    /// order must match (`resumeFingerprint`; `TrainerError.resumeMismatch` otherwise); steps,
    /// epochs, learning rate, schedule, evaluation and saving settings may change. Without
    /// `resumeFrom`, earlier checkpoint-*/ and best/ folders in the output directory are removed.
    ///
    /// After each step: validation every `evalEvery` steps and at the last step (an improvement
    /// rewrites DIR/best); early stopping after `earlyStoppingPatience` validations without
    /// improvement; `shouldStop` is polled (Ctrl-C); a checkpoint is written every `saveEvery` steps,
    /// at the last step and when stopping early, and the oldest beyond `saveTotalLimit` are deleted.
    /// A run that stops early still writes its adapter, emits `.saved` then `.stopped`, and returns
    /// normally with `summary.stopReason` set.
    public func run(resumeFrom: String? = nil, progress: (TrainerEvent) -> Void = { _ in },
                    shouldStop: () -> Bool = { false }) throws -> TrainerSummary {
        Trainer.runLock.lock()
        defer { Trainer.runLock.unlock() }
        let start = Date()
        let fm = FileManager.default
        do { try fm.createDirectory(atPath: outputDirectory, withIntermediateDirectories: true) } catch {
            throw TrainerError.cannotWrite(file: outputDirectory, reason: "\(error)")
        }
        Checkpoint.removeStaleTemporaries(in: outputDirectory)
        let optimizer = try makeOptimizer()
        let schedule = LRSchedule(kind: options.lrSchedule, baseLR: options.learningRate, totalSteps: totalSteps,
                                  warmupSteps: warmupSteps)
        var stream = try BatchStream(examples: train,
                                     options: batching(batchSize: options.batchSize, mode: options.pack ? .pack : .groupByLength))
        var p = RunProgress()
        var keptMetrics: [String] = []
        var lastCheckpointStep: Int? = nil
        var lastCheckpoint: String? = nil
        let metricsPath = path(Trainer.metricsFileName)

        if let resumeFrom {
            let dir = try Checkpoint.resolve(resumeFrom)
            let stateFile = (dir as NSString).appendingPathComponent(Checkpoint.stateFileName)
            let saved = try Checkpoint.readState(checkpoint: dir)
            for (field, value) in resumeFingerprint where saved.fingerprint[field] != value {
                throw TrainerError.resumeMismatch(file: stateFile, field: field, checkpoint: saved.fingerprint[field] ?? "missing",
                                                  current: value)
            }
            try loadAdapter(from: (dir as NSString).appendingPathComponent(AdapterFile.weightsFileName))
            try optimizer.readState(from: (dir as NSString).appendingPathComponent(Checkpoint.optimizerFileName), names: parameterNames)
            guard optimizer.step == saved.step else {
                throw TrainerError.invalidCheckpoint(file: stateFile, field: "step",
                                                     reason: "\(saved.step) but the optimizer state has \(optimizer.step) steps")
            }
            model.step = UInt64(saved.dropoutStep, radix: 16)!
            stream = try BatchStream(examples: train, options: stream.options, cursor: try saved.dataCursor.dataCursor(file: stateFile))
            p = RunProgress(step: saved.step, trainedTokens: saved.trainedTokens, firstLoss: saved.firstLoss, lastLoss: saved.lastLoss,
                            lastValid: saved.lastValidLoss, bestLoss: saved.bestValidLoss, bestStep: saved.bestStep,
                            sinceImprovement: saved.validationsSinceImprovement)
            // metrics.jsonl: ours, or the one of the run the checkpoint came from.
            let source = fm.fileExists(atPath: metricsPath) ? metricsPath
                : ((dir as NSString).deletingLastPathComponent as NSString).appendingPathComponent(Trainer.metricsFileName)
            keptMetrics = Trainer.metricLines(in: source, upTo: saved.step)
            // Checkpoints after the resumed one belong to an abandoned future.
            try removeCheckpoints { $0 > saved.step }
            if let bestInfo = Trainer.bestInfo(path(Checkpoint.bestDirectoryName)), bestInfo.step > saved.step {
                try? fm.removeItem(atPath: path(Checkpoint.bestDirectoryName))
            }
            let parent = URL(fileURLWithPath: dir).deletingLastPathComponent().standardizedFileURL.resolvingSymlinksInPath()
            if parent == URL(fileURLWithPath: outputDirectory).standardizedFileURL.resolvingSymlinksInPath() {
                lastCheckpointStep = saved.step
                lastCheckpoint = dir
            }
        } else {
            try removeCheckpoints { _ in true }
            try? fm.removeItem(atPath: path(Checkpoint.bestDirectoryName))
        }

        // metrics.jsonl: the kept lines (atomically), then appended to.
        do {
            let text = keptMetrics.map { $0 + "\n" }.joined()
            try Data(text.utf8).write(to: URL(fileURLWithPath: metricsPath), options: .atomic)
        } catch {
            throw TrainerError.cannotWrite(file: metricsPath, reason: "\(error)")
        }
        guard let metrics = FileHandle(forWritingAtPath: metricsPath) else {
            throw TrainerError.cannotWrite(file: metricsPath, reason: "cannot open")
        }
        defer { try? metrics.close() }
        do { try metrics.seekToEnd() } catch { throw TrainerError.cannotWrite(file: metricsPath, reason: "\(error)") }
        func log(_ object: [String: Any]) throws {
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            do { try metrics.write(contentsOf: data + Data("\n".utf8)) } catch {
                throw TrainerError.cannotWrite(file: metricsPath, reason: "\(error)")
            }
        }
        func checkpoint() throws {
            let dir = try writeCheckpoint(p, stream: stream, optimizer: optimizer, schedule: schedule)
            lastCheckpointStep = p.step
            lastCheckpoint = dir
            progress(.checkpoint(step: p.step, directory: dir))
            Checkpoint.prune(in: outputDirectory, keep: options.saveTotalLimit)
        }

        let firstStep = p.step + 1
        progress(.started(trainExamples: train.count, validExamples: valid.count,
                          trainableParameters: model.trainableParameterCount, firstStep: firstStep, totalSteps: totalSteps))
        var stopReason: TrainerEvent.StopReason? = nil
        while p.step < totalSteps {
            let step = p.step + 1
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
            p.step = step
            p.trainedTokens += total
            if p.firstLoss == nil { p.firstLoss = loss }
            p.lastLoss = loss
            try log(["step": step, "split": "train", "loss": loss, "learning_rate": lr, "tokens_per_second": tps,
                     "grad_norm": gradNorm, "trained_tokens": total])
            progress(.step(TrainerStepMetrics(step: step, loss: loss, learningRate: lr, gradNorm: gradNorm,
                                              tokensPerSecond: tps, trainedTokens: total)))
            if options.evalEvery > 0, step % options.evalEvery == 0 || step == totalSteps {
                let evalStart = Date()
                if let v = try validationLoss() {
                    guard v.loss.isFinite else { throw TrainerError.nonFiniteLoss(step: step, loss: v.loss) }
                    let evalTPS = Double(v.tokens) / max(Date().timeIntervalSince(evalStart), 1e-9)
                    p.lastValid = v.loss
                    let isBest = p.bestLoss.map { v.loss < $0 } ?? true
                    if isBest {
                        p.bestLoss = v.loss; p.bestStep = step; p.sinceImprovement = 0
                        try writeBest(step: step, loss: v.loss)
                    } else {
                        p.sinceImprovement += 1
                    }
                    try log(["step": step, "split": "valid", "loss": v.loss, "learning_rate": lr,
                             "tokens_per_second": evalTPS, "is_best": isBest])
                    progress(.validation(step: step, loss: v.loss, tokens: v.tokens, isBest: isBest))
                    if options.earlyStoppingPatience > 0, p.sinceImprovement >= options.earlyStoppingPatience,
                       let bestStep = p.bestStep, let bestLoss = p.bestLoss {
                        stopReason = .earlyStopping(bestStep: bestStep, bestLoss: bestLoss)
                    }
                }
            }
            if stopReason == nil, step < totalSteps, shouldStop() { stopReason = .interrupted }
            if (options.saveEvery > 0 && step % options.saveEvery == 0) || step == totalSteps || stopReason != nil {
                try checkpoint()
            }
            if stopReason != nil { break }
        }
        if lastCheckpointStep != p.step { try checkpoint() }
        try saveAdapter()
        progress(.saved(directory: outputDirectory))
        if let reason = stopReason { progress(.stopped(step: p.step, reason: reason)) }
        return TrainerSummary(steps: p.step, firstLoss: p.firstLoss ?? .nan, finalLoss: p.lastLoss ?? .nan, finalValidLoss: p.lastValid,
                              trainedTokens: p.trainedTokens, seconds: Date().timeIntervalSince(start),
                              outputDirectory: outputDirectory, trainableParameters: model.trainableParameterCount,
                              firstStep: firstStep, totalSteps: totalSteps, stopReason: stopReason,
                              bestValidLoss: p.bestLoss, bestStep: p.bestStep, lastCheckpoint: lastCheckpoint)
    }

    // MARK: - Checkpoint files

    /// Builds DIR/checkpoint-<step> in a temporary folder (files fsynced) and renames it into place.
    private func writeCheckpoint(_ p: RunProgress, stream: BatchStream, optimizer: AdamW, schedule: LRSchedule) throws -> String {
        let name = Checkpoint.directoryPrefix + String(p.step)
        let temp = try Checkpoint.makeTemporary(in: outputDirectory, for: name)
        do {
            try AdapterFile.write(adapterWeights(), to: temp)
            try Checkpoint.sync((temp as NSString).appendingPathComponent(AdapterFile.configFileName))
            try optimizer.writeState(to: (temp as NSString).appendingPathComponent(Checkpoint.optimizerFileName), names: parameterNames)
            let state = TrainerCheckpointState(
                step: p.step, dataCursor: .init(stream.cursor), dropoutStep: TrainerCheckpointState.hex64(model.step),
                schedule: .init(kind: schedule.kind.rawValue, baseLearningRate: schedule.baseLR, totalSteps: schedule.totalSteps,
                                warmupSteps: schedule.warmupSteps),
                trainedTokens: p.trainedTokens, firstLoss: p.firstLoss, lastLoss: p.lastLoss, lastValidLoss: p.lastValid,
                bestValidLoss: p.bestLoss, bestStep: p.bestStep, validationsSinceImprovement: p.sinceImprovement,
                fingerprint: Dictionary(uniqueKeysWithValues: resumeFingerprint.map { ($0.field, $0.value) }),
                settings: recordedSettings)
            try Checkpoint.writeSynced(try Checkpoint.encode(state), to: (temp as NSString).appendingPathComponent(Checkpoint.stateFileName))
            try Checkpoint.commit(temp, in: outputDirectory, as: name)
        } catch {
            try? FileManager.default.removeItem(atPath: temp)
            throw error
        }
        return path(name)
    }

    /// Replaces DIR/best with the current adapter and best.json ({"step", "valid_loss"}).
    private func writeBest(step: Int, loss: Double) throws {
        let name = Checkpoint.bestDirectoryName
        let temp = try Checkpoint.makeTemporary(in: outputDirectory, for: name)
        do {
            try AdapterFile.write(adapterWeights(), to: temp)
            try Checkpoint.sync((temp as NSString).appendingPathComponent(AdapterFile.configFileName))
            let info = try JSONSerialization.data(withJSONObject: ["step": step, "valid_loss": loss], options: [.sortedKeys])
            try Checkpoint.writeSynced(info + Data("\n".utf8), to: (temp as NSString).appendingPathComponent(Checkpoint.bestInfoFileName))
            try Checkpoint.commit(temp, in: outputDirectory, as: name)
        } catch {
            try? FileManager.default.removeItem(atPath: temp)
            throw error
        }
    }

    /// (step, valid loss) of a best/ folder's best.json.
    static func bestInfo(_ directory: String) -> (step: Int, loss: Double)? {
        let file = (directory as NSString).appendingPathComponent(Checkpoint.bestInfoFileName)
        guard let data = FileManager.default.contents(atPath: file),
              let o = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any],
              let step = (o["step"] as? NSNumber)?.intValue, let loss = (o["valid_loss"] as? NSNumber)?.doubleValue else { return nil }
        return (step, loss)
    }

    /// Deletes the output directory's checkpoint-<step> folders (complete or not) whose step matches.
    private func removeCheckpoints(where matches: (Int) -> Bool) throws {
        let fm = FileManager.default
        for name in (try? fm.contentsOfDirectory(atPath: outputDirectory)) ?? [] {
            guard let s = Checkpoint.step(ofDirectoryNamed: name), matches(s) else { continue }
            let aside = path("\(Checkpoint.temporaryPrefix)delete-\(name)-\(getpid())")
            guard rename(path(name), aside) == 0 else {
                throw TrainerError.cannotWrite(file: path(name), reason: "cannot remove the stale checkpoint: \(String(cString: strerror(errno)))")
            }
            try? fm.removeItem(atPath: aside)
        }
    }

    /// The lines of a metrics.jsonl whose "step" is at most `step` (unparseable lines dropped).
    static func metricLines(in file: String, upTo step: Int) -> [String] {
        guard let data = FileManager.default.contents(atPath: file) else { return [] }
        return String(decoding: data, as: UTF8.self).split(separator: "\n").compactMap { line in
            guard let o = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any],
                  let s = (o["step"] as? NSNumber)?.intValue, s <= step else { return nil }
            return String(line)
        }
    }

    /// Loads the trainable tensors from an adapter_model.safetensors (all must be present, F32).
    private func loadAdapter(from file: String) throws {
        let st = try SafetensorsFile(path: file)
        var tensors: [(name: String, shape: [Int], values: [Float])] = []
        for name in parameterNames {
            guard st.contains(name) else { throw TrainerError.invalidCheckpoint(file: file, field: "tensor \(name)", reason: "missing") }
            let shape = try st.shape(of: name)
            var values = [Float](repeating: 0, count: shape.reduce(1, *))
            try values.withUnsafeMutableBufferPointer { try st.readFloat32(name, into: $0) }
            tensors.append((name, shape, values))
        }
        try model.loadAdapterTensors(tensors, file: file)
    }

    // MARK: - Adapter

    /// The current adapter as PEFT weights, with the base model's identity (path and content hash),
    /// its chat template and EOS ids.
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
                                       baseModelNameOrPath: bundle.path, baseModelHash: baseModelHash,
                                       chatTemplate: bundle.tokenizer.chatTemplate, eosTokenIds: bundle.tokenizer.eosTokenIds)
        return LoRAAdapterWeights(config: config, layers: layers)
    }

    /// Writes adapter_model.safetensors and adapter_config.json (each atomically) into the output directory.
    public func saveAdapter() throws {
        try AdapterFile.write(adapterWeights(), to: outputDirectory)
    }
}
