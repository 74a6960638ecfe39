import Foundation
import Testing
@testable import Kernels

/// The Float attention entry points (AVX2 kernels of `_CKernels/attention.c` where they apply, the
/// generic bodies otherwise) against Double references, on shapes with tails: the generic `…Impl` run
/// in Double for training (itself checked against finite differences and a naive loop in
/// BackwardTests) and a naive Double loop for decode. Each case runs on the AVX2 and the portable
/// bodies (`forcePortableKernels`).
@Suite(.serialized) struct AttentionTests {
    typealias G = GradCheck
    static let tolerance = 2e-4      // Float vs Double, relative to the largest reference value

    /// Segment starts for `batch` rows of T tokens: documents starting at 0, 2T/7 and 3T/5 (packed examples).
    static func segments(T: Int, batch: Int) -> [Int] {
        let row = (0..<T).map { t in t >= 3 * T / 5 ? 3 * T / 5 : (t >= 2 * T / 7 ? 2 * T / 7 : 0) }
        return Array(Array(repeating: row, count: batch).joined())
    }

    static func withOptional<R>(_ a: [Int]?, _ body: (UnsafePointer<Int>?) -> R) -> R {
        if let a { return a.withUnsafeBufferPointer { body($0.baseAddress) } }
        return body(nil)
    }

