// Attention benchmark: the previous Float paths (copied below: many single-threaded sgemm per query
// head in causal blocks of 64 rows, Swift softmax/dS loops; decode with two sgemv per head) against
// the current `attentionTrainForward` / `attentionBackward` / `attentionForward`, back to back in one
// process, after checking that both agree.
// Run: swift run -c release --scratch-path .build-attn attention-bench   (… attention-bench profile: only the
// new training path, 40 forward+backward calls, for perf record)
import Dispatch
import Kernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
func f(_ x: Double, _ d: Int = 2) -> String {
    let p = (0..<d).reduce(1.0) { a, _ in a * 10 }
    var s = "\((x * p).rounded() / p)"
    while s.count < 9 { s = " " + s }
    return s
}

/// Times `old` and `new` interleaved (old, new, old, new, …: both see the same load on a shared machine):
/// ((best, median) of old, (best, median) of new) in seconds per call, over `runs` rounds of `inner` calls.
func timePair(runs: Int = 11, inner: Int, _ old: () -> Void, _ new: () -> Void) -> ((Double, Double), (Double, Double)) {
    old(); new()
    var to: [Double] = [], tn: [Double] = []
    for _ in 0..<runs {
        var t0 = now()
        for _ in 0..<inner { old() }
        to.append((now() - t0) / Double(inner))
        t0 = now()
        for _ in 0..<inner { new() }
        tn.append((now() - t0) / Double(inner))
    }
    to.sort(); tn.sort()
    return ((to[0], to[runs / 2]), (tn[0], tn[runs / 2]))
}

var state: UInt64 = 12345
func fill(_ p: UnsafeMutablePointer<Float>, _ n: Int, _ scale: Float = 1) {
    for i in 0..<n {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        p[i] = (Float(state >> 40) / Float(1 << 24) * 2 - 1) * scale
    }
}
func buffer(_ n: Int) -> UnsafeMutablePointer<Float> {
    let p = UnsafeMutablePointer<Float>.allocate(capacity: max(1, n)); p.initialize(repeating: 0, count: max(1, n)); return p
}
func maxRel(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var s: Float = 1e-12, e: Float = 0
    for i in 0..<n { s = max(s, abs(b[i])); e = max(e, abs(a[i] - b[i])) }
    return e / s
}

// MARK: - The previous implementation (Float), verbatim in substance

enum Old {
    static let block = 64

    static func keyStart(_ seg: UnsafePointer<Int>?, _ t0: Int, _ t1: Int) -> Int {
        guard let s = seg else { return 0 }
        var lo = t1
        for t in t0..<t1 { lo = min(lo, min(max(0, s[t]), t)) }
        return lo
    }

    static func probabilities(_ p: UnsafeMutablePointer<Float>, qh: UnsafePointer<Float>, kh: UnsafePointer<Float>,
                              seg: UnsafePointer<Int>?, _ t0: Int, _ t1: Int, _ k0: Int, T: Int, D: Int,
                              qDim: Int, kvDim: Int, scale: Float) {
        BLAS.sgemm(transA: false, transB: true, m: t1 - t0, n: t1 - k0, k: D, alpha: scale, a: qh + t0 * qDim, lda: qDim,
                   b: kh + k0 * kvDim, ldb: kvDim, beta: 0, c: p + t0 * T + k0, ldc: T)
        for t in t0..<t1 {
            let row = p + t * T
            let lo = seg.map { min(max(0, $0[t]), t) } ?? 0, hi = t + 1
            if lo > k0 { (row + k0).update(repeating: 0, count: lo - k0) }
            softmaxForward(x: row + lo, count: hi - lo)
            if hi < t1 { (row + hi).update(repeating: 0, count: t1 - hi) }
        }
    }

