// Fixtures: scripts/make_llama_fixtures.py (tiny random models); data/heldout.txt (written by hand).
// The sliding-window scorer against a direct computation (one fresh full forward per window, every
// target's NLL from its own softmax), the window/token bookkeeping of transformers' method, and, on
// the real model, NF4 vs float32 next-token agreement (needs Fixtures.smolLM2GGUF).
import Foundation
import Testing
import _TestSupport
import QLoRA

private func tinyModel(_ name: String, maxContext: Int, chunkSize: Int = 128,
                       policy: QuantizationPolicy = .none) throws -> LlamaModel {
    let dir = Fixtures.path("llama/\(name)")
    let config = try LlamaConfig(huggingFaceConfigFile: dir + "/config.json")
    let weights = try LlamaWeights(config: config, source: SafetensorsModel(directory: dir), file: dir, policy: policy)
    return try LlamaModel(config: config, weights: weights, maxContext: maxContext, chunkSize: chunkSize)
}

/// Direct computation: for each HF window [begin, end), a fresh forward of exactly those tokens
/// (logits for every position), scoring targets prevEnd ..< end (never the window's first token).
private func directNLL(_ model: LlamaModel, tokens: [Int], n: Int, stride: Int) throws -> (sum: Double, count: Int, windows: Int) {
    let V = model.config.vocabularySize
    var sum = 0.0, count = 0, windows = 0, prevEnd = 0
    for begin in Swift.stride(from: 0, to: tokens.count, by: stride) {
        let end = min(begin + n, tokens.count)
        model.reset()
        let logits = try model.forward(tokens: Array(tokens[begin..<end]), startPosition: 0, logits: .all)
        windows += 1
        for target in max(prevEnd, begin + 1)..<end {
            let row = Array(logits[((target - 1 - begin) * V)..<((target - begin) * V)])
            let m = row.max()!
            let lse = Double(m) + log(row.reduce(0.0) { $0 + exp(Double($1 - m)) })
            sum += lse - Double(row[tokens[target]])
            count += 1
        }
        prevEnd = end
        if end == tokens.count { break }
    }
    return (sum, count, windows)
}

@Suite struct PerplexityTests {
    static let settings: [(tokens: Int, n: Int, stride: Int)] = [
        (50, 16, 8), (50, 16, 16), (37, 12, 5), (20, 32, 16), (33, 16, 1),
    ]

    /// Scorer (prefix run, then chunked scoring through the KV cache) == direct per-window computation.
    @Test(arguments: settings)
    func slidingWindowScorerMatchesDirectComputation(_ s: (tokens: Int, n: Int, stride: Int)) throws {
        // chunkSize 5 so the scorer's pieces cross chunk boundaries.
        let model = try tinyModel("tiny-llama-gqa-tied", maxContext: 32, chunkSize: 5)
        let reference = try tinyModel("tiny-llama-gqa-tied", maxContext: 32)
        var rng: UInt64 = 7
        let tokens = (0..<s.tokens).map { _ -> Int in
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            return Int(rng >> 33) % model.config.vocabularySize
        }
        let r = try PerplexityEvaluator.evaluate(model: model, tokens: tokens, contextLength: s.n, stride: s.stride)
        let d = try directNLL(reference, tokens: tokens, n: s.n, stride: s.stride)
        // stride < N: every token but the first is scored; stride == N: each window's first token is
        // only context (transformers' method), so one token fewer per window.
        let expected = s.stride < s.n ? s.tokens - 1 : s.tokens - d.windows
        #expect(r.tokensScored == expected)
        #expect(d.count == expected)
        #expect(r.windows == d.windows)
        #expect(abs(r.meanNLL - d.sum / Double(d.count)) < 1e-5)
        #expect(abs(r.perplexity - exp(d.sum / Double(d.count))) < 1e-3 * r.perplexity)
        // A random-token text on a random tiny model: the NLL is near log(V) and certainly not 0.
        #expect(r.meanNLL > 1 && r.meanNLL < 2 * log(Double(model.config.vocabularySize)))
    }

    /// transformers' windows: begin = 0, S, 2S, …; each scores the tokens after the previous end.
    @Test func windowBookkeeping() throws {
        let w = try PerplexityEvaluator.windows(tokenCount: 10, contextLength: 4, stride: 3)
        #expect(w.map(\.tokens) == [0..<4, 3..<7, 6..<10])
        #expect(w.map(\.firstScored) == [1, 4, 7])
        let scored = w.reduce(0) { $0 + $1.tokens.upperBound - $1.firstScored }
        #expect(scored == 9)
        let one = try PerplexityEvaluator.windows(tokenCount: 5, contextLength: 8, stride: 4)
        #expect(one == [PerplexityWindow(tokens: 0..<5, firstScored: 1)])
        #expect(throws: EvaluationError.self) { try PerplexityEvaluator.windows(tokenCount: 5, contextLength: 4, stride: 5) }
        #expect(throws: EvaluationError.self) { try PerplexityEvaluator.windows(tokenCount: 1, contextLength: 4, stride: 2) }
    }

    /// The comparison of a model with itself: agreement 1, KL 0, equal perplexities.
    @Test func comparisonOfAModelWithItselfIsExact() throws {
        let a = try tinyModel("tiny-llama-untied", maxContext: 16)
        let b = try tinyModel("tiny-llama-untied", maxContext: 16)
        let tokens = (0..<40).map { ($0 * 37 + 11) % a.config.vocabularySize }
        let c = try PerplexityEvaluator.compare(reference: a, candidate: b, tokens: tokens, contextLength: 16, stride: 8)
        #expect(c.top1Agreement == 1 && abs(c.meanKL) < 1e-9 && c.positions == 39)
        #expect(c.reference == c.candidate)
    }

    /// SmolLM2, first 256 tokens of data/heldout.txt in one window: NF4+DQ vs float32 (the GGUF dequantized).
    /// Measured over the whole file (N = 512, S = 512, `qlora perplexity --reference-quantize none`): top-1
    /// agreement 0.708, mean KL 0.248 nats. The bounds are loose: a broken kernel gives ~0 agreement / KL > 5.
    @Test func smolLM2NF4AgreesWithFloat32() throws {
        let path = Fixtures.smolLM2GGUF
        try #require(FileManager.default.fileExists(atPath: path), "missing \(path): run scripts/fetch_model.sh")
        let fp32 = try ModelBundle(path: path, contextLength: 256, quantization: .none)
        let nf4 = try ModelBundle(path: path, contextLength: 256, quantization: .nf4)
        let text = Fixtures.directory.deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("data/heldout.txt").path
        let tokens = Array(try fp32.tokens(ofTextFile: text).prefix(256))
        let c = try PerplexityEvaluator.compare(reference: fp32.model, candidate: nf4.model, tokens: tokens,
                                                contextLength: 256, stride: 256)
        #expect(c.positions == 255)
        #expect(c.top1Agreement > 0.6, "top-1 agreement \(c.top1Agreement)")
        #expect(c.meanKL < 0.5, "mean KL \(c.meanKL)")
        #expect(c.candidate.perplexity < 2 * c.reference.perplexity)
    }
}
