import Testing
@testable import BPE

@Suite struct PreTokenizerTests {
    @Test func gpt2KeepsOneSpaceForTheNextWord() {
        #expect(BPEPreTokenizer.gpt2.split("  multiple   spaces") == [" ", " multiple", "  ", " spaces"])
        #expect(BPEPreTokenizer.gpt2.split("trailing  ") == ["trailing", "  "])
        #expect(BPEPreTokenizer.gpt2.split("I'm 'Re") == ["I", "'m", " '", "Re"])
        #expect(BPEPreTokenizer.gpt2.split("a\n\nb") == ["a", "\n", "\n", "b"])
    }

    @Test func smolLMSplitsEveryDigit() {
        #expect(BPEPreTokenizer.smolLM.split("Hello world! 123") == ["Hello", " world", "!", " ", "1", "2", "3"])
        #expect(BPEPreTokenizer.smolLM.split("x²⁴") == ["x", "²", "⁴"])
    }

    @Test func llama3GroupsDigitsByThreeAndKeepsNewlines() {
        #expect(BPEPreTokenizer.llama3.split("1234567 ok") == ["123", "456", "7", " ok"])
        #expect(BPEPreTokenizer.llama3.split("He'S here!!\n\n  x") == ["He", "'S", " here", "!!\n\n", " ", " x"])
        #expect(BPEPreTokenizer.llama3.split("a \n\n b") == ["a", " \n\n", " b"])
        #expect(BPEPreTokenizer.qwen2.split("123") == ["1", "2", "3"])
    }

    @Test func defaultSplitsPunctuationFirst() {
        #expect(BPEPreTokenizer.default.split("a+b=12345") == ["a", "+", "b", "=", "123", "45"])
    }

    @Test func unicodeClassesUseGeneralCategoriesAndWhiteSpace() {
        // U+3000 is White_Space, U+200B is not; Ⅻ is a letter number (N*).
        #expect(BPEPreTokenizer.gpt2.split("漢字\u{3000}かな") == ["漢字", "\u{3000}", "かな"])
        #expect(BPEPreTokenizer.gpt2.split("a\u{200B}b") == ["a", "\u{200B}", "b"])
        #expect(BPEPreTokenizer.gpt2.split("Ⅻ1") == ["Ⅻ1"])
    }
}
