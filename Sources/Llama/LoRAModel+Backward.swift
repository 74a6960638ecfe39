import Kernels
import Quantization

// Forward and backward of `LoRAModel` (see LoRAModel.swift for the conventions).
extension LoRAModel {
    /// Forward only (no backward, no dropout masks advance): returns the summed loss and the
    /// number of trained tokens; the logits stay in `lastLogits`. Dropout is applied with the masks
    /// of the current `step` when `training` is true, none otherwise.
    public func forward(inputIds: [Int], labels: [Int], segmentStarts: [Int]? = nil,
                        training: Bool = false) throws -> (lossSum: Double, tokenCount: Int) {
        try prepare(inputIds: inputIds, labels: labels, segmentStarts: segmentStarts)
        return try inputIds.withUnsafeBufferPointer { ids in
            try runForward(ids, dropoutOn: training && dropout > 0)
        }
    }

    /// One training step's forward and backward. Gradients of every LoRA A and B accumulate (`+=`)
    /// the gradient of lossScale · lossSum (pass lossScale = 1 / tokens of the whole accumulated batch
    /// for the mean loss). Advances `step` (the dropout masks) by one.
    public func forwardBackward(inputIds: [Int], labels: [Int], segmentStarts: [Int]? = nil,
                                lossScale: Float) throws -> (lossSum: Double, tokenCount: Int) {
        try prepare(inputIds: inputIds, labels: labels, segmentStarts: segmentStarts)
        let drop = dropout > 0
        let result = try inputIds.withUnsafeBufferPointer { ids in try runForward(ids, dropoutOn: drop) }
        runBackward(lossScale: lossScale, dropoutOn: drop)
        step &+= 1
        return result
    }

    // MARK: - Setup

    private func prepare(inputIds: [Int], labels: [Int], segmentStarts: [Int]?) throws {
        let T = seqLen, V = config.vocabularySize, half = config.headDim / 2
        guard inputIds.count == N else {
            throw LlamaError.invalidInput(field: "inputIds.count", value: "\(inputIds.count)", expected: "\(N) (batch · seqLen)")
        }
        guard labels.count == N else {
            throw LlamaError.invalidInput(field: "labels.count", value: "\(labels.count)", expected: "\(N) (batch · seqLen)")
        }
        if let s = segmentStarts, s.count != N {
            throw LlamaError.invalidInput(field: "segmentStarts.count", value: "\(s.count)", expected: "\(N) (batch · seqLen)")
        }
        for i in 0..<N {
            let id = inputIds[i]
            guard id >= 0 && id < V else {
                throw LlamaError.invalidInput(field: "inputIds[\(i)]", value: "\(id)", expected: "0 ..< \(V)")
            }
            let y = labels[i]
            guard y == -100 || (y >= 0 && y < V) else {
                throw LlamaError.invalidInput(field: "labels[\(i)]", value: "\(y)", expected: "−100 or 0 ..< \(V)")
            }
            let t = i % T
            let s = segmentStarts?[i] ?? 0
            guard s >= 0 && s <= t else {
                throw LlamaError.invalidInput(field: "segmentStarts[\(i)]", value: "\(s)", expected: "0 ... \(t)")
            }
            segBuf[i] = s
        }
        // shifted targets: position t predicts labels[t+1] within the same row and segment
        for i in 0..<N {
            let t = i % T
            if t + 1 < T && segBuf[i + 1] == segBuf[i] { targetsBuf[i] = labels[i + 1] } else { targetsBuf[i] = -100 }
        }
        for i in 0..<N {
            let p = i % T - segBuf[i]
            (tokCos + i * half).update(from: ropeCos + p * half, count: half)
            (tokSin + i * half).update(from: ropeSin + p * half, count: half)
        }
    }

    // MARK: - Helpers

