import Foundation
import Kernels
import Llama
import ModelFormats
import Quantization

/// What `fuseModel` writes.
public enum FuseFormat: String, Sendable, CaseIterable {
    /// A Hugging Face folder: model.safetensors, config.json, generation_config.json, tokenizer files.
    case safetensors
    /// One llama.cpp GGUF file (architecture llama, tokenizer in `tokenizer.ggml.*`).
    case gguf
}

/// Options of `fuseModel` (the `qlora fuse` command).
public struct FuseOptions: Sendable {
    public var format: FuseFormat
    /// Dtype of the written weights (GGUF: of the 2-D tensors; 1-D norms stay F32). nil: the source's
    /// (`dtype`/`torch_dtype` of an HF config.json, float32 if absent), float16 for a GGUF source.
    public var dtype: WeightDType?
    /// How the base is held while merging, as during QLoRA training: the default NF4 base is
    /// dequantized to float32 and merged there; `.none` merges into the source's own float weights.
    public var quantization: QuantizationPolicy
    /// Text whose logits measure the merge drift; nil: `defaultFuseProbe`.
    public var probe: String?
    /// Run the probe (three short forwards and a reload of the written model).
    public var measureDrift: Bool

    public init(format: FuseFormat = .safetensors, dtype: WeightDType? = nil, quantization: QuantizationPolicy = .nf4,
                probe: String? = nil, measureDrift: Bool = true) {
        self.format = format
        self.dtype = dtype
        self.quantization = quantization
        self.probe = probe
        self.measureDrift = measureDrift
    }
}

/// The built-in probe text of the drift measurement.
public let defaultFuseProbe = """
The quick brown fox jumps over the lazy dog. In 1969, Apollo 11 landed on the Moon; \
Neil Armstrong said: "That's one small step for man, one giant leap for mankind." \
Photosynthesis turns light, water and CO2 into sugar and oxygen. def add(a, b): return a + b
"""

/// How far the fused model's logits are from the base + unmerged adapter's, over every position of the probe.
public struct MergeDrift: Sendable {
    public var probeTokens: Int
    /// max / mean |Δlogit| between base + adapter (LoRA branch, as in training, no dropout) and the
    /// merged model as written (the output reloaded with --quantize none).
    public var maxAbs: Float
    public var meanAbs: Float
    /// The same for the merged float32 weights before rounding to the output dtype (nil for float32 output).
    public var unroundedMaxAbs: Float?
    public var unroundedMeanAbs: Float?
    /// max |Δlogit| between the base alone and base + adapter: the size of the adapter's effect, for scale.
    public var adapterEffectMaxAbs: Float
    /// The written tokenizer encodes the probe to the same ids as the source's.
    public var tokenizerRoundTrips: Bool
}

/// What `fuseModel` wrote.
public struct FuseSummary: Sendable {
    public var output: String
    public var format: FuseFormat
    public var dtype: WeightDType
    public var quantization: QuantizationPolicy
    /// Tensors written and their parameters (the tied head counted once).
    public var tensorCount: Int
    public var parameterCount: Int
    /// Linear weights that received a LoRA delta.
    public var mergedModules: Int
    /// Bytes of model.safetensors or of the .gguf file.
    public var fileBytes: Int
    /// Every file written (the folder's files, or the .gguf's name).
    public var files: [String]
    public var drift: MergeDrift?
    public var seconds: Double
}

public enum FuseError: Error, CustomStringConvertible {
    case invalid(file: String, field: String, value: String, expected: String)

    public var description: String {
        switch self {
        case let .invalid(file, field, value, expected):
            return "\(file): \(field) is \(value), expected \(expected)"
        }
    }
}

