// Fixtures: scripts/make_tokenizer_fixtures.py (smollm2-reduced/).
import Testing
@testable import BPE
import QLoRA
import _TestSupport

@Suite struct StreamingDecoderTests {
    static func tokenizer() throws -> BPETokenizer {
        try TokenizerBundle.load(huggingFaceDirectory: Fixtures.path("tokenizer/smollm2-reduced")).tokenizer
    }

    /// The id of the single-byte token for `b` in a byte-level vocabulary.
    static func byteId(_ tok: BPETokenizer, _ b: UInt8) throws -> Int {
        try #require(tok.id(forToken: String(ByteLevel.scalar[Int(b)])))
    }

    @Test func holdsBackAnUnfinishedCharacterUntilItsLastByte() throws {
        let tok = try Self.tokenizer()
        let bytes: [UInt8] = Array("é漢😀".utf8)
        var d = tok.makeStreamingDecoder()
        var out: [String] = []
        for b in bytes { out.append(d.append(try Self.byteId(tok, b))) }
        out.append(d.finish())
        #expect(out == ["", "é", "", "", "漢", "", "", "", "😀", ""])
    }

    @Test func invalidBytesBecomeReplacementCharactersLikeAFullDecode() throws {
        let tok = try Self.tokenizer()
        let sequences: [[UInt8]] = [[0xE2, 0x82, 0x41], [0x80, 0x41], [0xE0, 0x80, 0x41], [0xF0, 0x9F, 0x98], [0xC3]]
        for seq in sequences {
            let ids = try seq.map { try Self.byteId(tok, $0) }
            var d = tok.makeStreamingDecoder()
            var text = ""
            for id in ids { text += d.append(id) }
            text += d.finish()
            #expect(text == tok.decode(ids), "\(seq)")
            #expect(text.unicodeScalars.contains("\u{FFFD}"))
        }
    }

    @Test func skipsSpecialTokensWhenAsked() throws {
        let tok = try Self.tokenizer()
        let ids = tok.encode("<|im_start|>user\nhi<|im_end|>", addSpecialTokens: false)
        var d = tok.makeStreamingDecoder(skipSpecialTokens: true)
        let text = ids.map { d.append($0) }.joined() + d.finish()
        #expect(text == "user\nhi")
    }
}
