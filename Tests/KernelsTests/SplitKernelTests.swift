// The training-sized norms, RoPE, SwiGLU and residual adds run split over the cores (`parallelRanges`);
// every output must be bit-identical to one pass of the same kernel over the whole input (the C
// kernels called directly, or the generic `…Impl` bodies for the backward passes).
import Testing
import _CKernels
@testable import Kernels

@Suite struct SplitKernelTests {
    static func values(_ n: Int, seed: UInt64) -> [Float] {
        var s = seed
        return (0..<n).map { _ in
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: s >> 11) % 20_000) / 5_000 - 2
        }
    }

    @Test func rowKernelsEqualOnePass() {
        let T = 301, C = 576, heads = 9, D = 64, half = D / 2
        let x = Self.values(T * C, seed: 1), w = Self.values(C, seed: 2), dy = Self.values(T * C, seed: 3)
        let cos = Self.values(T * half, seed: 4), sin = Self.values(T * half, seed: 5)
        var split = [Float](repeating: 0, count: T * C), whole = split
        rmsnormForward(out: &split, inp: x, weight: w, rows: T, channels: C, epsilon: 1e-5)
        qlora_rmsnorm_forward(&whole, x, w, Int64(T), Int64(C), 1e-5)
        #expect(split == whole)

        var a = x, b = x
        ropeForward(x: &a, cos: cos, sin: sin, rows: T, heads: heads, headDim: D, rowStride: C)
        qlora_rope_forward(&b, cos, sin, Int64(T), Int64(heads), Int64(D), Int64(C))
        #expect(a == b && a != x)

        a = dy; b = dy
        ropeBackward(dX: &a, cos: cos, sin: sin, rows: T, heads: heads, headDim: D, rowStride: C)
        ropeBackwardImpl(dX: &b, cos: cos, sin: sin, rows: T, heads: heads, headDim: D, rowStride: C)
        #expect(a == b && a != dy)

        a = Self.values(T * C, seed: 6); b = a
        rmsnormBackward(dInp: &a, dWeight: nil, dOut: dy, inp: x, weight: w, rows: T, channels: C, epsilon: 1e-5)
        rmsnormBackwardImpl(dInp: &b, dWeight: nil, dOut: dy, inp: x, weight: w, rows: T, channels: C, epsilon: 1e-5)
        #expect(a == b)
    }

    @Test func elementKernelsEqualOnePass() {
        let n = 1536 * 100 + 13   // a tail that is not a multiple of the vector width
        let g = Self.values(n, seed: 7), u = Self.values(n, seed: 8), dy = Self.values(n, seed: 9)
        var split = [Float](repeating: 0, count: n), whole = split
        siluMulForward(out: &split, gate: g, up: u, count: n)
        qlora_silu_mul_forward(&whole, g, u, Int64(n))
        #expect(split == whole)
        residualForward(out: &split, a: g, b: u, count: n)
        qlora_add_forward(&whole, g, u, Int64(n))
        #expect(split == whole)

        var dg1 = Self.values(n, seed: 10), du1 = Self.values(n, seed: 11)
        var dg2 = dg1, du2 = du1
        siluMulBackward(dGate: &dg1, dUp: &du1, dOut: dy, gate: g, up: u, count: n)
        siluMulBackwardImpl(dGate: &dg2, dUp: &du2, dOut: dy, gate: g, up: u, count: n)
        #expect(dg1 == dg2 && du1 == du2)
    }
}
