import ArgumentParser
import Foundation
import Llama
import QLoRA

extension LRSchedule.Kind: ExpressibleByArgument {}
extension TrainerOptions.Optimizer: ExpressibleByArgument {}

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train LoRA adapters on a frozen (by default NF4-quantized) base and write a PEFT adapter.")

    @OptionGroup var modelArguments: ModelArguments
    @Option(help: "A JSONL file (messages / prompt+completion / text records) or a folder with train.jsonl and optional valid.jsonl.")
    var data: String
    @Option(help: "Output folder: metrics.jsonl, adapter_model.safetensors, adapter_config.json.") var output: String
    @Option(help: "Optimizer steps.") var steps: Int = 100
    @Option(help: "Rows per micro-batch.") var batchSize: Int = 1
    @Option(help: "Micro-batches per optimizer step.") var gradAccum: Int = 1
    @Option(help: "Tokens per row (longer examples are truncated).") var maxSeqLen: Int = 512
    @Option(help: "Peak learning rate.") var learningRate: Double = 2e-4
    @Option(help: "LoRA rank r.") var loraRank: Int = 16
    @Option(help: "LoRA alpha (scale = alpha / r).") var loraAlpha: Double = 32
    @Option(help: "Dropout on the LoRA input.") var loraDropout: Double = 0.05
    @Option(help: "Random seed (LoRA init, data order, dropout).") var seed: UInt64 = 42
    @Option(help: "Validation loss every N steps (0: off; needs valid.jsonl).") var evalEvery: Int = 0
    @Option(help: "constant, cosine or linear.") var lrSchedule: LRSchedule.Kind = .constant
    @Option(help: "Linear warmup steps.") var warmupSteps: Int = 0
    @Option(help: "adamw, adamw-8bit or paged-adamw.") var optimizer: TrainerOptions.Optimizer = .adamw
    @Option(help: "Clip the global gradient norm to this (0: off).") var maxGradNorm: Double = 0.3
    @Flag(help: "Pack examples into full rows of --max-seq-len tokens.") var pack = false
    @Flag(help: "Also train on prompt / user / system tokens.") var trainOnPrompt = false
    @Flag(help: "Keep every layer's activations (faster, more memory).") var noGradCheckpoint = false
    @Option(help: "Comma-separated modules to adapt, in Hugging Face spelling (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj), or all-linear.")
    var targetModules: String = "all-linear"
    @Flag(help: "Rank-stabilized LoRA: scale alpha / sqrt(r) instead of alpha / r.") var rslora = false
    @Option(help: "Decoupled AdamW weight decay.") var weightDecay: Double = 0
    @Flag(help: "Drop examples longer than --max-seq-len instead of truncating them.") var dropLongExamples = false
    @Flag(help: "Skip malformed JSONL lines (counted) instead of stopping at the first.") var skipBadLines = false

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
        o.steps = steps; o.batchSize = batchSize; o.gradAccum = gradAccum; o.maxSeqLen = maxSeqLen
        o.learningRate = learningRate; o.loraRank = loraRank; o.loraAlpha = loraAlpha; o.loraDropout = loraDropout
        o.seed = seed; o.evalEvery = evalEvery; o.lrSchedule = lrSchedule; o.warmupSteps = warmupSteps
        o.optimizer = optimizer; o.maxGradNorm = maxGradNorm > 0 ? maxGradNorm : nil
        o.pack = pack; o.trainOnPrompt = trainOnPrompt; o.gradientCheckpointing = !noGradCheckpoint
        o.targets = (try? TrainCommand.parseTargets(targetModules)) ?? LoRATarget.allCases
        o.useRSLoRA = rslora; o.weightDecay = weightDecay
        o.dropLongExamples = dropLongExamples; o.skipBadLines = skipBadLines
        return o
    }

    func validate() throws {
        _ = try TrainCommand.parseTargets(targetModules)
        do { try trainerOptions.validate() } catch let e as TrainerError { throw ValidationError(e.description) }
        if maxGradNorm < 0 { throw ValidationError("--max-grad-norm must be ≥ 0 (got \(maxGradNorm))") }
    }

    func run() throws {
        let options = trainerOptions
        let loadStart = Date()
        let bundle = try modelArguments.load(defaultContextLength: options.maxSeqLen)
        let splits = try Trainer.loadData(path: data, bundle: bundle, options: options)
        print("loaded \(bundle.path) (\(bundle.quantization)) and \(data) in \(String(format: "%.1f", Date().timeIntervalSince(loadStart))) s")
        let trainer = try Trainer(bundle: bundle, data: splits, options: options, outputDirectory: output)
        let summary = try trainer.run { event in
            switch event {
            case let .started(trainExamples, validExamples, parameters, _, _):
                print("training \(parameters) LoRA parameters on \(trainExamples) examples (\(validExamples) validation)")
            case let .step(m):
                print(String(format: "step %d  loss %.4f  lr %.3g  grad_norm %.3f  tokens/s %.0f",
                             m.step, m.loss, m.learningRate, m.gradNorm, m.tokensPerSecond))
            case let .validation(step, loss, tokens, _):
                print(String(format: "step %d  valid_loss %.4f  (%d tokens)", step, loss, tokens))
            case .checkpoint, .stopped: break
            case let .saved(directory):
                print("wrote adapter to \(directory)")
            }
            fflush(stdout)
        }
        var line = String(format: "done: %d steps in %.1f s, loss %.4f → %.4f, %d trained tokens",
                          summary.steps, summary.seconds, summary.firstLoss, summary.finalLoss, summary.trainedTokens)
        if let v = summary.finalValidLoss { line += String(format: ", valid loss %.4f", v) }
        print(line)
    }
}
