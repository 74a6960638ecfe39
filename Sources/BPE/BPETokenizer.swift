/// A byte-level (GPT-2 / SmolLM2 / Llama-3 / Qwen2) or SentencePiece-style (Llama-2 / Mistral) BPE
/// tokenizer. Immutable after `init`, so one instance can be shared across threads.
public final class BPETokenizer: Sendable {
    public let configuration: BPEConfiguration
    /// Number of ids (highest id + 1, gaps included).
    public let vocabularySize: Int
    public let bosTokenId: Int?
    public let eosTokenId: Int?
    public let padTokenId: Int?
    public let unknownTokenId: Int?
    /// Ids that `decode(_:skipSpecialTokens: true)` drops: special added tokens, control and unknown tokens.
    public let specialTokenIds: Set<Int>

    private let tokens: [String?]
    private let textToId: [String: Int32]
    /// (left id << 32 | right id) → (priority << 32 | merged id); lower priority merges first.
    private let pairs: [UInt64: UInt64]
    /// Byte-level: the token of each single byte. SentencePiece: the `<0xAB>` token of each byte (-1: none).
    private let byteTokens: [Int32]
    /// Raw bytes each id decodes to (before the SentencePiece leading-space rule).
    private let pieceBytes: [[UInt8]]
    private let isByteLevel: Bool
    private let preTokenizer: BPEPreTokenizer
    private let addPrefixSpace: Bool
    private let spm: BPEConfiguration.SentencePieceOptions
    private let added: AddedTokenMatcher

