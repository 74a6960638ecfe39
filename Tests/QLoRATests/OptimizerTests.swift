// Fixtures: scripts/make_training_fixtures.py (optimizer.safetensors: torch.optim.AdamW, clip_grad_norm_,
// bitsandbytes 0.50.2 AdamW / AdamW8bit / PagedAdamW run on CPU, 5 steps on seeded tensors).
import Foundation
import Testing
import _TestSupport
@testable import QLoRA

@Suite struct OptimizerTests {
    static let file = Fixtures.path("training/optimizer.safetensors")
    static let lr = 1e-2, wd = 0.1

    func tensor(_ f: SafetensorsFile, _ name: String) throws -> [Float] {
        var v = [Float](repeating: 0, count: try f.info(name).elementCount)
        try v.withUnsafeMutableBufferPointer { try f.readFloat32(name, into: $0) }
        return v
    }

    /// Runs 5 steps and compares the parameters after each with the fixture `prefix`.
    func run(_ prefix: String, config: AdamWConfig, tolerance: Float, maxMismatchFraction: Double = 0) throws -> AdamW {
        let f = try SafetensorsFile(path: Self.file)
        var params = [try tensor(f, "small.p0"), try tensor(f, "big.p0")]
        let opt = try AdamW(sizes: params.map(\.count), config: config)
        for s in 0..<5 {
            var grads = [try tensor(f, "small.grad\(s)"), try tensor(f, "big.grad\(s)")]
            let norm = try opt.step(parameters: &params, gradients: &grads, lr: Self.lr)
            if config.maxGradNorm != nil {
                let expected = try tensor(f, "\(prefix).gnorm\(s)")[0]
                #expect(abs(Float(norm) - expected) <= 1e-5 * expected, "step \(s) norm \(norm) vs \(expected)")
            }
            for (k, name) in ["small", "big"].enumerated() {
                let want = try tensor(f, "\(prefix).\(name).p\(s + 1)")
                var worst: Float = 0, bad = 0
                for i in 0..<want.count {
                    let d = abs(params[k][i] - want[i])
                    worst = max(worst, d)
                    if d > tolerance { bad += 1 }
                }
                #expect(Double(bad) <= maxMismatchFraction * Double(want.count), "\(prefix) \(name) step \(s + 1): \(bad) beyond \(tolerance), worst \(worst)")
            }
        }
        return opt
    }

    @Test func adamWMatchesTorch() throws {
        _ = try run("torch", config: AdamWConfig(weightDecay: Self.wd, maxGradNorm: nil), tolerance: 2e-6)
    }

    @Test func clippingThenAdamWMatchesTorchClipGradNorm() throws {
        _ = try run("torchclip", config: AdamWConfig(weightDecay: Self.wd, maxGradNorm: 0.3), tolerance: 2e-6)
    }

    @Test func adamW32MatchesBitsandbytes() throws {
        _ = try run("bnb32", config: AdamWConfig(weightDecay: Self.wd, maxGradNorm: nil), tolerance: 1e-6)
    }

    @Test func pagedAdamWMatchesBitsandbytesPagedAndFreesItsFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("qlora-paged-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let opt = try run("paged", config: AdamWConfig(weightDecay: Self.wd, maxGradNorm: nil, paged: true, pagedDirectory: dir), tolerance: 1e-6)
        #expect(opt.store.mapped)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty)  // unlinked at once
        #expect(opt.stateBytes >= 8 * (37 + 4500))
    }

    @Test func adamW8bitMatchesBitsandbytesAdamW8bit() throws {
        // Code flips by one ulp-level difference are possible; almost all params must agree tightly.
        let opt = try run("bnb8", config: AdamWConfig(weightDecay: Self.wd, maxGradNorm: nil, stateBits: 8), tolerance: 1e-6,
                          maxMismatchFraction: 0)
        let f = try SafetensorsFile(path: Self.file)
        let st = opt.state()
        #expect(st.parameters[0].m != nil && st.parameters[0].codes1 == nil)  // 37 < 4096 → 32-bit
        let big = st.parameters[1]
        let absmax1 = try tensor(f, "bnb8.big.absmax1"), absmax2 = try tensor(f, "bnb8.big.absmax2")
        #expect(big.absmax1!.count == 18 && absmax1.count == 18)
        for b in 0..<18 {
            #expect(abs(big.absmax1![b] - absmax1[b]) <= 1e-6 * absmax1[b])
            #expect(abs(big.absmax2![b] - absmax2[b]) <= 1e-6 * absmax2[b])
        }
        let raw1 = try f.rawBytes("bnb8.big.state1"), raw2 = try f.rawBytes("bnb8.big.state2")
        var diff = 0
        for i in 0..<4500 where big.codes1![i] != raw1[i] || big.codes2![i] != raw2[i] { diff += 1 }
        #expect(diff <= 0, "\(diff) of 4500 state codes differ")
        // The maps are bitsandbytes' qmap1 / qmap2.
        #expect(try tensor(f, "bnb8.qmap1") == Codebooks.dynamicMap(signed: true))
        #expect(try tensor(f, "bnb8.qmap2") == Codebooks.dynamicMap(signed: false))
    }

    @Test func stateSaveRestoreContinuesIdentically() throws {
        for config in [AdamWConfig(weightDecay: 0.1, stateBits: 32), AdamWConfig(weightDecay: 0.1, stateBits: 8),
                       AdamWConfig(weightDecay: 0.1, stateBits: 8, paged: true)] {
            var rng = SeededRandom(seed: 5)
            func randoms(_ n: Int) -> [Float] { (0..<n).map { _ in rng.nextUnitFloat() - 0.5 } }
            let sizes = [100, 5000]
            var p = sizes.map { randoms($0) }
            let gradsSeq = (0..<6).map { _ in sizes.map { randoms($0) } }
            let a = try AdamW(sizes: sizes, config: config)
            for s in 0..<3 { var g = gradsSeq[s]; try a.step(parameters: &p, gradients: &g, lr: 1e-3) }
            let saved = a.state()
            let data = try JSONEncoder().encode(saved)
            let b = try AdamW(sizes: sizes, config: config)
            try b.restore(try JSONDecoder().decode(AdamWState.self, from: data))
            var pa = p, pb = p
            for s in 3..<6 {
                var g1 = gradsSeq[s], g2 = gradsSeq[s]
                try a.step(parameters: &pa, gradients: &g1, lr: 1e-3)
                try b.step(parameters: &pb, gradients: &g2, lr: 1e-3)
            }
            #expect(pa == pb)
            #expect(a.state() == b.state())
            #expect(b.step == 6)
        }
    }

    @Test func mismatchedSizesThrow() throws {
        let a = try AdamW(sizes: [4], config: AdamWConfig())
        var p: [[Float]] = [[1, 2, 3]], g: [[Float]] = [[1, 2, 3]]
        #expect(throws: OptimizerError.self) { try a.step(parameters: &p, gradients: &g, lr: 1e-3) }
        #expect(throws: OptimizerError.self) { try a.restore(AdamWState(step: 1, parameters: [])) }
    }
}
