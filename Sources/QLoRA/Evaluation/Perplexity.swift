import Foundation

/// Token-level perplexity of a causal model with sliding windows (transformers' "perplexity of
/// fixed-length models"): windows of `contextLength` tokens starting every `stride` tokens; each
/// window scores only the tokens no earlier window scored, with everything before them in the window
/// as context (never a window's own first token). With stride < contextLength every token but the
/// first is scored exactly once; with stride == contextLength each window's first token is not scored.
public struct PerplexityResult: Sendable, Equatable {
    /// exp(meanNLL).
    public var perplexity: Double
    /// Mean negative log-likelihood (nats) per scored token.
    public var meanNLL: Double
    public var tokensScored: Int
    public var windows: Int
    public var seconds: Double
}

/// How a candidate model's next-token distributions compare with a reference's.
public struct DistributionComparison: Sendable, Equatable {
    /// Fraction of positions where both models' most likely token is the same.
    public var top1Agreement: Double
    /// Mean KL(reference ‖ candidate) in nats.
    public var meanKL: Double
    /// Largest per-position KL.
    public var maxKL: Double
    public var reference: PerplexityResult
    public var candidate: PerplexityResult
    public var positions: Int
}

/// One sliding window: the tokens it runs and the first one it scores.
public struct PerplexityWindow: Sendable, Equatable {
    public var tokens: Range<Int>
    /// Scored targets are `firstScored ..< tokens.upperBound` (absolute token indices).
    public var firstScored: Int

    public init(tokens: Range<Int>, firstScored: Int) {
        self.tokens = tokens
        self.firstScored = firstScored
    }
}

public enum PerplexityEvaluator {
    /// The windows for `tokenCount` tokens (HF: begin = 0, stride, 2·stride, …; end = min(begin + N, count);
    /// stop after the window that reaches the end).
    public static func windows(tokenCount: Int, contextLength: Int, stride: Int) throws -> [PerplexityWindow] {
        guard contextLength >= 2 else {
            throw EvaluationError.invalidValue(field: "contextLength", value: "\(contextLength)", expected: "≥ 2")
        }
        guard stride >= 1, stride <= contextLength else {
            throw EvaluationError.invalidValue(field: "stride", value: "\(stride)", expected: "1 ... \(contextLength)")
        }
        guard tokenCount >= 2 else {
            throw EvaluationError.invalidValue(field: "token count", value: "\(tokenCount)", expected: "≥ 2 tokens")
        }
        var out: [PerplexityWindow] = []
        var prevEnd = 0, begin = 0
        while begin < tokenCount {
            let end = min(begin + contextLength, tokenCount)
            out.append(PerplexityWindow(tokens: begin..<end, firstScored: max(prevEnd, begin + 1)))
            prevEnd = end
            if end == tokenCount { break }
            begin += stride
        }
        return out
    }

    /// Perplexity of `model` on `tokens`. `contextLength` ≤ model.maxContext.
    public static func evaluate(model: LlamaModel, tokens: [Int], contextLength: Int, stride: Int) throws -> PerplexityResult {
        let t0 = Date()
        var nll = 0.0, count = 0
        let windows = try scoreWindows([model], tokens: tokens, contextLength: contextLength, stride: stride) { target, logits in
            nll += negativeLogLikelihood(logits[0], count: model.config.vocabularySize, target: target)
            count += 1
        }
        let mean = nll / Double(max(count, 1))
        return PerplexityResult(perplexity: Foundation.exp(mean), meanNLL: mean, tokensScored: count,
                                windows: windows, seconds: Date().timeIntervalSince(t0))
    }

    /// Runs `reference` and `candidate` over the same windows and compares their next-token distributions.
    public static func compare(reference: LlamaModel, candidate: LlamaModel, tokens: [Int], contextLength: Int,
                               stride: Int) throws -> DistributionComparison {
        let V = reference.config.vocabularySize
        guard candidate.config.vocabularySize == V else {
            throw EvaluationError.invalidValue(field: "candidate vocabulary size", value: "\(candidate.config.vocabularySize)",
                                               expected: "\(V) (the reference's)")
        }
        let t0 = Date()
        var nllR = 0.0, nllC = 0.0, kl = 0.0, maxKL = 0.0, agree = 0, count = 0
        let windows = try scoreWindows([reference, candidate], tokens: tokens, contextLength: contextLength,
                                       stride: stride) { target, logits in
            let p = logits[0], q = logits[1]
            let lseP = logSumExp(p, V), lseQ = logSumExp(q, V)
            nllR += lseP - Double(p[target])
            nllC += lseQ - Double(q[target])
            var d = 0.0, bestP = 0, bestQ = 0
            for i in 0..<V {
                let lp = Double(p[i]) - lseP, lq = Double(q[i]) - lseQ
                d += Foundation.exp(lp) * (lp - lq)
                if p[i] > p[bestP] { bestP = i }
                if q[i] > q[bestQ] { bestQ = i }
            }
            kl += d
            maxKL = max(maxKL, d)
            if bestP == bestQ { agree += 1 }
            count += 1
        }
        let seconds = Date().timeIntervalSince(t0)
        let n = Double(max(count, 1))
        func result(_ s: Double) -> PerplexityResult {
            PerplexityResult(perplexity: Foundation.exp(s / n), meanNLL: s / n, tokensScored: count, windows: windows,
                             seconds: seconds)
        }
        return DistributionComparison(top1Agreement: Double(agree) / n, meanKL: kl / n, maxKL: maxKL,
                                      reference: result(nllR), candidate: result(nllC), positions: count)
    }

