import Foundation
import Llama
import ModelFormats
import Quantization

/// Options of `quantizeModel` (the `qlora quantize` command).
public struct QuantizeOptions: Sendable {
    public var quantType: QuantType4Bit
    /// Double-quantize the per-block absmax (bitsandbytes `bnb_4bit_use_double_quant`).
    public var doubleQuant: Bool
    public var blocksize: Int
    /// Dtype of the unquantized tensors, of the weights before quantization (the blob's `dtype`) and
    /// the compute dtype written to `quantization_config`. nil: the source's (`dtype`/`torch_dtype` of
    /// an HF config.json, float32 if absent), bfloat16 for a GGUF source.
    public var dtype: WeightDType?

    public init(quantType: QuantType4Bit = .nf4, doubleQuant: Bool = true, blocksize: Int = 64, dtype: WeightDType? = nil) {
        self.quantType = quantType
        self.doubleQuant = doubleQuant
        self.blocksize = blocksize
        self.dtype = dtype
    }
}

/// What `quantizeModel` wrote.
public struct QuantizeSummary: Sendable {
    public var output: String
    /// Tensors of the model (a quantized weight counts once) and how many were quantized.
    public var tensorCount: Int
    public var quantizedTensorCount: Int
    public var parameterCount: Int
    public var quantizedParameterCount: Int
    /// Size of model.safetensors.
    public var fileBytes: Int
    /// 8 · fileBytes / parameterCount.
    public var bitsPerParameter: Double
    /// Bits per parameter of the quantized weights alone (codes, absmax, tables, blob).
    public var quantizedBitsPerParameter: Double
    public var dtype: WeightDType
    public var seconds: Double
    /// Files written next to model.safetensors (config.json, tokenizer files).
    public var files: [String]
}

/// The tokenizer and config files copied from a Hugging Face source folder when present.
public let huggingFaceSideFiles = ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                                   "generation_config.json", "special_tokens_map.json"]

/// Whether transformers replaces the module of this parameter by a bitsandbytes `Linear4bit`:
/// every linear weight of the decoder layers (q/k/v/o, gate/up/down); never embeddings, norms or lm_head.
public func isQuantizedLinearWeight(_ name: String, shape: [Int]) -> Bool {
    shape.count == 2 && name.hasPrefix("model.layers.") && name.hasSuffix("_proj.weight")
}

