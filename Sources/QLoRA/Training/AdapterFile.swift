// PEFT LoRA adapter files: adapter_model.safetensors + adapter_config.json (SPEC §6.2–6.3).
import Foundation

/// A row-major float32 matrix.
public struct LoRAMatrix: Equatable, Sendable {
    public var rows: Int
    public var cols: Int
    public var values: [Float]
    public init(rows: Int, cols: Int, values: [Float]) { self.rows = rows; self.cols = cols; self.values = values }
}

/// One adapted Linear: A [r, in], B [out, r].
public struct LoRAPair: Equatable, Sendable {
    public var a: LoRAMatrix
    public var b: LoRAMatrix
    public init(a: LoRAMatrix, b: LoRAMatrix) { self.a = a; self.b = b }
}

/// adapter_config.json fields we use, plus our own identity fields. The extras live in the
/// safetensors `__metadata__` of adapter_model.safetensors (keys `swift_qlora.base_model_hash`,
/// `swift_qlora.chat_template`, `swift_qlora.eos_token_ids` as JSON), which PEFT ignores silently;
/// as an unknown key of adapter_config.json PEFT 0.21.2 would warn "Unexpected keyword arguments".
public struct LoRAAdapterConfig: Equatable, Sendable {
    public var r: Int
    public var loraAlpha: Double
    public var loraDropout: Double
    public var useRSLoRA: Bool
    public var targetModules: [String]
    public var baseModelNameOrPath: String?
    public var bias: String
    public var taskType: String
    // Extras (ours)
    public var baseModelHash: String?
    public var chatTemplate: String?
    public var eosTokenIds: [Int]?

    public init(r: Int, loraAlpha: Double, loraDropout: Double = 0, useRSLoRA: Bool = false, targetModules: [String],
                baseModelNameOrPath: String? = nil, bias: String = "none", taskType: String = "CAUSAL_LM",
                baseModelHash: String? = nil, chatTemplate: String? = nil, eosTokenIds: [Int]? = nil) {
        self.r = r; self.loraAlpha = loraAlpha; self.loraDropout = loraDropout; self.useRSLoRA = useRSLoRA
        self.targetModules = targetModules; self.baseModelNameOrPath = baseModelNameOrPath; self.bias = bias; self.taskType = taskType
        self.baseModelHash = baseModelHash; self.chatTemplate = chatTemplate; self.eosTokenIds = eosTokenIds
    }

    /// lora_alpha / r, or lora_alpha / √r with rsLoRA.
    public var scaling: Double { useRSLoRA ? loraAlpha / Double(r).squareRoot() : loraAlpha / Double(r) }
}

/// The weights of a LoRA adapter: `layers[i][module]` with module names "q_proj", "k_proj", "v_proj",
/// "o_proj" (self_attn) and "gate_proj", "up_proj", "down_proj" (mlp).
public struct LoRAAdapterWeights: Equatable, Sendable {
    public var config: LoRAAdapterConfig
    public var layers: [[String: LoRAPair]]
    public init(config: LoRAAdapterConfig, layers: [[String: LoRAPair]]) { self.config = config; self.layers = layers }

    public static let attentionModules: Set<String> = ["q_proj", "k_proj", "v_proj", "o_proj"]
    public static let mlpModules: Set<String> = ["gate_proj", "up_proj", "down_proj"]

    /// `base_model.model.model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight`.
    public static func tensorName(layer: Int, module: String, matrix: String) -> String {
        let group = mlpModules.contains(module) ? "mlp" : "self_attn"
        return "base_model.model.model.layers.\(layer).\(group).\(module).lora_\(matrix).weight"
    }
}

public enum AdapterFile {
    public static let weightsFileName = "adapter_model.safetensors"
    public static let configFileName = "adapter_config.json"

    /// Writes both files into `directory` (created if needed), each atomically.
    public static func write(_ adapter: LoRAAdapterWeights, to directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let dir = URL(fileURLWithPath: directory)
        var w = SafetensorsWriter(metadata: metadata(adapter.config))
        for (i, layer) in adapter.layers.enumerated() {
            for module in layer.keys.sorted() {
                let pair = layer[module]!
                for (name, m) in [("A", pair.a), ("B", pair.b)] {
                    guard m.values.count == m.rows * m.cols else {
                        throw ModelFormatError.invalidValue(file: dir.appendingPathComponent(weightsFileName).path,
                                                            field: LoRAAdapterWeights.tensorName(layer: i, module: module, matrix: name),
                                                            value: "\(m.values.count) values", expected: "\(m.rows)×\(m.cols)")
                    }
                    try w.add(LoRAAdapterWeights.tensorName(layer: i, module: module, matrix: name), shape: [m.rows, m.cols], float32: m.values)
                }
            }
        }
        try w.write(to: dir.appendingPathComponent(weightsFileName).path)
        let text = configJSON(adapter.config)
        try writeAtomically(Array(text.utf8), to: dir.appendingPathComponent(configFileName).path)
    }

