import Dispatch

/// Runs `body(i)` for i in 0..<iterations on the machine's cores and returns when all are done.
/// The one parallel loop of the package. Synchronous, so `body` never escapes; the cast only
/// silences Linux Dispatch's `@Sendable` requirement (SWIFT-PERFORMANCE.md §4).
@inline(__always)
public func parallelFor(_ iterations: Int, _ body: (Int) -> Void) {
    if iterations == 1 { body(0); return }
    withoutActuallyEscaping(body) { b in
        DispatchQueue.concurrentPerform(iterations: iterations,
                                        execute: unsafeBitCast(b, to: (@Sendable (Int) -> Void).self))
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The number of online CPU cores (at least 1): how many workers the parallel loops use.
public let coreCount: Int = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
