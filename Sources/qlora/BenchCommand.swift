import ArgumentParser
import Foundation
import Llama
import QLoRA

extension SyntheticModelShape: ExpressibleByArgument {}

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Measure training and generation speed and peak memory.",
        subcommands: [BenchTrainCommand.self, BenchGenerateCommand.self])
}

/// The model a benchmark runs: a real one (--model) or a synthesized published shape (--synthetic).
struct BenchModelArguments: ParsableArguments {
    @Option(help: "A .gguf file or a Hugging Face model folder.") var model: String?
    @Option(help: "Instead of --model: a model of a published shape (llama-7b, llama-13b, llama-33b) with random NF4+DQ base weights synthesized directly in 4 bits.")
    var synthetic: SyntheticModelShape?
    @Option(help: "How to hold a --model's linear weights: nf4, fp4, int4 or none (float32).")
    var quantize: QuantizationPolicy.Kind = .nf4
    @Option(help: "Seed of the synthetic weights.") var weightSeed: UInt64 = 0
    @Option(help: "How a decoded token's 4-bit products multiply: int16 (default) or float32 (see `qlora generate --help`).")
    var decodeArithmetic: DecodeArithmetic = .int16

    func validate() throws {
        if (model == nil) == (synthetic == nil) { throw ValidationError("give exactly one of --model and --synthetic") }
    }

    /// Weights, the bundle (nil for synthetic), a description, and load seconds.
    func load(context: Int) throws -> (weights: LlamaWeights, bundle: ModelBundle?, name: String, seconds: Double) {
        let t0 = Date()
        if let shape = synthetic {
            let w = try LlamaWeights.synthetic(config: shape.config, seed: weightSeed)
            return (w, nil, "synthetic \(shape.rawValue) (NF4+DQ, blocksize 64)", Date().timeIntervalSince(t0))
        }
        let bundle = try ModelBundle(path: model!, contextLength: context, quantization: QuantizationPolicy(quantType: quantize))
        return (bundle.model.weights, bundle, "\(model!) (\(bundle.quantization))", Date().timeIntervalSince(t0))
    }
}

func gib(_ b: Int?) -> String { b.map { String(format: "%.2f GiB", Double($0) / Double(1 << 30)) } ?? "n/a" }