/// Writes `output`, a Hugging Face folder that transformers + bitsandbytes loads as a 4-bit model
/// with no conversion (SPEC §3): config.json (the source's config plus `quantization_config`),
/// model.safetensors (the decoder linears in bitsandbytes 4-bit, byte-identical to what
/// bitsandbytes produces from the same weights; everything else in `dtype`) and the tokenizer
/// files (copied from an HF source, synthesized from a GGUF source's metadata). `source` is a
/// .gguf file (llama architecture) or an HF folder (config.json + *.safetensors). Tensors are
/// read one at a time; the output is built in a temporary folder next to `output` and renamed
/// into place only when complete. `output` must not exist yet.
public func quantizeModel(source: String, output: String, options: QuantizeOptions = QuantizeOptions()) throws -> QuantizeSummary {
    let start = Date()
    func bad(_ file: String, _ field: String, _ value: String, _ expected: String) -> ModelFormatError {
        .invalidValue(file: file, field: field, value: value, expected: expected)
    }
    guard options.quantType != .int4 else { throw bad(output, "quant type", "int4", "nf4 or fp4") }
    guard QuantizedTensor4Bit.validBlocksizes.contains(options.blocksize) else {
        throw bad(output, "blocksize", String(options.blocksize), "one of \(QuantizedTensor4Bit.validBlocksizes)")
    }
    let fm = FileManager.default
    guard !fm.fileExists(atPath: output) else { throw bad(output, "output", "already exists", "a path that does not exist yet") }

    var isDir: ObjCBool = false
    guard fm.fileExists(atPath: source, isDirectory: &isDir) else { throw ModelFormatError.unreadable(file: source, reason: "no such file or folder") }
    let input: ExportSource = isDir.boolValue ? try HuggingFaceExportSource(directory: source) : try GGUFExportSource(path: source)
    let dtype = options.dtype ?? input.defaultDType

    // Temporary folder next to the output, renamed at the end.
    let outURL = URL(fileURLWithPath: output)
    let temp = outURL.deletingLastPathComponent()
        .appendingPathComponent(".\(outURL.lastPathComponent).tmp-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))").path
    try fm.createDirectory(atPath: temp, withIntermediateDirectories: true)
    do {
        var writer = SafetensorsWriter(metadata: ["format": "pt"])
        var tensors = 0, quantized = 0, parameters = 0, quantizedParameters = 0, quantizedBytes = 0
        for (name, shape) in input.tensors {
            let count = shape.reduce(1, *)
            var values = [Float](repeating: 0, count: count)
            try values.withUnsafeMutableBufferPointer { try input.read(name, into: $0) }
            tensors += 1
            parameters += count
            if isQuantizedLinearWeight(name, shape: shape) {
                let q: QuantizedTensor4Bit
                do {
                    switch dtype {
                    case .float32:
                        q = try QuantizedTensor4Bit.quantize(values, shape: shape, dtype: .float32, quantType: options.quantType,
                                                             blocksize: options.blocksize, doubleQuant: options.doubleQuant)
                    case .bfloat16, .float16:
                        q = try QuantizedTensor4Bit.quantize(bits: halfBits(values, dtype), shape: shape, dtype: dtype,
                                                             quantType: options.quantType, blocksize: options.blocksize,
                                                             doubleQuant: options.doubleQuant)
                    }
                } catch let e as QuantizationError {
                    throw bad(input.file, "tensor \(name)", "\(e)", "a weight that can be quantized")
                }
                try BitsAndBytesSerialization.add(q, name: name, to: &writer)
                quantized += 1
                quantizedParameters += count
                quantizedBytes += BitsAndBytesSerialization.storedBytes(q)
            } else {
                try writer.add(name, dtype: dtype.safetensorsDType, shape: shape, bytes: dtype.encode(values))
            }
        }
        let modelPath = temp + "/" + SafetensorsModel.singleFileName
        try writer.write(to: modelPath)

        var config = input.config
        config["quantization_config"] = orderedObject(BitsAndBytesSerialization.quantizationConfig(
            quantType: options.quantType, doubleQuant: options.doubleQuant, computeDType: dtype))
        config["dtype"] = dtype.rawValue
        if config["torch_dtype"] != nil { config["torch_dtype"] = dtype.rawValue }
        try writeJSON(config, to: temp + "/config.json")
        var files = ["config.json"]
        files += try input.writeSideFiles(into: temp)

        let fileBytes = (try fm.attributesOfItem(atPath: modelPath)[.size] as? NSNumber)?.intValue ?? 0
        try fm.moveItem(atPath: temp, toPath: output)
        return QuantizeSummary(
            output: output, tensorCount: tensors, quantizedTensorCount: quantized, parameterCount: parameters,
            quantizedParameterCount: quantizedParameters, fileBytes: fileBytes,
            bitsPerParameter: parameters == 0 ? 0 : 8 * Double(fileBytes) / Double(parameters),
            quantizedBitsPerParameter: quantizedParameters == 0 ? 0 : 8 * Double(quantizedBytes) / Double(quantizedParameters),
            dtype: dtype, seconds: Date().timeIntervalSince(start), files: files.sorted())
    } catch {
        try? fm.removeItem(atPath: temp)
        throw error
    }
}

extension WeightDType {
    var safetensorsDType: SafetensorsDType {
        switch self {
        case .float32: return .f32
        case .bfloat16: return .bf16
        case .float16: return .f16
        }
    }
}

/// bf16/f16 bit patterns of values (round to nearest even), as torch's `.to(dtype)` gives.
func halfBits(_ values: [Float], _ dtype: WeightDType) -> [UInt16] {
    let bytes = dtype.encode(values)
    return (0..<values.count).map { UInt16(bytes[2 * $0]) | UInt16(bytes[2 * $0 + 1]) << 8 }
}

/// A JSON object whose keys keep the given order when written by `writeJSON` (sorted anyway).
func orderedObject(_ pairs: [(key: String, value: Any?)]) -> [String: Any] {
    var o: [String: Any] = [:]
    for (k, v) in pairs { o[k] = v ?? NSNull() }
    return o
}

/// Writes `object` as transformers does (`json.dumps(indent=2, sort_keys=True)` + newline), atomically.
func writeJSON(_ object: Any, to path: String) throws {
    try Data((PythonStyleJSON.text(object) + "\n").utf8).write(to: URL(fileURLWithPath: path), options: .atomic)
}

// MARK: - Sources

/// A model to quantize, seen with Hugging Face tensor names and layouts.
protocol ExportSource {
    var file: String { get }
    /// The HF config.json object to write (without quantization_config).
    var config: [String: Any] { get }
    var defaultDType: WeightDType { get }
    /// (HF name, PyTorch shape) of every tensor to write, in order.
    var tensors: [(String, [Int])] { get }
    func read(_ name: String, into destination: UnsafeMutableBufferPointer<Float>) throws
    /// Writes the tokenizer (and generation) files; returns their names.
    func writeSideFiles(into directory: String) throws -> [String]
}

