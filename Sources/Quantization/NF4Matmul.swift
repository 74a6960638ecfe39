import Kernels
import _CKernels

/// Reusable scratch for `NF4Matmul`: one float32 tile of dequantized weight rows. Create once per
/// model (or per thread) and pass to every call; calls never allocate.
public final class NF4Workspace: @unchecked Sendable {
    /// Capacity in floats.
    public private(set) var capacity: Int
    @usableFromInline private(set) var buffer: UnsafeMutablePointer<Float>

    /// Packing buffers of `NF4Gemm`, which multiplies 4-bit weights by more than one row (training,
    /// prefill) without a dequantized tile.
    public let gemm: NF4GemmWorkspace

    /// A workspace of `capacity` floats (default 256 Ki floats = 1 MiB, e.g. 455 rows of 576).
    public init(capacity: Int = 1 << 18) {
        self.capacity = max(capacity, 1)
        buffer = .allocate(capacity: self.capacity)
        gemm = NF4GemmWorkspace()
    }

    deinit { buffer.deallocate() }

    /// Grows to at least `floats` (only when a weight row is longer than the capacity: once, not per call).
    func reserve(_ floats: Int) {
        guard floats > capacity else { return }
        buffer.deallocate()
        buffer = .allocate(capacity: floats)
        capacity = floats
    }
}

/// How the GEMVs of a decoded token (one row) multiply: the 4-bit linear weights' and a Q8_0 LM
/// head's. Prefill, training and every product of more than one row always run in float32.
public enum DecodeArithmetic: String, Sendable, CaseIterable {
    /// float32 products of the exact codes: the dequantized weights, as the reference path.
    case float32
    /// 16-bit integer products (`qlora_nf4_gemv16`): x quantized per 64 elements to 14 bits, the codes
    /// to 16; each 64-product chunk summed exactly, then scaled in float32. Relative error ~1e-4
    /// (bfloat16 compute: ~2e-3); ~1.6× the float32 kernel's speed.
    case int16
}

/// Runs `body(xq, xs)` with x[count] quantized by `quantize` into int16 values xq[count] and their
/// scales xs[count / block], on the stack, once for all the chunks of an int16 GEMV; when not
/// `enabled`, with one-element placeholders that the float32 kernels never read.
@inline(__always)
func withInt16Input(_ enabled: Bool, count: Int, block: Int,
                    quantize: (UnsafeMutablePointer<Int16>, UnsafeMutablePointer<Float>) -> Void,
                    _ body: (UnsafePointer<Int16>, UnsafePointer<Float>) -> Void) {
    withUnsafeTemporaryAllocation(of: Int16.self, capacity: enabled ? count : 1) { xq in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: enabled ? count / block : 1) { xs in
            if enabled { quantize(xq.baseAddress!, xs.baseAddress!) }
            body(UnsafePointer(xq.baseAddress!), UnsafePointer(xs.baseAddress!))
        }
    }
}

