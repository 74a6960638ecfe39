import ModelFormats

/// Writing bitsandbytes 4-bit checkpoints (SPEC §3): the per-weight keys and `quantization_config`.
public enum BitsAndBytesSerialization {
    /// Adds the keys bitsandbytes' `Linear4bit._save_to_state_dict` writes for the weight `name`
    /// (e.g. `model.layers.0.mlp.up_proj.weight`): the packed codes (U8 [(n+1)/2, 1]), `.absmax`
    /// (F32, or U8 codes with double quantization), `.quant_map`, `.nested_absmax`,
    /// `.nested_quant_map` (double quantization only) and `.quant_state.bitsandbytes__<type>`.
    public static func add(_ q: QuantizedTensor4Bit, name: String, to writer: inout SafetensorsWriter) throws {
        guard q.quantType != .int4 else {
            throw QuantizationError.invalidValue(field: "\(name) quant type", value: "int4", expected: "nf4 or fp4 (bitsandbytes types)")
        }
        try writer.add(name, dtype: .u8, shape: [(q.count + 1) / 2, 1], bytes: q.packed)
        try writer.add(name + ".quant_map", shape: [16], float32: q.quantMap)
        switch q.scales {
        case .float32(let absmax):
            try writer.add(name + ".absmax", shape: [absmax.count], float32: absmax)
        case .doubleQuantized(let dq):
            try writer.add(name + ".absmax", dtype: .u8, shape: [dq.codes.count], bytes: dq.codes)
            try writer.add(name + ".nested_absmax", shape: [dq.nestedAbsmax.count], float32: dq.nestedAbsmax)
            try writer.add(name + ".nested_quant_map", shape: [dq.nestedQuantMap.count], float32: dq.nestedQuantMap)
        }
        let blob = BitsAndBytesQuantState(q).jsonBytes
        try writer.add(name + BitsAndBytesModel.quantStateMarker + q.quantType.rawValue, dtype: .u8, shape: [blob.count], bytes: blob)
    }

    /// Stored bytes of a quantized weight in a checkpoint: every key `add` writes.
    public static func storedBytes(_ q: QuantizedTensor4Bit) -> Int {
        var n = (q.count + 1) / 2 + 64 + BitsAndBytesQuantState(q).jsonBytes.count
        switch q.scales {
        case .float32(let a): n += 4 * a.count
        case .doubleQuantized(let dq): n += dq.codes.count + 4 * dq.nestedAbsmax.count + 4 * dq.nestedQuantMap.count
        }
        return n
    }

    /// `BitsAndBytesConfig(load_in_4bit=True, ...).to_dict()` as transformers 5.24 writes it into
    /// config.json (SPEC §3.4), keys in its (sorted) order; values are JSON-ready (`nil` → null).
    public static func quantizationConfig(quantType: QuantType4Bit, doubleQuant: Bool,
                                          computeDType: WeightDType) -> [(key: String, value: Any?)] {
        [("_load_in_4bit", true), ("_load_in_8bit", false),
         ("bnb_4bit_compute_dtype", computeDType.rawValue), ("bnb_4bit_quant_storage", "uint8"),
         ("bnb_4bit_quant_type", quantType.rawValue), ("bnb_4bit_use_double_quant", doubleQuant),
         ("llm_int8_enable_fp32_cpu_offload", false), ("llm_int8_has_fp16_weight", false),
         ("llm_int8_skip_modules", nil), ("llm_int8_threshold", 6.0),
         ("load_in_4bit", true), ("load_in_8bit", false), ("quant_method", "bitsandbytes")]
    }
}