    @Test(arguments: [(9, 3), (4, 4), (8, 2)])
    func trainingMatchesDoubleReference(heads: Int, kvHeads: Int) {
        defer { forcePortableKernels(false) }
        let batch = 2
        for D in [64, 32, 24] {
            for T in [1, 5, 63, 64, 65, 200] {
                let qDim = heads * D, kvDim = kvHeads * D
                let q = G.values(batch * T * qDim, seed: UInt64(T * 31 + D), scale: 2)
                let k = G.values(batch * T * kvDim, seed: UInt64(T * 37 + D), scale: 2)
                let v = G.values(batch * T * kvDim, seed: UInt64(T * 41 + D))
                let dO = G.values(batch * T * qDim, seed: UInt64(T * 43 + D))
                for mask in ["causal", "documents", "arbitrary"] {
                    // arbitrary: any segmentStart[t] ≤ t, not monotone (a sliding window of random width).
                    let seg: [Int]? = mask == "causal" ? nil : mask == "documents" ? Self.segments(T: T, batch: batch)
                        : (0..<(batch * T)).map { i in let t = i % T; return t - (i &* 2_654_435_761 >> 7) % (t + 1) }
                    // Double reference: the generic bodies, one worker; gradients start at 0.5 (backward adds).
                    var out = [Double](repeating: .nan, count: q.count)
                    var dq = [Double](repeating: 0.5, count: q.count), dk = [Double](repeating: 0.5, count: k.count)
                    var dv = dk
                    var fs = [Double](repeating: 0, count: attentionTrainForwardScratchCount(tokens: T, heads: heads,
                                                                                             threads: 1))
                    var bs = [Double](repeating: 0, count: attentionBackwardScratchCount(tokens: T, heads: heads,
                                                                                         kvHeads: kvHeads, headDim: D,
                                                                                         threads: 1))
                    Self.withOptional(seg) { sp in
                        attentionTrainForwardImpl(out: &out, q: q, k: k, v: v, segmentStart: sp, scratch: &fs, tokens: T,
                                                  heads: heads, kvHeads: kvHeads, headDim: D, batch: batch, threads: 1)
                        attentionBackwardImpl(dQ: &dq, dK: &dk, dV: &dv, dOut: dO, q: q, k: k, v: v, segmentStart: sp,
                                              scratch: &bs, tokens: T, heads: heads, kvHeads: kvHeads, headDim: D,
                                              batch: batch, threads: 1)
                    }
                    for portable in cpuHasAVX2 ? [false, true] : [true] {
                        forcePortableKernels(portable)
                        let kernel = attentionKernelApplies(heads: heads, kvHeads: kvHeads, headDim: D)
                        #expect(kernel == (!portable && D % 16 == 0), "which body runs")
                        for threads in [1, 2] {
                            let (fq, fk, fv, fdO) = (G.float(q), G.float(k), G.float(v), G.float(dO))
                            var fout = [Float](repeating: .nan, count: q.count)
                            var fdq = [Float](repeating: 0.5, count: q.count), fdk = [Float](repeating: 0.5, count: k.count)
                            var fdv = fdk
                            // NaN-filled scratch: the kernels must not read what they did not write.
                            var ffs = [Float](repeating: .nan, count: attentionTrainForwardScratchCount(
                                tokens: T, heads: heads, threads: threads))
                            var fbs = [Float](repeating: .nan, count: attentionBackwardScratchCount(
                                tokens: T, heads: heads, kvHeads: kvHeads, headDim: D, threads: threads))
                            Self.withOptional(seg) { sp in
                                attentionTrainForward(out: &fout, q: fq, k: fk, v: fv, segmentStart: sp, scratch: &ffs,
                                                      tokens: T, heads: heads, kvHeads: kvHeads, headDim: D,
                                                      batch: batch, threads: threads)
                                attentionBackward(dQ: &fdq, dK: &fdk, dV: &fdv, dOut: fdO, q: fq, k: fk, v: fv,
                                                  segmentStart: sp, scratch: &fbs, tokens: T, heads: heads,
                                                  kvHeads: kvHeads, headDim: D, batch: batch, threads: threads)
                            }
                            let label = "\(portable ? "portable" : "avx2") heads \(heads)/\(kvHeads) D \(D) T \(T) "
                                + "mask \(mask) threads \(threads)"
                            #expect(G.relativeError(fout, out) < Self.tolerance, "out \(label)")
                            #expect(G.relativeError(fdq, dq) < Self.tolerance, "dQ \(label)")
                            #expect(G.relativeError(fdk, dk) < Self.tolerance, "dK \(label)")
                            #expect(G.relativeError(fdv, dv) < Self.tolerance, "dV \(label)")
                        }
                        // One row over two workers with (row, kv head) pairs that don't divide: the split
                        // forward ranges and the private-accumulator backward.
                        do {
                            let nq = T * qDim, nkv = T * kvDim
                            var fout = [Float](repeating: .nan, count: nq)
                            var fdq = [Float](repeating: 0.5, count: nq), fdk = [Float](repeating: 0.5, count: nkv)
                            var fdv = fdk
                            var ffs = [Float](repeating: .nan, count: attentionTrainForwardScratchCount(
                                tokens: T, heads: heads, threads: 2))
                            var fbs = [Float](repeating: .nan, count: attentionBackwardScratchCount(
                                tokens: T, heads: heads, kvHeads: kvHeads, headDim: D, threads: 2))
                            Self.withOptional(seg.map { Array($0[..<T]) }) { sp in
                                attentionTrainForward(out: &fout, q: G.float(q), k: G.float(k), v: G.float(v),
                                                      segmentStart: sp, scratch: &ffs, tokens: T, heads: heads,
                                                      kvHeads: kvHeads, headDim: D, batch: 1, threads: 2)
                                attentionBackward(dQ: &fdq, dK: &fdk, dV: &fdv, dOut: G.float(dO), q: G.float(q),
                                                  k: G.float(k), v: G.float(v), segmentStart: sp, scratch: &fbs,
                                                  tokens: T, heads: heads, kvHeads: kvHeads, headDim: D, batch: 1,
                                                  threads: 2)
                            }
                            let label = "\(portable ? "portable" : "avx2") one row heads \(heads)/\(kvHeads) D \(D) T \(T) mask \(mask)"
                            #expect(G.relativeError(fout, Array(out[..<nq])) < Self.tolerance, "out \(label)")
                            #expect(G.relativeError(fdq, Array(dq[..<nq])) < Self.tolerance, "dQ \(label)")
                            #expect(G.relativeError(fdk, Array(dk[..<nkv])) < Self.tolerance, "dK \(label)")
                            #expect(G.relativeError(fdv, Array(dv[..<nkv])) < Self.tolerance, "dV \(label)")
                        }
                    }
                }
            }
        }
    }

