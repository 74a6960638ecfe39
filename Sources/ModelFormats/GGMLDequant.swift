/// Reference dequantization of ggml block formats (ggml-quants.c `dequantize_row_*`,
/// SPEC §8.7). Arithmetic is done in the same order as ggml / gguf-py, so results are bit-exact.
enum GGMLDequant {
    @inline(__always)
    static func half(_ p: UnsafeRawPointer, _ offset: Int) -> Float {
        Float(Float16(bitPattern: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: offset, as: UInt16.self))))
    }

    /// Dequantizes `blocks` consecutive blocks of `type` from `src` into `dst`.
    /// `type.canDequantize` must be true.
    static func dequantize(_ type: GGMLType, _ src: UnsafeRawPointer, _ dst: UnsafeMutablePointer<Float>, blocks: Int) {
        switch type {
        case .f32: UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: blocks * 4)
        case .f16: f16(src, dst, blocks)
        case .bf16: bf16(src, dst, blocks)
        case .q4_0: q4_0(src, dst, blocks)
        case .q4_1: q4_1(src, dst, blocks)
        case .q5_0: q5_0(src, dst, blocks)
        case .q5_1: q5_1(src, dst, blocks)
        case .q8_0: q8_0(src, dst, blocks)
        case .q4_K: q4_K(src, dst, blocks)
        case .q5_K: q5_K(src, dst, blocks)
        case .q6_K: q6_K(src, dst, blocks)
        default: break
        }
    }

    static func f16(_ src: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        for k in 0..<n { y[k] = half(src, 2 * k) }
    }

    static func bf16(_ src: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, _ n: Int) {
        for k in 0..<n {
            y[k] = Float(bitPattern: UInt32(UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self))) << 16)
        }
    }

    static func q4_0(_ src: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, _ nb: Int) {
        for i in 0..<nb {
            let b = src + i * 18
            let d = half(b, 0)
            let qs = (b + 2).assumingMemoryBound(to: UInt8.self)
            let out = y + i * 32
            for j in 0..<16 {
                out[j] = Float(Int32(qs[j] & 0x0F) - 8) * d
                out[j + 16] = Float(Int32(qs[j] >> 4) - 8) * d
            }
        }
    }

    static func q4_1(_ src: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, _ nb: Int) {
        for i in 0..<nb {
            let b = src + i * 20
            let d = half(b, 0)
            let m = half(b, 2)
            let qs = (b + 4).assumingMemoryBound(to: UInt8.self)
            let out = y + i * 32
            for j in 0..<16 {
                out[j] = Float(qs[j] & 0x0F) * d + m
                out[j + 16] = Float(qs[j] >> 4) * d + m
            }
        }
    }

    static func q5_0(_ src: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, _ nb: Int) {
        for i in 0..<nb {
            let b = src + i * 22
            let d = half(b, 0)
            let qh = UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
            let qs = (b + 6).assumingMemoryBound(to: UInt8.self)
            let out = y + i * 32
            for j in 0..<16 {
                let xh0 = UInt8(truncatingIfNeeded: ((qh >> UInt32(j)) << 4) & 0x10)
                let xh1 = UInt8(truncatingIfNeeded: (qh >> UInt32(j + 12)) & 0x10)
                out[j] = Float(Int32((qs[j] & 0x0F) | xh0) - 16) * d
                out[j + 16] = Float(Int32((qs[j] >> 4) | xh1) - 16) * d
            }
        }
    }

    static func q5_1(_ src: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, _ nb: Int) {
        for i in 0..<nb {
            let b = src + i * 24
            let d = half(b, 0)
            let m = half(b, 2)
            let qh = UInt32(littleEndian: b.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
            let qs = (b + 8).assumingMemoryBound(to: UInt8.self)
            let out = y + i * 32
            for j in 0..<16 {
                let xh0 = UInt8(truncatingIfNeeded: ((qh >> UInt32(j)) << 4) & 0x10)
                let xh1 = UInt8(truncatingIfNeeded: (qh >> UInt32(j + 12)) & 0x10)
                out[j] = Float((qs[j] & 0x0F) | xh0) * d + m
                out[j + 16] = Float((qs[j] >> 4) | xh1) * d + m
            }
        }
    }

    static func q8_0(_ src: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, _ nb: Int) {
        for i in 0..<nb {
            let b = src + i * 34
            let d = half(b, 0)
            let qs = (b + 2).assumingMemoryBound(to: Int8.self)
            let out = y + i * 32
            for j in 0..<32 { out[j] = Float(qs[j]) * d }
        }
    }

    /// The 6-bit scale and min of sub-block j (ggml `get_scale_min_k4`).
    @inline(__always)
    static func scaleMin(_ s: UnsafePointer<UInt8>, _ j: Int) -> (UInt8, UInt8) {
        if j < 4 { return (s[j] & 63, s[j + 4] & 63) }
        return ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }

    static func q4_K(_ src: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, _ nb: Int) {
        for i in 0..<nb {
            let b = src + i * 144
            let d = half(b, 0)
            let dmin = half(b, 2)
            let scales = (b + 4).assumingMemoryBound(to: UInt8.self)
            let qs = (b + 16).assumingMemoryBound(to: UInt8.self)
            let out = y + i * 256
            for c in 0..<4 {
                let (sc1, m1) = scaleMin(scales, 2 * c)
                let (sc2, m2) = scaleMin(scales, 2 * c + 1)
                let d1 = d * Float(sc1), dm1 = dmin * Float(m1)
                let d2 = d * Float(sc2), dm2 = dmin * Float(m2)
                let q = qs + 32 * c
                let o = out + 64 * c
                for l in 0..<32 {
                    o[l] = d1 * Float(q[l] & 0x0F) - dm1
                    o[l + 32] = d2 * Float(q[l] >> 4) - dm2
                }
            }
        }
    }

    static func q5_K(_ src: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, _ nb: Int) {
        for i in 0..<nb {
            let b = src + i * 176
            let d = half(b, 0)
            let dmin = half(b, 2)
            let scales = (b + 4).assumingMemoryBound(to: UInt8.self)
            let qh = (b + 16).assumingMemoryBound(to: UInt8.self)
            let qs = (b + 48).assumingMemoryBound(to: UInt8.self)
            let out = y + i * 256
            for c in 0..<4 {
                let (sc1, m1) = scaleMin(scales, 2 * c)
                let (sc2, m2) = scaleMin(scales, 2 * c + 1)
                let d1 = d * Float(sc1), dm1 = dmin * Float(m1)
                let d2 = d * Float(sc2), dm2 = dmin * Float(m2)
                let q = qs + 32 * c
                let o = out + 64 * c
                let u1 = UInt8(1) << UInt8(2 * c), u2 = UInt8(2) << UInt8(2 * c)
                for l in 0..<32 {
                    let h1: UInt8 = qh[l] & u1 != 0 ? 16 : 0
                    let h2: UInt8 = qh[l] & u2 != 0 ? 16 : 0
                    o[l] = d1 * Float((q[l] & 0x0F) + h1) - dm1
                    o[l + 32] = d2 * Float((q[l] >> 4) + h2) - dm2
                }
            }
        }
    }

    static func q6_K(_ src: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, _ nb: Int) {
        for i in 0..<nb {
            let b = src + i * 210
            let d = half(b, 208)
            let out = y + i * 256
            for n in 0..<2 {
                let ql = (b + 64 * n).assumingMemoryBound(to: UInt8.self)
                let qh = (b + 128 + 32 * n).assumingMemoryBound(to: UInt8.self)
                let sc = (b + 192 + 8 * n).assumingMemoryBound(to: Int8.self)
                let o = out + 128 * n
                for l in 0..<32 {
                    let isc = l / 16
                    let q1 = Int32((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) - 32
                    let q2 = Int32((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) - 32
                    let q3 = Int32((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
                    let q4 = Int32((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
                    o[l] = d * Float(sc[isc]) * Float(q1)
                    o[l + 32] = d * Float(sc[isc + 2]) * Float(q2)
                    o[l + 64] = d * Float(sc[isc + 4]) * Float(q3)
                    o[l + 96] = d * Float(sc[isc + 6]) * Float(q4)
                }
            }
        }
    }
}
