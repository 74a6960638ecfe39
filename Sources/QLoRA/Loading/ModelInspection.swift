import Foundation

/// What `qlora inspect` reports about a model, read from headers only (no weights are loaded).
public struct ModelInspection: Sendable {
    public struct TensorGroup: Sendable, Equatable {
        /// Storage type as the file names it (GGUF: Q4_1, F32, …; safetensors: BF16, F32, …).
        public var type: String
        public var tensors: Int
        public var parameters: Int
        public var bytes: Int
    }

    public var path: String
    public var format: ModelBundle.Format
    public var config: LlamaConfig
    public var parameterCount: Int
    public var tensorCount: Int
    /// Tensor storage grouped by type, largest first.
    public var groups: [TensorGroup]
    public var chatTemplate: String?
    /// Selected file metadata (GGUF general.* keys; safetensors __metadata__).
    public var metadata: [(key: String, value: String)]

    /// The policy `loaded` assumes.
    public var policy: QuantizationPolicy
    /// The base as `ModelBundle(path:quantization: policy)` would hold it (computed from the config, no loading).
    public var loaded: BaseMemoryReport

    public var bytes: Int { groups.reduce(0) { $0 + $1.bytes } }
    public var bitsPerParameter: Double { parameterCount > 0 ? Double(bytes * 8) / Double(parameterCount) : 0 }

    /// Reads `path`'s headers; `loaded` describes the base held under `policy`.
    public init(path: String, policy: QuantizationPolicy = .nf4) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ModelFormatError.unreadable(file: path, reason: "no such file or directory")
        }
        self.path = path
        self.policy = policy
        let separateLMHead: Bool
        var groups: [String: TensorGroup] = [:]
        func add(_ type: String, _ parameters: Int, _ bytes: Int) {
            groups[type, default: TensorGroup(type: type, tensors: 0, parameters: 0, bytes: 0)].tensors += 1
            groups[type]!.parameters += parameters
            groups[type]!.bytes += bytes
        }
        if isDirectory.boolValue {
            format = .huggingFace
            config = try LlamaConfig(huggingFaceConfigFile: (path as NSString).appendingPathComponent("config.json"))
            let source = try SafetensorsModel(directory: path)
            for name in source.tensorNames {
                let info = try source.info(name)
                add(info.dtype.rawValue, info.elementCount, info.byteCount)
            }
            tensorCount = source.tensorNames.count
            separateLMHead = !config.tieWordEmbeddings
            chatTemplate = (try? TokenizerBundle.load(huggingFaceDirectory: path))?.chatTemplate
            metadata = source.files.flatMap { $0.metadata.sorted { $0.key < $1.key }.map { (key: $0.key, value: $0.value) } }
        } else {
            format = .gguf
            let gguf = try GGUFFile(path: path)
            config = try LlamaConfig(ggufMetadata: gguf.metadata, file: path)
            for info in gguf.tensorInfos {
                add(String(describing: info.type).uppercased(), info.elementCount, info.byteCount)
            }
            tensorCount = gguf.tensorInfos.count
            separateLMHead = gguf.contains("output.weight")
            chatTemplate = gguf.metadata["tokenizer.chat_template"]?.string
            metadata = gguf.metadataKeys.filter { $0.hasPrefix("general.") }.compactMap { key in
                guard let v = gguf.metadata[key] else { return nil }
                return (key: key, value: ModelInspection.text(of: v))
            }
        }
        self.groups = groups.values.sorted { $0.bytes > $1.bytes }
        parameterCount = self.groups.reduce(0) { $0 + $1.parameters }
        let storage = try MemoryPlan.embeddingStorage(path: path)   // a GGUF's Q8_0 embedding is held as Q8_0
        loaded = BaseMemoryReport.estimate(config: config, separateLMHead: separateLMHead, policy: policy,
                                           embedding: storage.embedding, lmHead: storage.lmHead)
    }
}

extension ModelInspection {
    /// A GGUF metadata value as one line of text.
    static func text(of value: GGUFValue) -> String {
        if let s = value.string { return s }
        if let i = value.int { return String(i) }
        if let d = value.double { return String(d) }
        if let a = value.stringArray { return a.joined(separator: ", ") }
        if let b = value.bool { return String(b) }
        return "\(value)"
    }
}

extension TokenizerBundle {
    /// The tokenizer of a .gguf file or a Hugging Face folder, without loading any weights.
    public static func load(modelPath path: String) throws -> TokenizerBundle {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ModelFormatError.unreadable(file: path, reason: "no such file or directory")
        }
        if isDirectory.boolValue { return try load(huggingFaceDirectory: path) }
        return try load(ggufMetadata: GGUFFile(path: path).metadata, file: path)
    }
}
