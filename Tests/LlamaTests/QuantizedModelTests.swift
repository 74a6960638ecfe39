// Fixtures: scripts/make_llama_fixtures.py (tiny random models).
// A model loaded with a 4-bit policy must compute exactly what the float32 model computes when its
// linear weights are replaced by the dequantized 4-bit ones (prefill via NF4Matmul.forward, decode via
// the fused GEMV), hold no float32 copy of the linear weights, and use stored 4-bit tensors as stored.
import Foundation
import Testing
import ModelFormats
import Quantization
import _TestSupport
@testable import Llama

/// A float32 model whose linear weights are the dequantized linear weights of `quantized`.
private func dequantizedTwin(of quantized: LlamaWeights, directory: String, config: LlamaConfig) throws -> LlamaModel {
    let source = try SafetensorsModel(directory: directory)
    let dense = try LlamaWeights(config: config, source: source, file: directory, policy: .none)
    for (l, q) in zip(dense.layers, quantized.layers) {
        for (d, w) in zip(l.linearWeights, q.linearWeights) {
            guard case let .dense(ptr, rows, cols) = d, let t = w.quantizedTensor else {
                Issue.record("expected dense twin and quantized weight"); continue
            }
            #expect(t.shape == [rows, cols])
            t.dequantize(start: 0, into: UnsafeMutableBufferPointer(start: ptr, count: rows * cols))
        }
    }
    return try LlamaModel(config: config, weights: dense, maxContext: 64)
}

/// Wraps a safetensors folder and hands out pre-quantized FP4 (blocksize 128) linear weights.
private final class PreQuantizedSource: QuantizedTensorSource {
    let inner: SafetensorsModel
    var handedOut: [String: QuantizedTensor4Bit] = [:]
    init(_ inner: SafetensorsModel) { self.inner = inner }
    var tensorNames: [String] { inner.tensorNames }
    func contains(_ name: String) -> Bool { inner.contains(name) }
    func shape(of name: String) throws -> [Int] { try inner.shape(of: name) }
    func readFloat32(_ name: String, into d: UnsafeMutableBufferPointer<Float>) throws { try inner.readFloat32(name, into: d) }
    func readFloat32Rows(_ name: String, rows: Range<Int>, into d: UnsafeMutableBufferPointer<Float>) throws {
        try inner.readFloat32Rows(name, rows: rows, into: d)
    }
    func quantized4Bit(_ name: String) throws -> QuantizedTensor4Bit? {
        guard name.hasSuffix("_proj.weight") else { return nil }
        let shape = try inner.shape(of: name)
        var values = [Float](repeating: 0, count: shape.reduce(1, *))
        try values.withUnsafeMutableBufferPointer { try inner.readFloat32(name, into: $0) }
        let q = try QuantizedTensor4Bit.quantize(values, shape: shape, quantType: .fp4, blocksize: 128, doubleQuant: false)
        handedOut[name] = q
        return q
    }
}

@Suite struct QuantizedModelTests {
    static let cases: [(String, QuantizationPolicy.Kind, Bool)] = [
        ("tiny-llama-gqa-tied", .nf4, true), ("tiny-llama-untied", .fp4, false), ("tiny-qwen2", .int4, true),
        ("tiny-mistral", .nf4, false),
    ]

    /// Prefill logits (all positions) and 6 decode steps of the 4-bit model equal the dequantized twin's.
    @Test(arguments: cases)
    func quantizedModelEqualsDequantizedFloat32Model(_ name: String, _ kind: QuantizationPolicy.Kind, _ dq: Bool) throws {
        let dir = Fixtures.path("llama/\(name)")
        let config = try LlamaConfig(huggingFaceConfigFile: dir + "/config.json")
        let policy = QuantizationPolicy(quantType: kind, doubleQuant: dq, blocksize: 64)
        let weights = try LlamaWeights(config: config, source: try SafetensorsModel(directory: dir), file: dir, policy: policy)
        for l in weights.layers {
            for w in l.linearWeights {
                let t = try #require(w.quantizedTensor)
                #expect(t.quantType == kind.quantType && t.isDoubleQuantized == dq && t.blocksize == 64)
            }
        }
        let model = try LlamaModel(config: config, weights: weights, maxContext: 64)
        model.decodeArithmetic = .float32   // the exact codes; int16 is checked below
        let twin = try dequantizedTwin(of: weights, directory: dir, config: config)
        let prompt = try TinyExpected(name).prompt
        let a = try model.forward(tokens: prompt, startPosition: 0, logits: .all)
        let b = try twin.forward(tokens: prompt, startPosition: 0, logits: .all)
        #expect(maxAbsDiff(a, b) < 1e-4)
        // And the quantization really changed something (the float32 model differs).
        let fp32 = try LlamaModel(huggingFaceDirectory: dir, maxContext: 64)
        let c = try fp32.forward(tokens: prompt, startPosition: 0, logits: .all)
        #expect(maxAbsDiff(a, c) > 1e-4)
        // Decode (T = 1, fused GEMV) step by step.
        var x = [Float](), y = [Float]()
        var next = argmax(a[(a.count - config.vocabularySize)...])
        for step in 0..<6 {
            x = try model.forward(tokens: [next], startPosition: prompt.count + step, logits: .last)
            y = try twin.forward(tokens: [next], startPosition: prompt.count + step, logits: .last)
            #expect(maxAbsDiff(x, y) < 1e-4)
            next = argmax(x[...])
        }
    }

