// Fixtures: scripts/make_tokenizer_fixtures.py (tiny-spm/, tiny-spm-metaspace.json).
import Foundation
import Testing
import QLoRA
import _TestSupport

@Suite struct SentencePieceTokenizerTests {
    static func jsonBundle() throws -> TokenizerBundle {
        try TokenizerBundle.load(huggingFaceDirectory: Fixtures.path("tokenizer/tiny-spm"))
    }

    static func ggufBundle() throws -> TokenizerBundle {
        let path = Fixtures.path("tokenizer/tiny-spm/tokenizer.gguf")
        return try TokenizerBundle.load(ggufMetadata: try GGUFFile(path: path).metadata, file: path)
    }

    /// Legacy Llama tokenizer.json (Prepend + Replace normalizer, byte_fallback), as LlamaConverter builds it.
    @Test func tokenizerJSONMatchesTransformersAndSentencePiece() throws {
        let tok = try Self.jsonBundle().tokenizer
        for c in try TokenizerFixtures.spmCases() {
            #expect(tok.encode(c.text, addSpecialTokens: false) == c.ids, "\(c.text.debugDescription)")
            #expect(tok.encode(c.text, addSpecialTokens: true) == c.ids_with_special)
            #expect(c.ids.map { tok.tokenText($0) } == c.tokens)
            #expect(tok.decode(c.ids) == c.decoded)
            #expect(tok.decode(c.ids_with_special) == c.decoded_with_special)
            #expect(tok.decode(c.ids_with_special, skipSpecialTokens: true) == c.decoded_skip_special)
        }
    }

    /// Score-based merging from GGUF `tokenizer.ggml.model = "llama"` gives the same ids.
    @Test func ggufScoresMatchTheMergeList() throws {
        let bundle = try Self.ggufBundle()
        let tok = bundle.tokenizer
        for c in try TokenizerFixtures.spmCases() {
            #expect(tok.encode(c.text, addSpecialTokens: false) == c.ids, "\(c.text.debugDescription)")
            #expect(tok.encode(c.text, addSpecialTokens: true) == c.ids_with_special)
            #expect(tok.decode(c.ids_with_special, skipSpecialTokens: true) == c.decoded_skip_special)
        }
        #expect(bundle.bosToken == "<s>")
        #expect(bundle.eosTokenIds == [2])
        #expect(bundle.chatTemplate?.contains("[INST]") == true)
    }

    /// transformers 5's Llama pipeline: Metaspace(prepend_scheme "first") pre-tokenizer, no normalizer.
    @Test func metaspacePreTokenizerMatchesTransformers() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("bpe-metaspace-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.copyItem(atPath: Fixtures.path("tokenizer/tiny-spm-metaspace.json"),
                                         toPath: dir.appendingPathComponent("tokenizer.json").path)
        let tok = try TokenizerBundle.load(huggingFaceDirectory: dir.path).tokenizer
        for c in try TokenizerFixtures.spmCases() {
            #expect(tok.encode(c.text, addSpecialTokens: false) == c.ids_metaspace, "\(c.text.debugDescription)")
            #expect(tok.decode(c.ids_metaspace) == c.decoded_metaspace)
        }
    }

    /// Speed figure (printed): the legacy pipeline merges a whole segment as one word.
    @Test func encodingSpeedFigure() throws {
        let tok = try Self.jsonBundle().tokenizer
        let text = String(repeating: "the quick brown fox jumps over the lazy dog, café naïve 漢字 😀\n", count: 1_600)
        let clock = ContinuousClock()
        var ids: [Int] = []
        let t = clock.measure { ids = tok.encode(text, addSpecialTokens: false) }
        let sec = Double(t.components.seconds) + Double(t.components.attoseconds) * 1e-18
        print("SPM speed: \(text.utf8.count) bytes -> \(ids.count) tokens in \(String(format: "%.3f", sec)) s = \(Int(Double(ids.count) / sec)) tokens/s")
        #expect(tok.decode(ids) == text)
    }

    @Test func bundleReadsConfigFlagsAndTemplate() throws {
        let bundle = try Self.jsonBundle()
        #expect(bundle.tokenizer.bosTokenId == 1)
        #expect(bundle.tokenizer.eosTokenId == 2)
        #expect(bundle.tokenizer.unknownTokenId == 0)
        #expect(bundle.eosToken == "</s>")
        #expect(bundle.chatTemplate?.contains("<<SYS>>") == true)
        #expect(bundle.tokenizer.vocabularySize == 420)
    }

    @Test func streamingDecodeOfByteFallbackEqualsFullDecode() throws {
        for tok in [try Self.jsonBundle().tokenizer, try Self.ggufBundle().tokenizer] {
            for text in ["Out of vocab: 漢字 ж 😀 👍🏽", "  two leading spaces", "<s>hi</s> there"] {
                let ids = tok.encode(text, addSpecialTokens: true)
                for skip in [false, true] {
                    var d = tok.makeStreamingDecoder(skipSpecialTokens: skip)
                    var out = ""
                    var sawPartial = false
                    for id in ids {
                        let piece = d.append(id)
                        sawPartial = sawPartial || piece.unicodeScalars.contains("\u{FFFD}")
                        out += piece
                    }
                    out += d.finish()
                    #expect(out == tok.decode(ids, skipSpecialTokens: skip), "\(text.debugDescription)")
                    #expect(!sawPartial)
                }
            }
        }
    }
}
