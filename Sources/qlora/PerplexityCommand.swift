import ArgumentParser
import Foundation
import QLoRA

struct PerplexityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perplexity",
        abstract: "Token-level perplexity over a UTF-8 text file, with sliding windows of --context-length tokens.")

    @OptionGroup var modelArguments: ModelArguments
    @OptionGroup var adapterArguments: AdapterArguments
    @Option(help: "A UTF-8 text file.") var data: String
    @Option(help: "Tokens between window starts (default: half of --context-length).") var stride: Int?
    @Option(help: "Also load the model with this --quantize value as a reference and report top-1 agreement and KL(reference ‖ model).")
    var referenceQuantize: QuantizationPolicy.Kind?
    @Flag(help: "Print one JSON object.") var json = false

    func validate() throws {
        if let s = stride, s < 1 { throw ValidationError("--stride must be at least 1 (got \(s))") }
        if let s = stride, let n = modelArguments.contextLength, s > n {
            throw ValidationError("--stride (\(s)) must not exceed --context-length (\(n))")
        }
    }

    func run() throws {
        let loadStart = Date()
        let bundle = try adapterArguments.load(modelArguments, defaultContextLength: 512)
        let loadSeconds = Date().timeIntervalSince(loadStart)
        let n = bundle.model.maxContext
        let s = stride ?? max(1, n / 2)
        let tokens = try bundle.tokens(ofTextFile: data)
        let memory = bundle.model.weights.memoryReport
        var object: [String: Any] = [
            "model": bundle.path, "data": data, "quantization": bundle.quantization.description,
            "context_length": n, "stride": s, "text_tokens": tokens.count, "load_seconds": loadSeconds,
            "bits_per_parameter": memory.bitsPerParameter, "base_bytes": memory.totalBytes,
            "linear_bits_per_parameter": memory.linear4Bit.parameters > 0 ? memory.linear4Bit.bitsPerParameter : 32.0,
        ]
        let result: PerplexityResult
        if let kind = referenceQuantize {
            var policy = modelArguments.policy
            policy.quantType = kind
            let reference = try ModelBundle(path: modelArguments.model, contextLength: n, quantization: policy)
            let c = try PerplexityEvaluator.compare(reference: reference.model, candidate: bundle.model, tokens: tokens,
                                                   contextLength: n, stride: s)
            result = c.candidate
            object["reference"] = ["quantization": policy.description, "perplexity": c.reference.perplexity,
                                   "mean_nll": c.reference.meanNLL]
            object["top1_agreement"] = c.top1Agreement
            object["mean_kl"] = c.meanKL
            object["max_kl"] = c.maxKL
        } else {
            result = try PerplexityEvaluator.evaluate(model: bundle.model, tokens: tokens, contextLength: n, stride: s)
        }
        object["perplexity"] = result.perplexity
        object["mean_nll"] = result.meanNLL
        object["tokens_scored"] = result.tokensScored
        object["windows"] = result.windows
        object["seconds"] = result.seconds
        if json { print(jsonString(object)); return }
        print("\(bundle.path): base \(bundle.quantization), \(String(format: "%.3f", memory.bitsPerParameter)) bits/parameter")
        print("\(data): \(tokens.count) tokens, windows of \(n) every \(s) (\(result.windows) windows)")
        print(String(format: "perplexity %.4f  mean NLL %.5f nats  %d tokens scored  %.1f s",
                     result.perplexity, result.meanNLL, result.tokensScored, result.seconds))
        if let r = object["reference"] as? [String: Any], let a = object["top1_agreement"] as? Double,
           let kl = object["mean_kl"] as? Double, let mx = object["max_kl"] as? Double {
            print(String(format: "reference (%@): perplexity %.4f; top-1 agreement %.4f, mean KL(ref ‖ model) %.5f nats (max %.4f)",
                         (r["quantization"] as? String ?? "") as NSString, r["perplexity"] as? Double ?? 0, a, kl, mx))
        }
    }
}
