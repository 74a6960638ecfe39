/// The regex pre-tokenizers of byte-level BPE (SPEC §9.2), as hand-written matchers over Unicode scalars.
///
/// A pre-tokenizer is a list of steps. Each step splits every current fragment into
/// [unmatched gap, match, gap, match, …] (gaps are kept as their own fragments), as llama.cpp's
/// `unicode_regex_split` and Hugging Face's `Split(behavior: Isolated)` do. Letter, number and
/// whitespace classes are the Unicode general categories L*, N* and the White_Space property.
public struct BPEPreTokenizer: Sendable, Equatable {
    public enum Step: Sendable, Equatable {
        /// `\p{N}` (each number code point alone) when `individual`, else `\p{N}+` runs.
        case digits(individual: Bool)
        /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
        case gpt2
        /// Llama-3: `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
        case llama3
        /// Qwen2: as `llama3` but `\p{N}` (single number code points).
        case qwen2
        /// `[\p{P}\$\+<=>\^~\|]+` (first step of llama.cpp's "default").
        case punctuation
        /// `[0-9][0-9][0-9]` (last step of llama.cpp's "default").
        case threeDigits
    }

    public var steps: [Step]

    public init(steps: [Step]) { self.steps = steps }

    public static let gpt2 = BPEPreTokenizer(steps: [.gpt2])
    public static let smolLM = BPEPreTokenizer(steps: [.digits(individual: true), .gpt2])
    public static let llama3 = BPEPreTokenizer(steps: [.llama3])
    public static let qwen2 = BPEPreTokenizer(steps: [.qwen2])
    public static let `default` = BPEPreTokenizer(steps: [.punctuation, .gpt2, .digits(individual: false), .threeDigits])

    /// The pre-tokenizer a GGUF `tokenizer.ggml.pre` value names (llama.cpp's table), or nil if unknown.
    public static func named(_ name: String) -> BPEPreTokenizer? {
        switch name {
        case "default": return .default
        case "gpt-2", "gpt2", "mpt", "olmo", "jais", "trillion", "granite-docling": return .gpt2
        case "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b", "minerva": return .smolLM
        case "llama-bpe", "llama3", "llama-v3", "falcon3", "pixtral", "roberta-bpe", "viking", "tekken", "smaug-bpe":
            return .llama3
        case "qwen2", "deepseek-r1-qwen", "stablelm2", "megrez", "hunyuan": return .qwen2
        default: return nil
        }
    }

    /// The fragments of `text` (for inspection and tests; encoding uses the range form).
    public func split(_ text: String) -> [String] {
        let scalars = Array(text.unicodeScalars)
        return fragments(scalars).map { r in
            var v = String.UnicodeScalarView()
            v.append(contentsOf: scalars[r])
            return String(v)
        }
    }

    /// Fragment ranges of a scalar array.
    func fragments(_ s: [Unicode.Scalar]) -> [Range<Int>] {
        if s.isEmpty { return [] }
        let cls = s.map(CharClass.of)
        var frags = [0..<s.count]
        var next: [Range<Int>] = []
        for step in steps {
            next.removeAll(keepingCapacity: true)
            for r in frags {
                var i = r.lowerBound
                var gap = i
                while i < r.upperBound {
                    let n = step.match(s, cls, i, r.upperBound)
                    if n > 0 {
                        if gap < i { next.append(gap..<i) }
                        next.append(i..<(i + n))
                        i += n
                        gap = i
                    } else {
                        i += 1
                    }
                }
                if gap < r.upperBound { next.append(gap..<r.upperBound) }
            }
            swap(&frags, &next)
        }
        return frags
    }
}

/// Class bits of one scalar: letter (L*), number (N*), White_Space, punctuation (P*).
struct CharClass: OptionSet {
    let rawValue: UInt8
    static let letter = CharClass(rawValue: 1)
    static let number = CharClass(rawValue: 2)
    static let space = CharClass(rawValue: 4)
    static let punctuation = CharClass(rawValue: 8)

    static let ascii: [CharClass] = (0..<128).map { slow(Unicode.Scalar(UInt8($0))) }

    static func of(_ s: Unicode.Scalar) -> CharClass {
        s.value < 128 ? ascii[Int(s.value)] : slow(s)
    }

    static func slow(_ s: Unicode.Scalar) -> CharClass {
        let p = s.properties
        var c: CharClass = []
        if p.isWhitespace { c.insert(.space) }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            c.insert(.letter)
        case .decimalNumber, .letterNumber, .otherNumber:
            c.insert(.number)
        case .connectorPunctuation, .dashPunctuation, .openPunctuation, .closePunctuation,
             .initialPunctuation, .finalPunctuation, .otherPunctuation:
            c.insert(.punctuation)
        default: break
        }
        return c
    }

    var isLetter: Bool { contains(.letter) }
    var isNumber: Bool { contains(.number) }
    var isSpace: Bool { contains(.space) }
    /// `[^\s\p{L}\p{N}]`
    var isOther: Bool { rawValue & 7 == 0 }
}