struct BenchTrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Time LoRA training steps (peer-style packed rows) and report tokens/s, the step split and peak RSS.",
        discussion: """
        The data's examples are rendered with the chat template (prompt → user, completion → assistant), \
        labelled from the completion to the example's end, and packed back to back into rows of \
        --seq-len tokens, exactly as /work/shared/peers/train_peer.py does; step s uses rows s·B … s·B+B−1. \
        The first step's loss must equal the plain inference forward's loss on the same batch (LoRA B = 0), \
        otherwise nothing is reported.
        """)

    @OptionGroup var modelArguments: BenchModelArguments
    @Option(help: "JSONL data (prompt/completion, messages or text records); with --synthetic: seeded random tokens instead.")
    var data: String?
    @Option(help: "Tokens per row.") var seqLen: Int = 256
    @Option(help: "Rows per step.") var batchSize: Int = 4
    @Option(help: "LoRA rank.") var loraRank: Int = 16
    @Option(help: "LoRA alpha.") var loraAlpha: Double = 32
    @Option(help: "Timed optimizer steps.") var steps: Int = 5
    @Option(help: "Untimed steps first.") var warmupSteps: Int = 1
    @Option(help: "AdamW learning rate.") var learningRate: Double = 2e-4
    @Flag(help: "Recompute each layer's forward in backward (less memory, more time).") var gradCheckpoint = false
    @Flag(help: "Skip the extra forward-only pass that splits forward from backward time.") var noForwardSplit = false
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        if modelArguments.synthetic != nil, data != nil { throw ValidationError("--data cannot be used with --synthetic") }
        if modelArguments.model != nil, data == nil { throw ValidationError("--model needs --data") }
    }

    func run() throws {
        var o = TrainBenchmarkOptions()
        o.seqLen = seqLen; o.batchSize = batchSize; o.loraRank = loraRank; o.loraAlpha = loraAlpha
        o.steps = steps; o.warmupSteps = warmupSteps; o.learningRate = learningRate
        o.gradientCheckpointing = gradCheckpoint; o.measureForward = !noForwardSplit
        try o.validate()
        let loaded = try modelArguments.load(context: seqLen)
        let rows: PackedRows
        if let bundle = loaded.bundle, let data {
            let options = TrainingDataOptions(maxSeqLen: 1 << 30, trainOnPrompt: false, promptCompletionAsChat: true)
            let tokenizer = try TrainingTokenizer(bundle: bundle.tokenizer, options: options)
            let set = try TrainingData.loadFile(data, tokenizer: tokenizer)
            rows = try PackedRows.pack(set.examples, seqLen: seqLen, labelToEnd: true, source: data)
        } else {
            rows = PackedRows.synthetic(vocabularySize: loaded.weights.config.vocabularySize, seqLen: seqLen,
                                        rows: max(64, batchSize * (steps + warmupSteps)), seed: 0)
        }
        if !json {
            print("model \(loaded.name), loaded in \(String(format: "%.1f", loaded.seconds)) s; data \(rows.source): \(rows.examples) examples, \(rows.streamTokens) tokens → \(rows.rowCount) rows of \(seqLen)")
            fflush(stdout)
        }
        let cpu0 = CPUSample.now()
        let result = try TrainBenchmark.run(weights: loaded.weights, rows: rows, options: o,
                                            inferenceContext: loaded.bundle == nil ? 0 : seqLen) { event in
            guard !json else { return }
            switch event {
            case let .reference(loss, seconds):
                print(String(format: "reference forward: loss %.4f (%.1f s)", loss, seconds))
            case let .step(index, warmup, loss, seconds):
                print(String(format: "step %d%@ loss %.4f  %.2f s", index, warmup ? " (warm-up)" : "", loss, seconds))
            }
            fflush(stdout)
        }
        let other = cpu0.flatMap { c0 in CPUSample.now().map { $0.otherShare(since: c0) } }
        let plan = result.plan
        if json {
            var perOp: [String: Any] = [:]
            for (kind, phases) in result.opSeconds {
                perOp["\(kind)"] = Dictionary(uniqueKeysWithValues: phases.map { ("\($0.key)_s", $0.value) })
            }
            var split: [String: Any] = ["forward_backward_s": result.forwardBackwardSeconds, "optimizer_s": result.optimizerSeconds,
                                        "per_op": perOp]
            if let f = result.forwardSeconds { split["forward_s"] = f }
            if let b = result.backwardSeconds { split["backward_s"] = b }
            var out: [String: Any] = [
                "model": loaded.name, "data": rows.source, "seq_len": seqLen, "batch_size": batchSize,
                "lora_rank": loraRank, "lora_alpha": loraAlpha, "steps": steps, "warmup_steps": warmupSteps,
                "grad_checkpoint": gradCheckpoint, "tokens_per_step": result.tokensPerStep,
                "tokens_per_second": result.tokensPerSecond, "seconds_per_step": result.secondsPerStep,
                "step_seconds": result.stepSeconds, "split": split,
                "loss_first": result.lossFirst, "loss_last": result.lossLast, "losses": result.losses,
                "reference_loss": result.referenceLoss, "trainable_parameters": result.trainableParameters,
                "base_bytes": result.baseBytes, "load_seconds": loaded.seconds,
                "plan": ["peak_rss_bytes": plan.peakBytes, "seconds_per_step": plan.secondsPerStep,
                         "items": plan.items.map { ["name": $0.name, "bytes": $0.bytes] }],
            ]
            if let p = result.peakRSSBytes { out["peak_rss_bytes"] = p }
            if let p = result.trainingPeakRSSBytes { out["training_peak_rss_bytes"] = p }
            if let other { out["other_load_share"] = other }
            print(jsonString(out))
            return
        }
        print(String(format: "%.1f tokens/s, %.2f s/step (median of %d)", result.tokensPerSecond, result.secondsPerStep, result.stepSeconds.count))
        var splitText = String(format: "forward+backward %.2f s, optimizer %.3f s", result.forwardBackwardSeconds, result.optimizerSeconds)
        if let f = result.forwardSeconds, let b = result.backwardSeconds {
            splitText = String(format: "forward %.2f s, backward %.2f s%@, optimizer %.3f s", f, b,
                               gradCheckpoint ? " (incl. recompute)" : "", result.optimizerSeconds)
        }
        print("split: " + splitText)
        print("by op kind (mean per step, forward / recompute / backward): " + LoRAStepProfile.Kind.allCases.map { k in
            let ph = result.opSeconds[k] ?? [:]
            let parts = LoRAStepProfile.Phase.allCases.map { String(format: "%.2f", ph[$0] ?? 0) }
            return "\(k) " + parts.joined(separator: "/")
        }.joined(separator: ", ") + " s")
        print(String(format: "loss %.4f → %.4f (reference %.4f)", result.lossFirst, result.lossLast, result.referenceLoss))
        print("peak RSS \(gib(result.peakRSSBytes)) (training \(gib(result.trainingPeakRSSBytes))); plan predicted \(gib(plan.peakBytes)), \(String(format: "%.2f", plan.secondsPerStep)) s/step")
        if let other { print(String(format: "other processes used %.0f%% of the cores meanwhile", 100 * other)) }
    }
}

