// NF4Gemm (own sgemm decoding 4-bit W into its packed panels, _CKernels/nf4gemm.c) against a
// double-precision naive matmul over the weight dequantized by qlora_nf4_dequantize, for the AVX2 and
// the forced-portable bodies; plus bit-exact decoding (identity inputs) and thread-split invariance.
import Testing
import Quantization
import _CKernels

struct GemmShape: CustomTestStringConvertible, Sendable {
    let m, n, k, blocksize: Int
    let type: QuantType4Bit
    let dq: Bool
    let note: String
    var testDescription: String { "M\(m) \(type) W[\(n),\(k)] bs\(blocksize)\(dq ? " DQ" : "") \(note)" }
}

private func gemmWeight(_ s: GemmShape, seed: UInt64) throws -> QuantizedTensor4Bit {
    var rng = SplitMix(seed: seed)
    var x = (0..<(s.n * s.k)).map { _ in rng.normal() * 0.05 }
    x[min(3, x.count - 1)] = 0.7
    return try QuantizedTensor4Bit.quantize(x, shape: [s.n, s.k], quantType: s.type, blocksize: s.blocksize,
                                            doubleQuant: s.dq)
}

/// W [n, k] dequantized by qlora_nf4_dequantize (float32, bitsandbytes-exact).
private func dequantized(_ w: QuantizedTensor4Bit) -> [Float] {
    var out = [Float](repeating: .nan, count: w.count)
    out.withUnsafeMutableBufferPointer { w.dequantize(start: 0, into: $0) }
    return out
}

private func randomMatrix(_ count: Int, seed: UInt64) -> [Float] {
    var rng = SplitMix(seed: seed)
    return (0..<count).map { _ in rng.normal() }
}

/// Every element within 1e-5 of Σ|a|·|b| (+ |c₀| when accumulating) of the double-precision value.
private func expectClose(_ got: [Float], _ ref: [Double], _ scale: [Double], _ what: String) {
    #expect(got.count == ref.count)
    var worst = 0.0, at = 0
    for i in 0..<got.count {
        let e = abs(Double(got[i]) - ref[i]) / max(scale[i], 1e-30)
        if !(e <= worst) { worst = e; at = i }   // NaN also lands here
    }
    #expect(worst <= 1e-5, "\(what): worst relative error \(worst) at \(at): \(got[at]) vs \(ref[at])")
}

private func withWorkspace<R>(_ body: (NF4GemmWorkspace) throws -> R) rethrows -> R {
    try body(NF4GemmWorkspace(threads: 3))
}

@Suite(.serialized) struct NF4GemmTests {
    static let shapes: [GemmShape] = [
        GemmShape(m: 1, n: 1, k: 64, blocksize: 64, type: .nf4, dq: true, note: "1×1"),
        GemmShape(m: 5, n: 15, k: 576, blocksize: 64, type: .nf4, dq: true, note: "2 k-slices, n < 16"),
        GemmShape(m: 7, n: 17, k: 640, blocksize: 64, type: .nf4, dq: false, note: "n tail 1, 2 k-slices"),
        GemmShape(m: 67, n: 100, k: 576, blocksize: 64, type: .nf4, dq: true, note: "m tail 1, n tail 4"),
        GemmShape(m: 67, n: 33, k: 75, blocksize: 64, type: .nf4, dq: true, note: "odd k: blocks cross rows"),
        GemmShape(m: 13, n: 40, k: 1536, blocksize: 128, type: .fp4, dq: false, note: "5 k-slices"),
        GemmShape(m: 200, n: 24, k: 96, blocksize: 32, type: .nf4, dq: true, note: "2 m-blocks"),
        GemmShape(m: 3, n: 1030, k: 64, blocksize: 64, type: .nf4, dq: true, note: "2 NC chunks"),
        GemmShape(m: 9, n: 20, k: 12, blocksize: 64, type: .nf4, dq: false, note: "k % 8 = 4"),
        GemmShape(m: 6, n: 16, k: 8, blocksize: 32, type: .int4, dq: false, note: "k = 8 < blocksize"),
        GemmShape(m: 4, n: 24, k: 40, blocksize: 32, type: .nf4, dq: true, note: "k % 16 = 8: block edge mid-panel"),
        GemmShape(m: 11, n: 192, k: 576, blocksize: 64, type: .nf4, dq: true, note: "k/v shape"),
    ]

