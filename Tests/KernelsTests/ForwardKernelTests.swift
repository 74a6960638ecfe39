import Foundation
import Testing
@testable import Kernels

/// Each forward kernel against a naive Swift reference, on a grid of shapes (lengths that are and
/// are not multiples of the 8-lane vectors), on the AVX2 and the portable bodies.
@Suite(.serialized) struct ForwardKernelTests {
    /// Deterministic pseudo-random values in [-scale, scale].
    static func values(_ n: Int, seed: UInt64, scale: Float = 1) -> [Float] {
        var s = seed &* 0x9E3779B97F4A7C15 | 1
        return (0..<n).map { _ in
            s ^= s << 13; s ^= s >> 7; s ^= s << 17
            return (Float(s % 2_000_001) / 1_000_000 - 1) * scale
        }
    }

    static func maxRelError(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).map { abs($0 - $1) / max(1, abs($1)) }.max() ?? 0
    }

    /// Runs `body` on both kernel bodies (portable only if the CPU lacks AVX2).
    static func bothPaths(_ body: (String) throws -> Void) rethrows {
        defer { forcePortableKernels(false) }
        for portable in cpuHasAVX2 ? [false, true] : [true] {
            forcePortableKernels(portable)
            try body(portable ? "portable" : "avx2")
        }
    }

    static let lengths = [1, 3, 7, 8, 9, 16, 31, 64, 100, 576]

    @Test func rmsnormMatchesReference() {
        Self.bothPaths { path in
            for dim in Self.lengths { for rows in [1, 3] {
                let x = Self.values(rows * dim, seed: UInt64(dim), scale: 3), w = Self.values(dim, seed: 99)
                var out = [Float](repeating: .nan, count: rows * dim)
                rmsnormForward(out: &out, inp: x, weight: w, rows: rows, channels: dim, epsilon: 1e-5)
                var ref = [Float](repeating: 0, count: rows * dim)
                for r in 0..<rows {
                    var ss: Double = 0
                    for i in 0..<dim { ss += Double(x[r * dim + i]) * Double(x[r * dim + i]) }
                    let rs = 1 / (ss / Double(dim) + 1e-5).squareRoot()
                    for i in 0..<dim { ref[r * dim + i] = Float(Double(w[i]) * Double(x[r * dim + i]) * rs) }
                }
                #expect(Self.maxRelError(out, ref) < 1e-5, "\(path) rows \(rows) dim \(dim)")
            } }
        }
    }

    @Test func softmaxMatchesReference() {
        Self.bothPaths { path in
            for n in Self.lengths + [1000] {
                let x = Self.values(n, seed: UInt64(n) + 7, scale: 20)
                var y = x
                softmaxForward(x: &y, count: n)
                let m = x.max()!
                let e = x.map { Foundation.exp(Double($0 - m)) }, s = e.reduce(0, +)
                let ref = e.map { Float($0 / s) }
                let err = zip(y, ref).map { abs($0 - $1) }.max()!
                #expect(err < 2e-6, "\(path) n \(n)")
                #expect(abs(y.reduce(0, +) - 1) < 1e-5, "\(path) n \(n) sum")
            }
        }
    }

    @Test func siluMulMatchesReference() {
        Self.bothPaths { path in
            for n in Self.lengths {
                let g = Self.values(n, seed: UInt64(n), scale: 12), u = Self.values(n, seed: UInt64(n) + 1, scale: 2)
                var out = [Float](repeating: .nan, count: n)
                siluMulForward(out: &out, gate: g, up: u, count: n)
                let ref = (0..<n).map { i in Float(Double(g[i]) / (1 + Foundation.exp(-Double(g[i]))) * Double(u[i])) }
                #expect(Self.maxRelError(out, ref) < 2e-6, "\(path) n \(n)")
            }
        }
    }

    @Test func vectorExpIsAccurateAndSaturates() {
        Self.bothPaths { path in
            let x = Self.values(4099, seed: 5, scale: 80) + [-87, 88, -200, 200, 0]
            var y = [Float](repeating: .nan, count: x.count)
            vectorExp(out: &y, x: x, count: x.count)
            for (xi, yi) in zip(x, y) where xi > -87 && xi < 88 {
                let ref = Foundation.exp(Double(xi))
                #expect(abs(Double(yi) - ref) / ref < 1e-6, "\(path) exp(\(xi)) = \(yi), expected \(ref)")
            }
            #expect(y[x.count - 3] >= 0 && y[x.count - 3] < 1e-37, "\(path) exp(-200)")
            #expect(y[x.count - 2] > 1e38, "\(path) exp(200)")   // AVX2 clamps to e^88.38, expf gives inf
            #expect(y[x.count - 1] == 1, "\(path) exp(0)")
        }
    }

    @Test func ropeMatchesReference() {
        Self.bothPaths { path in
            for headDim in [2, 8, 16, 18, 64] { for heads in [1, 3] {
                let T = 4, stride = heads * headDim + 5, half = headDim / 2
                let x = Self.values(T * stride, seed: UInt64(headDim * 10 + heads), scale: 2)
                let angles = (0..<(T * half)).map { Float($0) * 0.37 }
                let c = angles.map { Foundation.cos($0) }, s = angles.map { Foundation.sin($0) }
                var y = x
                ropeForward(x: &y, cos: c, sin: s, rows: T, heads: heads, headDim: headDim, rowStride: stride)
                var ref = x
                for t in 0..<T { for h in 0..<heads { for i in 0..<half {
                    let a = x[t * stride + h * headDim + i], b = x[t * stride + h * headDim + i + half]
                    ref[t * stride + h * headDim + i] = a * c[t * half + i] - b * s[t * half + i]
                    ref[t * stride + h * headDim + i + half] = b * c[t * half + i] + a * s[t * half + i]
                } } }
                #expect(Self.maxRelError(y, ref) < 1e-6, "\(path) headDim \(headDim) heads \(heads)")
                // the 5 padding floats at the end of each row are untouched
                for t in 0..<T { for p in (heads * headDim)..<stride { #expect(y[t * stride + p] == x[t * stride + p]) } }
            } }
        }
    }

    @Test func residualAddMatchesReference() {
        Self.bothPaths { path in
            for n in Self.lengths {
                let a = Self.values(n, seed: 1), b = Self.values(n, seed: 2)
                var out = a
                out.withUnsafeMutableBufferPointer { o in residualForward(out: o.baseAddress!, a: o.baseAddress!, b: b, count: n) }
                #expect(out == zip(a, b).map { $0 + $1 }, "\(path) n \(n)")
            }
        }
    }

    @Test func matmulMatchesReferenceForOneAndManyRows() {
        Self.bothPaths { path in
        for (T, C, OC) in [(1, 5, 3), (1, 23, 7), (1, 64, 200), (1, 576, 1536), (1, 130, 257), (3, 17, 130), (7, 64, 96)] {
            for withBias in [false, true] {
                let x = Self.values(T * C, seed: 3), w = Self.values(OC * C, seed: 4), b = Self.values(OC, seed: 5)
                var out = [Float](repeating: .nan, count: T * OC)
                b.withUnsafeBufferPointer { bp in
                    matmulForward(out: &out, inp: x, weight: w, bias: withBias ? bp.baseAddress : nil,
                                  rows: T, inChannels: C, outChannels: OC)
                }
                var ref = [Float](repeating: 0, count: T * OC)
                for t in 0..<T { for o in 0..<OC {
                    var s: Double = withBias ? Double(b[o]) : 0
                    for i in 0..<C { s += Double(x[t * C + i]) * Double(w[o * C + i]) }
                    ref[t * OC + o] = Float(s)
                } }
                #expect(zip(out, ref).map { abs($0 - $1) }.max()! < 1e-4, "\(path) T \(T) C \(C) OC \(OC) bias \(withBias)")
            }
        }
        }
    }

    /// Causal GQA attention, new tokens appended after `start` cached ones, optionally windowed.
    @Test func attentionMatchesReference() {
        for (T, start, heads, kvHeads, D, window) in [(1, 0, 2, 1, 8, nil), (1, 9, 4, 2, 16, nil), (5, 0, 4, 2, 8, nil),
                                                       (6, 3, 3, 3, 4, nil), (7, 2, 4, 1, 8, 3), (1, 9, 2, 2, 8, 4)] as [(Int, Int, Int, Int, Int, Int?)] {
            let S = start + T, qd = heads * D, kvd = kvHeads * D
            let q = Self.values(T * qd, seed: 11, scale: 2), k = Self.values(S * kvd, seed: 12, scale: 2)
            let v = Self.values(S * kvd, seed: 13)
            var out = [Float](repeating: .nan, count: T * qd)
            var scratch = [Float](repeating: .nan, count: attentionScratchCount(tokens: T, keys: S, heads: heads))
            attentionForward(out: &out, q: q, keys: k, values: v, scratch: &scratch, tokens: T, startPosition: start,
                             heads: heads, kvHeads: kvHeads, headDim: D, window: window)
            var ref = [Float](repeating: 0, count: T * qd)
            for t in 0..<T { for h in 0..<heads {
                let kvh = h / (heads / kvHeads), p = start + t
                let lo = window.map { max(0, p - $0 + 1) } ?? 0
                var scores: [Double] = []
                for j in lo...p {
                    var s: Double = 0
                    for i in 0..<D { s += Double(q[t * qd + h * D + i]) * Double(k[j * kvd + kvh * D + i]) }
                    scores.append(s / Double(D).squareRoot())
                }
                let m = scores.max()!, e = scores.map { Foundation.exp($0 - m) }, z = e.reduce(0, +)
                for i in 0..<D {
                    var acc: Double = 0
                    for (n, j) in (lo...p).enumerated() { acc += e[n] / z * Double(v[j * kvd + kvh * D + i]) }
                    ref[t * qd + h * D + i] = Float(acc)
                }
            } }
            #expect(zip(out, ref).map { abs($0 - $1) }.max()! < 1e-5,
                    "T \(T) start \(start) heads \(heads)/\(kvHeads) D \(D) window \(String(describing: window))")
        }
    }
}