    static func trainForward(out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                             v: UnsafePointer<Float>, seg: UnsafePointer<Int>?, scratch: UnsafeMutablePointer<Float>,
                             T: Int, heads: Int, kvHeads: Int, D: Int, batch: Int, threads: Int) {
        let qDim = heads * D, kvDim = kvHeads * D, group = heads / kvHeads
        let scale = 1 / Float(D).squareRoot()
        let workers = max(1, min(threads, heads)), items = batch * heads
        parallelFor(min(workers, items)) { w in
            let p = scratch + w * T * T
            var item = w
            while item < items {
                let b = item / heads, h = item % heads, j = h / group
                let oh = out + b * T * qDim + h * D, qh = q + b * T * qDim + h * D
                let kj = k + b * T * kvDim + j * D, vj = v + b * T * kvDim + j * D
                let s = seg.map { $0 + b * T }
                var t0 = 0
                while t0 < T {
                    let t1 = min(T, t0 + block), k0 = keyStart(s, t0, t1)
                    probabilities(p, qh: qh, kh: kj, seg: s, t0, t1, k0, T: T, D: D, qDim: qDim, kvDim: kvDim, scale: scale)
                    BLAS.sgemm(m: t1 - t0, n: D, k: t1 - k0, a: p + t0 * T + k0, lda: T, b: vj + k0 * kvDim, ldb: kvDim,
                               c: oh + t0 * qDim, ldc: qDim)
                    t0 = t1
                }
                item += workers
            }
        }
    }

    static func headBackward(dQh: UnsafeMutablePointer<Float>, dKj: UnsafeMutablePointer<Float>,
                             dVj: UnsafeMutablePointer<Float>, dOh: UnsafePointer<Float>, qh: UnsafePointer<Float>,
                             kj: UnsafePointer<Float>, vj: UnsafePointer<Float>, seg: UnsafePointer<Int>?,
                             p: UnsafeMutablePointer<Float>, dp: UnsafeMutablePointer<Float>, T: Int, D: Int,
                             qDim: Int, kvDim: Int, scale: Float) {
        var t0 = 0
        while t0 < T {
            let t1 = min(T, t0 + block), m = t1 - t0
            let k0 = keyStart(seg, t0, t1), n = t1 - k0
            probabilities(p, qh: qh, kh: kj, seg: seg, t0, t1, k0, T: T, D: D, qDim: qDim, kvDim: kvDim, scale: scale)
            let pb = p + t0 * T + k0, db = dp + t0 * T + k0
            BLAS.sgemm(transB: true, m: m, n: n, k: D, a: dOh + t0 * qDim, lda: qDim, b: vj + k0 * kvDim, ldb: kvDim,
                       c: db, ldc: T)
            for t in t0..<t1 {
                let pr = p + t * T, dr = dp + t * T
                let lo = seg.map { min(max(0, $0[t]), t) } ?? 0, hi = t + 1
                var dot: Float = 0
                for s in lo..<hi { dot += pr[s] * dr[s] }
                if lo > k0 { (dr + k0).update(repeating: 0, count: lo - k0) }
                for s in lo..<hi { dr[s] = pr[s] * (dr[s] - dot) }
                if hi < t1 { (dr + hi).update(repeating: 0, count: t1 - hi) }
            }
            BLAS.sgemm(m: m, n: D, k: n, alpha: scale, a: db, lda: T, b: kj + k0 * kvDim, ldb: kvDim, beta: 1,
                       c: dQh + t0 * qDim, ldc: qDim)
            BLAS.sgemm(transA: true, m: n, n: D, k: m, alpha: scale, a: db, lda: T, b: qh + t0 * qDim, ldb: qDim,
                       beta: 1, c: dKj + k0 * kvDim, ldc: kvDim)
            BLAS.sgemm(transA: true, m: n, n: D, k: m, a: pb, lda: T, b: dOh + t0 * qDim, ldb: qDim, beta: 1,
                       c: dVj + k0 * kvDim, ldc: kvDim)
            t0 = t1
        }
    }

