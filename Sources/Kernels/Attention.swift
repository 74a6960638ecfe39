import _CKernels

// Causal grouped-query attention: training forward and backward (no KV cache, positions 0 ..< T,
// optional document mask) and inference over a KV cache (`attentionForward`, decode when T == 1).
// Outputs first, then inputs, then sizes (llm.c order). Nothing allocates: scratch comes from the
// caller (`…ScratchCount` tells how much).
//
// The Float entry points use the AVX2 kernels of `_CKernels/attention.c` when they can (AVX2+FMA,
// not `forcePortableKernels`, head dim a multiple of 16, scratch large enough) and otherwise the
// generic `…Impl` bodies (BLAS + Swift loops), which are also what the Double gradient checks run.

/// Causal grouped-query attention for T new tokens at positions startPosition ..< startPosition+T.
///
/// - out: [T, heads·D]; q: [T, heads·D] (already rotated)
/// - keys, values: the cache rows for positions 0 ..< startPosition+T, each row kvHeads·D floats
///   (already holding the new tokens' rotated keys and values)
/// - scratch: `attentionScratchCount(tokens:keys:workers:)` floats
/// - window: if set, a query at position p sees keys p−window+1 … p (Mistral's sliding window)
///
/// Query head h reads kv head h / (heads/kvHeads) (repeat_interleave).
///
/// T == 1 (decode): our kernel (`qlora_attention_decode`, AVX2 or portable) runs the query heads of
/// one kv head together, so each cache row is read once for all of them: scores, online softmax and
/// P·V over blocks of 64 positions; the query heads are split evenly over `threads` workers (see
/// `attentionDecode`); no scratch. T > 1: heads in parallel with single-threaded BLAS inside.
public func attentionForward(out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>,
                             keys: UnsafePointer<Float>, values: UnsafePointer<Float>,
                             scratch: UnsafeMutablePointer<Float>,
                             tokens T: Int, startPosition: Int, heads: Int, kvHeads: Int, headDim D: Int,
                             window: Int? = nil, threads: Int = coreCount) {
    let S = startPosition + T            // keys visible to the last query
    let qDim = heads * D, kvDim = kvHeads * D
    let group = heads / kvHeads
    let scale = 1 / Float(D).squareRoot()
    let workers = max(1, min(threads, heads))
    if T == 1 {
        let lo = window.map { max(0, S - $0) } ?? 0
        let n = S - lo
        attentionDecode(out: out, q: q, keys: keys + lo * kvDim, values: values + lo * kvDim, keys: n, heads: heads,
                        kvHeads: kvHeads, headDim: D, scale: scale, workers: workers)
        return
    }
    parallelFor(workers) { w in
        let att = scratch + w * T * S    // [T, S] scores of this worker's current head
        var h = w
        while h < heads {
            let qh = q + h * D, oh = out + h * D
            let kh = keys + (h / group) * D, vh = values + (h / group) * D
            BLAS.sgemm(transB: true, m: T, n: S, k: D, alpha: scale, a: qh, lda: qDim, b: kh, ldb: kvDim,
                       c: att, ldc: S)
            for t in 0..<T {
                let row = att + t * S
                let hi = startPosition + t + 1                    // keys 0 ..< hi are causal
                let lo = window.map { max(0, hi - $0) } ?? 0
                if lo > 0 { row.update(repeating: 0, count: lo) }
                qlora_softmax_forward(row + lo, Int64(hi - lo))
                if hi < S { (row + hi).update(repeating: 0, count: S - hi) }
            }
            BLAS.sgemm(m: T, n: D, k: S, a: att, lda: S, b: vh, ldb: kvDim, c: oh, ldc: qDim)
            h += workers
        }
    }
}

/// Floats of scratch `attentionForward` needs for T new tokens seeing S keys (decode, T == 1, uses none).
public func attentionScratchCount(tokens T: Int, keys S: Int, heads: Int, threads: Int = coreCount) -> Int {
    max(1, min(threads, heads)) * T * S
}

