// The int16 decode GEMV (qlora_nf4_gemv16 via NF4Matmul.gemv(arithmetic: .int16)) against two references:
// the same integer arithmetic written out naively here (x and codes quantized as documented in nf4.h,
// products summed in Double: only float32 rounding may differ), and the exact float32 GEMV, which it
// must approach within the error its quantization allows.
import Testing
import Quantization
import _CKernels

private func weight(rows: Int, cols: Int, type: QuantType4Bit, dq: Bool, blocksize: Int, seed: UInt64) throws -> QuantizedTensor4Bit {
    var rng = SplitMix(seed: seed)
    var x = (0..<(rows * cols)).map { _ in rng.normal() * 0.02 }
    x[min(5, x.count - 1)] = 0.5
    return try QuantizedTensor4Bit.quantize(x, shape: [rows, cols], quantType: type, blocksize: blocksize, doubleQuant: dq)
}

/// x with a few large outliers, as the inputs of real layers have.
private func input(_ n: Int, seed: UInt64) -> [Float] {
    var rng = SplitMix(seed: seed)
    return (0..<n).map { i in rng.normal() * (i % 97 == 3 ? 20 : 1) }
}

private func gemv16(_ w: QuantizedTensor4Bit, _ x: [Float]) -> [Float] {
    var y = [Float](repeating: .nan, count: w.rows)
    y.withUnsafeMutableBufferPointer { yp in
        x.withUnsafeBufferPointer { NF4Matmul.gemv(out: yp.baseAddress!, inp: $0.baseAddress!, weight: w, arithmetic: .int16) }
    }
    return y
}

/// The documented quantization, element by element: per 64 inputs q = round(x · 8191 / max|x|) and
/// scale max|x| / 8191; codes round(code / max|code| · 32767). Returns y and, per row, the error bound
/// of the int16 result against the exact float32 product (half a step of x and of the codes).
private func integerReference(_ w: QuantizedTensor4Bit, _ x: [Float]) -> (y: [Double], bound: [Double]) {
    let codes = w.quantMap, cols = w.columns, packed = w.packed
    let cmax = codes.map { abs($0) }.max()!
    let code16 = codes.map { Double(($0 / cmax * 32767).rounded(.toNearestOrEven)) }
    var xq = [Double](repeating: 0, count: cols), xs = [Double](repeating: 0, count: cols / 64)
    for c in stride(from: 0, to: cols, by: 64) {
        let m = x[c..<(c + 64)].map { abs($0) }.max()!
        let inv: Float = m > 0 ? 8191 / m : 0
        xs[c / 64] = Double(m / 8191)
        for j in c..<(c + 64) { xq[j] = Double(min(max((x[j] * inv).rounded(.toNearestOrEven), -8191), 8191)) }
    }
    let scales = w.blockScales().map(Double.init)
    var y = [Double](repeating: 0, count: w.rows), bound = [Double](repeating: 0, count: w.rows)
    for r in 0..<w.rows {
        for c in 0..<cols {
            let i = r * cols + c
            let s = scales[i / w.blocksize], nibble = Int(i % 2 == 0 ? packed[i / 2] >> 4 : packed[i / 2] & 0x0F)
            y[r] += s * code16[nibble] * Double(cmax) / 32767 * xq[c] * xs[c / 64]
            bound[r] += s * (Double(abs(codes[nibble])) * 0.5 * xs[c / 64] + 0.5 * Double(cmax) / 32767 * Double(abs(x[c])))
        }
    }
    return (y, bound)
}

