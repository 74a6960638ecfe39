import Foundation

/// Finite-difference gradient checking in Double (used by BackwardTests).
///
/// The backward kernels are generic over Float and Double (`KernelScalar`); the tests run the very
/// same code in Double, take the scalar loss L = Σ w ⊙ out with random w (so dOut = w), and compare the
/// analytic gradient with central differences. The Float kernels are then compared with the Double run.
enum GradCheck {
    /// Deterministic pseudo-random doubles in [-scale, scale] (xorshift64).
    static func values(_ n: Int, seed: UInt64, scale: Double = 1) -> [Double] {
        var s = seed &* 0x9E3779B97F4A7C15 | 1
        return (0..<n).map { _ in
            s ^= s << 13; s ^= s >> 7; s ^= s << 17
            return (Double(s >> 11) / Double(1 << 53) * 2 - 1) * scale
        }
    }

    /// Central differences of `loss` with respect to every element of `x` (restored afterwards).
    static func numericGradient(_ x: inout [Double], eps: Double = 1e-5, _ loss: ([Double]) -> Double) -> [Double] {
        var g = [Double](repeating: 0, count: x.count)
        for i in 0..<x.count {
            let x0 = x[i]
            x[i] = x0 + eps; let lp = loss(x)
            x[i] = x0 - eps; let lm = loss(x)
            x[i] = x0
            g[i] = (lp - lm) / (2 * eps)
        }
        return g
    }

    /// max_i |a_i − b_i| / max(max_i |b_i|, tiny): the error relative to the gradient's scale
    /// (element-wise relative error is meaningless for the many near-zero entries).
    static func relativeError(_ a: [Double], _ b: [Double]) -> Double {
        precondition(a.count == b.count)
        let scale = max(b.map { abs($0) }.max() ?? 0, 1e-12)
        return zip(a, b).map { abs($0 - $1) }.max().map { $0 / scale } ?? 0
    }

    static func relativeError(_ a: [Float], _ b: [Double]) -> Double { relativeError(a.map(Double.init), b) }

    /// Σ w ⊙ out.
    static func dot(_ w: [Double], _ out: [Double]) -> Double { zip(w, out).reduce(0) { $0 + $1.0 * $1.1 } }

    static func float(_ x: [Double]) -> [Float] { x.map { Float($0) } }
}