    public init(configuration c: BPEConfiguration) throws {
        configuration = c
        var size = c.tokens.count
        for t in c.addedTokens { size = max(size, t.id + 1) }
        var tokens = c.tokens + [String?](repeating: nil, count: size - c.tokens.count)
        for (i, t) in c.addedTokens.enumerated() {
            guard t.id >= 0 else {
                throw BPEConfigurationError(field: "addedTokens[\(i)].id", value: "\(t.id)", reason: "negative id")
            }
            if let old = tokens[t.id], old != t.content {
                throw BPEConfigurationError(field: "addedTokens[\(i)]", value: "\(t.id) \"\(t.content)\"",
                                            reason: "id already holds \"\(old)\"")
            }
            tokens[t.id] = t.content
        }
        guard size > 0 else { throw BPEConfigurationError(field: "tokens", value: "[]", reason: "empty vocabulary") }
        if let types = c.tokenTypes, types.count != c.tokens.count {
            throw BPEConfigurationError(field: "tokenTypes", value: "\(types.count) entries",
                                        reason: "expected one per token (\(c.tokens.count))")
        }
        for (name, id) in [("bosTokenId", c.bosTokenId), ("eosTokenId", c.eosTokenId), ("padTokenId", c.padTokenId),
                           ("unknownTokenId", c.unknownTokenId)] {
            if let id, id < 0 || id >= size {
                throw BPEConfigurationError(field: name, value: "\(id)", reason: "outside the vocabulary 0..<\(size)")
            }
        }
        vocabularySize = size
        bosTokenId = c.bosTokenId
        eosTokenId = c.eosTokenId
        padTokenId = c.padTokenId
        unknownTokenId = c.unknownTokenId
        self.tokens = tokens

        var textToId = [String: Int32](minimumCapacity: size)
        for (i, t) in tokens.enumerated() {
            if let t, textToId[t] == nil { textToId[t] = Int32(i) }
        }
        self.textToId = textToId

        // Which ids are special, and which decode to their raw text (not byte-level text).
        var special = Set<Int>()
        var raw = [Bool](repeating: false, count: size)
        for t in c.addedTokens {
            raw[t.id] = true
            if t.special { special.insert(t.id) }
        }
        if let types = c.tokenTypes {
            for (i, ty) in types.enumerated() where ty == .control || ty == .unknown || ty == .userDefined {
                raw[i] = true
                if ty != .userDefined { special.insert(i) }
            }
        }
        specialTokenIds = special

        // Added tokens: explicit ones, plus control / user-defined / unknown tokens of a typed vocabulary.
        var addedList = c.addedTokens
        if let types = c.tokenTypes {
            let explicit = Set(c.addedTokens.map(\.id))
            for (i, ty) in types.enumerated() where !explicit.contains(i) {
                guard ty == .control || ty == .userDefined || ty == .unknown, let text = tokens[i], !text.isEmpty else {
                    continue
                }
                addedList.append(BPEAddedToken(id: i, content: text, special: ty != .userDefined))
            }
        }
        added = AddedTokenMatcher(addedList)

        switch c.model {
        case let .byteLevel(pre, prefixSpace):
            isByteLevel = true
            preTokenizer = pre
            addPrefixSpace = prefixSpace
            spm = .init()
            var bt = [Int32](repeating: -1, count: 256)
            for b in 0..<256 { bt[b] = textToId[String(ByteLevel.scalar[b])] ?? -1 }
            byteTokens = bt
        case let .sentencePiece(options):
            isByteLevel = false
            preTokenizer = BPEPreTokenizer(steps: [])
            addPrefixSpace = false
            spm = options
            var bt = [Int32](repeating: -1, count: 256)
            let hex = Array("0123456789ABCDEF")
            for b in 0..<256 { bt[b] = textToId["<0x\(hex[b >> 4])\(hex[b & 15])>"] ?? -1 }
            byteTokens = bt
        }

        // Pair table.
        var pairs = [UInt64: UInt64]()
        switch c.mergePriority {
        case let .merges(merges):
            pairs.reserveCapacity(merges.count)
            for (rank, m) in merges.enumerated() {
                guard let l = textToId[m.left], let r = textToId[m.right] else {
                    throw BPEConfigurationError(field: "merges[\(rank)]", value: "\"\(m.left) \(m.right)\"",
                                                reason: "a part is not in the vocabulary")
                }
                guard let res = textToId[m.left + m.right] else {
                    throw BPEConfigurationError(field: "merges[\(rank)]", value: "\"\(m.left) \(m.right)\"",
                                                reason: "the merged token is not in the vocabulary")
                }
                let key = UInt64(UInt32(l)) << 32 | UInt64(UInt32(r))
                if pairs[key] == nil { pairs[key] = UInt64(rank) << 32 | UInt64(UInt32(res)) }
            }
        case let .scores(scores):
            guard scores.count == c.tokens.count else {
                throw BPEConfigurationError(field: "scores", value: "\(scores.count) entries",
                                            reason: "expected one per token (\(c.tokens.count))")
            }
            if let bad = scores.firstIndex(where: { !$0.isFinite }) {
                throw BPEConfigurationError(field: "scores[\(bad)]", value: "\(scores[bad])", reason: "not a finite number")
            }
            // Dense rank of the distinct scores, highest first: equal scores share a priority.
            let distinct = Array(Set(scores)).sorted(by: >)
            var rankOf = [Float: Int](minimumCapacity: distinct.count)
            for (i, s) in distinct.enumerated() { rankOf[s] = i }
            for (id, text) in c.tokens.enumerated() {
                guard let text, c.tokenTypes.map({ $0[id] == .normal }) ?? true else { continue }
                let scalars = Array(text.unicodeScalars)
                guard scalars.count >= 2 else { continue }
                var left = String.UnicodeScalarView()
                for k in 1..<scalars.count {
                    left.append(scalars[k - 1])
                    var right = String.UnicodeScalarView()
                    right.append(contentsOf: scalars[k...])
                    guard let l = textToId[String(left)], let r = textToId[String(right)] else { continue }
                    let key = UInt64(UInt32(l)) << 32 | UInt64(UInt32(r))
                    pairs[key] = UInt64(rankOf[scores[id]]!) << 32 | UInt64(UInt32(id))
                }
            }
        }
        self.pairs = pairs

        // Bytes of every piece.
        var pb = [[UInt8]](repeating: [], count: size)
        var byteValue = [Int32: UInt8]()
        for b in 0..<256 where byteTokens[b] >= 0 { byteValue[byteTokens[b]] = UInt8(b) }
        for (i, t) in tokens.enumerated() {
            guard let t else { continue }
            if raw[i] {
                pb[i] = Array(t.utf8)
            } else if isByteLevel {
                ByteLevel.decode(t, into: &pb[i])
            } else if let b = byteValue[Int32(i)], c.tokenTypes.map({ $0[i] == .byte }) ?? true {
                pb[i] = [b]
            } else {
                for s in t.unicodeScalars {
                    if s == "\u{2581}" { pb[i].append(0x20) } else { pb[i].append(contentsOf: String(s).utf8) }
                }
            }
        }
        pieceBytes = pb
    }

    // MARK: - Vocabulary

    /// The vocabulary text of an id (byte-level tokens in their byte-to-unicode spelling), nil if none.
    public func tokenText(_ id: Int) -> String? {
        id >= 0 && id < tokens.count ? tokens[id] : nil
    }

    /// The id of a vocabulary text, nil if none.
    public func id(forToken text: String) -> Int? {
        textToId[text].map(Int.init)
    }

    /// The raw bytes an id decodes to (empty for unknown ids).
    public func tokenBytes(_ id: Int) -> [UInt8] {
        id >= 0 && id < pieceBytes.count ? pieceBytes[id] : []
    }

    // MARK: - Encoding