    /// Decode (T == 1) over contexts 1 … 1024 with and without a sliding window, against a naive Double
    /// loop; the kv head's query heads run together, split over the workers in runs that may cut a kv
    /// head's group (9/3 on 2 workers: heads 0–4 and 5–8). The scratch stays NaN-filled: decode needs none.
    @Test(arguments: [(9, 3), (4, 4), (8, 2)])
    func decodeMatchesDoubleReference(heads: Int, kvHeads: Int) {
        defer { forcePortableKernels(false) }
        for D in [64, 32, 24, 20] {
            for S in [1, 7, 64, 65, 300, 1024] {
                for window in [nil, 5, 100] as [Int?] {
                    let qDim = heads * D, kvDim = kvHeads * D
                    let q = G.values(qDim, seed: UInt64(S + D), scale: 3), k = G.values(S * kvDim, seed: UInt64(S + 7), scale: 2)
                    let v = G.values(S * kvDim, seed: UInt64(S + 9))
                    var ref = [Double](repeating: 0, count: qDim)
                    let lo = window.map { max(0, S - $0) } ?? 0
                    for h in 0..<heads {
                        let j = h / (heads / kvHeads)
                        let s = (lo..<S).map { p in
                            (0..<D).reduce(0.0) { $0 + q[h * D + $1] * k[p * kvDim + j * D + $1] } / Double(D).squareRoot()
                        }
                        let m = s.max()!, e = s.map { Foundation.exp($0 - m) }, z = e.reduce(0, +)
                        for i in 0..<D {
                            ref[h * D + i] = zip(lo..<S, e).reduce(0.0) { $0 + $1.1 / z * v[$1.0 * kvDim + j * D + i] }
                        }
                    }
                    for portable in cpuHasAVX2 ? [false, true] : [true] {
                        forcePortableKernels(portable)
                        for threads in [1, 2] {
                            var out = [Float](repeating: .nan, count: qDim)
                            var scratch = [Float](repeating: .nan, count: attentionScratchCount(tokens: 1, keys: S,
                                                                                                heads: heads, threads: threads))
                            attentionForward(out: &out, q: G.float(q), keys: G.float(k), values: G.float(v),
                                             scratch: &scratch, tokens: 1, startPosition: S - 1, heads: heads,
                                             kvHeads: kvHeads, headDim: D, window: window, threads: threads)
                            #expect(G.relativeError(out, ref) < 1e-5,
                                    "\(portable ? "portable" : "avx2") heads \(heads)/\(kvHeads) D \(D) context \(S) window \(String(describing: window)) threads \(threads)")
                        }
                    }
                }
            }
        }
    }

    /// The scratch counts cover what the kernels use: the training kernels' tiles fit in the forward
    /// count and the backward count keeps room for the generic body and the private accumulators.
    @Test func scratchCountsCoverTheKernels() {
        for (T, heads, kvHeads, D) in [(1, 9, 3, 64), (5, 9, 3, 64), (65, 8, 2, 32), (256, 9, 3, 64), (2048, 32, 8, 128)] {
            for threads in [1, 2] {
                let workers = min(threads, heads), g = heads / kvHeads
                let f = attentionTrainForwardScratchCount(tokens: T, heads: heads, threads: threads)
                #expect(f >= workers * T * T && f >= workers * attentionKernelForwardScratch(tokens: T, group: g, headDim: D))
                let b = attentionBackwardScratchCount(tokens: T, heads: heads, kvHeads: kvHeads, headDim: D, threads: threads)
                let acc = threads > 1 ? 2 * T * kvHeads * D : 0
                #expect(b >= workers * (2 * T * T + acc))
                #expect(b >= workers * (attentionKernelBackwardScratch(tokens: T, group: g, headDim: D) + acc))
                #expect(b >= workers * (attentionKernelBackwardScratch(tokens: T, group: 1, headDim: D) + acc))
            }
        }
    }
}