/// Merges the LoRA adapter folder `adapter` (PEFT format) into the base `model` (.gguf or HF folder)
/// and writes `output`: a Hugging Face folder (`.safetensors`) or a GGUF file (`.gguf`).
///
/// The base is loaded as training holds it (`options.quantization`; NF4 by default), its linear
/// weights dequantized to float32, W' = W + scaling·B·A computed in float32 (PEFT's
/// `merge_and_unload`), then rounded to nearest even to the output dtype. Tensor names, layouts
/// and config keys follow transformers (safetensors) or llama.cpp's convert_hf_to_gguf.py (GGUF:
/// Q/K rows permuted, norms F32). The output is built next to `output` and renamed into place
/// when complete; `output` must not exist yet.
public func fuseModel(model: String, adapter adapterPath: String, output: String,
                      options: FuseOptions = FuseOptions()) throws -> FuseSummary {
    let start = Date()
    let fm = FileManager.default
    guard !fm.fileExists(atPath: output) else {
        throw FuseError.invalid(file: output, field: "output", value: "a path that already exists", expected: "a path that does not exist yet")
    }
    var isDir: ObjCBool = false
    guard fm.fileExists(atPath: model, isDirectory: &isDir) else { throw ModelFormatError.unreadable(file: model, reason: "no such file or folder") }
    let sourceIsGGUF = !isDir.boolValue
    let adapter = try AdapterFile.read(directory: adapterPath)

    // The base, held as during training.
    let probeLimit = 512
    let bundle = try ModelBundle(path: model, contextLength: probeLimit, quantization: options.quantization)
    let weights = bundle.model.weights
    var config = bundle.config
    config.tieWordEmbeddings = !weights.hasSeparateLMHead
    let dtype = options.dtype ?? (sourceIsGGUF ? .float16 : huggingFaceDType(directory: model))
    let targets = try adapterTargets(adapter, layers: config.layerCount, file: adapterPath)
    if options.format == .gguf { try checkGGUFExportable(config, file: model) }

    // (a) base + unmerged adapter, exactly as training runs it (LoRA branch, no dropout).
    var tokens: [Int] = []
    var branch: [Float] = [], baseLogits: [Float] = []
    if options.measureDrift {
        tokens = Array(bundle.rawPrompt(options.probe ?? defaultFuseProbe).prefix(min(probeLimit, bundle.model.maxContext)))
        guard tokens.count >= 2 else {
            throw FuseError.invalid(file: model, field: "probe", value: "\(tokens.count) tokens", expected: "a text of at least 2 tokens")
        }
        let lora = try LoRAModel(weights: weights, batchSize: 1, seqLen: tokens.count, rank: adapter.config.r,
                                 alpha: Float(adapter.config.loraAlpha), targets: targets, dropout: 0,
                                 useRSLoRA: adapter.config.useRSLoRA, gradientCheckpointing: true)
        try lora.loadAdapterTensors(adapterTensorList(adapter), file: adapterPath)
        _ = try lora.forward(inputIds: tokens, labels: tokens, training: false)
        branch = Array(lora.lastLogits)
        baseLogits = try bundle.model.forward(tokens: tokens, startPosition: 0, logits: .all)
    }

    // Merge in float32, Hugging Face names and layouts.
    let (merged, mergedModules) = try mergedTensors(weights: weights, config: config, adapter: adapter, file: adapterPath)

    var unrounded: (Float, Float)?
    if options.measureDrift, dtype != .float32 {
        let source = InMemoryTensors(merged)
        let w = try LlamaWeights(config: config, source: source, file: "merged float32 weights", policy: .none)
        let m = try LlamaModel(config: config, weights: w, maxContext: tokens.count)
        unrounded = logitDifference(branch, try m.forward(tokens: tokens, startPosition: 0, logits: .all))
    }

    // Write.
    let outURL = URL(fileURLWithPath: output)
    let temp = outURL.deletingLastPathComponent()
        .appendingPathComponent(".\(outURL.lastPathComponent).tmp-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))").path
    var files: [String]
    let fileBytes: Int
    do {
        switch options.format {
        case .safetensors:
            try fm.createDirectory(atPath: temp, withIntermediateDirectories: true)
            var writer = SafetensorsWriter(metadata: ["format": "pt"])
            for t in merged {
                let d: WeightDType = t.shape.count == 1 && dtype == .float32 ? .float32 : dtype
                try writer.add(t.name, dtype: d.safetensorsDType, shape: t.shape, bytes: d.encode(t.values))
            }
            let modelPath = temp + "/" + SafetensorsModel.singleFileName
            try writer.write(to: modelPath)
            files = [SafetensorsModel.singleFileName]
            files += try writeHuggingFaceSideFiles(source: model, sourceIsGGUF: sourceIsGGUF, config: config,
                                                   dtype: dtype, into: temp)
            fileBytes = (try fm.attributesOfItem(atPath: modelPath)[.size] as? NSNumber)?.intValue ?? 0
        case .gguf:
            var writer = try GGUFWriter()
            for (k, v) in try ggufMetadata(source: model, sourceIsGGUF: sourceIsGGUF, config: config, dtype: dtype) {
                try writer.add(k, v)
            }
            for t in merged { try addGGUFTensor(t, config: config, dtype: dtype, to: &writer) }
            try writer.write(to: temp)
            fileBytes = (try fm.attributesOfItem(atPath: temp)[.size] as? NSNumber)?.intValue ?? 0
            files = [outURL.lastPathComponent]
        }
        try fm.moveItem(atPath: temp, toPath: output)
    } catch {
        try? fm.removeItem(atPath: temp)
        throw error
    }

    // (b) the merged model as written, reloaded.
    var drift: MergeDrift?
    if options.measureDrift {
        let reloaded = try ModelBundle(path: output, contextLength: tokens.count, quantization: .none)
        let written = try reloaded.model.forward(tokens: tokens, startPosition: 0, logits: .all)
        let (mx, mean) = logitDifference(branch, written)
        let sameTokens = Array(reloaded.rawPrompt(options.probe ?? defaultFuseProbe).prefix(probeLimit)) == tokens
        drift = MergeDrift(probeTokens: tokens.count, maxAbs: mx, meanAbs: mean, unroundedMaxAbs: unrounded?.0,
                           unroundedMeanAbs: unrounded?.1, adapterEffectMaxAbs: logitDifference(baseLogits, branch).0,
                           tokenizerRoundTrips: sameTokens)
    }
    return FuseSummary(output: output, format: options.format, dtype: dtype, quantization: options.quantization,
                       tensorCount: merged.count, parameterCount: merged.reduce(0) { $0 + $1.values.count },
                       mergedModules: mergedModules, fileBytes: fileBytes, files: files.sorted(), drift: drift,
                       seconds: Date().timeIntervalSince(start))
}

