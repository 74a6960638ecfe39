// --adapter: a PEFT adapter merged into the float32 base (W += scaling·B·A) must give the same
// logits as running the base with the LoRA branch (LoRAModel, itself checked against finite
// differences and the inference model).
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

    /// A seeded random adapter on all seven projections.
    func randomAdapter(config: LlamaConfig, rank: Int, alpha: Double) -> LoRAAdapterWeights {
        var rng = SeededRandom(seed: 11)
        func matrix(_ rows: Int, _ cols: Int) -> LoRAMatrix {
            LoRAMatrix(rows: rows, cols: cols, values: (0..<rows * cols).map { _ in (rng.nextUnitFloat() - 0.5) * 0.2 })
        }
        let C = config.hiddenSize, I = config.intermediateSize
        let shapes: [String: (out: Int, inp: Int)] = [
            "q_proj": (config.qDim, C), "k_proj": (config.kvDim, C), "v_proj": (config.kvDim, C), "o_proj": (C, config.qDim),
            "gate_proj": (I, C), "up_proj": (I, C), "down_proj": (C, I),
        ]
        let layers = (0..<config.layerCount).map { _ in
            Dictionary(uniqueKeysWithValues: shapes.keys.sorted().map { m in
                (m, LoRAPair(a: matrix(rank, shapes[m]!.inp), b: matrix(shapes[m]!.out, rank)))
            })
        }
        let c = LoRAAdapterConfig(r: rank, loraAlpha: alpha, targetModules: shapes.keys.sorted())
        return LoRAAdapterWeights(config: c, layers: layers)
    }

    @Test func mergedWeightsGiveTheLoRABranchLogits() throws {
        let folder = try tinyFolder("merge")
        let adapterDir = folder + "-adapter"
        defer { try? FileManager.default.removeItem(atPath: folder); try? FileManager.default.removeItem(atPath: adapterDir) }
        let base = try ModelBundle(path: folder, contextLength: 64, quantization: .none)
        let adapter = randomAdapter(config: base.config, rank: 4, alpha: 8)
        try AdapterFile.write(adapter, to: adapterDir)

        let tokens = [1, 384, 94, 76, 81, 86, 87, 96, 288, 278]
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

        let drift = zip(branch, mergedLogits).map { abs($0 - $1) }.max() ?? .infinity
        let change = zip(plain, mergedLogits).map { abs($0 - $1) }.max() ?? 0
        #expect(drift < 1e-4, "max |Δlogit| between merged weights and the LoRA branch: \(drift)")
        #expect(change > 1e-2, "the adapter should change the logits (max change \(change))")
    }

    @Test func aFourBitBaseIsRefusedWithAClearMessage() throws {
        let folder = try tinyFolder("nf4")
        let adapterDir = folder + "-adapter4"
        defer { try? FileManager.default.removeItem(atPath: folder); try? FileManager.default.removeItem(atPath: adapterDir) }
        let bundle = try ModelBundle(path: folder, contextLength: 64, quantization: .nf4)
        try AdapterFile.write(randomAdapter(config: bundle.config, rank: 2, alpha: 4), to: adapterDir)
        #expect(throws: AdapterError.self) { try bundle.mergeAdapter(directory: adapterDir) }
    }
}