    /// The safetensors metadata: `format: pt` and our extras.
    public static func metadata(_ c: LoRAAdapterConfig) -> [String: String] {
        var m = ["format": "pt"]
        if let h = c.baseModelHash { m["swift_qlora.base_model_hash"] = h }
        if let t = c.chatTemplate { m["swift_qlora.chat_template"] = t }
        if let e = c.eosTokenIds { m["swift_qlora.eos_token_ids"] = "[" + e.map(String.init).joined(separator: ", ") + "]" }
        return m
    }

    /// adapter_config.json text: SPEC §6.2's recommended keys, sorted, 2-space indent (as PEFT's
    /// json.dumps(indent=2, sort_keys=True)).
    public static func configJSON(_ c: LoRAAdapterConfig) -> String {
        let top: [(String, JSONOut)] = [
            ("alpha_pattern", .object([])),
            ("base_model_name_or_path", c.baseModelNameOrPath.map { .string($0) } ?? .null),
            ("bias", .string(c.bias)),
            ("fan_in_fan_out", .bool(false)),
            ("inference_mode", .bool(true)),
            ("init_lora_weights", .bool(true)),
            ("layers_pattern", .null),
            ("layers_to_transform", .null),
            ("lora_alpha", .number(c.loraAlpha)),
            ("lora_dropout", .number(c.loraDropout)),
            ("modules_to_save", .null),
            ("peft_type", .string("LORA")),
            ("r", .number(Double(c.r))),
            ("rank_pattern", .object([])),
            ("revision", .null),
            ("target_modules", .array(c.targetModules.sorted().map { .string($0) })),
            ("task_type", .string(c.taskType)),
            ("use_dora", .bool(false)),
            ("use_rslora", .bool(c.useRSLoRA)),
        ]
        return JSONOut.object(top).render(indent: 0) + "\n"
    }

    /// Reads an adapter directory (ours or PEFT's). Accepts F32, F16 and BF16 tensors.
    public static func read(directory: String) throws -> LoRAAdapterWeights {
        let dir = URL(fileURLWithPath: directory)
        let cfgPath = dir.appendingPathComponent(configFileName).path
        var config = try readConfig(cfgPath)
        let wPath = dir.appendingPathComponent(weightsFileName).path
        let file = try SafetensorsFile(path: wPath)
        config.baseModelHash = file.metadata["swift_qlora.base_model_hash"]
        config.chatTemplate = file.metadata["swift_qlora.chat_template"]
        if let e = file.metadata["swift_qlora.eos_token_ids"] {
            guard let ids = (try? JSONSerialization.jsonObject(with: Data(e.utf8))) as? [NSNumber] else {
                throw ModelFormatError.invalidValue(file: wPath, field: "__metadata__.swift_qlora.eos_token_ids", value: e, expected: "a JSON list of ids")
            }
            config.eosTokenIds = ids.map(\.intValue)
        }
        var layers: [[String: LoRAPair]] = []
        var parts: [Int: [String: (a: LoRAMatrix?, b: LoRAMatrix?)]] = [:]
        let prefix = "base_model.model.model.layers."
        for name in file.tensorNames {
            func bad(_ why: String) -> ModelFormatError { .invalidValue(file: wPath, field: "tensor \(name)", value: why, expected: "\(prefix){i}.{self_attn|mlp}.{module}.lora_{A|B}.weight") }
            guard name.hasPrefix(prefix) else { throw bad("unexpected name") }
            let comps = name.dropFirst(prefix.count).split(separator: ".").map(String.init)
            guard comps.count == 5, let layer = Int(comps[0]), layer >= 0, layer < 100_000, comps[4] == "weight",
                  comps[3] == "lora_A" || comps[3] == "lora_B",
                  (comps[1] == "self_attn" && LoRAAdapterWeights.attentionModules.contains(comps[2]))
                    || (comps[1] == "mlp" && LoRAAdapterWeights.mlpModules.contains(comps[2])) else { throw bad("unexpected name") }
            let shape = try file.shape(of: name)
            guard shape.count == 2 else { throw bad("shape \(shape), not 2-D") }
            var values = [Float](repeating: 0, count: shape[0] * shape[1])
            try values.withUnsafeMutableBufferPointer { try file.readFloat32(name, into: $0) }
            let m = LoRAMatrix(rows: shape[0], cols: shape[1], values: values)
            var entry = parts[layer, default: [:]][comps[2]] ?? (nil, nil)
            if comps[3] == "lora_A" {
                guard shape[0] == config.r else { throw bad("lora_A shape \(shape) (r = \(config.r))") }
                entry.a = m
            } else {
                guard shape[1] == config.r else { throw bad("lora_B shape \(shape) (r = \(config.r))") }
                entry.b = m
            }
            parts[layer, default: [:]][comps[2]] = entry
        }
        let count = (parts.keys.max() ?? -1) + 1
        for i in 0..<count {
            var layer: [String: LoRAPair] = [:]
            for (module, e) in parts[i] ?? [:] {
                guard let a = e.a, let b = e.b else {
                    throw ModelFormatError.missingTensor(file: wPath, name: LoRAAdapterWeights.tensorName(layer: i, module: module, matrix: e.a == nil ? "A" : "B"))
                }
                layer[module] = LoRAPair(a: a, b: b)
            }
            layers.append(layer)
        }
        return LoRAAdapterWeights(config: config, layers: layers)
    }