struct BenchGenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Time prefill and greedy decode of seeded random tokens (batch 1).")

    @OptionGroup var modelArguments: BenchModelArguments
    @Option(help: "Prompt tokens.") var promptTokens: Int = 128
    @Option(help: "Generated tokens.") var genTokens: Int = 128
    @Option(help: "Timed repetitions (after one warm-up).") var repetitions: Int = 3
    @Flag(help: "Print one JSON object.") var json = false

    func run() throws {
        let context = promptTokens + genTokens
        let loaded = try modelArguments.load(context: context)
        let model = try loaded.bundle?.model
            ?? LlamaModel(config: loaded.weights.config, weights: loaded.weights, maxContext: context)
        model.decodeArithmetic = modelArguments.decodeArithmetic
        var o = GenerateBenchmarkOptions()
        o.promptTokens = promptTokens; o.generatedTokens = genTokens; o.repetitions = repetitions
        let cpu0 = CPUSample.now()
        let r = try GenerateBenchmark.run(model: model, options: o)
        let other = cpu0.flatMap { c0 in CPUSample.now().map { $0.otherShare(since: c0) } }
        if json {
            var out: [String: Any] = ["model": loaded.name, "prompt_tokens": promptTokens, "gen_tokens": genTokens,
                                      "prefill_tokens_per_second": r.prefillTokensPerSecond,
                                      "decode_tokens_per_second": r.decodeTokensPerSecond,
                                      "prefill_seconds": r.prefillSeconds, "decode_seconds": r.decodeSeconds,
                                      "decode_arithmetic": model.decodeArithmetic.rawValue,
                                      "decode_logit_error": r.decodeLogitError]
            if let p = r.peakRSSBytes { out["peak_rss_bytes"] = p }
            if let other { out["other_load_share"] = other }
            print(jsonString(out))
            return
        }
        print("model \(loaded.name)")
        print(String(format: "prefill %.1f tokens/s (%d tokens), decode %.1f tokens/s (%d tokens), peak RSS %@",
                     r.prefillTokensPerSecond, promptTokens, r.decodeTokensPerSecond, genTokens, gib(r.peakRSSBytes)))
        print("decode arithmetic \(model.decodeArithmetic.rawValue)"
              + (model.decodeArithmetic == .float32 ? "" : String(format: " (logits within %.1e of float32's largest)", r.decodeLogitError)))
        if let other { print(String(format: "other processes used %.0f%% of the cores meanwhile", 100 * other)) }
    }
}
