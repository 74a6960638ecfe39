// Fixtures: scripts/make_golden_step_fixtures.py (Tests/Fixtures/golden: base/ is llama/tiny-llama-gqa-tied
// quantized by transformers + bitsandbytes 0.50.2 to NF4 with double quant and saved by save_pretrained;
// adapter/ is a PEFT 0.21.2 LoRA (r 4, alpha 8, 7 targets, seeded non-zero B) saved by save_pretrained;
// expected.safetensors holds PyTorch + PEFT + bitsandbytes logits, loss, every LoRA gradient, and the LoRA
// tensors after each of 5 torch.optim.AdamW / bitsandbytes AdamW8bit steps with clip_grad_norm_(0.3)).
// The golden step: the same 4-bit weights (read from the file, not requantized), the same adapter and the
// same batch (a packed row with a position reset, a right-padded row, −100 labels) must give the same
// numbers in LoRAModel + AdamW. The script picks lora_B's seed so that no element of the first clipped
// gradient lies within 5·eps of zero: Adam's first update lr·g/(|g| + eps) has derivative lr/eps = 1e6
// there, which would turn float32 summation noise into 1e-4 parameter differences on either side.
import Foundation
import Testing
import _TestSupport
import QLoRA

private let goldenDirectory = Fixtures.path("golden")

/// The reference file and the batch as LoRAModel takes it.
private struct Golden {
    let file: SafetensorsFile
    let ids: [Int]
    let labels: [Int]
    let segmentStarts: [Int]
    let batchSize: Int
    let seqLen: Int

    init() throws {
        file = try SafetensorsFile(path: goldenDirectory + "/expected.safetensors")
        let shape = try file.shape(of: "batch.input_ids")
        batchSize = shape[0]; seqLen = shape[1]
        ids = try Golden.int64s(file, "batch.input_ids")
        labels = try Golden.int64s(file, "batch.labels")
        let positions = try Golden.int64s(file, "batch.position_ids")
        // transformers' packed-sequence positions → our per-token segment start: t − position(t)
        segmentStarts = positions.enumerated().map { i, p in i % shape[1] - p }
    }

    static func int64s(_ f: SafetensorsFile, _ name: String) throws -> [Int] {
        let info = try f.info(name)
        guard info.dtype == .i64 else { throw ModelFormatError.invalidValue(file: f.path, field: name, value: "\(info.dtype)", expected: "I64") }
        let raw = try f.rawBytes(name)
        return (0..<info.elementCount).map { Int(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))) }
    }

    func floats(_ name: String) throws -> [Float] {
        var v = [Float](repeating: 0, count: try file.info(name).elementCount)
        try v.withUnsafeMutableBufferPointer { try file.readFloat32(name, into: $0) }
        return v
    }

    /// Trained targets: shifted labels ≠ −100 inside a row and a segment (what PyTorch's mean divides by).
    var trainedTokens: Int {
        var n = 0
        for i in 0..<(batchSize * seqLen) where i % seqLen + 1 < seqLen {
            if segmentStarts[i + 1] == segmentStarts[i] && labels[i + 1] != -100 { n += 1 }
        }
        return n
    }
}

