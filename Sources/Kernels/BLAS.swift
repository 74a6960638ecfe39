#if canImport(Accelerate)
import Accelerate
#else
import CBLAS
#endif

/// The only file that calls BLAS. Row-major throughout.
public enum BLAS {
    /// C[M,N] = alpha · op(A) · op(B) + beta · C, where op(A) is [M,K] and op(B) is [K,N].
    /// `lda`, `ldb`, `ldc` default to the packed row strides.
    @inline(__always)
    public static func sgemm(transA: Bool = false, transB: Bool = false,
                             m: Int, n: Int, k: Int,
                             alpha: Float = 1, a: UnsafePointer<Float>, lda: Int? = nil,
                             b: UnsafePointer<Float>, ldb: Int? = nil,
                             beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int? = nil) {
        let lda = lda ?? (transA ? m : k)
        let ldb = ldb ?? (transB ? k : n)
        let ldc = ldc ?? n
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// Double-precision C = alpha · op(A) · op(B) + beta · C (used by the gradient checks).
    @inline(__always)
    public static func dgemm(transA: Bool = false, transB: Bool = false, m: Int, n: Int, k: Int,
                             alpha: Double = 1, a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
                             beta: Double = 0, c: UnsafeMutablePointer<Double>, ldc: Int) {
        cblas_dgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// y[M] = alpha · op(A) · x + beta · y, with A stored [M,N] row-major (op = transpose if `trans`).
    @inline(__always)
    public static func sgemv(trans: Bool = false, m: Int, n: Int, alpha: Float = 1,
                             a: UnsafePointer<Float>, lda: Int? = nil, x: UnsafePointer<Float>,
                             beta: Float = 0, y: UnsafeMutablePointer<Float>) {
        cblas_sgemv(CblasRowMajor, trans ? CblasTrans : CblasNoTrans, Int32(m), Int32(n), alpha,
                    a, Int32(lda ?? n), x, 1, beta, y, 1)
    }

    /// Sets the number of threads BLAS uses inside one call (OpenBLAS only; no-op on Accelerate).
    public static func setThreads(_ count: Int) {
        #if !canImport(Accelerate)
        openblas_set_num_threads(Int32(count))
        #endif
    }
}
