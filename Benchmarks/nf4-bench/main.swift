// NF4 kernel benchmark: validates against the naive references, then times (best of several runs).
// Run: swift run -c release --scratch-path .build-nf4 nf4-bench
import Dispatch
import Kernels
import Quantization

func f(_ x: Double, _ d: Int = 2) -> String {
    let p = (0..<d).reduce(1.0) { a, _ in a * 10 }
    let v = (x * p).rounded() / p
    return "\(v)"
}

func now() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }

/// Median wall time of `body` over `runs` runs of `inner` calls each, per call (the machine is shared:
/// medians, not bests).
func time(runs: Int = 9, inner: Int, _ body: () -> Void) -> Double {
    var times: [Double] = []
    for _ in 0..<runs {
        let t0 = now()
        for _ in 0..<inner { body() }
        times.append((now() - t0) / Double(inner))
    }
    return times.sorted()[times.count / 2]
}

var state: UInt64 = 12345
func rand() -> Float {
    state = state &* 6364136223846793005 &+ 1442695040888963407
    return Float(state >> 40) / Float(1 << 24) * 2 - 1
}

func maxRel(_ a: [Float], _ b: [Float]) -> Float {
    let s = max(b.map { abs($0) }.max()!, 1e-6)
    return zip(a, b).map { abs($0 - $1) }.max()! / s
}

print("cores: \(coreCount)")
print("== Memory bandwidth (256 MiB buffers, out of cache) ==")
do {
    let count = 64 << 20                      // floats
    let a = UnsafeMutablePointer<Float>.allocate(capacity: count)
    let b = UnsafeMutablePointer<Float>.allocate(capacity: count)
    a.initialize(repeating: 1, count: count); b.initialize(repeating: 2, count: count)
    let bytes = Double(count * 4)
    let tc = time(runs: 5, inner: 1) { b.update(from: a, count: count) }
    print("  memcpy: \(f(bytes / tc / 1e9)) GB/s copied (\(f(2 * bytes / tc / 1e9)) GB/s read+write)")
    for workers in [1, coreCount] {
        var sink: Float = 0
        let tr = time(runs: 5, inner: 1) {
            var partial = [Float](repeating: 0, count: workers)
            partial.withUnsafeMutableBufferPointer { pp in
                parallelFor(workers) { w in
                    let lo = count * w / workers, hi = count * (w + 1) / workers
                    var s0 = SIMD8<Float>(), s1 = SIMD8<Float>()
                    var i = lo
                    while i + 16 <= hi {
                        s0 += UnsafeRawPointer(a + i).loadUnaligned(as: SIMD8<Float>.self)
                        s1 += UnsafeRawPointer(a + i + 8).loadUnaligned(as: SIMD8<Float>.self)
                        i += 16
                    }
                    pp[w] = (s0 + s1).sum()
                }
            }
            sink += partial.reduce(0, +)
        }
        print("  stream read, \(workers) thread(s): \(f(bytes / tr / 1e9)) GB/s (checksum \(sink > 0))")
    }
    a.deallocate(); b.deallocate()
}

