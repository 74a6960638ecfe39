// The second architecture family end to end: a tiny random Llama-2-style model with a real
// SentencePiece BPE tokenizer, against transformers (scripts/make_pair_fixtures.py →
// Tests/Fixtures/llama/tiny-llama2-spm-expected.json): chat template, tokenization, greedy ids.
import Foundation
import Testing
import _TestSupport
@testable import QLoRA

@Suite struct SentencePieceModelTests {
    /// The fixture model folder: tiny-llama-untied's weights with tiny-spm's tokenizer (symlinks).
    func assembleFolder() throws -> String {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("qlora-tiny-llama2-spm-\(getpid())")
        try Fixtures.linkTinyLlama2Model(at: folder)
        return folder.path
    }

    @Test func chatTemplateTokensAndGreedyIdsMatchTransformers() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("llama/tiny-llama2-spm-expected.json")))
        let root = try #require(JSONSerialization.jsonObject(with: data) as? [String: Any])
        let cases = try #require(root["cases"] as? [[String: Any]])
        let folder = try assembleFolder()
        defer { try? FileManager.default.removeItem(atPath: folder) }
        let bundle = try ModelBundle(path: folder, contextLength: 128, quantization: .none)
        #expect(cases.count == 4)
        for c in cases {
            let expectedIds = try #require(c["ids"] as? [Int])
            let ids: [Int]
            if c["kind"] as? String == "chat" {
                let messages = try #require(c["messages"] as? [[String: String]]).map {
                    ChatMessage(role: $0["role"]!, content: $0["content"]!)
                }
                let prompt = try bundle.chatPrompt(messages)
                #expect(prompt.text == c["text"] as? String)
                ids = prompt.ids
            } else {
                ids = bundle.rawPrompt(try #require(c["text"] as? String))
            }
            #expect(ids == expectedIds, "prompt \(String(describing: c["text"]))")
            let greedy = try #require(c["greedy"] as? [Int])
            var options = bundle.generationOptions()
            options.maxTokens = greedy.count
            options.ignoreEOS = true
            let result = try Generator.generate(model: bundle.model, tokenizer: bundle.tokenizer.tokenizer,
                                                promptTokens: expectedIds, options: options)
            #expect(result.tokens == greedy, "greedy ids for \(String(describing: c["text"]))")
        }
    }
}
