// Fixtures made by scripts/make_tokenizer_fixtures.py (see the header of that script).
import Foundation
import _TestSupport

struct SmolLM2Case: Decodable {
    var text: String
    var ids_smollm: [Int]
    var ids_hf: [Int]
    /// transformers' decode of ids_hf: the text itself, except where the vocabulary drops characters.
    var decoded: String
    var decoded_skip_special: String
}

struct SPMCase: Decodable {
    var text: String
    var ids: [Int]
    var ids_with_special: [Int]
    var ids_metaspace: [Int]
    var decoded_metaspace: String
    var tokens: [String]
    var decoded: String
    var decoded_with_special: String
    var decoded_skip_special: String
}

private struct Cases<C: Decodable>: Decodable { var cases: [C] }

enum TokenizerFixtures {
    static func smolLM2Cases() throws -> [SmolLM2Case] {
        try load(Fixtures.path("tokenizer/smollm2-corpus.json"))
    }
    static func spmCases() throws -> [SPMCase] {
        try load(Fixtures.path("tokenizer/tiny-spm/spm-corpus.json"))
    }
    private static func load<C: Decodable>(_ path: String) throws -> [C] {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        return try JSONDecoder().decode(Cases<C>.self, from: data).cases
    }
}