/// Decode over n cache positions (keys/values already offset to the first visible one). Worker w takes
/// the query heads [w·heads/W, (w+1)·heads/W) (balanced to one head), in runs that share a kv head, so
/// each cache row is read once per run: with 9/3 heads on 2 workers, 5 and 4 heads, kv head 1 read twice.
@inline(__always)
func attentionDecode(out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>, keys: UnsafePointer<Float>,
                     values: UnsafePointer<Float>, keys n: Int, heads: Int, kvHeads: Int, headDim D: Int,
                     scale: Float, workers: Int) {
    let g = heads / kvHeads, kvDim = kvHeads * D
    let used = max(1, min(workers, heads))
    parallelFor(used) { w in
        let h1 = heads * (w + 1) / used
        var h = heads * w / used
        while h < h1 {
            let j = h / g, end = min(h1, (j + 1) * g)
            qlora_attention_decode(out + h * D, q + h * D, keys + j * D, values + j * D, Int64(n), Int64(end - h),
                                   Int64(D), Int64(kvDim), scale)
            h = end
        }
    }
}

// MARK: - Attention (training: no KV cache, positions 0 ..< T)

/// Floats of scratch `attentionTrainForward` needs: per worker a [T, T] tile for the generic body, or
/// the AVX2 kernel's packed keys and values (2·T·D, sized for D ≤ 256) and [g·R, T] probability tile
/// (R = `attentionKernelBlockRows` query tokens, g ≤ heads).
public func attentionTrainForwardScratchCount(tokens T: Int, heads: Int, threads: Int = coreCount) -> Int {
    max(1, min(threads, heads)) * attentionTrainForwardPerWorker(tokens: T, heads: heads)
}

/// Per-worker floats of the forward scratch (sized for head dims up to 256, the kernel's limit).
@inline(__always)
func attentionTrainForwardPerWorker(tokens T: Int, heads: Int) -> Int {
    max(T * T, attentionKernelForwardScratch(tokens: T, group: heads, headDim: 256))
}

/// Floats of scratch `attentionBackward` needs: per worker two [T, T] score tiles (generic body) or the
/// AVX2 kernel's tiles, and private [T, kvHeads·D] dK/dV accumulators (query heads sharing a kv head
/// may run on different workers).
public func attentionBackwardScratchCount(tokens T: Int, heads: Int, kvHeads: Int, headDim D: Int,
                                          threads: Int = coreCount) -> Int {
    let workers = max(1, min(threads, heads))
    return workers * attentionBackwardPerWorker(tokens: T, heads: heads, kvHeads: kvHeads, headDim: D,
                                                workers: workers)
}

/// Per-worker floats of the backward scratch; the private dK/dV accumulators are its last 2·T·kvHeads·D.
@inline(__always)
func attentionBackwardPerWorker(tokens T: Int, heads: Int, kvHeads: Int, headDim D: Int, workers: Int) -> Int {
    let g = max(1, heads / max(1, kvHeads))
    let tiles = max(2 * T * T, attentionKernelBackwardScratch(tokens: T, group: g, headDim: D))
    return tiles + (workers > 1 ? 2 * T * kvHeads * D : 0)
}

/// Query tokens per block of the AVX2 training kernels (g·R stacked rows, at most 1024). At T = 256,
/// 9/3 heads, 16 and 32 measured alike and 64 slower (its [g·R, T] tiles no longer sit in L2).
@inline(__always)
func attentionKernelBlockRows(tokens T: Int, group g: Int) -> Int { max(1, min(T, 16, 1024 / max(1, g))) }

@inline(__always)
func attentionKernelForwardScratch(tokens T: Int, group g: Int, headDim D: Int) -> Int {
    Int(qlora_attention_train_scratch(Int64(T), Int64(g), Int64(D),
                                      Int64(attentionKernelBlockRows(tokens: T, group: g)), 0))
}

@inline(__always)
func attentionKernelBackwardScratch(tokens T: Int, group g: Int, headDim D: Int) -> Int {
    Int(qlora_attention_train_scratch(Int64(T), Int64(g), Int64(D),
                                      Int64(attentionKernelBlockRows(tokens: T, group: g)), 1))
}

