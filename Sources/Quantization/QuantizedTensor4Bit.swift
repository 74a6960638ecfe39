import _CKernels

/// Which 16-entry table a 4-bit tensor uses.
public enum QuantType4Bit: String, Sendable, CaseIterable {
    /// NormalFloat4 (bitsandbytes "nf4", SPEC §1.1).
    case nf4
    /// bitsandbytes "fp4" (SPEC §1.6).
    case fp4
    /// Symmetric absmax Int4: code q ↦ (q − 8)/7 · absmax (for comparison tables; not a bitsandbytes type).
    case int4

    /// The table stored as `quant_map`.
    public var quantMap: [Float] {
        switch self {
        case .nf4: return Codebooks.nf4
        case .fp4: return Codebooks.fp4
        case .int4: return Codebooks.int4
        }
    }
}

/// The dtype of the weight before quantization (bitsandbytes' `dtype` field); dequantization rounds to it.
public enum WeightDType: String, Sendable, CaseIterable {
    case float32, bfloat16, float16
}

/// Double quantization of the per-block absmax (SPEC §2): 8-bit codes into a signed dynamic map,
/// one float32 absmax per `nestedBlocksize` codes, plus the mean that was subtracted first.
public struct DoubleQuantization: Sendable, Equatable {
    /// One code per 4-bit block (`absmax` in a bitsandbytes state dict, U8).
    public var codes: [UInt8]
    /// `nested_absmax`, ceil(codes.count / nestedBlocksize) values.
    public var nestedAbsmax: [Float]
    /// `nested_offset`: mean of the original absmax.
    public var offset: Float
    /// `nested_quant_map`: the 256-entry signed dynamic map.
    public var nestedQuantMap: [Float]
    /// `nested_blocksize` (bitsandbytes always uses 256).
    public var nestedBlocksize: Int

    public init(codes: [UInt8], nestedAbsmax: [Float], offset: Float,
                nestedQuantMap: [Float] = Codebooks.signedDynamicMap, nestedBlocksize: Int = 256) {
        self.codes = codes
        self.nestedAbsmax = nestedAbsmax
        self.offset = offset
        self.nestedQuantMap = nestedQuantMap
        self.nestedBlocksize = nestedBlocksize
    }
}

/// The per-block scales of a 4-bit tensor.
public enum BlockScales: Sendable, Equatable {
    /// One float32 absmax per block.
    case float32([Float])
    /// Double-quantized absmax.
    case doubleQuantized(DoubleQuantization)
}

/// Errors of the Quantization module; the message names the field and the offending value.
public enum QuantizationError: Error, Equatable, CustomStringConvertible {
    case invalidValue(field: String, value: String, expected: String)

    public var description: String {
        switch self {
        case let .invalidValue(field, value, expected):
            return "4-bit tensor: \(field) is \(value), expected \(expected)"
        }
    }
}

/// A blockwise 4-bit weight in the bitsandbytes layout (SPEC §1.3, §2, §3).
///
/// The weight [out, in] is flattened row-major to `count` elements. Element i's code is in byte
/// i/2, in the HIGH nibble when i is even; an odd count pads the last low nibble with the code of
/// 0.0. Block b covers elements [b·blocksize, (b+1)·blocksize), ignoring row boundaries.
/// Value of element i = quantMap[code] · scale(i / blocksize), where scale is `absmax[b]` or, with
/// double quantization, `nestedQuantMap[codes[b]] · nestedAbsmax[b / 256] + offset`.
///
/// Immutable; owns its buffers (stable addresses for the C kernels).
public final class QuantizedTensor4Bit: @unchecked Sendable {
    public let quantType: QuantType4Bit
    public let blocksize: Int
    /// Original shape [out, in].
    public let shape: [Int]
    /// Original dtype (what `dequantize` rounds to).
    public let dtype: WeightDType
    /// The 16-entry table (`quant_map`).
    public let quantMap: [Float]
    public let scales: BlockScales
    /// Number of elements = shape[0] · shape[1].
    public let count: Int
    /// Number of 4-bit blocks = ceil(count / blocksize).
    public let blockCount: Int

    @usableFromInline let _packed: UnsafeMutableBufferPointer<UInt8>
    let _absmax: UnsafeMutableBufferPointer<Float>
    let _codes: UnsafeMutableBufferPointer<UInt8>
    let _nestedAbsmax: UnsafeMutableBufferPointer<Float>
    let _nestedMap: UnsafeMutableBufferPointer<Float>
    let _code: UnsafeMutableBufferPointer<Float>
    /// The C view of this weight, for the qlora_nf4_* kernels (pointers valid while `self` lives).
    public private(set) var cWeight = qlora_nf4_weight()

