// parallelFor on the persistent pool (Sources/_CKernels/pool.c): every iteration runs exactly once,
// for many sizes and many back-to-back small loops; nested loops (serial on their thread) and
// concurrent callers (which fall back to Dispatch) stay exact; iterations beyond the pool's 2^20
// limit still run.
import Dispatch
import Foundation
import Testing
import Kernels
import _CKernels

@Suite(.serialized) struct ParallelTests {
    @Test func everyIterationRunsExactlyOnce() {
        for n in [0, 1, 2, 3, 5, 17, 64, 1000, 4099] {
            let hits = Atomics(n)
            parallelFor(n) { hits.add($0) }
            #expect(hits.values == [Int](repeating: 1, count: n), "n = \(n)")
        }
    }

    @Test func manySmallLoopsBackToBack() {
        let hits = Atomics(8)
        var expected = [Int](repeating: 0, count: 8)
        for k in 0..<20_000 {
            let n = 2 + k % 7
            parallelFor(n) { hits.add($0) }
            for i in 0..<n { expected[i] += 1 }
        }
        #expect(hits.values == expected)
    }

    @Test func nestedLoopsRunExactlyOnceSeriallyOnTheirThread() {
        let hits = Atomics(6 * 9), foreign = Atomics(1)
        #expect(!insideParallelFor)
        parallelFor(6) { i in
            #expect(insideParallelFor)
            let outer = pthread_self()
            parallelFor(9) { j in
                hits.add(i * 9 + j)
                if pthread_equal(pthread_self(), outer) == 0 { foreign.add(0) }
            }
        }
        #expect(!insideParallelFor)
        #expect(hits.values == [Int](repeating: 1, count: 6 * 9))
        #expect(foreign.values == [0])
    }

    @Test func concurrentCallersRunExactlyOnce() {
        let callers = 4, n = 33, rounds = 300
        let hits = Atomics(callers * n)
        DispatchQueue.concurrentPerform(iterations: callers) { c in
            for _ in 0..<rounds { parallelFor(n) { hits.add(c * n + $0) } }
        }
        #expect(hits.values == [Int](repeating: rounds, count: callers * n))
    }

    @Test func loopLargerThanThePoolLimitStillRuns() {
        let n = (1 << 20) + 3
        let hits = Atomics(n)
        parallelFor(n) { hits.add($0) }
        #expect(hits.values.allSatisfy { $0 == 1 })
        // The pool itself refuses it (and leaves nothing half-done) so parallelFor fell back.
        #expect(qlora_pool_run(Int64(n), 2, { _, _ in }, nil) == -1)
    }

    /// parallelRanges covers [0, count) once, with inner edges on the alignment; small loops stay whole.
    @Test(arguments: [(0, 1, 1), (10, 1, 1), (70_000, 1, 64), (70_003, 1, 64), (300, 576, 1), (1 << 16, 1, 8)])
    func parallelRangesCoverEveryItemOnce(count: Int, cost: Int, alignment: Int) {
        let hits = Atomics(count), edges = Atomics(count + 1)
        parallelRanges(count, costPerItem: cost, alignment: alignment) { r in
            edges.add(r.lowerBound)
            for i in r { hits.add(i) }
        }
        #expect(hits.values.allSatisfy { $0 == 1 })
        let starts = edges.values.indices.filter { edges.values[$0] > 0 }
        #expect(starts.allSatisfy { $0 % alignment == 0 })
        #expect(starts.count == (count * cost >= 1 << 16 ? min(coreCount, count / alignment) : min(count, 1)))
    }
}

/// Per-index counters, updated under a lock from any thread.
private final class Atomics: @unchecked Sendable {
    private var cells: [Int]
    private let lock = NSLock()
    init(_ count: Int) { cells = [Int](repeating: 0, count: count) }
    func add(_ i: Int) { lock.lock(); cells[i] += 1; lock.unlock() }
    var values: [Int] { lock.lock(); defer { lock.unlock() }; return cells }
}
