import Kernels
import _CKernels

extension QuantizedTensor4Bit {
    /// Quantizes `values` (row-major [out, in], already exactly representable in `dtype`) exactly as
    /// bitsandbytes 0.50.2 `quantize_4bit` does on CPU (SPEC §1.3; pure-torch kernel):
    /// absmax per block in float32; x̂ = x · (1/absmax) for full blocks and x / absmax for the final
    /// partial block (absmax clamped to ≥ 1e−38), clamped to [−1, 1]; code = number of midpoints
    /// strictly below x̂ (ties to the lower code). With `doubleQuant`, the absmax is then quantized as
    /// `quantize_blockwise(absmax − mean(absmax), blocksize: 256)` with the C++ CPU kernel's semantics.
    public static func quantize(_ values: [Float], shape: [Int], dtype: WeightDType = .float32,
                                quantType: QuantType4Bit = .nf4, blocksize: Int = 64,
                                doubleQuant: Bool = false) throws -> QuantizedTensor4Bit {
        guard validBlocksizes.contains(blocksize) else {
            throw QuantizationError.invalidValue(field: "blocksize", value: String(blocksize),
                                                 expected: "one of \(validBlocksizes)")
        }
        guard shape.count == 2, shape[0] > 0, shape[1] > 0 else {
            throw QuantizationError.invalidValue(field: "shape", value: "\(shape)", expected: "[out, in] with both > 0")
        }
        let n = shape[0] * shape[1]
        guard values.count == n else {
            throw QuantizationError.invalidValue(field: "value count", value: String(values.count),
                                                 expected: "\(n) for shape \(shape)")
        }
        let nb = (n + blocksize - 1) / blocksize
        var absmax = [Float](repeating: 0, count: nb)
        var packed = [UInt8](repeating: 0, count: (n + 1) / 2)
        let sorter = FourBitSorter(quantType)
        values.withUnsafeBufferPointer { x in
            absmax.withUnsafeMutableBufferPointer { am in
                packed.withUnsafeMutableBufferPointer { out in
                    sorter.midpoints.withUnsafeBufferPointer { t in
                        sorter.order.withUnsafeBufferPointer { order in
                            // Blocks are independent; an even blocksize keeps every block on whole bytes.
                            let chunks = min(coreCount, max(1, nb / 64))
                            parallelFor(chunks) { c in
                                qlora_nf4_quantize_blocks(out.baseAddress!, am.baseAddress!, x.baseAddress!, Int64(n),
                                                          Int64(blocksize), Int64(nb * c / chunks), Int64(nb * (c + 1) / chunks),
                                                          t.baseAddress!, order.baseAddress!, sorter.zeroCode)
                            }
                        }
                    }
                }
            }
        }
        if !doubleQuant {
            return try QuantizedTensor4Bit(quantType: quantType, blocksize: blocksize, shape: shape, dtype: dtype,
                                           packed: packed, scales: .float32(absmax))
        }
        let offset = torchMean(absmax)
        let centred = absmax.map { $0 - offset }
        let (codes, nested) = quantizeBlockwise8Bit(centred, map: Codebooks.signedDynamicMap, blocksize: 256)
        let dq = DoubleQuantization(codes: codes, nestedAbsmax: nested, offset: offset)
        return try QuantizedTensor4Bit(quantType: quantType, blocksize: blocksize, shape: shape, dtype: dtype,
                                       packed: packed, scales: .doubleQuantized(dq))
    }

    /// The codes and absmax of `quantize` computed element by element in Swift (the reference the C
    /// kernel `qlora_nf4_quantize_blocks` is tested against).
    static func encodeReference(_ x: [Float], quantType: QuantType4Bit, blocksize: Int) -> (packed: [UInt8], absmax: [Float]) {
        let n = x.count, nb = (n + blocksize - 1) / blocksize
        let sorter = FourBitSorter(quantType)
        var absmax = [Float](repeating: 0, count: nb), out = [UInt8](repeating: 0, count: (n + 1) / 2)
        for b in 0..<nb {
            let start = b * blocksize, end = min(start + blocksize, n)
            var m: Float = 0
            for i in start..<end { m = max(m, abs(x[i])) }
            absmax[b] = m
            let clamped = max(m, Float(1e-38))
            let partial = end - start < blocksize
            let inv = 1 / clamped
            var i = start
            while i < end {
                let v0 = partial ? x[i] / clamped : x[i] * inv
                let q0 = sorter.code(min(max(v0, -1), 1))
                var q1 = sorter.zeroCode
                if i + 1 < end {
                    let v1 = partial ? x[i + 1] / clamped : x[i + 1] * inv
                    q1 = sorter.code(min(max(v1, -1), 1))
                }
                out[i >> 1] = (q0 << 4) | q1
                i += 2
            }
        }
        return (out, absmax)
    }

