import Foundation

/// A model ready to use: the network, its tokenizer and its chat template, loaded from either a
/// GGUF file or a Hugging Face folder (config.json, *.safetensors, tokenizer.json).
public final class ModelBundle {
    public enum Format: String, Sendable { case gguf, huggingFace = "huggingface" }

    public let path: String
    public let format: Format
    public let config: LlamaConfig
    public let model: LlamaModel
    public let tokenizer: TokenizerBundle
    /// Parsed chat template, if the files carry one.
    public let chatTemplate: ChatTemplate?
    /// How the base's linear weights were asked to be held.
    public let quantization: QuantizationPolicy
    /// True when the folder is a bitsandbytes 4-bit checkpoint (its 4-bit tensors are used as stored).
    public let isBitsAndBytesCheckpoint: Bool

    /// Loads `path` (a .gguf file or a model folder). `contextLength` caps the KV cache
    /// (default: the model's maximum, at most 4096 positions). `quantization` decides how the base's
    /// linear weights are held (default: float32). A folder whose config.json has a bitsandbytes
    /// `quantization_config` is read with `BitsAndBytesModel`: its 4-bit weights are used as stored.
    public init(path: String, contextLength: Int? = nil, quantization: QuantizationPolicy = .none) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ModelFormatError.unreadable(file: path, reason: "no such file or directory")
        }
        self.path = path
        self.quantization = quantization
        let source: TensorSource
        var bnb = false
        if isDirectory.boolValue {
            format = .huggingFace
            let configPath = (path as NSString).appendingPathComponent("config.json")
            config = try LlamaConfig(huggingFaceConfigFile: configPath)
            if BitsAndBytesModel.isBitsAndBytes4Bit(directory: path) {
                source = try BitsAndBytesModel(directory: path)
                bnb = true
            } else {
                source = try SafetensorsModel(directory: path)
            }
            tokenizer = try TokenizerBundle.load(huggingFaceDirectory: path)
        } else {
            format = .gguf
            let gguf = try GGUFFile(path: path)
            config = try LlamaConfig(ggufMetadata: gguf.metadata, file: path)
            source = gguf
            tokenizer = try TokenizerBundle.load(ggufMetadata: gguf.metadata, file: path)
        }
        isBitsAndBytesCheckpoint = bnb
        let weights = try LlamaWeights(config: config, source: source, file: path, policy: quantization)
        let context = min(contextLength ?? 4096, config.maxPositionEmbeddings)
        model = try LlamaModel(config: config, weights: weights, maxContext: max(context, 1))
        if let text = tokenizer.chatTemplate {
            do { chatTemplate = try ChatTemplate(text) } catch {
                throw ModelFormatError.invalidValue(file: path, field: "chat template", value: "\(error)",
                                                   expected: "a template this Jinja subset can parse")
            }
        } else {
            chatTemplate = nil
        }
    }

    /// Renders `messages` with the model's chat template and tokenizes the result (special tokens
    /// in the rendered text become their ids; no extra BOS, as transformers' apply_chat_template).
    public func chatPrompt(_ messages: [ChatMessage], addGenerationPrompt: Bool = true) throws -> (text: String, ids: [Int]) {
        guard let template = chatTemplate else { throw ModelBundleError.noChatTemplate(file: path) }
        let text = try template.render(messages: messages, addGenerationPrompt: addGenerationPrompt,
                                       bosToken: tokenizer.bosToken ?? "", eosToken: tokenizer.eosToken ?? "")
        return (text, tokenizer.tokenizer.encode(text, addSpecialTokens: false))
    }

    /// Tokenizes a raw prompt, adding BOS where the tokenizer's settings ask for it.
    public func rawPrompt(_ text: String) -> [Int] {
        tokenizer.tokenizer.encode(text, addSpecialTokens: true)
    }

    /// Generation options with this model's end-of-sequence / end-of-turn ids.
    public func generationOptions() -> GenerationOptions {
        GenerationOptions(stopTokenIds: Set(tokenizer.eosTokenIds))
    }
}

public enum ModelBundleError: Error, CustomStringConvertible {
    case noChatTemplate(file: String)

    public var description: String {
        switch self {
        case let .noChatTemplate(file):
            return "\(file): the model has no chat template (tokenizer.chat_template / tokenizer_config.json chat_template)"
        }
    }
}

extension LlamaModel: CausalLanguageModel {
    public var vocabularySize: Int { config.vocabularySize }
    public var contextLength: Int { maxContext }
    public func nextTokenLogits(tokens: [Int], startPosition: Int) throws -> [Float] {
        try forward(tokens: tokens, startPosition: startPosition, logits: .last)
    }
    public func resetCache() { reset() }
}
