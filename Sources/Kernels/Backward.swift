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
    guard dWeight == nil else {   // Σ over rows: one pass keeps the summation order
        rmsnormBackwardImpl(dInp: dInp, dWeight: dWeight, dOut: dOut, inp: inp, weight: weight,
                            rows: T, channels: C, epsilon: epsilon)
        return
    }
    parallelRanges(T, costPerItem: C) { r in
        let o = r.lowerBound * C
        rmsnormBackwardImpl(dInp: dInp + o, dWeight: nil, dOut: dOut + o, inp: inp + o, weight: weight,
                            rows: r.count, channels: C, epsilon: epsilon)
    }
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
    let half = headDim / 2
    parallelRanges(T, costPerItem: heads * headDim) { r in
        let t = r.lowerBound
        ropeBackwardImpl(dX: dX + t * rowStride, cos: cos + t * half, sin: sin + t * half, rows: r.count, heads: heads,
                         headDim: headDim, rowStride: rowStride)
    }
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
    parallelRanges(n, alignment: 64) { r in
        let i = r.lowerBound
        siluMulBackwardImpl(dGate: dGate + i, dUp: dUp + i, dOut: dOut + i, gate: gate + i, up: up + i, count: r.count)
    }
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
                                weight: UnsafePointer<Float>, rows T: Int, inChannels C: Int, outChannels OC: Int) {
    matmulBackwardInputImpl(dInp: dInp, dOut: dOut, weight: weight, rows: T, inChannels: C, outChannels: OC)
}

/// Backward of `matmulForward` for a trained dense weight: dWeight[OC, C] += dOut[T, OC]ᵀ · inp[T, C],
/// and dBias[OC] += Σ_t dOut (if given). Not used by QLoRA (base weights are frozen); for completeness.
public func matmulBackwardWeight(dWeight: UnsafeMutablePointer<Float>, dBias: UnsafeMutablePointer<Float>?,
                                 dOut: UnsafePointer<Float>, inp: UnsafePointer<Float>,
                                 rows T: Int, inChannels C: Int, outChannels OC: Int) {
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
