/// How the next token is chosen from a row of logits.
/// Defaults give greedy decoding. The order of the transforms follows transformers'
/// `generate`: repetition penalty, temperature, top-k, top-p, min-p, then a draw.
public struct SamplingParameters: Sendable, Equatable {
    /// 0 means greedy (argmax).
    public var temperature: Float = 0
    /// Keep only the k most likely tokens; 0 disables.
    public var topK: Int = 0
    /// Keep the smallest set of tokens whose probability sums to at least p; 1 disables.
    public var topP: Float = 1
    /// Drop tokens whose probability is below minP × the top probability; 0 disables.
    public var minP: Float = 0
    /// > 1 discourages tokens already seen (CTRL-style, as transformers: positive logits are
    /// divided by it, negative ones multiplied); 1 disables.
    public var repetitionPenalty: Float = 1
    public var seed: UInt64 = 0

    public init(temperature: Float = 0, topK: Int = 0, topP: Float = 1, minP: Float = 0,
                repetitionPenalty: Float = 1, seed: UInt64 = 0) {
        self.temperature = temperature; self.topK = topK; self.topP = topP; self.minP = minP
        self.repetitionPenalty = repetitionPenalty; self.seed = seed
    }

    public var isGreedy: Bool { temperature <= 0 }
}

/// Picks token ids from logits. Holds its random stream and scratch buffers, so a generation
/// loop allocates nothing per token after the first.
public struct Sampler {
    public let parameters: SamplingParameters
    private var random: SeededRandom
    private var candidates: [(id: Int, logit: Float)] = []

    public init(_ parameters: SamplingParameters) {
        self.parameters = parameters
        self.random = SeededRandom(seed: parameters.seed)
    }

    /// Chooses the next id. `logits` is modified in place by the repetition penalty.
    /// `history` is every token so far (prompt and generated), as transformers penalizes both.
    public mutating func sample(logits: UnsafeMutableBufferPointer<Float>, history: [Int]) -> Int {
        if parameters.repetitionPenalty != 1 {
            let penalty = parameters.repetitionPenalty
            for id in Set(history) where id >= 0 && id < logits.count {
                let l = logits[id]
                logits[id] = l > 0 ? l / penalty : l * penalty
            }
        }
        if parameters.isGreedy { return Sampler.argmax(UnsafeBufferPointer(logits)) }

        let invT = 1 / parameters.temperature
        candidates.removeAll(keepingCapacity: true)
        for i in 0..<logits.count where logits[i] > -Float.infinity {
            candidates.append((i, logits[i] * invT))
        }
        if candidates.isEmpty { return Sampler.argmax(UnsafeBufferPointer(logits)) }
        candidates.sort { $0.logit > $1.logit || ($0.logit == $1.logit && $0.id < $1.id) }
        if parameters.topK > 0 && parameters.topK < candidates.count {
            candidates.removeSubrange(parameters.topK...)
        }
        // Softmax over the survivors (sorted, so the first is the max).
        let maxLogit = candidates[0].logit
        var probabilities = candidates.map { expf($0.logit - maxLogit) }
        var total = probabilities.reduce(0, +)
        for i in probabilities.indices { probabilities[i] /= total }
        var keep = probabilities.count
        if parameters.topP < 1 {
            var cumulative: Float = 0
            for i in 0..<probabilities.count {
                cumulative += probabilities[i]
                if cumulative >= parameters.topP { keep = i + 1; break }
            }
        }
        if parameters.minP > 0 {
            let threshold = parameters.minP * probabilities[0]
            var count = 0
            while count < keep && probabilities[count] >= threshold { count += 1 }
            keep = max(1, count)
        }
        total = probabilities[0..<keep].reduce(0, +)
        let r = random.nextUnitFloat() * total
        var cumulative: Float = 0
        for i in 0..<keep {
            cumulative += probabilities[i]
            if r < cumulative { return candidates[i].id }
        }
        return candidates[keep - 1].id
    }

    /// Index of the largest value; the first one on ties (as torch.argmax).
    public static func argmax(_ values: UnsafeBufferPointer<Float>) -> Int {
        var best = 0
        var bestValue = -Float.infinity
        for i in 0..<values.count where values[i] > bestValue {
            best = i; bestValue = values[i]
        }
        return best
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
