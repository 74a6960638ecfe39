import Foundation

/// A tokenizer with what generation and chat formatting need from the same files.
public struct TokenizerBundle: Sendable {
    public let tokenizer: BPETokenizer
    /// Jinja chat template, if the files have one.
    public let chatTemplate: String?
    public let bosToken: String?
    public let eosToken: String?
    /// Ids that end generation: EOS, the generation config's EOS ids, GGUF end-of-turn / end-of-message
    /// ids, and end-of-turn tokens present in the vocabulary (`<|im_end|>`, `<|eot_id|>`, `<|end|>`,
    /// `<end_of_turn>`, `<|eom_id|>`). No duplicates; EOS first.
    public let eosTokenIds: [Int]

    public init(tokenizer: BPETokenizer, chatTemplate: String?, bosToken: String?, eosToken: String?, eosTokenIds: [Int]) {
        self.tokenizer = tokenizer
        self.chatTemplate = chatTemplate
        self.bosToken = bosToken
        self.eosToken = eosToken
        self.eosTokenIds = eosTokenIds
    }

    /// Token texts that end a turn in common chat formats.
    public static let endOfTurnTokens = ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|eom_id|>"]

    static func stopIds(_ tokenizer: BPETokenizer, first: [Int?]) -> [Int] {
        var out: [Int] = []
        for id in first.compactMap({ $0 }) where !out.contains(id) { out.append(id) }
        for t in endOfTurnTokens {
            if let id = tokenizer.id(forToken: t), !out.contains(id) { out.append(id) }
        }
        return out
    }

    /// Rethrows a configuration error with the file it came from.
    static func build(_ c: BPEConfiguration, file: String) throws -> BPETokenizer {
        do {
            return try BPETokenizer(configuration: c)
        } catch let e as BPEConfigurationError {
            throw ModelFormatError.invalidValue(file: file, field: e.field, value: e.value, expected: e.reason)
        }
    }
}
