#if canImport(Accelerate)
import Accelerate
#else
import CBLAS
#endif

/// The only file that calls BLAS. Row-major throughout.
///
/// OpenBLAS itself always runs single-threaded: large products are split across the cores by the
/// package's own pool (`parallelFor`), so no OpenBLAS thread is left spinning on a core that the
/// pool's next loop (an NF4Gemm, a decoded token) needs, and a product's sums depend only on
/// `coreCount`, not on a process-wide thread setting.
public enum BLAS {
    /// Products below this many multiply-adds run on the calling thread alone.
    public static let parallelThreshold = 1 << 18

    private static let singleThreaded: Void = {
        #if !canImport(Accelerate)
        openblas_set_num_threads(1)
        #endif
    }()

    /// C[M,N] = alpha · op(A) · op(B) + beta · C, where op(A) is [M,K] and op(B) is [K,N].
    /// `lda`, `ldb`, `ldc` default to the packed row strides. Large products are split over the cores
    /// (by columns of C when N ≥ M, in multiples of 16, else by rows); inside a `parallelFor` body
    /// they run on the calling thread.
    public static func sgemm(transA: Bool = false, transB: Bool = false,
                             m: Int, n: Int, k: Int,
                             alpha: Float = 1, a: UnsafePointer<Float>, lda: Int? = nil,
                             b: UnsafePointer<Float>, ldb: Int? = nil,
                             beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int? = nil) {
        _ = singleThreaded
        let lda = lda ?? (transA ? m : k)
        let ldb = ldb ?? (transB ? k : n)
        let ldc = ldc ?? n
        func run(_ i0: Int, _ i1: Int, _ j0: Int, _ j1: Int) {
            guard i1 > i0, j1 > j0 else { return }
            let aPart = transA ? a + i0 : a + i0 * lda
            let bPart = transB ? b + j0 * ldb : b + j0
            cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                        Int32(i1 - i0), Int32(j1 - j0), Int32(k), alpha, aPart, Int32(lda), bPart, Int32(ldb), beta,
                        c + i0 * ldc + j0, Int32(ldc))
        }
        let parts = coreCount > 1 && m * n * k >= parallelThreshold && !insideParallelFor ? coreCount : 1
        if parts == 1 { run(0, m, 0, n); return }
        if n >= m {
            let panels = (n + 15) / 16
            parallelFor(min(parts, panels)) { p in
                let q = min(parts, panels)
                run(0, m, min(n, panels * p / q * 16), min(n, panels * (p + 1) / q * 16))
            }
        } else {
            parallelFor(min(parts, m)) { p in
                let q = min(parts, m)
                run(m * p / q, m * (p + 1) / q, 0, n)
            }
        }
    }

    /// Double-precision C = alpha · op(A) · op(B) + beta · C (used by the gradient checks).
    @inline(__always)
    public static func dgemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                             alpha: Double = 1, a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
                             beta: Double = 0, c: UnsafeMutablePointer<Double>, ldc: Int) {
        _ = singleThreaded
        cblas_dgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// y[M] = alpha · op(A) · x + beta · y, with A stored [M,N] row-major (op = transpose if `trans`).
    @inline(__always)
    public static func sgemv(trans: Bool = false, m: Int, n: Int, alpha: Float = 1,
                             a: UnsafePointer<Float>, lda: Int? = nil, x: UnsafePointer<Float>,
                             beta: Float = 0, y: UnsafeMutablePointer<Float>) {
        _ = singleThreaded
        cblas_sgemv(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), alpha,
                    a, Int32(lda ?? n), x, 1, beta, y, 1)
    }
}
