import Foundation
import Testing
@testable import Kernels

/// Every backward kernel against central finite differences, in Double (the same generic code the
/// Float entry points run), then the Float entry points against the Double run. Loss L = Σ w ⊙ out
/// with random w, so dOut = w. See GradCheck.swift.
@Suite struct BackwardTests {
    typealias G = GradCheck
    static let fdTolerance = 1e-6       // Double analytic vs central differences (relative to max |grad|)
    static let floatTolerance = 2e-4    // Float kernels vs Double

    // MARK: RMSNorm

    @Test func rmsnormBackwardMatchesFiniteDifferences() {
        // (C = 1 is left out: there out ≈ w·sign(x) and the true gradient is ~eps, computed by the
        // formula as the difference of two O(1) terms, so Float is ill-conditioned by construction.)
        for (rows, C) in [(1, 2), (3, 7), (2, 33)] {
            var x = G.values(rows * C, seed: UInt64(C), scale: 2), w = G.values(C, seed: 5 + UInt64(C))
            let wL = G.values(rows * C, seed: 77)
            let eps = 1e-5
            func loss(_ x: [Double], _ w: [Double]) -> Double {
                var out = [Double](repeating: 0, count: rows * C)
                for r in 0..<rows {
                    let ss = (0..<C).reduce(0.0) { $0 + x[r * C + $1] * x[r * C + $1] }
                    let rs = 1 / (ss / Double(C) + eps).squareRoot()
                    for i in 0..<C { out[r * C + i] = w[i] * x[r * C + i] * rs }
                }
                return G.dot(wL, out)
            }
            var dx = [Double](repeating: 0, count: rows * C), dw = [Double](repeating: 0, count: C)
            rmsnormBackwardImpl(dInp: &dx, dWeight: &dw, dOut: wL, inp: x, weight: w, rows: rows, channels: C,
                                epsilon: eps)
            let nx = G.numericGradient(&x) { loss($0, w) }
            let nw = G.numericGradient(&w) { loss(x, $0) }
            #expect(G.relativeError(dx, nx) < Self.fdTolerance, "dInp rows \(rows) C \(C)")
            #expect(G.relativeError(dw, nw) < Self.fdTolerance, "dWeight rows \(rows) C \(C)")

            // Float entry point; dWeight nil leaves the input gradient unchanged; accumulation adds.
            var fx = [Float](repeating: 1, count: rows * C), fw = [Float](repeating: 0, count: C)
            rmsnormBackward(dInp: &fx, dWeight: &fw, dOut: G.float(wL), inp: G.float(x), weight: G.float(w),
                            rows: rows, channels: C, epsilon: Float(eps))
            #expect(G.relativeError(fx.map { $0 - 1 }, dx) < Self.floatTolerance, "float dInp C \(C)")
            #expect(G.relativeError(fw, dw) < Self.floatTolerance, "float dWeight C \(C)")
            var fx2 = [Float](repeating: 0, count: rows * C)
            rmsnormBackward(dInp: &fx2, dWeight: nil, dOut: G.float(wL), inp: G.float(x), weight: G.float(w),
                            rows: rows, channels: C, epsilon: Float(eps))
            #expect(G.relativeError(fx2, dx) < Self.floatTolerance, "float frozen dInp C \(C)")
        }
    }

    // MARK: RoPE

    @Test func ropeBackwardMatchesFiniteDifferences() {
        let (T, heads, D) = (3, 2, 6), stride = heads * D + 4     // padded token rows
        let angles = G.values(T * D / 2, seed: 3, scale: 3)
        let cos = angles.map { Foundation.cos($0) }, sin = angles.map { Foundation.sin($0) }
        var x = G.values(T * stride, seed: 9)
        let wL = G.values(T * stride, seed: 10)
        func loss(_ x: [Double]) -> Double {
            var y = x
            ropeForwardImpl(x: &y, cos: cos, sin: sin, rows: T, heads: heads, headDim: D, rowStride: stride)
            return G.dot(wL, y)
        }
        var dx = wL
        ropeBackwardImpl(dX: &dx, cos: cos, sin: sin, rows: T, heads: heads, headDim: D, rowStride: stride)
        // The padding columns are untouched by RoPE: their gradient is dOut itself, as FD says.
        let n = G.numericGradient(&x, loss)
        #expect(G.relativeError(dx, n) < Self.fdTolerance)

        // Float: ropeBackward vs Double, and ropeForward (the existing kernel) matches ropeForwardImpl.
        var fdx = G.float(wL)
        ropeBackward(dX: &fdx, cos: G.float(cos), sin: G.float(sin), rows: T, heads: heads, headDim: D,
                     rowStride: stride)
        #expect(G.relativeError(fdx, dx) < Self.floatTolerance)
        var fy = G.float(x), dy = x
        ropeForward(x: &fy, cos: G.float(cos), sin: G.float(sin), rows: T, heads: heads, headDim: D, rowStride: stride)
        ropeForwardImpl(x: &dy, cos: cos, sin: sin, rows: T, heads: heads, headDim: D, rowStride: stride)
        #expect(G.relativeError(fy, dy) < Self.floatTolerance)
    }

    // MARK: SwiGLU

    @Test func siluMulBackwardMatchesFiniteDifferences() {
        let n = 13
        var g = G.values(n, seed: 1, scale: 6), u = G.values(n, seed: 2, scale: 2)
        let wL = G.values(n, seed: 3)
        func loss(_ g: [Double], _ u: [Double]) -> Double {
            var out = [Double](repeating: 0, count: n)
            siluMulForwardImpl(out: &out, gate: g, up: u, count: n)
            return G.dot(wL, out)
        }
        var dg = [Double](repeating: 0, count: n), du = [Double](repeating: 0, count: n)
        siluMulBackwardImpl(dGate: &dg, dUp: &du, dOut: wL, gate: g, up: u, count: n)
        #expect(G.relativeError(dg, G.numericGradient(&g) { loss($0, u) }) < Self.fdTolerance)
        #expect(G.relativeError(du, G.numericGradient(&u) { loss(g, $0) }) < Self.fdTolerance)

        var fg = [Float](repeating: 0, count: n), fu = [Float](repeating: 0, count: n)
        siluMulBackward(dGate: &fg, dUp: &fu, dOut: G.float(wL), gate: G.float(g), up: G.float(u), count: n)
        #expect(G.relativeError(fg, dg) < Self.floatTolerance)
        #expect(G.relativeError(fu, du) < Self.floatTolerance)
    }