    /// The (row, kv head) split of the old backward (the shapes benchmarked here all balance).
    static func backward(dQ: UnsafeMutablePointer<Float>, dK: UnsafeMutablePointer<Float>, dV: UnsafeMutablePointer<Float>,
                         dOut: UnsafePointer<Float>, q: UnsafePointer<Float>, k: UnsafePointer<Float>,
                         v: UnsafePointer<Float>, seg: UnsafePointer<Int>?, scratch: UnsafeMutablePointer<Float>,
                         T: Int, heads: Int, kvHeads: Int, D: Int, batch: Int, threads: Int) {
        let qDim = heads * D, kvDim = kvHeads * D, group = heads / kvHeads
        let scale = 1 / Float(D).squareRoot()
        let workers = max(1, min(threads, heads)), groupItems = batch * kvHeads
        parallelFor(min(workers, groupItems)) { w in
            let p = scratch + w * 2 * T * T, dp = p + T * T
            var item = w
            while item < groupItems {
                let b = item / kvHeads, j = item % kvHeads
                let s = seg.map { $0 + b * T }
                for h in (j * group)..<((j + 1) * group) {
                    let qo = b * T * qDim + h * D, ko = b * T * kvDim + j * D
                    headBackward(dQh: dQ + qo, dKj: dK + ko, dVj: dV + ko, dOh: dOut + qo, qh: q + qo, kj: k + ko,
                                 vj: v + ko, seg: s, p: p, dp: dp, T: T, D: D, qDim: qDim, kvDim: kvDim, scale: scale)
                }
                item += workers
            }
        }
    }

    /// The old decode: two sgemv per query head.
    static func decode(out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>, keys: UnsafePointer<Float>,
                       values: UnsafePointer<Float>, scratch: UnsafeMutablePointer<Float>, S: Int, heads: Int,
                       kvHeads: Int, D: Int, threads: Int) {
        let kvDim = kvHeads * D, group = heads / kvHeads
        let scale = 1 / Float(D).squareRoot()
        let workers = max(1, min(threads, heads))
        parallelFor(workers) { w in
            let att = scratch + w * S
            var h = w
            while h < heads {
                let qh = q + h * D, oh = out + h * D
                let kh = keys + (h / group) * D, vh = values + (h / group) * D
                BLAS.sgemv(m: S, n: D, alpha: scale, a: kh, lda: kvDim, x: qh, y: att)
                softmaxForward(x: att, count: S)
                BLAS.sgemv(trans: true, m: S, n: D, a: vh, lda: kvDim, x: att, y: oh)
                h += workers
            }
        }
    }
}

// MARK: - Benchmarks

let threads = coreCount
print("cores: \(coreCount), AVX2: \(cpuHasAVX2)")
do {   // calibration: what one core's OpenBLAS sgemm reaches on this machine right now
    let n = 768
    let a = buffer(n * n), b = buffer(n * n), c = buffer(n * n)
    fill(a, n * n); fill(b, n * n)
    let (t, _) = timePair(runs: 5, inner: 2, { BLAS.sgemm(m: n, n: n, k: n, a: a, b: b, c: c) }, {})
    let fl = 2 * Double(n * n * n)
    print("calibration: 1-thread OpenBLAS sgemm \(n)³: \(f(fl / t.0 / 1e9, 1)) GF/s (best), \(f(fl / t.1 / 1e9, 1)) (median)")
}
let (heads, kvHeads, D) = (9, 3, 64)
let qDim = heads * D, kvDim = kvHeads * D

