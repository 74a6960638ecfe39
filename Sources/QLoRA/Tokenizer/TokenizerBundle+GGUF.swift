extension TokenizerBundle {
    /// The tokenizer stored in GGUF metadata (`tokenizer.ggml.*`, SPEC §8.9): `model = "gpt2"` is
    /// byte-level BPE with the pre-tokenizer `tokenizer.ggml.pre` names; `model = "llama"` is
    /// SentencePiece BPE merged by `tokenizer.ggml.scores`, with `<0xAB>` byte fallback.
    /// `file` is only used in error messages.
    public static func load(ggufMetadata m: [String: GGUFValue], file: String) throws -> TokenizerBundle {
        func bad(_ key: String, _ value: String, _ expected: String) -> ModelFormatError {
            .invalidValue(file: file, field: key, value: value, expected: expected)
        }
        func string(_ key: String) throws -> String? {
            guard let v = m[key] else { return nil }
            guard let s = v.string else { throw bad(key, "\(v)", "a string") }
            return s
        }
        func id(_ key: String) throws -> Int? {
            guard let v = m[key] else { return nil }
            guard let i = v.int else { throw bad(key, "\(v)", "an integer token id") }
            return i
        }
        func flag(_ key: String) throws -> Bool? {
            guard let v = m[key] else { return nil }
            guard let b = v.bool else { throw bad(key, "\(v)", "a bool") }
            return b
        }
        func short(_ v: GGUFValue) -> String {
            let s = "\(v)"
            return s.count > 80 ? String(s.prefix(80)) + "…" : s
        }

        guard let model = try string("tokenizer.ggml.model") else {
            throw bad("tokenizer.ggml.model", "missing", "\"gpt2\" or \"llama\"")
        }
        guard let tv = m["tokenizer.ggml.tokens"] else { throw bad("tokenizer.ggml.tokens", "missing", "an array of strings") }
        guard let tokens = tv.stringArray, !tokens.isEmpty else {
            throw bad("tokenizer.ggml.tokens", short(tv), "a non-empty array of strings")
        }
        var types: [BPETokenType]?
        if let v = m["tokenizer.ggml.token_type"] {
            guard let raw = v.intArray, raw.count == tokens.count else {
                throw bad("tokenizer.ggml.token_type", short(v), "\(tokens.count) integers (one per token)")
            }
            types = try raw.enumerated().map { i, t in
                guard let ty = BPETokenType(rawValue: t) else {
                    throw bad("tokenizer.ggml.token_type[\(i)]", "\(t)", "1…6 (normal, unknown, control, user-defined, unused, byte)")
                }
                return ty
            }
        }
        let bos = try id("tokenizer.ggml.bos_token_id")
        let eos = try id("tokenizer.ggml.eos_token_id")
        let unk = try id("tokenizer.ggml.unknown_token_id")
        let pad = try id("tokenizer.ggml.padding_token_id")
        let eot = try id("tokenizer.ggml.eot_token_id")
        let eom = try id("tokenizer.ggml.eom_token_id")
        for (key, v) in [("tokenizer.ggml.bos_token_id", bos), ("tokenizer.ggml.eos_token_id", eos),
                         ("tokenizer.ggml.unknown_token_id", unk), ("tokenizer.ggml.padding_token_id", pad),
                         ("tokenizer.ggml.eot_token_id", eot), ("tokenizer.ggml.eom_token_id", eom)] {
            if let v, v < 0 || v >= tokens.count { throw bad(key, "\(v)", "a token id in 0..<\(tokens.count)") }
        }

        var config: BPEConfiguration
        switch model {
        case "gpt2":
            let preName = try string("tokenizer.ggml.pre") ?? "default"
            guard let pre = BPEPreTokenizer.named(preName) else {
                throw bad("tokenizer.ggml.pre", "\"\(preName)\"", "a supported pre-tokenizer (default, gpt-2, smollm, llama-bpe, qwen2, …)")
            }
            guard let mv = m["tokenizer.ggml.merges"] else { throw bad("tokenizer.ggml.merges", "missing", "an array of \"left right\" strings") }
            guard let lines = mv.stringArray else { throw bad("tokenizer.ggml.merges", short(mv), "an array of strings") }
            var merges: [BPEMerge] = []
            merges.reserveCapacity(lines.count)
            for (i, line) in lines.enumerated() {
                guard let merge = BPEMerge(mergeLine: line) else {
                    throw bad("tokenizer.ggml.merges[\(i)]", "\"\(line)\"", "\"left right\"")
                }
                merges.append(merge)
            }
            let llama3Like = pre == .llama3
            config = BPEConfiguration(
                model: .byteLevel(preTokenizer: pre, addPrefixSpace: false), tokens: tokens, tokenTypes: types,
                mergePriority: .merges(merges), ignoreMerges: llama3Like, bosTokenId: bos, eosTokenId: eos,
                padTokenId: pad, unknownTokenId: unk, encodesUnknownText: false,
                addBOS: try flag("tokenizer.ggml.add_bos_token") ?? llama3Like,
                addEOS: try flag("tokenizer.ggml.add_eos_token") ?? false)
        case "llama":
            guard let sv = m["tokenizer.ggml.scores"] else { throw bad("tokenizer.ggml.scores", "missing", "one float per token") }
            guard let scores = sv.floatArray, scores.count == tokens.count else {
                throw bad("tokenizer.ggml.scores", short(sv), "\(tokens.count) floats (one per token)")
            }
            let spacePrefix = try flag("tokenizer.ggml.add_space_prefix") ?? true
            config = BPEConfiguration(
                model: .sentencePiece(.init(prefix: spacePrefix ? .everySegment : .none, splitBeforeSpace: false,
                                            decodeStripsLeadingSpace: spacePrefix)),
                tokens: tokens, tokenTypes: types, mergePriority: .scores(scores), byteFallback: true,
                bosTokenId: bos, eosTokenId: eos, padTokenId: pad, unknownTokenId: unk,
                addBOS: try flag("tokenizer.ggml.add_bos_token") ?? true,
                addEOS: try flag("tokenizer.ggml.add_eos_token") ?? false)
        default:
            throw bad("tokenizer.ggml.model", "\"\(model)\"", "\"gpt2\" (byte-level BPE) or \"llama\" (SentencePiece BPE)")
        }
        let tokenizer = try build(config, file: file)
        return TokenizerBundle(
            tokenizer: tokenizer, chatTemplate: try string("tokenizer.chat_template"),
            bosToken: bos.map { tokens[$0] }, eosToken: eos.map { tokens[$0] },
            eosTokenIds: stopIds(tokenizer, first: [eos, eot, eom]))
    }
}
