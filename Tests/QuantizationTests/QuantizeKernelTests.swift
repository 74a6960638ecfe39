// The C quantizer (qlora_nf4_quantize_blocks, AVX2 and portable) against the element-by-element Swift
// encoder (`QuantizedTensor4Bit.encodeReference`, which the bitsandbytes fixtures of
// QuantizedTensor4BitTests pin down): the same packed bytes and absmax, bit for bit, including values
// exactly on a midpoint, ±1 after scaling, zeros, tiny and non-finite values, and a final partial block.
import Testing
import _CKernels
@testable import Quantization

@Suite(.serialized) struct QuantizeKernelTests {
    /// Random normals with planted edge cases: every midpoint and code value of the table times a
    /// block's absmax, exact zeros, subnormals, an all-zero block, and (when asked) NaN and ±inf.
    static func values(_ n: Int, type: QuantType4Bit, blocksize: Int, nonFinite: Bool, seed: UInt64) -> [Float] {
        var rng = SplitMix(seed: seed)
        var x = (0..<n).map { _ in rng.normal() * 0.25 }   // mostly inside ±1, so a planted 1 is the absmax
        let map = type.quantMap.map { $0 / (type.quantMap.map(abs).max()!) }
        let sorted = map.sorted()
        let midpoints = (0..<15).map { (sorted[$0] + sorted[$0 + 1]) / 2 }
        for (k, v) in (midpoints + map).enumerated() where 2 * k + 1 < n {
            // block absmax 1 (planted at the block's start) keeps x̂ = x exactly
            let i = (k * 7 + 3) % n
            x[i] = v
            x[i - i % blocksize] = 1
        }
        if n > 3 * blocksize { for i in blocksize..<(2 * blocksize) { x[i] = 0 } }
        if n > 20 { x[17] = 1e-41; x[18] = -0.0 }
        if nonFinite && n > 5 * blocksize { x[4 * blocksize + 1] = .nan; x[4 * blocksize + 9] = .infinity; x[5 * blocksize - 2] = -.infinity }
        return x
    }

    struct Case: Sendable, CustomTestStringConvertible {
        let type: QuantType4Bit, blocksize: Int, n: Int
        var testDescription: String { "\(type) bs\(blocksize) n\(n)" }
    }
    static let cases: [Case] = [
        Case(type: .nf4, blocksize: 64, n: 2560), Case(type: .nf4, blocksize: 64, n: 2597),   // a partial last block
        Case(type: .fp4, blocksize: 128, n: 1154), Case(type: .int4, blocksize: 32, n: 1601),
        Case(type: .nf4, blocksize: 4096, n: 8292), Case(type: .fp4, blocksize: 64, n: 5),
    ]

    @Test(arguments: cases, [false, true])
    func cKernelEqualsTheSwiftEncoder(_ c: Case, portable: Bool) throws {
        for nonFinite in [false, true] { try check(c.type, c.blocksize, c.n, portable: portable, nonFinite: nonFinite) }
    }

    func check(_ type: QuantType4Bit, _ blocksize: Int, _ n: Int, portable: Bool, nonFinite: Bool) throws {
        let x = Self.values(n, type: type, blocksize: blocksize, nonFinite: nonFinite, seed: UInt64(n))
        qlora_nf4_force_portable(portable ? 1 : 0)
        defer { qlora_nf4_force_portable(0) }
        let q = try QuantizedTensor4Bit.quantize(x, shape: [1, n], quantType: type, blocksize: blocksize)
        let ref = QuantizedTensor4Bit.encodeReference(x, quantType: type, blocksize: blocksize)
        #expect(q.packed == ref.packed)
        guard case let .float32(absmax) = q.scales else { Issue.record("expected float32 absmax"); return }
        #expect(absmax.map(\.bitPattern) == ref.absmax.map(\.bitPattern))
    }
}
