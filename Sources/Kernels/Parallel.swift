import Dispatch
import _CKernels

/// Runs `body(i)` for i in 0..<iterations on the machine's cores and returns when all are done.
/// The one parallel loop of the package. Synchronous, so `body` never escapes.
///
/// Loops run on a small persistent pool (`_CKernels/pool.c`): `coreCount − 1` workers that spin
/// for ~200 µs after each loop before sleeping, so the many short loops of decoding (several per
/// layer, ~10–100 µs each) don't pay an OS wake-up each. Iterations are claimed one at a time in
/// increasing order by the caller and the workers. A `parallelFor` inside a body runs serially on
/// its thread (the cores are already busy with the outer loop). When the pool is busy with another
/// thread's loop, the loop runs on `DispatchQueue.concurrentPerform` instead (the cast only silences
/// Linux Dispatch's `@Sendable` requirement, SWIFT-PERFORMANCE.md §4).
@inline(__always)
public func parallelFor(_ iterations: Int, _ body: (Int) -> Void) {
    if iterations <= 1 || qlora_pool_inside() != 0 {
        for i in 0..<max(iterations, 0) { body(i) }
        return
    }
    parallelForPooled(iterations, body)
}

/// Runs `body(range)` over [0, count) split into one contiguous range per core when the loop is big
/// enough to pay for the hand-off (`count · costPerItem` ≥ 2¹⁶, e.g. floats touched), else once over
/// the whole range. Inner range edges are multiples of `alignment`. For the row-wise and element-wise
/// kernels of training (norms, RoPE, SwiGLU, residual adds): with edges on a multiple of the vector
/// width, each item is computed exactly as in one pass, so the split never changes a result.
@inline(__always)
public func parallelRanges(_ count: Int, costPerItem: Int = 1, alignment: Int = 1, _ body: (Range<Int>) -> Void) {
    let parts = count * costPerItem >= 1 << 16 ? min(coreCount, count / max(alignment, 1)) : 1
    if parts <= 1 {
        if count > 0 { body(0..<count) }
        return
    }
    func edge(_ p: Int) -> Int { p == parts ? count : count * p / parts / alignment * alignment }
    parallelFor(parts) { p in body(edge(p)..<edge(p + 1)) }
}

/// True on a thread that is running an iteration of a `parallelFor` (where a nested one runs serially).
public var insideParallelFor: Bool { qlora_pool_inside() != 0 }

@usableFromInline
func parallelForPooled(_ iterations: Int, _ body: (Int) -> Void) {
    withoutActuallyEscaping(body) { b in
        var closure = b
        let status = withUnsafeMutablePointer(to: &closure) { context in
            qlora_pool_run(Int64(iterations), Int32(min(coreCount, 64)), { context, i in
                context!.assumingMemoryBound(to: ((Int) -> Void).self).pointee(Int(i))
            }, context)
        }
        if status != 0 {
            DispatchQueue.concurrentPerform(iterations: iterations,
                                            execute: unsafeBitCast(b, to: (@Sendable (Int) -> Void).self))
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The number of online CPU cores (at least 1): how many workers the parallel loops use.
public let coreCount: Int = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