do {
    let (T, batch) = (256, 4)
    let nq = batch * T * qDim, nkv = batch * T * kvDim
    let q = buffer(nq), k = buffer(nkv), v = buffer(nkv), dO = buffer(nq)
    fill(q, nq, 2); fill(k, nkv, 2); fill(v, nkv); fill(dO, nq)
    let outOld = buffer(nq), outNew = buffer(nq)
    let dqO = buffer(nq), dkO = buffer(nkv), dvO = buffer(nkv), dqN = buffer(nq), dkN = buffer(nkv), dvN = buffer(nkv)
    let oldScratch = buffer(threads * 2 * T * T)
    let newScratch = buffer(max(attentionTrainForwardScratchCount(tokens: T, heads: heads, threads: threads),
                                attentionBackwardScratchCount(tokens: T, heads: heads, kvHeads: kvHeads, headDim: D,
                                                              threads: threads)))
    // Useful flops (lower triangle incl. diagonal): forward 2 GEMMs, backward 5 (S recompute, dP, dQ, dK, dV).
    let pairs = Double(T * (T + 1) / 2)
    let fwdFlops = Double(batch * heads) * 2 * 2 * pairs * Double(D)
    let bwdFlops = Double(batch * heads) * 5 * 2 * pairs * Double(D)
    // Packed documents of ~64 tokens, boundaries not on the 64-token blocks.
    let bounds = [0, 57, 121, 185, 249]
    let segStarts = (0..<(batch * T)).map { i -> Int in let t = i % T; return bounds.last { $0 <= t }! }
    print("\ntraining attention, T \(T) × batch \(batch), heads \(heads)/\(kvHeads), D \(D), \(threads) threads")
    print("                       old best  old median  new best  new median (ms)  old GF/s  new GF/s  (best)  speed-up best, median")
    for segmented in [false, true] {
        segStarts.withUnsafeBufferPointer { sp in
            let seg = segmented ? sp.baseAddress : nil
            Old.trainForward(out: outOld, q: q, k: k, v: v, seg: seg, scratch: oldScratch, T: T, heads: heads,
                             kvHeads: kvHeads, D: D, batch: batch, threads: threads)
            attentionTrainForward(out: outNew, q: q, k: k, v: v, segmentStart: seg, scratch: newScratch, tokens: T,
                                  heads: heads, kvHeads: kvHeads, headDim: D, batch: batch, threads: threads)
            let e1 = maxRel(outNew, outOld, nq)
            for p in [dqO, dkO, dvO, dqN, dkN, dvN] { p.update(repeating: 0, count: p == dqO || p == dqN ? nq : nkv) }
            Old.backward(dQ: dqO, dK: dkO, dV: dvO, dOut: dO, q: q, k: k, v: v, seg: seg, scratch: oldScratch, T: T,
                         heads: heads, kvHeads: kvHeads, D: D, batch: batch, threads: threads)
            attentionBackward(dQ: dqN, dK: dkN, dV: dvN, dOut: dO, q: q, k: k, v: v, segmentStart: seg,
                              scratch: newScratch, tokens: T, heads: heads, kvHeads: kvHeads, headDim: D, batch: batch,
                              threads: threads)
            let e2 = max(maxRel(dqN, dqO, nq), maxRel(dkN, dkO, nkv), maxRel(dvN, dvO, nkv))
            if CommandLine.arguments.contains("profile") {     // new training path only, for perf
                for _ in 0..<40 {
                    attentionTrainForward(out: outNew, q: q, k: k, v: v, segmentStart: seg, scratch: newScratch,
                                          tokens: T, heads: heads, kvHeads: kvHeads, headDim: D, batch: batch,
                                          threads: threads)
                    attentionBackward(dQ: dqN, dK: dkN, dV: dvN, dOut: dO, q: q, k: k, v: v, segmentStart: seg,
                                      scratch: newScratch, tokens: T, heads: heads, kvHeads: kvHeads, headDim: D,
                                      batch: batch, threads: threads)
                }
                exit(0)
            }
            let (fo, fn) = timePair(inner: 5, {
                Old.trainForward(out: outOld, q: q, k: k, v: v, seg: seg, scratch: oldScratch, T: T, heads: heads,
                                 kvHeads: kvHeads, D: D, batch: batch, threads: threads)
            }, {
                attentionTrainForward(out: outNew, q: q, k: k, v: v, segmentStart: seg, scratch: newScratch, tokens: T,
                                      heads: heads, kvHeads: kvHeads, headDim: D, batch: batch, threads: threads)
            })
            let (bo, bn) = timePair(inner: 3, {
                Old.backward(dQ: dqO, dK: dkO, dV: dvO, dOut: dO, q: q, k: k, v: v, seg: seg, scratch: oldScratch, T: T,
                             heads: heads, kvHeads: kvHeads, D: D, batch: batch, threads: threads)
            }, {
                attentionBackward(dQ: dqN, dK: dkN, dV: dvN, dOut: dO, q: q, k: k, v: v, segmentStart: seg,
                                  scratch: newScratch, tokens: T, heads: heads, kvHeads: kvHeads, headDim: D,
                                  batch: batch, threads: threads)
            })
            let tag = segmented ? " (segments ~64)" : " (causal)      "
            // Useful pairs: causal lower triangle, and with segments only same-document pairs.
            let segPairs = Double((0..<T).reduce(0) { $0 + $1 - segStarts[$1] + 1 })
            let pf = segmented ? segPairs / pairs : 1
            for (name, o, n, fl0) in [("forward ", fo, fn, fwdFlops), ("backward", bo, bn, bwdFlops)] {
                let fl = fl0 * pf
                print("  \(name)\(tag)\(f(o.0 * 1e3))\(f(o.1 * 1e3, 2))   \(f(n.0 * 1e3))\(f(n.1 * 1e3))    "
                      + "\(f(fl / o.0 / 1e9, 1)) \(f(fl / n.0 / 1e9, 1))  \(f(o.0 / n.0))x  \(f(o.1 / n.1))x")
            }
            print("    max rel. diff new vs old: forward \(e1), backward \(e2)")
        }
    }
}

