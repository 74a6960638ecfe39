import Kernels
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One buffer `LoRAModel.init` allocated: its size as the allocator reports it, and how much of it
/// a training step (`forwardBackward`) touches.
public struct LoRAModelBuffer: Sendable, Equatable {
    public var name: String
    /// Bytes the allocator holds for it (`malloc_usable_size` / `malloc_size`; the requested size
    /// where neither is available).
    public var allocatedBytes: Int
    /// Bytes of it a training step writes or reads (resident once the step has run): all of it,
    /// except the logits (only `LoRAModel.headChunk` rows) and the NF4 workspace (the tile rows of a
    /// Q8_0 LM head that fit; none for a float32 head).
    public var trainingBytes: Int
}

extension LoRAModel {
    /// Rows of logits one training step materializes at a time (the fused LM head).
    public static var trainingLogitRows: Int { headChunk }

    /// Every buffer `init` allocated for activations, gradients and scratch, and the LoRA
    /// parameters and gradients, with the sizes the allocator reports (for memory plans and
    /// their tests). The base weights are not included.
    public var memoryBuffers: [LoRAModelBuffer] {
        let cfg = config, V = cfg.vocabularySize
        var out: [LoRAModelBuffer] = []
        func add(_ name: String, _ p: UnsafeMutableRawPointer, requested: Int, touched: Int? = nil) {
            let size = Self.allocatedSize(p) ?? requested
            out.append(LoRAModelBuffer(name: name, allocatedBytes: size, trainingBytes: min(size, touched ?? size)))
        }
        func f(_ name: String, _ p: UnsafeMutablePointer<Float>, _ count: Int) {
            add(name, UnsafeMutableRawPointer(p), requested: 4 * count)
        }
        let N = batchSize * seqLen, C = cfg.hiddenSize, I = cfg.intermediateSize
        let qd = cfg.qDim, kvd = cfg.kvDim, half = cfg.headDim / 2, T = seqLen
        let maxIn = max(C, I, qd)
        for (i, a) in acts.enumerated() {
            let s = "activations[\(i)]."
            f(s + "xn1", a.xn1, N * C); f(s + "q", a.q, N * qd); f(s + "k", a.k, N * kvd); f(s + "v", a.v, N * kvd)
            f(s + "att", a.att, N * qd); f(s + "x2", a.x2, N * C); f(s + "xn2", a.xn2, N * C)
            f(s + "gate", a.gate, N * I); f(s + "up", a.up, N * I); f(s + "act", a.act, N * I); f(s + "h", a.h, 7 * N * rank)
        }
        f("layerInputs", layerInputs, (cfg.layerCount + 1) * N * C)
        f("xf", xf, N * C); f("losses", losses, N); f("headIn", headIn, N * C)
        add("logits", UnsafeMutableRawPointer(logits), requested: 4 * N * V, touched: 4 * min(N, Self.headChunk) * V)
        f("ropeCos", ropeCos, T * half); f("ropeSin", ropeSin, T * half)
        f("tokCos", tokCos, N * half); f("tokSin", tokSin, N * half)
        f("tmp", tmp, N * C); f("dx", dx, N * C); f("dxn", dxn, N * C)
        f("dq", dq, N * qd); f("dk", dk, N * kvd); f("dv", dv, N * kvd); f("datt", datt, N * qd)
        f("dgate", dgate, N * I); f("dup", dup, N * I); f("dact", dact, N * I)
        f("attScratch", attScratch, max(attentionTrainForwardScratchCount(tokens: T, heads: cfg.headCount),
                                        attentionBackwardScratchCount(tokens: T, heads: cfg.headCount, kvHeads: cfg.kvHeadCount,
                                                                      headDim: cfg.headDim)))
        f("loraScratch", loraScratch, Self.loraScratchCount(rows: N, config: cfg, rank: rank))
        f("maskedInput", maskedInput, N * maxIn)
        add("token arrays", UnsafeMutableRawPointer(targetsBuf), requested: 5 * N * MemoryLayout<Int>.stride)
        add("dropout mask", UnsafeMutableRawPointer(mask), requested: N * maxIn)
        // The workspace's buffer is internal to Quantization: its capacity is public. Only a Q8_0 LM
        // head dequantizes tiles into it (capacity / cols whole rows at a time); the 4-bit weights go
        // through NF4Gemm, whose packing buffers a step touches whole.
        var touched = 0
        if case let .q8_0(head) = weights.lmHead {
            touched = max(1, min(head.rows, workspace.capacity / max(head.cols, 1))) * head.cols
        }
        out.append(LoRAModelBuffer(name: "NF4 workspace", allocatedBytes: 4 * workspace.capacity,
                                   trainingBytes: 4 * min(touched, workspace.capacity)))
        let quantized = weights.layers.contains { $0.linearWeights.contains { $0.quantizedTensor != nil } }
        out.append(LoRAModelBuffer(name: "NF4Gemm packing", allocatedBytes: workspace.gemm.bytes,
                                   trainingBytes: quantized ? workspace.gemm.bytes : 0))
        add("LoRA parameters", UnsafeMutableRawPointer(parameterStorage.baseAddress!), requested: 4 * parameterStorage.count)
        add("LoRA gradients", UnsafeMutableRawPointer(gradientStorage.baseAddress!), requested: 4 * gradientStorage.count)
        return out
    }

    /// The allocator's size of the block at `p` (nil where the platform does not say).
    static func allocatedSize(_ p: UnsafeMutableRawPointer) -> Int? {
        #if canImport(Glibc)
        typealias UsableSize = @convention(c) (UnsafeMutableRawPointer?) -> Int
        guard let sym = dlsym(nil, "malloc_usable_size") else { return nil }   // nil = RTLD_DEFAULT
        return unsafeBitCast(sym, to: UsableSize.self)(p)
        #elseif canImport(Darwin)
        return malloc_size(p)
        #else
        return nil
        #endif
    }
}