    /// Decoding with int16 products (the default) stays within 1e-2 of the largest logit of the exact
    /// decode, token after token, and really takes the int16 path (the logits are not bit-identical).
    @Test(arguments: cases)
    func int16DecodeStaysCloseToFloat32Decode(_ name: String, _ kind: QuantizationPolicy.Kind, _ dq: Bool) throws {
        let dir = Fixtures.path("llama/\(name)")
        let config = try LlamaConfig(huggingFaceConfigFile: dir + "/config.json")
        let policy = QuantizationPolicy(quantType: kind, doubleQuant: dq, blocksize: 64)
        let weights = try LlamaWeights(config: config, source: try SafetensorsModel(directory: dir), file: dir, policy: policy)
        let fast = try LlamaModel(config: config, weights: weights, maxContext: 64)
        let exact = try LlamaModel(config: config, weights: weights, maxContext: 64)
        #expect(fast.decodeArithmetic == .int16)
        exact.decodeArithmetic = .float32
        let prompt = try TinyExpected(name).prompt
        let a = try fast.forward(tokens: prompt, startPosition: 0, logits: .last)
        let b = try exact.forward(tokens: prompt, startPosition: 0, logits: .last)
        #expect(a == b)   // prefill is float32 either way
        var next = argmax(a[...]), differs = false
        for step in 0..<6 {
            let x = try fast.forward(tokens: [next], startPosition: prompt.count + step, logits: .last)
            let y = try exact.forward(tokens: [next], startPosition: prompt.count + step, logits: .last)
            let largest = y.map { abs($0) }.max()!
            #expect(maxAbsDiff(x, y) < 1e-2 * largest, "step \(step)")
            differs = differs || x != y
            next = argmax(y[...])
        }
        #expect(differs)
    }

    /// With a 4-bit policy `storage` holds no linear weight; the report counts ≈4.127 bits for NF4+DQ.
    @Test func quantizedWeightsHoldNoFloat32LinearCopy() throws {
        let dir = Fixtures.path("llama/tiny-llama-untied")
        let config = try LlamaConfig(huggingFaceConfigFile: dir + "/config.json")
        let source = try SafetensorsModel(directory: dir)
        let dense = try LlamaWeights(config: config, source: source, file: dir, policy: .none)
        let q = try LlamaWeights(config: config, source: source, file: dir, policy: .nf4)
        let C = config.hiddenSize, I = config.intermediateSize
        let linearPerLayer = config.qDim * C + 2 * config.kvDim * C + C * config.qDim + 3 * I * C
        #expect(dense.storage.count - q.storage.count == config.layerCount * linearPerLayer)
        let r = q.memoryReport
        #expect(r.linear4Bit.parameters == config.layerCount * linearPerLayer)
        #expect(r.linearFloat32.parameters == 0)
        #expect(r.totalParameters == dense.memoryReport.totalParameters)
        #expect(r.totalParameters == dense.storage.count)
        // 4 bits + an 8-bit absmax per 64 + a float32 per 256 blocks = 4.127, plus a float32 offset and a
        // partly filled nested block per tensor, which on these tiny [64..96, 64..96] tensors gives 4.138.
        let expectedBits = Double(8 * q.layers.reduce(0) { s, l in
            s + l.linearWeights.reduce(0) { $0 + QuantizationPolicy.nf4.linearBytes(rows: $1.rows, cols: $1.cols) }
        }) / Double(r.linear4Bit.parameters)
        #expect(r.linear4Bit.bitsPerParameter == expectedBits)
        #expect(r.linear4Bit.bitsPerParameter > 4.127 && r.linear4Bit.bitsPerParameter < 4.15)
        let estimate = BaseMemoryReport.estimate(config: config, separateLMHead: true, policy: .nf4)
        #expect(estimate == r)
    }

    /// A QuantizedTensorSource's stored 4-bit tensors are used as they are (same objects, FP4 bs128),
    /// whatever the policy asks; under `.none` they are dequantized into float32.
    @Test func storedFourBitTensorsAreUsedAsStored() throws {
        let dir = Fixtures.path("llama/tiny-llama-gqa-tied")
        let config = try LlamaConfig(huggingFaceConfigFile: dir + "/config.json")
        let source = PreQuantizedSource(try SafetensorsModel(directory: dir))
        let w = try LlamaWeights(config: config, source: source, file: dir, policy: .nf4)
        let stored = try #require(source.handedOut["model.layers.1.mlp.down_proj.weight"])
        #expect(w.layers[1].wDown.quantizedTensor === stored)
        #expect(w.layers.allSatisfy { $0.linearWeights.allSatisfy { $0.quantizedTensor?.quantType == .fp4 } })
        let asFloat = try LlamaWeights(config: config, source: source, file: dir, policy: .none)
        let again = try #require(source.handedOut["model.layers.1.mlp.down_proj.weight"])
        guard case let .dense(ptr, rows, cols) = asFloat.layers[1].wDown else { Issue.record("not dense"); return }
        #expect(Array(UnsafeBufferPointer(start: ptr, count: rows * cols)) == again.dequantize())
    }
}