final class HuggingFaceExportSource: ExportSource {
    let file: String
    let config: [String: Any]
    let defaultDType: WeightDType
    let tensors: [(String, [Int])]
    let weights: SafetensorsModel

    init(directory: String) throws {
        file = directory
        let configPath = (directory as NSString).appendingPathComponent("config.json")
        guard let data = FileManager.default.contents(atPath: configPath) else {
            throw ModelFormatError.unreadable(file: configPath, reason: "no such file")
        }
        guard let c = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ModelFormatError.invalidValue(file: configPath, field: "JSON", value: "unparseable", expected: "a JSON object")
        }
        if let q = c["quantization_config"] {
            throw ModelFormatError.invalidValue(file: configPath, field: "quantization_config", value: "\(q)",
                                                expected: "absent: the source must be a full-precision model")
        }
        let llama = try LlamaConfig(huggingFaceConfig: c, file: configPath)
        config = c
        let d = (c["dtype"] as? String) ?? (c["torch_dtype"] as? String) ?? "float32"
        defaultDType = WeightDType(rawValue: d.hasPrefix("torch.") ? String(d.dropFirst(6)) : d) ?? .float32
        weights = try SafetensorsModel(directory: directory)
        var list: [(String, [Int])] = []
        for name in weights.tensorNames {
            if name.hasSuffix("rotary_emb.inv_freq") { continue }
            if name == "lm_head.weight" && llama.tieWordEmbeddings { continue }
            let dt = try weights.dtype(name)
            guard [.f32, .bf16, .f16].contains(dt) else {
                throw ModelFormatError.unsupportedDType(file: directory, tensor: name, dtype: dt.rawValue)
            }
            list.append((name, try weights.shape(of: name)))
        }
        tensors = list
    }

    func read(_ name: String, into destination: UnsafeMutableBufferPointer<Float>) throws {
        try weights.readFloat32(name, into: destination)
    }

    func writeSideFiles(into directory: String) throws -> [String] {
        var written: [String] = []
        for name in huggingFaceSideFiles {
            let from = (file as NSString).appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: from) else { continue }
            try FileManager.default.copyItem(atPath: from, toPath: (directory as NSString).appendingPathComponent(name))
            written.append(name)
        }
        return written
    }
}

final class GGUFExportSource: ExportSource {
    let file: String
    let config: [String: Any]
    let defaultDType = WeightDType.bfloat16
    let tensors: [(String, [Int])]
    let gguf: GGUFFile
    let llama: LlamaConfig
    /// HF name → (GGUF name, heads to un-permute for Q/K).
    private let map: [String: (String, Int?)]

    init(path: String) throws {
        file = path
        gguf = try GGUFFile(path: path)
        llama = try LlamaConfig(ggufMetadata: gguf.metadata, file: path)
        guard llama.modelType == "llama" else {
            throw ModelFormatError.invalidValue(file: path, field: "general.architecture", value: "\"\(llama.modelType)\"",
                                                expected: "\"llama\" (other GGUF architectures: convert to a Hugging Face folder first)")
        }
        guard llama.ropeScaling == nil, !gguf.contains("rope_freqs.weight") else {
            throw ModelFormatError.invalidValue(file: path, field: "rope scaling", value: "present", expected: "none (not supported for GGUF export)")
        }
        let separate = gguf.contains("output.weight")
        let c = llama
        var list: [(String, [Int])] = [("model.embed_tokens.weight", [c.vocabularySize, c.hiddenSize])]
        var map: [String: (String, Int?)] = ["model.embed_tokens.weight": ("token_embd.weight", nil)]
        for n in 0..<c.layerCount {
            let hf = "model.layers.\(n).", gg = "blk.\(n)."
            let entries: [(String, String, [Int], Int?)] = [
                ("input_layernorm.weight", "attn_norm.weight", [c.hiddenSize], nil),
                ("self_attn.q_proj.weight", "attn_q.weight", [c.qDim, c.hiddenSize], c.headCount),
                ("self_attn.k_proj.weight", "attn_k.weight", [c.kvDim, c.hiddenSize], c.kvHeadCount),
                ("self_attn.v_proj.weight", "attn_v.weight", [c.kvDim, c.hiddenSize], nil),
                ("self_attn.o_proj.weight", "attn_output.weight", [c.hiddenSize, c.qDim], nil),
                ("post_attention_layernorm.weight", "ffn_norm.weight", [c.hiddenSize], nil),
                ("mlp.gate_proj.weight", "ffn_gate.weight", [c.intermediateSize, c.hiddenSize], nil),
                ("mlp.up_proj.weight", "ffn_up.weight", [c.intermediateSize, c.hiddenSize], nil),
                ("mlp.down_proj.weight", "ffn_down.weight", [c.hiddenSize, c.intermediateSize], nil),
            ]
            for (h, g, shape, heads) in entries {
                list.append((hf + h, shape))
                map[hf + h] = (gg + g, heads)
            }
        }
        list.append(("model.norm.weight", [c.hiddenSize]))
        map["model.norm.weight"] = ("output_norm.weight", nil)
        if separate {
            list.append(("lm_head.weight", [c.vocabularySize, c.hiddenSize]))
            map["lm_head.weight"] = ("output.weight", nil)
        }
        for (hf, shape) in list {
            let g = map[hf]!.0
            guard gguf.contains(g) else { throw ModelFormatError.missingTensor(file: path, name: g) }
            let actual = try gguf.shape(of: g)
            guard actual == shape else {
                throw ModelFormatError.invalidValue(file: path, field: "tensor \(g) shape", value: "\(actual)", expected: "\(shape)")
            }
        }
        tensors = list
        self.map = map
        config = Self.huggingFaceConfig(llama, tied: !separate, metadata: gguf.metadata)
    }