    /// Token ids of `text`. Added/special tokens written in the text are recognised first; with
    /// `addSpecialTokens`, BOS / EOS are added as the tokenizer's settings say.
    public func encode(_ text: String, addSpecialTokens: Bool) -> [Int] {
        var out: [Int32] = []
        out.reserveCapacity(text.utf8.count / 3 + 4)
        if addSpecialTokens, configuration.addBOS, let bos = bosTokenId { out.append(Int32(bos)) }
        let scalars = Array(text.unicodeScalars)
        added.split(scalars) { segment in
            switch segment {
            case let .token(id): out.append(Int32(id))
            case let .text(range): encodeSegment(scalars, range, into: &out)
            }
        }
        if addSpecialTokens, configuration.addEOS, let eos = eosTokenId { out.append(Int32(eos)) }
        return out.map(Int.init)
    }

    private func encodeSegment(_ all: [Unicode.Scalar], _ range: Range<Int>, into out: inout [Int32]) {
        if range.isEmpty { return }
        if isByteLevel {
            var s = Array(all[range])
            if addPrefixSpace && s.first != " " { s.insert(" ", at: 0) }
            var symbols: [Int32] = []
            var key = String.UnicodeScalarView()
            for frag in preTokenizer.fragments(s) {
                symbols.removeAll(keepingCapacity: true)
                for k in frag {
                    UTF8.encode(s[k]) { b in symbols.append(byteTokens[Int(b)]) }
                }
                if configuration.ignoreMerges {
                    key.removeAll(keepingCapacity: true)
                    for k in frag { UTF8.encode(s[k]) { b in key.append(ByteLevel.scalar[Int(b)]) } }
                    if let id = textToId[String(key)] {
                        out.append(id)
                        continue
                    }
                }
                if !emitsUnknown && symbols.contains(-1) { symbols.removeAll { $0 < 0 } }
                merge(&symbols)
                appendResolved(symbols, into: &out)
            }
        } else {
            let space: Unicode.Scalar = "\u{2581}"
            var s: [Unicode.Scalar] = []
            s.reserveCapacity(range.count + 1)
            for k in range { s.append(all[k] == " " ? space : all[k]) }
            let prefix: Bool
            switch spm.prefix {
            case .everySegment: prefix = true
            case .everySegmentNotStartingWithSpace: prefix = s.first != space
            case .firstSegmentNotStartingWithSpace: prefix = range.lowerBound == 0 && s.first != space
            case .none: prefix = false
            }
            if prefix { s.insert(space, at: 0) }
            var words: [Range<Int>] = []
            if spm.splitBeforeSpace {
                var start = 0
                for k in 1..<max(1, s.count) where s[k] == space {
                    words.append(start..<k)
                    start = k
                }
                words.append(start..<s.count)
            } else {
                words = [0..<s.count]
            }
            var symbols: [Int32] = []
            for w in words where !w.isEmpty {
                symbols.removeAll(keepingCapacity: true)
                for k in w {
                    // Unknown code points are kept as -(scalar + 1) and never merge.
                    symbols.append(textToId[String(s[k])] ?? -Int32(bitPattern: s[k].value) - 1)
                }
                merge(&symbols)
                appendResolved(symbols, into: &out)
            }
        }
    }

    /// Symbols after merging → ids: unknown code points become byte tokens or the unknown token.
    private func appendResolved(_ symbols: [Int32], into out: inout [Int32]) {
        var previousUnknown = false
        for sym in symbols {
            if sym >= 0 {
                out.append(sym)
                previousUnknown = false
                continue
            }
            if !isByteLevel && configuration.byteFallback, let scalar = Unicode.Scalar(UInt32(bitPattern: -(sym + 1))) {
                var bytes: [Int32] = []
                UTF8.encode(scalar) { b in bytes.append(byteTokens[Int(b)]) }
                if !bytes.contains(-1) {
                    out.append(contentsOf: bytes)
                    previousUnknown = false
                    continue
                }
            }
            if emitsUnknown, let unk = unknownTokenId {
                if !(configuration.fuseUnknown && previousUnknown) { out.append(Int32(unk)) }
                previousUnknown = true
            }
        }
    }

    /// Merges adjacent symbols in place, lowest priority first, ties leftmost.
    private func merge(_ sym: inout [Int32]) {
        let n = sym.count
        if n < 2 { return }
        if n <= 24 {
            mergeSmall(&sym)
        } else {
            mergeLarge(&sym)
        }
    }

    @inline(__always)
    private func lookup(_ l: Int32, _ r: Int32) -> UInt64? {
        if l < 0 || r < 0 { return nil }
        return pairs[UInt64(UInt32(l)) << 32 | UInt64(UInt32(r))]
    }

    private func mergeSmall(_ sym: inout [Int32]) {
        while sym.count > 1 {
            var best = UInt64.max
            var at = -1
            for i in 0..<(sym.count - 1) {
                if let v = lookup(sym[i], sym[i + 1]), v >> 32 < best >> 32 {
                    best = v
                    at = i
                }
            }
            if at < 0 { return }
            sym[at] = Int32(truncatingIfNeeded: UInt32(best & 0xFFFF_FFFF))
            sym.remove(at: at + 1)
        }
    }

