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
    parallelRanges(T, costPerItem: C) { r in
        qlora_rmsnorm_forward(out + r.lowerBound * C, inp + r.lowerBound * C, weight, Int64(r.count), Int64(C), epsilon)
    }
}

/// out[T, OC] = inp[T, C] · weight[OC, C]ᵀ (+ bias[OC]). For T = 1 our AVX2 GEMV split over the output
/// rows across the cores (64 rows at least per worker); for T > 1 one sgemm (`BLAS.sgemm` splits it).
public func matmulForward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                          bias: UnsafePointer<Float>?, rows T: Int, inChannels C: Int, outChannels OC: Int) {
    if T == 1 {
        let workers = max(1, min(coreCount, OC / 64))
        let chunk = (OC + workers - 1) / workers
        parallelFor(workers) { w in
            let lo = w * chunk, n = min(OC, lo + chunk) - lo
            guard n > 0 else { return }
            qlora_gemv_forward(out + lo, weight + lo * C, inp, bias.map { $0 + lo }, Int64(n), Int64(C))
        }
        return
    }
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
    let half = headDim / 2
    parallelRanges(T, costPerItem: heads * headDim) { r in
        qlora_rope_forward(x + r.lowerBound * rowStride, cos + r.lowerBound * half, sin + r.lowerBound * half,
                           Int64(r.count), Int64(heads), Int64(headDim), Int64(rowStride))
    }
}

/// out[n] = silu(gate[n]) · up[n] (SwiGLU). `out` may be `gate` or `up`.
@inline(__always)
public func siluMulForward(out: UnsafeMutablePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                           count n: Int) {
    parallelRanges(n, alignment: 64) { r in
        let i = r.lowerBound
        qlora_silu_mul_forward(out + i, gate + i, up + i, Int64(r.count))
    }
}

/// out[n] = a[n] + b[n] (the residual add). `out` may be `a` or `b`.
@inline(__always)
public func residualForward(out: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, b: UnsafePointer<Float>,
                            count n: Int) {
    parallelRanges(n, alignment: 64) { r in
        let i = r.lowerBound
        qlora_add_forward(out + i, a + i, b + i, Int64(r.count))
    }
}

/// In place softmax of x[n].
@inline(__always)
public func softmaxForward(x: UnsafeMutablePointer<Float>, count n: Int) {
    qlora_softmax_forward(x, Int64(n))
}

/// Makes the C kernels use their portable bodies (true) or pick AVX2 at run time again (false).
/// For tests that check both paths.
public func forcePortableKernels(_ on: Bool) {
    qlora_force_portable(on ? 1 : 0)
    qlora_attention_force_portable(on ? 1 : 0)
}

/// Whether the AVX2+FMA kernel bodies can run on this CPU.
public var cpuHasAVX2: Bool { qlora_cpu_has_avx2() != 0 }

/// exp(x) with the kernels' vector polynomial (glibc expf on the portable path). For tests.
public func vectorExp(out: UnsafeMutablePointer<Float>, x: UnsafePointer<Float>, count n: Int) {
    qlora_exp(out, x, Int64(n))
}
