// NF4 GEMM benchmark: the tiled baseline (NF4Matmul.forwardTiled: dequantize a tile + OpenBLAS sgemm) against the own
// kernel that decodes NF4 into its packed B panels (NF4Gemm), back to back, on the SmolLM2-135M training
// shapes; plus plain OpenBLAS sgemm on an already-dequantized float W for reference.
// Run: swift run -c release --scratch-path .build-gemm nf4-gemm [rows] [runs]
import Dispatch
import Glibc
import Kernels
import Quantization

let peak = 229.0   // GFLOP/s: 2 Zen 3 cores × ~3.5 GHz × 32 flop/cycle (AVX2 FMA)
let args = CommandLine.arguments
let m = args.count > 1 ? Int(args[1]) ?? 1024 : 1024
let runs = args.count > 2 ? Int(args[2]) ?? 15 : 15

func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

/// (median, best) seconds per call of each body. OpenBLAS's worker threads busy-wait for a while after
/// each call (tens of ms) and take the second core from our pool, so interleaving BLAS calls with
/// ours call by call halves our 2-core throughput. Instead each round times every body in its own
/// group of calls (ours first, after a pause that lets BLAS's threads go idle), and the 3 rounds
/// spread each body's samples over time (the machine is shared: the load changes).
func timing(_ bodies: [() -> Void]) -> [(median: Double, best: Double)] {
    let rounds = 3, perRound = max(3, runs / rounds)
    var t = [[Double]](repeating: [], count: bodies.count)
    for _ in 0..<rounds {
        usleep(300_000)
        for (i, body) in bodies.enumerated() {
            body()
            for _ in 0..<perRound {
                let t0 = now()
                body()
                t[i].append(now() - t0)
            }
        }
    }
    return t.map { let s = $0.sorted(); return (s[s.count / 2], s[0]) }
}

/// Best CPU seconds of the calling thread per call (not counting time the thread was descheduled:
/// a load-independent measure of the kernel's efficiency on one core).
func threadCPUBest(_ body: () -> Void) -> Double {
    body()
    var best = Double.infinity
    for _ in 0..<max(3, runs / 2) {
        var a = timespec(), b = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a)
        body()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b)
        best = min(best, Double(b.tv_sec - a.tv_sec) + Double(b.tv_nsec - a.tv_nsec) * 1e-9)
    }
    return best
}

func fmt(_ x: Double, _ width: Int, _ digits: Int = 1) -> String {
    var p = 1.0
    for _ in 0..<digits { p *= 10 }
    let s = "\((x * p).rounded() / p)"
    return String(repeating: " ", count: max(0, width - s.count)) + s
}

var state: UInt64 = 0x1234_5678
func rnd() -> Float {
    state = state &* 6364136223846793005 &+ 1442695040888963407
    return Float(state >> 40) / Float(1 << 24) * 2 - 1
}

func maxRelDiff(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ count: Int) -> Float {
    var d: Float = 0, s: Float = 1e-20
    for i in 0..<count { d = max(d, abs(a[i] - b[i])); s = max(s, abs(b[i])) }
    return d / s
}

let shapes: [(name: String, n: Int, k: Int)] = [
    ("q/o 576x576", 576, 576), ("k/v 192x576", 192, 576), ("gate/up 1536x576", 1536, 576),
    ("down 576x1536", 576, 1536), ("q|k|v 960x576", 960, 576), ("gate|up 3072x576", 3072, 576),
]

