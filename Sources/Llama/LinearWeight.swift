import Kernels
import Quantization

/// One linear layer's frozen base weight W [rows = out, cols = in]: float32 (a view into
/// `LlamaWeights.storage`) or 4-bit (`QuantizedTensor4Bit`, owned).
public enum LinearWeight {
    case dense(UnsafeMutablePointer<Float>, rows: Int, cols: Int)
    case quantized(QuantizedTensor4Bit)

    /// Out features.
    public var rows: Int {
        switch self {
        case .dense(_, let r, _): return r
        case .quantized(let q): return q.rows
        }
    }

    /// In features.
    public var cols: Int {
        switch self {
        case .dense(_, _, let c): return c
        case .quantized(let q): return q.columns
        }
    }

    /// Bytes held (float32: 4 per element; 4-bit: codes + scales).
    public var bytes: Int {
        switch self {
        case .dense(_, let r, let c): return 4 * r * c
        case .quantized(let q): return q.storageBytes
        }
    }

    /// The 4-bit tensor, if quantized.
    public var quantizedTensor: QuantizedTensor4Bit? {
        if case .quantized(let q) = self { return q }
        return nil
    }

    /// out[T, rows] = inp[T, cols] · Wᵀ (+ bias[rows]). Dense: sgemm / our GEMV. 4-bit: T = 1 is the
    /// fused GEMV, T > 1 dequantizes tiles of W into `workspace` and runs sgemm per tile.
    @inline(__always)
    public func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                        rows T: Int, workspace: NF4Workspace) {
        switch self {
        case let .dense(w, r, c):
            matmulForward(out: out, inp: inp, weight: w, bias: bias, rows: T, inChannels: c, outChannels: r)
        case let .quantized(q):
            BLAS.setThreads(coreCount)
            NF4Matmul.forward(out: out, inp: inp, weight: q, rows: T, workspace: workspace)
            if let bias {
                let r = q.rows
                for t in 0..<T { residualForward(out: out + t * r, a: out + t * r, b: bias, count: r) }
            }
        }
    }
}
