// Q8_0 matrices (the GGUF embedding / LM head kept in its blocks): the C kernels (AVX2 and portable)
// against a naive reference built here from the block bytes. No fixtures: random blocks.
import Foundation
import Testing
import _TestSupport
import _CKernels
import ModelFormats
@testable import Quantization

/// Random Q8_0 blocks of a [rows, cols] matrix: fp16 scales in ±[2⁻¹⁰, 2⁻⁴] (one subnormal-free
/// range plus a few exact zeros and negative scales), int8 codes in −128…127.
private func randomBlocks(rows: Int, cols: Int, seed: UInt64) -> [UInt8] {
    var rng = SplitMix64(state: seed)
    var bytes: [UInt8] = []
    for _ in 0..<(rows * cols / 32) {
        let magnitude = Float.random(in: 0.001 ... 0.06, using: &rng)
        let scale = Float16(rng.next() % 17 == 0 ? 0 : (rng.next() % 2 == 0 ? magnitude : -magnitude))
        bytes.append(UInt8(scale.bitPattern & 0xFF)); bytes.append(UInt8(scale.bitPattern >> 8))
        for _ in 0..<32 { bytes.append(UInt8(truncatingIfNeeded: rng.next())) }
    }
    return bytes
}

/// value = q · d, straight from the bytes.
private func referenceValues(_ bytes: [UInt8], rows: Int, cols: Int) -> [Float] {
    var out = [Float](repeating: 0, count: rows * cols)
    for b in 0..<(rows * cols / 32) {
        let base = b * 34
        let d = Float(Float16(bitPattern: UInt16(bytes[base]) | UInt16(bytes[base + 1]) << 8))
        for j in 0..<32 { out[b * 32 + j] = Float(Int8(bitPattern: bytes[base + 2 + j])) * d }
    }
    return out
}


private func matrix(_ bytes: [UInt8], rows: Int, cols: Int) throws -> Q8Matrix {
    try bytes.withUnsafeBytes { try Q8Matrix(rows: rows, cols: cols, bytes: $0, file: "test", tensor: "w") }
}

/// Σ a[i·sa] · b[i·sb] for i < n, in double.
private func dot(_ a: ArraySlice<Float>, _ b: [Float], from b0: Int, stride sb: Int) -> Float {
    var s = 0.0
    for (i, v) in a.enumerated() { s += Double(v) * Double(b[b0 + i * sb]) }
    return Float(s)
}

/// max |a − b| / max(1, max |b|).
private func relativeError(_ a: [Float], _ b: [Float]) -> Float {
    let scale = max(1, b.map(abs).max() ?? 0)
    return zip(a, b).map { abs($0 - $1) }.max().map { $0 / scale } ?? 0
}

@Suite(.serialized) struct Q8MatrixTests {
    struct Shape: Sendable, CustomTestStringConvertible {
        let rows: Int, cols: Int
        var testDescription: String { "\(rows)×\(cols)" }
    }
    // odd row counts, rows not a multiple of 4, one block per row, the SmolLM2 width, a parallel split
    static let shapes = [Shape(rows: 1, cols: 32), Shape(rows: 3, cols: 64), Shape(rows: 7, cols: 96),
                         Shape(rows: 37, cols: 576), Shape(rows: 130, cols: 160), Shape(rows: 1001, cols: 96),
                         Shape(rows: 5, cols: 8224)]  // 8224 > 8192: the AVX2 GEMV's fallback body

    @Test(arguments: shapes, [false, true])
    func dequantizeIsExact(shape: Shape, portable: Bool) throws {
        let bytes = randomBlocks(rows: shape.rows, cols: shape.cols, seed: UInt64(shape.rows * 7 + shape.cols))
        let q = try matrix(bytes, rows: shape.rows, cols: shape.cols)
        qlora_q8_force_portable(portable ? 1 : 0)
        defer { qlora_q8_force_portable(0) }
        let expected = referenceValues(bytes, rows: shape.rows, cols: shape.cols)
        #expect(q.dequantized() == expected)
        // a row range in the middle
        let r0 = shape.rows / 3, r1 = shape.rows - shape.rows / 4
        var part = [Float](repeating: .nan, count: (r1 - r0) * shape.cols)
        part.withUnsafeMutableBufferPointer { q.dequantize(rows: r0..<r1, into: $0.baseAddress!) }
        #expect(part == Array(expected[(r0 * shape.cols)..<(r1 * shape.cols)]))
        #expect(q.storageBytes == shape.rows * shape.cols / 32 * 34)
    }

