/// Token kinds, numbered as GGUF `tokenizer.ggml.token_type` and SentencePiece number them.
public enum BPETokenType: Int, Sendable, Equatable {
    case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
}

/// A token matched in the raw text before pre-tokenization (Hugging Face "added token").
public struct BPEAddedToken: Sendable, Equatable {
    public var id: Int
    public var content: String
    /// Special tokens are dropped by `decode(_:skipSpecialTokens: true)`.
    public var special: Bool
    /// Absorb the whitespace to the left / right of the match.
    public var lstrip: Bool
    public var rstrip: Bool
    /// Match only when not inside a word (no letter or number on either side).
    public var singleWord: Bool
    /// Hugging Face matches normalized added tokens in normalized text; here every added token is
    /// matched in the raw text (the same thing unless the normalizer rewrites the token's characters).
    public var normalized: Bool

    public init(id: Int, content: String, special: Bool = true, lstrip: Bool = false, rstrip: Bool = false,
                singleWord: Bool = false, normalized: Bool = false) {
        self.id = id
        self.content = content
        self.special = special
        self.lstrip = lstrip
        self.rstrip = rstrip
        self.singleWord = singleWord
        self.normalized = normalized
    }
}

/// One merge rule `left right`; its rank is its index in the list.
public struct BPEMerge: Sendable, Equatable {
    public var left: String
    public var right: String
    public init(_ left: String, _ right: String) {
        self.left = left
        self.right = right
    }

    /// Parses a GGUF / tokenizer.json merge line "left right". Splits at the first space after
    /// position 0, as llama.cpp does (a token may itself start with a space). Nil when there is none.
    public init?(mergeLine line: String) {
        let u = Array(line.unicodeScalars)
        guard let sp = u.indices.dropFirst().first(where: { u[$0] == " " }) else { return nil }
        var l = String.UnicodeScalarView(), r = String.UnicodeScalarView()
        l.append(contentsOf: u[..<sp])
        r.append(contentsOf: u[(sp + 1)...])
        self.init(String(l), String(r))
    }
}

/// Everything a `BPETokenizer` is built from, as plain arrays (file formats are read elsewhere).
public struct BPEConfiguration: Sendable {
    public enum Model: Sendable, Equatable {
        /// GPT-2-style byte-level BPE: the text's UTF-8 bytes, written with the byte-to-unicode table,
        /// pre-tokenized by `preTokenizer`. `addPrefixSpace` puts a space before every text segment
        /// that does not start with one (Hugging Face `ByteLevel(add_prefix_space: true)`).
        case byteLevel(preTokenizer: BPEPreTokenizer, addPrefixSpace: Bool)
        /// SentencePiece-style BPE over code points, spaces written as "▁", with `<0xAB>` byte fallback.
        case sentencePiece(SentencePieceOptions)
    }

    public struct SentencePieceOptions: Sendable, Equatable {
        public enum Prefix: Sendable, Equatable {
            /// "▁" before every non-empty text segment: Hugging Face's legacy `Prepend("▁")` normalizer
            /// (applied per segment between added tokens) and llama.cpp's `add_space_prefix`.
            case everySegment
            /// `Metaspace(prepend_scheme: "always")`: every segment that does not already start with "▁".
            case everySegmentNotStartingWithSpace
            /// `Metaspace(prepend_scheme: "first")`: only a segment at the start of the text, if it does
            /// not already start with "▁".
            case firstSegmentNotStartingWithSpace
            case none
        }
        public var prefix: Prefix
        /// `Metaspace(split: true)`: words are split before each "▁" and merged separately.
        public var splitBeforeSpace: Bool
        /// Decoding drops one leading space of the output (Hugging Face `Strip(" ", 1, 0)` / Metaspace decoder).
        public var decodeStripsLeadingSpace: Bool

        public init(prefix: Prefix = .everySegment, splitBeforeSpace: Bool = false, decodeStripsLeadingSpace: Bool = true) {
            self.prefix = prefix
            self.splitBeforeSpace = splitBeforeSpace
            self.decodeStripsLeadingSpace = decodeStripsLeadingSpace
        }
    }

    /// Which adjacent pair merges first.
    public enum MergePriority: Sendable, Equatable {
        /// Ranked merge list (Hugging Face `model.merges`, GGUF `tokenizer.ggml.merges`): lowest rank first.
        case merges([BPEMerge])
        /// SentencePiece / llama.cpp SPM: the pair whose concatenation is a normal token with the highest
        /// score merges first (`tokenizer.ggml.scores`, one per token).
        case scores([Float])
    }

    public var model: Model
    /// Token text by id; nil marks an id with no token (a gap in a Hugging Face vocabulary).
    public var tokens: [String?]
    /// Token kinds by id (nil: all normal, plus what `addedTokens` says).
    public var tokenTypes: [BPETokenType]?
    public var mergePriority: MergePriority
    /// Tokens split out of the raw text before pre-tokenization.
    public var addedTokens: [BPEAddedToken]
    /// A whole pre-tokenized fragment that is already a token is emitted as is (Llama-3 `ignore_merges`).
    public var ignoreMerges: Bool
    /// Code points that are not tokens become their UTF-8 bytes' `<0xAB>` tokens.
    public var byteFallback: Bool
    /// Consecutive unknown code points give one unknown token (Hugging Face `fuse_unk`).
    public var fuseUnknown: Bool
    public var bosTokenId: Int?
    public var eosTokenId: Int?
    public var padTokenId: Int?
    public var unknownTokenId: Int?
    /// Text the vocabulary cannot represent (after byte fallback) encodes as `unknownTokenId`. When false,
    /// or when there is no unknown token, it is dropped, as Hugging Face BPE without `unk_token` and
    /// llama.cpp's byte-level tokenizer do (SmolLM2's vocabulary lacks 21 of the 256 byte symbols).
    public var encodesUnknownText: Bool
    /// `encode(_:addSpecialTokens: true)` puts BOS first / EOS last.
    public var addBOS: Bool
    public var addEOS: Bool

    public init(model: Model, tokens: [String?], tokenTypes: [BPETokenType]? = nil, mergePriority: MergePriority,
                addedTokens: [BPEAddedToken] = [], ignoreMerges: Bool = false, byteFallback: Bool = false,
                fuseUnknown: Bool = false, bosTokenId: Int? = nil, eosTokenId: Int? = nil, padTokenId: Int? = nil,
                unknownTokenId: Int? = nil, encodesUnknownText: Bool = true, addBOS: Bool = false, addEOS: Bool = false) {
        self.model = model
        self.tokens = tokens
        self.tokenTypes = tokenTypes
        self.mergePriority = mergePriority
        self.addedTokens = addedTokens
        self.ignoreMerges = ignoreMerges
        self.byteFallback = byteFallback
        self.fuseUnknown = fuseUnknown
        self.bosTokenId = bosTokenId
        self.eosTokenId = eosTokenId
        self.padTokenId = padTokenId
        self.unknownTokenId = unknownTokenId
        self.encodesUnknownText = encodesUnknownText
        self.addBOS = addBOS
        self.addEOS = addEOS
    }
}

/// A configuration the tokenizer cannot be built from. `field` names the offending part
/// (e.g. `merges[12]`, `tokens[3]`, `bosTokenId`) and `value` its value.
public struct BPEConfigurationError: Error, Equatable, CustomStringConvertible {
    public var field: String
    public var value: String
    public var reason: String
    public init(field: String, value: String, reason: String) {
        self.field = field
        self.value = value
        self.reason = reason
    }
    public var description: String { "invalid tokenizer \(field) = \(value): \(reason)" }
}
