// One QLoRA training step (LoRAModel.forwardBackward over an NF4+DQ base) on SmolLM2-135M, timed.
// Run: swift run -c release --scratch-path .build-G train-step [--ckpt on|off] [--batch 4] [--seq 256]
//      [--rank 16] [--steps 3] [--warmup 1] [--prompt 0.5] [--length 256]
// --prompt: fraction of each row's positions that are prompt (label −100), as chat data has.
// --length: real tokens per row (the rest is padding with label −100), to see what padding costs.
// Prints the median step (wall and process CPU), tokens/s, the per-phase / per-op split of the
// median step, useful GFLOP/s and peak RSS. Run one configuration per process (peak RSS is per process).
import Foundation
import Kernels
import Llama
import ModelFormats
import Quantization

func arg(_ name: String, _ def: String) -> String {
    let a = CommandLine.arguments
    if let i = a.firstIndex(of: name), i + 1 < a.count { return a[i + 1] }
    return def
}
let ckpt = arg("--ckpt", "on") == "on"
let B = Int(arg("--batch", "4"))!, T = Int(arg("--seq", "256"))!, R = Int(arg("--rank", "16"))!
let steps = Int(arg("--steps", "3"))!, warmup = Int(arg("--warmup", "1"))!
let promptFrac = Double(arg("--prompt", "0.5"))!
let length = Int(arg("--length", "\(T)"))!
let path = arg("--model", NSString(string: "~/.cache/swift-qlora/SmolLM2-135M-Instruct.Q4_1.gguf").expandingTildeInPath)

