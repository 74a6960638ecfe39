import Llama

public struct GenerateBenchmarkOptions: Sendable, Equatable {
    public var promptTokens = 128
    public var generatedTokens = 128
    /// Timed repetitions; the medians are reported.
    public var repetitions = 3
    public var seed: UInt64 = 0
    public init() {}
}

public struct GenerateBenchmarkResult: Sendable, Equatable {
    public var options: GenerateBenchmarkOptions
    public var prefillTokensPerSecond: Double
    public var decodeTokensPerSecond: Double
    public var prefillSeconds: [Double]
    public var decodeSeconds: [Double]
    public var peakRSSBytes: Int?
}

/// The inference benchmark (`qlora bench generate`), llama-bench style: a prompt of P seeded random
/// ids is prefilled, then G tokens are decoded greedily one at a time (each fed back), per repetition
/// after one untimed warm-up; prefill tok/s = P / median prefill time, decode tok/s = G / median decode time.
public enum GenerateBenchmark {
    public static func run(model: LlamaModel, options o: GenerateBenchmarkOptions) throws -> GenerateBenchmarkResult {
        guard o.promptTokens >= 1 else {
            throw BenchmarkError.invalidOption(field: "promptTokens", value: "\(o.promptTokens)", expected: "≥ 1")
        }
        guard o.generatedTokens >= 1 else {
            throw BenchmarkError.invalidOption(field: "generatedTokens", value: "\(o.generatedTokens)", expected: "≥ 1")
        }
        guard o.repetitions >= 1 else {
            throw BenchmarkError.invalidOption(field: "repetitions", value: "\(o.repetitions)", expected: "≥ 1")
        }
        guard o.promptTokens + o.generatedTokens <= model.maxContext else {
            throw BenchmarkError.invalidOption(field: "promptTokens + generatedTokens", value: "\(o.promptTokens + o.generatedTokens)",
                                               expected: "≤ the model's context \(model.maxContext)")
        }
        let V = model.config.vocabularySize
        var rng = SeededRandom(seed: o.seed)
        let prompt = (0..<o.promptTokens).map { _ in Int(rng.next() % UInt64(V)) }
        var prefill: [Double] = [], decode: [Double] = []
        for rep in 0...o.repetitions {
            model.reset()
            let t0 = benchNow()
            var logits = try model.forward(tokens: prompt, startPosition: 0, logits: .last)
            let t1 = benchNow()
            var position = o.promptTokens
            for _ in 0..<o.generatedTokens {
                var best = 0
                for i in 1..<V where logits[i] > logits[best] { best = i }
                logits = try model.forward(tokens: [best], startPosition: position, logits: .last)
                position += 1
            }
            let t2 = benchNow()
            if rep > 0 { prefill.append(t1 - t0); decode.append(t2 - t1) }
        }
        return GenerateBenchmarkResult(options: o,
                                       prefillTokensPerSecond: Double(o.promptTokens) / max(median(prefill), 1e-12),
                                       decodeTokensPerSecond: Double(o.generatedTokens) / max(median(decode), 1e-12),
                                       prefillSeconds: prefill, decodeSeconds: decode,
                                       peakRSSBytes: ProcessMemory.peakResidentBytes())
    }
}
