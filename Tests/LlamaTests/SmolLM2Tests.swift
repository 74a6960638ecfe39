// Fixtures: scripts/make_llama_fixtures.py (smollm2-expected.json, from transformers on the float32
// conversion of the same GGUF). Needs the real model: Fixtures.smolLM2GGUF (scripts/fetch_model.sh).
import Foundation
import Testing
import _TestSupport
@testable import Llama

@Suite struct SmolLM2Tests {
    /// For 4 prompts (2 chat-templated, 2 raw text): our logits at transformers' top-20 ids match within
    /// 1e-3 at every position, and 20 greedy ids (KV-cache decode) are equal.
    @Test func realModelMatchesTransformers() throws {
        let path = Fixtures.smolLM2GGUF
        try #require(FileManager.default.fileExists(atPath: path), "missing \(path): run scripts/fetch_model.sh")
        let model = try LlamaModel(ggufPath: path, maxContext: 128)
        #expect(model.config.layerCount == 30 && model.config.headCount == 9 && model.config.kvHeadCount == 3)
        #expect(model.config.ropeTheta == 100000 && !model.weights.hasSeparateLMHead)

        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("llama/smollm2-expected.json")))
        let root = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let prompts = try #require(root["prompts"] as? [[String: Any]])
        #expect(prompts.count == 4)
        let V = model.config.vocabularySize
        for (n, p) in prompts.enumerated() {
            let ids = try #require(p["ids"] as? [Int])
            let topIds = try #require(p["top_ids"] as? [[Int]])
            let topLogits = try #require(p["top_logits"] as? [[Double]])
            let greedy = try #require(p["greedy"] as? [Int])
            model.reset()
            let logits = try model.forward(tokens: ids, startPosition: 0, logits: .all)
            var worst: Float = 0
            for t in 0..<ids.count {
                for (id, value) in zip(topIds[t], topLogits[t]) {
                    worst = max(worst, abs(logits[t * V + id] - Float(value)))
                }
            }
            #expect(worst < 1e-3, "prompt \(n): max |Δlogit| = \(worst)")
            #expect(try greedyIds(model, prompt: ids, steps: greedy.count) == greedy, "prompt \(n)")
        }
    }
}