/// Whether the AVX2 training kernels handle this shape (else the generic body runs).
@inline(__always)
func attentionKernelApplies(heads: Int, kvHeads: Int, headDim D: Int) -> Bool {
    kvHeads > 0 && heads % kvHeads == 0 && heads / kvHeads <= 1024 && D % 16 == 0 && D <= 256
        && qlora_attention_use_avx2() != 0
}

/// Segment starts as the C kernels' int64_t.
@inline(__always)
func int64Pointer(_ p: UnsafePointer<Int>?) -> UnsafePointer<Int64>? {
    p.map { UnsafeRawPointer($0).assumingMemoryBound(to: Int64.self) }
}

/// Query rows per causal block of the training attention: block i of queries [t0, t1) only reads
/// keys [min segment start, t1), so about (1 + 1/blocks)/2 of the T×T scores are computed.
let attentionBlockRows = 64

/// Causal grouped-query self-attention over T tokens at positions 0 ..< T (training; no KV cache),
/// for `batch` independent rows laid out one after the other.
///
/// - out: [batch, T, heads·D] (overwritten); q: [batch, T, heads·D]; k, v: [batch, T, kvHeads·D]
///   (q and k already rotated)
/// - segmentStart: optional [batch, T]; token t attends to s with segmentStart[t] ≤ s ≤ t (document
///   mask for packed examples; segmentStart[t] ≤ t). nil = plain causal (segmentStart[t] = 0).
/// - scratch: `attentionTrainForwardScratchCount` floats, computed with the same `threads`.
///
/// Scale 1/√D, softmax in float32, query head h reads kv head h / (heads/kvHeads). Nothing beyond
/// q, k, v (and `out`, which backward does not need) has to be kept: `attentionBackward` recomputes
/// the probabilities.
///
/// Float kernel (`qlora_attention_train_forward`, AVX2, D % 16 == 0): per (row, kv head) item the g
/// query heads are stacked token-major (g·R rows per block of R query tokens), keys packed once per
/// item into 16-key panels and values into contiguous column strips; per block S = scale·Q·Kᵀ into an
/// L2 tile (strips above a row group's last key or below its first document key skipped), masked
/// softmax rows, out = P·V, all with one 6×16 register micro-kernel. Items run over `threads` workers;
/// when the (row, kv head) pairs don't divide over them each pair is split into two token ranges of
/// equal causal cost. Otherwise (or forced portable) the generic body: (row, head) pairs over the
/// workers, single-threaded BLAS in causal blocks of query rows.
public func attentionTrainForward(out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>,
                                  k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                  segmentStart: UnsafePointer<Int>?, scratch: UnsafeMutablePointer<Float>,
                                  tokens T: Int, heads: Int, kvHeads: Int, headDim D: Int, batch: Int = 1,
                                  threads: Int = coreCount) {
    guard attentionKernelApplies(heads: heads, kvHeads: kvHeads, headDim: D) else {
        attentionTrainForwardImpl(out: out, q: q, k: k, v: v, segmentStart: segmentStart, scratch: scratch,
                                  tokens: T, heads: heads, kvHeads: kvHeads, headDim: D, batch: batch, threads: threads)
        return
    }
    let qDim = heads * D, kvDim = kvHeads * D, g = heads / kvHeads
    let scale = 1 / Float(D).squareRoot()
    let workers = max(1, min(threads, heads))
    let perWorker = attentionTrainForwardPerWorker(tokens: T, heads: heads)
    let R = attentionKernelBlockRows(tokens: T, group: g)
    guard attentionKernelForwardScratch(tokens: T, group: g, headDim: D) <= perWorker else {
        attentionTrainForwardImpl(out: out, q: q, k: k, v: v, segmentStart: segmentStart, scratch: scratch,
                                  tokens: T, heads: heads, kvHeads: kvHeads, headDim: D, batch: batch, threads: threads)
        return
    }
    // Items (row, kv head, part): when the (row, kv head) pairs don't divide over the workers, each is
    // cut into two token ranges of equal causal cost ([0, T/√2) and the rest).
    let pairs = batch * kvHeads
    let parts = workers > 1 && pairs % workers != 0 && T >= 2 * R ? 2 : 1
    let split = parts == 1 ? T : Int((Double(T) * 0.5.squareRoot()).rounded())
    let items = pairs * parts
    parallelFor(min(workers, items)) { w in
        let sc = scratch + w * perWorker
        var item = w
        while item < items {
            let pair = item / parts, part = item % parts
            let b = pair / kvHeads, j = pair % kvHeads
            let t0 = part == 0 ? 0 : split, t1 = parts == 1 || part == 1 ? T : split
            let qo = b * T * qDim + j * g * D, ko = b * T * kvDim + j * D
            qlora_attention_train_forward(out + qo, q + qo, k + ko, v + ko, int64Pointer(segmentStart.map { $0 + b * T }),
                                          sc, Int64(t0), Int64(t1), Int64(R), Int64(g), Int64(D), Int64(qDim),
                                          Int64(kvDim), scale)
            item += workers
        }
    }
}

