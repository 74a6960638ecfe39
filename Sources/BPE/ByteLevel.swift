/// GPT-2's `bytes_to_unicode` table (SPEC §9.1): every byte gets a printable code point, so byte-level
/// vocabularies and merges can be written as text. Printable Latin-1 bytes map to themselves; the other
/// 68 bytes, in increasing order, map to U+0100, U+0101, …
enum ByteLevel {
    /// `scalar[b]` is the code point that stands for byte `b`.
    static let scalar: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: "\0", count: 256)
        var next: UInt32 = 256
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            if printable {
                table[b] = Unicode.Scalar(UInt8(b))
            } else {
                table[b] = Unicode.Scalar(next)!
                next += 1
            }
        }
        return table
    }()

    /// The byte a code point stands for, or nil if it is not in the table.
    static func byte(for scalar: Unicode.Scalar) -> UInt8? {
        let v = scalar.value
        if v < 256 {
            let b = Int(v)
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            return printable ? UInt8(b) : nil
        }
        if v < 256 + 68 { return inverseHigh[Int(v - 256)] }
        return nil
    }

    private static let inverseHigh: [UInt8] = {
        var out = [UInt8](repeating: 0, count: 68)
        for b in 0..<256 where scalar[b].value >= 256 { out[Int(scalar[b].value - 256)] = UInt8(b) }
        return out
    }()

    /// The byte-level text of raw bytes (what a vocabulary entry looks like).
    static func encode<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        var s = String.UnicodeScalarView()
        for b in bytes { s.append(scalar[Int(b)]) }
        return String(s)
    }

    /// Raw bytes of a byte-level token text; code points outside the table keep their own UTF-8 bytes.
    static func decode(_ text: String, into out: inout [UInt8]) {
        for s in text.unicodeScalars {
            if let b = byte(for: s) { out.append(b) } else { out.append(contentsOf: String(s).utf8) }
        }
    }
}
