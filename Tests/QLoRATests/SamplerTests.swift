import Foundation
import Testing
@testable import QLoRA

@Suite struct SamplerTests {
    func draw(_ logits: [Float], _ p: SamplingParameters, history: [Int] = [], times: Int) -> [Int: Int] {
        var sampler = Sampler(p)
        var counts: [Int: Int] = [:]
        for _ in 0..<times {
            var l = logits
            let id = l.withUnsafeMutableBufferPointer { sampler.sample(logits: $0, history: history) }
            counts[id, default: 0] += 1
        }
        return counts
    }

    @Test func greedyTakesFirstMaximum() {
        #expect(draw([0.1, 2, 2, -1], SamplingParameters(), times: 1) == [1: 1])
    }

    @Test func repetitionPenaltyDividesPositiveAndMultipliesNegativeLogits() {
        // Token 1 (logit 2) seen: 2/1.5 = 1.33 < 1.5, so token 2 wins; token 3 (-1) seen becomes -1.5.
        var l: [Float] = [0, 2, 1.5, -1]
        var sampler = Sampler(SamplingParameters(repetitionPenalty: 1.5))
        let id = l.withUnsafeMutableBufferPointer { sampler.sample(logits: $0, history: [1, 3, 1]) }
        #expect(id == 2)
        #expect(abs(l[1] - 2 / 1.5) < 1e-6 && l[3] == -1.5)
    }

    @Test func samplingFrequenciesFollowTheSoftmax() {
        let logits: [Float] = [0, log(2), log(3), log(4)]   // probabilities 0.1, 0.2, 0.3, 0.4
        let n = 40_000
        let counts = draw(logits, SamplingParameters(temperature: 1, seed: 7), times: n)
        for (i, p) in [0.1, 0.2, 0.3, 0.4].enumerated() {
            let f = Double(counts[i, default: 0]) / Double(n)
            #expect(abs(f - p) < 0.01, "token \(i): frequency \(f), expected \(p)")
        }
    }

    @Test func temperatureSharpensTheDistribution() {
        let logits: [Float] = [0, 1]
        let hot = draw(logits, SamplingParameters(temperature: 2, seed: 1), times: 20_000)[1, default: 0]
        let cold = draw(logits, SamplingParameters(temperature: 0.25, seed: 1), times: 20_000)[1, default: 0]
        // p(1) = sigmoid(1/T): 0.62 at T=2, 0.98 at T=0.25.
        #expect(abs(Double(hot) / 20_000 - 0.6225) < 0.015)
        #expect(abs(Double(cold) / 20_000 - 0.9820) < 0.01)
    }

    @Test func topKTopPAndMinPRestrictTheCandidates() {
        let logits: [Float] = [0, log(2), log(3), log(4)]
        #expect(Set(draw(logits, SamplingParameters(temperature: 1, topK: 2, seed: 3), times: 2000).keys) == [2, 3])
        // Sorted probabilities 0.4, 0.3, 0.2, 0.1: top-p 0.65 keeps {3, 2}; 0.75 keeps {3, 2, 1}.
        #expect(Set(draw(logits, SamplingParameters(temperature: 1, topP: 0.65, seed: 3), times: 2000).keys) == [2, 3])
        #expect(Set(draw(logits, SamplingParameters(temperature: 1, topP: 0.75, seed: 3), times: 2000).keys) == [1, 2, 3])
        // min-p 0.6: keep p >= 0.24, i.e. {3, 2}.
        #expect(Set(draw(logits, SamplingParameters(temperature: 1, minP: 0.6, seed: 3), times: 2000).keys) == [2, 3])
    }

    @Test func sameSeedSameStreamDifferentSeedDifferentStream() {
        func run(_ seed: UInt64) -> [Int] {
            var s = Sampler(SamplingParameters(temperature: 1, seed: seed))
            return (0..<50).map { _ in
                var l: [Float] = [0, 0.5, 1, 0.2, 0.7]
                return l.withUnsafeMutableBufferPointer { s.sample(logits: $0, history: []) }
            }
        }
        #expect(run(42) == run(42))
        #expect(run(42) != run(43))
    }
}
