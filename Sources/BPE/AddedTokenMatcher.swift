/// Finds added tokens in raw text, leftmost first and longest at a position (as Hugging Face's
/// leftmost-longest matcher does), honouring lstrip / rstrip / single_word.
struct AddedTokenMatcher: Sendable {
    enum Segment {
        case text(Range<Int>)
        case token(Int)
    }

    private struct Candidate: Sendable {
        var scalars: [Unicode.Scalar]
        var token: BPEAddedToken
    }

    /// Candidates by first scalar, longest first.
    private let byFirst: [UInt32: [Candidate]]

    init(_ tokens: [BPEAddedToken]) {
        var map: [UInt32: [Candidate]] = [:]
        for t in tokens {
            let s = Array(t.content.unicodeScalars)
            guard let first = s.first else { continue }
            map[first.value, default: []].append(Candidate(scalars: s, token: t))
        }
        for k in map.keys { map[k]!.sort { $0.scalars.count > $1.scalars.count } }
        byFirst = map
    }

    var isEmpty: Bool { byFirst.isEmpty }

    func split(_ s: [Unicode.Scalar], _ emit: (Segment) -> Void) {
        if byFirst.isEmpty {
            emit(.text(0..<s.count))
            return
        }
        var textStart = 0
        var i = 0
        let n = s.count
        while i < n {
            guard let cands = byFirst[s[i].value], let c = cands.first(where: { matches($0, s, i) }) else {
                i += 1
                continue
            }
            var textEnd = i
            if c.token.lstrip {
                while textEnd > textStart && s[textEnd - 1].properties.isWhitespace { textEnd -= 1 }
            }
            if textStart < textEnd { emit(.text(textStart..<textEnd)) }
            emit(.token(c.token.id))
            i += c.scalars.count
            if c.token.rstrip {
                while i < n && s[i].properties.isWhitespace { i += 1 }
            }
            textStart = i
        }
        if textStart < n { emit(.text(textStart..<n)) }
    }

    private func matches(_ c: Candidate, _ s: [Unicode.Scalar], _ i: Int) -> Bool {
        let m = c.scalars.count
        guard i + m <= s.count else { return false }
        for k in 0..<m where s[i + k] != c.scalars[k] { return false }
        if c.token.singleWord {
            func isWord(_ u: Unicode.Scalar) -> Bool {
                let k = CharClass.of(u)
                return k.isLetter || k.isNumber || u == "_"
            }
            if i > 0 && isWord(s[i - 1]) { return false }
            if i + m < s.count && isWord(s[i + m]) { return false }
        }
        return true
    }
}
