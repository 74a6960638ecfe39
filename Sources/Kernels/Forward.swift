import _CKernels

// Forward passes of the LLaMA block's ops, llm.c style: outputs first, then inputs, then sizes.
// Buffers are row-major and owned by the caller; nothing here allocates (except `attentionForward`,
// which takes its scratch from the caller too). T = tokens, C = channels.

/// out[T, C] = table[tokens[t], :]. The caller has checked every id is in range.
@inline(__always)
public func embeddingForward(out: UnsafeMutablePointer<Float>, tokens: UnsafeBufferPointer<Int>,
                             table: UnsafePointer<Float>, channels C: Int) {
    for t in 0..<tokens.count {
        (out + t * C).update(from: table + tokens[t] * C, count: C)
    }
}

/// out[T, C] = weight ⊙ inp / sqrt(mean(inp²) + eps), per row, in float32 as Hugging Face does.
/// `out` may be `inp`.
@inline(__always)
public func rmsnormForward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                           rows T: Int, channels C: Int, epsilon: Float) {
    qlora_rmsnorm_forward(out, inp, weight, Int64(T), Int64(C), epsilon)
}

/// out[T, OC] = inp[T, C] · weight[OC, C]ᵀ (+ bias[OC]). For T = 1 our AVX2 GEMV split over the output
/// rows across `threads` workers; for T > 1 one sgemm with `threads` BLAS threads.
public func matmulForward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                          bias: UnsafePointer<Float>?, rows T: Int, inChannels C: Int, outChannels OC: Int,
                          threads: Int = coreCount) {
    if T == 1 {
        let workers = max(1, min(threads, OC / 64))
        let chunk = (OC + workers - 1) / workers
        parallelFor(workers) { w in
            let lo = w * chunk, n = min(OC, lo + chunk) - lo
            guard n > 0 else { return }
            qlora_gemv_forward(out + lo, weight + lo * C, inp, bias.map { $0 + lo }, Int64(n), Int64(C))
        }
        return
    }
    BLAS.setThreads(threads)
    if let bias {
        for t in 0..<T { (out + t * OC).update(from: bias, count: OC) }
    }
    BLAS.sgemm(transB: true, m: T, n: OC, k: C, a: inp, b: weight, beta: bias == nil ? 0 : 1, c: out)
}

/// In place rotate_half RoPE on x[T, heads, headDim] (token rows `rowStride` floats apart), with
/// cos/sin tables [T, headDim/2] for the tokens' positions.
@inline(__always)
public func ropeForward(x: UnsafeMutablePointer<Float>, cos: UnsafePointer<Float>, sin: UnsafePointer<Float>,
                        rows T: Int, heads: Int, headDim: Int, rowStride: Int) {
    qlora_rope_forward(x, cos, sin, Int64(T), Int64(heads), Int64(headDim), Int64(rowStride))
}

/// out[n] = silu(gate[n]) · up[n] (SwiGLU). `out` may be `gate` or `up`.
@inline(__always)
public func siluMulForward(out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                           count n: Int) {
    qlora_silu_mul_forward(out, gate, up, Int64(n))
}

/// out[n] = a[n] + b[n] (the residual add). `out` may be `a` or `b`.
@inline(__always)
public func residualForward(out: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                            count n: Int) {
    qlora_add_forward(out, a, b, Int64(n))
}

/// In place softmax of x[n].
@inline(__always)
public func softmaxForward(x: UnsafeMutablePointer<Float>, count n: Int) {
    qlora_softmax_forward(x, Int64(n))
}

/// Causal grouped-query attention for T new tokens at positions startPosition ..< startPosition+T.
///
/// - out: [T, heads·D]; q: [T, heads·D] (already rotated)
/// - keys, values: the cache rows for positions 0 ..< startPosition+T, each row kvHeads·D floats
///   (already holding the new tokens' rotated keys and values)
/// - scratch: `attentionScratchCount(tokens:keys:workers:)` floats
/// - window: if set, a query at position p sees keys p−window+1 … p (Mistral's sliding window)
///
/// Query head h reads kv head h / (heads/kvHeads) (repeat_interleave). Heads run in parallel over
/// `threads` workers with single-threaded BLAS inside.
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
    BLAS.setThreads(1)
    parallelFor(workers) { w in
        let att = scratch + w * T * S    // [T, S] scores of this worker's current head
        var h = w
        while h < heads {
            let qh = q + h * D, oh = out + h * D
            let kh = keys + (h / group) * D, vh = values + (h / group) * D
            if T == 1 {
                let lo = window.map { max(0, S - $0) } ?? 0
                let n = S - lo
                BLAS.sgemv(m: n, n: D, alpha: scale, a: kh + lo * kvDim, lda: kvDim, x: qh, y: att)
                qlora_softmax_forward(att, Int64(n))
                BLAS.sgemv(trans: true, m: n, n: D, a: vh + lo * kvDim, lda: kvDim, x: att, y: oh)
            } else {
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
            }
            h += workers
        }
    }
}

/// Floats of scratch `attentionForward` needs for T new tokens seeing S keys.
public func attentionScratchCount(tokens T: Int, keys S: Int, heads: Int, threads: Int = coreCount) -> Int {
    max(1, min(threads, heads)) * T * S
}

/// Makes the C kernels use their portable bodies (true) or pick AVX2 at run time again (false).
/// For tests that check both paths.
public func forcePortableKernels(_ on: Bool) { qlora_force_portable(on ? 1 : 0) }

/// Whether the AVX2+FMA kernel bodies can run on this CPU.
public var cpuHasAVX2: Bool { qlora_cpu_has_avx2() != 0 }

/// exp(x) with the kernels' vector polynomial (glibc expf on the portable path). For tests.
public func vectorExp(out: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, count n: Int) {
    qlora_exp(out, x, Int64(n))
}
