import Foundation
import Llama
import ModelFormats
import Quantization

// Writing a llama-architecture GGUF file the way llama.cpp's convert_hf_to_gguf.py does (SPEC §8):
// llama.* hyperparameters, tokenizer.ggml.* metadata, blk.N.* tensor names, Q/K rows permuted,
// 1-D tensors F32 and 2-D tensors in the asked type.

/// Refuses configs that the llama GGUF architecture cannot express.
func checkGGUFExportable(_ c: LlamaConfig, file: String) throws {
    guard c.modelType == "llama" else {
        throw FuseError.invalid(file: file, field: "model type", value: "\"\(c.modelType)\"", expected: "\"llama\" for GGUF output (use --format safetensors)")
    }
    guard c.ropeScaling == nil else {
        throw FuseError.invalid(file: file, field: "rope scaling", value: "present", expected: "none for GGUF output (use --format safetensors)")
    }
    guard !c.attentionBias, !c.outputBias, !c.mlpBias else {
        throw FuseError.invalid(file: file, field: "linear biases", value: "present", expected: "none for GGUF output (use --format safetensors)")
    }
}

extension WeightDType {
    /// The GGML tensor type and `general.file_type` (llama_ftype) of 2-D tensors in this dtype.
    var ggml: (type: GGMLType, fileType: UInt32) {
        switch self {
        case .float32: return (.f32, 0)
        case .float16: return (.f16, 1)
        case .bfloat16: return (.bf16, 32)
        }
    }
}

/// The GGUF name of a Hugging Face llama tensor name.
func ggufTensorName(_ hf: String) -> String? {
    switch hf {
    case "model.embed_tokens.weight": return "token_embd.weight"
    case "model.norm.weight": return "output_norm.weight"
    case "lm_head.weight": return "output.weight"
    default: break
    }
    let prefix = "model.layers."
    guard hf.hasPrefix(prefix) else { return nil }
    let rest = hf.dropFirst(prefix.count)
    guard let dot = rest.firstIndex(of: "."), let n = Int(rest[..<dot]) else { return nil }
    let names = ["input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
                 "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
                 "self_attn.o_proj.weight": "attn_output.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
                 "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
                 "mlp.down_proj.weight": "ffn_down.weight"]
    guard let g = names[String(rest[rest.index(after: dot)...])] else { return nil }
    return "blk.\(n).\(g)"
}

/// llama.cpp's Q/K row permutation (convert_hf_to_gguf.py `LlamaModel.permute`): within each head of
/// D rows, GGUF row (2i + j) ← HF row (j·D/2 + i). The inverse of the loader's un-permutation.
func permuteRoPERows(_ values: [Float], heads: Int, headDim D: Int, columns: Int) -> [Float] {
    var out = values
    let half = D / 2
    values.withUnsafeBufferPointer { inp in
        out.withUnsafeMutableBufferPointer { o in
            for h in 0..<heads {
                for i in 0..<half {
                    for j in 0..<2 {
                        let to = (h * D + 2 * i + j) * columns, from = (h * D + j * half + i) * columns
                        (o.baseAddress! + to).update(from: inp.baseAddress! + from, count: columns)
                    }
                }
            }
        }
    }
    return out
}

func addGGUFTensor(_ t: NamedTensor, config c: LlamaConfig, dtype: WeightDType, to writer: inout GGUFWriter) throws {
    guard let name = ggufTensorName(t.name) else {
        throw FuseError.invalid(file: "<gguf>", field: "tensor", value: t.name, expected: "a llama tensor with a GGUF name")
    }
    var values = t.values
    if name.hasSuffix(".attn_q.weight") {
        values = permuteRoPERows(values, heads: c.headCount, headDim: c.headDim, columns: t.shape[1])
    } else if name.hasSuffix(".attn_k.weight") {
        values = permuteRoPERows(values, heads: c.kvHeadCount, headDim: c.headDim, columns: t.shape[1])
    }
    let d: WeightDType = t.shape.count == 1 ? .float32 : dtype
    try writer.addTensor(name, type: d.ggml.type, dims: t.shape.reversed(), bytes: d.encode(values))
}