    public static let validBlocksizes = [32, 64, 128, 256, 512, 1024, 2048, 4096]

    /// Wraps existing quantized data (e.g. read from a bitsandbytes safetensors file), after checking sizes.
    public init(quantType: QuantType4Bit, blocksize: Int, shape: [Int], dtype: WeightDType,
                packed: [UInt8], scales: BlockScales, quantMap: [Float]? = nil) throws {
        guard Self.validBlocksizes.contains(blocksize) else {
            throw QuantizationError.invalidValue(field: "blocksize", value: String(blocksize),
                                                 expected: "one of \(Self.validBlocksizes)")
        }
        guard shape.count == 2, shape[0] > 0, shape[1] > 0 else {
            throw QuantizationError.invalidValue(field: "shape", value: "\(shape)", expected: "[out, in] with both > 0")
        }
        let n = shape[0] * shape[1]
        let nb = (n + blocksize - 1) / blocksize
        guard packed.count == (n + 1) / 2 else {
            throw QuantizationError.invalidValue(field: "packed byte count", value: String(packed.count),
                                                 expected: "\((n + 1) / 2) for shape \(shape)")
        }
        let map = quantMap ?? quantType.quantMap
        guard map.count == 16 else {
            throw QuantizationError.invalidValue(field: "quant_map count", value: String(map.count), expected: "16")
        }
        self.quantType = quantType
        self.blocksize = blocksize
        self.shape = shape
        self.dtype = dtype
        self.quantMap = map
        self.scales = scales
        self.count = n
        self.blockCount = nb
        _packed = .allocate(capacity: packed.count)
        _ = _packed.initialize(from: packed)
        // bitsandbytes' C++ CPU dequantizer uses −0.0 for FP4 code 8 when the last dimension is even.
        let dequantTable = quantType == .fp4 && shape[1] % 2 == 0 && map == Codebooks.fp4 ? Codebooks.fp4CPUDequant : map
        _code = .allocate(capacity: 16)
        _ = _code.initialize(from: dequantTable)
        switch scales {
        case .float32(let absmax):
            guard absmax.count == nb else {
                _packed.deallocate(); _code.deallocate()
                throw QuantizationError.invalidValue(field: "absmax count", value: String(absmax.count),
                                                     expected: "\(nb) blocks of \(blocksize) for shape \(shape)")
            }
            _absmax = .allocate(capacity: nb)
            _ = _absmax.initialize(from: absmax)
            _codes = .allocate(capacity: 0)
            _nestedAbsmax = .allocate(capacity: 0)
            _nestedMap = .allocate(capacity: 0)
        case .doubleQuantized(let dq):
            let nested = (nb + dq.nestedBlocksize - 1) / max(dq.nestedBlocksize, 1)
            var problem: QuantizationError?
            if dq.nestedBlocksize <= 0 {
                problem = .invalidValue(field: "nested_blocksize", value: String(dq.nestedBlocksize), expected: "> 0")
            } else if dq.codes.count != nb {
                problem = .invalidValue(field: "absmax (8-bit codes) count", value: String(dq.codes.count),
                                        expected: "\(nb) blocks of \(blocksize) for shape \(shape)")
            } else if dq.nestedAbsmax.count != nested {
                problem = .invalidValue(field: "nested_absmax count", value: String(dq.nestedAbsmax.count),
                                        expected: "\(nested)")
            } else if dq.nestedQuantMap.count != 256 {
                problem = .invalidValue(field: "nested_quant_map count", value: String(dq.nestedQuantMap.count),
                                        expected: "256")
            }
            if let problem {
                _packed.deallocate(); _code.deallocate()
                throw problem
            }
            _absmax = .allocate(capacity: 0)
            _codes = .allocate(capacity: nb)
            _ = _codes.initialize(from: dq.codes)
            _nestedAbsmax = .allocate(capacity: nested)
            _ = _nestedAbsmax.initialize(from: dq.nestedAbsmax)
            _nestedMap = .allocate(capacity: 256)
            _ = _nestedMap.initialize(from: dq.nestedQuantMap)
        }
        var w = qlora_nf4_weight()
        w.packed = UnsafePointer(_packed.baseAddress)
        w.code = UnsafePointer(_code.baseAddress)
        w.blocksize = Int64(blocksize)
        if case .doubleQuantized(let dq) = scales {
            w.qabsmax = UnsafePointer(_codes.baseAddress)
            w.nested_absmax = UnsafePointer(_nestedAbsmax.baseAddress)
            w.nested_map = UnsafePointer(_nestedMap.baseAddress)
            w.offset = dq.offset
            w.nested_blocksize = Int64(dq.nestedBlocksize)
        } else {
            w.absmax = UnsafePointer(_absmax.baseAddress)
            w.nested_blocksize = 256
        }
        cWeight = w
    }

