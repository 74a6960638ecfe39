import ArgumentParser
import Foundation
import Llama
import QLoRA

struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Predict the peak memory and the time per step of a training run before starting it.",
        discussion: """
        Reads only the model's metadata. Memory: the base weights as held, every buffer the training \
        model allocates (as much of it as a step touches), LoRA parameters, gradients, AdamW state, the \
        bundle's inference model and a measured process constant; loading transients are excluded. \
        With --max-memory it also picks the largest batch size (and whether to checkpoint) that fits.

        Time: the step's floating-point operations (forward, backward of the frozen linears' inputs, \
        LoRA, attention, LM head, and the recomputed forward with checkpointing) divided by a FLOP/s \
        rate, plus the 4-bit weights dequantized per step (each weight once per pass) divided by a \
        dequantization rate. Both rates are measured when the plan is made: one synthetic NF4 layer \
        of the model's layer shape (narrowed to about a second of work) runs forward+backward at two \
        row counts and a line through the two times gives them (best of 2 runs each; a busy machine \
        gives slower rates, as it will give slower steps). --no-probe uses fixed rates measured once \
        on an idle machine instead. The output names the source of the rates.
        """)

    @Option(help: "A .gguf file or a Hugging Face model folder.") var model: String?
    @Option(help: "Instead of --model: llama-7b, llama-13b or llama-33b.") var synthetic: SyntheticModelShape?
    @Option(help: "How the base's linear weights are held: nf4, fp4, int4 or none.") var quantize: QuantizationPolicy.Kind = .nf4
    @Flag(help: "One float32 absmax per block (no double quantization).") var noDoubleQuant = false
    @Option(help: "Weights per 4-bit block.") var blocksize: Int = 64
    @Option(help: "Tokens per row.") var seqLen: Int = 512
    @Option(help: "Rows per micro-batch.") var batchSize: Int = 1
    @Option(help: "LoRA rank.") var loraRank: Int = 16
    @Flag(help: "Keep every layer's activations (faster, more memory).") var noGradCheckpoint = false
    @Option(help: "adamw, adamw-8bit or paged-adamw.") var optimizer: TrainerOptions.Optimizer = .adamw
    @Option(help: "A memory budget such as 6GB, 6GiB or 800MB: report the largest batch size (≤ --batch-size) and checkpointing that fit.")
    var maxMemory: String?
    @Flag(help: "A validation loss (a forward-only pass) will be computed: count its full logits [N, V].")
    var validation = false
    @Flag(help: "Do not time a probe layer: predict the time from fixed rates measured on an idle machine.")
    var noProbe = false
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        if (model == nil) == (synthetic == nil) { throw ValidationError("give exactly one of --model and --synthetic") }
        if seqLen < 2 { throw ValidationError("--seq-len must be ≥ 2 (got \(seqLen))") }
        if batchSize < 1 { throw ValidationError("--batch-size must be ≥ 1 (got \(batchSize))") }
        if loraRank < 1 { throw ValidationError("--lora-rank must be ≥ 1 (got \(loraRank))") }
        if let m = maxMemory, PlanCommand.parseBytes(m) == nil {
            throw ValidationError("--max-memory: cannot read '\(m)' (expected e.g. 6GB, 6GiB, 800MB)")
        }
    }

    /// "6GB" / "6G" / "6GiB" → bytes (GB and G are taken as GiB, as memory is usually quoted), "800MB" …
    static func parseBytes(_ text: String) -> Int? {
        let t = text.trimmingCharacters(in: .whitespaces).uppercased()
        let g = 1_073_741_824.0, m = 1_048_576.0, k = 1024.0
        let units: [(String, Double)] = [("GIB", g), ("MIB", m), ("KIB", k), ("GB", g), ("MB", m), ("KB", k),
                                         ("G", g), ("M", m), ("K", k), ("B", 1)]
        for (u, f) in units where t.hasSuffix(u) {
            guard let v = Double(t.dropLast(u.count).trimmingCharacters(in: .whitespaces)), v > 0 else { return nil }
            return Int(v * f)
        }
        guard let v = Double(t), v > 0 else { return nil }
        return Int(v)
    }

    func run() throws {
        let config: LlamaConfig, separate: Bool, name: String
        var storage: (embedding: EmbeddingStorage, lmHead: EmbeddingStorage) = (.float32, .float32)
        if let s = synthetic {
            config = s.config; separate = true; name = "synthetic \(s.rawValue)"
        } else {
            (config, separate) = try MemoryPlan.modelShape(path: model!)
            storage = try MemoryPlan.embeddingStorage(path: model!)   // a GGUF's Q8_0 embedding stays Q8_0
            name = model!
        }
        let policy = QuantizationPolicy(quantType: quantize, doubleQuant: !noDoubleQuant, blocksize: blocksize)
        let base = MemoryPlan.baseBytes(config: config, policy: policy, separateLMHead: separate,
                                        embedding: storage.embedding, lmHead: storage.lmHead)
        let options = MemoryPlanOptions(batchSize: batchSize, seqLen: seqLen, rank: loraRank,
                                        gradientCheckpointing: !noGradCheckpoint,
                                        optimizerStateBits: optimizer == .adamw8bit ? 8 : 32,
                                        inferenceContext: synthetic == nil ? seqLen : 0,   // a bundle holds an inference model
                                        forwardOnlyLogits: validation)
        let throughput = noProbe ? MemoryPlan.Throughput.calibrated
            : try MemoryPlan.Throughput.measure(config: config, options: options)
        let q8Head = (separate ? storage.lmHead : storage.embedding) == .q8_0
        let plan = MemoryPlan.estimate(config: config, baseBytes: base, options: options, quantizedBase: policy.isQuantized,
                                       q8Head: q8Head, throughput: throughput)
        var fit: (batchSize: Int, gradientCheckpointing: Bool)? = nil
        let budget = maxMemory.flatMap(PlanCommand.parseBytes)
        if let budget {
            fit = MemoryPlan.fit(budget: budget, config: config, baseBytes: base, options: options, maxBatchSize: batchSize,
                                 quantizedBase: policy.isQuantized, q8Head: q8Head)
        }
        if json {
            var out: [String: Any] = ["model": name, "seq_len": seqLen, "batch_size": batchSize, "lora_rank": loraRank,
                                      "grad_checkpoint": !noGradCheckpoint, "peak_rss_bytes": plan.peakBytes,
                                      "seconds_per_step": plan.secondsPerStep, "tokens_per_second": plan.tokensPerSecond,
                                      "flops_per_step": plan.flopsPerStep, "dequantized_per_step": plan.dequantizedPerStep,
                                      "throughput": ["flops_per_second": throughput.flopsPerSecond,
                                                     "dequantized_per_second": throughput.dequantizedPerSecond,
                                                     "source": throughput.source],
                                      "items": plan.items.map { ["name": $0.name, "bytes": $0.bytes] }]
            if let budget {
                out["max_memory_bytes"] = budget
                if let fit { out["fit"] = ["batch_size": fit.batchSize, "grad_checkpoint": fit.gradientCheckpointing] }
                else { out["fit"] = NSNull() }
            }
            print(jsonString(out))
            return
        }
        print("\(name): seq \(seqLen), batch \(batchSize), rank \(loraRank), checkpointing \(noGradCheckpoint ? "off" : "on")")
        for item in plan.items {
            print("  " + item.name.padding(toLength: 42, withPad: " ", startingAt: 0)
                  + String(format: "%10.1f MiB", Double(item.bytes) / Double(1 << 20)))
        }
        print(String(format: "predicted peak RSS %.2f GiB, %.2f s/step (%.0f tokens/s, %.2f TFLOP/step)",
                     Double(plan.peakBytes) / Double(1 << 30), plan.secondsPerStep, plan.tokensPerSecond, plan.flopsPerStep / 1e12))
        print(String(format: "time = %.3g FLOP / %.1f GFLOP/s + %.3g weights dequantized / %.2f G/s; rates: %@",
                     plan.flopsPerStep, throughput.flopsPerSecond / 1e9, plan.dequantizedPerStep,
                     throughput.dequantizedPerSecond / 1e9, throughput.source))
        if let budget {
            if let fit {
                print("fits \(maxMemory!) (\(budget) bytes): batch size \(fit.batchSize), gradient checkpointing \(fit.gradientCheckpointing ? "on" : "off")")
            } else {
                print("does not fit \(maxMemory!) (\(budget) bytes) even at batch 1 with gradient checkpointing")
                throw ExitCode(2)
            }
        }
    }
}