/// general.*, llama.* and tokenizer.* metadata, in convert_hf_to_gguf.py's order.
func ggufMetadata(source: String, sourceIsGGUF: Bool, config c: LlamaConfig, dtype: WeightDType) throws -> [(String, GGUFValue)] {
    var m: [(String, GGUFValue)] = [("general.architecture", .string("llama")), ("general.type", .string("model"))]
    var sourceMetadata: [String: GGUFValue] = [:], sourceKeys: [String] = []
    if sourceIsGGUF {
        let g = try GGUFFile(path: source)
        sourceMetadata = g.metadata
        sourceKeys = g.metadataKeys
        let skip: Set<String> = ["general.architecture", "general.type", "general.file_type", "general.quantization_version", "general.alignment"]
        for k in sourceKeys where k.hasPrefix("general.") && !skip.contains(k) { m.append((k, sourceMetadata[k]!)) }
    } else {
        m.append(("general.name", .string(URL(fileURLWithPath: source).lastPathComponent)))
    }
    m += [
        ("llama.block_count", .uint32(UInt32(c.layerCount))),
        ("llama.context_length", .uint32(UInt32(c.maxPositionEmbeddings))),
        ("llama.embedding_length", .uint32(UInt32(c.hiddenSize))),
        ("llama.feed_forward_length", .uint32(UInt32(c.intermediateSize))),
        ("llama.attention.head_count", .uint32(UInt32(c.headCount))),
        ("llama.attention.head_count_kv", .uint32(UInt32(c.kvHeadCount))),
        ("llama.rope.freq_base", .float32(Float(c.ropeTheta))),
        ("llama.attention.layer_norm_rms_epsilon", .float32(c.rmsNormEpsilon)),
    ]
    if c.headDim != c.hiddenSize / c.headCount {
        m += [("llama.attention.key_length", .uint32(UInt32(c.headDim))), ("llama.attention.value_length", .uint32(UInt32(c.headDim)))]
    }
    m += [("general.file_type", .uint32(dtype.ggml.fileType)),
          ("llama.vocab_size", .uint32(UInt32(c.vocabularySize))),
          ("llama.rope.dimension_count", .uint32(UInt32(c.headDim)))]
    if sourceIsGGUF {
        guard sourceMetadata["tokenizer.ggml.model"] != nil else {
            throw FuseError.invalid(file: source, field: "tokenizer.ggml.model", value: "missing", expected: "a GGUF with a tokenizer")
        }
        for k in sourceKeys where k.hasPrefix("tokenizer.") { m.append((k, sourceMetadata[k]!)) }
    } else {
        m += try ggufTokenizerMetadata(huggingFaceDirectory: source, config: c)
    }
    m.append(("general.quantization_version", .uint32(2)))
    return m
}