print("== GEMV y = W·x (decode) ==")
for (n, k) in [(1536, 576), (576, 1536), (49152, 576), (8192, 8192)] {
    let values = (0..<(n * k)).map { _ in rand() * 0.05 }
    let w = try QuantizedTensor4Bit.quantize(values, shape: [n, k], doubleQuant: true)
    let x = (0..<k).map { _ in rand() }
    var y = [Float](repeating: 0, count: n)
    var y32 = [Float](repeating: 0, count: n)
    let dq = w.dequantize()
    if n * k <= 1_000_000 {
        y.withUnsafeMutableBufferPointer { yp in x.withUnsafeBufferPointer { NF4Matmul.gemv(out: yp.baseAddress!, inp: $0.baseAddress!, weight: w) } }
        let reference = NF4Matmul.gemvReference(weight: w, x: x)
        let err = maxRel(y, reference)
        y.withUnsafeMutableBufferPointer { yp in
            x.withUnsafeBufferPointer { NF4Matmul.gemv(out: yp.baseAddress!, inp: $0.baseAddress!, weight: w, arithmetic: .int16) }
        }
        print("  check [\(n)x\(k)] max rel err vs naive: float32 \(err), int16 \(maxRel(y, reference))")
    }
    let tq = time(inner: max(1, 20_000_000 / (n * k))) {
        y.withUnsafeMutableBufferPointer { yp in x.withUnsafeBufferPointer { NF4Matmul.gemv(out: yp.baseAddress!, inp: $0.baseAddress!, weight: w) } }
    }
    let t16 = time(inner: max(1, 20_000_000 / (n * k))) {
        y.withUnsafeMutableBufferPointer { yp in
            x.withUnsafeBufferPointer { NF4Matmul.gemv(out: yp.baseAddress!, inp: $0.baseAddress!, weight: w, arithmetic: .int16) }
        }
    }
    let tf = time(inner: max(1, 20_000_000 / (n * k))) {
        y32.withUnsafeMutableBufferPointer { yp in dq.withUnsafeBufferPointer { a in x.withUnsafeBufferPointer {
            BLAS.sgemv(m: n, n: k, a: a.baseAddress!, x: $0.baseAddress!, y: yp.baseAddress!) } } }
    }
    let bq: Double = Double(w.storageBytes), bf: Double = Double(n * k * 4), nw: Double = Double(n * k)
    let a1: String = "  [\(n) x \(k)] NF4+DQ gemv: \(f(tq * 1e6, 1)) us, \(f(bq / tq / 1e9)) GB/s, \(f(nw / tq / 1e9)) Gweights/s"
    let a2: String = " | fp32 sgemv: \(f(tf * 1e6, 1)) us, \(f(bf / tf / 1e9)) GB/s, \(f(nw / tf / 1e9)) Gweights/s | speedup \(f(tf / tq))x"
    print(a1 + a2)
    print("  [\(n) x \(k)] NF4+DQ gemv, int16 arithmetic: \(f(t16 * 1e6, 1)) us, \(f(nw / t16 / 1e9)) Gweights/s, \(f(tq / t16))x the float32 one")
}

print("== Forward Y = X·Wᵀ, X [512, 576], W [1536, 576] (prefill/training) ==")
do {
    let (t, n, k) = (512, 1536, 576)
    let w = try QuantizedTensor4Bit.quantize((0..<(n * k)).map { _ in rand() * 0.05 }, shape: [n, k], doubleQuant: true)
    let dq = w.dequantize()
    let xin = (0..<(t * k)).map { _ in rand() }
    var out = [Float](repeating: 0, count: t * n)
    var ref = [Float](repeating: 0, count: t * n)
    let ws = NF4Workspace()
    let flops = 2.0 * Double(t * n * k)
    let tq = time(inner: 5) {
        out.withUnsafeMutableBufferPointer { o in xin.withUnsafeBufferPointer {
            NF4Matmul.forward(out: o.baseAddress!, inp: $0.baseAddress!, weight: w, rows: t, workspace: ws) } }
    }
    let tf = time(inner: 5) {
        ref.withUnsafeMutableBufferPointer { o in xin.withUnsafeBufferPointer { a in dq.withUnsafeBufferPointer {
            BLAS.sgemm(transB: true, m: t, n: n, k: k, a: a.baseAddress!, b: $0.baseAddress!, c: o.baseAddress!) } } }
    }
    print("  check max rel err vs fp32 sgemm on the dequantized weight: \(maxRel(out, ref))")
    let b1: String = "  NF4Gemm (decoded into packed panels): \(f(tq * 1e3)) ms, \(f(flops / tq / 1e9, 1)) GFLOP/s"
    let b2: String = " | plain sgemm: \(f(tf * 1e3)) ms, \(f(flops / tf / 1e9, 1)) GFLOP/s | time ratio \(f(tq / tf))"
    print(b1 + b2)
    var dIn = [Float](repeating: 0, count: t * k)
    let dOut = (0..<(t * n)).map { _ in rand() }
    let tb = time(inner: 5) {
        dIn.withUnsafeMutableBufferPointer { d in dOut.withUnsafeBufferPointer {
            NF4Matmul.backwardInput(dInp: d.baseAddress!, dOut: $0.baseAddress!, weight: w, rows: t, workspace: ws) } }
    }
    let tbf = time(inner: 5) {
        dIn.withUnsafeMutableBufferPointer { d in dOut.withUnsafeBufferPointer { a in dq.withUnsafeBufferPointer {
            BLAS.sgemm(m: t, n: k, k: n, a: a.baseAddress!, b: $0.baseAddress!, c: d.baseAddress!) } } }
    }
    let c1: String = "  backwardInput dX = dY·W: \(f(tb * 1e3)) ms, \(f(flops / tb / 1e9, 1)) GFLOP/s"
    let c2: String = " | plain sgemm: \(f(tbf * 1e3)) ms, \(f(flops / tbf / 1e9, 1)) GFLOP/s"
    print(c1 + c2)
    var full = [Float](repeating: 0, count: n * k)
    let td = time(inner: 5) { full.withUnsafeMutableBufferPointer { w.dequantize(start: 0, into: $0) } }
    let nw: Double = Double(n * k)
    print("  dequantize whole [1536x576] to fp32: \(f(td * 1e3, 3)) ms, \(f(nw / td / 1e9)) Gweights/s")
}