// MARK: - Merging

/// One tensor in Hugging Face naming and PyTorch layout.
struct NamedTensor {
    var name: String
    var shape: [Int]
    var values: [Float]
}

/// (max, mean) of |a − b|.
func logitDifference(_ a: [Float], _ b: [Float]) -> (Float, Float) {
    guard a.count == b.count, !a.isEmpty else { return (.infinity, .infinity) }
    var mx: Float = 0, sum: Double = 0
    for i in a.indices {
        let d = abs(a[i] - b[i])
        if !(d <= mx) { mx = d }   // NaN propagates
        sum += Double(d)
    }
    return (mx, Float(sum / Double(a.count)))
}

private func huggingFaceDType(directory: String) -> WeightDType {
    let path = (directory as NSString).appendingPathComponent("config.json")
    guard let data = FileManager.default.contents(atPath: path),
          let c = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else { return .float32 }
    let d = (c["dtype"] as? String) ?? (c["torch_dtype"] as? String) ?? "float32"
    return WeightDType(rawValue: d.hasPrefix("torch.") ? String(d.dropFirst(6)) : d) ?? .float32
}

private func adapterTargets(_ adapter: LoRAAdapterWeights, layers: Int, file: String) throws -> [LoRATarget] {
    guard adapter.layers.count <= layers else {
        throw FuseError.invalid(file: file, field: "adapter layers", value: "\(adapter.layers.count)", expected: "at most the model's \(layers)")
    }
    var targets = Set<LoRATarget>()
    for layer in adapter.layers {
        for module in layer.keys {
            guard let t = LoRATarget(rawValue: module) else {
                throw FuseError.invalid(file: file, field: "target module", value: module, expected: "one of q/k/v/o/gate/up/down_proj")
            }
            targets.insert(t)
        }
    }
    guard !targets.isEmpty else {
        throw FuseError.invalid(file: file, field: AdapterFile.weightsFileName, value: "no LoRA tensors", expected: "at least one lora_A/lora_B pair")
    }
    return LoRATarget.allCases.filter(targets.contains)
}

