// The LoRA branch of a linear layer (PEFT semantics, SPEC §6.1), forward and backward:
//   out[N, out] += scale · (u · Aᵀ) · Bᵀ,   u = dropout(x) = x ⊙ mask / (1 − p)   (inverted dropout)
// with A [rank, in], B [out, rank], scale = lora_alpha / r. The frozen base product (dense or 4-bit)
// is computed separately by the caller into `out` first; the LoRA branch adds to it.
// Every call is a few sgemm calls (`BLAS.sgemm` splits the large ones over the cores); nothing allocates.

/// Keep-mask for LoRA dropout: mask[i] = 1 (keep) with probability 1 − p, else 0, a pure function of
/// (seed, i) (SplitMix64), so a step is reproducible and backward can re-read the same mask.
public func loraDropoutMask(mask: UnsafeMutablePointer<UInt8>, count n: Int, p: Float, seed: UInt64) {
    let threshold = UInt64(Double(p) * 9007199254740992.0)       // p · 2⁵³
    for i in 0..<n {
        var z = seed &+ UInt64(i + 1) &* 0x9E3779B97F4A7C15
        z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
        z ^= z >> 31
        mask[i] = (z >> 11) < threshold ? 0 : 1
    }
}

/// Floats of scratch `loraBackward` needs: dh [N, rank], plus u [N, in] when a dropout mask is used.
public func loraBackwardScratchCount(rows N: Int, inChannels C: Int, rank R: Int, dropout: Bool) -> Int {
    N * R + (dropout ? N * C : 0)
}

/// LoRA forward: h[N, rank] = u · Aᵀ (overwritten; keep it for backward), out[N, OC] += scale · h · Bᵀ.
///
/// - mask: nil (no dropout / eval) or [N, C] keep-mask (1 keep, 0 drop); kept inputs are scaled by
///   1/(1 − p). With a mask, `maskedInput` [N, C] (scratch) receives u so h is one sgemm; if it is nil
///   h is computed by a plain loop instead (correct, slower). Backward rebuilds u from inp and mask.
public func loraForward(out: UnsafeMutablePointer<Float>, h: UnsafeMutablePointer<Float>,
                        maskedInput: UnsafeMutablePointer<Float>?,
                        inp: UnsafePointer<Float>, mask: UnsafePointer<UInt8>?, dropout p: Float,
                        a: UnsafePointer<Float>, b: UnsafePointer<Float>, scale: Float,
                        rows N: Int, inChannels C: Int, outChannels OC: Int, rank R: Int) {
    loraForwardImpl(out: out, h: h, maskedInput: maskedInput, inp: inp, mask: mask, dropout: p, a: a, b: b,
                    scale: scale, rows: N, inChannels: C, outChannels: OC, rank: R)
}

/// LoRA backward (SPEC §6.1), with dY = dOut [N, OC]:
///   dB[OC, rank] += scale · dYᵀ · h,   dh = scale · dY · B,   dA[rank, C] += dhᵀ · u,
///   dInp[N, C] += (dh · A) ⊙ mask / (1 − p).
/// `h` is what `loraForward` produced; u is rebuilt from `inp` and `mask`.
/// scratch: `loraBackwardScratchCount(…, dropout: mask != nil)` floats. dInp may be nil (first layer
/// input needs no gradient). The base weight's dInp contribution is the caller's (matmulBackwardInput
/// or NF4Matmul.backwardInput).
public func loraBackward(dInp: UnsafeMutablePointer<Float>?, dA: UnsafeMutablePointer<Float>,
                         dB: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                         inp: UnsafePointer<Float>, mask: UnsafePointer<UInt8>?, dropout p: Float,
                         h: UnsafePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>, scale: Float,
                         scratch: UnsafeMutablePointer<Float>,
                         rows N: Int, inChannels C: Int, outChannels OC: Int, rank R: Int) {
    loraBackwardImpl(dInp: dInp, dA: dA, dB: dB, dOut: dOut, inp: inp, mask: mask, dropout: p, h: h, a: a, b: b,
                     scale: scale, scratch: scratch, rows: N, inChannels: C, outChannels: OC, rank: R)
}

/// u = x ⊙ mask / (1 − p).
@inline(__always)
func loraApplyMask<S: KernelScalar>(_ u: UnsafeMutablePointer<S>, _ x: UnsafePointer<S>, _ mask: UnsafePointer<UInt8>,
                                    keep: S, count n: Int) {
    for i in 0..<n { u[i] = mask[i] != 0 ? x[i] * keep : 0 }
}

