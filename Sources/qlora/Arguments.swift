import ArgumentParser
import Foundation
import QLoRA

/// Which model to load.
struct ModelArguments: ParsableArguments {
    @Option(name: .long, help: "A .gguf file or a Hugging Face model folder (config.json, *.safetensors, tokenizer.json).")
    var model: String

    @Option(name: .long, help: "KV-cache positions to allocate (default: the model's maximum, at most 4096).")
    var contextLength: Int?

    @Option(name: .long, help: "How to hold the base's linear weights: nf4, fp4, int4 or none (float32).")
    var quantize: QuantizationPolicy.Kind = .nf4

    @Flag(name: .long, help: "Keep one float32 absmax per block (no double quantization).")
    var noDoubleQuant = false

    @Option(name: .long, help: "Weights per 4-bit block (32, 64, 128, … 4096).")
    var blocksize: Int = 64

    @Option(name: .long, help: ArgumentHelp(
        "How a decoded token's 4-bit products multiply: int16 or float32.",
        discussion: "int16 (the default) quantizes the token's input to 14 bits per 64 values and sums exact "
            + "integer products: ~1e-4 relative error (bfloat16 compute: ~2e-3); 1.4–1.6× faster products, 1.2–1.5× faster decoding. "
            + "float32 multiplies the exact codes. Prompts (prefill) always run in float32."))
    var decodeArithmetic: DecodeArithmetic = .int16

    func validate() throws {
        if let n = contextLength, n < 1 { throw ValidationError("--context-length must be at least 1 (got \(n))") }
        guard QuantizedTensor4Bit.validBlocksizes.contains(blocksize) else {
            throw ValidationError("--blocksize must be one of \(QuantizedTensor4Bit.validBlocksizes) (got \(blocksize))")
        }
    }

    var policy: QuantizationPolicy {
        QuantizationPolicy(quantType: quantize, doubleQuant: !noDoubleQuant, blocksize: blocksize)
    }

    func load(defaultContextLength: Int? = nil) throws -> ModelBundle {
        let bundle = try ModelBundle(path: model, contextLength: contextLength ?? defaultContextLength, quantization: policy)
        bundle.model.decodeArithmetic = decodeArithmetic
        return bundle
    }
}

extension QuantizationPolicy.Kind: ExpressibleByArgument {}
extension DecodeArithmetic: ExpressibleByArgument {}

/// How tokens are drawn.
struct SamplingArguments: ParsableArguments {
    @Option(help: "Sampling temperature; 0 is greedy.") var temperature: Float = 0
    @Option(help: "Keep only the K most likely tokens (0: off).") var topK: Int = 0
    @Option(help: "Nucleus sampling: smallest set with probability ≥ P (1: off).") var topP: Float = 1
    @Option(help: "Drop tokens below P × the top probability (0: off).") var minP: Float = 0
    @Option(help: "Penalty > 1 for tokens already seen (1: off).") var repeatPenalty: Float = 1
    @Option(help: "Random seed.") var seed: UInt64 = 0

    func validate() throws {
        guard temperature >= 0, temperature.isFinite else { throw ValidationError("--temperature must be ≥ 0 (got \(temperature))") }
        guard topK >= 0 else { throw ValidationError("--top-k must be ≥ 0 (got \(topK))") }
        guard topP > 0, topP <= 1 else { throw ValidationError("--top-p must be in (0, 1] (got \(topP))") }
        guard minP >= 0, minP <= 1 else { throw ValidationError("--min-p must be in [0, 1] (got \(minP))") }
        guard repeatPenalty > 0, repeatPenalty.isFinite else { throw ValidationError("--repeat-penalty must be > 0 (got \(repeatPenalty))") }
    }

    var parameters: SamplingParameters {
        SamplingParameters(temperature: temperature, topK: topK, topP: topP, minP: minP,
                           repetitionPenalty: repeatPenalty, seed: seed)
    }
}

/// Writes to standard error without buffering surprises.
func printError(_ text: String) {
    FileHandle.standardError.write((text + "\n").data(using: .utf8)!)
}

/// Writes to standard output at once (streamed tokens must show as they come).
func writeOut(_ text: String) {
    FileHandle.standardOutput.write(text.data(using: .utf8)!)
}

/// JSON text of a value, with keys in a stable order.
func jsonString(_ object: Any) -> String {
    let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
    return String(decoding: data, as: UTF8.self)
}

/// A LoRA adapter to apply on top of the base (generate, chat, perplexity).
struct AdapterArguments: ParsableArguments {
    @Option(help: ArgumentHelp(
        "A PEFT LoRA adapter folder (adapter_model.safetensors + adapter_config.json).",
        discussion: "Over a 4-bit base (--quantize nf4/fp4/int4) the adapter is applied unmerged, as QLoRA does: "
            + "y = W4(x) + scaling·B·A·x, with no float32 copy of the base. With --quantize none it is merged into "
            + "the float32 weights (exact, no cost per token) unless --no-merge is given."))
    var adapter: String?

    @Flag(help: "With --adapter over a float32 base: apply it unmerged instead of merging it into the weights.")
    var noMerge = false

    func validate() throws {
        if noMerge && adapter == nil { throw ValidationError("--no-merge needs --adapter") }
    }

    /// Loads the model as `modelArguments` asks and applies the adapter, merged or unmerged (see
    /// the help text). Notes how it was applied on standard error.
    func load(_ modelArguments: ModelArguments, defaultContextLength: Int? = nil) throws -> ModelBundle {
        let bundle = try modelArguments.load(defaultContextLength: defaultContextLength)
        guard let adapter else { return bundle }
        let (weights, application) = try bundle.applyAdapter(directory: adapter, merge: !noMerge)
        let c = weights.config
        let modules = Set(weights.layers.flatMap(\.keys)).sorted().joined(separator: ",")
        printError("adapter \(adapter): rank \(c.r), scaling \(c.scaling), modules \(modules); "
                   + "\(application.rawValue) over the \(bundle.quantization) base")
        if let mismatch = try bundle.adapterBaseMismatch(weights) {
            printError("warning: \(adapter) was trained on a base with content hash \(mismatch.adapter), "
                       + "but \(bundle.path) has \(mismatch.base); the adapter may not fit this model")
        }
        return bundle
    }
}
