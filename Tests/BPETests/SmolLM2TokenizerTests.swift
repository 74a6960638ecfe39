// Fixtures: scripts/make_tokenizer_fixtures.py (smollm2-corpus.json, smollm2-reduced/).
import Foundation
import Testing
import QLoRA
import _TestSupport

@Suite struct SmolLM2TokenizerTests {
    static func ggufBundle() throws -> TokenizerBundle {
        let path = Fixtures.smolLM2GGUF
        let file = try GGUFFile(path: path)
        return try TokenizerBundle.load(ggufMetadata: file.metadata, file: path)
    }

    static func jsonBundle() throws -> TokenizerBundle {
        try TokenizerBundle.load(huggingFaceDirectory: Fixtures.path("tokenizer/smollm2-reduced"))
    }

    /// The GGUF says `tokenizer.ggml.pre = "smollm"`: digits split one by one, then the GPT-2 regex
    /// (llama.cpp and the hub tokenizer.json). The reference ids come from `tokenizers` with that pipeline.
    @Test func ggufMetadataEncodesLikeTheSmolLMPipeline() throws {
        let bundle = try Self.ggufBundle()
        let tok = bundle.tokenizer
        let cases = try TokenizerFixtures.smolLM2Cases()
        #expect(cases.count == 33)
        #expect(cases.filter { $0.ids_smollm != $0.ids_hf }.count == 2, "the Digits step matters somewhere")
        #expect(cases.filter { $0.decoded != $0.text }.count == 1, "only the control-byte case is lossy")
        for c in cases {
            #expect(tok.encode(c.text, addSpecialTokens: false) == c.ids_smollm, "\(c.text.debugDescription)")
            #expect(tok.encode(c.text, addSpecialTokens: true) == c.ids_smollm, "no BOS for SmolLM2")
            #expect(tok.decode(c.ids_smollm) == c.decoded, "round trip \(c.text.debugDescription)")
            #expect(tok.decode(c.ids_hf) == c.decoded)
            #expect(tok.decode(c.ids_hf, skipSpecialTokens: true) == c.decoded_skip_special)
        }
    }

    /// The transformers tokenizer.json (ByteLevel only, no Digits step) loaded from the reduced copy.
    @Test func tokenizerJSONEncodesLikeTransformers() throws {
        let tok = try Self.jsonBundle().tokenizer
        for c in try TokenizerFixtures.smolLM2Cases() {
            #expect(tok.encode(c.text, addSpecialTokens: false) == c.ids_hf, "\(c.text.debugDescription)")
            #expect(tok.encode(c.text, addSpecialTokens: true) == c.ids_hf)
            #expect(tok.decode(c.ids_hf) == c.decoded)
            #expect(tok.decode(c.ids_hf, skipSpecialTokens: true) == c.decoded_skip_special)
        }
    }

    @Test func bundlesCarrySpecialTokensAndTemplate() throws {
        for bundle in [try Self.ggufBundle(), try Self.jsonBundle()] {
            let tok = bundle.tokenizer
            #expect(tok.bosTokenId == 1)
            #expect(tok.eosTokenId == 2)
            #expect(tok.padTokenId == 2)
            #expect(tok.unknownTokenId == 0)
            #expect(bundle.bosToken == "<|im_start|>")
            #expect(bundle.eosToken == "<|im_end|>")
            #expect(bundle.eosTokenIds == [2])
            #expect(bundle.chatTemplate?.contains("<|im_start|>assistant\n") == true)
            #expect(tok.tokenText(1) == "<|im_start|>")
            #expect(tok.id(forToken: "<|im_end|>") == 2)
            #expect(tok.specialTokenIds.isSuperset(of: [0, 1, 2, 16]))
        }
        #expect(try Self.ggufBundle().tokenizer.vocabularySize == 49152)
    }

    @Test func thirdPartyVectorsFromTheSpecHold() throws {
        let tok = try Self.ggufBundle().tokenizer
        #expect(tok.encode("Hello, we can use", addSpecialTokens: false) == [19556, 28, 392, 416, 722])
        #expect(tok.encode("The capital of France is", addSpecialTokens: false) == [504, 3575, 282, 4649, 314])
        #expect(tok.encode("Hello world! 123", addSpecialTokens: false) == [19556, 905, 17, 216, 33, 34, 35])
    }

    @Test func streamingDecodeEqualsFullDecode() throws {
        let tok = try Self.ggufBundle().tokenizer
        for c in try TokenizerFixtures.smolLM2Cases() {
            for skip in [false, true] {
                var d = tok.makeStreamingDecoder(skipSpecialTokens: skip)
                var pieces: [String] = []
                for id in c.ids_smollm { pieces.append(d.append(id)) }
                pieces.append(d.finish())
                #expect(pieces.joined() == tok.decode(c.ids_smollm, skipSpecialTokens: skip))
                // Never a replacement character in the middle of a stream of valid text.
                #expect(!pieces.contains { $0.unicodeScalars.contains("\u{FFFD}") })
            }
        }
        // An emoji split across byte tokens appears only once complete.
        let ids = tok.encode("👨‍👩‍👧", addSpecialTokens: false)
        #expect(ids.count > 1)
        var d = tok.makeStreamingDecoder()
        let first = d.append(ids[0])
        #expect(first.isEmpty)
    }

    /// Speed figure (printed, not asserted): encode ~100 KB of mixed text.
    @Test func encodingSpeedFigure() throws {
        let tok = try Self.ggufBundle().tokenizer
        let cases = try TokenizerFixtures.smolLM2Cases().filter { $0.decoded == $0.text }
        #expect(cases.count == 32)
        var text = ""
        while text.utf8.count < 100_000 { for c in cases { text += c.text + "\n" } }
        let clock = ContinuousClock()
        var ids: [Int] = []
        let t = clock.measure { ids = tok.encode(text, addSpecialTokens: false) }
        let seconds = Double(t.components.seconds) + Double(t.components.attoseconds) * 1e-18
        var decoded = ""
        let td = clock.measure { decoded = tok.decode(ids) }
        let dsec = Double(td.components.seconds) + Double(td.components.attoseconds) * 1e-18
        print("BPE speed: encoded \(text.utf8.count) bytes -> \(ids.count) tokens in \(String(format: "%.3f", seconds)) s = \(Int(Double(ids.count) / seconds)) tokens/s; decode \(Int(Double(ids.count) / dsec)) tokens/s")
        #expect(decoded == text)

        // One 100 KB fragment (no spaces): the heap-based merge path.
        let cjk = String(repeating: "日本語のテキストと中文文本한국어텍스트", count: 1_600)
        var cjkIds: [Int] = []
        let tc = clock.measure { cjkIds = tok.encode(cjk, addSpecialTokens: false) }
        let csec = Double(tc.components.seconds) + Double(tc.components.attoseconds) * 1e-18
        print("BPE speed: \(cjk.utf8.count) bytes of CJK in one fragment -> \(cjkIds.count) tokens in \(String(format: "%.3f", csec)) s")
        #expect(tok.decode(cjkIds) == cjk)
    }
}
