import Kernels
import Quantization

/// How a token embedding / LM head is held: float32, or the Q8_0 blocks a GGUF stores (34 bytes
/// per 32 values). Used by memory estimates made from a model's shape.
public enum EmbeddingStorage: Sendable, Equatable {
    case float32, q8_0

    /// Bytes of `parameters` values held this way (Q8_0: `parameters` is a multiple of 32).
    public func bytes(parameters: Int) -> Int {
        switch self {
        case .float32: return 4 * parameters
        case .q8_0: return parameters / 32 * Q8Matrix.blockBytes
        }
    }
}

/// The token embedding or the LM head, [V, C] row-major: float32 (a view into
/// `LlamaWeights.storage`) or a `Q8Matrix` (a GGUF's Q8_0 blocks as stored, never expanded whole).
/// Q8_0 values are exact in float32, so both give the same numbers up to the order of additions.
public enum EmbeddingMatrix {
    case dense(UnsafeMutablePointer<Float>, rows: Int, cols: Int)
    case q8_0(Q8Matrix)

    /// V (token rows).
    public var rows: Int {
        switch self {
        case .dense(_, let r, _): return r
        case .q8_0(let q): return q.rows
        }
    }

    /// C (channels).
    public var cols: Int {
        switch self {
        case .dense(_, _, let c): return c
        case .q8_0(let q): return q.cols
        }
    }

    /// Bytes held (float32: 4 per value; Q8_0: 34 per 32 values).
    public var bytes: Int {
        switch self {
        case .dense(_, let r, let c): return 4 * r * c
        case .q8_0(let q): return q.storageBytes
        }
    }

    /// How the values are held.
    public var storageKind: EmbeddingStorage {
        if case .q8_0 = self { return .q8_0 }
        return .float32
    }

    /// The float32 values, when held in float32.
    public var densePointer: UnsafeMutablePointer<Float>? {
        if case let .dense(p, _, _) = self { return p }
        return nil
    }

    /// The Q8_0 matrix, when held in Q8_0.
    public var q8Matrix: Q8Matrix? {
        if case let .q8_0(q) = self { return q }
        return nil
    }

    /// out[t, C] = row tokens[t] (embedding lookup). Token ids must be in 0..<rows.
    @inline(__always)
    public func lookup(out: UnsafeMutablePointer<Float>, tokens: UnsafeBufferPointer<Int>) {
        switch self {
        case let .dense(p, _, c):
            embeddingForward(out: out, tokens: tokens, table: p, channels: c)
        case let .q8_0(q):
            let c = q.cols
            for t in 0..<tokens.count { q.dequantize(rows: tokens[t]..<(tokens[t] + 1), into: out + t * c) }
        }
    }

    /// out[T, V] = inp[T, C] · Wᵀ (logits). Dense: our GEMV (T = 1) or sgemm. Q8_0: the fused Q8_0
    /// GEMV over the cores (T = 1, in `arithmetic`) or tiles of rows dequantized into `workspace` and sgemm.
    @inline(__always)
    public func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, rows T: Int,
                        workspace: NF4Workspace, arithmetic: DecodeArithmetic = .float32) {
        switch self {
        case let .dense(p, r, c):
            matmulForward(out: out, inp: inp, weight: p, bias: nil, rows: T, inChannels: c, outChannels: r)
        case let .q8_0(q):
            q.forward(out: out, inp: inp, rows: T, workspace: workspace, arithmetic: arithmetic)
        }
    }

    /// dInp[T, C] = dOut[T, V] · W (overwrites dInp). sgemm; Q8_0 tiles of rows dequantized into
    /// `workspace` and accumulated.
    @inline(__always)
    public func backwardInput(dInp: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>, rows T: Int,
                              workspace: NF4Workspace) {
        switch self {
        case let .dense(p, r, c):
            BLAS.sgemm(m: T, n: c, k: r, a: dOut, b: p, c: dInp)
        case let .q8_0(q):
            q.backwardInput(dInp: dInp, dOut: dOut, rows: T, workspace: workspace)
        }
    }

    /// Every value, row-major [V, C], into `out` (V · C floats): a copy, or Q8_0 dequantized.
    public func dequantizeAll(into out: UnsafeMutablePointer<Float>) {
        switch self {
        case let .dense(p, r, c): out.update(from: p, count: r * c)
        case let .q8_0(q): q.dequantizeAll(into: out)
        }
    }

    /// Every value as a new array, row-major [V, C].
    public func float32Values() -> [Float] {
        [Float](unsafeUninitializedCapacity: rows * cols) { buf, n in
            dequantizeAll(into: buf.baseAddress!)
            n = rows * cols
        }
    }
}