func loraForwardImpl<S: KernelScalar>(out: UnsafeMutablePointer<S>, h: UnsafeMutablePointer<S>,
                                      maskedInput: UnsafeMutablePointer<S>?,
                                      inp: UnsafePointer<S>, mask: UnsafePointer<UInt8>?, dropout p: S,
                                      a: UnsafePointer<S>, b: UnsafePointer<S>, scale: S,
                                      rows N: Int, inChannels C: Int, outChannels OC: Int, rank R: Int) {
    var u = inp
    if let mask {
        let keep = 1 / (1 - p)
        if let maskedInput {
            loraApplyMask(maskedInput, inp, mask, keep: keep, count: N * C)
            u = UnsafePointer(maskedInput)
        } else {
            // No scratch given: the same product without BLAS, h[n, r] = keep · Σ_c mask·x·A[r, c].
            for n in 0..<N {
                let x = inp + n * C, m = mask + n * C
                for r in 0..<R {
                    let ar = a + r * C
                    var acc: S = 0
                    for c in 0..<C where m[c] != 0 { acc += x[c] * ar[c] }
                    h[n * R + r] = acc * keep
                }
            }
            S.gemm(transA: false, transB: true, m: N, n: OC, k: R, alpha: scale, a: h, lda: R, b: b, ldb: R,
                   beta: 1, c: out, ldc: OC)
            return
        }
    }
    S.gemm(transA: false, transB: true, m: N, n: R, k: C, alpha: 1, a: u, lda: C, b: a, ldb: C,
           beta: 0, c: h, ldc: R)
    S.gemm(transA: false, transB: true, m: N, n: OC, k: R, alpha: scale, a: h, lda: R, b: b, ldb: R,
           beta: 1, c: out, ldc: OC)
}

func loraBackwardImpl<S: KernelScalar>(dInp: UnsafeMutablePointer<S>?, dA: UnsafeMutablePointer<S>,
                                       dB: UnsafeMutablePointer<S>, dOut: UnsafePointer<S>,
                                       inp: UnsafePointer<S>, mask: UnsafePointer<UInt8>?, dropout p: S,
                                       h: UnsafePointer<S>, a: UnsafePointer<S>, b: UnsafePointer<S>, scale: S,
                                       scratch: UnsafeMutablePointer<S>,
                                       rows N: Int, inChannels C: Int, outChannels OC: Int, rank R: Int) {
    let dh = scratch
    // dB += scale · dYᵀ · h
    S.gemm(transA: true, transB: false, m: OC, n: R, k: N, alpha: scale, a: dOut, lda: OC, b: h, ldb: R,
           beta: 1, c: dB, ldc: R)
    // dh = scale · dY · B
    S.gemm(transA: false, transB: false, m: N, n: R, k: OC, alpha: scale, a: dOut, lda: OC, b: b, ldb: R,
           beta: 0, c: dh, ldc: R)
    let keep = 1 / (1 - p)
    var u = inp
    let ubuf = scratch + N * R
    if let mask {
        loraApplyMask(ubuf, inp, mask, keep: keep, count: N * C)
        u = UnsafePointer(ubuf)
    }
    // dA += dhᵀ · u
    S.gemm(transA: true, transB: false, m: R, n: C, k: N, alpha: 1, a: dh, lda: R, b: u, ldb: C,
           beta: 1, c: dA, ldc: C)
    guard let dInp else { return }
    if let mask {
        // dInp += (dh · A) ⊙ mask / (1 − p), through the u buffer (no longer needed)
        S.gemm(transA: false, transB: false, m: N, n: C, k: R, alpha: 1, a: dh, lda: R, b: a, ldb: C,
               beta: 0, c: ubuf, ldc: C)
        for i in 0..<(N * C) where mask[i] != 0 { dInp[i] += ubuf[i] * keep }
    } else {
        S.gemm(transA: false, transB: false, m: N, n: C, k: R, alpha: 1, a: dh, lda: R, b: a, ldb: C,
               beta: 1, c: dInp, ldc: C)
    }
}

// MARK: - Adapters that share their input (q|k|v, gate|up), no dropout