    @Test(arguments: shapes, [false, true])
    func gemvMatchesNaiveReference(shape: Shape, portable: Bool) throws {
        let (n, k) = (shape.rows, shape.cols)
        let bytes = randomBlocks(rows: n, cols: k, seed: UInt64(n * 13 + k))
        let q = try matrix(bytes, rows: n, cols: k)
        var rng = SplitMix64(state: 99)
        let x = (0..<k).map { _ in Float.random(in: -2...2, using: &rng) }
        let w = referenceValues(bytes, rows: n, cols: k)
        let expected = (0..<n).map { r in dot(w[(r * k)..<(r * k + k)], x, from: 0, stride: 1) }
        qlora_q8_force_portable(portable ? 1 : 0)
        defer { qlora_q8_force_portable(0) }
        var y = [Float](repeating: .nan, count: n)
        y.withUnsafeMutableBufferPointer { out in x.withUnsafeBufferPointer { q.gemv(out: out.baseAddress!, inp: $0.baseAddress!) } }
        #expect(relativeError(y, expected) < 1e-5, "\(shape.testDescription) portable \(portable)")
    }

    /// The int16 decode GEMV against the same arithmetic written out here (x quantized per 32 values to
    /// round(x · 32767 / max|x|), exact integer block sums in Double), and against the float32 product
    /// within the bound its x quantization allows (half a step per value).
    @Test(arguments: shapes, [false, true])
    func int16GemvMatchesItsIntegerReferenceAndStaysNearFloat32(shape: Shape, portable: Bool) throws {
        let (n, k) = (shape.rows, shape.cols)
        let bytes = randomBlocks(rows: n, cols: k, seed: UInt64(n * 17 + k))
        let q = try matrix(bytes, rows: n, cols: k)
        var rng = SplitMix64(state: 98)
        let x = (0..<k).map { i in Float.random(in: -2...2, using: &rng) * (i % 61 == 7 ? 30 : 1) }
        var xq = [Double](repeating: 0, count: k), xs = [Double](repeating: 0, count: k / 32)
        for c in stride(from: 0, to: k, by: 32) {
            let m = x[c..<(c + 32)].map(abs).max()!
            let inv: Float = m > 0 ? 32767 / m : 0
            xs[c / 32] = Double(m / 32767)
            for j in c..<(c + 32) { xq[j] = Double((x[j] * inv).rounded(.toNearestOrEven)) }
        }
        let w = referenceValues(bytes, rows: n, cols: k)
        qlora_q8_force_portable(portable ? 1 : 0)
        defer { qlora_q8_force_portable(0) }
        var y = [Float](repeating: .nan, count: n)
        y.withUnsafeMutableBufferPointer { out in
            x.withUnsafeBufferPointer { q.gemv(out: out.baseAddress!, inp: $0.baseAddress!, arithmetic: .int16) }
        }
        for r in 0..<n {
            var integer = 0.0, exact = 0.0, bound = 0.0, terms = 0.0
            for c in 0..<k {
                let v = Double(w[r * k + c])
                integer += v * xq[c] * xs[c / 32]
                exact += v * Double(x[c])
                bound += abs(v) * 0.5 * xs[c / 32]
                terms += abs(v * Double(x[c]))
            }
            #expect(abs(Double(y[r]) - integer) <= 1e-5 * max(terms, 1e-3), "row \(r)")
            #expect(abs(Double(y[r]) - exact) <= bound * 1.001 + 1e-5 * max(terms, 1e-3), "row \(r)")
        }
    }

