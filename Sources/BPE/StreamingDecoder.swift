/// Turns ids into text one at a time, returning only complete text: a multi-byte UTF-8 character
/// split across tokens is held back until its last byte arrives. The concatenation of everything
/// `append` and `finish` return equals `tokenizer.decode(allIds, skipSpecialTokens:)`, including
/// SentencePiece's rule that the leading space of the output is dropped.
public struct StreamingDecoder: Sendable {
    public let tokenizer: BPETokenizer
    public let skipSpecialTokens: Bool
    private var pending: [UInt8] = []
    private var started = false

    public init(tokenizer: BPETokenizer, skipSpecialTokens: Bool = false) {
        self.tokenizer = tokenizer
        self.skipSpecialTokens = skipSpecialTokens
    }

    /// Feeds one id; returns the text that became complete (often "").
    public mutating func append(_ id: Int) -> String {
        if skipSpecialTokens && tokenizer.specialTokenIds.contains(id) { return "" }
        var bytes = tokenizer.tokenBytes(id)
        if !started && !bytes.isEmpty {
            started = true
            if tokenizer.stripsLeadingSpace && bytes.first == 0x20 { bytes.removeFirst() }
        }
        pending.append(contentsOf: bytes)
        let keep = StreamingDecoder.incompleteSuffixLength(pending)
        if keep == pending.count { return "" }
        let text = String(decoding: pending[..<(pending.count - keep)], as: UTF8.self)
        pending.removeFirst(pending.count - keep)
        return text
    }

    /// Returns whatever is still held back (an unfinished character becomes U+FFFD) and resets.
    public mutating func finish() -> String {
        let text = String(decoding: pending, as: UTF8.self)
        pending.removeAll()
        started = false
        return text
    }

    /// Length of a trailing proper prefix of a valid UTF-8 sequence (0 if the bytes end cleanly or
    /// the tail can never become valid, in which case it is decoded now as U+FFFD like a full decode).
    static func incompleteSuffixLength(_ b: [UInt8]) -> Int {
        let n = b.count
        var k = 1
        while k <= min(3, n) {
            let lead = b[n - k]
            if lead & 0xC0 != 0x80 {
                let need: Int
                switch lead {
                case 0xC2...0xDF: need = 2
                case 0xE0...0xEF: need = 3
                case 0xF0...0xF4: need = 4
                default: return 0
                }
                guard k < need else { return 0 }
                if k >= 2 {
                    // The second byte's allowed range depends on the lead byte.
                    let second = b[n - k + 1]
                    let ok: Bool
                    switch lead {
                    case 0xE0: ok = (0xA0...0xBF).contains(second)
                    case 0xED: ok = (0x80...0x9F).contains(second)
                    case 0xF0: ok = (0x90...0xBF).contains(second)
                    case 0xF4: ok = (0x80...0x8F).contains(second)
                    default: ok = (0x80...0xBF).contains(second)
                    }
                    if !ok { return 0 }
                }
                return k
            }
            k += 1
        }
        return 0
    }
}