    /// Linked list of symbols and a binary min-heap of candidate pairs keyed by (priority, position).
    private func mergeLarge(_ sym: inout [Int32]) {
        let n = sym.count
        var next = [Int32](unsafeUninitializedCapacity: n) { b, c in
            for i in 0..<n { b[i] = Int32(i + 1) }
            b[n - 1] = -1
            c = n
        }
        var prev = [Int32](unsafeUninitializedCapacity: n) { b, c in
            for i in 0..<n { b[i] = Int32(i - 1) }
            c = n
        }
        var heap = PairHeap()
        heap.reserve(n)
        for i in 0..<(n - 1) {
            if let v = lookup(sym[i], sym[i + 1]) { heap.push(priority: UInt32(v >> 32), position: Int32(i), result: UInt32(v & 0xFFFF_FFFF), left: sym[i], right: sym[i + 1]) }
        }
        let dead: Int32 = Int32.min
        while let e = heap.pop() {
            let i = Int(e.position)
            guard sym[i] == e.left, next[i] >= 0 else { continue }
            let j = Int(next[i])
            guard sym[j] == e.right else { continue }
            let merged = Int32(bitPattern: e.result)
            sym[i] = merged
            sym[j] = dead
            next[i] = next[j]
            if next[j] >= 0 { prev[Int(next[j])] = Int32(i) }
            if prev[i] >= 0 {
                let p = Int(prev[i])
                if let v = lookup(sym[p], merged) { heap.push(priority: UInt32(v >> 32), position: Int32(p), result: UInt32(v & 0xFFFF_FFFF), left: sym[p], right: merged) }
            }
            if next[i] >= 0 {
                let q = Int(next[i])
                if let v = lookup(merged, sym[q]) { heap.push(priority: UInt32(v >> 32), position: Int32(i), result: UInt32(v & 0xFFFF_FFFF), left: merged, right: sym[q]) }
            }
        }
        var out: [Int32] = []
        out.reserveCapacity(n)
        var i = 0
        while i >= 0 && i < n {
            out.append(sym[i])
            i = Int(next[i])
        }
        sym = out
    }

    // MARK: - Decoding

    /// The text of `ids`. Invalid UTF-8 (e.g. a cut multi-byte character) becomes U+FFFD; ids outside
    /// the vocabulary decode to nothing.
    public func decode(_ ids: [Int], skipSpecialTokens: Bool = false) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        for id in ids {
            if skipSpecialTokens && specialTokenIds.contains(id) { continue }
            bytes.append(contentsOf: tokenBytes(id))
        }
        if stripsLeadingSpace && bytes.first == 0x20 { bytes.removeFirst() }
        return String(decoding: bytes, as: UTF8.self)
    }

    private var emitsUnknown: Bool { configuration.encodesUnknownText && unknownTokenId != nil }

    /// SentencePiece decoding drops the space the encoder put before the text.
    var stripsLeadingSpace: Bool { !isByteLevel && spm.decodeStripsLeadingSpace }

    /// A decoder that turns ids into text one at a time.
    public func makeStreamingDecoder(skipSpecialTokens: Bool = false) -> StreamingDecoder {
        StreamingDecoder(tokenizer: self, skipSpecialTokens: skipSpecialTokens)
    }
}

/// Min-heap of merge candidates ordered by (priority, position).
private struct PairHeap {
    struct Entry {
        var key: UInt64  // priority << 32 | position
        var result: UInt32
        var left: Int32
        var right: Int32
        var position: Int32 { Int32(truncatingIfNeeded: key & 0xFFFF_FFFF) }
    }
    private var a: [Entry] = []

    mutating func reserve(_ n: Int) { a.reserveCapacity(n) }

    mutating func push(priority: UInt32, position: Int32, result: UInt32, left: Int32, right: Int32) {
        a.append(Entry(key: UInt64(priority) << 32 | UInt64(UInt32(position)), result: result, left: left, right: right))
        var i = a.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if a[p].key <= a[i].key { break }
            a.swapAt(p, i)
            i = p
        }
    }

    mutating func pop() -> Entry? {
        guard let top = a.first else { return nil }
        let last = a.removeLast()
        if !a.isEmpty {
            a[0] = last
            var i = 0
            let n = a.count
            while true {
                let l = 2 * i + 1
                if l >= n { break }
                var m = l
                if l + 1 < n && a[l + 1].key < a[l].key { m = l + 1 }
                if a[i].key <= a[m].key { break }
                a.swapAt(i, m)
                i = m
            }
        }
        return top
    }
}