private func adapterTensorList(_ adapter: LoRAAdapterWeights) -> [(name: String, shape: [Int], values: [Float])] {
    var out: [(name: String, shape: [Int], values: [Float])] = []
    for (i, modules) in adapter.layers.enumerated() {
        for (m, pair) in modules {
            out.append((LoRAAdapterWeights.tensorName(layer: i, module: m, matrix: "A"), [pair.a.rows, pair.a.cols], pair.a.values))
            out.append((LoRAAdapterWeights.tensorName(layer: i, module: m, matrix: "B"), [pair.b.rows, pair.b.cols], pair.b.values))
        }
    }
    return out
}

/// Every parameter as float32, Hugging Face names, adapter deltas added to the linear weights.
private func mergedTensors(weights: LlamaWeights, config c: LlamaConfig, adapter: LoRAAdapterWeights,
                           file: String) throws -> ([NamedTensor], Int) {
    let C = c.hiddenSize, V = c.vocabularySize, I = c.intermediateSize
    func copy(_ p: UnsafeMutablePointer<Float>, _ n: Int) -> [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }
    let scale = Float(adapter.config.scaling)
    var merged = 0
    func linear(_ w: LinearWeight, layer: Int, module: String) throws -> [Float] {
        let rows = w.rows, cols = w.cols
        var values = [Float](repeating: 0, count: rows * cols)
        try values.withUnsafeMutableBufferPointer { dst in
            switch w {
            case let .dense(p, _, _): dst.baseAddress!.update(from: p, count: rows * cols)
            case let .quantized(q): q.dequantize(start: 0, into: dst)
            }
            guard layer < adapter.layers.count, let pair = adapter.layers[layer][module] else { return }
            let r = pair.a.rows
            guard pair.a.cols == cols else {
                throw AdapterError.shape(file: file, tensor: LoRAAdapterWeights.tensorName(layer: layer, module: module, matrix: "A"),
                                         expected: [r, cols], actual: [pair.a.rows, pair.a.cols])
            }
            guard pair.b.rows == rows, pair.b.cols == r else {
                throw AdapterError.shape(file: file, tensor: LoRAAdapterWeights.tensorName(layer: layer, module: module, matrix: "B"),
                                         expected: [rows, r], actual: [pair.b.rows, pair.b.cols])
            }
            pair.b.values.withUnsafeBufferPointer { b in
                pair.a.values.withUnsafeBufferPointer { a in
                    BLAS.sgemm(m: rows, n: cols, k: r, alpha: scale, a: b.baseAddress!, b: a.baseAddress!, beta: 1, c: dst.baseAddress!)
                }
            }
            merged += 1
        }
        return values
    }
    var out: [NamedTensor] = [NamedTensor(name: "model.embed_tokens.weight", shape: [V, C], values: weights.embedding.float32Values())]
    for (n, l) in weights.layers.enumerated() {
        let p = "model.layers.\(n)."
        out.append(NamedTensor(name: p + "input_layernorm.weight", shape: [C], values: copy(l.attentionNorm, C)))
        for (module, w) in [("q_proj", l.wq), ("k_proj", l.wk), ("v_proj", l.wv), ("o_proj", l.wo)] {
            out.append(NamedTensor(name: p + "self_attn.\(module).weight", shape: [w.rows, w.cols], values: try linear(w, layer: n, module: module)))
        }
        for (module, b, count) in [("q_proj", l.bq, c.qDim), ("k_proj", l.bk, c.kvDim), ("v_proj", l.bv, c.kvDim), ("o_proj", l.bo, C)] {
            if let b { out.append(NamedTensor(name: p + "self_attn.\(module).bias", shape: [count], values: copy(b, count))) }
        }
        out.append(NamedTensor(name: p + "post_attention_layernorm.weight", shape: [C], values: copy(l.mlpNorm, C)))
        for (module, w) in [("gate_proj", l.wGate), ("up_proj", l.wUp), ("down_proj", l.wDown)] {
            out.append(NamedTensor(name: p + "mlp.\(module).weight", shape: [w.rows, w.cols], values: try linear(w, layer: n, module: module)))
        }
        for (module, b, count) in [("gate_proj", l.bGate, I), ("up_proj", l.bUp, I), ("down_proj", l.bDown, C)] {
            if let b { out.append(NamedTensor(name: p + "mlp.\(module).bias", shape: [count], values: copy(b, count))) }
        }
    }
    out.append(NamedTensor(name: "model.norm.weight", shape: [C], values: copy(weights.finalNorm, C)))
    if weights.hasSeparateLMHead {
        out.append(NamedTensor(name: "lm_head.weight", shape: [V, C], values: weights.lmHead.float32Values()))
    }
    return (out, merged)
}