/// Products with a frozen 4-bit weight W [out, in] (QuantizedTensor4Bit), llm.c style:
/// outputs first, then inputs, then sizes. Row-major; `rows` = number of token rows.
public enum NF4Matmul {
    /// out[rows, out] = inp[rows, in] · Wᵀ: the fused GEMV for one row, else `NF4Gemm` (W decoded
    /// straight into its packed panels).
    /// `arithmetic` applies to the one-row GEMV only.
    public static func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>,
                               weight: QuantizedTensor4Bit, rows: Int, workspace: NF4Workspace,
                               arithmetic: DecodeArithmetic = .float32) {
        if rows == 1 { gemv(out: out, inp: inp, weight: weight, arithmetic: arithmetic); return }
        NF4Gemm.forward(out: out, inp: inp, weight: weight, rows: rows, workspace: workspace.gemm)
    }

    /// dInp[rows, in] (+)= dOut[rows, out] · W (`NF4Gemm`). Overwrites dInp unless `accumulate`.
    public static func backwardInput(dInp: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                                     weight: QuantizedTensor4Bit, rows: Int, workspace: NF4Workspace,
                                     accumulate: Bool = false) {
        NF4Gemm.backwardInput(dInp: dInp, dOut: dOut, weight: weight, rows: rows, workspace: workspace.gemm,
                              accumulate: accumulate)
    }

    /// The products above the way they were computed before `NF4Gemm`: W dequantized a tile of rows
    /// at a time into the workspace, then OpenBLAS sgemm per tile. Kept as the benchmarks' baseline.
    public static func forwardTiled(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>,
                                    weight: QuantizedTensor4Bit, rows: Int, workspace: NF4Workspace) {
        let (n, k) = (weight.rows, weight.columns)
        forEachTile(weight, workspace) { r0, tile, w in
            // out[:, r0..<r0+tile] = inp · w[tile, k]ᵀ
            BLAS.sgemm(transB: true, m: rows, n: tile, k: k, a: inp, b: w, c: out + r0, ldc: n)
        }
    }

    /// dInp (+)= dOut · W as `forwardTiled` does it (the benchmarks' baseline).
    public static func backwardInputTiled(dInp: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                                          weight: QuantizedTensor4Bit, rows: Int, workspace: NF4Workspace,
                                          accumulate: Bool = false) {
        let (n, k) = (weight.rows, weight.columns)
        var first = !accumulate
        forEachTile(weight, workspace) { r0, tile, w in
            BLAS.sgemm(m: rows, n: k, k: tile, a: dOut + r0, lda: n, b: w, beta: first ? 0 : 1, c: dInp)
            first = false
        }
    }

    /// y[out] = W · x[in], dequantizing in registers; output rows split across the cores.
    public static func gemv(out y: UnsafeMutablePointer<Float>, inp x: UnsafePointer<Float>,
                            weight: QuantizedTensor4Bit, arithmetic: DecodeArithmetic = .float32) {
        gemv([(out: y, weight: weight)], inp: x, arithmetic: arithmetic)
    }

    /// out_i[rows_i] = W_i · x for several weights with the same in-features (e.g. q|k|v, gate|up) in ONE
    /// parallel loop: their rows are taken as one concatenated range and split evenly across the cores
    /// (fewer thread hand-offs per decoded token). Weights whose column count differs from the first's
    /// are computed in a parallel loop of their own. `.int16` falls back to float32 where its kernel
    /// does not apply (in-features or block size not a multiple of 64). `epilogue(i, rows)`, when
    /// given, runs on the same thread right after rows `rows` of part i are written (e.g. to add a
    /// LoRA branch to them), so it needs no loop of its own.
    public static func gemv(_ parts: [(out: UnsafeMutablePointer<Float>, weight: QuantizedTensor4Bit)],
                            inp x: UnsafePointer<Float>, arithmetic: DecodeArithmetic = .float32,
                            epilogue: ((Int, Range<Int>) -> Void)? = nil) {
        guard let k = parts.first?.weight.columns else { return }
        if parts.contains(where: { $0.weight.columns != k }) {
            for (i, part) in parts.enumerated() {
                gemv([part], inp: x, arithmetic: arithmetic, epilogue: epilogue.map { e in { _, rows in e(i, rows) } })
            }
            return
        }
        let n = parts.reduce(0) { $0 + $1.weight.rows }
        let work = n * k
        // One chunk per core for decode-sized weights (less dispatch overhead); more for big ones
        // (balance on a shared machine). Chunk edges fall on multiples of 4 rows.
        let chunks = work < 1 << 16 ? 1 : min(work < 1 << 22 ? coreCount : coreCount * 4, max(1, n / 16))
        withUnsafeTemporaryAllocation(of: qlora_nf4_weight.self, capacity: parts.count) { cws in
            for (i, part) in parts.enumerated() { (cws.baseAddress! + i).initialize(to: part.weight.cWeight) }
            defer { _ = cws.deinitialize() }
            let cw = UnsafePointer(cws.baseAddress!)
            let int16 = arithmetic == .int16 && (0..<parts.count).allSatisfy { qlora_nf4_gemv16_supported(cw + $0, Int64(k)) != 0 }
            withInt16Input(int16, count: k, block: 64, quantize: { qlora_nf4_quantize_input16($0, $1, x, Int64(k)) }) { xq, xs in
                parallelFor(chunks) { c in
                    let lo = c == 0 ? 0 : (n * c / chunks) & ~3, hi = c == chunks - 1 ? n : (n * (c + 1) / chunks) & ~3
                    var base = 0
                    for (i, part) in parts.enumerated() {
                        let rows = part.weight.rows
                        let a = max(lo, base), b = min(hi, base + rows)
                        if a < b {
                            let out = part.out + (a - base), r0 = Int64(a - base), r1 = Int64(b - base)
                            if int16 { qlora_nf4_gemv16(out, cw + i, xq, xs, r0, r1, Int64(k)) }
                            else { qlora_nf4_gemv(out, cw + i, x, r0, r1, Int64(k)) }
                            epilogue?(i, (a - base)..<(b - base))
                        }
                        base += rows
                    }
                }
            }
        }
    }

    /// Naive reference: y = W · x with W dequantized element by element (float32 sums). For tests.
    public static func gemvReference(weight: QuantizedTensor4Bit, x: [Float]) -> [Float] {
        let w = weight.dequantizeReference(roundToDType: false)
        let (n, k) = (weight.rows, weight.columns)
        return (0..<n).map { r in
            var s: Double = 0
            for c in 0..<k { s += Double(w[r * k + c]) * Double(x[c]) }
            return Float(s)
        }
    }

    /// Calls body(firstRow, tileRows, tile) for consecutive row tiles of W dequantized into the workspace.
    @inline(__always)
    static func forEachTile(_ weight: QuantizedTensor4Bit, _ workspace: NF4Workspace,
                            _ body: (Int, Int, UnsafePointer<Float>) -> Void) {
        let (n, k) = (weight.rows, weight.columns)
        workspace.reserve(k)
        let tileRows = max(1, min(n, workspace.capacity / k))
        let buf = workspace.buffer
        var cw = weight.cWeight
        withUnsafePointer(to: &cw) { w in
            var r0 = 0
            while r0 < n {
                let tile = min(tileRows, n - r0)
                // Dequantize the tile on all cores (flat range; blocks may cross rows).
                let total = tile * k
                let parts = total < 1 << 15 ? 1 : coreCount
                parallelFor(parts) { p in
                    let a = total * p / parts, b = total * (p + 1) / parts
                    qlora_nf4_dequantize(buf + a, w, Int64(r0 * k + a), Int64(b - a))
                }
                body(r0, tile, UnsafePointer(buf))
                r0 += tile
            }
        }
    }
}