    // MARK: Dense matmul

    @Test func matmulBackwardMatchesFiniteDifferences() {
        let (T, C, OC) = (3, 5, 7)
        var x = G.values(T * C, seed: 4), w = G.values(OC * C, seed: 5)
        let wL = G.values(T * OC, seed: 6)
        func loss(_ x: [Double], _ w: [Double]) -> Double {
            var out = [Double](repeating: 0, count: T * OC)
            matmulForwardImpl(out: &out, inp: x, weight: w, rows: T, inChannels: C, outChannels: OC)
            return G.dot(wL, out)
        }
        var dx = [Double](repeating: 0, count: T * C), dw = [Double](repeating: 0, count: OC * C)
        matmulBackwardInputImpl(dInp: &dx, dOut: wL, weight: w, rows: T, inChannels: C, outChannels: OC)
        matmulBackwardWeightImpl(dWeight: &dw, dBias: nil, dOut: wL, inp: x, rows: T, inChannels: C, outChannels: OC)
        #expect(G.relativeError(dx, G.numericGradient(&x) { loss($0, w) }) < Self.fdTolerance)
        #expect(G.relativeError(dw, G.numericGradient(&w) { loss(x, $0) }) < Self.fdTolerance)

        var fx = [Float](repeating: 0, count: T * C), fw = [Float](repeating: 0, count: OC * C)
        var fb = [Float](repeating: 0, count: OC)
        matmulBackwardInput(dInp: &fx, dOut: G.float(wL), weight: G.float(w), rows: T, inChannels: C, outChannels: OC)
        matmulBackwardWeight(dWeight: &fw, dBias: &fb, dOut: G.float(wL), inp: G.float(x), rows: T, inChannels: C,
                             outChannels: OC)
        #expect(G.relativeError(fx, dx) < Self.floatTolerance)
        #expect(G.relativeError(fw, dw) < Self.floatTolerance)
        let db = (0..<OC).map { o in (0..<T).reduce(0.0) { $0 + wL[$1 * OC + o] } }
        #expect(G.relativeError(fb, db) < Self.floatTolerance)
    }

    // MARK: Attention

    /// Naive attention in Double, written independently of the kernels: the mask and GQA mapping spelled out.
    static func naiveAttention(q: [Double], k: [Double], v: [Double], segmentStart: [Int]?, T: Int, heads: Int,
                               kvHeads: Int, D: Int) -> [Double] {
        let g = heads / kvHeads, qDim = heads * D, kvDim = kvHeads * D
        var out = [Double](repeating: 0, count: T * qDim)
        for h in 0..<heads {
            let j = h / g
            for t in 0..<T {
                let lo = segmentStart?[t] ?? 0
                var s = [Double](repeating: 0, count: t + 1 - lo)
                for p in lo...t {
                    var d = 0.0
                    for i in 0..<D { d += q[t * qDim + h * D + i] * k[p * kvDim + j * D + i] }
                    s[p - lo] = d / Double(D).squareRoot()
                }
                let m = s.max()!, e = s.map { exp($0 - m) }, z = e.reduce(0, +)
                for p in lo...t { for i in 0..<D { out[t * qDim + h * D + i] += e[p - lo] / z * v[p * kvDim + j * D + i] } }
            }
        }
        return out
    }

    @Test(arguments: [false, true])
    func attentionBackwardMatchesFiniteDifferences(segmented: Bool) {
        let (T, heads, kvHeads, D) = (7, 6, 2, 4)        // GQA g = 3
        let seg: [Int]? = segmented ? [0, 0, 0, 3, 3, 3, 6] : nil
        let qDim = heads * D, kvDim = kvHeads * D
        var q = G.values(T * qDim, seed: 11, scale: 1.5), k = G.values(T * kvDim, seed: 12, scale: 1.5)
        var v = G.values(T * kvDim, seed: 13)
        let wL = G.values(T * qDim, seed: 14)
        func forward(_ q: [Double], _ k: [Double], _ v: [Double], threads: Int = 2) -> [Double] {
            var out = [Double](repeating: .nan, count: T * qDim)
            var scratch = [Double](repeating: 0, count: attentionTrainForwardScratchCount(tokens: T, heads: heads,
                                                                                           threads: threads))
            func run(_ s: UnsafePointer<Int>?) {
                attentionTrainForwardImpl(out: &out, q: q, k: k, v: v, segmentStart: s, scratch: &scratch, tokens: T,
                                          heads: heads, kvHeads: kvHeads, headDim: D, threads: threads)
            }
            if let seg { seg.withUnsafeBufferPointer { run($0.baseAddress) } } else { run(nil) }
            return out
        }
        let ref = Self.naiveAttention(q: q, k: k, v: v, segmentStart: seg, T: T, heads: heads, kvHeads: kvHeads, D: D)
        #expect(G.relativeError(forward(q, k, v), ref) < 1e-12)
        #expect(G.relativeError(forward(q, k, v, threads: 1), ref) < 1e-12)

        func backward(threads: Int) -> ([Double], [Double], [Double]) {
            var dq = [Double](repeating: 0, count: T * qDim), dk = [Double](repeating: 0, count: T * kvDim)
            var dv = [Double](repeating: 0, count: T * kvDim)
            var scratch = [Double](repeating: 0, count: attentionBackwardScratchCount(
                tokens: T, heads: heads, kvHeads: kvHeads, headDim: D, threads: threads))
            func run(_ s: UnsafePointer<Int>?) {
                attentionBackwardImpl(dQ: &dq, dK: &dk, dV: &dv, dOut: wL, q: q, k: k, v: v, segmentStart: s,
                                      scratch: &scratch, tokens: T, heads: heads, kvHeads: kvHeads, headDim: D,
                                      threads: threads)
            }
            if let seg { seg.withUnsafeBufferPointer { run($0.baseAddress) } } else { run(nil) }
            return (dq, dk, dv)
        }
        let (dq, dk, dv) = backward(threads: 2)
        let nq = G.numericGradient(&q) { G.dot(wL, forward($0, k, v)) }
        let nk = G.numericGradient(&k) { G.dot(wL, forward(q, $0, v)) }
        let nv = G.numericGradient(&v) { G.dot(wL, forward(q, k, $0)) }
        #expect(G.relativeError(dq, nq) < Self.fdTolerance, "dQ")
        #expect(G.relativeError(dk, nk) < Self.fdTolerance, "dK")
        #expect(G.relativeError(dv, nv) < Self.fdTolerance, "dV")
        let (dq1, dk1, dv1) = backward(threads: 1)       // the single-worker path writes dK/dV directly
        #expect(G.relativeError(dq1, dq) < 1e-12 && G.relativeError(dk1, dk) < 1e-12 && G.relativeError(dv1, dv) < 1e-12)

        // Float entry points vs Double.
        let (fq, fk, fv) = (G.float(q), G.float(k), G.float(v))
        var fout = [Float](repeating: .nan, count: T * qDim)
        var fscratch = [Float](repeating: 0, count: attentionBackwardScratchCount(
            tokens: T, heads: heads, kvHeads: kvHeads, headDim: D) + attentionTrainForwardScratchCount(tokens: T, heads: heads))
        var fdq = [Float](repeating: 0, count: T * qDim), fdk = [Float](repeating: 0, count: T * kvDim)
        var fdv = [Float](repeating: 0, count: T * kvDim)
        func runFloat(_ s: UnsafePointer<Int>?) {
            attentionTrainForward(out: &fout, q: fq, k: fk, v: fv, segmentStart: s, scratch: &fscratch, tokens: T,
                                  heads: heads, kvHeads: kvHeads, headDim: D)
            attentionBackward(dQ: &fdq, dK: &fdk, dV: &fdv, dOut: G.float(wL), q: fq, k: fk, v: fv, segmentStart: s,
                              scratch: &fscratch, tokens: T, heads: heads, kvHeads: kvHeads, headDim: D)
        }
        if let seg { seg.withUnsafeBufferPointer { runFloat($0.baseAddress) } } else { runFloat(nil) }
        #expect(G.relativeError(fout, ref) < Self.floatTolerance)
        #expect(G.relativeError(fdq, dq) < Self.floatTolerance)
        #expect(G.relativeError(fdk, dk) < Self.floatTolerance)
        #expect(G.relativeError(fdv, dv) < Self.floatTolerance)

        if !segmented {
            // Same result as the inference kernel (KV cache = k, v, startPosition 0).
            var inf = [Float](repeating: .nan, count: T * qDim)
            var s2 = [Float](repeating: 0, count: attentionScratchCount(tokens: T, keys: T, heads: heads))
            attentionForward(out: &inf, q: fq, keys: fk, values: fv, scratch: &s2, tokens: T, startPosition: 0,
                             heads: heads, kvHeads: kvHeads, headDim: D)
            #expect(G.relativeError(inf, fout.map(Double.init)) < 1e-5)
        }
    }