@Suite(.serialized) struct NF4Gemv16Tests {
    static let shapes: [Shape] = [
        Shape(rows: 96, cols: 576, blocksize: 64, type: .nf4, dq: true),
        Shape(rows: 7, cols: 64, blocksize: 64, type: .nf4, dq: false),
        Shape(rows: 9, cols: 1536, blocksize: 64, type: .nf4, dq: true),
        Shape(rows: 13, cols: 192, blocksize: 128, type: .nf4, dq: true),   // blocks of 128 cross rows
        Shape(rows: 5, cols: 512, blocksize: 256, type: .fp4, dq: false),   // FP4 codes (max |code| 12)
        Shape(rows: 11, cols: 128, blocksize: 64, type: .int4, dq: true),
        Shape(rows: 1030, cols: 512, blocksize: 256, type: .nf4, dq: true), // split over the cores
    ]

    @Test(arguments: shapes, [false, true])
    func matchesTheIntegerReference(shape: Shape, portable: Bool) throws {
        let w = try weight(rows: shape.rows, cols: shape.cols, type: shape.type, dq: shape.dq, blocksize: shape.blocksize, seed: 3)
        let x = input(shape.cols, seed: 4)
        qlora_nf4_force_portable(portable ? 1 : 0)
        defer { qlora_nf4_force_portable(0) }
        let y = gemv16(w, x)
        let (ref, bound) = integerReference(w, x)
        // Same integers; only the float32 accumulation of ≤ cols/64 scaled chunk sums differs.
        let scale = max(bound.max()!, ref.map { abs($0) }.max()!)
        for r in 0..<w.rows { #expect(abs(Double(y[r]) - ref[r]) <= 1e-5 * scale, "row \(r)") }
    }

    @Test(arguments: shapes)
    func staysWithinItsErrorBoundOfTheFloat32Product(shape: Shape) throws {
        let w = try weight(rows: shape.rows, cols: shape.cols, type: shape.type, dq: shape.dq, blocksize: shape.blocksize, seed: 5)
        let x = input(shape.cols, seed: 6)
        let y = gemv16(w, x)
        let exact = NF4Matmul.gemvReference(weight: w, x: x)
        let (_, bound) = integerReference(w, x)
        var worst = 0.0, largest = 0.0
        for r in 0..<w.rows {
            let e = abs(Double(y[r]) - Double(exact[r]))
            #expect(e <= bound[r] * 1.001 + 1e-6 * Double(abs(exact[r])), "row \(r): error \(e), bound \(bound[r])")
            worst = max(worst, e); largest = max(largest, Double(abs(exact[r])))
        }
        // ~1e-4 relative in practice; well below bfloat16's ~4e-3 per product.
        #expect(worst < 1e-3 * largest)
    }

    /// Where the int16 kernel does not apply (in-features not a multiple of 64, blocksize 32), the
    /// float32 GEMV runs: the same bits as arithmetic .float32.
    @Test(arguments: [(37, 75, 64), (11, 192, 32)])
    func unsupportedShapesFallBackToFloat32(rows: Int, cols: Int, blocksize: Int) throws {
        let w = try weight(rows: rows, cols: cols, type: .nf4, dq: true, blocksize: blocksize, seed: 7)
        let x = input(cols, seed: 8)
        var exact = [Float](repeating: .nan, count: rows)
        exact.withUnsafeMutableBufferPointer { yp in
            x.withUnsafeBufferPointer { NF4Matmul.gemv(out: yp.baseAddress!, inp: $0.baseAddress!, weight: w) }
        }
        #expect(gemv16(w, x).map(\.bitPattern) == exact.map(\.bitPattern))
    }

    /// A NaN or infinite input never yields finite outputs (as float32 products would not).
    @Test(arguments: [Float.nan, .infinity], [false, true])
    func nonFiniteInputGivesNonFiniteOutput(bad: Float, portable: Bool) throws {
        let w = try weight(rows: 8, cols: 128, type: .nf4, dq: true, blocksize: 64, seed: 9)
        var x = input(128, seed: 10)
        x[70] = bad
        qlora_nf4_force_portable(portable ? 1 : 0)
        defer { qlora_nf4_force_portable(0) }
        #expect(gemv16(w, x).allSatisfy { !$0.isFinite })
    }
}
