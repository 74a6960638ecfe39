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
    /// `arithmetic`: how a 4-bit one-row product multiplies (see `DecodeArithmetic`).
    @inline(__always)
    public func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                        rows T: Int, workspace: NF4Workspace, arithmetic: DecodeArithmetic = .float32) {
        switch self {
        case let .dense(w, r, c):
            matmulForward(out: out, inp: inp, weight: w, bias: bias, rows: T, inChannels: c, outChannels: r)
        case let .quantized(q):
            NF4Matmul.forward(out: out, inp: inp, weight: q, rows: T, workspace: workspace, arithmetic: arithmetic)
            if let bias {
                let r = q.rows
                for t in 0..<T { residualForward(out: out + t * r, a: out + t * r, b: bias, count: r) }
            }
        }
    }
}

extension LinearWeight {
    /// One token (decode): out_i[rows_i] = W_i · inp (+ bias_i) (+ LoRA branch_i) for weights that share
    /// the input (q|k|v, gate|up), as ONE parallel loop when every weight is 4-bit
    /// (`NF4Matmul.gemv(_:inp:arithmetic:epilogue:)`). Each branch's h = A·inp is computed first (into
    /// `h`, `rank` floats per part), then each thread adds scale·Bᵀh to the rows it has just written.
    /// Returns false and computes nothing when any weight is float32; the caller then runs `forward`
    /// (and the branches' `addForward`) per weight.
    @inline(__always)
    public static func gemvQuantized(_ parts: [(weight: LinearWeight, out: UnsafeMutablePointer<Float>, bias: UnsafeMutablePointer<Float>?)],
                                     inp: UnsafePointer<Float>, arithmetic: DecodeArithmetic = .float32,
                                     lora: [LinearLoRA?]? = nil, h: UnsafeMutablePointer<Float>? = nil) -> Bool {
        var quantized: [(out: UnsafeMutablePointer<Float>, weight: QuantizedTensor4Bit)] = []
        quantized.reserveCapacity(parts.count)
        for part in parts {
            guard case let .quantized(q) = part.weight else { return false }
            quantized.append((out: part.out, weight: q))
        }
        if let lora, let h {
            // branch i's h sits after those of the branches before it (≤ 3 of them)
            func offset(_ i: Int) -> Int { lora[..<i].reduce(0) { $0 + ($1?.rank ?? 0) } }
            for (i, branch) in lora.enumerated() { branch?.decodeHidden(h: h + offset(i), inp: inp) }
            NF4Matmul.gemv(quantized, inp: inp, arithmetic: arithmetic) { i, rows in
                lora[i]?.addDecodeRows(out: parts[i].out, h: h + offset(i), rows: rows)
            }
        } else {
            NF4Matmul.gemv(quantized, inp: inp, arithmetic: arithmetic)
        }
        for part in parts {
            if let bias = part.bias { residualForward(out: part.out, a: part.out, b: bias, count: part.weight.rows) }
        }
        return true
    }
}

/// A LoRA branch on one linear layer, applied unmerged at inference (QLoRA's way, PEFT semantics):
/// out[T, out] += scale · (inp[T, in] · Aᵀ) · Bᵀ, with A [rank, in] and B [out, rank] as PEFT stores
/// them. Owns a copy of A and of Bᵀ [rank, out] (so that both prefill and decode read contiguous rows).
/// The base product (dense or 4-bit) is left to `LinearWeight.forward`; this only adds to it.
public final class LinearLoRA {
    public let rank: Int
    public let inFeatures: Int
    public let outFeatures: Int
    public let scale: Float
    let a: UnsafeMutablePointer<Float>     // [rank, in]
    let bt: UnsafeMutablePointer<Float>    // [rank, out] = Bᵀ