    /// −log softmax(logits)[target], with the log-sum-exp in double precision.
    public static func negativeLogLikelihood(_ logits: UnsafePointer<Float>, count: Int, target: Int) -> Double {
        logSumExp(logits, count) - Double(logits[target])
    }

    static func logSumExp(_ x: UnsafePointer<Float>, _ n: Int) -> Double {
        var m = -Float.infinity
        for i in 0..<n { m = max(m, x[i]) }
        var s = 0.0
        for i in 0..<n { s += Foundation.exp(Double(x[i] - m)) }
        return Double(m) + Foundation.log(s)
    }

    /// Calls body(targetId, logits) for every scored token (targetId = its vocabulary id), logits[m] =
    /// models[m]'s logits that predict it. Returns the number of windows. The logits buffers are allocated once here.
    static func scoreWindows(_ models: [LlamaModel], tokens: [Int], contextLength: Int, stride: Int,
                             _ body: (Int, [UnsafePointer<Float>]) -> Void) throws -> Int {
        for (m, model) in models.enumerated() where contextLength > model.maxContext {
            throw EvaluationError.invalidValue(field: "contextLength", value: "\(contextLength)",
                                               expected: "≤ model \(m)'s KV cache (\(model.maxContext) positions)")
        }
        let windows = try windows(tokenCount: tokens.count, contextLength: contextLength, stride: stride)
        let V = models[0].config.vocabularySize
        let piece = models.map { $0.chunkSize }.min()!
        let buffers = models.map { _ in UnsafeMutableBufferPointer<Float>.allocate(capacity: piece * V) }
        defer { for b in buffers { b.deallocate() } }
        for w in windows {
            let begin = w.tokens.lowerBound
            // Logits at positions firstScored−1 ..< end−1 predict targets firstScored ..< end.
            let contextEnd = w.firstScored - 1
            for model in models {
                model.reset()
                if contextEnd > begin {
                    _ = try model.forward(tokens: Array(tokens[begin..<contextEnd]), startPosition: 0, logits: .last)
                }
            }
            var p = contextEnd
            while p < w.tokens.upperBound - 1 {
                let n = min(piece, w.tokens.upperBound - 1 - p)
                let ids = Array(tokens[p..<(p + n)])
                for (m, model) in models.enumerated() {
                    try model.forward(tokens: ids, startPosition: p - begin, logits: .all,
                                      into: UnsafeMutableBufferPointer(rebasing: buffers[m][0..<(n * V)]))
                }
                for i in 0..<n {
                    body(tokens[p + i + 1], buffers.map { UnsafePointer($0.baseAddress! + i * V) })
                }
                p += n
            }
        }
        return windows.count
    }
}

public enum EvaluationError: Error, CustomStringConvertible {
    case invalidValue(field: String, value: String, expected: String)
    case unreadable(file: String, reason: String)

    public var description: String {
        switch self {
        case let .invalidValue(field, value, expected): return "evaluation: \(field) is \(value), expected \(expected)"
        case let .unreadable(file, reason): return "\(file): \(reason)"
        }
    }
}

extension ModelBundle {
    /// Perplexity of this model on the UTF-8 text file at `path` (tokenized with BOS as `rawPrompt`).
    /// `contextLength` defaults to the model's KV cache, `stride` to half of it.
    public func perplexity(textFile path: String, contextLength: Int? = nil, stride: Int? = nil) throws -> PerplexityResult {
        let tokens = try tokens(ofTextFile: path)
        let n = contextLength ?? model.maxContext
        return try PerplexityEvaluator.evaluate(model: model, tokens: tokens, contextLength: n, stride: stride ?? max(1, n / 2))
    }

    /// The tokens of a UTF-8 text file.
    public func tokens(ofTextFile path: String) throws -> [Int] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw EvaluationError.unreadable(file: path, reason: "cannot read the file")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw EvaluationError.unreadable(file: path, reason: "not valid UTF-8")
        }
        return rawPrompt(text)
    }
}
