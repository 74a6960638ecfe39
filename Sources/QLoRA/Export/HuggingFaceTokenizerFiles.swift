import Foundation
import ModelFormats

/// tokenizer.json and tokenizer_config.json (Hugging Face `tokenizers` / transformers formats)
/// synthesized from a GGUF file's byte-level BPE tokenizer metadata (`tokenizer.ggml.model` "gpt2",
/// SPEC §8.9): model BPE with the vocabulary and merges, the pre-tokenizer that
/// `tokenizer.ggml.pre` names, a ByteLevel decoder and the control/user-defined tokens as added
/// tokens. SentencePiece GGUF tokenizers (`"llama"`) are rejected.
public struct HuggingFaceTokenizerFiles {
    /// The tokenizer.json object.
    public var tokenizerJSON: [String: Any]
    /// The tokenizer_config.json object.
    public var tokenizerConfig: [String: Any]
    /// generation_config.json, when the metadata implies one (currently never).
    public var generationConfig: [String: Any]?

    /// Split regexes of the pre-tokenizers GGUF names (the `tokenizers` spelling).
    static let llama3Pattern = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let qwen2Pattern = #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#

    public init(ggufMetadata m: [String: GGUFValue], file: String) throws {
        func bad(_ key: String, _ value: String, _ expected: String) -> ModelFormatError {
            .invalidValue(file: file, field: key, value: value, expected: expected)
        }
        let model = m["tokenizer.ggml.model"]?.string ?? "missing"
        guard model == "gpt2" else {
            throw bad("tokenizer.ggml.model", "\"\(model)\"",
                      "\"gpt2\" (byte-level BPE); SentencePiece GGUF tokenizers cannot be exported to tokenizer.json yet")
        }
        guard let tokens = m["tokenizer.ggml.tokens"]?.stringArray, !tokens.isEmpty else {
            throw bad("tokenizer.ggml.tokens", "missing or not strings", "an array of strings")
        }
        guard let mergeLines = m["tokenizer.ggml.merges"]?.stringArray else {
            throw bad("tokenizer.ggml.merges", "missing or not strings", "an array of \"left right\" strings")
        }
        let types = m["tokenizer.ggml.token_type"]?.intArray ?? []
        guard types.isEmpty || types.count == tokens.count else {
            throw bad("tokenizer.ggml.token_type", "\(types.count) values", "\(tokens.count) (one per token)")
        }
        func id(_ key: String) throws -> Int? {
            guard let v = m[key] else { return nil }
            guard let i = v.int, i >= 0, i < tokens.count else { throw bad(key, "\(v)", "a token id in 0..<\(tokens.count)") }
            return i
        }
        let bos = try id("tokenizer.ggml.bos_token_id"), eos = try id("tokenizer.ggml.eos_token_id")
        let pad = try id("tokenizer.ggml.padding_token_id"), unk = try id("tokenizer.ggml.unknown_token_id")
        let pre = m["tokenizer.ggml.pre"]?.string ?? "default"
        let addBOS = m["tokenizer.ggml.add_bos_token"]?.bool ?? false
        let addEOS = m["tokenizer.ggml.add_eos_token"]?.bool ?? false

        let byteLevel: (Bool) -> [String: Any] = { regex in
            ["type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex]
        }
        func split(_ pattern: String) -> [String: Any] {
            ["type": "Split", "pattern": ["Regex": pattern], "behavior": "Isolated", "invert": false]
        }
        let preTokenizer: [String: Any]
        var ignoreMerges = false
        switch pre {
        case "default", "gpt-2", "gpt2":
            preTokenizer = byteLevel(true)
        case "smollm", "starcoder":
            preTokenizer = ["type": "Sequence", "pretokenizers": [["type": "Digits", "individual_digits": true], byteLevel(true)]]
        case "llama-bpe", "llama3", "llama-v3":
            preTokenizer = ["type": "Sequence", "pretokenizers": [split(Self.llama3Pattern), byteLevel(false)]]
            ignoreMerges = true
        case "qwen2":
            preTokenizer = ["type": "Sequence", "pretokenizers": [split(Self.qwen2Pattern), byteLevel(false)]]
        default:
            throw bad("tokenizer.ggml.pre", "\"\(pre)\"", "one of default, gpt-2, smollm, starcoder, llama-bpe, qwen2 for export")
        }

        var vocab: [String: Int] = [:]
        for (i, t) in tokens.enumerated() where vocab[t] == nil { vocab[t] = i }
        var merges: [[String]] = []
        merges.reserveCapacity(mergeLines.count)
        for (i, line) in mergeLines.enumerated() {
            guard let merge = BPEMerge(mergeLine: line) else {
                throw bad("tokenizer.ggml.merges[\(i)]", "\"\(line)\"", "\"left right\"")
            }
            merges.append([merge.left, merge.right])
        }
        // GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
        var added: [[String: Any]] = []
        for (i, t) in types.enumerated() where t == 2 || t == 3 || t == 4 {
            added.append(["id": i, "content": tokens[i], "single_word": false, "lstrip": false, "rstrip": false,
                          "normalized": t == 4, "special": t != 4])
        }
        for special in [bos, eos, pad, unk].compactMap({ $0 }) where !added.contains(where: { ($0["id"] as? Int) == special }) {
            added.append(["id": special, "content": tokens[special], "single_word": false, "lstrip": false, "rstrip": false,
                          "normalized": false, "special": true])
        }
        added.sort { ($0["id"] as! Int) < ($1["id"] as! Int) }

        var postProcessor: Any = ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true]
        if addBOS || addEOS {
            var single: [[String: Any]] = [["Sequence": ["id": "A", "type_id": 0]]]
            var pair: [[String: Any]] = [["Sequence": ["id": "A", "type_id": 0]], ["Sequence": ["id": "B", "type_id": 1]]]
            var specials: [String: Any] = [:]
            if addBOS, let b = bos {
                single.insert(["SpecialToken": ["id": tokens[b], "type_id": 0]], at: 0)
                pair.insert(["SpecialToken": ["id": tokens[b], "type_id": 0]], at: 0)
                pair.insert(["SpecialToken": ["id": tokens[b], "type_id": 1]], at: 2)
                specials[tokens[b]] = ["id": tokens[b], "ids": [b], "tokens": [tokens[b]]]
            }
            if addEOS, let e = eos {
                single.append(["SpecialToken": ["id": tokens[e], "type_id": 0]])
                pair.append(["SpecialToken": ["id": tokens[e], "type_id": 1]])
                specials[tokens[e]] = ["id": tokens[e], "ids": [e], "tokens": [tokens[e]]]
            }
            postProcessor = ["type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials]
        }
        tokenizerJSON = [
            "version": "1.0", "truncation": NSNull(), "padding": NSNull(), "added_tokens": added,
            "normalizer": NSNull(), "pre_tokenizer": preTokenizer, "post_processor": postProcessor,
            "decoder": ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true],
            "model": ["type": "BPE", "dropout": NSNull(), "unk_token": NSNull(), "continuing_subword_prefix": NSNull(),
                      "end_of_word_suffix": NSNull(), "fuse_unk": false, "byte_fallback": false,
                      "ignore_merges": ignoreMerges, "vocab": vocab, "merges": merges] as [String: Any],
        ]
        var config: [String: Any] = [
            "add_bos_token": addBOS, "add_eos_token": addEOS, "clean_up_tokenization_spaces": false,
            "tokenizer_class": "PreTrainedTokenizerFast",
        ]
        config["bos_token"] = bos.map { tokens[$0] } ?? NSNull()
        config["eos_token"] = eos.map { tokens[$0] } ?? NSNull()
        config["pad_token"] = pad.map { tokens[$0] } ?? NSNull()
        config["unk_token"] = unk.map { tokens[$0] } ?? NSNull()
        if let t = m["tokenizer.chat_template"]?.string { config["chat_template"] = t }
        if let n = m["llama.context_length"]?.int { config["model_max_length"] = n }
        tokenizerConfig = config
        generationConfig = nil
    }
}
