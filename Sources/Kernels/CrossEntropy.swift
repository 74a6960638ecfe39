#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import _CKernels

// Token-level cross-entropy over materialized logits [T, V] (the fused logits-free variant is not
// built yet). Targets equal to `ignoreIndex` (−100, Hugging Face's convention) contribute nothing.
// Log-sum-exp is max-subtracted; exp in the element type (Float: the kernels' AVX2 exp), sums in Double. Rows run in parallel over `threads` workers.

/// A target id that is neither `ignoreIndex` nor in 0 ..< vocab.
public struct CrossEntropyError: Error, CustomStringConvertible, Equatable {
    public let row: Int
    public let target: Int
    public let vocab: Int
    public var description: String {
        "crossEntropy: targets[\(row)] = \(target) is outside 0..<\(vocab) and is not the ignore index"
    }
}

/// losses[t] = logsumexp(logits[t, :]) − logits[t, targets[t]] for trained rows, 0 for ignored rows.
/// Returns the summed loss (Double) and the number of trained rows; the mean loss is sum / count.
/// Throws `CrossEntropyError` (before writing anything) for a target outside 0 ..< V other than ignoreIndex.
public func crossEntropyForward(losses: UnsafeMutablePointer<Float>, logits: UnsafePointer<Float>,
                                targets: UnsafePointer<Int>, rows T: Int, vocab V: Int, ignoreIndex: Int = -100,
                                threads: Int = coreCount) throws -> (sum: Double, count: Int) {
    try crossEntropyForwardImpl(losses: losses, logits: logits, targets: targets, rows: T, vocab: V,
                                ignoreIndex: ignoreIndex, threads: threads)
}

/// dLogits[t, :] = scale · (softmax(logits[t, :]) − onehot(targets[t])) on trained rows, 0 on ignored rows.
/// OVERWRITES dLogits (not `+=`), and `dLogits` may be `logits` (in place over the logits buffer, as
/// llm.c does). For the mean loss pass scale = 1 / count (count from `crossEntropyForward`).
/// Targets must have passed `crossEntropyForward`'s check.
public func crossEntropyBackward(dLogits: UnsafeMutablePointer<Float>, logits: UnsafePointer<Float>,
                                 targets: UnsafePointer<Int>, scale: Float, rows T: Int, vocab V: Int,
                                 ignoreIndex: Int = -100, threads: Int = coreCount) {
    crossEntropyBackwardImpl(dLogits: dLogits, logits: logits, targets: targets, scale: scale, rows: T, vocab: V,
                             ignoreIndex: ignoreIndex, threads: threads)
}

/// (max, Σ exp(x − max)) of one row, the sum in Double.
@inline(__always)
func crossEntropyRowStats<S: KernelScalar>(_ x: UnsafePointer<S>, _ V: Int) -> (max: S, sum: Double) {
    var m = x[0]
    for i in 1..<max(1, V) where x[i] > m { m = x[i] }
    var s = 0.0
    withUnsafeTemporaryAllocation(of: S.self, capacity: expChunk) { tmp in
        let e = tmp.baseAddress!
        var i0 = 0
        while i0 < V {
            let n = min(expChunk, V - i0)
            for j in 0..<n { e[j] = x[i0 + j] - m }
            S.expRow(e, e, n)
            var part: S = 0                                   // ≤ 256 terms ≤ 1 each, then Double
            for j in 0..<n { part += e[j] }
            s += Double(part)
            i0 += n
        }
    }
    return (m, s)
}

/// Rows whose target is not `ignoreIndex`; throws `CrossEntropyError` for a target outside 0 ..< V.
func trainedTargetCount(_ targets: UnsafePointer<Int>, rows T: Int, vocab V: Int, ignoreIndex: Int) throws -> Int {
    var count = 0
    for t in 0..<T {
        let y = targets[t]
        if y == ignoreIndex { continue }
        guard y >= 0 && y < V else { throw CrossEntropyError(row: t, target: y, vocab: V) }
        count += 1
    }
    return count
}

func crossEntropyForwardImpl<S: KernelScalar>(losses: UnsafeMutablePointer<S>, logits: UnsafePointer<S>,
                                              targets: UnsafePointer<Int>, rows T: Int, vocab V: Int,
                                              ignoreIndex: Int, threads: Int) throws -> (sum: Double, count: Int) {
    let count = try trainedTargetCount(targets, rows: T, vocab: V, ignoreIndex: ignoreIndex)
    let workers = max(1, min(threads, T))
    parallelFor(workers) { w in
        var t = w
        while t < T {
            let y = targets[t]
            if y == ignoreIndex {
                losses[t] = 0
            } else {
                let row = logits + t * V
                let (m, s) = crossEntropyRowStats(row, V)
                losses[t] = S(Double(m) + log(s) - Double(row[y]))
            }
            t += workers
        }
    }
    var sum = 0.0
    for t in 0..<T where targets[t] != ignoreIndex { sum += Double(losses[t]) }
    return (sum, count)
}

func crossEntropyBackwardImpl<S: KernelScalar>(dLogits: UnsafeMutablePointer<S>, logits: UnsafePointer<S>,
                                               targets: UnsafePointer<Int>, scale: S, rows T: Int, vocab V: Int,
                                               ignoreIndex: Int, threads: Int) {
    let workers = max(1, min(threads, T))
    parallelFor(workers) { w in
        var t = w
        while t < T {
            let y = targets[t]
            let row = logits + t * V, d = dLogits + t * V
            if y == ignoreIndex || y < 0 || y >= V {
                d.update(repeating: 0, count: V)
            } else {
                let (m, s) = crossEntropyRowStats(row, V)
                let k = S(Double(scale) / s)          // d may be row: each element is read before written
                for i in 0..<V { d[i] = row[i] - m }
                S.expRow(d, d, V)
                for i in 0..<V { d[i] *= k }
                d[y] -= scale
            }
            t += workers
        }
    }
}

/// Cross-entropy forward AND backward in one pass over each row, in place over the logits (the
/// fused LM-head path of training): for a trained row t, losses[t] = logsumexp(logits[t]) −
/// logits[t, y] and logits[t, :] becomes scale · (softmax − onehot(y)); an ignored row becomes 0 with
/// loss 0. Returns the summed loss (Double) and the number of trained rows. Throws
/// `CrossEntropyError` (before writing anything) for a target outside 0 ..< V other than ignoreIndex.
/// Same result as `crossEntropyForward` then `crossEntropyBackward`, with 3 passes over a row instead of 5.
public func crossEntropyForwardBackward(logits: UnsafeMutablePointer<Float>, losses: UnsafeMutablePointer<Float>,
                                        targets: UnsafePointer<Int>, scale: Float, rows T: Int, vocab V: Int,
                                        ignoreIndex: Int = -100, threads: Int = coreCount) throws -> (sum: Double, count: Int) {
    let count = try trainedTargetCount(targets, rows: T, vocab: V, ignoreIndex: ignoreIndex)
    let workers = max(1, min(threads, T))
    parallelFor(workers) { w in
        var t = w
        while t < T {
            let y = targets[t], row = logits + t * V
            if y == ignoreIndex {
                row.update(repeating: 0, count: V)
                losses[t] = 0
            } else {
                losses[t] = Float(qlora_cross_entropy_row(row, Int64(V), Int64(y), scale))
            }
            t += workers
        }
    }
    var sum = 0.0
    for t in 0..<T where targets[t] != ignoreIndex { sum += Double(losses[t]) }
    return (sum, count)
}
