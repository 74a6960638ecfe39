#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import _CKernels

// Backward passes of the LLaMA block's ops (training), llm.c style: outputs (gradients) first, then
// inputs, then sizes. Gradients are named d + what they differentiate.
//
// Accumulation convention: every backward ADDS into every gradient buffer it writes (`+=`), activation
// gradients included, so branches (q/k/v reading the same x, residuals, LoRA beside the base weight)
// sum for free and gradient accumulation over micro-batches works. The caller zeroes gradients.
// Exceptions, documented at the function: `ropeBackward` (in place) and `crossEntropyBackward`
// (overwrites, may run in place over the logits).
//
// Nothing allocates: scratch comes from the caller (`…ScratchCount` tells how much).
//
// The bodies are generic over `KernelScalar` (Float and Double) so the tests can run the very same
// code in Double against finite differences; the public entry points are Float.

/// The element types the generic kernel bodies run on: Float in production, Double in gradient checks.
protocol KernelScalar: BinaryFloatingPoint {
    /// C[M,N] = alpha · op(A) · op(B) + beta · C, row-major (see `BLAS.sgemm`).
    static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Self,
                     a: UnsafePointer<Self>, lda: Int, b: UnsafePointer<Self>, ldb: Int,
                     beta: Self, c: UnsafeMutablePointer<Self>, ldc: Int)
    /// In place softmax of x[n] (n ≥ 1), accumulated in at least float32.
    static func softmaxRow(_ x: UnsafeMutablePointer<Self>, _ n: Int)
    static func exponential(_ x: Self) -> Self
    /// out[i] = exp(x[i]) for i < n; out may be x (Float: the kernels' AVX2 polynomial, rel. error ≲ 2e-7).
    static func expRow(_ out: UnsafeMutablePointer<Self>, _ x: UnsafePointer<Self>, _ n: Int)
}

/// Elements per stack chunk for the vectorized exp in elementwise backward loops.
let expChunk = 256

extension Float: KernelScalar {
    @inline(__always)
    static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                     a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                     beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        BLAS.sgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                   b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
    }
    @inline(__always) static func softmaxRow(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
        qlora_softmax_forward(x, Int64(n))
    }
    @inline(__always) static func exponential(_ x: Float) -> Float { expf(x) }
    @inline(__always) static func expRow(_ out: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) {
        qlora_exp(out, x, Int64(n))
    }
}

extension Double: KernelScalar {
    // Double GEMM exists only for the gradient checks (through BLAS.dgemm).
    static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Double,
                     a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
                     beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int) {
        BLAS.dgemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                   beta: beta, c: c, ldc: ldc)
    }
    static func softmaxRow(_ x: UnsafeMutablePointer<Double>, _ n: Int) {
        var m = x[0]
        for i in 1..<max(1, n) where x[i] > m { m = x[i] }
        var s = 0.0
        for i in 0..<n { x[i] = exp(x[i] - m); s += x[i] }
        let inv = 1 / s
        for i in 0..<n { x[i] *= inv }
    }
    @inline(__always) static func exponential(_ x: Double) -> Double { exp(x) }
    static func expRow(_ out: UnsafeMutablePointer<Double>, _ x: UnsafePointer<Double>, _ n: Int) {
        for i in 0..<n { out[i] = exp(x[i]) }
    }
}

// MARK: - RMSNorm

/// Backward of `rmsnormForward` (out = weight ⊙ x·r, r = 1/sqrt(mean(x²) + eps)); r is recomputed
/// from `inp` (one pass over the row, nothing cached).
///
/// dInp[T, C] += r·(g − x̂·mean(g ⊙ x̂)) with g = dOut ⊙ weight, x̂ = x·r;
/// dWeight[C] += Σ_t dOut ⊙ x̂ unless `dWeight` is nil (frozen norm weights, as in QLoRA).
public func rmsnormBackward(dInp: UnsafeMutablePointer<Float>, dWeight: UnsafeMutablePointer<Float>?,
                            dOut: UnsafePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                            rows T: Int, channels C: Int, epsilon: Float) {
    rmsnormBackwardImpl(dInp: dInp, dWeight: dWeight, dOut: dOut, inp: inp, weight: weight,
                        rows: T, channels: C, epsilon: epsilon)
}

@inline(__always)
func rmsnormBackwardImpl<S: KernelScalar>(dInp: UnsafeMutablePointer<S>, dWeight: UnsafeMutablePointer<S>?,
                                          dOut: UnsafePointer<S>, inp: UnsafePointer<S>, weight: UnsafePointer<S>,
                                          rows T: Int, channels C: Int, epsilon: S) {
    let invC = 1 / S(C)
    for t in 0..<T {
        let x = inp + t * C, dy = dOut + t * C, dx = dInp + t * C
        var ss: S = 0
        for i in 0..<C { ss += x[i] * x[i] }
        let r = 1 / (ss * invC + epsilon).squareRoot()
        var dot: S = 0                                   // Σ g ⊙ x̂
        for i in 0..<C { dot += dy[i] * weight[i] * (x[i] * r) }
        let mean = dot * invC
        for i in 0..<C {
            let xh = x[i] * r
            dx[i] += r * (dy[i] * weight[i] - xh * mean)
        }
        if let dWeight {
            for i in 0..<C { dWeight[i] += dy[i] * (x[i] * r) }
        }
    }
}