/// Float32 tensors held in memory, seen as a `TensorSource` (to run the unrounded merged weights).
final class InMemoryTensors: TensorSource {
    let tensorNames: [String]
    private let byName: [String: NamedTensor]
    init(_ tensors: [NamedTensor]) {
        tensorNames = tensors.map(\.name)
        byName = Dictionary(tensors.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
    }
    func shape(of name: String) throws -> [Int] {
        guard let t = byName[name] else { throw ModelFormatError.missingTensor(file: "<memory>", name: name) }
        return t.shape
    }
    func readFloat32(_ name: String, into destination: UnsafeMutableBufferPointer<Float>) throws {
        guard let t = byName[name] else { throw ModelFormatError.missingTensor(file: "<memory>", name: name) }
        guard destination.count == t.values.count else {
            throw ModelFormatError.invalidValue(file: "<memory>", field: "\(name) destination count", value: "\(destination.count)",
                                                expected: "\(t.values.count)")
        }
        t.values.withUnsafeBufferPointer { destination.baseAddress!.update(from: $0.baseAddress!, count: $0.count) }
    }
}

// MARK: - Hugging Face folder

/// config.json, generation_config.json and the tokenizer files; returns their names.
private func writeHuggingFaceSideFiles(source: String, sourceIsGGUF: Bool, config: LlamaConfig, dtype: WeightDType,
                                       into directory: String) throws -> [String] {
    var names: [String] = []
    var json: [String: Any]
    if sourceIsGGUF {
        let s = try GGUFExportSource(path: source)
        json = s.config
        names += try s.writeSideFiles(into: directory)
    } else {
        let configPath = (source as NSString).appendingPathComponent("config.json")
        guard let data = FileManager.default.contents(atPath: configPath),
              let c = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ModelFormatError.invalidValue(file: configPath, field: "JSON", value: "unreadable", expected: "a JSON object")
        }
        json = c
        json["quantization_config"] = nil    // a bitsandbytes source: the fused model is full precision
        for name in huggingFaceSideFiles {
            let from = (source as NSString).appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: from) else { continue }
            try FileManager.default.copyItem(atPath: from, toPath: (directory as NSString).appendingPathComponent(name))
            names.append(name)
        }
    }
    json["dtype"] = dtype.rawValue
    if json["torch_dtype"] != nil { json["torch_dtype"] = dtype.rawValue }
    json["tie_word_embeddings"] = config.tieWordEmbeddings
    try writeJSON(json, to: (directory as NSString).appendingPathComponent("config.json"))
    names.append("config.json")
    if !names.contains("generation_config.json"), !config.eosTokenIds.isEmpty {
        var g: [String: Any] = ["_from_model_config": true]
        g["bos_token_id"] = config.bosTokenId ?? NSNull()
        g["eos_token_id"] = config.eosTokenIds.count == 1 ? config.eosTokenIds[0] as Any : config.eosTokenIds as Any
        if let pad = json["pad_token_id"], !(pad is NSNull) { g["pad_token_id"] = pad }
        try writeJSON(g, to: (directory as NSString).appendingPathComponent("generation_config.json"))
        names.append("generation_config.json")
    }
    return names
}