do {
    print("\ndecode (T = 1), heads \(heads)/\(kvHeads), D \(D), \(threads) threads: µs per layer call")
    print("  context   old best  old median  new best  new median  speed-up best, median")
    for S in [64, 256, 1024] {
        let q = buffer(qDim), k = buffer(S * kvDim), v = buffer(S * kvDim)
        fill(q, qDim, 2); fill(k, S * kvDim, 2); fill(v, S * kvDim)
        let outOld = buffer(qDim), outNew = buffer(qDim)
        let so = buffer(threads * S), sn = buffer(attentionScratchCount(tokens: 1, keys: S, heads: heads, threads: threads))
        Old.decode(out: outOld, q: q, keys: k, values: v, scratch: so, S: S, heads: heads, kvHeads: kvHeads, D: D,
                   threads: threads)
        attentionForward(out: outNew, q: q, keys: k, values: v, scratch: sn, tokens: 1, startPosition: S - 1,
                         heads: heads, kvHeads: kvHeads, headDim: D, threads: threads)
        let e = maxRel(outNew, outOld, qDim)
        let inner = 2000
        let (o, n) = timePair(runs: 11, inner: inner, {
            Old.decode(out: outOld, q: q, keys: k, values: v, scratch: so, S: S, heads: heads, kvHeads: kvHeads, D: D,
                       threads: threads)
        }, {
            attentionForward(out: outNew, q: q, keys: k, values: v, scratch: sn, tokens: 1, startPosition: S - 1,
                             heads: heads, kvHeads: kvHeads, headDim: D, threads: threads)
        })
        print("  \(String(S) + String(repeating: " ", count: 6 - String(S).count))\(f(o.0 * 1e6))\(f(o.1 * 1e6))   "
              + "\(f(n.0 * 1e6))\(f(n.1 * 1e6))  \(f(o.0 / n.0))x \(f(o.1 / n.1))x  (max rel. diff \(e))")
    }
}