    /// Parses adapter_config.json. Throws for a non-LoRA `peft_type`, DoRA, or per-module rank/alpha patterns.
    public static func readConfig(_ path: String) throws -> LoRAAdapterConfig {
        guard let data = FileManager.default.contents(atPath: path) else { throw ModelFormatError.unreadable(file: path, reason: "missing") }
        guard let o = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ModelFormatError.invalidValue(file: path, field: "(root)", value: "not a JSON object", expected: "an object")
        }
        func bad(_ key: String, _ expected: String) -> ModelFormatError {
            .invalidValue(file: path, field: key, value: o[key].map { "\($0)" } ?? "missing", expected: expected)
        }
        func isBool(_ v: Any?) -> Bool? {
            guard let n = v as? NSNumber else { return nil }
            return String(cString: n.objCType) == "c" ? n.boolValue : nil  // JSON true/false
        }
        guard o["peft_type"] as? String == "LORA" else { throw bad("peft_type", "\"LORA\"") }
        let r = (o["r"] as? NSNumber)?.intValue ?? 8
        guard r > 0, o["r"] == nil || isBool(o["r"]) == nil else { throw bad("r", "a positive integer") }
        guard let alpha = (o["lora_alpha"] as? NSNumber)?.doubleValue ?? (o["lora_alpha"] == nil ? 8 : nil) else { throw bad("lora_alpha", "a number") }
        let dropout = (o["lora_dropout"] as? NSNumber)?.doubleValue ?? 0
        let rs = isBool(o["use_rslora"]) ?? false
        if isBool(o["use_dora"]) == true { throw bad("use_dora", "false (DoRA is not supported)") }
        for key in ["rank_pattern", "alpha_pattern"] {
            if let p = o[key] as? [String: Any], !p.isEmpty { throw bad(key, "{} (per-module patterns are not supported)") }
        }
        var targets: [String]
        if let list = o["target_modules"] as? [String] { targets = list.sorted() }
        else if let s = o["target_modules"] as? String { targets = [s] }
        else if o["target_modules"] == nil || o["target_modules"] is NSNull { targets = ["q_proj", "v_proj"] }
        else { throw bad("target_modules", "a list of module names") }
        return LoRAAdapterConfig(r: r, loraAlpha: alpha, loraDropout: dropout, useRSLoRA: rs, targetModules: targets,
                                 baseModelNameOrPath: o["base_model_name_or_path"] as? String,
                                 bias: o["bias"] as? String ?? "none", taskType: o["task_type"] as? String ?? "CAUSAL_LM")
    }

    static func writeAtomically(_ bytes: [UInt8], to path: String) throws {
        let tmp = path + ".tmp-\(ProcessInfo.processInfo.processIdentifier)-\(UInt32.random(in: 0...UInt32.max))"
        guard FileManager.default.createFile(atPath: tmp, contents: Data(bytes)) else {
            throw ModelFormatError.unreadable(file: path, reason: "cannot create \(tmp)")
        }
        guard rename(tmp, path) == 0 else {
            let why = String(cString: strerror(errno))
            try? FileManager.default.removeItem(atPath: tmp)
            throw ModelFormatError.unreadable(file: path, reason: "rename: \(why)")
        }
    }
}

/// A tiny deterministic JSON writer in Python's json.dumps(indent=2) style (keys in the given order).
indirect enum JSONOut {
    case null, bool(Bool), number(Double), string(String), array([JSONOut]), object([(String, JSONOut)])

    func render(indent: Int) -> String {
        let pad = String(repeating: " ", count: indent + 2), end = String(repeating: " ", count: indent)
        switch self {
        case .null: return "null"
        case let .bool(b): return b ? "true" : "false"
        case let .number(x):
            if x == x.rounded(), abs(x) < 1e15 { return String(Int(x)) }
            return "\(x)"
        case let .string(s): return JSONOut.quote(s)
        case let .array(a):
            if a.isEmpty { return "[]" }
            return "[\n" + a.map { pad + $0.render(indent: indent + 2) }.joined(separator: ",\n") + "\n" + end + "]"
        case let .object(o):
            if o.isEmpty { return "{}" }
            return "{\n" + o.map { pad + JSONOut.quote($0.0) + ": " + $0.1.render(indent: indent + 2) }.joined(separator: ",\n") + "\n" + end + "}"
        }
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 || u.value > 0x7e {
                    if u.value > 0xFFFF {
                        let v = u.value - 0x10000
                        out += String(format: "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF))
                    } else {
                        out += String(format: "\\u%04x", u.value)
                    }
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        return out + "\""
    }
}
