import Foundation
import Testing
import QLoRA
import _TestSupport

@Suite struct TokenizerErrorTests {
    static func metadata() -> [String: GGUFValue] {
        [
            "tokenizer.ggml.model": .string("gpt2"),
            "tokenizer.ggml.pre": .string("gpt-2"),
            "tokenizer.ggml.tokens": .array(.string(["a", "b", "ab"])),
            "tokenizer.ggml.merges": .array(.string(["a b"])),
        ]
    }

    @Test func tinyHandBuiltGGUFMetadataWorks() throws {
        let tok = try TokenizerBundle.load(ggufMetadata: Self.metadata(), file: "x.gguf").tokenizer
        #expect(tok.encode("abba", addSpecialTokens: true) == [2, 1, 0])
        #expect(tok.decode([2, 1, 0]) == "abba")
    }

    @Test func errorsNameFileKeyAndValue() {
        var m = Self.metadata()
        m["tokenizer.ggml.pre"] = .string("nonsense")
        #expect(throws: ModelFormatError.invalidValue(file: "x.gguf", field: "tokenizer.ggml.pre", value: "\"nonsense\"",
                                                      expected: "a supported pre-tokenizer (default, gpt-2, smollm, llama-bpe, qwen2, …)")) {
            try TokenizerBundle.load(ggufMetadata: m, file: "x.gguf")
        }
        m = Self.metadata()
        m["tokenizer.ggml.model"] = .string("bert")
        #expect { try TokenizerBundle.load(ggufMetadata: m, file: "x.gguf") } throws: { e in
            "\(e)".contains("x.gguf") && "\(e)".contains("tokenizer.ggml.model") && "\(e)".contains("bert")
        }
        m = Self.metadata()
        m["tokenizer.ggml.merges"] = .array(.string(["a c"]))
        #expect { try TokenizerBundle.load(ggufMetadata: m, file: "x.gguf") } throws: { e in
            "\(e)".contains("merges[0]") && "\(e)".contains("a c")
        }
        m = Self.metadata()
        m["tokenizer.ggml.eos_token_id"] = .uint32(7)
        #expect { try TokenizerBundle.load(ggufMetadata: m, file: "x.gguf") } throws: { e in
            "\(e)".contains("tokenizer.ggml.eos_token_id") && "\(e)".contains("7")
        }
    }

    @Test func missingTokenizerJSONNamesThePath() {
        #expect { try TokenizerBundle.load(huggingFaceDirectory: "/nonexistent-dir") } throws: { e in
            "\(e)".contains("/nonexistent-dir/tokenizer.json")
        }
    }
}