    /// Quantizes raw bf16 or f16 bit patterns (row-major [out, in]).
    public static func quantize(bits: [UInt16], shape: [Int], dtype: WeightDType,
                                quantType: QuantType4Bit = .nf4, blocksize: Int = 64,
                                doubleQuant: Bool = false) throws -> QuantizedTensor4Bit {
        let values: [Float]
        switch dtype {
        case .bfloat16: values = bits.map { Float(bitPattern: UInt32($0) << 16) }
        case .float16:
            #if arch(x86_64) || arch(arm64)
            values = bits.map { Float(Float16(bitPattern: $0)) }
            #else
            values = []
            #endif
        case .float32:
            throw QuantizationError.invalidValue(field: "dtype", value: "float32", expected: "bfloat16 or float16 for 16-bit patterns")
        }
        return try quantize(values, shape: shape, dtype: dtype, quantType: quantType, blocksize: blocksize,
                            doubleQuant: doubleQuant)
    }
}

/// Code selection of the pure-torch kernel: `bucketize(x̂, midpoints of the sorted table)` then, for
/// FP4, map the sorted position back to the bit-pattern code (`argsort` order).
struct FourBitSorter {
    let thresholds: (Float, Float, Float, Float, Float, Float, Float, Float,
                     Float, Float, Float, Float, Float, Float, Float)
    let order: [UInt8]
    let zeroCode: UInt8
    /// The 15 thresholds as an array (for the C kernel).
    var midpoints: [Float] {
        let t = thresholds
        return [t.0, t.1, t.2, t.3, t.4, t.5, t.6, t.7, t.8, t.9, t.10, t.11, t.12, t.13, t.14]
    }

    init(_ type: QuantType4Bit) {
        let map = type.quantMap
        // Stable ascending sort: FP4's +0 at index 0 comes before its other "zero" at index 8
        // (bitsandbytes' argsort order [11, 10, 13, 12, 15, 14, 9, 0, 8, 1, 6, 7, 4, 5, 2, 3]).
        let order = (0..<16).sorted { map[$0] < map[$1] || (map[$0] == map[$1] && $0 < $1) }
        let s = order.map { map[$0] }
        let t = (0..<15).map { (s[$0] + s[$0 + 1]) / 2 }
        thresholds = (t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10], t[11], t[12], t[13], t[14])
        self.order = order.map { UInt8($0) }
        var z = 0
        for v in t where 0 > v { z += 1 }
        zeroCode = UInt8(order[z])
    }

    @inline(__always)
    func code(_ v: Float) -> UInt8 {
        let t = thresholds
        var q = 0
        q &+= v > t.0 ? 1 : 0; q &+= v > t.1 ? 1 : 0; q &+= v > t.2 ? 1 : 0; q &+= v > t.3 ? 1 : 0
        q &+= v > t.4 ? 1 : 0; q &+= v > t.5 ? 1 : 0; q &+= v > t.6 ? 1 : 0; q &+= v > t.7 ? 1 : 0
        q &+= v > t.8 ? 1 : 0; q &+= v > t.9 ? 1 : 0; q &+= v > t.10 ? 1 : 0; q &+= v > t.11 ? 1 : 0
        q &+= v > t.12 ? 1 : 0; q &+= v > t.13 ? 1 : 0; q &+= v > t.14 ? 1 : 0
        return order.withUnsafeBufferPointer { $0[q] }
    }
}