/// The NF4 base from the bitsandbytes folder (the same calls ModelBundle makes for such a folder) and
/// the PEFT adapter loaded through AdapterFile.
private func goldenModel(policy: QuantizationPolicy, checkpointing: Bool, golden: Golden) throws -> LoRAModel {
    let base = goldenDirectory + "/base"
    #expect(BitsAndBytesModel.isBitsAndBytes4Bit(directory: base))
    let config = try LlamaConfig(huggingFaceConfigFile: base + "/config.json")
    let weights = try LlamaWeights(config: config, source: try BitsAndBytesModel(directory: base), file: base, policy: policy)
    if policy.isQuantized {
        #expect(weights.layers.allSatisfy { $0.linearWeights.allSatisfy { $0.quantizedTensor != nil } })
    }
    let adapter = try AdapterFile.read(directory: goldenDirectory + "/adapter")
    #expect(adapter.config.r == 4 && adapter.config.loraAlpha == 8 && !adapter.config.useRSLoRA)
    let targets = try adapter.config.targetModules.map { name -> LoRATarget in
        guard let t = LoRATarget(rawValue: name) else { throw LlamaError.invalidInput(field: "target", value: name, expected: "a projection") }
        return t
    }
    #expect(Set(targets) == Set(LoRATarget.allCases))
    let model = try LoRAModel(weights: weights, batchSize: golden.batchSize, seqLen: golden.seqLen, rank: adapter.config.r,
                              alpha: Float(adapter.config.loraAlpha), targets: targets,
                              dropout: Float(adapter.config.loraDropout), useRSLoRA: adapter.config.useRSLoRA, seed: 1,
                              gradientCheckpointing: checkpointing)
    var tensors: [(name: String, shape: [Int], values: [Float])] = []
    for (l, layer) in adapter.layers.enumerated() {
        for (module, pair) in layer {
            tensors.append((LoRAAdapterWeights.tensorName(layer: l, module: module, matrix: "A"), [pair.a.rows, pair.a.cols], pair.a.values))
            tensors.append((LoRAAdapterWeights.tensorName(layer: l, module: module, matrix: "B"), [pair.b.rows, pair.b.cols], pair.b.values))
        }
    }
    try model.loadAdapterTensors(tensors, file: goldenDirectory + "/adapter")
    return model
}

private func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Float {
    zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
}

/// ‖a − b‖ / ‖b‖ in double.
private func relativeFrobenius(_ a: [Float], _ b: [Float]) -> Double {
    var e = 0.0, r = 0.0
    for (x, y) in zip(a, b) { e += Double(x - y) * Double(x - y); r += Double(y) * Double(y) }
    return (e / max(r, 1e-300)).squareRoot()
}

@Suite struct GoldenStepTests {
    /// Logits, loss and every LoRA gradient of one forward/backward equal PyTorch + PEFT + bitsandbytes:
    /// with the stored 4-bit weights (NF4 kernels; with and without gradient checkpointing) and with
    /// the same weights dequantized to float32.
    @Test(arguments: [("nf4", true), ("nf4", false), ("dequantized", true)])
    func forwardAndGradientsMatchPEFT(_ base: String, _ checkpointing: Bool) throws {
        let golden = try Golden()
        let policy: QuantizationPolicy = base == "nf4" ? .nf4 : .none
        let model = try goldenModel(policy: policy, checkpointing: checkpointing, golden: golden)
        let tokens = golden.trainedTokens
        #expect(tokens == 14)

        // forward: logits of every position (pads included: no attention mask on either side)
        let f = try model.forward(inputIds: golden.ids, labels: golden.labels, segmentStarts: golden.segmentStarts)
        #expect(f.tokenCount == tokens)
        let logits = Array(model.lastLogits)
        let refLogits = try golden.floats("logits")
        #expect(logits.count == refLogits.count)
        let logitErr = maxAbsDifference(logits, refLogits)
        #expect(logitErr <= 1e-4, "max |Δlogit| \(logitErr)")
        let refLoss = Double(try golden.floats("adamw.losses")[0])
        let loss = f.lossSum / Double(f.tokenCount)
        #expect(abs(loss - refLoss) <= 1e-5 * refLoss, "loss \(loss) vs PyTorch \(refLoss)")

        // backward of the mean loss
        model.zeroGradients()
        let r = try model.forwardBackward(inputIds: golden.ids, labels: golden.labels, segmentStarts: golden.segmentStarts,
                                          lossScale: 1 / Float(tokens))
        #expect(abs(r.lossSum - f.lossSum) <= 1e-6 * f.lossSum)  // same loss (the fused CE may sum in another order)
        let names = model.adapterTensors().map(\.name)
        let grads = model.gradients.map { Array($0) }
        #expect(names.count == 2 * 7 * 2)
        var worstRel = 0.0, worstAbs: Float = 0, zeroA = 0
        for (name, g) in zip(names, grads) {
            let want = try golden.floats("grad.\(name)")
            #expect(g.count == want.count, "\(name)")
            let rel = relativeFrobenius(g, want), abs = maxAbsDifference(g, want)
            worstRel = max(worstRel, rel); worstAbs = max(worstAbs, abs)
            #expect(rel <= 1e-4, "\(name): relative Frobenius error \(rel), max |Δ| \(abs)")
            if name.contains("lora_A"), want.allSatisfy({ $0 == 0 }) { zeroA += 1 }
        }
        #expect(zeroA == 0)  // B ≠ 0, so every A receives a gradient: the comparison is not vacuous
        print("golden \(base) checkpointing=\(checkpointing): max |Δlogit| \(logitErr), loss \(loss) vs \(refLoss) "
              + "(rel \(abs(loss - refLoss) / refLoss)), gradients: worst relative Frobenius \(worstRel), max |Δ| \(worstAbs)")
    }

