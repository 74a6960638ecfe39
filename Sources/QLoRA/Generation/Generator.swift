import Foundation

/// What generation needs from a model: run a chunk of tokens through it (extending its KV cache)
/// and give back the logits that predict the token after the chunk.
public protocol CausalLanguageModel: AnyObject {
    var vocabularySize: Int { get }
    /// The most positions the KV cache holds.
    var contextLength: Int { get }
    /// Feeds `tokens` at positions `startPosition…`, returns the next-token logits (vocabularySize values).
    func nextTokenLogits(tokens: [Int], startPosition: Int) throws -> [Float]
    /// Forgets the KV cache.
    func resetCache()
}

/// Why generation ended.
public enum StopReason: String, Codable, Sendable {
    /// An end-of-sequence or end-of-turn token was produced (it is not part of the text).
    case eos
    /// One of the stop strings appeared (the text is cut just before it).
    case stopString = "stop"
    /// `maxTokens` tokens were generated.
    case length
    /// The KV cache is full.
    case contextFull = "context_full"
}

public struct GenerationOptions: Sendable {
    public var maxTokens: Int = 256
    public var sampling = SamplingParameters()
    public var stopStrings: [String] = []
    /// Token ids that end generation (EOS and end-of-turn tokens).
    public var stopTokenIds: Set<Int> = []
    /// Generate exactly `maxTokens` tokens, passing through EOS and stop strings.
    public var ignoreEOS = false
    /// Record the k most likely next tokens (log-probabilities) at every generated step.
    public var topLogprobs = 0

    public init(maxTokens: Int = 256, sampling: SamplingParameters = SamplingParameters(), stopStrings: [String] = [],
                stopTokenIds: Set<Int> = [], ignoreEOS: Bool = false, topLogprobs: Int = 0) {
        self.maxTokens = maxTokens; self.sampling = sampling; self.stopStrings = stopStrings
        self.stopTokenIds = stopTokenIds; self.ignoreEOS = ignoreEOS; self.topLogprobs = topLogprobs
    }
}

public struct TokenLogprob: Codable, Sendable, Equatable {
    public var id: Int
    public var logprob: Float
}

public struct GenerationResult: Sendable {
    public var promptTokens: [Int]
    /// Generated ids, including a final EOS token if one ended generation.
    public var tokens: [Int]
    public var text: String
    public var stopReason: StopReason
    public var prefillSeconds: Double
    public var decodeSeconds: Double
    /// Per generated token, when `topLogprobs` > 0.
    public var topLogprobs: [[TokenLogprob]] = []

    public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(promptTokens.count) / prefillSeconds : 0 }
    /// Tokens after the first (the first comes from the prefill) per second of decoding.
    public var decodeTokensPerSecond: Double {
        decodeSeconds > 0 && tokens.count > 1 ? Double(tokens.count - 1) / decodeSeconds : 0
    }
}

public enum GenerationError: Error, CustomStringConvertible {
    case emptyPrompt
    case promptTooLong(tokens: Int, contextLength: Int)

    public var description: String {
        switch self {
        case .emptyPrompt: return "the prompt has no tokens"
        case let .promptTooLong(tokens, context):
            return "the prompt has \(tokens) tokens but the context holds \(context)"
        }
    }
}

/// Runs the prefill / decode loop and turns ids into streamed text.
public enum Generator {
    /// Generates from `promptTokens`. `onText` receives text as soon as it is final: complete
    /// UTF-8 characters, and never a piece that might still turn into a stop string.
    public static func generate(model: CausalLanguageModel, tokenizer: BPETokenizer, promptTokens: [Int],
                                options: GenerationOptions, onText: (String) -> Void = { _ in }) throws -> GenerationResult {
        guard !promptTokens.isEmpty else { throw GenerationError.emptyPrompt }
        guard promptTokens.count < model.contextLength else {
            throw GenerationError.promptTooLong(tokens: promptTokens.count, contextLength: model.contextLength)
        }
        model.resetCache()
        var sampler = Sampler(options.sampling)
        var decoder = StreamingDecoder(tokenizer: tokenizer, skipSpecialTokens: false)
        var history = promptTokens
        var generated: [Int] = []
        var text = ""          // final text so far
        var emitted = 0        // characters of `text` already handed to onText
        var stopReason = StopReason.length
        var topLogprobs: [[TokenLogprob]] = []

        let start = Date()
        var logits = try model.nextTokenLogits(tokens: promptTokens, startPosition: 0)
        let prefillSeconds = Date().timeIntervalSince(start)
        let decodeStart = Date()

        /// Longest suffix of `text` that is a proper prefix of some stop string: held back.
        func heldBack() -> Int {
            var longest = 0
            for stop in options.stopStrings where !stop.isEmpty {
                for k in stride(from: min(stop.count - 1, text.count), to: 0, by: -1)
                    where k > longest && text.hasSuffix(stop.prefix(k)) {
                    longest = k
                    break
                }
            }
            return longest
        }

        while generated.count < options.maxTokens {
            if options.topLogprobs > 0 { topLogprobs.append(Generator.topLogprobs(logits, k: options.topLogprobs)) }
            let next = logits.withUnsafeMutableBufferPointer { sampler.sample(logits: $0, history: history) }
            generated.append(next)
            history.append(next)
            if !options.ignoreEOS && options.stopTokenIds.contains(next) { stopReason = .eos; break }
            text += decoder.append(next)
            if !options.ignoreEOS, let stop = options.stopStrings.first(where: { !$0.isEmpty && text.contains($0) }) {
                text = String(text[..<text.range(of: stop)!.lowerBound])
                stopReason = .stopString
                break
            }
            let ready = text.count - heldBack()
            if ready > emitted {
                onText(String(text.dropFirst(emitted).prefix(ready - emitted)))
                emitted = ready
            }
            if generated.count == options.maxTokens { break }
            if history.count >= model.contextLength { stopReason = .contextFull; break }
            logits = try model.nextTokenLogits(tokens: [next], startPosition: history.count - 1)
        }
        if stopReason != .stopString && stopReason != .eos { text += decoder.finish() }
        if stopReason == .eos { text += decoder.finish() }
        if text.count > emitted { onText(String(text.dropFirst(emitted))) }
        return GenerationResult(promptTokens: promptTokens, tokens: generated, text: text, stopReason: stopReason,
                                prefillSeconds: prefillSeconds, decodeSeconds: Date().timeIntervalSince(decodeStart),
                                topLogprobs: topLogprobs)
    }

    /// The k largest log-softmax values of `logits`, most likely first.
    public static func topLogprobs(_ logits: [Float], k: Int) -> [TokenLogprob] {
        let maxLogit = logits.max() ?? 0
        var sum: Double = 0
        for l in logits { sum += Double(expf(l - maxLogit)) }
        let logZ = Float(log(sum)) + maxLogit
        var best: [(Int, Float)] = []
        for (i, l) in logits.enumerated() where best.count < k || l > best[best.count - 1].1 {
            let at = best.firstIndex { l > $0.1 } ?? best.count
            best.insert((i, l), at: at)
            if best.count > k { best.removeLast() }
        }
        return best.map { TokenLogprob(id: $0.0, logprob: $0.1 - logZ) }
    }
}
