// Kernels vs the naive references: qlora_nf4_dequantize (tiles) vs dequantizeReference, the fused GEMV
// vs a Double dot product over the dequantized weight, forward/backwardInput vs naive matmuls.
import Testing
import Quantization
import _CKernels

private func randomWeight(rows: Int, cols: Int, type: QuantType4Bit, dq: Bool, blocksize: Int = 64,
                          seed: UInt64) throws -> QuantizedTensor4Bit {
    var rng = SplitMix(seed: seed)
    var x = (0..<(rows * cols)).map { _ in rng.normal() * 0.02 }
    x[min(5, x.count - 1)] = 0.5
    return try QuantizedTensor4Bit.quantize(x, shape: [rows, cols], quantType: type, blocksize: blocksize, doubleQuant: dq)
}

private func maxRelativeError(_ a: [Float], _ b: [Float]) -> Float {
    let scale = max(b.map { abs($0) }.max() ?? 0, 1e-6)
    return zip(a, b).map { abs($0 - $1) }.max().map { $0 / scale } ?? 0
}

struct Shape: CustomTestStringConvertible, Sendable {
    let rows, cols, blocksize: Int
    let type: QuantType4Bit
    let dq: Bool
    var testDescription: String { "\(type) [\(rows),\(cols)] bs\(blocksize)\(dq ? " DQ" : "")" }
}

@Suite(.serialized) struct NF4MatmulTests {
    static let shapes: [Shape] = [
        Shape(rows: 96, cols: 576, blocksize: 64, type: .nf4, dq: true),
        Shape(rows: 64, cols: 1536, blocksize: 64, type: .nf4, dq: false),
        Shape(rows: 37, cols: 75, blocksize: 64, type: .nf4, dq: true),     // blocks cross rows, odd count
        Shape(rows: 33, cols: 256, blocksize: 128, type: .fp4, dq: true),
        Shape(rows: 300, cols: 96, blocksize: 32, type: .int4, dq: false),
        Shape(rows: 6, cols: 192, blocksize: 64, type: .nf4, dq: true),       // one 4-row group + 2 single rows
        Shape(rows: 1030, cols: 512, blocksize: 256, type: .nf4, dq: true),  // split over cores, 4-row aligned chunks
        // The byte-plane AVX2 path (cols % 64 == 0, blocksize % 64 == 0): odd row counts, rows not a
        // multiple of 4, one and several 64-element chunks per block, single- and double-quantized.
        Shape(rows: 7, cols: 64, blocksize: 64, type: .nf4, dq: true),
        Shape(rows: 13, cols: 128, blocksize: 64, type: .fp4, dq: false),
        Shape(rows: 9, cols: 128, blocksize: 128, type: .nf4, dq: false),
        Shape(rows: 41, cols: 576, blocksize: 64, type: .nf4, dq: true),
        Shape(rows: 19, cols: 1536, blocksize: 64, type: .nf4, dq: true),
        Shape(rows: 23, cols: 1536, blocksize: 512, type: .fp4, dq: true),
        Shape(rows: 11, cols: 192, blocksize: 32, type: .nf4, dq: true),     // blocksize 32: the vpermps path
    ]

    @Test(arguments: shapes, [false, true])
    func tileDequantizationMatchesReference(shape: Shape, portable: Bool) throws {
        let w = try randomWeight(rows: shape.rows, cols: shape.cols, type: shape.type, dq: shape.dq,
                                 blocksize: shape.blocksize, seed: 1)
        qlora_nf4_force_portable(portable ? 1 : 0)
        defer { qlora_nf4_force_portable(0) }
        let ref = w.dequantizeReference(roundToDType: false)
        for (start, count) in [(0, w.count), (3, 70), (shape.cols * 2 + 1, shape.cols * 3 - 5), (w.count - 33, 33)] {
            var out = [Float](repeating: .nan, count: count)
            out.withUnsafeMutableBufferPointer { w.dequantize(start: start, into: $0) }
            #expect(out.map(\.bitPattern) == ref[start..<(start + count)].map(\.bitPattern))
        }
    }

    @Test(arguments: shapes, [false, true])
    func gemvMatchesNaiveReference(shape: Shape, portable: Bool) throws {
        let w = try randomWeight(rows: shape.rows, cols: shape.cols, type: shape.type, dq: shape.dq,
                                 blocksize: shape.blocksize, seed: 2)
        var rng = SplitMix(seed: 9)
        let x = (0..<shape.cols).map { _ in rng.normal() }
        qlora_nf4_force_portable(portable ? 1 : 0)
        defer { qlora_nf4_force_portable(0) }
        var y = [Float](repeating: .nan, count: shape.rows)
        y.withUnsafeMutableBufferPointer { yp in
            x.withUnsafeBufferPointer { NF4Matmul.gemv(out: yp.baseAddress!, inp: $0.baseAddress!, weight: w) }
        }
        let ref = NF4Matmul.gemvReference(weight: w, x: x)
        #expect(maxRelativeError(y, ref) < 1e-5)
    }

