// --adapter: a PEFT adapter merged into the float32 base (W += scaling·B·A) must give the same
// logits as running the base with the LoRA branch (LoRAModel, itself checked against finite
// differences and the inference model); the adapter applied unmerged at inference (LinearLoRA in
// LlamaModel, prefill and KV-cached decode) must give the logits of the merged model over a float32
// base, and of a float32 model holding dequantize(W4) + scaling·B·A over an NF4 base.
import Foundation
import Testing
import _TestSupport
@testable import QLoRA

@Suite struct AdapterMergeTests {
    /// `tag` keeps the tests, which run in parallel, out of each other's folders.
    func tinyFolder(_ tag: String) throws -> String {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("qlora-adapter-merge-\(tag)-\(getpid())")
        try Fixtures.linkTinyLlama2Model(at: folder)
        return folder.path
    }

    func remove(_ paths: String...) {
        for p in paths { try? FileManager.default.removeItem(atPath: p) }
    }

    static let projectionShapes: (LlamaConfig) -> [String: (out: Int, inp: Int)] = { config in
        let C = config.hiddenSize, I = config.intermediateSize
        return ["q_proj": (config.qDim, C), "k_proj": (config.kvDim, C), "v_proj": (config.kvDim, C), "o_proj": (C, config.qDim),
                "gate_proj": (I, C), "up_proj": (I, C), "down_proj": (C, I)]
    }

    /// A seeded random adapter on `modules` (default: all seven projections).
    func randomAdapter(config: LlamaConfig, rank: Int, alpha: Double, modules: [String]? = nil) -> LoRAAdapterWeights {
        var rng = SeededRandom(seed: 11)
        func matrix(_ rows: Int, _ cols: Int) -> LoRAMatrix {
            LoRAMatrix(rows: rows, cols: cols, values: (0..<rows * cols).map { _ in (rng.nextUnitFloat() - 0.5) * 0.2 })
        }
        let shapes = Self.projectionShapes(config)
        let chosen = (modules ?? Array(shapes.keys)).sorted()
        let layers = (0..<config.layerCount).map { _ in
            Dictionary(uniqueKeysWithValues: chosen.map { m in
                (m, LoRAPair(a: matrix(rank, shapes[m]!.inp), b: matrix(shapes[m]!.out, rank)))
            })
        }
        let c = LoRAAdapterConfig(r: rank, loraAlpha: alpha, targetModules: chosen)
        return LoRAAdapterWeights(config: c, layers: layers)
    }

    static let tokens = [1, 384, 94, 76, 81, 86, 87, 96, 288, 278]

    /// Logits [T, V] of `tokens`: the first `prefill` tokens in one forward (`.all`), then one token
    /// at a time through the KV cache (decode), so both paths of the model are exercised.
    func prefillThenDecode(_ model: LlamaModel, prefill: Int) throws -> [Float] {
        model.reset()
        let tokens = Self.tokens
        var logits = try model.forward(tokens: Array(tokens[..<prefill]), startPosition: 0, logits: .all)
        for t in prefill..<tokens.count {
            logits += try model.forward(tokens: [tokens[t]], startPosition: t, logits: .last)
        }
        return logits
    }

