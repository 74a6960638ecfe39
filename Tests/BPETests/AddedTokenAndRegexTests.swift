// Fixtures: scripts/make_tokenizer_fixtures.py (pretokenizer-corpus.json, smollm2-added-tokens.json,
// added-tokens-corpus.json), made with the `tokenizers` library.
import Foundation
import Testing
import QLoRA
import _TestSupport

@Suite struct AddedTokenAndRegexTests {
    struct Split: Decodable {
        var text: String
        var fragments: [String]
    }

    /// The hand-written matchers give the same fragments as `tokenizers`' Split(Regex) (Oniguruma).
    @Test(arguments: ["gpt2", "llama3", "qwen2", "smollm"])
    func matchersAgreeWithTheRegexEngine(name: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("tokenizer/pretokenizer-corpus.json")))
        let all = try JSONDecoder().decode([String: [Split]].self, from: data)
        let cases = try #require(all[name])
        #expect(cases.count > 30)
        let pre: BPEPreTokenizer = switch name {
        case "gpt2": .gpt2
        case "llama3": .llama3
        case "qwen2": .qwen2
        default: .smolLM
        }
        for c in cases {
            #expect(pre.split(c.text) == c.fragments, "\(c.text.debugDescription)")
        }
    }

    struct AddedCase: Decodable {
        var text: String
        var ids: [Int]
        var decoded_skip_special: String
    }

    /// lstrip / rstrip / single_word / longest match, against `tokenizers`.
    @Test func addedTokenFlagsMatchTokenizers() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("bpe-added-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.copyItem(atPath: Fixtures.path("tokenizer/smollm2-added-tokens.json"),
                                         toPath: dir.appendingPathComponent("tokenizer.json").path)
        let tok = try TokenizerBundle.load(huggingFaceDirectory: dir.path).tokenizer
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("tokenizer/added-tokens-corpus.json")))
        struct File: Decodable { var cases: [AddedCase] }
        let cases = try JSONDecoder().decode(File.self, from: data).cases
        #expect(cases.count == 10)
        for c in cases {
            #expect(tok.encode(c.text, addSpecialTokens: false) == c.ids, "\(c.text.debugDescription)")
            #expect(tok.decode(c.ids, skipSpecialTokens: true) == c.decoded_skip_special)
        }
    }
}