/// First key any query of [t0, t1) may see: min over the block of its segment start (0 without segments).
@inline(__always)
func attentionBlockKeyStart(_ segmentStart: UnsafePointer<Int>?, _ t0: Int, _ t1: Int) -> Int {
    guard let s = segmentStart else { return 0 }
    var lo = t1
    for t in t0..<t1 { lo = min(lo, min(max(0, s[t]), t)) }
    return lo
}

/// P[t0 ..< t1, k0 ..< t1] (rows `T` apart, column = key index) = masked softmax(scale · q_h · k_jᵀ)
/// for one causal block of query rows; zeros at masked keys inside [k0, t1).
@inline(__always)
func attentionProbabilities<S: KernelScalar>(_ p: UnsafeMutablePointer<S>, qh: UnsafePointer<S>, kh: UnsafePointer<S>,
                                             segmentStart: UnsafePointer<Int>?, rows t0: Int, _ t1: Int,
                                             keyStart k0: Int, tokens T: Int, headDim D: Int,
                                             qDim: Int, kvDim: Int, scale: S) {
    S.gemm(transA: false, transB: true, m: t1 - t0, n: t1 - k0, k: D, alpha: scale, a: qh + t0 * qDim, lda: qDim,
           b: kh + k0 * kvDim, ldb: kvDim, beta: 0, c: p + t0 * T + k0, ldc: T)
    for t in t0..<t1 {
        let row = p + t * T
        let lo = segmentStart.map { min(max(0, $0[t]), t) } ?? 0, hi = t + 1
        if lo > k0 { (row + k0).update(repeating: 0, count: lo - k0) }
        S.softmaxRow(row + lo, hi - lo)
        if hi < t1 { (row + hi).update(repeating: 0, count: t1 - hi) }
    }
}

/// One (row, query head) of the training attention forward, in causal blocks of `block` query rows.
@inline(__always)
func attentionHeadForward<S: KernelScalar>(out oh: UnsafeMutablePointer<S>, qh: UnsafePointer<S>, kj: UnsafePointer<S>,
                                           vj: UnsafePointer<S>, segmentStart: UnsafePointer<Int>?,
                                           p: UnsafeMutablePointer<S>, tokens T: Int, headDim D: Int,
                                           qDim: Int, kvDim: Int, scale: S, block: Int) {
    var t0 = 0
    while t0 < T {
        let t1 = min(T, t0 + block)
        let k0 = attentionBlockKeyStart(segmentStart, t0, t1)
        attentionProbabilities(p, qh: qh, kh: kj, segmentStart: segmentStart, rows: t0, t1, keyStart: k0, tokens: T,
                               headDim: D, qDim: qDim, kvDim: kvDim, scale: scale)
        S.gemm(transA: false, transB: false, m: t1 - t0, n: D, k: t1 - k0, alpha: 1, a: p + t0 * T + k0, lda: T,
               b: vj + k0 * kvDim, ldb: kvDim, beta: 0, c: oh + t0 * qDim, ldc: qDim)
        t0 = t1
    }
}