    @Test(arguments: shapes, [false, true])
    func forwardMatchesDoubleReference(shape s: GemmShape, portable: Bool) throws {
        let w = try gemmWeight(s, seed: 11)
        let wf = dequantized(w)
        let x = randomMatrix(s.m * s.k, seed: 12)
        var ref = [Double](repeating: 0, count: s.m * s.n), scale = ref
        for i in 0..<s.m {
            for j in 0..<s.n {
                var sum = 0.0, mag = 0.0
                for p in 0..<s.k {
                    let t = Double(x[i * s.k + p]) * Double(wf[j * s.k + p])
                    sum += t; mag += abs(t)
                }
                ref[i * s.n + j] = sum; scale[i * s.n + j] = mag
            }
        }
        qlora_nf4_gemm_force_portable(portable ? 1 : 0)
        defer { qlora_nf4_gemm_force_portable(0) }
        var y = [Float](repeating: .nan, count: s.m * s.n)
        withWorkspace { ws in
            y.withUnsafeMutableBufferPointer { yp in
                x.withUnsafeBufferPointer { NF4Gemm.forward(out: yp.baseAddress!, inp: $0.baseAddress!, weight: w,
                                                            rows: s.m, workspace: ws) }
            }
        }
        expectClose(y, ref, scale, "forward")
    }

    @Test(arguments: shapes, [false, true])
    func backwardInputMatchesDoubleReference(shape s: GemmShape, portable: Bool) throws {
        let w = try gemmWeight(s, seed: 21)
        let wf = dequantized(w)
        let g = randomMatrix(s.m * s.n, seed: 22)
        let c0 = randomMatrix(s.m * s.k, seed: 23)
        var ref = [Double](repeating: 0, count: s.m * s.k), scale = ref
        for i in 0..<s.m {
            for j in 0..<s.k {
                var sum = 0.0, mag = 0.0
                for p in 0..<s.n {
                    let t = Double(g[i * s.n + p]) * Double(wf[p * s.k + j])
                    sum += t; mag += abs(t)
                }
                ref[i * s.k + j] = sum; scale[i * s.k + j] = mag
            }
        }
        qlora_nf4_gemm_force_portable(portable ? 1 : 0)
        defer { qlora_nf4_gemm_force_portable(0) }
        for accumulate in [false, true] {
            var d = accumulate ? c0 : [Float](repeating: .nan, count: s.m * s.k)
            withWorkspace { ws in
                d.withUnsafeMutableBufferPointer { dp in
                    g.withUnsafeBufferPointer { NF4Gemm.backwardInput(dInp: dp.baseAddress!, dOut: $0.baseAddress!,
                                                                      weight: w, rows: s.m, workspace: ws,
                                                                      accumulate: accumulate) }
                }
            }
            let r = accumulate ? zip(ref, c0).map { $0 + Double($1) } : ref
            let sc = accumulate ? zip(scale, c0).map { $0 + abs(Double($1)) } : scale
            expectClose(d, r, sc, accumulate ? "backward += " : "backward =")
        }
    }

