// Fixtures: scripts/make_llama_fixtures.py (tiny random models and their transformers logits).
import Foundation
import Testing
import ModelFormats
import _TestSupport
@testable import Llama

/// expected.json of a tiny fixture model.
struct TinyExpected {
    let prompt: [Int]
    let vocab: Int
    let logits: [Float]      // [prompt.count, vocab]
    let greedy: [Int]

    init(_ directory: String) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("llama/\(directory)/expected.json")))
        let j = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        prompt = try #require(j["prompt"] as? [Int])
        vocab = try #require(j["vocab"] as? Int)
        let rows = try #require(j["logits"] as? [[Double]])
        logits = rows.flatMap { $0.map(Float.init) }
        greedy = try #require(j["greedy"] as? [Int])
    }
}

func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count)
    return zip(a, b).map { abs($0 - $1) }.max() ?? 0
}

func argmax(_ x: ArraySlice<Float>) -> Int {
    var best = x.startIndex
    for i in x.indices where x[i] > x[best] { best = i }
    return best - x.startIndex
}

/// Greedy decoding with the KV cache: prefill the prompt, then one token at a time.
func greedyIds(_ model: LlamaModel, prompt: [Int], steps: Int) throws -> [Int] {
    model.reset()
    var logits = try model.forward(tokens: prompt, startPosition: 0, logits: .last)
    var ids: [Int] = []
    for _ in 0..<steps {
        let next = argmax(logits[...])
        ids.append(next)
        logits = try model.forward(tokens: [next], startPosition: prompt.count + ids.count - 1, logits: .last)
    }
    return ids
}

@Suite struct LlamaForwardTests {
    static let tinyModels = ["tiny-llama-gqa-tied", "tiny-llama-untied", "tiny-llama3-rope", "tiny-qwen2", "tiny-mistral"]

    /// Full logits of the 12-token prompt within 1e-4 of transformers, and 10 greedy ids equal.
    @Test(arguments: tinyModels)
    func tinyModelMatchesTransformers(_ name: String) throws {
        let expected = try TinyExpected(name)
        let model = try LlamaModel(huggingFaceDirectory: Fixtures.path("llama/\(name)"), maxContext: 64)
        let logits = try model.forward(tokens: expected.prompt, startPosition: 0, logits: .all)
        #expect(maxAbsDiff(logits, expected.logits) < 1e-4)
        #expect(try greedyIds(model, prompt: expected.prompt, steps: expected.greedy.count) == expected.greedy)
    }

    /// Prefill in chunks of 5, and token by token, give the same logits as one pass.
    @Test(arguments: ["tiny-llama-gqa-tied", "tiny-mistral"])
    func chunkedPrefillMatchesOnePass(_ name: String) throws {
        let expected = try TinyExpected(name)
        let dir = Fixtures.path("llama/\(name)")
        let config = try LlamaConfig(huggingFaceConfigFile: dir + "/config.json")
        let weights = try LlamaWeights(config: config, source: SafetensorsModel(directory: dir), file: dir)
        let chunked = try LlamaModel(config: config, weights: weights, maxContext: 32, chunkSize: 5)
        let all = try chunked.forward(tokens: expected.prompt, startPosition: 0, logits: .all)
        #expect(maxAbsDiff(all, expected.logits) < 1e-4)

        let stepwise = try LlamaModel(config: config, weights: weights, maxContext: 32)
        var rows: [Float] = []
        for (p, t) in expected.prompt.enumerated() {
            rows += try stepwise.forward(tokens: [t], startPosition: p, logits: .last)
        }
        #expect(maxAbsDiff(rows, expected.logits) < 1e-4)
        // .last is the last row of .all
        let last = try chunked.forward(tokens: expected.prompt, startPosition: 0, logits: .last)
        #expect(maxAbsDiff(last, Array(expected.logits.suffix(expected.vocab))) < 1e-4)
    }

    /// The GGUF copy (Q/K rows permuted by the llama.cpp converter's rule) gives transformers' logits,
    /// which only holds if the loader undoes the permutation.
    @Test func ggufCopyUndoesTheQKPermutation() throws {
        let expected = try TinyExpected("tiny-llama-gqa-tied")
        let model = try LlamaModel(ggufPath: Fixtures.path("llama/tiny-llama-gqa-tied.gguf"), maxContext: 64)
        #expect(model.config.headCount == 4 && model.config.kvHeadCount == 2 && !model.weights.hasSeparateLMHead)
        let logits = try model.forward(tokens: expected.prompt, startPosition: 0, logits: .all)
        #expect(maxAbsDiff(logits, expected.logits) < 1e-4)
        #expect(try greedyIds(model, prompt: expected.prompt, steps: 10) == expected.greedy)

        // and the weights equal the safetensors ones exactly
        let st = try LlamaModel(huggingFaceDirectory: Fixtures.path("llama/tiny-llama-gqa-tied"), maxContext: 8)
        let a = model.weights.storage, b = st.weights.storage
        #expect(a.count == b.count && zip(a, b).allSatisfy { $0 == $1 })
    }

