import ArgumentParser
import Foundation
import Llama
import QLoRA

extension LRSchedule.Kind: ExpressibleByArgument {}
extension TrainerOptions.Optimizer: ExpressibleByArgument {}

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train LoRA adapters on a frozen (by default NF4-quantized) base and write a PEFT adapter.",
        discussion: """
        Every setting can also come from a YAML file (--config FILE): keys are the long flag names \
        (learning-rate: 2e-4, or learning_rate), on/off flags take true or false, a list of target \
        modules may be a YAML list. Flags on the command line override the file. Ctrl-C stops after \
        the current step and saves; a second Ctrl-C quits at once. At the end the losses are drawn \
        in OUTPUT/loss.svg.
        """)

    @Option(help: "A YAML file of settings keyed by flag name; flags on the command line override it.")
    var config: String?
    @OptionGroup var modelArguments: ModelArguments
    @Option(help: "A JSONL file (messages / prompt+completion / text records) or a folder with train.jsonl and optional valid.jsonl.")
    var data: String
    @Option(help: "Output folder: metrics.jsonl, adapter_model.safetensors, adapter_config.json, loss.svg, checkpoints.") var output: String
    @Option(help: "Optimizer steps (default: 100).") var steps: Int?
    @Option(help: "Memory budget, e.g. 6GB: lower the batch size (raising --grad-accum to keep the effective batch) and turn on gradient checkpointing until the predicted peak RSS fits (see qlora plan).")
    var maxMemory: String?
    @Option(help: "Train for this many passes over the data instead of --steps (fractions allowed).") var epochs: Double?
    @Option(help: "Rows per micro-batch.") var batchSize: Int = 1
    @Option(help: "Micro-batches per optimizer step.") var gradAccum: Int = 1
    @Option(help: "Tokens per row (longer examples are truncated).") var maxSeqLen: Int = 512
    @Option(help: "Peak learning rate.") var learningRate: Double = 2e-4
    @Option(help: "LoRA rank r.") var loraRank: Int = 16
    @Option(help: "LoRA alpha (scale = alpha / r).") var loraAlpha: Double = 32
    @Option(help: "Dropout on the LoRA input.") var loraDropout: Double = 0.05
    @Option(help: "Random seed (LoRA init, data order, dropout).") var seed: UInt64 = 42
    @Option(help: "Validation loss every N steps and after the last (0: off; needs valid.jsonl).") var evalEvery: Int = 0
    @Option(help: "constant, cosine or linear.") var lrSchedule: LRSchedule.Kind = .constant
    @Option(help: "Linear warmup steps.") var warmupSteps: Int = 0
    @Option(help: "Warmup as a fraction of all steps (overrides --warmup-steps).") var warmupRatio: Double?
    @Option(help: "Save a full checkpoint (adapter, optimizer, schedule, data position) every N steps (0: only the final adapter).")
    var saveEvery: Int = 0
    @Option(help: "Checkpoints to keep; older ones are deleted (the best one is kept apart in OUTPUT/best).")
    var saveTotalLimit: Int = 2
    @Option(help: "Stop after N validations without a better validation loss (0: off; needs --eval-every).")
    var earlyStoppingPatience: Int = 0
    @Option(help: "Continue a run from its output folder or one of its checkpoint folders.") var resume: String?
    @Option(help: "adamw, adamw-8bit or paged-adamw.") var optimizer: TrainerOptions.Optimizer = .adamw
    @Option(help: "Clip the global gradient norm to this (0: off).") var maxGradNorm: Double = 0.3
    @Flag(inversion: .prefixedNo, help: "Pack examples into full rows of --max-seq-len tokens.") var pack = false
    @Flag(inversion: .prefixedNo, help: "Also train on prompt / user / system tokens.") var trainOnPrompt = false
    @Flag(inversion: .prefixedNo, help: "Recompute each layer's activations in the backward pass (less memory; --no-grad-checkpoint is faster).")
    var gradCheckpoint = true
    @Option(help: "Comma-separated modules to adapt, in Hugging Face spelling (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj), or all-linear.")
    var targetModules: String = "all-linear"
    @Flag(inversion: .prefixedNo, help: "Rank-stabilized LoRA: scale alpha / sqrt(r) instead of alpha / r.") var rslora = false
    @Option(help: "Decoupled AdamW weight decay.") var weightDecay: Double = 0
    @Flag(inversion: .prefixedNo, help: "Drop examples longer than --max-seq-len instead of truncating them.") var dropLongExamples = false
    @Flag(inversion: .prefixedNo, help: "Skip malformed JSONL lines (counted) instead of stopping at the first.") var skipBadLines = false
    @Flag(inversion: .prefixedNo, help: "Write OUTPUT/loss.svg at the end.") var plot = true
    @Flag(help: "Print the settings (after --config and the flags) as JSON and exit without loading anything.")
    var dryRun = false

    /// --target-modules parsed; throws naming the unknown module.
    static func parseTargets(_ text: String) throws -> [LoRATarget] {
        let names = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        if names == ["all-linear"] || names == ["all"] { return LoRATarget.allCases }
        var targets: [LoRATarget] = []
        for name in names {
            guard let t = LoRATarget(rawValue: name) ?? LoRATarget(rawValue: name + "_proj") else {
                throw ValidationError("--target-modules: unknown module '\(name)' (expected some of \(LoRATarget.allCases.map(\.rawValue).joined(separator: ",")) or all-linear)")
            }
            if !targets.contains(t) { targets.append(t) }
        }
        guard !targets.isEmpty else { throw ValidationError("--target-modules is empty") }
        return LoRATarget.allCases.filter(targets.contains)
    }

    var trainerOptions: TrainerOptions {
        var o = TrainerOptions()
        o.steps = steps ?? o.steps; o.epochs = epochs
        o.batchSize = batchSize; o.gradAccum = gradAccum; o.maxSeqLen = maxSeqLen
        o.learningRate = learningRate; o.loraRank = loraRank; o.loraAlpha = loraAlpha; o.loraDropout = loraDropout
        o.seed = seed; o.evalEvery = evalEvery; o.lrSchedule = lrSchedule
        o.warmupSteps = warmupSteps; o.warmupRatio = warmupRatio
        o.saveEvery = saveEvery; o.saveTotalLimit = saveTotalLimit; o.earlyStoppingPatience = earlyStoppingPatience
        o.optimizer = optimizer; o.maxGradNorm = maxGradNorm > 0 ? maxGradNorm : nil
        o.pack = pack; o.trainOnPrompt = trainOnPrompt; o.gradientCheckpointing = gradCheckpoint
        o.targets = (try? TrainCommand.parseTargets(targetModules)) ?? LoRATarget.allCases
        o.useRSLoRA = rslora; o.weightDecay = weightDecay
        o.dropLongExamples = dropLongExamples; o.skipBadLines = skipBadLines
        return o
    }

    func validate() throws {
        _ = try TrainCommand.parseTargets(targetModules)
        do { try trainerOptions.validate() } catch let e as TrainerError { throw ValidationError(e.description) }
        if maxGradNorm < 0 { throw ValidationError("--max-grad-norm must be ≥ 0 (got \(maxGradNorm))") }
        if let e = epochs, !(e > 0 && e.isFinite) { throw ValidationError("--epochs must be > 0 (got \(e))") }
        if let r = warmupRatio, !(r >= 0 && r < 1) { throw ValidationError("--warmup-ratio must be in [0, 1) (got \(r))") }
        if saveEvery < 0 { throw ValidationError("--save-every must be ≥ 0 (got \(saveEvery))") }
        if saveTotalLimit < 1 { throw ValidationError("--save-total-limit must be ≥ 1 (got \(saveTotalLimit))") }
        if earlyStoppingPatience < 0 {
            throw ValidationError("--early-stopping-patience must be ≥ 0 (got \(earlyStoppingPatience))")
        }
        if earlyStoppingPatience > 0 && evalEvery == 0 {
            throw ValidationError("--early-stopping-patience needs --eval-every (validation losses to compare)")
        }
    }

    /// The resolved settings, as --dry-run prints them (keys are the flag names).
    var settings: [String: Any] {
        let o = trainerOptions
        var s: [String: Any] = [
            "model": modelArguments.model, "quantize": modelArguments.quantize.rawValue,
            "double-quant": !modelArguments.noDoubleQuant, "blocksize": modelArguments.blocksize,
            "context-length": modelArguments.contextLength ?? NSNull(),
            "data": data, "output": output, "config": config ?? NSNull(), "resume": resume ?? NSNull(),
            "steps": o.steps, "epochs": o.epochs ?? NSNull(), "batch-size": o.batchSize, "grad-accum": o.gradAccum,
            "max-seq-len": o.maxSeqLen, "learning-rate": o.learningRate, "lora-rank": o.loraRank,
            "lora-alpha": o.loraAlpha, "lora-dropout": o.loraDropout, "seed": o.seed, "eval-every": o.evalEvery,
            "lr-schedule": o.lrSchedule.rawValue, "warmup-steps": o.warmupSteps, "warmup-ratio": o.warmupRatio ?? NSNull(),
            "save-every": o.saveEvery, "save-total-limit": o.saveTotalLimit,
            "early-stopping-patience": o.earlyStoppingPatience, "optimizer": o.optimizer.rawValue,
            "max-grad-norm": o.maxGradNorm ?? 0, "pack": o.pack, "train-on-prompt": o.trainOnPrompt,
            "grad-checkpoint": o.gradientCheckpointing, "target-modules": o.targets.map(\.rawValue),
            "rslora": o.useRSLoRA, "weight-decay": o.weightDecay, "drop-long-examples": o.dropLongExamples,
            "skip-bad-lines": o.skipBadLines, "plot": plot,
        ]
        if let steps, epochs != nil { s["steps-overridden-by-epochs"] = steps }
        return s
    }

    func run() throws {
        if dryRun { print(jsonString(settings)); return }
        var options = trainerOptions
        if let resume, !FileManager.default.fileExists(atPath: resume) {
            throw ValidationError("--resume: \(resume) does not exist")
        }
        if let config { print("settings from \(config) (command-line flags override it)") }
        if let steps, let epochs { print("note: --epochs \(epochs) overrides --steps \(steps)") }
        let loadStart = Date()
        let bundle = try modelArguments.load(defaultContextLength: options.maxSeqLen)
        if let text = maxMemory {
            guard let budget = PlanCommand.parseBytes(text) else {
                throw ValidationError("--max-memory: cannot read '\(text)' (expected e.g. 6GB, 6GiB, 800MB)")
            }
            let planOptions = MemoryPlanOptions(batchSize: options.batchSize, seqLen: options.maxSeqLen, rank: options.loraRank,
                                                targets: options.targets, gradientCheckpointing: options.gradientCheckpointing,
                                                optimizerStateBits: options.optimizer == .adamw8bit ? 8 : 32,
                                                inferenceContext: options.maxSeqLen)
            guard let fit = MemoryPlan.fit(budget: budget, config: bundle.config, baseBytes: MemoryPlan.baseBytes(bundle.model.weights),
                                           options: planOptions, maxBatchSize: options.batchSize,
                                           quantizedBase: bundle.quantization.isQuantized,
                                           q8Head: bundle.model.weights.lmHead.q8Matrix != nil) else {
                throw ValidationError("--max-memory \(text): even batch size 1 with gradient checkpointing is predicted not to fit (see qlora plan)")
            }
            let effective = options.batchSize * options.gradAccum
            options.batchSize = fit.batchSize
            options.gradAccum = (effective + fit.batchSize - 1) / fit.batchSize
            options.gradientCheckpointing = options.gradientCheckpointing || fit.gradientCheckpointing
            print("--max-memory \(text): batch size \(options.batchSize) × grad-accum \(options.gradAccum), gradient checkpointing \(options.gradientCheckpointing ? "on" : "off")")
        }
        let splits = try Trainer.loadData(path: data, bundle: bundle, options: options)
        print("loaded \(bundle.path) (\(bundle.quantization)) and \(data) in \(String(format: "%.1f", Date().timeIntervalSince(loadStart))) s")
        fflush(stdout)
        let trainer = try Trainer(bundle: bundle, data: splits, options: options, outputDirectory: output)

        let display = ProgressDisplay()
        let interrupt = InterruptHandler()
        interrupt.install(display: display)
        let summary: TrainerSummary
        do {
            defer { interrupt.uninstall(); display.finish() }
            summary = try trainer.run(resumeFrom: resume, progress: display.handle, shouldStop: { interrupt.requested })
        } catch {
            writePlot()   // the steps that did run
            throw error
        }
        if interrupt.requested && display.stopReason == nil {
            print("note: Ctrl-C came after the last step; the run finished")
        }
        let plotPath = writePlot()
        printSummary(summary, display: display, plotPath: plotPath)
    }

    /// Writes OUTPUT/loss.svg from OUTPUT/metrics.jsonl; returns its path, or nil (with a warning).
    @discardableResult
    func writePlot() -> String? {
        guard plot else { return nil }
        let metrics = (output as NSString).appendingPathComponent(Trainer.metricsFileName)
        let svg = (output as NSString).appendingPathComponent("loss.svg")
        guard FileManager.default.fileExists(atPath: metrics) else { return nil }
        do { try LossPlot.write(metricsFile: metrics, to: svg); return svg } catch {
            printError("warning: no loss plot: \(error)")
            return nil
        }
    }

    func printSummary(_ s: TrainerSummary, display: ProgressDisplay, plotPath: String?) {
        var lines: [String] = []
        var head = String(format: "done: %d steps in %@", s.steps, ProgressDisplay.duration(s.seconds) as NSString)
        if let stop = display.stopReason {
            switch stop.reason {
            case .interrupted: head += " (interrupted)"
            case .earlyStopping: head += " (early stopping)"
            }
        }
        head += String(format: ", loss %.4f → %.4f, %d trained tokens", s.firstLoss, s.finalLoss, s.trainedTokens)
        lines.append(head)
        if let v = s.finalValidLoss {
            var text = String(format: "validation loss %.4f", v)
            if let best = display.bestValidation { text += String(format: " (best %.4f at step %d)", best.loss, best.step) }
            lines.append(text)
        }
        if let peak = ProcessMemory.peakResidentBytes() { lines.append("peak memory (RSS): \(ProcessMemory.format(bytes: peak))") }
        let adapter = display.savedDirectory ?? s.outputDirectory
        lines.append("adapter: \(adapter) (adapter_model.safetensors, adapter_config.json)")
        if let checkpoint = display.lastCheckpoint { lines.append("last checkpoint: \(checkpoint) (continue with --resume \(s.outputDirectory))") }
        if let plotPath { lines.append("loss plot: \(plotPath)") }
        lines.append("metrics: \((s.outputDirectory as NSString).appendingPathComponent(Trainer.metricsFileName))")
        print(lines.joined(separator: "\n"))
    }
}