    func maxDiff(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count)
        return zip(a, b).map { abs($0 - $1) }.max() ?? .infinity
    }

    @Test func mergedWeightsGiveTheLoRABranchLogits() throws {
        let folder = try tinyFolder("merge")
        let adapterDir = folder + "-adapter"
        defer { remove(folder, adapterDir) }
        let base = try ModelBundle(path: folder, contextLength: 64, quantization: .none)
        let adapter = randomAdapter(config: base.config, rank: 4, alpha: 8)
        try AdapterFile.write(adapter, to: adapterDir)

        let tokens = Self.tokens
        let plain = try base.model.forward(tokens: tokens, startPosition: 0, logits: .all)

        // The LoRA branch on the unmerged base.
        let lora = try LoRAModel(weights: base.model.weights, batchSize: 1, seqLen: tokens.count, rank: 4, alpha: 8)
        var tensors: [(name: String, shape: [Int], values: [Float])] = []
        for (i, modules) in adapter.layers.enumerated() {
            for (m, pair) in modules {
                tensors.append((LoRAAdapterWeights.tensorName(layer: i, module: m, matrix: "A"), [pair.a.rows, pair.a.cols], pair.a.values))
                tensors.append((LoRAAdapterWeights.tensorName(layer: i, module: m, matrix: "B"), [pair.b.rows, pair.b.cols], pair.b.values))
            }
        }
        try lora.loadAdapterTensors(tensors)
        _ = try lora.forward(inputIds: tokens, labels: tokens)
        let branch = Array(lora.lastLogits)

        let merged = try ModelBundle(path: folder, contextLength: 64, quantization: .none)
        try merged.mergeAdapter(directory: adapterDir)
        let mergedLogits = try merged.model.forward(tokens: tokens, startPosition: 0, logits: .all)

        let drift = maxDiff(branch, mergedLogits)
        let change = maxDiff(plain, mergedLogits)
        #expect(drift < 1e-4, "max |Δlogit| between merged weights and the LoRA branch: \(drift)")
        #expect(change > 1e-2, "the adapter should change the logits (max change \(change))")
    }

    @Test func unmergedOverAFloat32BaseGivesTheMergedLogits() throws {
        let folder = try tinyFolder("unmerged32")
        let adapterDir = folder + "-adapter"
        defer { remove(folder, adapterDir) }
        let merged = try ModelBundle(path: folder, contextLength: 64, quantization: .none)
        try AdapterFile.write(randomAdapter(config: merged.config, rank: 4, alpha: 8), to: adapterDir)
        let plain = try prefillThenDecode(merged.model, prefill: 10)
        let (_, how) = try merged.applyAdapter(directory: adapterDir, merge: true)
        #expect(how == .merged)
        #expect(merged.model.lora.isEmpty)
        let reference = try prefillThenDecode(merged.model, prefill: 10)

        let unmerged = try ModelBundle(path: folder, contextLength: 64, quantization: .none)
        #expect(unmerged.model.weights.hasFusedDenseLayout)          // decode takes the fused q|k|v, gate|up GEMVs
        let (_, how2) = try unmerged.applyAdapter(directory: adapterDir, merge: false)
        #expect(how2 == .unmerged)
        // 2 layers × rank 4 × float32 × (in + out) summed over q, k, v, o (64 + 64) and gate, up, down (64 + 96)
        #expect(unmerged.model.loraBytes == 2 * 4 * 4 * (4 * 128 + 3 * 160))
        for prefill in [10, 4, 1] {   // all prefill; prefill + 6 decode steps; all decode
            let logits = try prefillThenDecode(unmerged.model, prefill: prefill)
            let drift = maxDiff(logits, reference)
            #expect(drift < 1e-4, "prefill \(prefill): max |Δlogit| unmerged vs merged \(drift)")
        }
        #expect(maxDiff(plain, reference) > 1e-2, "the adapter should change the logits")

        // Detaching gives the base back.
        unmerged.model.detachLoRA()
        let base = try prefillThenDecode(unmerged.model, prefill: 4)
        #expect(maxDiff(base, plain) < 1e-5)
    }

    /// A float32 model whose linear weights are dequantize(W4) + scaling·B·A of `quantized`'s 4-bit
    /// weights, with its embeddings, norms and head copied.
    func mergedIntoDequantized(_ quantized: LlamaModel, adapter: LoRAAdapterWeights) throws -> LlamaModel {
        let q = quantized.weights, config = q.config
        let C = config.hiddenSize
        let w = LlamaWeights(config: config, separateLMHead: q.hasSeparateLMHead)
        q.embedding.dequantizeAll(into: try #require(w.embedding.densePointer))
        w.finalNorm.update(from: q.finalNorm, count: C)
        if q.hasSeparateLMHead { q.lmHead.dequantizeAll(into: try #require(w.lmHead.densePointer)) }
        let scale = Float(adapter.config.scaling)
        let modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        for (l, layer) in q.layers.enumerated() {
            let dst = w.layers[l]
            dst.attentionNorm.update(from: layer.attentionNorm, count: C)
            dst.mlpNorm.update(from: layer.mlpNorm, count: C)
            #expect(layer.bq == nil && layer.bo == nil && layer.bGate == nil)   // the tiny model has no biases
            for (i, (src, target)) in zip(layer.linearWeights, dst.linearWeights).enumerated() {
                let q4 = try #require(src.quantizedTensor, "layer \(l) \(modules[i]) should be 4-bit")
                guard case let .dense(p, rows, cols) = target else { Issue.record("not dense"); continue }
                var values = q4.dequantize()
                if let pair = adapter.layers[l][modules[i]] {
                    for o in 0..<rows {
                        for c in 0..<cols {
                            var s: Float = 0
                            for r in 0..<pair.a.rows { s += pair.b.values[o * pair.b.cols + r] * pair.a.values[r * cols + c] }
                            values[o * cols + c] += scale * s
                        }
                    }
                }
                p.update(from: values, count: rows * cols)
            }
        }
        return try LlamaModel(config: config, weights: w, maxContext: quantized.maxContext)
    }

    @Test func unmergedOverAnNF4BaseGivesMergingIntoTheDequantizedWeights() throws {
        let folder = try tinyFolder("unmerged4")
        let adapterDir = folder + "-adapter"
        defer { remove(folder, adapterDir) }
        let bundle = try ModelBundle(path: folder, contextLength: 64, quantization: .nf4)
        bundle.model.decodeArithmetic = .float32   // exact codes, to compare with the float32 merge
        let adapter = randomAdapter(config: bundle.config, rank: 3, alpha: 6, modules: ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
        try AdapterFile.write(adapter, to: adapterDir)
        let plain = try prefillThenDecode(bundle.model, prefill: 10)
        let bytesBefore = bundle.model.weights.memoryReport
        let (_, how) = try bundle.applyAdapter(directory: adapterDir, merge: true)
        #expect(how == .unmerged)                                      // a 4-bit base is never merged
        #expect(bundle.model.weights.memoryReport == bytesBefore)      // no float32 copy of the base
        #expect(bundle.model.weights.memoryReport.linearFloat32.parameters == 0)

        let reference = try mergedIntoDequantized(bundle.model, adapter: adapter)
        let expected = try prefillThenDecode(reference, prefill: 10)
        #expect(maxDiff(plain, expected) > 1e-2, "the adapter should change the logits")
        for prefill in [10, 4, 1] {
            let logits = try prefillThenDecode(bundle.model, prefill: prefill)
            let drift = maxDiff(logits, expected)
            #expect(drift < 1e-4, "prefill \(prefill): max |Δlogit| NF4 + unmerged LoRA vs merged into dequantized NF4: \(drift)")
        }
    }

    @Test func mergingIntoAFourBitBaseIsRefusedWithAClearMessage() throws {
        let folder = try tinyFolder("nf4")
        let adapterDir = folder + "-adapter4"
        defer { remove(folder, adapterDir) }
        let bundle = try ModelBundle(path: folder, contextLength: 64, quantization: .nf4)
        try AdapterFile.write(randomAdapter(config: bundle.config, rank: 2, alpha: 4), to: adapterDir)
        do {
            try bundle.mergeAdapter(directory: adapterDir)
            Issue.record("merging into NF4 weights should throw")
        } catch let e as AdapterError {
            #expect("\(e)".contains("model.layers.0.mlp.down_proj.weight"), "\(e)")
            #expect("\(e)".contains(adapterDir))
        }
    }

    /// Writes `adapter` and expects attaching it to `bundle` to throw an error whose text holds `needles`.
    func expectRefused(_ adapter: LoRAAdapterWeights, by bundle: ModelBundle, at dir: String, naming needles: [String]) throws {
        try AdapterFile.write(adapter, to: dir)
        for merge in [false, true] {
            do {
                _ = try bundle.applyAdapter(directory: dir, merge: merge)
                Issue.record("adapter should be refused (merge \(merge)); expected an error naming \(needles)")
            } catch {
                let text = "\(error)"
                for n in needles { #expect(text.contains(n), "error \(text.debugDescription) should name \(n.debugDescription)") }
            }
        }
        #expect(bundle.model.lora.isEmpty)
    }

    @Test func badAdaptersAreRefusedWithClearErrors() throws {
        let folder = try tinyFolder("bad")
        let dir = folder + "-bad-adapter"
        defer { remove(folder, dir) }
        let bundle = try ModelBundle(path: folder, contextLength: 64, quantization: .nf4)
        let plain = try bundle.model.forward(tokens: Self.tokens, startPosition: 0, logits: .all)
        let config = bundle.config
        let good = randomAdapter(config: config, rank: 2, alpha: 4, modules: ["q_proj", "down_proj"])

        // One layer too few (an adapter made for another model).
        var short = good
        short.layers.removeLast()
        try expectRefused(short, by: bundle, at: dir, naming: [dir, "1 layers", "has 2"])

        // lora_A with the wrong in-features.
        var wrongA = good
        wrongA.layers[1]["down_proj"]!.a = LoRAMatrix(rows: 2, cols: 64, values: [Float](repeating: 0.01, count: 128))
        try expectRefused(wrongA, by: bundle, at: dir,
                          naming: ["base_model.model.model.layers.1.mlp.down_proj.lora_A.weight", "[2, 64]", "[2, 96]"])

        // lora_B with the wrong out-features.
        var wrongB = good
        wrongB.layers[0]["q_proj"]!.b = LoRAMatrix(rows: 32, cols: 2, values: [Float](repeating: 0.01, count: 64))
        try expectRefused(wrongB, by: bundle, at: dir,
                          naming: ["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", "[32, 2]", "[64, 2]"])

        // A NaN.
        var nan = good
        nan.layers[0]["q_proj"]!.b.values[5] = .nan
        try expectRefused(nan, by: bundle, at: dir, naming: ["layers.0.self_attn.q_proj.lora_B.weight", "nan", "[2, 1]"])

        // r in adapter_config.json disagrees with the tensors.
        var wrongR = good
        wrongR.config.r = 3
        try expectRefused(wrongR, by: bundle, at: dir, naming: ["lora_A", "r = 3"])

        // A missing folder names the file.
        #expect(throws: (any Error).self) { try bundle.attachAdapter(directory: dir + "-missing") }

        // Nothing above changed the model.
        let after = try bundle.model.forward(tokens: Self.tokens, startPosition: 0, logits: .all)
        #expect(after == plain)
    }
}
