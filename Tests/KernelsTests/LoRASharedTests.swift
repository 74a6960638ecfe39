import Testing
import Kernels

/// `loraForwardShared` / `loraBackwardShared` (one down-projection product for adapters that read the
/// same input) against the per-adapter `loraForward` / `loraBackward`, which BackwardTests checks
/// against finite differences. Same sums in another order: equal to float rounding.
@Suite struct LoRASharedTests {
    typealias G = GradCheck

    static func maxRelative(_ a: [Float], _ b: [Float]) -> Float {
        let s = max(b.map { abs($0) }.max() ?? 0, 1e-12)
        return zip(a, b).map { abs($0 - $1) }.max()! / s
    }

    @Test(arguments: [(N: 1, C: 8, R: 2, outs: [8, 4, 4]), (N: 37, C: 64, R: 16, outs: [64, 16, 16]),
                      (N: 70, C: 24, R: 4, outs: [96, 96]), (N: 5, C: 576, R: 16, outs: [576, 192, 192])])
    func sharedMatchesPerAdapter(shape: (N: Int, C: Int, R: Int, outs: [Int])) {
        let (N, C, R, outs) = shape
        let g = outs.count, scale: Float = 2
        let x = G.float(G.values(N * C, seed: 1))
        let As = (0..<g).map { G.float(G.values(R * C, seed: 10 + UInt64($0))) }
        let Bs = (0..<g).map { G.float(G.values(outs[$0] * R, seed: 20 + UInt64($0))) }
        let base = (0..<g).map { G.float(G.values(N * outs[$0], seed: 30 + UInt64($0))) }
        let dYs = (0..<g).map { G.float(G.values(N * outs[$0], seed: 40 + UInt64($0))) }
        let dA0 = (0..<g).map { G.float(G.values(R * C, seed: 50 + UInt64($0))) }
        let dB0 = (0..<g).map { G.float(G.values(outs[$0] * R, seed: 60 + UInt64($0))) }
        let dInp0 = G.float(G.values(N * C, seed: 70))

        // per adapter
        var outRef = base, dARef = dA0, dBRef = dB0, dInpRef = dInp0
        var scratch = [Float](repeating: 0, count: loraBackwardScratchCount(rows: N, inChannels: C, rank: R, dropout: false))
        for i in 0..<g {
            var h = [Float](repeating: 0, count: N * R)
            loraForward(out: &outRef[i], h: &h, maskedInput: nil, inp: x, mask: nil, dropout: 0, a: As[i], b: Bs[i],
                        scale: scale, rows: N, inChannels: C, outChannels: outs[i], rank: R)
            loraBackward(dInp: &dInpRef, dA: &dARef[i], dB: &dBRef[i], dOut: dYs[i], inp: x, mask: nil, dropout: 0,
                         h: h, a: As[i], b: Bs[i], scale: scale, scratch: &scratch, rows: N, inChannels: C,
                         outChannels: outs[i], rank: R)
        }

        // shared
        var out = base, dA = dA0, dB = dB0, dInp = dInp0
        var h = [Float](repeating: .nan, count: N * g * R)
        var shared = [Float](repeating: .nan, count: loraSharedScratchCount(rows: N, inChannels: C, rank: R, parts: g))
        let outPtrs = (0..<g).map { i in UnsafeMutablePointer<Float>.allocate(capacity: N * outs[i]) }
        let dAPtrs = (0..<g).map { i in UnsafeMutablePointer<Float>.allocate(capacity: R * C) }
        let dBPtrs = (0..<g).map { i in UnsafeMutablePointer<Float>.allocate(capacity: outs[i] * R) }
        defer { for p in outPtrs + dAPtrs + dBPtrs { p.deallocate() } }
        for i in 0..<g {
            outPtrs[i].initialize(from: out[i], count: out[i].count)
            dAPtrs[i].initialize(from: dA[i], count: dA[i].count)
            dBPtrs[i].initialize(from: dB[i], count: dB[i].count)
        }
        As.withUnsafeBufferPointers { a in Bs.withUnsafeBufferPointers { b in dYs.withUnsafeBufferPointers { dy in
            let parts = (0..<g).map { LoRASharedPart(a: a[$0], b: b[$0], dA: dAPtrs[$0], dB: dBPtrs[$0], outChannels: outs[$0]) }
            loraForwardShared(outs: outPtrs, h: &h, inp: x, parts: parts, scale: scale, scratch: &shared, rows: N,
                              inChannels: C, rank: R)
            loraBackwardShared(dInp: &dInp, dOuts: dy, inp: x, h: h, parts: parts, scale: scale, scratch: &shared,
                               rows: N, inChannels: C, rank: R)
        } } }
        for i in 0..<g {
            out[i] = Array(UnsafeBufferPointer(start: outPtrs[i], count: N * outs[i]))
            dA[i] = Array(UnsafeBufferPointer(start: dAPtrs[i], count: R * C))
            dB[i] = Array(UnsafeBufferPointer(start: dBPtrs[i], count: outs[i] * R))
            #expect(Self.maxRelative(out[i], outRef[i]) < 1e-5, "out \(i)")
            #expect(Self.maxRelative(dA[i], dARef[i]) < 1e-5, "dA \(i)")
            #expect(Self.maxRelative(dB[i], dBRef[i]) < 1e-5, "dB \(i)")
            #expect(out[i] != base[i] && dA[i] != dA0[i] && dB[i] != dB0[i])
        }
        #expect(Self.maxRelative(dInp, dInpRef) < 1e-5)
        #expect(dInp != dInp0)
    }
}

private extension Array where Element == [Float] {
    /// Calls body with a pointer to each inner array's storage (valid only inside body).
    func withUnsafeBufferPointers<R>(_ body: ([UnsafePointer<Float>]) -> R) -> R {
        let copies = map { inner -> UnsafeMutablePointer<Float> in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: Swift.max(inner.count, 1))
            p.initialize(from: inner, count: inner.count)
            return p
        }
        defer { for p in copies { p.deallocate() } }
        return body(copies.map { UnsafePointer($0) })
    }
}
