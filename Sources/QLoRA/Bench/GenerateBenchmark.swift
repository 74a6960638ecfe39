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
    /// One decoded token's logits in the model's `decodeArithmetic` against float32:
    /// max |difference| / max |float32 logit| (0 when the model decodes in float32).
    public var decodeLogitError: Double
}

/// The inference benchmark (`qlora bench generate`), llama-bench style: a prompt of P seeded random
/// ids is prefilled, then G tokens are decoded greedily one at a time (each fed back), per repetition
/// after one untimed warm-up; prefill tok/s = P / median prefill time, decode tok/s = G / median decode time.
/// A model that decodes in int16 must give one token's logits within `decodeTolerance` of float32's
/// (relative to the largest logit), or nothing is reported.
public enum GenerateBenchmark {
    public static let decodeTolerance = 1e-2

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
        let error = try decodeLogitError(model: model, prompt: prompt)
        guard error <= decodeTolerance else {
            throw BenchmarkError.decodeMismatch(arithmetic: model.decodeArithmetic.rawValue, error: error, tolerance: decodeTolerance)
        }
        return GenerateBenchmarkResult(options: o,
                                       prefillTokensPerSecond: Double(o.promptTokens) / max(median(prefill), 1e-12),
                                       decodeTokensPerSecond: Double(o.generatedTokens) / max(median(decode), 1e-12),
                                       prefillSeconds: prefill, decodeSeconds: decode,
                                       peakRSSBytes: ProcessMemory.peakResidentBytes(), decodeLogitError: error)
    }

    /// Prefills `prompt`, then decodes its greedy next token twice at the same position: in the
    /// model's arithmetic and in float32 (the second overwrites the first's cache row).
    static func decodeLogitError(model: LlamaModel, prompt: [Int]) throws -> Double {
        let arithmetic = model.decodeArithmetic
        guard arithmetic != .float32 else { return 0 }
        defer { model.decodeArithmetic = arithmetic }
        model.reset()
        let last = try model.forward(tokens: prompt, startPosition: 0, logits: .last)
        var best = 0
        for i in 1..<last.count where last[i] > last[best] { best = i }
        let tested = try model.forward(tokens: [best], startPosition: prompt.count, logits: .last)
        model.decodeArithmetic = .float32
        let reference = try model.forward(tokens: [best], startPosition: prompt.count, logits: .last)
        var diff: Float = 0, scale: Float = 0
        for i in 0..<reference.count {
            diff = max(diff, abs(tested[i] - reference[i]))
            scale = max(scale, abs(reference[i]))
        }
        guard diff.isFinite, scale.isFinite else { return .infinity }
        return scale > 0 ? Double(diff / scale) : Double(diff)
    }
}
