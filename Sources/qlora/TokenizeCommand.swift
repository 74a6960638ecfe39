import ArgumentParser
import Foundation
import QLoRA

struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize", abstract: "Print the token ids of a text as a JSON array, or decode ids back to text.")

    @Option(help: "A .gguf file or a Hugging Face model folder.") var model: String
    @Option(help: "The text to encode (with --decode: a JSON array of ids, or ids separated by spaces or commas).")
    var text: String
    @Flag(help: "Decode ids to text instead.") var decode = false
    @Flag(help: "Add the tokenizer's BOS/EOS tokens when encoding (as transformers' add_special_tokens=True).")
    var addSpecialTokens = false

    func run() throws {
        let bundle = try TokenizerBundle.load(modelPath: model)
        if decode {
            let pieces = text.split(whereSeparator: { "[], \n\t".contains($0) })
            var ids: [Int] = []
            for piece in pieces {
                guard let id = Int(piece), id >= 0, id < bundle.tokenizer.vocabularySize else {
                    throw ValidationError("--text: '\(piece)' is not a token id in 0..<\(bundle.tokenizer.vocabularySize)")
                }
                ids.append(id)
            }
            print(bundle.tokenizer.decode(ids))
        } else {
            print(jsonString(bundle.tokenizer.encode(text, addSpecialTokens: addSpecialTokens)))
        }
    }
}
