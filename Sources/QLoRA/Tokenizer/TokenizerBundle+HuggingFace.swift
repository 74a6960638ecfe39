import Foundation

extension TokenizerBundle {
    /// The tokenizer of a Hugging Face model directory: `tokenizer.json` (model type BPE; ByteLevel,
    /// Digits, Split and Metaspace pre-tokenizers; Prepend/Replace normalizers) and, if present,
    /// `tokenizer_config.json` (special tokens, add_bos_token / add_eos_token, chat_template),
    /// `chat_template.jinja`, `special_tokens_map.json` and `generation_config.json` (EOS ids).
    public static func load(huggingFaceDirectory dir: String) throws -> TokenizerBundle {
        let base = URL(fileURLWithPath: dir)
        let tjPath = base.appendingPathComponent("tokenizer.json").path
        guard let tj = try readJSONObject(tjPath, required: true) else {
            throw ModelFormatError.unreadable(file: tjPath, reason: "missing")
        }
        let cfgPath = base.appendingPathComponent("tokenizer_config.json").path
        let cfg = try readJSONObject(cfgPath, required: false) ?? [:]
        let stmPath = base.appendingPathComponent("special_tokens_map.json").path
        let stm = try readJSONObject(stmPath, required: false) ?? [:]
        let genPath = base.appendingPathComponent("generation_config.json").path
        let gen = try readJSONObject(genPath, required: false) ?? [:]

        func bad(_ file: String, _ key: String, _ value: Any?, _ expected: String) -> ModelFormatError {
            .invalidValue(file: file, field: key, value: describe(value), expected: expected)
        }

        // model
        guard let model = tj["model"] as? [String: Any] else { throw bad(tjPath, "model", tj["model"], "an object") }
        let type = model["type"] as? String ?? "BPE"
        guard type == "BPE" else { throw bad(tjPath, "model.type", type, "\"BPE\" (WordPiece, Unigram and WordLevel are not supported)") }
        guard let vocab = model["vocab"] as? [String: Any] else { throw bad(tjPath, "model.vocab", model["vocab"], "an object token → id") }
        var maxId = -1
        var pairs: [(String, Int)] = []
        pairs.reserveCapacity(vocab.count)
        for (text, v) in vocab {
            guard let id = (v as? NSNumber)?.intValue, id >= 0 else { throw bad(tjPath, "model.vocab[\"\(text)\"]", v, "a non-negative id") }
            pairs.append((text, id))
            maxId = max(maxId, id)
        }
        var tokens = [String?](repeating: nil, count: maxId + 1)
        for (text, id) in pairs {
            if let old = tokens[id] { throw bad(tjPath, "model.vocab[\"\(text)\"]", id, "a unique id (also used by \"\(old)\")") }
            tokens[id] = text
        }
        var merges: [BPEMerge] = []
        if let raw = model["merges"] as? [Any] {
            merges.reserveCapacity(raw.count)
            for (i, item) in raw.enumerated() {
                if let s = item as? String, let sp = s.firstIndex(of: " ") {
                    merges.append(BPEMerge(String(s[..<sp]), String(s[s.index(after: sp)...])))
                } else if let a = item as? [String], a.count == 2 {
                    merges.append(BPEMerge(a[0], a[1]))
                } else {
                    throw bad(tjPath, "model.merges[\(i)]", item, "\"left right\" or [left, right]")
                }
            }
        } else if model["merges"] != nil, !(model["merges"] is NSNull) {
            throw bad(tjPath, "model.merges", model["merges"], "an array")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let s = model[key] as? String, !s.isEmpty { throw bad(tjPath, "model.\(key)", s, "empty (not supported)") }
        }
        let byteFallback = model["byte_fallback"] as? Bool ?? false
        let ignoreMerges = model["ignore_merges"] as? Bool ?? false
        let fuseUnknown = model["fuse_unk"] as? Bool ?? false

        // added tokens
        var added: [BPEAddedToken] = []
        for (i, item) in ((tj["added_tokens"] as? [Any]) ?? []).enumerated() {
            guard let o = item as? [String: Any], let id = (o["id"] as? NSNumber)?.intValue,
                  let content = o["content"] as? String else {
                throw bad(tjPath, "added_tokens[\(i)]", item, "{id, content, …}")
            }
            added.append(BPEAddedToken(id: id, content: content, special: o["special"] as? Bool ?? false,
                                       lstrip: o["lstrip"] as? Bool ?? false, rstrip: o["rstrip"] as? Bool ?? false,
                                       singleWord: o["single_word"] as? Bool ?? false,
                                       normalized: o["normalized"] as? Bool ?? false))
        }

        // normalizer
        var prepend = false, replaceSpace = false
        for (path, n) in flatten(tj["normalizer"], "normalizer", key: "normalizers") {
            switch n["type"] as? String {
            case "Prepend":
                guard n["prepend"] as? String == "\u{2581}" else { throw bad(tjPath, "\(path).prepend", n["prepend"], "\"▁\"") }
                prepend = true
            case "Replace":
                let pattern = (n["pattern"] as? [String: Any])?["String"] as? String
                guard pattern == " ", n["content"] as? String == "\u{2581}" else {
                    throw bad(tjPath, path, n, "Replace(\" \" → \"▁\")")
                }
                replaceSpace = true
            case "NFC", "NFKC", "NFD", "NFKD":
                // Text is assumed to be in this form already (no Unicode normalization without Foundation).
                break
            default:
                throw bad(tjPath, "\(path).type", n["type"], "Prepend, Replace or NFC (others are not supported)")
            }
        }

        // pre-tokenizer
        var steps: [BPEPreTokenizer.Step] = []
        var byteLevel = false, addPrefixSpace = false
        var metaspace: BPEConfiguration.SentencePieceOptions?
        for (path, p) in flatten(tj["pre_tokenizer"], "pre_tokenizer", key: "pretokenizers") {
            switch p["type"] as? String {
            case "ByteLevel":
                byteLevel = true
                addPrefixSpace = p["add_prefix_space"] as? Bool ?? false
                if p["use_regex"] as? Bool ?? true { steps.append(.gpt2) }
            case "Digits":
                steps.append(.digits(individual: p["individual_digits"] as? Bool ?? false))
            case "Split":
                let regex = (p["pattern"] as? [String: Any])?["Regex"] as? String
                guard let regex, let step = splitStep(regex) else {
                    throw bad(tjPath, "\(path).pattern", p["pattern"], "the GPT-2, Llama-3 or Qwen2 regex")
                }
                guard (p["behavior"] as? String ?? "Isolated") == "Isolated", !(p["invert"] as? Bool ?? false) else {
                    throw bad(tjPath, "\(path).behavior", p["behavior"], "\"Isolated\" with invert false")
                }
                steps.append(step)
            case "Metaspace":
                guard (p["replacement"] as? String ?? "\u{2581}") == "\u{2581}" else {
                    throw bad(tjPath, "\(path).replacement", p["replacement"], "\"▁\"")
                }
                let scheme = p["prepend_scheme"] as? String ?? ((p["add_prefix_space"] as? Bool ?? true) ? "always" : "never")
                let prefix: BPEConfiguration.SentencePieceOptions.Prefix
                switch scheme {
                case "always": prefix = .everySegmentNotStartingWithSpace
                case "first": prefix = .firstSegmentNotStartingWithSpace
                case "never": prefix = .none
                default: throw bad(tjPath, "\(path).prepend_scheme", scheme, "always, first or never")
                }
                metaspace = .init(prefix: prefix, splitBeforeSpace: p["split"] as? Bool ?? true)
            default:
                throw bad(tjPath, "\(path).type", p["type"], "ByteLevel, Digits, Split or Metaspace")
            }
        }

        // decoder: does it drop the leading space?
        var stripsSpace = false
        var decoderSaysSPM = false
        for (_, d) in flatten(tj["decoder"], "decoder", key: "decoders") {
            switch d["type"] as? String {
            case "Strip":
                if d["content"] as? String == " ", ((d["start"] as? NSNumber)?.intValue ?? 0) > 0 { stripsSpace = true }
            case "Metaspace":
                decoderSaysSPM = true
                if (d["prepend_scheme"] as? String ?? "always") != "never" { stripsSpace = true }
            case "Replace", "ByteFallback":
                decoderSaysSPM = true
            default: break
            }
        }

        let modelKind: BPEConfiguration.Model
        if byteLevel {
            if metaspace != nil || replaceSpace { throw bad(tjPath, "pre_tokenizer", tj["pre_tokenizer"], "either ByteLevel or Metaspace, not both") }
            modelKind = .byteLevel(preTokenizer: BPEPreTokenizer(steps: steps), addPrefixSpace: addPrefixSpace)
        } else if var ms = metaspace {
            guard steps.isEmpty else { throw bad(tjPath, "pre_tokenizer", tj["pre_tokenizer"], "Metaspace alone") }
            ms.decodeStripsLeadingSpace = stripsSpace
            modelKind = .sentencePiece(ms)
        } else if replaceSpace || byteFallback || decoderSaysSPM {
            guard steps.isEmpty else { throw bad(tjPath, "pre_tokenizer", tj["pre_tokenizer"], "null for a SentencePiece-style tokenizer") }
            modelKind = .sentencePiece(.init(prefix: prepend ? .everySegment : .none, splitBeforeSpace: false,
                                             decodeStripsLeadingSpace: stripsSpace))
        } else {
            throw bad(tjPath, "pre_tokenizer", tj["pre_tokenizer"], "ByteLevel (GPT-2 style) or Metaspace / Replace(\" \", \"▁\") (SentencePiece style)")
        }

        // special tokens: tokenizer_config.json, then special_tokens_map.json
        func tokenString(_ key: String) throws -> String? {
            for (file, obj) in [(cfgPath, cfg), (stmPath, stm)] {
                guard let v = obj[key], !(v is NSNull) else { continue }
                if let s = v as? String { return s }
                if let o = v as? [String: Any], let s = o["content"] as? String { return s }
                throw bad(file, key, v, "a string or {\"content\": …}")
            }
            return nil
        }
        var size = tokens.count
        for a in added { size = max(size, a.id + 1) }
        var allTokens = tokens + [String?](repeating: nil, count: size - tokens.count)
        for a in added { allTokens[a.id] = a.content }
        var lookup: [String: Int] = [:]
        for (i, t) in allTokens.enumerated() { if let t, lookup[t] == nil { lookup[t] = i } }
        func tokenId(_ key: String) throws -> (String?, Int?) {
            guard let s = try tokenString(key) else { return (nil, nil) }
            guard let id = lookup[s] else { throw bad(cfgPath, key, s, "a token of the vocabulary in tokenizer.json") }
            return (s, id)
        }
        let (bosToken, bosId) = try tokenId("bos_token")
        let (eosToken, eosId) = try tokenId("eos_token")
        let (_, padId) = try tokenId("pad_token")
        var (_, unkId) = try tokenId("unk_token")
        if let u = model["unk_token"] as? String {
            guard let id = lookup[u] else { throw bad(tjPath, "model.unk_token", u, "a token of the vocabulary") }
            unkId = id
        }

        // BOS / EOS: tokenizer_config's add_bos_token / add_eos_token, else the post-processor template.
        var templateBOS = false, templateEOS = false
        for (_, p) in flatten(tj["post_processor"], "post_processor", key: "processors") where p["type"] as? String == "TemplateProcessing" {
            var seenA = false
            for piece in (p["single"] as? [[String: Any]]) ?? [] {
                if piece["Sequence"] != nil { seenA = true }
                if let st = piece["SpecialToken"] as? [String: Any], let name = st["id"] as? String {
                    let id = lookup[name]
                    if !seenA, id != nil, id == bosId { templateBOS = true }
                    if seenA, id != nil, id == eosId { templateEOS = true }
                }
            }
        }
        func boolKey(_ key: String) throws -> Bool? {
            guard let v = cfg[key], !(v is NSNull) else { return nil }
            guard let b = v as? Bool else { throw bad(cfgPath, key, v, "true or false") }
            return b
        }
        let addBOS = try boolKey("add_bos_token") ?? templateBOS
        let addEOS = try boolKey("add_eos_token") ?? templateEOS

        let config = BPEConfiguration(
            model: modelKind, tokens: tokens, mergePriority: .merges(merges), addedTokens: added,
            ignoreMerges: ignoreMerges, byteFallback: byteFallback, fuseUnknown: fuseUnknown,
            bosTokenId: bosId, eosTokenId: eosId, padTokenId: padId, unknownTokenId: unkId,
            encodesUnknownText: model["unk_token"] is String, addBOS: addBOS, addEOS: addEOS)
        let tokenizer = try build(config, file: tjPath)

        // chat template: chat_template.jinja, else tokenizer_config.json's chat_template
        var template: String?
        let jinjaPath = base.appendingPathComponent("chat_template.jinja").path
        if FileManager.default.fileExists(atPath: jinjaPath) {
            guard let data = FileManager.default.contents(atPath: jinjaPath),
                  let s = String(data: data, encoding: .utf8) else {
                throw ModelFormatError.unreadable(file: jinjaPath, reason: "not readable as UTF-8")
            }
            template = s
        } else if let v = cfg["chat_template"], !(v is NSNull) {
            if let s = v as? String {
                template = s
            } else if let list = v as? [[String: Any]] {
                template = (list.first { $0["name"] as? String == "default" } ?? list.first)?["template"] as? String
            } else {
                throw bad(cfgPath, "chat_template", v, "a string or a list of {name, template}")
            }
        }

        var genEOS: [Int] = []
        if let v = gen["eos_token_id"], !(v is NSNull) {
            if let n = v as? NSNumber { genEOS = [n.intValue] }
            else if let a = v as? [NSNumber] { genEOS = a.map(\.intValue) }
            else { throw bad(genPath, "eos_token_id", v, "an id or a list of ids") }
            for id in genEOS where id < 0 || id >= tokenizer.vocabularySize {
                throw bad(genPath, "eos_token_id", id, "an id in 0..<\(tokenizer.vocabularySize)")
            }
        }
        return TokenizerBundle(tokenizer: tokenizer, chatTemplate: template, bosToken: bosToken, eosToken: eosToken,
                               eosTokenIds: stopIds(tokenizer, first: [eosId] + genEOS.map { Optional($0) }))
    }

