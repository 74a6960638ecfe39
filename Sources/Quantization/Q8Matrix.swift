import Kernels
import ModelFormats
import _CKernels

/// A malformed Q8_0 tensor; the message names the file, the tensor, the field and the value.
public enum Q8MatrixError: Error, Equatable, CustomStringConvertible {
    case invalidTensor(file: String, tensor: String, field: String, value: String, expected: String)

    public var description: String {
        switch self {
        case let .invalidTensor(file, tensor, field, value, expected):
            return "\(file): Q8_0 tensor '\(tensor)': \(field) is \(value), expected \(expected)"
        }
    }
}

/// A frozen [rows, cols] matrix held as ggml Q8_0 blocks (SPEC §8.7): rows · cols/32 blocks of 34
/// bytes, row-major, each a little-endian fp16 scale d and 32 int8 q; value = q · d (exact in
/// float32). `cols` is a multiple of 32, so every row starts on a block. Owns a copy of the blocks
/// (34 bytes per 32 values, ~1.06 bytes per value); immutable, so it can be shared across threads.
///
/// Products follow `NF4Matmul`: one token row is a fused GEMV (dequantized in registers, split over
/// the cores); several rows dequantize tiles of weight rows into an `NF4Workspace` and call sgemm.
public final class Q8Matrix: @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    /// The blocks, `storageBytes` bytes.
    public let blocks: UnsafeMutablePointer<UInt8>
    /// Bytes of one block of 32 values (fp16 scale + 32 int8).
    public static let blockBytes = Int(QLORA_Q8_BLOCK_BYTES)

    /// Bytes of one row of blocks.
    public var rowBytes: Int { cols / 32 * Q8Matrix.blockBytes }
    /// Bytes held: 34 per 32 values.
    public var storageBytes: Int { rows * rowBytes }
    /// rows · cols.
    public var count: Int { rows * cols }

    /// Copies the Q8_0 blocks of a [rows, cols] matrix from `bytes`. Throws `Q8MatrixError` naming
    /// `file` and `tensor` when a size is not positive, `cols` is not a multiple of 32 or the byte
    /// count is not rows · cols/32 · 34.
    public init(rows: Int, cols: Int, bytes: UnsafeRawBufferPointer, file: String, tensor: String) throws {
        func fail(_ field: String, _ value: String, _ expected: String) -> Q8MatrixError {
            .invalidTensor(file: file, tensor: tensor, field: field, value: value, expected: expected)
        }
        guard rows > 0, cols > 0 else { throw fail("shape", "[\(rows), \(cols)]", "positive sizes") }
        guard cols % 32 == 0 else { throw fail("columns", "\(cols)", "a multiple of 32 (the Q8_0 block size)") }
        let (needed, overflow) = rows.multipliedReportingOverflow(by: cols / 32 * Q8Matrix.blockBytes)
        guard !overflow else { throw fail("shape", "[\(rows), \(cols)]", "a size that fits in memory") }
        guard bytes.count == needed else {
            throw fail("byte count", "\(bytes.count)", "\(needed) (\(rows)·\(cols)/32 blocks of 34 bytes)")
        }
        self.rows = rows
        self.cols = cols
        blocks = .allocate(capacity: needed)
        if let src = bytes.baseAddress { UnsafeMutableRawPointer(blocks).copyMemory(from: src, byteCount: needed) }
    }

    /// Reads the Q8_0 tensor `name` of `file` (PyTorch shape [rows, cols]). Throws `Q8MatrixError`
    /// naming the tensor when it is not Q8_0 or not two-dimensional, or its bytes do not match.
    public convenience init(gguf file: GGUFFile, name: String) throws {
        let info = try file.tensorInfo(name)
        guard info.type == .q8_0 else {
            throw Q8MatrixError.invalidTensor(file: file.path, tensor: name, field: "type", value: info.type.description,
                                              expected: "Q8_0")
        }
        let shape = info.shape
        guard shape.count == 2 else {
            throw Q8MatrixError.invalidTensor(file: file.path, tensor: name, field: "shape", value: "\(shape)",
                                              expected: "two dimensions [rows, cols]")
        }
        try self.init(rows: shape[0], cols: shape[1], bytes: try file.rawBytes(name), file: file.path, tensor: name)
    }

    deinit { blocks.deallocate() }

    // MARK: - Dequantization

    /// out[(r − rows.lowerBound)·cols + c] = W[r, c] for r in `rowRange` (exact values; no bounds check).
    @inline(__always)
    public func dequantize(rows rowRange: Range<Int>, into out: UnsafeMutablePointer<Float>) {
        qlora_q8_dequantize(out, blocks, Int64(rowRange.lowerBound), Int64(rowRange.upperBound), Int64(cols))
    }

    /// Every value, row-major [rows, cols], dequantized on all cores into `out` (rows · cols floats).
    public func dequantizeAll(into out: UnsafeMutablePointer<Float>) {
        let parts = count < 1 << 16 ? 1 : coreCount
        parallelFor(parts) { p in
            let r0 = rows * p / parts, r1 = rows * (p + 1) / parts
            dequantize(rows: r0..<r1, into: out + r0 * cols)
        }
    }

    /// Every value as a new array, row-major [rows, cols].
    public func dequantized() -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { buf, n in
            dequantizeAll(into: buf.baseAddress!)
            n = count
        }
    }

    // MARK: - Products

    /// y[rows] = W · x[cols], dequantizing in registers; output rows split across the cores in
    /// multiples of 4 (the kernel's row group). `.int16` quantizes x to 16 bits per 32 values and sums
    /// exact integer products per block (`qlora_q8_gemv16`).
    public func gemv(out y: UnsafeMutablePointer<Float>, inp x: UnsafePointer<Float>,
                     arithmetic: DecodeArithmetic = .float32) {
        let n = rows, k = cols, blocks = UnsafePointer(self.blocks)
        let chunks = n * k < 1 << 16 ? 1 : min(coreCount * 2, max(1, n / 16))
        let int16 = arithmetic == .int16
        withInt16Input(int16, count: k, block: 32, quantize: { qlora_q8_quantize_input16($0, $1, x, Int64(k)) }) { xq, xs in
            parallelFor(chunks) { c in
                let r0 = c == 0 ? 0 : (n * c / chunks) & ~3, r1 = c == chunks - 1 ? n : (n * (c + 1) / chunks) & ~3
                if int16 { qlora_q8_gemv16(y + r0, blocks, xq, xs, Int64(r0), Int64(r1), Int64(k)) }
                else { qlora_q8_gemv(y + r0, blocks, x, Int64(r0), Int64(r1), Int64(k)) }
            }
        }
    }

    /// out[T, rows] = inp[T, cols] · Wᵀ. T == 1 is the fused GEMV; T > 1 dequantizes tiles of weight
    /// rows into `workspace` and runs sgemm per tile (writing that tile's output columns).
    public func forward(out: UnsafeMutablePointer<Float>, inp: UnsafePointer<Float>, rows T: Int,
                        workspace: NF4Workspace, arithmetic: DecodeArithmetic = .float32) {
        if T == 1 { gemv(out: out, inp: inp, arithmetic: arithmetic); return }
        let n = rows, k = cols
        forEachTile(workspace) { r0, tile, w in
            BLAS.sgemm(transB: true, m: T, n: tile, k: k, a: inp, b: w, c: out + r0, ldc: n)
        }
    }

    /// dInp[T, cols] (+)= dOut[T, rows] · W, dOut's rows `ldOut` floats apart (default `rows`).
    /// Overwrites dInp unless `accumulate`.
    public func backwardInput(dInp: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>, ldOut: Int? = nil,
                              rows T: Int, workspace: NF4Workspace, accumulate: Bool = false) {
        let k = cols, ld = ldOut ?? rows
        var first = !accumulate
        forEachTile(workspace) { r0, tile, w in
            BLAS.sgemm(m: T, n: k, k: tile, a: dOut + r0, lda: ld, b: w, beta: first ? 0 : 1, c: dInp)
            first = false
        }
    }

    /// Calls body(firstRow, tileRows, tile) for consecutive tiles of weight rows dequantized into
    /// `workspace` (as many whole rows as it holds; grown to one row if smaller).
    public func forEachTile(_ workspace: NF4Workspace, _ body: (Int, Int, UnsafePointer<Float>) -> Void) {
        let n = rows, k = cols
        workspace.reserve(k)
        let tileRows = max(1, min(n, workspace.capacity / k))
        let buf = workspace.buffer
        var r0 = 0
        while r0 < n {
            let tile = min(tileRows, n - r0), start = r0
            let parts = tile * k < 1 << 15 ? 1 : min(coreCount, tile)
            parallelFor(parts) { p in
                let a = start + tile * p / parts, b = start + tile * (p + 1) / parts
                dequantize(rows: a..<b, into: buf + (a - start) * k)
            }
            body(r0, tile, UnsafePointer(buf))
            r0 += tile
        }
    }
}