/// tokenizer.ggml.* metadata from a Hugging Face folder's byte-level BPE tokenizer.json (+ tokenizer_config.json,
/// chat_template.jinja), as convert_hf_to_gguf.py writes them: tokens by id (ids without a token become
/// `[PAD<id>]`), token types (1 normal, 3 control = special added token, 4 user-defined = other added
/// token), merges as "left right", the pre-tokenizer name, special ids and the chat template.
func ggufTokenizerMetadata(huggingFaceDirectory dir: String, config c: LlamaConfig) throws -> [(String, GGUFValue)] {
    let path = (dir as NSString).appendingPathComponent("tokenizer.json")
    func bad(_ field: String, _ value: String, _ expected: String) -> FuseError { .invalid(file: path, field: field, value: value, expected: expected) }
    guard let data = FileManager.default.contents(atPath: path),
          let j = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
        throw ModelFormatError.unreadable(file: path, reason: "missing or not a JSON object (needed to write the GGUF tokenizer)")
    }
    guard let model = j["model"] as? [String: Any], model["type"] as? String == "BPE",
          let vocab = model["vocab"] as? [String: Int], let mergeList = model["merges"] as? [Any] else {
        throw bad("model", "\((j["model"] as? [String: Any])?["type"] ?? "missing")", "a BPE model with vocab and merges")
    }
    if model["byte_fallback"] as? Bool == true || (j["decoder"] as? [String: Any])?["type"] as? String != "ByteLevel" {
        throw bad("decoder", "\((j["decoder"] as? [String: Any])?["type"] ?? "missing")",
                  "ByteLevel: only byte-level BPE tokenizers can be written to GGUF for now (SentencePiece-style ones cannot; fuse to --format safetensors)")
    }
    // Pre-tokenizer name (llama.cpp's `tokenizer.ggml.pre`).
    let preJSON = j["pre_tokenizer"] as? [String: Any]
    func isByteLevel(_ p: [String: Any]?, regex: Bool) -> Bool {
        p?["type"] as? String == "ByteLevel" && (p?["use_regex"] as? Bool ?? true) == regex
    }
    let pre: String
    let sequence = (preJSON?["type"] as? String == "Sequence") ? (preJSON?["pretokenizers"] as? [[String: Any]] ?? []) : []
    if isByteLevel(preJSON, regex: true) {
        pre = "gpt-2"
    } else if sequence.count == 2, sequence[0]["type"] as? String == "Digits", sequence[0]["individual_digits"] as? Bool == true,
              isByteLevel(sequence[1], regex: true) {
        pre = "smollm"
    } else if sequence.count == 2, sequence[0]["type"] as? String == "Split", isByteLevel(sequence[1], regex: false),
              let pattern = (sequence[0]["pattern"] as? [String: Any])?["Regex"] as? String,
              pattern == HuggingFaceTokenizerFiles.llama3Pattern || pattern == HuggingFaceTokenizerFiles.qwen2Pattern {
        pre = pattern == HuggingFaceTokenizerFiles.llama3Pattern ? "llama-bpe" : "qwen2"
    } else {
        throw bad("pre_tokenizer", String(describing: preJSON ?? [:]).prefix(120).description,
                  "one llama.cpp names: ByteLevel (gpt-2), Digits+ByteLevel (smollm), the Llama 3 or Qwen2 Split + ByteLevel")
    }

    let n = c.vocabularySize
    var tokens = [String?](repeating: nil, count: n)
    var types = [Int64](repeating: 1, count: n)
    for (t, id) in vocab {
        guard id >= 0, id < n else { throw bad("model.vocab[\"\(t)\"]", "\(id)", "an id below the model's vocab_size \(n)") }
        tokens[id] = t
    }
    var special: [String: Int] = [:]
    for (k, a) in ((j["added_tokens"] as? [[String: Any]]) ?? []).enumerated() {
        guard let id = a["id"] as? Int, let content = a["content"] as? String, id >= 0, id < n else {
            throw bad("added_tokens[\(k)]", "\(a["id"] ?? "no id")", "an id below the model's vocab_size \(n)")
        }
        tokens[id] = content
        types[id] = (a["special"] as? Bool ?? false) ? 3 : 4
        special[content] = id
    }
    var tokenList: [String] = []
    tokenList.reserveCapacity(n)
    for i in 0..<n {
        if let t = tokens[i] { tokenList.append(t) } else { tokenList.append("[PAD\(i)]"); types[i] = 4 }
    }
    var merges: [String] = []
    merges.reserveCapacity(mergeList.count)
    for (i, item) in mergeList.enumerated() {
        if let s = item as? String { merges.append(s) }
        else if let pair = item as? [String], pair.count == 2 { merges.append(pair[0] + " " + pair[1]) }
        else { throw bad("model.merges[\(i)]", "\(item)", "\"left right\" or [left, right]") }
    }

    // Special tokens and flags: tokenizer_config.json, falling back to config.json's ids.
    let tcPath = (dir as NSString).appendingPathComponent("tokenizer_config.json")
    let tc = FileManager.default.contents(atPath: tcPath).flatMap { (try? JSONSerialization.jsonObject(with: $0)) as? [String: Any] } ?? [:]
    func tokenId(_ key: String) -> Int? {
        let v = tc[key]
        let content = (v as? String) ?? ((v as? [String: Any])?["content"] as? String)
        guard let content else { return nil }
        return special[content] ?? vocab[content]
    }
    var m: [(String, GGUFValue)] = [
        ("tokenizer.ggml.model", .string("gpt2")), ("tokenizer.ggml.pre", .string(pre)),
        ("tokenizer.ggml.tokens", .array(.string(tokenList))),
        ("tokenizer.ggml.token_type", .array(.integers(elementType: 5, values: types))),
        ("tokenizer.ggml.merges", .array(.string(merges))),
    ]
    let bos = tokenId("bos_token") ?? c.bosTokenId, eos = tokenId("eos_token") ?? c.eosTokenIds.first
    for (key, id) in [("tokenizer.ggml.bos_token_id", bos), ("tokenizer.ggml.eos_token_id", eos),
                      ("tokenizer.ggml.unknown_token_id", tokenId("unk_token")), ("tokenizer.ggml.padding_token_id", tokenId("pad_token"))] {
        if let id { m.append((key, .uint32(UInt32(id)))) }
    }
    m.append(("tokenizer.ggml.add_bos_token", .bool(tc["add_bos_token"] as? Bool ?? false)))
    if let e = tc["add_eos_token"] as? Bool { m.append(("tokenizer.ggml.add_eos_token", .bool(e))) }
    let jinja = (dir as NSString).appendingPathComponent("chat_template.jinja")
    if let t = tc["chat_template"] as? String {
        m.append(("tokenizer.chat_template", .string(t)))
    } else if let d = FileManager.default.contents(atPath: jinja) {
        m.append(("tokenizer.chat_template", .string(String(decoding: d, as: UTF8.self))))
    }
    return m
}