    /// The pre-tokenizer step a Hugging Face `Split` regex stands for, recognised by its distinctive parts.
    static func splitStep(_ regex: String) -> BPEPreTokenizer.Step? {
        let compact = regex.replacingOccurrences(of: " ", with: "")
        if regex.contains("[^\\r\\n\\p{L}\\p{N}]?\\p{L}+") {
            if regex.contains("\\p{N}{1,3}") { return .llama3 }
            if compact.contains("|\\p{N}|") { return .qwen2 }
            return nil
        }
        if regex.contains("?\\p{L}+|") && regex.contains("?\\p{N}+|") && regex.contains("\\s+(?!\\S)") { return .gpt2 }
        return nil
    }

    /// A component and the members of a `Sequence` of them, with their JSON paths.
    static func flatten(_ v: Any?, _ path: String, key: String) -> [(String, [String: Any])] {
        guard let o = v as? [String: Any] else { return [] }
        if o["type"] as? String == "Sequence", let list = o[key] as? [Any] {
            return list.enumerated().flatMap { i, item in flatten(item, "\(path).\(key)[\(i)]", key: key) }
        }
        return [(path, o)]
    }

    static func readJSONObject(_ path: String, required: Bool) throws -> [String: Any]? {
        guard FileManager.default.fileExists(atPath: path) else {
            if required { throw ModelFormatError.unreadable(file: path, reason: "no such file") }
            return nil
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ModelFormatError.unreadable(file: path, reason: "cannot read")
        }
        let any: Any
        do {
            any = try JSONSerialization.jsonObject(with: data)
        } catch {
            throw ModelFormatError.unreadable(file: path, reason: "invalid JSON: \(error.localizedDescription)")
        }
        guard let obj = any as? [String: Any] else {
            throw ModelFormatError.invalidValue(file: path, field: "(top level)", value: describe(any), expected: "a JSON object")
        }
        return obj
    }

    static func describe(_ v: Any?) -> String {
        guard let v else { return "missing" }
        if v is NSNull { return "null" }
        if let s = v as? String { return "\"\(s)\"" }
        var s = "\(v)".replacingOccurrences(of: "\n", with: " ")
        if s.count > 120 { s = String(s.prefix(120)) + "…" }
        return s
    }
}