extension BPEPreTokenizer.Step {
    /// Length of the match starting at `i` (fragment ends at `e`), 0 if none.
    func match(_ s: [Unicode.Scalar], _ cls: [CharClass], _ i: Int, _ e: Int) -> Int {
        switch self {
        case let .digits(individual):
            guard cls[i].isNumber else { return 0 }
            return individual ? 1 : run(cls, i, e) { $0.isNumber }
        case .punctuation:
            return run(cls, i, e, s) { c, u in
                c.contains(.punctuation) || u == "$" || u == "+" || u == "<" || u == "=" || u == ">" || u == "^"
                    || u == "~" || u == "|"
            }
        case .threeDigits:
            guard i + 3 <= e else { return 0 }
            for k in i..<(i + 3) where !(s[k].value >= 48 && s[k].value <= 57) { return 0 }
            return 3
        case .gpt2:
            return gpt2(s, cls, i, e)
        case .llama3:
            return llama3(s, cls, i, e, maxDigits: 3)
        case .qwen2:
            return llama3(s, cls, i, e, maxDigits: 1)
        }
    }

    private func run(_ cls: [CharClass], _ i: Int, _ e: Int, _ pred: (CharClass) -> Bool) -> Int {
        var k = i
        while k < e && pred(cls[k]) { k += 1 }
        return k - i
    }

    private func run(_ cls: [CharClass], _ i: Int, _ e: Int, _ s: [Unicode.Scalar],
                     _ pred: (CharClass, Unicode.Scalar) -> Bool) -> Int {
        var k = i
        while k < e && pred(cls[k], s[k]) { k += 1 }
        return k - i
    }

    /// `'s|'t|'re|'ve|'m|'ll|'d`, optionally case-insensitive.
    private func contraction(_ s: [Unicode.Scalar], _ i: Int, _ e: Int, ignoreCase: Bool) -> Int {
        guard s[i] == "'", i + 1 < e else { return 0 }
        func low(_ u: Unicode.Scalar) -> UInt32 {
            ignoreCase && u.value >= 65 && u.value <= 90 ? u.value + 32 : u.value
        }
        let a = low(s[i + 1])
        if a == 115 || a == 116 || a == 109 || a == 100 { return 2 }  // s t m d
        if i + 2 < e {
            let b = low(s[i + 2])
            if (a == 114 && b == 101) || (a == 118 && b == 101) || (a == 108 && b == 108) { return 3 }  // re ve ll
        }
        return 0
    }

    /// `\s+(?!\S)|\s+` at a whitespace scalar.
    private func whitespace(_ cls: [CharClass], _ i: Int, _ e: Int) -> Int {
        let n = run(cls, i, e) { $0.isSpace }
        if i + n == e || n == 1 { return n }
        return n - 1
    }

    private func gpt2(_ s: [Unicode.Scalar], _ cls: [CharClass], _ i: Int, _ e: Int) -> Int {
        let c = contraction(s, i, e, ignoreCase: false)
        if c > 0 { return c }
        let j = (s[i] == " " && i + 1 < e) ? i + 1 : i
        let k = cls[j]
        if k.isLetter { return j - i + run(cls, j, e) { $0.isLetter } }
        if k.isNumber { return j - i + run(cls, j, e) { $0.isNumber } }
        if k.isOther { return j - i + run(cls, j, e) { $0.isOther } }
        if cls[i].isSpace { return whitespace(cls, i, e) }
        return 1
    }

    private func llama3(_ s: [Unicode.Scalar], _ cls: [CharClass], _ i: Int, _ e: Int, maxDigits: Int) -> Int {
        let c = contraction(s, i, e, ignoreCase: true)
        if c > 0 { return c }
        let k = cls[i]
        let u = s[i]
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if k.isLetter { return run(cls, i, e) { $0.isLetter } }
        if !k.isNumber && u != "\r" && u != "\n" && i + 1 < e && cls[i + 1].isLetter {
            return 1 + run(cls, i + 1, e) { $0.isLetter }
        }
        // \p{N}{1,maxDigits}
        if k.isNumber { return min(maxDigits, run(cls, i, e) { $0.isNumber }) }
        // ' ?[^\s\p{L}\p{N}]+[\r\n]*'
        let j = (u == " " && i + 1 < e && cls[i + 1].isOther) ? i + 1 : i
        if cls[j].isOther {
            var m = j + run(cls, j, e) { $0.isOther }
            while m < e && (s[m] == "\r" || s[m] == "\n") { m += 1 }
            return m - i
        }
        if k.isSpace {
            // \s*[\r\n]+ : up to the last newline of the whitespace run
            let n = run(cls, i, e) { $0.isSpace }
            var last = -1
            for m in i..<(i + n) where s[m] == "\r" || s[m] == "\n" { last = m }
            if last >= 0 { return last + 1 - i }
            return whitespace(cls, i, e)
        }
        return 1
    }
}