func attentionTrainForwardImpl<S: KernelScalar>(out: UnsafeMutablePointer<S>, q: UnsafePointer<S>,
                                                k: UnsafePointer<S>, v: UnsafePointer<S>,
                                                segmentStart: UnsafePointer<Int>?, scratch: UnsafeMutablePointer<S>,
                                                tokens T: Int, heads: Int, kvHeads: Int, headDim D: Int,
                                                batch: Int = 1, threads: Int, block: Int = attentionBlockRows) {
    let qDim = heads * D, kvDim = kvHeads * D, group = heads / kvHeads
    let scale = 1 / S(D).squareRoot()
    let workers = max(1, min(threads, heads))        // = the scratch count's worker count
    let items = batch * heads
    parallelFor(min(workers, items)) { w in
        let p = scratch + w * T * T
        var item = w
        while item < items {
            let b = item / heads, h = item % heads, j = h / group
            attentionHeadForward(out: out + b * T * qDim + h * D, qh: q + b * T * qDim + h * D,
                                 kj: k + b * T * kvDim + j * D, vj: v + b * T * kvDim + j * D,
                                 segmentStart: segmentStart.map { $0 + b * T }, p: p, tokens: T, headDim: D,
                                 qDim: qDim, kvDim: kvDim, scale: scale, block: block)
            item += workers
        }
    }
}

/// Backward of `attentionTrainForward`, recomputing the softmax probabilities from q and k (no
/// [heads, T, T] tensor is kept between forward and backward).
///
/// With P = softmax(scale·q_h·k_jᵀ) (masked), dP = dOut_h·v_jᵀ, dS = P ⊙ (dP − rowsum(P ⊙ dP)):
/// dQ_h += scale·dS·k_j,  dK_j += scale·dSᵀ·q_h,  dV_j += Pᵀ·dOut_h (summed over the g query heads of
/// kv head j). dQ is [batch, T, heads·D]; dK, dV are [batch, T, kvHeads·D]; all three accumulate (`+=`).
/// dQ and dK are gradients of the ROTATED q, k: follow with `ropeBackward`.
/// Work is split over (row, kv head) pairs when they balance over the workers (each writes its own
/// dK/dV rows), else per row over query heads with private dK/dV accumulators.
/// Float kernel (`qlora_attention_train_backward`, same conditions as the forward's): per item and
/// block of query tokens, recompute P (S tile + softmax), dP = dO·vᵀ, the dS row pass
/// (scale folded in), then dQ += dS·k, dK += dSᵀ·Q, dV += Pᵀ·dO from stacked copies of the block's
/// q and dOut rows, skipping keys no row of a group can see.
/// scratch: `attentionBackwardScratchCount` floats, computed with the same `threads`.
public func attentionBackward(dQ: UnsafeMutablePointer<Float>, dK: UnsafeMutablePointer<Float>,
                              dV: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                              q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                              segmentStart: UnsafePointer<Int>?, scratch: UnsafeMutablePointer<Float>,
                              tokens T: Int, heads: Int, kvHeads: Int, headDim D: Int, batch: Int = 1,
                              threads: Int = coreCount) {
    guard attentionKernelApplies(heads: heads, kvHeads: kvHeads, headDim: D) else {
        attentionBackwardImpl(dQ: dQ, dK: dK, dV: dV, dOut: dOut, q: q, k: k, v: v, segmentStart: segmentStart,
                              scratch: scratch, tokens: T, heads: heads, kvHeads: kvHeads, headDim: D, batch: batch,
                              threads: threads)
        return
    }
    let qDim = heads * D, kvDim = kvHeads * D, g = heads / kvHeads
    let scale = 1 / Float(D).squareRoot()
    let workers = max(1, min(threads, heads))
    let perWorker = attentionBackwardPerWorker(tokens: T, heads: heads, kvHeads: kvHeads, headDim: D, workers: workers)
    let groupItems = batch * kvHeads
    if workers == 1 || groupItems % workers == 0 || groupItems >= 4 * workers {
        // (row, kv head) items with their g query heads stacked; each owns its dK/dV rows.
        let R = attentionKernelBlockRows(tokens: T, group: g)
        parallelFor(min(workers, groupItems)) { w in
            let sc = scratch + w * perWorker
            var item = w
            while item < groupItems {
                let b = item / kvHeads, j = item % kvHeads
                let qo = b * T * qDim + j * g * D, ko = b * T * kvDim + j * D
                qlora_attention_train_backward(dQ + qo, dK + ko, dV + ko, dOut + qo, q + qo, k + ko, v + ko,
                                               int64Pointer(segmentStart.map { $0 + b * T }), sc, Int64(T), Int64(R),
                                               Int64(g), Int64(D), Int64(qDim), Int64(kvDim), scale)
                item += workers
            }
        }
        return
    }
    // Per row, single query heads over the workers into private dK/dV accumulators, then summed.
    let R = attentionKernelBlockRows(tokens: T, group: 1)
    let accOffset = perWorker - 2 * T * kvDim
    for b in 0..<batch {
        let seg = int64Pointer(segmentStart.map { $0 + b * T })
        let qB = q + b * T * qDim, kB = k + b * T * kvDim, vB = v + b * T * kvDim, dOB = dOut + b * T * qDim
        let dQB = dQ + b * T * qDim, dKB = dK + b * T * kvDim, dVB = dV + b * T * kvDim
        parallelFor(workers) { w in
            let sc = scratch + w * perWorker
            let myDK = sc + accOffset, myDV = myDK + T * kvDim
            myDK.update(repeating: 0, count: 2 * T * kvDim)
            var h = w
            while h < heads {
                let j = h / g
                qlora_attention_train_backward(dQB + h * D, myDK + j * D, myDV + j * D, dOB + h * D, qB + h * D,
                                               kB + j * D, vB + j * D, seg, sc, Int64(T), Int64(R), 1, Int64(D),
                                               Int64(qDim), Int64(kvDim), scale)
                h += workers
            }
        }
        let n = T * kvDim
        for w in 0..<workers {
            let src = scratch + w * perWorker + accOffset
            for i in 0..<n { dKB[i] += src[i] }
            for i in 0..<n { dVB[i] += src[n + i] }
        }
    }
}