    private func maskSeed(layer: Int, target: LoRATarget) -> UInt64 {
        var z = dropoutSeed &+ step &* 0x9E3779B97F4A7C15
        z ^= UInt64(layer &* 8 &+ target.index &+ 1) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 29)) &* 0x94D049BB133111EB
        return z ^ (z >> 32)
    }

    /// out[N, out] = W inp (+bias) + LoRA.
    private func linear(_ w: LinearWeight, bias: UnsafePointer<Float>?, target: LoRATarget, layer l: Int,
                        out: UnsafeMutablePointer<Float>, inp: UnsafeMutablePointer<Float>,
                        h: UnsafeMutablePointer<Float>, dropoutOn: Bool) {
        w.forward(out: out, inp: inp, bias: bias, rows: N, workspace: workspace)
        guard let ad = adapters[l][target.index] else { return }
        var m: UnsafePointer<UInt8>? = nil
        if dropoutOn {
            loraDropoutMask(mask: mask, count: N * ad.inp, p: dropout, seed: maskSeed(layer: l, target: target))
            m = UnsafePointer(mask)
        }
        loraForward(out: out, h: h + target.index * N * rank, maskedInput: maskedInput, inp: inp, mask: m,
                    dropout: dropout, a: ad.a, b: ad.b, scale: scale, rows: N, inChannels: ad.inp,
                    outChannels: ad.out, rank: rank)
    }

    /// dInp += dOut · W (+ LoRA's dInp), dA/dB += LoRA gradients.
    private func linearBackward(_ w: LinearWeight, target: LoRATarget, layer l: Int, dInp: UnsafeMutablePointer<Float>,
                                dOut: UnsafeMutablePointer<Float>, inp: UnsafeMutablePointer<Float>,
                                h: UnsafeMutablePointer<Float>, dropoutOn: Bool) {
        switch w {
        case let .dense(p, r, c):
            matmulBackwardInput(dInp: dInp, dOut: dOut, weight: p, rows: N, inChannels: c, outChannels: r)
        case let .quantized(q):
            BLAS.setThreads(coreCount)
            NF4Matmul.backwardInput(dInp: dInp, dOut: dOut, weight: q, rows: N, workspace: workspace, accumulate: true)
        }
        guard let ad = adapters[l][target.index] else { return }
        var m: UnsafePointer<UInt8>? = nil
        if dropoutOn {
            loraDropoutMask(mask: mask, count: N * ad.inp, p: dropout, seed: maskSeed(layer: l, target: target))
            m = UnsafePointer(mask)
        }
        loraBackward(dInp: dInp, dA: ad.da, dB: ad.db, dOut: dOut, inp: inp, mask: m, dropout: dropout,
                     h: h + target.index * N * rank, a: ad.a, b: ad.b, scale: scale, scratch: loraScratch,
                     rows: N, inChannels: ad.inp, outChannels: ad.out, rank: rank)
    }

    private func activations(_ l: Int) -> Activations { gradientCheckpointing ? acts[0] : acts[l] }

    // MARK: - Forward

    private func layerForward(_ l: Int, dropoutOn: Bool) {
        let cfg = config, w = weights.layers[l], a = activations(l)
        let C = cfg.hiddenSize, I = cfg.intermediateSize, D = cfg.headDim, T = seqLen
        let qd = cfg.qDim, kvd = cfg.kvDim
        let x = layerInputs + l * N * C, xOut = layerInputs + (l + 1) * N * C
        rmsnormForward(out: a.xn1, inp: x, weight: w.attentionNorm, rows: N, channels: C, epsilon: cfg.rmsNormEpsilon)
        linear(w.wq, bias: w.bq, target: .q, layer: l, out: a.q, inp: a.xn1, h: a.h, dropoutOn: dropoutOn)
        linear(w.wk, bias: w.bk, target: .k, layer: l, out: a.k, inp: a.xn1, h: a.h, dropoutOn: dropoutOn)
        linear(w.wv, bias: w.bv, target: .v, layer: l, out: a.v, inp: a.xn1, h: a.h, dropoutOn: dropoutOn)
        ropeForward(x: a.q, cos: tokCos, sin: tokSin, rows: N, heads: cfg.headCount, headDim: D, rowStride: qd)
        ropeForward(x: a.k, cos: tokCos, sin: tokSin, rows: N, heads: cfg.kvHeadCount, headDim: D, rowStride: kvd)
        for b in 0..<batchSize {
            attentionTrainForward(out: a.att + b * T * qd, q: a.q + b * T * qd, k: a.k + b * T * kvd,
                                  v: a.v + b * T * kvd, segmentStart: UnsafePointer(segBuf + b * T), scratch: attScratch,
                                  tokens: T, heads: cfg.headCount, kvHeads: cfg.kvHeadCount, headDim: D)
        }
        linear(w.wo, bias: w.bo, target: .o, layer: l, out: tmp, inp: a.att, h: a.h, dropoutOn: dropoutOn)
        residualForward(out: a.x2, a: x, b: tmp, count: N * C)
        rmsnormForward(out: a.xn2, inp: a.x2, weight: w.mlpNorm, rows: N, channels: C, epsilon: cfg.rmsNormEpsilon)
        linear(w.wGate, bias: w.bGate, target: .gate, layer: l, out: a.gate, inp: a.xn2, h: a.h, dropoutOn: dropoutOn)
        linear(w.wUp, bias: w.bUp, target: .up, layer: l, out: a.up, inp: a.xn2, h: a.h, dropoutOn: dropoutOn)
        siluMulForward(out: a.act, gate: a.gate, up: a.up, count: N * I)
        linear(w.wDown, bias: w.bDown, target: .down, layer: l, out: tmp, inp: a.act, h: a.h, dropoutOn: dropoutOn)
        residualForward(out: xOut, a: a.x2, b: tmp, count: N * C)
    }

    private func runForward(_ ids: UnsafeBufferPointer<Int>, dropoutOn: Bool) throws -> (lossSum: Double, tokenCount: Int) {
        let cfg = config, C = cfg.hiddenSize, L = cfg.layerCount
        embeddingForward(out: layerInputs, tokens: ids, table: weights.embedding, channels: C)
        for l in 0..<L { layerForward(l, dropoutOn: dropoutOn) }
        rmsnormForward(out: xf, inp: layerInputs + L * N * C, weight: weights.finalNorm, rows: N, channels: C,
                       epsilon: cfg.rmsNormEpsilon)
        matmulForward(out: logits, inp: xf, weight: weights.lmHead, bias: nil, rows: N, inChannels: C,
                      outChannels: cfg.vocabularySize)
        let r = try crossEntropyForward(losses: losses, logits: logits, targets: targetsBuf, rows: N,
                                        vocab: cfg.vocabularySize)
        return (r.sum, r.count)
    }

    // MARK: - Backward

    private func runBackward(lossScale: Float, dropoutOn: Bool) {
        let cfg = config, C = cfg.hiddenSize, L = cfg.layerCount, V = cfg.vocabularySize
        crossEntropyBackward(dLogits: logits, logits: logits, targets: targetsBuf, scale: lossScale, rows: N, vocab: V)
        dxn.update(repeating: 0, count: N * C)
        matmulBackwardInput(dInp: dxn, dOut: logits, weight: weights.lmHead, rows: N, inChannels: C, outChannels: V)
        dx.update(repeating: 0, count: N * C)
        rmsnormBackward(dInp: dx, dWeight: nil, dOut: dxn, inp: layerInputs + L * N * C, weight: weights.finalNorm,
                        rows: N, channels: C, epsilon: cfg.rmsNormEpsilon)
        for l in stride(from: L - 1, through: 0, by: -1) {
            if gradientCheckpointing { layerForward(l, dropoutOn: dropoutOn) }
            layerBackward(l, dropoutOn: dropoutOn)
        }
    }

    /// On entry dx = dLoss/d(layer l's output); on exit dLoss/d(layer l's input).
    private func layerBackward(_ l: Int, dropoutOn: Bool) {
        let cfg = config, w = weights.layers[l], a = activations(l)
        let C = cfg.hiddenSize, I = cfg.intermediateSize, D = cfg.headDim, T = seqLen
        let qd = cfg.qDim, kvd = cfg.kvDim, eps = cfg.rmsNormEpsilon
        let x = layerInputs + l * N * C
        // MLP: out = x2 + down(act); dx already is d(x2) from the residual.
        dact.update(repeating: 0, count: N * I)
        linearBackward(w.wDown, target: .down, layer: l, dInp: dact, dOut: dx, inp: a.act, h: a.h, dropoutOn: dropoutOn)
        dgate.update(repeating: 0, count: N * I); dup.update(repeating: 0, count: N * I)
        siluMulBackward(dGate: dgate, dUp: dup, dOut: dact, gate: a.gate, up: a.up, count: N * I)
        dxn.update(repeating: 0, count: N * C)
        linearBackward(w.wGate, target: .gate, layer: l, dInp: dxn, dOut: dgate, inp: a.xn2, h: a.h, dropoutOn: dropoutOn)
        linearBackward(w.wUp, target: .up, layer: l, dInp: dxn, dOut: dup, inp: a.xn2, h: a.h, dropoutOn: dropoutOn)
        rmsnormBackward(dInp: dx, dWeight: nil, dOut: dxn, inp: a.x2, weight: w.mlpNorm, rows: N, channels: C, epsilon: eps)
        // attention: x2 = x + o(att)
        datt.update(repeating: 0, count: N * qd)
        linearBackward(w.wo, target: .o, layer: l, dInp: datt, dOut: dx, inp: a.att, h: a.h, dropoutOn: dropoutOn)
        dq.update(repeating: 0, count: N * qd); dk.update(repeating: 0, count: N * kvd); dv.update(repeating: 0, count: N * kvd)
        for b in 0..<batchSize {
            attentionBackward(dQ: dq + b * T * qd, dK: dk + b * T * kvd, dV: dv + b * T * kvd, dOut: datt + b * T * qd,
                              q: a.q + b * T * qd, k: a.k + b * T * kvd, v: a.v + b * T * kvd,
                              segmentStart: UnsafePointer(segBuf + b * T), scratch: attScratch,
                              tokens: T, heads: cfg.headCount, kvHeads: cfg.kvHeadCount, headDim: D)
        }
        ropeBackward(dX: dq, cos: tokCos, sin: tokSin, rows: N, heads: cfg.headCount, headDim: D, rowStride: qd)
        ropeBackward(dX: dk, cos: tokCos, sin: tokSin, rows: N, heads: cfg.kvHeadCount, headDim: D, rowStride: kvd)
        dxn.update(repeating: 0, count: N * C)
        linearBackward(w.wq, target: .q, layer: l, dInp: dxn, dOut: dq, inp: a.xn1, h: a.h, dropoutOn: dropoutOn)
        linearBackward(w.wk, target: .k, layer: l, dInp: dxn, dOut: dk, inp: a.xn1, h: a.h, dropoutOn: dropoutOn)
        linearBackward(w.wv, target: .v, layer: l, dInp: dxn, dOut: dv, inp: a.xn1, h: a.h, dropoutOn: dropoutOn)
        rmsnormBackward(dInp: dx, dWeight: nil, dOut: dxn, inp: x, weight: w.attentionNorm, rows: N, channels: C, epsilon: eps)
    }
}