// MARK: - RoPE

/// Backward of `ropeForward`, in place on dX[T, heads, headDim] (rows `rowStride` floats apart):
/// the inverse (transposed) rotation, dA ← dA'·c + dB'·s, dB ← dB'·c − dA'·s (B = the second half).
/// Overwrites (the gradient of the rotated tensor becomes that of the unrotated one).
public func ropeBackward(dX: UnsafeMutablePointer<Float>, cos: UnsafePointer<Float>, sin: UnsafePointer<Float>,
                         rows T: Int, heads: Int, headDim: Int, rowStride: Int) {
    ropeBackwardImpl(dX: dX, cos: cos, sin: sin, rows: T, heads: heads, headDim: headDim, rowStride: rowStride)
}

@inline(__always)
func ropeBackwardImpl<S: KernelScalar>(dX: UnsafeMutablePointer<S>, cos: UnsafePointer<S>, sin: UnsafePointer<S>,
                                       rows T: Int, heads: Int, headDim: Int, rowStride: Int) {
    let h = headDim / 2
    for t in 0..<T {
        let c = cos + t * h, s = sin + t * h
        for hd in 0..<heads {
            let v = dX + t * rowStride + hd * headDim
            for i in 0..<h {
                let a = v[i], b = v[i + h]
                v[i] = a * c[i] + b * s[i]
                v[i + h] = b * c[i] - a * s[i]
            }
        }
    }
}

/// Training-time forward of RoPE for the tests' generic paths (the Float kernel is `ropeForward`).
@inline(__always)
func ropeForwardImpl<S: KernelScalar>(x: UnsafeMutablePointer<S>, cos: UnsafePointer<S>, sin: UnsafePointer<S>,
                                      rows T: Int, heads: Int, headDim: Int, rowStride: Int) {
    let h = headDim / 2
    for t in 0..<T {
        let c = cos + t * h, s = sin + t * h
        for hd in 0..<heads {
            let v = x + t * rowStride + hd * headDim
            for i in 0..<h {
                let a = v[i], b = v[i + h]
                v[i] = a * c[i] - b * s[i]
                v[i + h] = b * c[i] + a * s[i]
            }
        }
    }
}

// MARK: - SwiGLU

/// Backward of `siluMulForward` (out = silu(gate) ⊙ up):
/// dGate[n] += dOut·up·σ(g)(1 + g(1 − σ(g))), dUp[n] += dOut·silu(g).
public func siluMulBackward(dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>,
                            dOut: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                            count n: Int) {
    siluMulBackwardImpl(dGate: dGate, dUp: dUp, dOut: dOut, gate: gate, up: up, count: n)
}

@inline(__always)
func siluMulBackwardImpl<S: KernelScalar>(dGate: UnsafeMutablePointer<S>, dUp: UnsafeMutablePointer<S>,
                                          dOut: UnsafePointer<S>, gate: UnsafePointer<S>, up: UnsafePointer<S>,
                                          count n: Int) {
    withUnsafeTemporaryAllocation(of: S.self, capacity: expChunk) { tmp in
        let e = tmp.baseAddress!
        var i0 = 0
        while i0 < n {
            let m = min(expChunk, n - i0)
            for j in 0..<m { e[j] = -gate[i0 + j] }
            S.expRow(e, e, m)                                  // e = exp(−g)
            for j in 0..<m {
                let i = i0 + j
                let g = gate[i], sig = 1 / (1 + e[j])
                let dy = dOut[i]
                dGate[i] += dy * up[i] * sig * (1 + g * (1 - sig))
                dUp[i] += dy * g * sig
            }
            i0 += m
        }
    }
}

@inline(__always)
func siluMulForwardImpl<S: KernelScalar>(out: UnsafeMutablePointer<S>, gate: UnsafePointer<S>, up: UnsafePointer<S>,
                                         count n: Int) {
    for i in 0..<n { let g = gate[i]; out[i] = g / (1 + S.exponential(-g)) * up[i] }
}

// MARK: - Dense matmul

/// Backward of `matmulForward` (out = inp · Wᵀ) for the input: dInp[T, C] += dOut[T, OC] · W[OC, C].
/// (The 4-bit weight's is `NF4Matmul.backwardInput`.)
public func matmulBackwardInput(dInp: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                                weight: UnsafePointer<Float>, rows T: Int, inChannels C: Int, outChannels OC: Int,
                                threads: Int = coreCount) {
    BLAS.setThreads(threads)
    matmulBackwardInputImpl(dInp: dInp, dOut: dOut, weight: weight, rows: T, inChannels: C, outChannels: OC)
}