/// One query head's backward contribution, in causal blocks; p and dp are [T, T] scratch tiles.
@inline(__always)
func attentionHeadBackward<S: KernelScalar>(dQh: UnsafeMutablePointer<S>, dKj: UnsafeMutablePointer<S>,
                                            dVj: UnsafeMutablePointer<S>, dOh: UnsafePointer<S>,
                                            qh: UnsafePointer<S>, kj: UnsafePointer<S>, vj: UnsafePointer<S>,
                                            segmentStart: UnsafePointer<Int>?, p: UnsafeMutablePointer<S>,
                                            dp: UnsafeMutablePointer<S>, tokens T: Int, headDim D: Int,
                                            qDim: Int, kvDim: Int, scale: S, block: Int) {
    var t0 = 0
    while t0 < T {
        let t1 = min(T, t0 + block), m = t1 - t0
        let k0 = attentionBlockKeyStart(segmentStart, t0, t1), n = t1 - k0
        attentionProbabilities(p, qh: qh, kh: kj, segmentStart: segmentStart, rows: t0, t1, keyStart: k0, tokens: T,
                               headDim: D, qDim: qDim, kvDim: kvDim, scale: scale)
        let pb = p + t0 * T + k0, db = dp + t0 * T + k0
        // dP = dO_h · v_jᵀ
        S.gemm(transA: false, transB: true, m: m, n: n, k: D, alpha: 1, a: dOh + t0 * qDim, lda: qDim,
               b: vj + k0 * kvDim, ldb: kvDim, beta: 0, c: db, ldc: T)
        for t in t0..<t1 {
            let pr = p + t * T, dr = dp + t * T
            let lo = segmentStart.map { min(max(0, $0[t]), t) } ?? 0, hi = t + 1
            var dot: S = 0
            for s in lo..<hi { dot += pr[s] * dr[s] }
            if lo > k0 { (dr + k0).update(repeating: 0, count: lo - k0) }
            for s in lo..<hi { dr[s] = pr[s] * (dr[s] - dot) }
            if hi < t1 { (dr + hi).update(repeating: 0, count: t1 - hi) }
        }
        // dQ_h += scale · dS · k_j
        S.gemm(transA: false, transB: false, m: m, n: D, k: n, alpha: scale, a: db, lda: T, b: kj + k0 * kvDim,
               ldb: kvDim, beta: 1, c: dQh + t0 * qDim, ldc: qDim)
        // dK_j += scale · dSᵀ · q_h
        S.gemm(transA: true, transB: false, m: n, n: D, k: m, alpha: scale, a: db, lda: T, b: qh + t0 * qDim,
               ldb: qDim, beta: 1, c: dKj + k0 * kvDim, ldc: kvDim)
        // dV_j += Pᵀ · dO_h
        S.gemm(transA: true, transB: false, m: n, n: D, k: m, alpha: 1, a: pb, lda: T, b: dOh + t0 * qDim,
               ldb: qDim, beta: 1, c: dVj + k0 * kvDim, ldc: kvDim)
        t0 = t1
    }
}