    @Test func forwardRejectsBadInput() throws {
        let model = try LlamaModel(huggingFaceDirectory: Fixtures.path("llama/tiny-llama-gqa-tied"), maxContext: 8)
        #expect(throws: LlamaError.invalidInput(field: "tokens[1]", value: "256", expected: "0 ..< 256")) {
            try model.forward(tokens: [1, 256], startPosition: 0)
        }
        #expect(throws: LlamaError.self) { try model.forward(tokens: [], startPosition: 0) }
        #expect(throws: LlamaError.self) { try model.forward(tokens: Array(repeating: 3, count: 9), startPosition: 0) }
        _ = try model.forward(tokens: [1, 2, 3], startPosition: 0)
        #expect(model.cachedCount == 3)
        #expect(throws: LlamaError.self) { try model.forward(tokens: [1], startPosition: 4) }   // gap in the cache
        _ = try model.forward(tokens: [1], startPosition: 1)                                 // rewind is fine
        #expect(model.cachedCount == 2)
        model.reset()
        #expect(model.cachedCount == 0)
    }
}

/// A TensorSource over in-memory arrays, for loader error tests.
final class MemoryTensors: TensorSource {
    var tensors: [(name: String, shape: [Int], values: [Float])]
    init(_ tensors: [(name: String, shape: [Int], values: [Float])]) { self.tensors = tensors }
    var tensorNames: [String] { tensors.map(\.name) }
    func shape(of name: String) throws -> [Int] {
        guard let t = tensors.first(where: { $0.name == name }) else { throw ModelFormatError.missingTensor(file: "memory", name: name) }
        return t.shape
    }
    func readFloat32(_ name: String, into destination: UnsafeMutableBufferPointer<Float>) throws {
        let t = try #require(tensors.first(where: { $0.name == name }))
        _ = destination.initialize(from: t.values)
    }
}

@Suite struct LlamaLoadingTests {
    /// The tiny tied model's tensors, read into memory, so tests can break one.
    static func tinyTensors() throws -> (LlamaConfig, MemoryTensors) {
        let dir = Fixtures.path("llama/tiny-llama-gqa-tied")
        let config = try LlamaConfig(huggingFaceConfigFile: dir + "/config.json")
        let st = try SafetensorsModel(directory: dir)
        return (config, MemoryTensors(try st.tensorNames.map { ($0, try st.shape(of: $0), try st.float32Array($0)) }))
    }

    @Test func shapeMismatchNamesTensorAndShapes() throws {
        let (config, source) = try Self.tinyTensors()
        let i = try #require(source.tensors.firstIndex { $0.name == "model.layers.1.self_attn.k_proj.weight" })
        source.tensors[i].shape = [64, 32]
        #expect(throws: LlamaError.shapeMismatch(file: "mem", tensor: "model.layers.1.self_attn.k_proj.weight",
                                                 expected: [32, 64], actual: [64, 32])) {
            try LlamaWeights(config: config, source: source, file: "mem")
        }
    }

    @Test func missingTensorIsNamed() throws {
        let (config, source) = try Self.tinyTensors()
        source.tensors.removeAll { $0.name == "model.layers.0.mlp.up_proj.weight" }
        #expect(throws: LlamaError.missingTensor(file: "mem", name: "model.layers.0.mlp.up_proj.weight")) {
            try LlamaWeights(config: config, source: source, file: "mem")
        }
        // untied config needs lm_head
        var untied = config
        untied.tieWordEmbeddings = false
        #expect(throws: LlamaError.missingTensor(file: "mem", name: "lm_head.weight")) {
            try LlamaWeights(config: untied, source: try Self.tinyTensors().1, file: "mem")
        }
    }

    /// Rows of one head [0..D) in GGUF order (2i + j) come back in HF order (j·D/2 + i).
    @Test func unpermuteInvertsTheConverterPermutation() {
        let heads = 2, D = 8, cols = 3
        // HF rows: value = row index. Converter: GGUF row (h·D + 2i + j) = HF row (h·D + j·D/2 + i).
        var gguf = [Float](repeating: 0, count: heads * D * cols)
        for h in 0..<heads { for i in 0..<(D / 2) { for j in 0..<2 { for c in 0..<cols {
            gguf[(h * D + 2 * i + j) * cols + c] = Float(h * D + j * D / 2 + i)
        } } } }
        var out = [Float](repeating: -1, count: gguf.count)
        unpermuteRoPERows(out: &out, inp: gguf, heads: heads, headDim: D, columns: cols)
        #expect(out == (0..<(heads * D)).flatMap { r in [Float](repeating: Float(r), count: cols) })
    }
}