    /// Five steps on the same batch (zero gradients, forward/backward of the mean loss, global-norm
    /// clipping at 0.3, AdamW lr 1e-2, wd 0.01): the loss before each step, the gradient norm and every
    /// LoRA tensor after each step equal PyTorch's torch.optim.AdamW (32-bit states) or bitsandbytes'
    /// AdamW8bit (8-bit blockwise states for tensors of ≥ 256 elements).
    @Test(arguments: [32, 8])
    func fiveAdamWStepsMatchPyTorch(_ stateBits: Int) throws {
        let golden = try Golden()
        let model = try goldenModel(policy: .nf4, checkpointing: true, golden: golden)
        let prefix = stateBits == 32 ? "adamw" : "adamw8bit"
        let config = AdamWConfig(beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01, maxGradNorm: 0.3,
                                 stateBits: stateBits, min8BitSize: 256)
        let optimizer = try AdamW(sizes: model.parameters.map(\.count), config: config)
        let names = model.adapterTensors().map(\.name)
        let refLosses = try golden.floats("\(prefix).losses"), refNorms = try golden.floats("\(prefix).gnorms")
        let tokens = golden.trainedTokens
        var report: [String] = []
        for s in 0..<5 {
            model.zeroGradients()
            let r = try model.forwardBackward(inputIds: golden.ids, labels: golden.labels, segmentStarts: golden.segmentStarts,
                                              lossScale: 1 / Float(tokens))
            let loss = r.lossSum / Double(r.tokenCount)
            let lossRel = abs(loss - Double(refLosses[s])) / Double(refLosses[s])
            #expect(lossRel <= 1e-5, "\(prefix) step \(s + 1): loss \(loss) vs \(refLosses[s])")
            let norm = try optimizer.step(parameters: model.parameters, gradients: model.gradients, lr: 1e-2)
            let normRel = abs(norm - Double(refNorms[s])) / Double(refNorms[s])
            #expect(normRel <= 1e-5, "\(prefix) step \(s + 1): gradient norm \(norm) vs \(refNorms[s])")
            // 32-bit: every element within 5e-6 (observed ≤ 1.9e-6: float32 noise of the gradients, ~1e-6
            // relative, passed through m/√v). 8-bit: the same, except that a state value lying within that
            // noise of a midpoint between two codes may round to the neighbouring code on one side (bitsandbytes'
            // quantization rounds to the nearest code, as ours): such an element's update then differs by up to
            // one code step of m or v (≤ lr/8 per step); at most 0.1% of elements may do so.
            var worst: Float = 0, worstRel = 0.0, beyond = 0, total = 0
            for (name, p) in zip(names, model.parameters) {
                let want = try golden.floats("\(prefix).step\(s + 1).\(name)")
                let have = Array(p)
                let d = maxAbsDifference(have, want)
                worst = max(worst, d); worstRel = max(worstRel, relativeFrobenius(have, want))
                beyond += zip(have, want).filter { abs($0 - $1) > 5e-6 }.count
                total += have.count
                if stateBits == 32 { #expect(d <= 5e-6, "\(prefix) step \(s + 1) \(name): max |Δ| \(d)") }
                else { #expect(d <= max(5e-6, 1.25e-3 * Float(s)), "\(prefix) step \(s + 1) \(name): max |Δ| \(d)") }
            }
            if stateBits == 8 { #expect(beyond * 1000 <= total, "\(prefix) step \(s + 1): \(beyond) of \(total) elements beyond 5e-6") }
            report.append("step \(s + 1): loss rel \(lossRel), norm rel \(normRel), params max |Δ| \(worst) (\(beyond) beyond 5e-6), worst relative Frobenius \(worstRel)")
        }
        print("golden \(prefix):\n  " + report.joined(separator: "\n  "))
    }
}