    /// The causal-block path (query blocks smaller than T, keys only up to the block's end and from its
    /// first segment start) and the batched entry points equal the naive reference, row by row, in both
    /// backward work splits ((row, kv head) items and per-row private accumulators).
    @Test(arguments: [false, true])
    func blockedBatchedAttentionMatchesNaive(segmented: Bool) {
        let (T, heads, kvHeads, D, batch) = (13, 4, 2, 3, 3)
        let qDim = heads * D, kvDim = kvHeads * D
        let q = G.values(batch * T * qDim, seed: 61, scale: 1.5), k = G.values(batch * T * kvDim, seed: 62, scale: 1.5)
        let v = G.values(batch * T * kvDim, seed: 63), dO = G.values(batch * T * qDim, seed: 64)
        let rowSeg: [Int] = (0..<T).map { $0 < 5 ? 0 : ($0 < 9 ? 5 : 9) }
        let seg: [Int]? = segmented ? Array((0..<batch).map { _ in rowSeg }.joined()) : nil
        func row<E>(_ x: [E], _ b: Int, _ w: Int) -> [E] { Array(x[(b * T * w)..<((b + 1) * T * w)]) }
        // Per-row reference: the naive forward, and the unblocked (block = T) backward of one row.
        var refOut: [Double] = [], refDQ: [Double] = [], refDK: [Double] = [], refDV: [Double] = []
        for b in 0..<batch {
            let s = seg.map { row($0, b, 1) }
            refOut += Self.naiveAttention(q: row(q, b, qDim), k: row(k, b, kvDim), v: row(v, b, kvDim), segmentStart: s,
                                          T: T, heads: heads, kvHeads: kvHeads, D: D)
            var dq = [Double](repeating: 0, count: T * qDim), dk = [Double](repeating: 0, count: T * kvDim), dv = dk
            var scratch = [Double](repeating: 0, count: attentionBackwardScratchCount(tokens: T, heads: heads,
                                                                                      kvHeads: kvHeads, headDim: D, threads: 1))
            func run(_ sp: UnsafePointer<Int>?) {
                attentionBackwardImpl(dQ: &dq, dK: &dk, dV: &dv, dOut: row(dO, b, qDim), q: row(q, b, qDim),
                                      k: row(k, b, kvDim), v: row(v, b, kvDim), segmentStart: sp, scratch: &scratch,
                                      tokens: T, heads: heads, kvHeads: kvHeads, headDim: D, threads: 1, block: T)
            }
            if let s { s.withUnsafeBufferPointer { run($0.baseAddress) } } else { run(nil) }
            refDQ += dq; refDK += dk; refDV += dv
        }
        for (block, threads, rows) in [(4, 2, batch), (5, 1, batch), (3, 2, 1), (64, 2, batch)] {
            // All four use (row, kv head) work items (rows·kvHeads divides over the workers).
            let nq = rows * T * qDim, nkv = rows * T * kvDim
            var out = [Double](repeating: .nan, count: nq)
            var fs = [Double](repeating: 0, count: attentionTrainForwardScratchCount(tokens: T, heads: heads, threads: threads))
            var dq = [Double](repeating: 0, count: nq), dk = [Double](repeating: 0, count: nkv), dv = dk
            var bs = [Double](repeating: 0, count: attentionBackwardScratchCount(tokens: T, heads: heads, kvHeads: kvHeads,
                                                                                 headDim: D, threads: threads))
            func run(_ sp: UnsafePointer<Int>?) {
                attentionTrainForwardImpl(out: &out, q: q, k: k, v: v, segmentStart: sp, scratch: &fs, tokens: T,
                                          heads: heads, kvHeads: kvHeads, headDim: D, batch: rows, threads: threads,
                                          block: block)
                attentionBackwardImpl(dQ: &dq, dK: &dk, dV: &dv, dOut: dO, q: q, k: k, v: v, segmentStart: sp,
                                      scratch: &bs, tokens: T, heads: heads, kvHeads: kvHeads, headDim: D, batch: rows,
                                      threads: threads, block: block)
            }
            if let seg { seg.withUnsafeBufferPointer { run($0.baseAddress) } } else { run(nil) }
            #expect(G.relativeError(out, Array(refOut[..<nq])) < 1e-12, "block \(block) threads \(threads)")
            #expect(G.relativeError(dq, Array(refDQ[..<nq])) < 1e-12, "block \(block) threads \(threads)")
            #expect(G.relativeError(dk, Array(refDK[..<nkv])) < 1e-12, "block \(block) threads \(threads)")
            #expect(G.relativeError(dv, Array(refDV[..<nkv])) < 1e-12, "block \(block) threads \(threads)")
        }
        // Private-accumulator split (1 row × 1 kv head over 2 workers), blocked, against the same math.
        do {
            let (H, KH) = (4, 1), qd = H * D, kvd = KH * D
            let q1 = Array(q[..<(T * qd)]), k1 = Array(k[..<(T * kvd)]), v1 = Array(v[..<(T * kvd)])
            let dO1 = Array(dO[..<(T * qd)])
            func back(block: Int, threads: Int) -> [Double] {
                var dq = [Double](repeating: 0, count: T * qd), dk = [Double](repeating: 0, count: T * kvd), dv = dk
                var bs = [Double](repeating: 0, count: attentionBackwardScratchCount(tokens: T, heads: H, kvHeads: KH,
                                                                                     headDim: D, threads: threads))
                func run(_ sp: UnsafePointer<Int>?) {
                    attentionBackwardImpl(dQ: &dq, dK: &dk, dV: &dv, dOut: dO1, q: q1, k: k1, v: v1, segmentStart: sp,
                                          scratch: &bs, tokens: T, heads: H, kvHeads: KH, headDim: D, threads: threads,
                                          block: block)
                }
                let s = seg.map { Array($0[..<T]) }
                if let s { s.withUnsafeBufferPointer { run($0.baseAddress) } } else { run(nil) }
                return dq + dk + dv
            }
            #expect(G.relativeError(back(block: 4, threads: 2), back(block: T, threads: 1)) < 1e-12)
        }
    }