func attentionBackwardImpl<S: KernelScalar>(dQ: UnsafeMutablePointer<S>, dK: UnsafeMutablePointer<S>,
                                            dV: UnsafeMutablePointer<S>, dOut: UnsafePointer<S>,
                                            q: UnsafePointer<S>, k: UnsafePointer<S>, v: UnsafePointer<S>,
                                            segmentStart: UnsafePointer<Int>?, scratch: UnsafeMutablePointer<S>,
                                            tokens T: Int, heads: Int, kvHeads: Int, headDim D: Int,
                                            batch: Int = 1, threads: Int, block: Int = attentionBlockRows) {
    let qDim = heads * D, kvDim = kvHeads * D, group = heads / kvHeads
    let scale = 1 / S(D).squareRoot()
    let workers = max(1, min(threads, heads))
    let perWorker = 2 * T * T + (workers > 1 ? 2 * T * kvDim : 0)
    // (row, kv head) items: every item owns its dK/dV rows, no private accumulators. Used when they
    // balance over the workers.
    let groupItems = batch * kvHeads
    if workers == 1 || groupItems % workers == 0 || groupItems >= 4 * workers {
        parallelFor(min(workers, groupItems)) { w in
            let p = scratch + w * perWorker, dp = p + T * T
            var item = w
            while item < groupItems {
                let b = item / kvHeads, j = item % kvHeads
                let seg = segmentStart.map { $0 + b * T }
                for h in (j * group)..<((j + 1) * group) {
                    let qo = b * T * qDim + h * D, ko = b * T * kvDim + j * D
                    attentionHeadBackward(dQh: dQ + qo, dKj: dK + ko, dVj: dV + ko, dOh: dOut + qo, qh: q + qo,
                                          kj: k + ko, vj: v + ko, segmentStart: seg, p: p, dp: dp, tokens: T,
                                          headDim: D, qDim: qDim, kvDim: kvDim, scale: scale, block: block)
                }
                item += workers
            }
        }
        return
    }
    for b in 0..<batch {
        let seg = segmentStart.map { $0 + b * T }
        let qB = q + b * T * qDim, kB = k + b * T * kvDim, vB = v + b * T * kvDim, dOB = dOut + b * T * qDim
        let dQB = dQ + b * T * qDim, dKB = dK + b * T * kvDim, dVB = dV + b * T * kvDim
        parallelFor(workers) { w in
            let base = scratch + w * perWorker
            let p = base, dp = base + T * T
            let myDK = base + 2 * T * T, myDV = myDK + T * kvDim
            myDK.update(repeating: 0, count: 2 * T * kvDim)
            var h = w
            while h < heads {
                let j = h / group
                attentionHeadBackward(dQh: dQB + h * D, dKj: myDK + j * D, dVj: myDV + j * D, dOh: dOB + h * D,
                                      qh: qB + h * D, kj: kB + j * D, vj: vB + j * D, segmentStart: seg, p: p, dp: dp,
                                      tokens: T, headDim: D, qDim: qDim, kvDim: kvDim, scale: scale, block: block)
                h += workers
            }
        }
        let n = T * kvDim
        for w in 0..<workers {
            let src = scratch + w * perWorker + 2 * T * T
            for i in 0..<n { dKB[i] += src[i] }
            for i in 0..<n { dVB[i] += src[n + i] }
        }
    }
}

