/// How a base model's linear weights (q, k, v, o, gate, up, down) are held after loading.
/// Embeddings, norms, biases and the LM head always stay float32 (as bitsandbytes does).
public struct QuantizationPolicy: Sendable, Equatable, CustomStringConvertible {
    /// The 4-bit data type, or `.none` for float32 linear weights.
    public enum Kind: String, Sendable, CaseIterable {
        case nf4, fp4, int4, none

        /// The 4-bit table, nil for `.none`.
        public var quantType: QuantType4Bit? {
            switch self {
            case .nf4: return .nf4
            case .fp4: return .fp4
            case .int4: return .int4
            case .none: return nil
            }
        }
    }

    public var quantType: Kind
    /// Double-quantize the per-block absmax (bitsandbytes `bnb_4bit_use_double_quant`).
    public var doubleQuant: Bool
    /// Elements per absmax block (one of `QuantizedTensor4Bit.validBlocksizes`).
    public var blocksize: Int

    public init(quantType: Kind = .nf4, doubleQuant: Bool = true, blocksize: Int = 64) {
        self.quantType = quantType
        self.doubleQuant = doubleQuant
        self.blocksize = blocksize
    }

    /// float32 linear weights (no quantization).
    public static let none = QuantizationPolicy(quantType: .none)
    /// The QLoRA paper's default: NF4, double quantization, blocksize 64.
    public static let nf4 = QuantizationPolicy()

    public var isQuantized: Bool { quantType != .none }

    /// Checks the blocksize.
    public func validate() throws {
        guard QuantizedTensor4Bit.validBlocksizes.contains(blocksize) else {
            throw QuantizationError.invalidValue(field: "blocksize", value: String(blocksize),
                                                 expected: "one of \(QuantizedTensor4Bit.validBlocksizes)")
        }
    }

    /// Bytes of a [rows, cols] weight held under this policy (codes + scales, as `storageBytes`).
    public func linearBytes(rows: Int, cols: Int) -> Int {
        let n = rows * cols
        guard isQuantized else { return 4 * n }
        let nb = (n + blocksize - 1) / blocksize
        return (n + 1) / 2 + (doubleQuant ? nb + 4 * ((nb + 255) / 256) + 4 : 4 * nb)
    }

    public var description: String {
        isQuantized ? "\(quantType.rawValue)\(doubleQuant ? "+dq" : ""), blocksize \(blocksize)" : "none (float32)"
    }
}