    // MARK: LoRA

    @Test(arguments: [false, true])
    func loraBackwardMatchesFiniteDifferences(dropout: Bool) {
        let (N, C, OC, R) = (4, 6, 5, 3), scale = 2.0, p = 0.25
        var x = G.values(N * C, seed: 21), a = G.values(R * C, seed: 22), b = G.values(OC * R, seed: 23)
        let base = G.values(N * OC, seed: 24), wL = G.values(N * OC, seed: 25)
        var mask = [UInt8](repeating: 1, count: N * C)
        if dropout { loraDropoutMask(mask: &mask, count: N * C, p: Float(p), seed: 42) }
        if dropout { #expect(mask.contains(0) && mask.contains(1)) }
        func forward(_ x: [Double], _ a: [Double], _ b: [Double], scratch: Bool = true) -> ([Double], [Double]) {
            var out = base, h = [Double](repeating: .nan, count: N * R), u = [Double](repeating: 0, count: N * C)
            mask.withUnsafeBufferPointer { m in
                let mp = dropout ? m.baseAddress : nil
                if scratch {
                    loraForwardImpl(out: &out, h: &h, maskedInput: &u, inp: x, mask: mp, dropout: p, a: a, b: b,
                                    scale: scale, rows: N, inChannels: C, outChannels: OC, rank: R)
                } else {
                    loraForwardImpl(out: &out, h: &h, maskedInput: nil, inp: x, mask: mp, dropout: p, a: a, b: b,
                                    scale: scale, rows: N, inChannels: C, outChannels: OC, rank: R)
                }
            }
            return (out, h)
        }
        // Forward against the formula spelled out.
        let (out, h) = forward(x, a, b)
        var ref = base
        for n in 0..<N { for o in 0..<OC {
            var s = 0.0
            for r in 0..<R { for c in 0..<C {
                let u = dropout ? (mask[n * C + c] != 0 ? x[n * C + c] / (1 - p) : 0) : x[n * C + c]
                s += b[o * R + r] * a[r * C + c] * u
            } }
            ref[n * OC + o] += scale * s
        } }
        #expect(G.relativeError(out, ref) < 1e-12)
        #expect(G.relativeError(forward(x, a, b, scratch: false).0, ref) < 1e-12)

        var dx = [Double](repeating: 0, count: N * C), da = [Double](repeating: 0, count: R * C)
        var db = [Double](repeating: 0, count: OC * R)
        var scratch = [Double](repeating: 0, count: loraBackwardScratchCount(rows: N, inChannels: C, rank: R,
                                                                             dropout: dropout))
        mask.withUnsafeBufferPointer { m in
            loraBackwardImpl(dInp: &dx, dA: &da, dB: &db, dOut: wL, inp: x, mask: dropout ? m.baseAddress : nil,
                             dropout: p, h: h, a: a, b: b, scale: scale, scratch: &scratch, rows: N, inChannels: C,
                             outChannels: OC, rank: R)
        }
        #expect(G.relativeError(dx, G.numericGradient(&x) { G.dot(wL, forward($0, a, b).0) }) < Self.fdTolerance)
        #expect(G.relativeError(da, G.numericGradient(&a) { G.dot(wL, forward(x, $0, b).0) }) < Self.fdTolerance)
        #expect(G.relativeError(db, G.numericGradient(&b) { G.dot(wL, forward(x, a, $0).0) }) < Self.fdTolerance)

        // Float entry points vs Double.
        var fout = G.float(base), fh = [Float](repeating: 0, count: N * R), fu = [Float](repeating: 0, count: N * C)
        var fdx = [Float](repeating: 0, count: N * C), fda = [Float](repeating: 0, count: R * C)
        var fdb = [Float](repeating: 0, count: OC * R)
        var fs = [Float](repeating: 0, count: loraBackwardScratchCount(rows: N, inChannels: C, rank: R, dropout: dropout))
        let (fx, fa, fb) = (G.float(x), G.float(a), G.float(b))
        mask.withUnsafeBufferPointer { m in
            let mp = dropout ? m.baseAddress : nil
            loraForward(out: &fout, h: &fh, maskedInput: &fu, inp: fx, mask: mp, dropout: Float(p), a: fa, b: fb,
                        scale: Float(scale), rows: N, inChannels: C, outChannels: OC, rank: R)
            loraBackward(dInp: &fdx, dA: &fda, dB: &fdb, dOut: G.float(wL), inp: fx, mask: mp, dropout: Float(p),
                         h: fh, a: fa, b: fb, scale: Float(scale), scratch: &fs, rows: N, inChannels: C,
                         outChannels: OC, rank: R)
        }
        #expect(G.relativeError(fout, ref) < Self.floatTolerance)
        #expect(G.relativeError(fdx, dx) < Self.floatTolerance)
        #expect(G.relativeError(fda, da) < Self.floatTolerance)
        #expect(G.relativeError(fdb, db) < Self.floatTolerance)
    }

    @Test func loraDropoutMaskKeepsOneMinusPAndIsSeeded() {
        let n = 200_000
        var m1 = [UInt8](repeating: 9, count: n), m2 = m1, m3 = m1
        loraDropoutMask(mask: &m1, count: n, p: 0.1, seed: 7)
        loraDropoutMask(mask: &m2, count: n, p: 0.1, seed: 7)
        loraDropoutMask(mask: &m3, count: n, p: 0.1, seed: 8)
        let dropped = Double(m1.filter { $0 == 0 }.count) / Double(n)
        #expect(abs(dropped - 0.1) < 0.004, "dropped fraction \(dropped)")
        #expect(m1.allSatisfy { $0 <= 1 })
        #expect(m1 == m2)
        #expect(m1 != m3)
        var none = [UInt8](repeating: 9, count: 1000)
        loraDropoutMask(mask: &none, count: 1000, p: 0, seed: 1)
        #expect(none.allSatisfy { $0 == 1 })
    }

    // MARK: Cross-entropy

    @Test func crossEntropyMatchesFiniteDifferencesAndIgnoresMaskedRows() throws {
        let (T, V) = (5, 11), scale = 0.37
        let targets = [3, -100, 0, 10, -100]
        var logits = G.values(T * V, seed: 31, scale: 4)
        func loss(_ l: [Double]) -> Double {
            var losses = [Double](repeating: .nan, count: T)
            let (sum, _) = try! crossEntropyForwardImpl(losses: &losses, logits: l, targets: targets, rows: T, vocab: V,
                                                        ignoreIndex: -100, threads: 2)
            return scale * sum
        }
        // Forward against the formula spelled out.
        var losses = [Double](repeating: .nan, count: T)
        let (sum, count) = try crossEntropyForwardImpl(losses: &losses, logits: logits, targets: targets, rows: T,
                                                       vocab: V, ignoreIndex: -100, threads: 2)
        #expect(count == 3)
        var refSum = 0.0
        for t in 0..<T {
            if targets[t] < 0 { #expect(losses[t] == 0); continue }
            let row = Array(logits[t * V ..< (t + 1) * V])
            let ref = log(row.map { exp($0) }.reduce(0, +)) - row[targets[t]]
            #expect(abs(losses[t] - ref) < 1e-12)
            refSum += ref
        }
        #expect(abs(sum - refSum) < 1e-12)

        var d = [Double](repeating: .nan, count: T * V)
        crossEntropyBackwardImpl(dLogits: &d, logits: logits, targets: targets, scale: scale, rows: T, vocab: V,
                                 ignoreIndex: -100, threads: 2)
        let n = G.numericGradient(&logits, loss)
        #expect(G.relativeError(d, n) < Self.fdTolerance)
        for t in [1, 4] { #expect(d[t * V ..< (t + 1) * V].allSatisfy { $0 == 0 }) }

        // Float, in place over the logits buffer.
        var fl = G.float(logits), fLosses = [Float](repeating: .nan, count: T)
        let (fsum, fcount) = try crossEntropyForward(losses: &fLosses, logits: fl, targets: targets, rows: T, vocab: V)
        #expect(fcount == 3 && abs(fsum - sum) < 1e-5)
        fl.withUnsafeMutableBufferPointer { p in
            crossEntropyBackward(dLogits: p.baseAddress!, logits: p.baseAddress!, targets: targets, scale: Float(scale),
                                 rows: T, vocab: V)
        }
        #expect(G.relativeError(fl, d) < Self.floatTolerance)
    }

    /// The fused in-place forward + backward equals crossEntropyForward then crossEntropyBackward
    /// (AVX2 and portable bodies; rows longer than the 1024-element flush of the vector sum).
    @Test func fusedCrossEntropyEqualsForwardThenBackward() throws {
        let (T, V) = (6, 3001)
        let targets = [3, -100, 0, 3000, 1500, -100]
        let logits = G.float(G.values(T * V, seed: 35, scale: 6))
        var refLosses = [Float](repeating: .nan, count: T)
        let (refSum, refCount) = try crossEntropyForward(losses: &refLosses, logits: logits, targets: targets, rows: T, vocab: V)
        var refD = [Float](repeating: .nan, count: T * V)
        crossEntropyBackward(dLogits: &refD, logits: logits, targets: targets, scale: 0.25, rows: T, vocab: V)
        for portable in [false, true] {
            forcePortableKernels(portable)
            defer { forcePortableKernels(false) }
            var x = logits, losses = [Float](repeating: .nan, count: T)
            let (sum, count) = try crossEntropyForwardBackward(logits: &x, losses: &losses, targets: targets, scale: 0.25,
                                                              rows: T, vocab: V)
            #expect(count == refCount && abs(sum - refSum) < 1e-5 * abs(refSum))
            #expect(zip(losses, refLosses).allSatisfy { abs($0 - $1) < 1e-5 * max(1, abs($1)) })
            #expect(zip(x, refD).allSatisfy { abs($0 - $1) < 1e-7 }, "portable \(portable)")
            #expect(x[V ..< 2 * V].allSatisfy { $0 == 0 })
        }
        var bad = logits, l = [Float](repeating: 0, count: T)
        #expect(throws: CrossEntropyError.self) {
            try crossEntropyForwardBackward(logits: &bad, losses: &l, targets: [0, 0, 0, V, 0, 0], scale: 1, rows: T, vocab: V)
        }
        #expect(bad == logits)
    }

    @Test func crossEntropyIsStableForHugeLogitsAndRejectsBadTargets() throws {
        let V = 7
        var logits: [Float] = (0..<V).map { Float($0) * 1000 + 50_000 }     // exp would overflow unshifted
        var losses = [Float](repeating: .nan, count: 1)
        let (sum, count) = try crossEntropyForward(losses: &losses, logits: logits, targets: [V - 1], rows: 1, vocab: V)
        #expect(count == 1 && sum.isFinite && sum >= 0 && sum < 1e-6)
        logits.withUnsafeMutableBufferPointer { p in
            crossEntropyBackward(dLogits: p.baseAddress!, logits: p.baseAddress!, targets: [0], scale: 1, rows: 1,
                                 vocab: V)
        }
        #expect(logits.allSatisfy { $0.isFinite })
        #expect(abs(logits[0] + 1) < 1e-6 && abs(logits[V - 1] - 1) < 1e-6)
        var two = [Float](repeating: .nan, count: 2)
        #expect(throws: CrossEntropyError(row: 1, target: V, vocab: V)) {
            try crossEntropyForward(losses: &two, logits: logits + logits, targets: [0, V], rows: 2, vocab: V)
        }
    }

    // MARK: Float kernels at sizes past the vector chunks (256-element exp chunks, many heads)

    @Test func floatKernelsMatchDoubleAtLargerSizes() throws {
        // SwiGLU over 4 exp chunks (the last one partial).
        let n = 1000
        let g = G.values(n, seed: 41, scale: 8), u = G.values(n, seed: 42), w = G.values(n, seed: 43)
        var dg = [Double](repeating: 0, count: n), du = dg
        siluMulBackwardImpl(dGate: &dg, dUp: &du, dOut: w, gate: g, up: u, count: n)
        var fg = [Float](repeating: 0, count: n), fu = fg
        siluMulBackward(dGate: &fg, dUp: &fu, dOut: G.float(w), gate: G.float(g), up: G.float(u), count: n)
        #expect(G.relativeError(fg, dg) < Self.floatTolerance && G.relativeError(fu, du) < Self.floatTolerance)

        // Cross-entropy with V = 600 (chunks of 256 + a tail).
        let (T, V) = (3, 600), targets = [599, -100, 256]
        let logits = G.values(T * V, seed: 44, scale: 10)
        var losses = [Double](repeating: 0, count: T), d = [Double](repeating: 0, count: T * V)
        let (sum, _) = try crossEntropyForwardImpl(losses: &losses, logits: logits, targets: targets, rows: T, vocab: V,
                                                   ignoreIndex: -100, threads: 2)
        crossEntropyBackwardImpl(dLogits: &d, logits: logits, targets: targets, scale: 0.5, rows: T, vocab: V,
                                 ignoreIndex: -100, threads: 2)
        var fl = [Float](repeating: 0, count: T), fd = [Float](repeating: 0, count: T * V)
        let (fsum, _) = try crossEntropyForward(losses: &fl, logits: G.float(logits), targets: targets, rows: T, vocab: V)
        crossEntropyBackward(dLogits: &fd, logits: G.float(logits), targets: targets, scale: 0.5, rows: T, vocab: V)
        #expect(abs(fsum - sum) < 1e-4 * max(1, abs(sum)))
        #expect(G.relativeError(fd, d) < Self.floatTolerance)

        // Attention with 9 query heads over 3 kv heads, T = 40, two packed segments.
        let (AT, H, KH, D) = (40, 9, 3, 8)
        let seg = (0..<AT).map { $0 < 17 ? 0 : 17 }
        let q = G.values(AT * H * D, seed: 45), k = G.values(AT * KH * D, seed: 46), v = G.values(AT * KH * D, seed: 47)
        let dO = G.values(AT * H * D, seed: 48)
        var dq = [Double](repeating: 0, count: q.count), dk = [Double](repeating: 0, count: k.count), dv = dk
        var ds = [Double](repeating: 0, count: attentionBackwardScratchCount(tokens: AT, heads: H, kvHeads: KH, headDim: D))
        seg.withUnsafeBufferPointer { sp in
            attentionBackwardImpl(dQ: &dq, dK: &dk, dV: &dv, dOut: dO, q: q, k: k, v: v, segmentStart: sp.baseAddress,
                                  scratch: &ds, tokens: AT, heads: H, kvHeads: KH, headDim: D, threads: coreCount)
        }
        var fdq = [Float](repeating: 0, count: q.count), fdk = [Float](repeating: 0, count: k.count), fdv = fdk
        var fs = [Float](repeating: 0, count: ds.count)
        seg.withUnsafeBufferPointer { sp in
            attentionBackward(dQ: &fdq, dK: &fdk, dV: &fdv, dOut: G.float(dO), q: G.float(q), k: G.float(k),
                              v: G.float(v), segmentStart: sp.baseAddress, scratch: &fs, tokens: AT, heads: H,
                              kvHeads: KH, headDim: D)
        }
        #expect(G.relativeError(fdq, dq) < Self.floatTolerance)
        #expect(G.relativeError(fdk, dk) < Self.floatTolerance)
        #expect(G.relativeError(fdv, dv) < Self.floatTolerance)
        // No gradient crosses the segment boundary: keys/values of segment 2 do not affect segment 1's
        // queries, so with dOut zero on segment 2 the dK/dV rows of segment 2 are exactly zero.
        var dO1 = dO
        for i in (17 * H * D)..<dO1.count { dO1[i] = 0 }
        var dq1 = [Double](repeating: 0, count: q.count), dk1 = [Double](repeating: 0, count: k.count), dv1 = dk1
        seg.withUnsafeBufferPointer { sp in
            attentionBackwardImpl(dQ: &dq1, dK: &dk1, dV: &dv1, dOut: dO1, q: q, k: k, v: v, segmentStart: sp.baseAddress,
                                  scratch: &ds, tokens: AT, heads: H, kvHeads: KH, headDim: D, threads: coreCount)
        }
        #expect(dk1[(17 * KH * D)...].allSatisfy { $0 == 0 } && dv1[(17 * KH * D)...].allSatisfy { $0 == 0 })
        #expect(dk1[..<(17 * KH * D)].contains { $0 != 0 })
    }

    // MARK: Composite: one transformer block with frozen base weights and LoRA everywhere

    /// One LLaMA block in Double: RMSNorm → q/k/v (+LoRA) → RoPE → GQA attention (document mask) →
    /// o (+LoRA) → residual → RMSNorm → gate/up (+LoRA) → SwiGLU → down (+LoRA) → residual.
    /// Base and norm weights are frozen; only the LoRA A/B matrices get gradients.
    struct TinyBlock {
        static let (T, C, heads, kvHeads, D, F, R) = (6, 12, 3, 1, 4, 10, 2)
        static let segmentStart = [0, 0, 0, 0, 4, 4]
        static let scale = 1.5, p = 0.2, eps = 1e-5
        /// (name, in, out, dropout?) of the seven adapted projections.
        static let projections: [(String, Int, Int, Bool)] = [
            ("q", C, heads * D, true), ("k", C, kvHeads * D, false), ("v", C, kvHeads * D, false),
            ("o", heads * D, C, false), ("gate", C, F, false), ("up", C, F, true), ("down", F, C, false),
        ]
        var base: [String: [Double]] = [:]          // [out, in]
        var a: [String: [Double]] = [:]             // [R, in]
        var b: [String: [Double]] = [:]             // [out, R]
        var mask: [String: [UInt8]] = [:]           // [T, in]
        var x: [Double]
        let norm1: [Double], norm2: [Double], cos: [Double], sin: [Double], wL: [Double]

        init() {
            let (T, C, D) = (Self.T, Self.C, Self.D)
            for (i, (name, inC, outC, drop)) in Self.projections.enumerated() {
                let s = UInt64(100 + 10 * i)
                base[name] = GradCheck.values(outC * inC, seed: s, scale: 1 / Double(inC).squareRoot())
                a[name] = GradCheck.values(Self.R * inC, seed: s + 1, scale: 1 / Double(inC).squareRoot())
                b[name] = GradCheck.values(outC * Self.R, seed: s + 2, scale: 0.5)    // nonzero: B = 0 kills dA
                var m = [UInt8](repeating: 1, count: T * inC)
                if drop { loraDropoutMask(mask: &m, count: m.count, p: Float(Self.p), seed: s + 3) }
                mask[name] = m
            }
            x = GradCheck.values(T * C, seed: 1, scale: 2)
            norm1 = GradCheck.values(C, seed: 2).map { 1 + 0.3 * $0 }
            norm2 = GradCheck.values(C, seed: 3).map { 1 + 0.3 * $0 }
            var c = [Double](), s = [Double]()
            for t in 0..<T { for i in 0..<(D / 2) {
                let angle = Double(t) * pow(10000, -2 * Double(i) / Double(D))
                c.append(Foundation.cos(angle)); s.append(Foundation.sin(angle))
            } }
            cos = c; sin = s
            wL = GradCheck.values(T * C, seed: 4)
        }

        /// Cached activations of one forward pass.
        struct Cache {
            var xn1 = [Double](), q = [Double](), k = [Double](), v = [Double](), att = [Double](), h1 = [Double]()
            var xn2 = [Double](), gate = [Double](), up = [Double](), act = [Double](), out = [Double]()
            var h: [String: [Double]] = [:]
        }

        func linear(_ name: String, _ inp: [Double], _ cache: inout Cache) -> [Double] {
            let (_, inC, outC, drop) = Self.projections.first { $0.0 == name }!
            var out = [Double](repeating: 0, count: Self.T * outC)
            matmulForwardImpl(out: &out, inp: inp, weight: base[name]!, rows: Self.T, inChannels: inC, outChannels: outC)
            var h = [Double](repeating: 0, count: Self.T * Self.R), u = [Double](repeating: 0, count: Self.T * inC)
            mask[name]!.withUnsafeBufferPointer { m in
                loraForwardImpl(out: &out, h: &h, maskedInput: &u, inp: inp, mask: drop ? m.baseAddress : nil,
                                dropout: Self.p, a: a[name]!, b: b[name]!, scale: Self.scale, rows: Self.T,
                                inChannels: inC, outChannels: outC, rank: Self.R)
            }
            cache.h[name] = h
            return out
        }

        func forward() -> Cache {
            let (T, C, heads, kvHeads, D, F) = (Self.T, Self.C, Self.heads, Self.kvHeads, Self.D, Self.F)
            var c = Cache()
            c.xn1 = [Double](repeating: 0, count: T * C)
            rmsnormForwardD(&c.xn1, x, norm1)
            c.q = linear("q", c.xn1, &c); c.k = linear("k", c.xn1, &c); c.v = linear("v", c.xn1, &c)
            ropeForwardImpl(x: &c.q, cos: cos, sin: sin, rows: T, heads: heads, headDim: D, rowStride: heads * D)
            ropeForwardImpl(x: &c.k, cos: cos, sin: sin, rows: T, heads: kvHeads, headDim: D, rowStride: kvHeads * D)
            c.att = [Double](repeating: 0, count: T * heads * D)
            var scratch = [Double](repeating: 0, count: attentionTrainForwardScratchCount(tokens: T, heads: heads))
            Self.segmentStart.withUnsafeBufferPointer { s in
                attentionTrainForwardImpl(out: &c.att, q: c.q, k: c.k, v: c.v, segmentStart: s.baseAddress,
                                          scratch: &scratch, tokens: T, heads: heads, kvHeads: kvHeads, headDim: D,
                                          threads: coreCount)
            }
            let o = linear("o", c.att, &c)
            c.h1 = zip(x, o).map { $0 + $1 }
            c.xn2 = [Double](repeating: 0, count: T * C)
            rmsnormForwardD(&c.xn2, c.h1, norm2)
            c.gate = linear("gate", c.xn2, &c); c.up = linear("up", c.xn2, &c)
            c.act = [Double](repeating: 0, count: T * F)
            siluMulForwardImpl(out: &c.act, gate: c.gate, up: c.up, count: T * F)
            let down = linear("down", c.act, &c)
            c.out = zip(c.h1, down).map { $0 + $1 }
            return c
        }

        func rmsnormForwardD(_ out: inout [Double], _ x: [Double], _ w: [Double]) {
            let C = Self.C
            for t in 0..<Self.T {
                let ss = (0..<C).reduce(0.0) { $0 + x[t * C + $1] * x[t * C + $1] }
                let r = 1 / (ss / Double(C) + Self.eps).squareRoot()
                for i in 0..<C { out[t * C + i] = w[i] * x[t * C + i] * r }
            }
        }

        func loss() -> Double { GradCheck.dot(wL, forward().out) }

        /// Backward of one projection: base (frozen) + LoRA; returns nothing, accumulates into dInp, dA, dB.
        func linearBackward(_ name: String, dInp: inout [Double], dOut: [Double], inp: [Double], cache: Cache,
                            dA: inout [String: [Double]], dB: inout [String: [Double]]) {
            let (_, inC, outC, drop) = Self.projections.first { $0.0 == name }!
            matmulBackwardInputImpl(dInp: &dInp, dOut: dOut, weight: base[name]!, rows: Self.T, inChannels: inC,
                                    outChannels: outC)
            var scratch = [Double](repeating: 0, count: loraBackwardScratchCount(rows: Self.T, inChannels: inC,
                                                                                 rank: Self.R, dropout: drop))
            mask[name]!.withUnsafeBufferPointer { m in
                loraBackwardImpl(dInp: &dInp, dA: &dA[name]!, dB: &dB[name]!, dOut: dOut, inp: inp,
                                 mask: drop ? m.baseAddress : nil, dropout: Self.p, h: cache.h[name]!, a: a[name]!,
                                 b: b[name]!, scale: Self.scale, scratch: &scratch, rows: Self.T, inChannels: inC,
                                 outChannels: outC, rank: Self.R)
            }
        }

        /// Gradients of Σ wL ⊙ out for every LoRA A and B, and for the block input x.
        func backward() -> (dA: [String: [Double]], dB: [String: [Double]], dx: [Double]) {
            let (T, C, heads, kvHeads, D, F) = (Self.T, Self.C, Self.heads, Self.kvHeads, Self.D, Self.F)
            let c = forward()
            var dA = a.mapValues { [Double](repeating: 0, count: $0.count) }
            var dB = b.mapValues { [Double](repeating: 0, count: $0.count) }
            func zeros(_ n: Int) -> [Double] { [Double](repeating: 0, count: n) }
            var dh1 = wL                                   // out = h1 + down
            var dAct = zeros(T * F)
            linearBackward("down", dInp: &dAct, dOut: wL, inp: c.act, cache: c, dA: &dA, dB: &dB)
            var dGate = zeros(T * F), dUp = zeros(T * F)
            siluMulBackwardImpl(dGate: &dGate, dUp: &dUp, dOut: dAct, gate: c.gate, up: c.up, count: T * F)
            var dxn2 = zeros(T * C)
            linearBackward("gate", dInp: &dxn2, dOut: dGate, inp: c.xn2, cache: c, dA: &dA, dB: &dB)
            linearBackward("up", dInp: &dxn2, dOut: dUp, inp: c.xn2, cache: c, dA: &dA, dB: &dB)
            rmsnormBackwardImpl(dInp: &dh1, dWeight: nil, dOut: dxn2, inp: c.h1, weight: norm2, rows: T, channels: C,
                                epsilon: Self.eps)
            var dx = dh1                                   // h1 = x + o
            var dAtt = zeros(T * heads * D)
            linearBackward("o", dInp: &dAtt, dOut: dh1, inp: c.att, cache: c, dA: &dA, dB: &dB)
            var dq = zeros(T * heads * D), dk = zeros(T * kvHeads * D), dv = zeros(T * kvHeads * D)
            var scratch = [Double](repeating: 0, count: attentionBackwardScratchCount(tokens: T, heads: heads,
                                                                                      kvHeads: kvHeads, headDim: D))
            Self.segmentStart.withUnsafeBufferPointer { s in
                attentionBackwardImpl(dQ: &dq, dK: &dk, dV: &dv, dOut: dAtt, q: c.q, k: c.k, v: c.v,
                                      segmentStart: s.baseAddress, scratch: &scratch, tokens: T, heads: heads,
                                      kvHeads: kvHeads, headDim: D, threads: coreCount)
            }
            ropeBackwardImpl(dX: &dq, cos: cos, sin: sin, rows: T, heads: heads, headDim: D, rowStride: heads * D)
            ropeBackwardImpl(dX: &dk, cos: cos, sin: sin, rows: T, heads: kvHeads, headDim: D, rowStride: kvHeads * D)
            var dxn1 = zeros(T * C)
            linearBackward("q", dInp: &dxn1, dOut: dq, inp: c.xn1, cache: c, dA: &dA, dB: &dB)
            linearBackward("k", dInp: &dxn1, dOut: dk, inp: c.xn1, cache: c, dA: &dA, dB: &dB)
            linearBackward("v", dInp: &dxn1, dOut: dv, inp: c.xn1, cache: c, dA: &dA, dB: &dB)
            rmsnormBackwardImpl(dInp: &dx, dWeight: nil, dOut: dxn1, inp: x, weight: norm1, rows: T, channels: C,
                                epsilon: Self.eps)
            return (dA, dB, dx)
        }
    }

    @Test func transformerBlockLoRAGradientsMatchFiniteDifferences() {
        let block = TinyBlock()
        let (dA, dB, dx) = block.backward()
        for (name, _, _, _) in TinyBlock.projections {
            var a = block.a[name]!
            let na = G.numericGradient(&a) { v in var m = block; m.a[name] = v; return m.loss() }
            var b = block.b[name]!
            let nb = G.numericGradient(&b) { v in var m = block; m.b[name] = v; return m.loss() }
            #expect(G.relativeError(dA[name]!, na) < Self.fdTolerance, "dA \(name)")
            #expect(G.relativeError(dB[name]!, nb) < Self.fdTolerance, "dB \(name)")
            #expect(na.contains { abs($0) > 1e-3 } && nb.contains { abs($0) > 1e-3 }, "\(name) gradient not trivial")
        }
        // The input gradient too (what the previous block would receive).
        var xs = block.x
        let nx = G.numericGradient(&xs) { v in var m = block; m.x = v; return m.loss() }
        #expect(G.relativeError(dx, nx) < Self.fdTolerance, "dx")
    }
}