func loadavg() -> String { (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(separator: " ") ?? "?" }
func wall() -> Double { Double(DispatchTime.now().uptimeNanoseconds) / 1e9 }
func cpu() -> Double { var ts = timespec(); clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9 }
func peakRSSMiB() -> Double { var u = rusage(); getrusage(RUSAGE_SELF.rawValue, &u); return Double(u.ru_maxrss) / 1024 }
func f(_ x: Double, _ d: Int = 2) -> String { String(format: "%.\(d)f", x) }

print("loadavg at start: \(loadavg())   cores: \(coreCount)")
let t0 = wall()
// What QLoRA's ModelBundle(path:quantization: .nf4) does for a GGUF, without the tokenizer (so this
// tool depends only on Llama): GGUF → LlamaConfig → LlamaWeights quantized NF4 + double quant, blocksize 64.
let gguf = try GGUFFile(path: path)
let cfg = try LlamaConfig(ggufMetadata: gguf.metadata, file: path)
let weights = try LlamaWeights(config: cfg, source: gguf, file: path, policy: .nf4)
print("loaded \(path) as \(QuantizationPolicy.nf4) in \(f(wall() - t0)) s; RSS \(f(peakRSSMiB(), 0)) MiB")
let model = try LoRAModel(weights: weights, batchSize: B, seqLen: T, rank: R, alpha: 2 * Float(R),
                          targets: LoRATarget.allCases, dropout: 0, seed: 1, gradientCheckpointing: ckpt)
// Non-zero B so every gradient flows (PEFT starts B at 0; the FLOPs are the same either way).
var rng = LoRARandom(seed: 5)
for (i, p) in model.parameters.enumerated() where i % 2 == 1 { for j in 0..<p.count { p[j] = rng.uniform(-0.01, 0.01) } }

// Tokens: random ids; labels: prompt positions (first promptFrac of the real length) −100, padding −100.
var ids = [Int](repeating: 0, count: B * T), labels = [Int](repeating: -100, count: B * T)
let promptLen = Int(Double(length) * promptFrac)
for b in 0..<B {
    for t in 0..<T {
        ids[b * T + t] = t < length ? Int(rng.next() % UInt64(cfg.vocabularySize)) : 2
        if t >= promptLen && t < length { labels[b * T + t] = ids[b * T + t] }
    }
}
let prof = LoRAStepProfile()
model.profile = prof
print("B=\(B) T=\(T) r=\(R) ckpt=\(ckpt ? "on" : "off") real length \(length) prompt \(promptLen)/row; "
      + "trainable \(model.trainableParameterCount)")

struct Sample { var wall: Double; var cpu: Double; var split: [[Double]]; var cpuSplit: [[Double]]; var loss: Double; var count: Int }
var samples: [Sample] = []
for s in 0..<(warmup + steps) {
    prof.reset()
    model.zeroGradients()
    let w0 = wall(), c0 = cpu()
    let r = try model.forwardBackward(inputIds: ids, labels: labels, lossScale: 1)
    let w = wall() - w0, c = cpu() - c0
    let split = LoRAStepProfile.Phase.allCases.map { p in LoRAStepProfile.Kind.allCases.map { prof.seconds(p, $0) } }
    let cpuSplit = LoRAStepProfile.Phase.allCases.map { p in LoRAStepProfile.Kind.allCases.map { prof.cpuSeconds(p, $0) } }
    print("  step \(s)\(s < warmup ? " (warmup)" : ""): \(f(w, 3)) s wall, \(f(c, 3)) s cpu, loss \(f(r.lossSum / Double(r.tokenCount), 4)) over \(r.tokenCount), load \(loadavg())")
    if s >= warmup { samples.append(Sample(wall: w, cpu: c, split: split, cpuSplit: cpuSplit, loss: r.lossSum, count: r.tokenCount)) }
}
let sorted = samples.sorted { $0.wall < $1.wall }
let med = sorted[sorted.count / 2]
let tokens = Double(B * length)
// Useful FLOPs: linears 2·params·tokens forward and again for dX, again for recompute; LM head at
// the positions with a trained target (forward + dX); LoRA 2·r·(in+out) per token forward, ×2 backward
// (+ recompute); attention causal: QKᵀ and PV over the causal half, 2·T²·D each per head (fwd),
// backward 4 such products (+ the recomputed QKᵀ), + recompute fwd.
let C = cfg.hiddenSize, I = cfg.intermediateSize, L = cfg.layerCount, V = cfg.vocabularySize
let linParams = Double(C * cfg.qDim * 2 + C * cfg.kvDim * 2 + 3 * C * I) * Double(L)
let loraParams = Double(R * ((C + cfg.qDim) * 2 + (C + cfg.kvDim) * 2 + 3 * (C + I))) * Double(L)
let trained = Double(med.count)
let attFwd = Double(B) * Double(cfg.headCount) * 2 * 2 * Double(length) * Double(length) / 2 * Double(cfg.headDim) * Double(L)
let fwd = 2 * linParams * tokens + 2 * loraParams * tokens + attFwd
let gflop = (fwd + (2 * linParams * tokens + 4 * loraParams * tokens + 2.5 * attFwd) + (ckpt ? fwd : 0)
             + 4 * Double(C * V) * trained) / 1e9
print("median step: \(f(med.wall, 3)) s wall (\(f(med.cpu, 3)) s cpu, \(f(med.cpu / med.wall, 2)) cores) → "
      + "\(f(tokens / med.wall, 1)) tokens/s (real tokens \(Int(tokens))); useful \(f(gflop, 1)) GFLOP → "
      + "\(f(gflop / med.wall, 1)) GFLOP/s (\(f(100 * gflop / med.wall / 229, 0))% of 229)")
for (title, table, total) in [("wall", med.split, med.wall), ("process CPU", med.cpuSplit, med.cpu)] {
    print("\(title) split of the median step (s):")
    let kinds = LoRAStepProfile.Kind.allCases
    print("  phase       " + kinds.map { "\($0)".padding(toLength: 12, withPad: " ", startingAt: 0) }.joined() + "total")
    for p in LoRAStepProfile.Phase.allCases {
        let row = table[p.rawValue]
        print("  " + "\(p)".padding(toLength: 12, withPad: " ", startingAt: 0)
              + row.map { f($0, 3).padding(toLength: 12, withPad: " ", startingAt: 0) }.joined() + f(row.reduce(0, +), 3))
    }
    let byKind = kinds.map { k in table.reduce(0) { $0 + $1[k.rawValue] } }
    print("  " + "all".padding(toLength: 12, withPad: " ", startingAt: 0)
          + byKind.map { f($0, 3).padding(toLength: 12, withPad: " ", startingAt: 0) }.joined() + f(byKind.reduce(0, +), 3))
    print("  unaccounted \(f(total - byKind.reduce(0, +), 3))")
}
// GFLOP/s per op kind and phase: the useful FLOPs of each kind over the wall time it took
// (GEMMs: linear = frozen base products, head = LM head; lora and attention are small GEMMs).
// Layer 0 computes no dX for q/k/v (its input gradient would only reach the frozen embedding).
let qkvParams = Double(C * cfg.qDim + 2 * C * cfg.kvDim)
let linBackward = 2 * (linParams - qkvParams) * tokens
let flops: [LoRAStepProfile.Kind: [Double]] = [   // [forward, recompute, backward]
    .linear: [2 * linParams * tokens, ckpt ? 2 * linParams * tokens : 0, linBackward],
    .lora: [2 * loraParams * tokens, ckpt ? 2 * loraParams * tokens : 0, 4 * loraParams * tokens],
    .attention: [attFwd, ckpt ? attFwd : 0, 2.5 * attFwd],
    .head: [2 * Double(C * V) * trained, 0, 2 * Double(C * V) * trained],
]
print("GFLOP/s per op kind (wall time of the median step; fp32 FMA peak 229 GFLOP/s on 2 cores):")
print("  kind        phase       GFLOP       seconds     GFLOP/s     % of peak")
for k in [LoRAStepProfile.Kind.linear, .head, .lora, .attention] {
    var phases = LoRAStepProfile.Phase.allCases.map { ($0, flops[k]![$0.rawValue], med.split[$0.rawValue][k.rawValue]) }
    if k == .head {   // the fused LM head + cross-entropy runs forward and dX in one call, booked to forward
        phases = [(.forward, flops[k]![0] + flops[k]![2], med.split[0][k.rawValue] + med.split[2][k.rawValue])]
    }
    phases.append((.forward, phases.reduce(0) { $0 + $1.1 }, phases.reduce(0) { $0 + $1.2 }))
    for (i, (p, g, t)) in phases.enumerated() where g > 0 && t > 0 {
        let name = i == phases.count - 1 ? "all" : (k == .head ? "fwd+bwd" : "\(p)")
        print("  " + ["\(k)", name, f(g / 1e9, 1), f(t, 3), f(g / 1e9 / t, 1), f(100 * g / 1e9 / t / 229, 0)]
            .map { $0.padding(toLength: 12, withPad: " ", startingAt: 0) }.joined())
    }
}
print("peak RSS \(f(peakRSSMiB(), 0)) MiB; loadavg at end: \(loadavg())")