    /// T > 1 token rows: tiles of weight rows through a workspace that holds only 3 rows (so the
    /// last tile is partial), against the naive product; and dInp = dOut · W likewise.
    @Test(arguments: shapes, [2, 5])
    func tiledForwardAndBackwardMatchNaiveMatmul(shape: Shape, T: Int) throws {
        let (n, k) = (shape.rows, shape.cols)
        let bytes = randomBlocks(rows: n, cols: k, seed: UInt64(n * 31 + k + T))
        let q = try matrix(bytes, rows: n, cols: k)
        let w = referenceValues(bytes, rows: n, cols: k)
        var rng = SplitMix64(state: UInt64(T))
        let inp = (0..<(T * k)).map { _ in Float.random(in: -1...1, using: &rng) }
        let dOut = (0..<(T * n)).map { _ in Float.random(in: -1...1, using: &rng) }
        let ws = NF4Workspace(capacity: 3 * k + 5)
        var out = [Float](repeating: .nan, count: T * n)
        out.withUnsafeMutableBufferPointer { o in
            inp.withUnsafeBufferPointer { q.forward(out: o.baseAddress!, inp: $0.baseAddress!, rows: T, workspace: ws) }
        }
        var expected = [Float](repeating: 0, count: T * n)
        for t in 0..<T {
            for r in 0..<n {
                expected[t * n + r] = dot(inp[(t * k)..<(t * k + k)], w, from: r * k, stride: 1)
            }
        }
        #expect(relativeError(out, expected) < 1e-5)

        var dInp = [Float](repeating: .nan, count: T * k)
        dInp.withUnsafeMutableBufferPointer { d in
            dOut.withUnsafeBufferPointer { q.backwardInput(dInp: d.baseAddress!, dOut: $0.baseAddress!, rows: T, workspace: ws) }
        }
        var expectedD = [Float](repeating: 0, count: T * k)
        for t in 0..<T {
            for c in 0..<k {
                expectedD[t * k + c] = dot(dOut[(t * n)..<(t * n + n)], w, from: c, stride: k)
            }
        }
        #expect(relativeError(dInp, expectedD) < 1e-5)
    }

    @Test func malformedBlocksAreRejectedNamingTheTensor() throws {
        let bytes = randomBlocks(rows: 2, cols: 64, seed: 1)
        #expect(throws: Q8MatrixError.invalidTensor(file: "test", tensor: "w", field: "byte count", value: "135",
                                                    expected: "136 (2·64/32 blocks of 34 bytes)")) {
            _ = try Array(bytes.dropLast()).withUnsafeBytes { try Q8Matrix(rows: 2, cols: 64, bytes: $0, file: "test", tensor: "w") }
        }
        #expect(throws: Q8MatrixError.self) { _ = try matrix(bytes, rows: 4, cols: 40) }     // cols not a multiple of 32
        #expect(throws: Q8MatrixError.self) { _ = try matrix(bytes, rows: 0, cols: 64) }
        do {
            _ = try matrix(bytes, rows: 1, cols: 64)
            Issue.record("a byte count for 2 rows was accepted as 1 row")
        } catch let e as Q8MatrixError {
            #expect("\(e)".contains("'w'") && "\(e)".contains("byte count"))
        }
    }

    /// Through a GGUF file: a Q8_0 tensor reads back exactly; an F32 one or a 3-D one is refused
    /// with the tensor's name.
    @Test func ggufTensorsAreCheckedByTypeAndShape() throws {
        let bytes = randomBlocks(rows: 3, cols: 64, seed: 5)
        var writer = try GGUFWriter()
        try writer.addTensor("emb", type: .q8_0, dims: [64, 3], bytes: bytes)
        try writer.addTensor("cube", type: .q8_0, dims: [32, 2, 2], bytes: randomBlocks(rows: 4, cols: 32, seed: 6))
        try writer.addTensor("dense", shape: [2, 32], values: [Float](repeating: 1, count: 64))
        let path = NSTemporaryDirectory() + "q8-matrix-\(getpid()).gguf"
        try writer.write(to: path)
        defer { try? FileManager.default.removeItem(atPath: path) }
        let file = try GGUFFile(path: path)
        let q = try Q8Matrix(gguf: file, name: "emb")
        #expect(q.rows == 3 && q.cols == 64 && q.dequantized() == referenceValues(bytes, rows: 3, cols: 64))
        #expect(throws: Q8MatrixError.invalidTensor(file: path, tensor: "dense", field: "type", value: "F32", expected: "Q8_0")) {
            _ = try Q8Matrix(gguf: file, name: "dense")
        }
        #expect(throws: Q8MatrixError.invalidTensor(file: path, tensor: "cube", field: "shape", value: "[2, 2, 32]",
                                                    expected: "two dimensions [rows, cols]")) {
            _ = try Q8Matrix(gguf: file, name: "cube")
        }
    }
}