/// One adapter of a group whose members read the same input: A [rank, in], B [out, rank] and their
/// gradients (`+=`; unused by the forward).
public struct LoRASharedPart {
    public var a: UnsafePointer<Float>
    public var b: UnsafePointer<Float>
    public var dA: UnsafeMutablePointer<Float>
    public var dB: UnsafeMutablePointer<Float>
    public var outChannels: Int

    public init(a: UnsafePointer<Float>, b: UnsafePointer<Float>, dA: UnsafeMutablePointer<Float>,
                dB: UnsafeMutablePointer<Float>, outChannels: Int) {
        self.a = a; self.b = b; self.dA = dA; self.dB = dB; self.outChannels = outChannels
    }
}

/// Floats of scratch `loraForwardShared` and `loraBackwardShared` need for `parts` adapters.
public func loraSharedScratchCount(rows N: Int, inChannels C: Int, rank R: Int, parts g: Int) -> Int {
    N * g * R + 2 * g * R * C
}

/// The forward of g adapters on the same input without dropout, as `loraForward` does for each, but
/// with ONE product for their down-projections: h[N, g·rank] = x · [A_1; …; A_g]ᵀ (x is read once,
/// and the product has g·rank columns instead of rank). Then out_i += scale · h_i · B_iᵀ, where h_i is
/// columns i·rank ..< (i+1)·rank of h. `h` must hold N·g·rank floats; keep it for the backward.
/// scratch: `loraSharedScratchCount` floats.
public func loraForwardShared(outs: [UnsafeMutablePointer<Float>], h: UnsafeMutablePointer<Float>,
                              inp: UnsafePointer<Float>, parts: [LoRASharedPart], scale: Float,
                              scratch: UnsafeMutablePointer<Float>, rows N: Int, inChannels C: Int, rank R: Int) {
    let g = parts.count, GR = g * R
    let stackedA = scratch + N * GR
    for (i, p) in parts.enumerated() { (stackedA + i * R * C).update(from: p.a, count: R * C) }
    BLAS.sgemm(transB: true, m: N, n: GR, k: C, a: inp, b: stackedA, c: h)
    for (i, p) in parts.enumerated() {
        BLAS.sgemm(transB: true, m: N, n: p.outChannels, k: R, alpha: scale, a: h + i * R, lda: GR, b: p.b, ldb: R,
                   beta: 1, c: outs[i])
    }
}

/// Backward of `loraForwardShared` (dY_i = dOuts[i]): dB_i += scale · dY_iᵀ · h_i, dh_i = scale · dY_i · B_i
/// (the columns of one dh [N, g·rank]); then ONE product dh ᵀ · x for all the dA_i, and ONE product
/// dInp += dh · [A_1; …; A_g] (the same sums as g calls of `loraBackward`, in another order).
/// dInp may be nil. scratch: `loraSharedScratchCount` floats.
public func loraBackwardShared(dInp: UnsafeMutablePointer<Float>?, dOuts: [UnsafePointer<Float>],
                               inp: UnsafePointer<Float>, h: UnsafePointer<Float>, parts: [LoRASharedPart],
                               scale: Float, scratch: UnsafeMutablePointer<Float>, rows N: Int, inChannels C: Int,
                               rank R: Int) {
    let g = parts.count, GR = g * R
    let dh = scratch, stackedA = scratch + N * GR, dAStack = stackedA + GR * C
    for (i, p) in parts.enumerated() {
        let oc = p.outChannels
        BLAS.sgemm(transA: true, m: oc, n: R, k: N, alpha: scale, a: dOuts[i], lda: oc, b: h + i * R, ldb: GR,
                   beta: 1, c: p.dB, ldc: R)
        BLAS.sgemm(m: N, n: R, k: oc, alpha: scale, a: dOuts[i], lda: oc, b: p.b, ldb: R, c: dh + i * R, ldc: GR)
        (stackedA + i * R * C).update(from: p.a, count: R * C)
    }
    BLAS.sgemm(transA: true, m: GR, n: C, k: N, a: dh, lda: GR, b: inp, c: dAStack)
    for (i, p) in parts.enumerated() { residualForward(out: p.dA, a: p.dA, b: dAStack + i * R * C, count: R * C) }
    if let dInp {
        BLAS.sgemm(m: N, n: C, k: GR, a: dh, lda: GR, b: stackedA, beta: 1, c: dInp)
    }
}