    deinit {
        _packed.deallocate(); _absmax.deallocate(); _codes.deallocate()
        _nestedAbsmax.deallocate(); _nestedMap.deallocate(); _code.deallocate()
    }

    /// Rows (out features).
    public var rows: Int { shape[0] }
    /// Columns (in features).
    public var columns: Int { shape[1] }
    /// The packed codes, (count + 1) / 2 bytes.
    public var packed: [UInt8] { Array(_packed) }
    /// Read-only view of the packed codes (valid while `self` lives).
    public var packedBytes: UnsafeBufferPointer<UInt8> { UnsafeBufferPointer(_packed) }
    /// Whether the absmax is double-quantized.
    public var isDoubleQuantized: Bool {
        if case .doubleQuantized = scales { return true }
        return false
    }

    /// Storage size in bytes of codes + scales (excluding the 16/256-entry tables).
    public var storageBytes: Int {
        switch scales {
        case .float32(let a): return _packed.count + 4 * a.count
        case .doubleQuantized(let dq): return _packed.count + dq.codes.count + 4 * dq.nestedAbsmax.count + 4
        }
    }

    /// The float32 scale of every block (double quantization undone exactly as bitsandbytes does).
    public func blockScales() -> [Float] {
        var out = [Float](repeating: 0, count: blockCount)
        withUnsafePointer(to: cWeight) { w in
            out.withUnsafeMutableBufferPointer { qlora_nf4_block_scales($0.baseAddress, w, 0, Int64(blockCount)) }
        }
        return out
    }

    /// Dequantizes flat elements [start, start + destination.count) into float32 (no dtype rounding),
    /// bit-identical to bitsandbytes' float32 product. The tile primitive of `NF4Matmul`.
    public func dequantize(start: Int, into destination: UnsafeMutableBufferPointer<Float>) {
        guard let d = destination.baseAddress, !destination.isEmpty else { return }
        withUnsafePointer(to: cWeight) { w in qlora_nf4_dequantize(d, w, Int64(start), Int64(destination.count)) }
    }

    /// The whole weight, as bitsandbytes' `dequantize_4bit` returns it: float32 products rounded
    /// (to nearest even) to `dtype`, returned as Float. Allocates `count` floats.
    public func dequantize() -> [Float] {
        var out = [Float](repeating: 0, count: count)
        out.withUnsafeMutableBufferPointer { dequantize(start: 0, into: $0) }
        roundToDType(&out, dtype)
        return out
    }

    /// Little-endian bytes of `dequantize()` in `dtype` (F32, BF16 or F16), as bitsandbytes would store them.
    public func dequantizedBytes() -> [UInt8] {
        dtype.encode(dequantize())
    }
}

/// Rounds float32 values to bf16/f16 (round to nearest even) and back, in place.
func roundToDType(_ values: inout [Float], _ dtype: WeightDType) {
    switch dtype {
    case .float32: return
    case .bfloat16:
        for i in values.indices { values[i] = Float(bitPattern: UInt32(bfloat16Bits(values[i])) << 16) }
    case .float16:
        #if arch(x86_64) || arch(arm64)
        for i in values.indices { values[i] = Float(Float16(values[i])) }
        #endif
    }
}

/// bf16 bits of x, round to nearest even (bitsandbytes' `float_to_bf16`; NaN not special-cased).
@inline(__always)
func bfloat16Bits(_ x: Float) -> UInt16 {
    let b = x.bitPattern
    return UInt16(truncatingIfNeeded: (b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
}

extension WeightDType {
    /// Little-endian bytes of values (already representable in this dtype; bf16 rounds to nearest even).
    public func encode(_ values: [Float]) -> [UInt8] {
        var out: [UInt8] = []
        switch self {
        case .float32:
            out.reserveCapacity(values.count * 4)
            for v in values { withUnsafeBytes(of: v.bitPattern.littleEndian) { out.append(contentsOf: $0) } }
        case .bfloat16:
            out.reserveCapacity(values.count * 2)
            for v in values { withUnsafeBytes(of: bfloat16Bits(v).littleEndian) { out.append(contentsOf: $0) } }
        case .float16:
            out.reserveCapacity(values.count * 2)
            #if arch(x86_64) || arch(arm64)
            for v in values { withUnsafeBytes(of: Float16(v).bitPattern.littleEndian) { out.append(contentsOf: $0) } }
            #endif
        }
        return out
    }
}