    /// `a` is A [rank, inFeatures] and `b` is B [outFeatures, rank], both row-major.
    /// Throws `LlamaError.invalidInput` naming `name` when a count does not match the shape, or a
    /// value or `scale` is not finite.
    public init(a: [Float], b: [Float], rank: Int, inFeatures: Int, outFeatures: Int, scale: Float,
                name: String = "lora") throws {
        guard rank > 0, inFeatures > 0, outFeatures > 0 else {
            throw LlamaError.invalidInput(field: "\(name) shape", value: "rank \(rank), in \(inFeatures), out \(outFeatures)",
                                          expected: "positive sizes")
        }
        guard a.count == rank * inFeatures else {
            throw LlamaError.invalidInput(field: "\(name).lora_A", value: "\(a.count) values",
                                          expected: "\(rank)×\(inFeatures) = \(rank * inFeatures)")
        }
        guard b.count == outFeatures * rank else {
            throw LlamaError.invalidInput(field: "\(name).lora_B", value: "\(b.count) values",
                                          expected: "\(outFeatures)×\(rank) = \(outFeatures * rank)")
        }
        guard scale.isFinite else {
            throw LlamaError.invalidInput(field: "\(name) scale", value: "\(scale)", expected: "a finite number")
        }
        if let i = a.firstIndex(where: { !$0.isFinite }) {
            throw LlamaError.invalidInput(field: "\(name).lora_A[\(i / inFeatures), \(i % inFeatures)]", value: "\(a[i])",
                                          expected: "a finite number")
        }
        if let i = b.firstIndex(where: { !$0.isFinite }) {
            throw LlamaError.invalidInput(field: "\(name).lora_B[\(i / rank), \(i % rank)]", value: "\(b[i])",
                                          expected: "a finite number")
        }
        self.rank = rank; self.inFeatures = inFeatures; self.outFeatures = outFeatures; self.scale = scale
        self.a = .allocate(capacity: rank * inFeatures)
        self.a.initialize(from: a, count: rank * inFeatures)
        bt = .allocate(capacity: rank * outFeatures)
        for o in 0..<outFeatures {
            for r in 0..<rank { bt[r * outFeatures + o] = b[o * rank + r] }
        }
    }

    deinit { a.deallocate(); bt.deallocate() }

    /// Bytes held (A and B, float32).
    public var bytes: Int { 4 * rank * (inFeatures + outFeatures) }

    /// One token's h[rank] = A · inp (our GEMV; the first half of `addForward` for T = 1).
    @inline(__always)
    public func decodeHidden(h: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>) {
        matmulForward(out: h, inp: inp, weight: a, bias: nil, rows: 1, inChannels: inFeatures, outChannels: rank)
    }

    /// out[o] += scale · Σ_r h[r] · Bᵀ[r, o] for o in `rows` (one token; the second half of `addForward`).
    @inline(__always)
    public func addDecodeRows(out: UnsafeMutablePointer<Float>, h: UnsafePointer<Float>, rows: Range<Int>) {
        let OC = outFeatures
        for r in 0..<rank {
            let s = scale * h[r], row = bt + r * OC
            for o in rows { out[o] += s * row[o] }
        }
    }

    /// out[T, out] += scale · (inp · Aᵀ) · Bᵀ. `h` is scratch of at least T · rank floats.
    /// T = 1: our GEMV for h, then `rank` scaled row additions of Bᵀ (single-threaded; the branch is
    /// small next to the base GEMV). T > 1: two sgemm calls.
    @inline(__always)
    public func addForward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, rows T: Int,
                           h: UnsafeMutablePointer<Float>) {
        let R = rank, C = inFeatures, OC = outFeatures
        if T == 1 {
            decodeHidden(h: h, inp: inp)
            addDecodeRows(out: out, h: h, rows: 0..<OC)
            return
        }
        BLAS.sgemm(transB: true, m: T, n: R, k: C, a: inp, b: a, c: h)
        BLAS.sgemm(m: T, n: OC, k: R, alpha: scale, a: h, b: bt, beta: 1, c: out)
    }
}
