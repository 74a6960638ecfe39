extension QuantizedTensor4Bit {
    /// Scalar Swift reference of `dequantize()` (independent of the C kernels), written from SPEC §1.4/§2.4:
    /// scale_b = absmax[b] or nestedQuantMap[codes[b]] · nestedAbsmax[b / 256] + offset (float32 each),
    /// w_i = table[code_i] · scale_{i / blocksize}, then rounded to `dtype` if `roundToDType`.
    public func dequantizeReference(roundToDType round: Bool = true) -> [Float] {
        let table = Array(UnsafeBufferPointer(_code))
        var scale = [Float](repeating: 0, count: blockCount)
        switch scales {
        case .float32(let a): scale = a
        case .doubleQuantized(let dq):
            for b in 0..<blockCount {
                let s = dq.nestedQuantMap[Int(dq.codes[b])] * dq.nestedAbsmax[b / dq.nestedBlocksize]
                scale[b] = s + dq.offset
            }
        }
        var out = [Float](repeating: 0, count: count)
        for i in 0..<count {
            let byte = _packed[i / 2]
            let q = i % 2 == 0 ? byte >> 4 : byte & 0x0F
            out[i] = table[Int(q)] * scale[i / blocksize]
        }
        if round { roundToDType(&out, dtype) }
        return out
    }
}
