import Kernels
import _CKernels

/// Packing scratch for `NF4Gemm`: one buffer of `qlora_nf4_gemm_pack_floats()` floats (320 KiB),
/// 64-byte aligned, per part a call may be split into. Create once (per model) and pass to every call;
/// calls never allocate.
public final class NF4GemmWorkspace: @unchecked Sendable {
    /// Number of buffers: the most parts a call is split into.
    public let threads: Int
    /// Floats per buffer.
    public let floatsPerThread: Int
    @usableFromInline let base: UnsafeMutableRawPointer

    /// Buffers for `threads` parts (default: two per core, see `NF4Gemm`).
    public init(threads: Int = 2 * coreCount) {
        self.threads = max(1, threads)
        floatsPerThread = Int(qlora_nf4_gemm_pack_floats())
        base = .allocate(byteCount: self.threads * floatsPerThread * 4, alignment: 64)
    }

    deinit { base.deallocate() }

    /// Bytes of all the buffers.
    public var bytes: Int { threads * floatsPerThread * 4 }

    /// `bytes` of a workspace made with the default `threads` (for the memory plan).
    public static var defaultBytes: Int { 2 * coreCount * Int(qlora_nf4_gemm_pack_floats()) * 4 }

    /// Thread t's buffer.
    @inline(__always) @usableFromInline
    func buffer(_ t: Int) -> UnsafeMutablePointer<Float> {
        (base + t * floatsPerThread * 4).assumingMemoryBound(to: Float.self)
    }
}

/// Products with a frozen 4-bit weight W [out, in] that decode W straight into the packed panels of
/// an own AVX2 sgemm (`_CKernels/nf4gemm.c`): no dequantized copy of W, no BLAS. Outputs first,
/// row-major, `rows` = token rows. The output columns (16-column panels) are split into two parts per
/// core, claimed dynamically by the pool, so a core slowed by other load takes fewer parts.
public enum NF4Gemm {
    /// out[rows, out] (+)= inp[rows, in] · Wᵀ. Overwrites `out` unless `accumulate`.
    /// `threads` (for tests and benchmarks) overrides the number of parallel parts.
    public static func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>,
                               weight: QuantizedTensor4Bit, rows: Int, workspace: NF4GemmWorkspace,
                               accumulate: Bool = false, threads: Int? = nil) {
        let (n, k) = (weight.rows, weight.columns)
        run(rows: rows, cols: n, reduction: k, workspace: workspace, threads: threads, weight: weight) { w, pack, t, parts in
            qlora_nf4_gemm_forward(out, inp, w, Int64(rows), Int64(n), Int64(k), accumulate ? 1 : 0, pack,
                                   Int32(t), Int32(parts))
        }
    }

    /// dInp[rows, in] (+)= dOut[rows, out] · W. Overwrites `dInp` unless `accumulate`.
    public static func backwardInput(dInp: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                                     weight: QuantizedTensor4Bit, rows: Int, workspace: NF4GemmWorkspace,
                                     accumulate: Bool = false, threads: Int? = nil) {
        let (n, k) = (weight.rows, weight.columns)
        run(rows: rows, cols: k, reduction: n, workspace: workspace, threads: threads, weight: weight) { w, pack, t, parts in
            qlora_nf4_gemm_backward_input(dInp, dOut, w, Int64(rows), Int64(n), Int64(k), accumulate ? 1 : 0, pack,
                                          Int32(t), Int32(parts))
        }
    }

    /// Splits the output columns into parts (two per core; one for small products), each with its own buffer.
    @inline(__always)
    static func run(rows: Int, cols: Int, reduction: Int, workspace: NF4GemmWorkspace, threads: Int?,
                    weight: QuantizedTensor4Bit,
                    _ body: (UnsafePointer<qlora_nf4_weight>, UnsafeMutablePointer<Float>, Int, Int) -> Void) {
        guard rows > 0, cols > 0 else { return }
        let panels = (cols + 15) / 16
        let wanted = threads ?? (rows * cols * reduction < 1 << 18 ? 1 : 2 * coreCount)
        let parts = max(1, min(wanted, workspace.threads, panels))
        var cw = weight.cWeight
        withUnsafePointer(to: &cw) { w in
            parallelFor(parts) { t in body(w, workspace.buffer(t), t, parts) }
        }
    }
}