    /// With x = e_c (one-hot) every product but one is 0·code and each block sum is exact, so the
    /// GEMV must return column c of the dequantized weight bit for bit: every weight is decoded to
    /// exactly code[nibble] × blockScale, and every position of the permuted order is checked.
    @Test(arguments: [
        Shape(rows: 5, cols: 128, blocksize: 64, type: .nf4, dq: true),
        Shape(rows: 6, cols: 192, blocksize: 64, type: .fp4, dq: false),
        Shape(rows: 3, cols: 576, blocksize: 64, type: .nf4, dq: true),
        Shape(rows: 4, cols: 256, blocksize: 128, type: .int4, dq: true),
    ], [false, true])
    func gemvOfOneHotInputIsTheExactColumn(shape: Shape, portable: Bool) throws {
        let w = try randomWeight(rows: shape.rows, cols: shape.cols, type: shape.type, dq: shape.dq,
                                 blocksize: shape.blocksize, seed: 5)
        let ref = w.dequantizeReference(roundToDType: false)
        qlora_nf4_force_portable(portable ? 1 : 0)
        defer { qlora_nf4_force_portable(0) }
        var x = [Float](repeating: 0, count: shape.cols)
        var y = [Float](repeating: .nan, count: shape.rows)
        var mismatches = 0
        for c in 0..<shape.cols {
            x[c] = 1
            y.withUnsafeMutableBufferPointer { yp in
                x.withUnsafeBufferPointer { NF4Matmul.gemv(out: yp.baseAddress!, inp: $0.baseAddress!, weight: w) }
            }
            for r in 0..<shape.rows where y[r] != ref[r * shape.cols + c] { mismatches += 1 }
            x[c] = 0
        }
        #expect(mismatches == 0)
    }

    @Test(arguments: shapes)
    func forwardAndBackwardInputMatchNaiveMatmul(shape: Shape) throws {
        let w = try randomWeight(rows: shape.rows, cols: shape.cols, type: shape.type, dq: shape.dq,
                                 blocksize: shape.blocksize, seed: 3)
        let (n, k, t) = (shape.rows, shape.cols, 5)
        var rng = SplitMix(seed: 4)
        let inp = (0..<(t * k)).map { _ in rng.normal() }
        let dOut = (0..<(t * n)).map { _ in rng.normal() }
        let wd = w.dequantizeReference(roundToDType: false)
        // A small workspace forces several tiles (and one row longer than it for the growth path).
        let ws = NF4Workspace(capacity: k * 7 + 3)
        var out = [Float](repeating: .nan, count: t * n)
        out.withUnsafeMutableBufferPointer { o in
            inp.withUnsafeBufferPointer { NF4Matmul.forward(out: o.baseAddress!, inp: $0.baseAddress!, weight: w, rows: t, workspace: ws) }
        }
        var refOut = [Float](repeating: 0, count: t * n)
        for r in 0..<t { for j in 0..<n {
            var s: Double = 0
            for c in 0..<k { s += Double(inp[r * k + c]) * Double(wd[j * k + c]) }
            refOut[r * n + j] = Float(s)
        } }
        #expect(maxRelativeError(out, refOut) < 1e-5)

        var dInp = [Float](repeating: 1, count: t * k)
        dInp.withUnsafeMutableBufferPointer { d in
            dOut.withUnsafeBufferPointer {
                NF4Matmul.backwardInput(dInp: d.baseAddress!, dOut: $0.baseAddress!, weight: w, rows: t, workspace: ws,
                                        accumulate: true)
            }
        }
        var refIn = [Float](repeating: 0, count: t * k)
        for r in 0..<t { for c in 0..<k {
            var s: Double = 1
            for j in 0..<n { s += Double(dOut[r * n + j]) * Double(wd[j * k + c]) }
            refIn[r * k + c] = Float(s)
        } }
        #expect(maxRelativeError(dInp, refIn) < 1e-5)

        // The tiled baseline (dequantized tiles + sgemm) the benchmarks compare against.
        var tiledOut = [Float](repeating: .nan, count: t * n), tiledIn = [Float](repeating: 1, count: t * k)
        tiledOut.withUnsafeMutableBufferPointer { o in
            inp.withUnsafeBufferPointer { NF4Matmul.forwardTiled(out: o.baseAddress!, inp: $0.baseAddress!, weight: w, rows: t, workspace: ws) }
        }
        tiledIn.withUnsafeMutableBufferPointer { d in
            dOut.withUnsafeBufferPointer {
                NF4Matmul.backwardInputTiled(dInp: d.baseAddress!, dOut: $0.baseAddress!, weight: w, rows: t, workspace: ws,
                                             accumulate: true)
            }
        }
        #expect(maxRelativeError(tiledOut, refOut) < 1e-5)
        #expect(maxRelativeError(tiledIn, refIn) < 1e-5)

        let tiny = NF4Workspace(capacity: 4)  // smaller than one row: grows once
        var one = [Float](repeating: .nan, count: 2 * n)
        one.withUnsafeMutableBufferPointer { o in
            inp.withUnsafeBufferPointer { NF4Matmul.forwardTiled(out: o.baseAddress!, inp: $0.baseAddress!, weight: w, rows: 2, workspace: tiny) }
        }
        #expect(maxRelativeError(one, Array(refOut.prefix(2 * n))) < 1e-5)
    }
}