print("cores: \(coreCount), M = \(m) rows, 3 rounds of \(max(3, runs / 3)) runs per variant; GFLOP/s = 2·M·N·K / time")
print("median time (best time in brackets); % of the \(Int(peak)) GFLOP/s peak. blas-f32: OpenBLAS sgemm on a float32 W;")
print("ours/1: one part per core instead of two. 1T cpu: ours on ONE thread, GFLOP per thread-CPU-second")
print("(load-independent) and % of one core's \(Int(peak / 2)) GFLOP/s.")
print("shape               dir  | existing GFLOP/s   %  | ours GFLOP/s     %  | speedup | ours/1  | blas-f32 | 1T cpu    %  | max rel diff")
let nf4ws = NF4Workspace()
let ws = NF4GemmWorkspace()
for s in shapes {
    let w = try QuantizedTensor4Bit.quantize((0..<(s.n * s.k)).map { _ in rnd() * 0.05 }, shape: [s.n, s.k],
                                             quantType: .nf4, blocksize: 64, doubleQuant: true)
    let wf = w.dequantize()
    let flops = 2.0 * Double(m * s.n * s.k)
    for dir in ["fwd", "bwd"] {
        let (inCount, outCount) = dir == "fwd" ? (m * s.k, m * s.n) : (m * s.n, m * s.k)
        let x = UnsafeMutablePointer<Float>.allocate(capacity: inCount)
        for i in 0..<inCount { x[i] = rnd() }
        let y0 = UnsafeMutablePointer<Float>.allocate(capacity: outCount)
        let y1 = UnsafeMutablePointer<Float>.allocate(capacity: outCount)
        let y2 = UnsafeMutablePointer<Float>.allocate(capacity: outCount)
        defer { x.deallocate(); y0.deallocate(); y1.deallocate(); y2.deallocate() }
        let existing: () -> Void, ours: () -> Void, ours1: () -> Void, blas: () -> Void, single: () -> Void
        if dir == "fwd" {
            existing = { NF4Matmul.forwardTiled(out: y0, inp: x, weight: w, rows: m, workspace: nf4ws) }
            ours = { NF4Gemm.forward(out: y1, inp: x, weight: w, rows: m, workspace: ws) }
            ours1 = { NF4Gemm.forward(out: y2, inp: x, weight: w, rows: m, workspace: ws, threads: coreCount) }
            single = { NF4Gemm.forward(out: y2, inp: x, weight: w, rows: m, workspace: ws, threads: 1) }
            blas = { wf.withUnsafeBufferPointer { BLAS.sgemm(transB: true, m: m, n: s.n, k: s.k, a: x, b: $0.baseAddress!, c: y2) } }
        } else {
            existing = { NF4Matmul.backwardInputTiled(dInp: y0, dOut: x, weight: w, rows: m, workspace: nf4ws) }
            ours = { NF4Gemm.backwardInput(dInp: y1, dOut: x, weight: w, rows: m, workspace: ws) }
            ours1 = { NF4Gemm.backwardInput(dInp: y2, dOut: x, weight: w, rows: m, workspace: ws, threads: coreCount) }
            single = { NF4Gemm.backwardInput(dInp: y2, dOut: x, weight: w, rows: m, workspace: ws, threads: 1) }
            blas = { wf.withUnsafeBufferPointer { BLAS.sgemm(m: m, n: s.k, k: s.n, a: x, b: $0.baseAddress!, c: y2) } }
        }
        let r = timing([ours, ours1, existing, blas])
        let (to, t1, te, tb) = (r[0], r[1], r[2], r[3])
        let cpu = flops / threadCPUBest(single) / 1e9
        func g(_ t: Double) -> Double { flops / t / 1e9 }
        let name = s.name + String(repeating: " ", count: max(0, 19 - s.name.count))
        print("\(name) \(dir)  | \(fmt(g(te.median), 6)) (\(fmt(g(te.best), 5))) \(fmt(100 * g(te.median) / peak, 3, 0))"
              + " | \(fmt(g(to.median), 6)) (\(fmt(g(to.best), 5))) \(fmt(100 * g(to.median) / peak, 3, 0))"
              + " | \(fmt(te.median / to.median, 5, 2))x | \(fmt(g(t1.median), 6)) | \(fmt(g(tb.median), 7))  | "
              + "\(fmt(cpu, 6)) \(fmt(200 * cpu / peak, 3, 0)) | "
              + "\(maxRelDiff(y1, y0, outCount))")
    }
}