/// Backward of `matmulForward` for a trained dense weight: dWeight[OC, C] += dOut[T, OC]ᵀ · inp[T, C],
/// and dBias[OC] += Σ_t dOut (if given). Not used by QLoRA (base weights are frozen); for completeness.
public func matmulBackwardWeight(dWeight: UnsafeMutablePointer<Float>, dBias: UnsafeMutablePointer<Float>?,
                                 dOut: UnsafePointer<Float>, inp: UnsafePointer<Float>,
                                 rows T: Int, inChannels C: Int, outChannels OC: Int, threads: Int = coreCount) {
    BLAS.setThreads(threads)
    matmulBackwardWeightImpl(dWeight: dWeight, dBias: dBias, dOut: dOut, inp: inp, rows: T, inChannels: C,
                             outChannels: OC)
}

@inline(__always)
func matmulForwardImpl<S: KernelScalar>(out: UnsafeMutablePointer<S>, inp: UnsafePointer<S>, weight: UnsafePointer<S>,
                                        rows T: Int, inChannels C: Int, outChannels OC: Int) {
    S.gemm(transA: false, transB: true, m: T, n: OC, k: C, alpha: 1, a: inp, lda: C, b: weight, ldb: C,
           beta: 0, c: out, ldc: OC)
}

@inline(__always)
func matmulBackwardInputImpl<S: KernelScalar>(dInp: UnsafeMutablePointer<S>, dOut: UnsafePointer<S>,
                                              weight: UnsafePointer<S>, rows T: Int, inChannels C: Int,
                                              outChannels OC: Int) {
    S.gemm(transA: false, transB: false, m: T, n: C, k: OC, alpha: 1, a: dOut, lda: OC, b: weight, ldb: C,
           beta: 1, c: dInp, ldc: C)
}

@inline(__always)
func matmulBackwardWeightImpl<S: KernelScalar>(dWeight: UnsafeMutablePointer<S>, dBias: UnsafeMutablePointer<S>?,
                                               dOut: UnsafePointer<S>, inp: UnsafePointer<S>,
                                               rows T: Int, inChannels C: Int, outChannels OC: Int) {
    S.gemm(transA: true, transB: false, m: OC, n: C, k: T, alpha: 1, a: dOut, lda: OC, b: inp, ldb: C,
           beta: 1, c: dWeight, ldc: C)
    if let dBias {
        for t in 0..<T { let row = dOut + t * OC; for o in 0..<OC { dBias[o] += row[o] } }
    }
}

// MARK: - Attention (training: no KV cache, positions 0 ..< T)

/// Floats of scratch `attentionTrainForward` needs.
public func attentionTrainForwardScratchCount(tokens T: Int, heads: Int, threads: Int = coreCount) -> Int {
    max(1, min(threads, heads)) * T * T
}

/// Floats of scratch `attentionBackward` needs: per worker two [T, T] score tiles and private
/// [T, kvHeads·D] dK/dV accumulators (query heads sharing a kv head may run on different workers).
public func attentionBackwardScratchCount(tokens T: Int, heads: Int, kvHeads: Int, headDim D: Int,
                                          threads: Int = coreCount) -> Int {
    let workers = max(1, min(threads, heads))
    return workers * (2 * T * T + (workers > 1 ? 2 * T * kvHeads * D : 0))
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
/// the probabilities. The (row, head) pairs run in parallel over `threads` workers with
/// single-threaded BLAS; each head is computed in causal blocks of query rows (no work above the diagonal).
public func attentionTrainForward(out: UnsafeMutablePointer<Float>, q: UnsafePointer<Float>,
                                  k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                  segmentStart: UnsafePointer<Int>?, scratch: UnsafeMutablePointer<Float>,
                                  tokens T: Int, heads: Int, kvHeads: Int, headDim D: Int, batch: Int = 1,
                                  threads: Int = coreCount) {
    BLAS.setThreads(1)
    attentionTrainForwardImpl(out: out, q: q, k: k, v: v, segmentStart: segmentStart, scratch: scratch,
                              tokens: T, heads: heads, kvHeads: kvHeads, headDim: D, batch: batch, threads: threads)
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
/// scratch: `attentionBackwardScratchCount` floats, computed with the same `threads`.
public func attentionBackward(dQ: UnsafeMutablePointer<Float>, dK: UnsafeMutablePointer<Float>,
                              dV: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                              q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                              segmentStart: UnsafePointer<Int>?, scratch: UnsafeMutablePointer<Float>,
                              tokens T: Int, heads: Int, kvHeads: Int, headDim D: Int, batch: Int = 1,
                              threads: Int = coreCount) {
    BLAS.setThreads(1)
    attentionBackwardImpl(dQ: dQ, dK: dK, dV: dV, dOut: dOut, q: q, k: k, v: v, segmentStart: segmentStart,
                          scratch: scratch, tokens: T, heads: heads, kvHeads: kvHeads, headDim: D, batch: batch,
                          threads: threads)
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

