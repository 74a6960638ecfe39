// The real model's Q8_0 token embedding / tied LM head kept in its blocks, against the same model
// with that tensor dequantized into float32 (read through a TensorSource that hides the GGUF so the
// loader takes the float32 path). Q8_0 values are exact in float32: only the order of additions
// differs. Needs the real model: Fixtures.smolLM2GGUF (scripts/fetch_model.sh). No fixtures.
import Foundation
import Testing
import ModelFormats
import Quantization
import _TestSupport
@testable import Llama

/// A GGUF seen only as a `TensorSource` (every tensor dequantized to float32 by the loader).
private final class PlainSource: TensorSource {
    let file: GGUFFile
    init(_ file: GGUFFile) { self.file = file }
    var tensorNames: [String] { file.tensorNames }
    func contains(_ name: String) -> Bool { file.contains(name) }
    func shape(of name: String) throws -> [Int] { try file.shape(of: name) }
    func readFloat32(_ name: String, into destination: UnsafeMutableBufferPointer<Float>) throws {
        try file.readFloat32(name, into: destination)
    }
}

private func q8MaxAbsDiff(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).map { abs($0 - $1) }.max() ?? 0 }

@Suite(.serialized) struct Q8EmbeddingTests {
    static let prompt = [1, 504, 3458, 314, 260, 2717, 28, 2093, 30, 198, 1350, 45, 3019]

    func loadBoth() throws -> (q8: LlamaWeights, dense: LlamaWeights) {
        let path = Fixtures.smolLM2GGUF
        try #require(FileManager.default.fileExists(atPath: path), "missing \(path): run scripts/fetch_model.sh")
        let file = try GGUFFile(path: path)
        let config = try LlamaConfig(ggufMetadata: file.metadata, file: path)
        let q8 = try LlamaWeights(config: config, source: file, file: path)
        let dense = try LlamaWeights(config: config, source: PlainSource(file), file: path)
        return (q8, dense)
    }

    @Test func q8HeadGivesTheFloat32HeadsLogitsInPrefillAndDecode() throws {
        let (q8, dense) = try loadBoth()
        let V = q8.config.vocabularySize, C = q8.config.hiddenSize
        #expect(q8.embedding.storageKind == .q8_0 && !q8.hasSeparateLMHead)
        #expect(dense.embedding.storageKind == .float32)
        // Same values: the Q8_0 blocks dequantize to exactly the float32 table.
        let table = q8.embedding.float32Values()
        #expect(table == dense.embedding.float32Values())
        // 34 bytes per 32 values, and no float32 copy in storage.
        #expect(q8.memoryReport.embedding.bytes == V * C / 32 * 34)
        #expect(dense.storage.count - q8.storage.count == V * C)
        #expect(q8.memoryReport.totalParameters == dense.memoryReport.totalParameters)

        let a = try LlamaModel(config: q8.config, weights: q8, maxContext: 32)
        let b = try LlamaModel(config: dense.config, weights: dense, maxContext: 32)
        a.decodeArithmetic = .float32; b.decodeArithmetic = .float32   // int16: checked at the end
        let n = Self.prompt.count
        // prefill of all positions (T > 1: tiles of the head dequantized, sgemm)
        let la = try a.forward(tokens: Self.prompt, startPosition: 0, logits: .all)
        let lb = try b.forward(tokens: Self.prompt, startPosition: 0, logits: .all)
        #expect(q8MaxAbsDiff(la, lb) < 1e-4, "prefill max |Δlogit| \(q8MaxAbsDiff(la, lb))")
        // decode (T = 1: the fused Q8_0 GEMV) after a prefill of n − 1
        a.reset(); b.reset()
        _ = try a.forward(tokens: Array(Self.prompt.prefix(n - 1)), startPosition: 0)
        _ = try b.forward(tokens: Array(Self.prompt.prefix(n - 1)), startPosition: 0)
        let da = try a.forward(tokens: [Self.prompt[n - 1]], startPosition: n - 1)
        let db = try b.forward(tokens: [Self.prompt[n - 1]], startPosition: n - 1)
        #expect(q8MaxAbsDiff(da, db) < 1e-4, "decode max |Δlogit| \(q8MaxAbsDiff(da, db))")
        #expect(q8MaxAbsDiff(da, Array(la[((n - 1) * V)...])) < 1e-3)
        #expect(da.indices.max(by: { da[$0] < da[$1] }) == db.indices.max(by: { db[$0] < db[$1] }))
        // int16 decode (the default): the same token's logits within 1e-2 of the largest, same argmax
        a.decodeArithmetic = .int16
        let di = try a.forward(tokens: [Self.prompt[n - 1]], startPosition: n - 1)
        #expect(di != da && q8MaxAbsDiff(di, db) < 1e-2 * db.map(abs).max()!)
        #expect(di.indices.max(by: { di[$0] < di[$1] }) == db.indices.max(by: { db[$0] < db[$1] }))
    }