print("== Quantization speed ==")
for (n, k, dq) in [(1536, 576, false), (1536, 576, true), (49152, 576, true)] {
    let values = (0..<(n * k)).map { _ in rand() * 0.05 }
    let tq = time(runs: 3, inner: 1) { _ = try! QuantizedTensor4Bit.quantize(values, shape: [n, k], doubleQuant: dq) }
    let nw: Double = Double(n * k)
    print("  [\(n) x \(k)]\(dq ? " +DQ" : ""): \(f(tq * 1e3)) ms, \(f(nw / tq / 1e6, 1)) Mweights/s")
}

print("== Decode sweep: SmolLM2-135M layer shapes (q|k|v, o, gate|up, down) x 30 layers, NF4+DQ ==")
do {
    // 30 distinct layers (~55 MB of 4-bit weights, more than the L3): what one decoded token streams.
    let (C, KV, I, L) = (576, 192, 1536, 30)
    var layers: [(qkv: [QuantizedTensor4Bit], o: QuantizedTensor4Bit, gu: [QuantizedTensor4Bit], down: QuantizedTensor4Bit)] = []
    func make(_ n: Int, _ k: Int) throws -> QuantizedTensor4Bit {
        try QuantizedTensor4Bit.quantize((0..<(n * k)).map { _ in rand() * 0.05 }, shape: [n, k], doubleQuant: true)
    }
    for _ in 0..<L {
        layers.append((qkv: [try make(C, C), try make(KV, C), try make(KV, C)], o: try make(C, C),
                       gu: [try make(I, C), try make(I, C)], down: try make(C, I)))
    }
    let x = UnsafeMutablePointer<Float>.allocate(capacity: I)
    for i in 0..<I { x[i] = rand() }
    let y = UnsafeMutablePointer<Float>.allocate(capacity: 2 * I + 2 * C)
    let weightsPerToken = Double(L * C * (C + 2 * KV + C + 3 * I))
    for arithmetic in DecodeArithmetic.allCases {
        let t = time(runs: 9, inner: 3) {
            for l in layers {
                NF4Matmul.gemv([(out: y, weight: l.qkv[0]), (out: y + C, weight: l.qkv[1]), (out: y + C + KV, weight: l.qkv[2])],
                               inp: x, arithmetic: arithmetic)
                NF4Matmul.gemv(out: y, inp: x, weight: l.o, arithmetic: arithmetic)
                NF4Matmul.gemv([(out: y, weight: l.gu[0]), (out: y + I, weight: l.gu[1])], inp: x, arithmetic: arithmetic)
                NF4Matmul.gemv(out: y, inp: x, weight: l.down, arithmetic: arithmetic)
            }
        }
        print("  \(arithmetic): \(f(t * 1e3)) ms per token's layer weights (\(f(weightsPerToken / 1e6, 1)) M weights), \(f(weightsPerToken / t / 1e9)) Gweights/s, 4 parallel loops per layer")
    }
    x.deallocate(); y.deallocate()
}