    static func huggingFaceConfig(_ c: LlamaConfig, tied: Bool, metadata m: [String: GGUFValue]) -> [String: Any] {
        var o: [String: Any] = [
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "attention_bias": false, "attention_dropout": 0.0, "mlp_bias": false, "hidden_act": "silu",
            "hidden_size": c.hiddenSize, "intermediate_size": c.intermediateSize, "num_hidden_layers": c.layerCount,
            "num_attention_heads": c.headCount, "num_key_value_heads": c.kvHeadCount, "head_dim": c.headDim,
            "vocab_size": c.vocabularySize, "max_position_embeddings": c.maxPositionEmbeddings,
            "rms_norm_eps": Double(c.rmsNormEpsilon), "initializer_range": 0.02, "pretraining_tp": 1,
            "rope_parameters": ["rope_theta": c.ropeTheta, "rope_type": "default"],
            "tie_word_embeddings": tied, "use_cache": true,
        ]
        o["bos_token_id"] = c.bosTokenId ?? NSNull()
        switch c.eosTokenIds.count {
        case 0: o["eos_token_id"] = NSNull()
        case 1: o["eos_token_id"] = c.eosTokenIds[0]
        default: o["eos_token_id"] = c.eosTokenIds
        }
        o["pad_token_id"] = m["tokenizer.ggml.padding_token_id"]?.int ?? NSNull()
        return o
    }

    func read(_ name: String, into destination: UnsafeMutableBufferPointer<Float>) throws {
        guard let (g, heads) = map[name] else { throw ModelFormatError.missingTensor(file: file, name: name) }
        guard let heads else { return try gguf.readFloat32(g, into: destination) }
        let shape = try gguf.shape(of: g)
        let tmp = UnsafeMutableBufferPointer<Float>.allocate(capacity: destination.count)
        defer { tmp.deallocate() }
        try gguf.readFloat32(g, into: tmp)
        // Undo llama.cpp's Q/K row permutation (SPEC §8.5): HF row (j·D/2 + i) ← GGUF row (2i + j).
        let D = llama.headDim, half = D / 2, columns = shape[1]
        for h in 0..<heads {
            for i in 0..<half {
                for j in 0..<2 {
                    let to = (h * D + j * half + i) * columns, from = (h * D + 2 * i + j) * columns
                    for k in 0..<columns { destination[to + k] = tmp[from + k] }
                }
            }
        }
    }

    func writeSideFiles(into directory: String) throws -> [String] {
        guard gguf.metadata["tokenizer.ggml.model"] != nil else { return [] }  // a GGUF without a tokenizer
        let files = try HuggingFaceTokenizerFiles(ggufMetadata: gguf.metadata, file: file)
        try writeJSON(files.tokenizerJSON, to: (directory as NSString).appendingPathComponent("tokenizer.json"))
        try writeJSON(files.tokenizerConfig, to: (directory as NSString).appendingPathComponent("tokenizer_config.json"))
        var names = ["tokenizer.json", "tokenizer_config.json"]
        if let g = files.generationConfig {
            try writeJSON(g, to: (directory as NSString).appendingPathComponent("generation_config.json"))
            names.append("generation_config.json")
        }
        return names
    }
}
