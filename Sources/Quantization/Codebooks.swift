/// The fixed tables of bitsandbytes 4-bit and 8-bit blockwise quantization (SPEC §1.1, §1.6, §2.3).
public enum Codebooks {
    /// The 16 NF4 values, indexed by the 4-bit code (sorted; exact zero at index 7).
    public static let nf4: [Float] = [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ]

    /// The FP4 `quant_map` as bitsandbytes stores it: bit-pattern order (bit 3 = sign), values / 12,
    /// each a float32 division (`get_4bit_type("fp4")`). Index 8 is +0.0 (Python's `-0` is an integer).
    public static let fp4: [Float] = [0, 0.0625, 8, 12, 4, 6, 2, 3, 0, -0.0625, -8, -12, -4, -6, -2, -3]
        .map { Float($0) / 12 }

    /// The FP4 table of bitsandbytes' C++ CPU dequantizer (`cpu_ops.cpp::fp4_lut`): the same values
    /// except index 8, which is −0.0. bitsandbytes 0.50.2 dequantizes with it whenever the last
    /// dimension is even (the pure-torch path, with `fp4` above, handles odd ones).
    public static let fp4CPUDequant: [Float] = {
        var t = fp4
        t[8] = -0.0
        return t
    }()

    /// Symmetric absmax Int4: code q ↦ (q − 8) / 7, so codes 1…15 are −7/7 … 7/7 (code 0 is unused).
    public static let int4: [Float] = (0..<16).map { Float($0 - 8) / 7 }

    /// `create_dynamic_map(signed:, max_exponent_bits: 7, total_bits: 8)`, bit-exactly (SPEC §2.3):
    /// signed = 127 negatives, 0, 127 positives, 1.0; unsigned = 0, 254 positives, 1.0. Sorted.
    public static func dynamicMap(signed: Bool) -> [Float] {
        var values: [Float] = []
        values.reserveCapacity(256)
        for i in 0..<7 {
            let steps = signed ? (1 << i) + 1 : (1 << (i + 1)) + 1
            let boundaries = linspace(0.1, 1.0, steps)
            let scale = Float([1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0][i])
            for k in 0..<(steps - 1) {
                let mean = (boundaries[k] + boundaries[k + 1]) / 2
                values.append(scale * mean)
                if signed { values.append(-scale * mean) }
            }
        }
        values.append(0)
        values.append(1.0)
        return values.sorted()
    }

    /// The signed dynamic map (the `nested_quant_map` of double quantization).
    public static let signedDynamicMap: [Float] = dynamicMap(signed: true)

    /// torch.linspace in float32: fused multiply-add from the nearer end.
    static func linspace(_ start: Float, _ end: Float, _ steps: Int) -> [Float] {
        let step = (end - start) / Float(steps - 1)
        return (0..<steps).map { k in
            k < steps / 2 ? start.addingProduct(step, Float(k)) : end.addingProduct(-step, Float(steps - 1 - k))
        }
    }
}