    /// The training path: loss and LoRA gradients of one step with the fused Q8_0 head + cross-entropy
    /// (tiles over V), and the materialized logits of `forward`, equal the float32 head's.
    @Test func trainingStepWithQ8HeadMatchesFloat32Head() throws {
        let (q8, dense) = try loadBoth()
        let ids = Self.prompt + [2, 3, 4]
        let labels = ids.enumerated().map { $0.offset < 4 ? -100 : $0.element }
        func step(_ w: LlamaWeights) throws -> (loss: Double, grads: [Float], logits: [Float]) {
            let m = try LoRAModel(weights: w, batchSize: 1, seqLen: ids.count, rank: 4, targets: [.q, .v, .down])
            // B starts at zero: give it values so that dx reaches below the head in every layer.
            for (i, p) in m.parameters.enumerated() { for j in 0..<p.count { p[j] = Float((i * 31 + j) % 17 - 8) * 1e-3 } }
            let r = try m.forwardBackward(inputIds: ids, labels: labels, lossScale: 1, rowLength: ids.count)
            let f = try m.forward(inputIds: ids, labels: labels)
            #expect(abs(f.lossSum - r.lossSum) < 1e-3)
            let V = w.config.vocabularySize
            return (r.lossSum, Array(m.gradientStorage), Array(UnsafeBufferPointer(start: m.logits, count: ids.count * V)))
        }
        let a = try step(q8), b = try step(dense)
        #expect(abs(a.loss - b.loss) < 1e-4 * max(1, abs(b.loss)), "loss \(a.loss) vs \(b.loss)")
        let scale = max(1e-6, b.grads.map(abs).max() ?? 0)
        #expect(q8MaxAbsDiff(a.grads, b.grads) / scale < 1e-3, "max |Δgrad| \(q8MaxAbsDiff(a.grads, b.grads)) of \(scale)")
        #expect(q8MaxAbsDiff(a.logits, b.logits) < 1e-4)
    }

    /// A Q8_0 token embedding whose shape does not match the config is refused naming the tensor.
    @Test func mismatchedQ8EmbeddingIsATypedError() throws {
        let V = 64, C = 32
        var writer = try GGUFWriter()
        let bytes = [UInt8](repeating: 0, count: (V + 1) * C / 32 * 34)
        try writer.addTensor("token_embd.weight", type: .q8_0, dims: [C, V + 1], bytes: bytes)
        let path = NSTemporaryDirectory() + "q8-embedding-\(getpid()).gguf"
        try writer.write(to: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let file = try GGUFFile(path: path)
        #expect(throws: LlamaError.shapeMismatch(file: path, tensor: "token_embd.weight", expected: [V, C], actual: [V + 1, C])) {
            _ = try LlamaWeights.q8Tensor(file, "token_embd.weight", shape: [V, C], file: path)
        }
        #expect(try LlamaWeights.q8Tensor(file, "output.weight", shape: [V, C], file: path) == nil)
    }
}