    /// Forward with inp = I [k, k] gives Wᵀ and backward with dOut = I [n, n] gives W exactly:
    /// each output is one product with 1 plus exact zeros, so every packed weight must be exactly
    /// code[nibble] × blockScale as qlora_nf4_dequantize computes it (all decoders, all panel positions).
    @Test(arguments: [
        GemmShape(m: 0, n: 37, k: 576, blocksize: 64, type: .nf4, dq: true, note: "AVX2 decoder, n tails"),
        GemmShape(m: 0, n: 24, k: 40, blocksize: 32, type: .fp4, dq: true, note: "blocks cross rows"),
        GemmShape(m: 0, n: 9, k: 75, blocksize: 64, type: .nf4, dq: false, note: "odd k: scalar decoder"),
    ], [false, true])
    func identityInputsReproduceTheDequantizedWeight(shape s: GemmShape, portable: Bool) throws {
        let w = try gemmWeight(s, seed: 31)
        let wf = dequantized(w)
        qlora_nf4_gemm_force_portable(portable ? 1 : 0)
        defer { qlora_nf4_gemm_force_portable(0) }
        var eye = [Float](repeating: 0, count: s.k * s.k)
        for i in 0..<s.k { eye[i * s.k + i] = 1 }
        var wt = [Float](repeating: .nan, count: s.k * s.n)
        var eyeN = [Float](repeating: 0, count: s.n * s.n)
        for i in 0..<s.n { eyeN[i * s.n + i] = 1 }
        var back = [Float](repeating: .nan, count: s.n * s.k)
        withWorkspace { ws in
            wt.withUnsafeMutableBufferPointer { o in
                eye.withUnsafeBufferPointer { NF4Gemm.forward(out: o.baseAddress!, inp: $0.baseAddress!, weight: w,
                                                              rows: s.k, workspace: ws) }
            }
            back.withUnsafeMutableBufferPointer { o in
                eyeN.withUnsafeBufferPointer { NF4Gemm.backwardInput(dInp: o.baseAddress!, dOut: $0.baseAddress!,
                                                                     weight: w, rows: s.n, workspace: ws) }
            }
        }
        var transposed = [Float](repeating: 0, count: s.k * s.n)
        for j in 0..<s.n { for p in 0..<s.k { transposed[p * s.n + j] = wf[j * s.k + p] } }
        // Float ==: exact values, but a −0 weight sums to +0 (0 + −0·1).
        let forwardMismatches = zip(wt, transposed).filter { $0 != $1 }.count
        let backwardMismatches = zip(back, wf).filter { $0 != $1 }.count
        #expect(forwardMismatches == 0)
        #expect(backwardMismatches == 0)
    }

    /// The output columns are split across threads with the same slicing of the reduction, so 1, 2 and
    /// 3 parts must give identical bits (and each part writes only its own columns).
    @Test func threadSplitsGiveIdenticalResults() throws {
        let s = GemmShape(m: 70, n: 200, k: 576, blocksize: 64, type: .nf4, dq: true, note: "")
        let w = try gemmWeight(s, seed: 41)
        let x = randomMatrix(s.m * s.k, seed: 42), g = randomMatrix(s.m * s.n, seed: 43)
        var fwd: [[UInt32]] = [], bwd: [[UInt32]] = []
        for threads in [1, 2, 3] {
            var y = [Float](repeating: .nan, count: s.m * s.n), d = [Float](repeating: .nan, count: s.m * s.k)
            withWorkspace { ws in
                y.withUnsafeMutableBufferPointer { o in
                    x.withUnsafeBufferPointer { NF4Gemm.forward(out: o.baseAddress!, inp: $0.baseAddress!, weight: w,
                                                                rows: s.m, workspace: ws, threads: threads) }
                }
                d.withUnsafeMutableBufferPointer { o in
                    g.withUnsafeBufferPointer { NF4Gemm.backwardInput(dInp: o.baseAddress!, dOut: $0.baseAddress!,
                                                                      weight: w, rows: s.m, workspace: ws,
                                                                      threads: threads) }
                }
            }
            #expect(!y.contains { $0.isNaN } && !d.contains { $0.isNaN })
            fwd.append(y.map(\.bitPattern)); bwd.append(d.map(\.bitPattern))
        }
        #expect(fwd[1] == fwd[0] && fwd[2] == fwd[0])
        #expect(bwd[1] == bwd[0] && bwd[2] == bwd[0])
    }
}