/// `torch.mean` of a contiguous float32 vector on an AVX2 CPU, bit-exactly: ATen's cascade sum
/// (`SumKernel.cpp`: 8-lane vectors, 4-way ILP rows, 4 accumulation levels, scalar tail first, then the
/// 8 lanes in order) divided by n in float32. Verified against torch by scripts/make_nf4_fixtures.py
/// for n ≤ 32768 (larger inputs are split across threads by torch and may differ in the last bit).
public func torchMean(_ x: [Float]) -> Float {
    let n = x.count
    guard n > 0 else { return .nan }
    let lanes = 8
    let vecCount = n / lanes
    var total: Float = 0
    if vecCount > 0 {
        let rowsILP = vecCount / 4
        // partial[k][lane], k < 4
        var partial = [Float](repeating: 0, count: 4 * lanes)
        if rowsILP > 0 {
            let levels = 4
            let log2 = rowsILP <= 1 ? 0 : Int.bitWidth - (rowsILP - 1).leadingZeroBitCount
            let levelPower = max(4, log2 / levels)
            let levelStep = 1 << levelPower
            let levelMask = levelStep - 1
            var acc = [Float](repeating: 0, count: levels * 4 * lanes)
            let w = 4 * lanes  // floats per ILP row
            var i = 0
            while i + levelStep <= rowsILP {
                for _ in 0..<levelStep {
                    for k in 0..<w { acc[k] += x[i * w + k] }
                    i += 1
                }
                for j in 1..<levels {
                    for k in 0..<w {
                        acc[j * w + k] += acc[(j - 1) * w + k]
                        acc[(j - 1) * w + k] = 0
                    }
                    if i & (levelMask << (j * levelPower)) != 0 { break }
                }
            }
            while i < rowsILP {
                for k in 0..<w { acc[k] += x[i * w + k] }
                i += 1
            }
            for j in 1..<levels { for k in 0..<w { acc[k] += acc[j * w + k] } }
            for k in 0..<w { partial[k] = acc[k] }
        }
        for v in (rowsILP * 4)..<vecCount { for l in 0..<lanes { partial[l] += x[v * lanes + l] } }
        for k in 1..<4 { for l in 0..<lanes { partial[l] += partial[k * lanes + l] } }
        for i in (vecCount * lanes)..<n { total += x[i] }
        for l in 0..<lanes { total += partial[l] }
    } else {
        for v in x { total += v }
    }
    return total / Float(n)
}

/// bitsandbytes' C++ CPU `quantize_blockwise` (8-bit; `cpu_ops.cpp::quantize_cpu_impl`), bit-exactly:
/// per block absmax = max |x| (all-zero block → every code 0), v = clamp(x · (1/absmax), −1, 1),
/// code = lut[UInt16(fma((v + 1)·0.5, 65535, 0.5))], with the 65536-entry LUT of nearest map entries
/// (`build_quantize_lut`). `map` must be sorted (256 entries).
public func quantizeBlockwise8Bit(_ x: [Float], map: [Float], blocksize: Int) -> (codes: [UInt8], absmax: [Float]) {
    let lut = blockwise8BitLUT(map)
    let n = x.count
    let nb = (n + blocksize - 1) / blocksize
    var codes = [UInt8](repeating: 0, count: n)
    var absmax = [Float](repeating: 0, count: nb)
    for b in 0..<nb {
        let start = b * blocksize, end = min(start + blocksize, n)
        var m: Float = 0
        for i in start..<end { m = max(m, abs(x[i])) }
        absmax[b] = m
        if m == 0 { continue }
        let inv = 1 / m
        for i in start..<end {
            let v = min(max(x[i] * inv, -1), 1)
            let t = (v + 1) * 0.5
            let u = Float(0.5).addingProduct(t, 65535)
            codes[i] = lut[Int(u)]
        }
    }
    return (codes, absmax)
}

/// The 65536-entry LUT of `build_quantize_lut`: entry i = number of midpoints below −1 + 2i/65535.
func blockwise8BitLUT(_ map: [Float]) -> [UInt8] {
    let mids = (0..<(map.count - 1)).map { 0.5 * (map[$0] + map[$0 + 1]) }
    var lut = [UInt8](repeating: 0, count: 65536)
    var c = 0
    for i in 0..<65536 {
        let v = -1 + (2 * Float(i)) / 65535
        while c < mids.count && mids[c] < v { c += 1 }
        lut[i] = UInt8(c)
    }
    return lut
}
