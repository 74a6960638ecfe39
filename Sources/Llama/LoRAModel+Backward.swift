import Dispatch
import Kernels
import Quantization

// Forward and backward of `LoRAModel` (see LoRAModel.swift for the conventions).
extension LoRAModel {
    /// Forward only (no backward, no dropout masks advance): returns the summed loss and the
    /// number of trained tokens; the logits stay in `lastLogits` ([batchSize, rowLength, V]). Dropout
    /// is applied with the masks of the current `step` when `training` is true, none otherwise.
    /// `rowLength` (default seqLen): compute only positions 0 ..< rowLength of each row (see
    /// `forwardBackward`).
    public func forward(inputIds: [Int], labels: [Int], segmentStarts: [Int]? = nil,
                        training: Bool = false, rowLength: Int? = nil) throws -> (lossSum: Double, tokenCount: Int) {
        try prepare(inputIds: inputIds, labels: labels, segmentStarts: segmentStarts,
                    rowLength: rowLength ?? seqLen)
        return try runForward(dropoutOn: training && dropout > 0, fusedHeadScale: nil)
    }

    /// One training step's forward and backward. Gradients of every LoRA A and B accumulate (`+=`)
    /// the gradient of lossScale · lossSum (pass lossScale = 1 / tokens of the whole accumulated batch
    /// for the mean loss). Advances `step` (the dropout masks) by one.
    ///
    /// Only positions 0 ..< rowLength of each row are computed (the rest must predict nothing: a
    /// trained label beyond throws `LlamaError.invalidInput`). By causality the loss and gradients do
    /// not depend on the positions dropped. nil (the default) = the smallest length that holds every
    /// trained target, rounded up to a multiple of 8 (padding costs nothing). The LM head and the
    /// cross-entropy run only on positions with a trained target, forward and backward fused, a few
    /// rows at a time (the full logits are never materialized; `lastLogits` is not updated).
    public func forwardBackward(inputIds: [Int], labels: [Int], segmentStarts: [Int]? = nil,
                                lossScale: Float, rowLength: Int? = nil) throws -> (lossSum: Double, tokenCount: Int) {
        try prepare(inputIds: inputIds, labels: labels, segmentStarts: segmentStarts, rowLength: rowLength)
        let drop = dropout > 0
        let result = try runForward(dropoutOn: drop, fusedHeadScale: lossScale)
        runBackward(dropoutOn: drop)
        step &+= 1
        return result
    }

    /// The row length `forwardBackward(…, rowLength: nil)` uses for these labels: the smallest
    /// multiple of 8 (at most seqLen) such that every trained target is predicted by a position
    /// inside it (labels as for `forwardBackward`, unshifted; a label at t is predicted by t − 1).
    public func inferredRowLength(labels: [Int], segmentStarts: [Int]? = nil) -> Int {
        let T = seqLen
        var need = 1
        for i in 0..<min(labels.count, batchSize * T) where labels[i] != -100 {
            let t = i % T
            if t > 0 && (segmentStarts.map { $0[i] == $0[i - 1] } ?? true) { need = max(need, t) }
        }
        return min(T, (need + 7) / 8 * 8)
    }

    // MARK: - Setup

    /// Checks the inputs, then fills the row-compacted buffers ([batchSize, rowLength]): ids, segment
    /// starts, shifted targets, RoPE tables. rowLength nil = inferred from the targets.
    private func prepare(inputIds: [Int], labels: [Int], segmentStarts: [Int]?, rowLength requested: Int?) throws {
        let T = seqLen, V = config.vocabularySize, half = config.headDim / 2
        let full = batchSize * seqLen
        guard inputIds.count == full else {
            throw LlamaError.invalidInput(field: "inputIds.count", value: "\(inputIds.count)", expected: "\(full) (batch · seqLen)")
        }
        guard labels.count == full else {
            throw LlamaError.invalidInput(field: "labels.count", value: "\(labels.count)", expected: "\(full) (batch · seqLen)")
        }
        if let s = segmentStarts, s.count != full {
            throw LlamaError.invalidInput(field: "segmentStarts.count", value: "\(s.count)", expected: "\(full) (batch · seqLen)")
        }
        if let r = requested, r < 1 || r > T {
            throw LlamaError.invalidInput(field: "rowLength", value: "\(r)", expected: "1 ... seqLen \(T)")
        }
        for i in 0..<full {
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
            idsBuf[i] = id
        }
        // shifted targets: position t predicts labels[t+1] within the same row and segment
        var need = 1
        for i in 0..<full {
            let t = i % T
            if t + 1 < T && segBuf[i + 1] == segBuf[i] { targetsBuf[i] = labels[i + 1] } else { targetsBuf[i] = -100 }
            if targetsBuf[i] != -100 { need = max(need, t + 1) }
        }
        let R = requested ?? min(T, (need + 7) / 8 * 8)
        if R < need {
            var i = 0
            while i < full && !(i % T >= R && targetsBuf[i] != -100) { i += 1 }
            throw LlamaError.invalidInput(field: "labels[\(i + 1)]", value: "\(labels[i + 1])",
                                          expected: "−100 (position \(i % T + 1) is beyond rowLength \(R))")
        }
        // compact rows to R positions (in place: reads never trail writes)
        if R < T {
            for b in 1..<max(1, batchSize) {
                for t in 0..<R {
                    segBuf[b * R + t] = segBuf[b * T + t]
                    idsBuf[b * R + t] = idsBuf[b * T + t]
                    targetsBuf[b * R + t] = targetsBuf[b * T + t]
                }
            }
        }
        for b in 0..<batchSize {
            for t in 0..<R {
                let i = b * R + t, p = t - segBuf[i]
                (tokCos + i * half).update(from: ropeCos + p * half, count: half)
                (tokSin + i * half).update(from: ropeSin + p * half, count: half)
            }
        }
        rowLength = R
    }

    // MARK: - Helpers

    /// Runs body, adding its wall time to `profile` (if any) under the current phase and `kind`.
    @inline(__always)
    private func timed(_ kind: LoRAStepProfile.Kind, _ body: () throws -> Void) rethrows {
        guard let p = profile else { try body(); return }
        let t0 = DispatchTime.now().uptimeNanoseconds, c0 = LoRAStepProfile.cpuNanoseconds()
        try body()
        p.add(phase, kind, DispatchTime.now().uptimeNanoseconds &- t0, LoRAStepProfile.cpuNanoseconds() &- c0)
    }

    private func maskSeed(layer: Int, target: LoRATarget) -> UInt64 {
        var z = dropoutSeed &+ step &* 0x9E3779B97F4A7C15
        z ^= UInt64(layer &* 8 &+ target.index &+ 1) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 29)) &* 0x94D049BB133111EB
        return z ^ (z >> 32)
    }

    /// mask [N, in] for (step, layer, target): element (b, t, c) gets the keep bit of index
    /// (b·seqLen + t)·in + c, so a shorter rowLength sees the same masks as the full rows.
    private func fillDropoutMask(layer l: Int, target: LoRATarget, inChannels C: Int) {
        let seed = maskSeed(layer: l, target: target), R = rowLength
        if R == seqLen { loraDropoutMask(mask: mask, count: N * C, p: dropout, seed: seed); return }
        for b in 0..<batchSize {
            let skip = UInt64(b * seqLen * C) &* 0x9E3779B97F4A7C15       // loraDropoutMask's index stride
            loraDropoutMask(mask: mask + b * R * C, count: R * C, p: dropout, seed: seed &+ skip)
        }
    }

    /// out[N, out] = W inp (+bias) + LoRA.
    private func linear(_ w: LinearWeight, bias: UnsafePointer<Float>?, target: LoRATarget, layer l: Int,
                        out: UnsafeMutablePointer<Float>, inp: UnsafeMutablePointer<Float>,
                        h: UnsafeMutablePointer<Float>, dropoutOn: Bool) {
        timed(.linear) { w.forward(out: out, inp: inp, bias: bias, rows: N, workspace: workspace) }
        guard let ad = adapters[l][target.index] else { return }
        timed(.lora) {
            var m: UnsafePointer<UInt8>? = nil
            if dropoutOn { fillDropoutMask(layer: l, target: target, inChannels: ad.inp); m = UnsafePointer(mask) }
            loraForward(out: out, h: h + target.index * N * rank, maskedInput: maskedInput, inp: inp, mask: m,
                        dropout: dropout, a: ad.a, b: ad.b, scale: scale, rows: N, inChannels: ad.inp,
                        outChannels: ad.out, rank: rank)
        }
    }

    /// dInp += dOut · W (+ LoRA's dInp), dA/dB += LoRA gradients. dInp nil: no input gradient (layer 0's
    /// q, k, v: the embedding is frozen).
    private func linearBackward(_ w: LinearWeight, target: LoRATarget, layer l: Int, dInp: UnsafeMutablePointer<Float>?,
                                dOut: UnsafeMutablePointer<Float>, inp: UnsafeMutablePointer<Float>,
                                h: UnsafeMutablePointer<Float>, dropoutOn: Bool) {
        if let dInp { baseBackward(w, dInp: dInp, dOut: dOut) }
        guard let ad = adapters[l][target.index] else { return }
        timed(.lora) {
            var m: UnsafePointer<UInt8>? = nil
            if dropoutOn { fillDropoutMask(layer: l, target: target, inChannels: ad.inp); m = UnsafePointer(mask) }
            loraBackward(dInp: dInp, dA: ad.da, dB: ad.db, dOut: dOut, inp: inp, mask: m, dropout: dropout,
                         h: h + target.index * N * rank, a: ad.a, b: ad.b, scale: scale, scratch: loraScratch,
                         rows: N, inChannels: ad.inp, outChannels: ad.out, rank: rank)
        }
    }

    /// dInp += dOut · W (the frozen base's input gradient).
    private func baseBackward(_ w: LinearWeight, dInp: UnsafeMutablePointer<Float>, dOut: UnsafeMutablePointer<Float>) {
        timed(.linear) {
            switch w {
            case let .dense(p, r, c):
                matmulBackwardInput(dInp: dInp, dOut: dOut, weight: p, rows: N, inChannels: c, outChannels: r)
            case let .quantized(q):
                NF4Matmul.backwardInput(dInp: dInp, dOut: dOut, weight: q, rows: N, workspace: workspace, accumulate: true)
            }
        }
    }

    /// The adapters of `targets` (consecutive, reading the same input) as one shared group, or nil when
    /// each must run on its own: dropout on (every adapter has its own mask), or a member not adapted.
    private func sharedParts(_ targets: [LoRATarget], layer l: Int, dropoutOn: Bool) -> [LoRASharedPart]? {
        guard !dropoutOn else { return nil }
        var parts: [LoRASharedPart] = []
        for t in targets {
            guard let ad = adapters[l][t.index] else { return nil }
            parts.append(LoRASharedPart(a: ad.a, b: ad.b, dA: ad.da, dB: ad.db, outChannels: ad.out))
        }
        return parts
    }

    /// `linear` for weights that read the same input (q|k|v, gate|up). As a group (see `sharedParts`)
    /// their LoRA down-projections are one product, and h holds [N, g·rank] from the first member's
    /// slot on (the members' slots are consecutive).
    private func linearShared(_ members: [(w: LinearWeight, bias: UnsafeMutablePointer<Float>?, target: LoRATarget,
                                           out: UnsafeMutablePointer<Float>)],
                              layer l: Int, inp: UnsafeMutablePointer<Float>, h: UnsafeMutablePointer<Float>,
                              dropoutOn: Bool) {
        guard let parts = sharedParts(members.map(\.target), layer: l, dropoutOn: dropoutOn) else {
            for m in members {
                linear(m.w, bias: m.bias, target: m.target, layer: l, out: m.out, inp: inp, h: h, dropoutOn: dropoutOn)
            }
            return
        }
        for m in members {
            timed(.linear) { m.w.forward(out: m.out, inp: inp, bias: m.bias, rows: N, workspace: workspace) }
        }
        timed(.lora) {
            loraForwardShared(outs: members.map(\.out), h: h + members[0].target.index * N * rank, inp: inp, parts: parts,
                              scale: scale, scratch: loraScratch, rows: N, inChannels: members[0].target.shape(config).inp,
                              rank: rank)
        }
    }

    /// `linearBackward` for a group of `linearShared`.
    private func linearBackwardShared(_ members: [(w: LinearWeight, target: LoRATarget, dOut: UnsafeMutablePointer<Float>)],
                                      layer l: Int, dInp: UnsafeMutablePointer<Float>?, inp: UnsafeMutablePointer<Float>,
                                      h: UnsafeMutablePointer<Float>, dropoutOn: Bool) {
        guard let parts = sharedParts(members.map(\.target), layer: l, dropoutOn: dropoutOn) else {
            for m in members {
                linearBackward(m.w, target: m.target, layer: l, dInp: dInp, dOut: m.dOut, inp: inp, h: h, dropoutOn: dropoutOn)
            }
            return
        }
        if let dInp { for m in members { baseBackward(m.w, dInp: dInp, dOut: m.dOut) } }
        timed(.lora) {
            loraBackwardShared(dInp: dInp, dOuts: members.map { UnsafePointer($0.dOut) }, inp: inp,
                               h: h + members[0].target.index * N * rank, parts: parts, scale: scale, scratch: loraScratch,
                               rows: N, inChannels: members[0].target.shape(config).inp, rank: rank)
        }
    }

    private func activations(_ l: Int) -> Activations { gradientCheckpointing ? acts[0] : acts[l] }

    // MARK: - Forward

    private func layerForward(_ l: Int, dropoutOn: Bool) {
        let cfg = config, w = weights.layers[l], a = activations(l)
        let C = cfg.hiddenSize, I = cfg.intermediateSize, D = cfg.headDim, T = rowLength
        let qd = cfg.qDim, kvd = cfg.kvDim
        let x = layerInputs + l * N * C, xOut = layerInputs + (l + 1) * N * C
        timed(.elementwise) {
            rmsnormForward(out: a.xn1, inp: x, weight: w.attentionNorm, rows: N, channels: C, epsilon: cfg.rmsNormEpsilon)
        }
        linearShared([(w.wq, w.bq, .q, a.q), (w.wk, w.bk, .k, a.k), (w.wv, w.bv, .v, a.v)], layer: l, inp: a.xn1,
                     h: a.h, dropoutOn: dropoutOn)
        timed(.elementwise) {
            ropeForward(x: a.q, cos: tokCos, sin: tokSin, rows: N, heads: cfg.headCount, headDim: D, rowStride: qd)
            ropeForward(x: a.k, cos: tokCos, sin: tokSin, rows: N, heads: cfg.kvHeadCount, headDim: D, rowStride: kvd)
        }
        timed(.attention) {
            attentionTrainForward(out: a.att, q: a.q, k: a.k, v: a.v, segmentStart: UnsafePointer(segBuf),
                                  scratch: attScratch, tokens: T, heads: cfg.headCount, kvHeads: cfg.kvHeadCount,
                                  headDim: D, batch: batchSize)
        }
        linear(w.wo, bias: w.bo, target: .o, layer: l, out: tmp, inp: a.att, h: a.h, dropoutOn: dropoutOn)
        timed(.elementwise) {
            residualForward(out: a.x2, a: x, b: tmp, count: N * C)
            rmsnormForward(out: a.xn2, inp: a.x2, weight: w.mlpNorm, rows: N, channels: C, epsilon: cfg.rmsNormEpsilon)
        }
        linearShared([(w.wGate, w.bGate, .gate, a.gate), (w.wUp, w.bUp, .up, a.up)], layer: l, inp: a.xn2, h: a.h,
                     dropoutOn: dropoutOn)
        timed(.elementwise) { siluMulForward(out: a.act, gate: a.gate, up: a.up, count: N * I) }
        linear(w.wDown, bias: w.bDown, target: .down, layer: l, out: tmp, inp: a.act, h: a.h, dropoutOn: dropoutOn)
        timed(.elementwise) { residualForward(out: xOut, a: a.x2, b: tmp, count: N * C) }
    }

    /// The layers, then the LM head and cross-entropy: materialized logits for all positions
    /// (`fusedHeadScale` nil, `forward`), or fused forward + backward on the trained positions only,
    /// leaving dx = dLoss/d(final layer output) (`forwardBackward`).
    private func runForward(dropoutOn: Bool, fusedHeadScale: Float?) throws -> (lossSum: Double, tokenCount: Int) {
        let cfg = config, C = cfg.hiddenSize, L = cfg.layerCount
        phase = .forward
        timed(.elementwise) {
            weights.embedding.lookup(out: layerInputs, tokens: UnsafeBufferPointer(start: idsBuf, count: N))
        }
        for l in 0..<L { layerForward(l, dropoutOn: dropoutOn) }
        if let s = fusedHeadScale { return try fusedHead(lossScale: s) }
        timed(.elementwise) {
            rmsnormForward(out: xf, inp: layerInputs + L * N * C, weight: weights.finalNorm, rows: N, channels: C,
                           epsilon: cfg.rmsNormEpsilon)
        }
        var r: (sum: Double, count: Int) = (0, 0)
        try timed(.head) {
            weights.lmHead.forward(out: logits, inp: xf, rows: N, workspace: workspace)
            r = try crossEntropyForward(losses: losses, logits: logits, targets: targetsBuf, rows: N,
                                        vocab: cfg.vocabularySize)
        }
        return (r.sum, r.count)
    }

    /// Final norm, LM head and cross-entropy, forward and backward, on the M rows with a trained
    /// target only, `headChunk` rows of logits at a time; leaves dx [N, C] = dLoss/d(final layer output)
    /// (zero on the other rows). Counted as forward time.
    private func fusedHead(lossScale: Float) throws -> (lossSum: Double, tokenCount: Int) {
        let cfg = config, C = cfg.hiddenSize, L = cfg.layerCount, V = cfg.vocabularySize, eps = cfg.rmsNormEpsilon
        let xL = layerInputs + L * N * C
        var M = 0
        var result: (sum: Double, count: Int) = (0, 0)
        timed(.elementwise) {
            for i in 0..<N where targetsBuf[i] != -100 {
                headRows[M] = i; headTargets[M] = targetsBuf[i]
                (headIn + M * C).update(from: xL + i * C, count: C)
                M += 1
            }
            rmsnormForward(out: xf, inp: headIn, weight: weights.finalNorm, rows: M, channels: C, epsilon: eps)
        }
        try timed(.head) {
            let head = weights.lmHead
            var c0 = 0
            while c0 < M {
                let m = min(Self.headChunk, M - c0)
                // logits = xf · Wᵀ; dxn = dLogits · W (Q8_0: tiles of W's rows dequantized per product)
                switch head {
                case let .dense(w, _, _): BLAS.sgemm(transB: true, m: m, n: V, k: C, a: xf + c0 * C, b: w, c: logits)
                case let .q8_0(q): q.forward(out: logits, inp: xf + c0 * C, rows: m, workspace: workspace)
                }
                let r = try crossEntropyForwardBackward(logits: logits, losses: losses + c0, targets: headTargets + c0,
                                                        scale: lossScale, rows: m, vocab: V)
                result.sum += r.sum; result.count += r.count
                switch head {
                case let .dense(w, _, _): BLAS.sgemm(m: m, n: C, k: V, a: logits, b: w, c: dxn + c0 * C)
                case let .q8_0(q): q.backwardInput(dInp: dxn + c0 * C, dOut: logits, rows: m, workspace: workspace)
                }
                c0 += m
            }
        }
        phase = .backward
        timed(.elementwise) {
            tmp.update(repeating: 0, count: M * C)
            rmsnormBackward(dInp: tmp, dWeight: nil, dOut: dxn, inp: headIn, weight: weights.finalNorm, rows: M,
                            channels: C, epsilon: eps)
            dx.update(repeating: 0, count: N * C)
            for r in 0..<M { (dx + headRows[r] * C).update(from: tmp + r * C, count: C) }
        }
        return (result.sum, result.count)
    }

    // MARK: - Backward

    /// From dx = dLoss/d(final layer output) (left by `fusedHead`) down to layer 0.
    private func runBackward(dropoutOn: Bool) {
        phase = .backward
        for l in stride(from: config.layerCount - 1, through: 0, by: -1) {
            if gradientCheckpointing { phase = .recompute; layerForward(l, dropoutOn: dropoutOn); phase = .backward }
            layerBackward(l, dropoutOn: dropoutOn)
        }
    }

    /// On entry dx = dLoss/d(layer l's output); on exit dLoss/d(layer l's input).
    private func layerBackward(_ l: Int, dropoutOn: Bool) {
        let cfg = config, w = weights.layers[l], a = activations(l)
        let C = cfg.hiddenSize, I = cfg.intermediateSize, D = cfg.headDim, T = rowLength
        let qd = cfg.qDim, kvd = cfg.kvDim, eps = cfg.rmsNormEpsilon
        let x = layerInputs + l * N * C
        // MLP: out = x2 + down(act); dx already is d(x2) from the residual.
        timed(.elementwise) { dact.update(repeating: 0, count: N * I) }
        linearBackward(w.wDown, target: .down, layer: l, dInp: dact, dOut: dx, inp: a.act, h: a.h, dropoutOn: dropoutOn)
        timed(.elementwise) {
            dgate.update(repeating: 0, count: N * I); dup.update(repeating: 0, count: N * I)
            siluMulBackward(dGate: dgate, dUp: dup, dOut: dact, gate: a.gate, up: a.up, count: N * I)
            dxn.update(repeating: 0, count: N * C)
        }
        linearBackwardShared([(w.wGate, .gate, dgate), (w.wUp, .up, dup)], layer: l, dInp: dxn, inp: a.xn2, h: a.h,
                             dropoutOn: dropoutOn)
        timed(.elementwise) {
            rmsnormBackward(dInp: dx, dWeight: nil, dOut: dxn, inp: a.x2, weight: w.mlpNorm, rows: N, channels: C, epsilon: eps)
            // attention: x2 = x + o(att)
            datt.update(repeating: 0, count: N * qd)
        }
        linearBackward(w.wo, target: .o, layer: l, dInp: datt, dOut: dx, inp: a.att, h: a.h, dropoutOn: dropoutOn)
        timed(.attention) {
            dq.update(repeating: 0, count: N * qd); dk.update(repeating: 0, count: N * kvd); dv.update(repeating: 0, count: N * kvd)
            attentionBackward(dQ: dq, dK: dk, dV: dv, dOut: datt, q: a.q, k: a.k, v: a.v,
                              segmentStart: UnsafePointer(segBuf), scratch: attScratch, tokens: T,
                              heads: cfg.headCount, kvHeads: cfg.kvHeadCount, headDim: D, batch: batchSize)
        }
        timed(.elementwise) {
            ropeBackward(dX: dq, cos: tokCos, sin: tokSin, rows: N, heads: cfg.headCount, headDim: D, rowStride: qd)
            ropeBackward(dX: dk, cos: tokCos, sin: tokSin, rows: N, heads: cfg.kvHeadCount, headDim: D, rowStride: kvd)
            dxn.update(repeating: 0, count: N * C)
        }
        // Layer 0's input is the frozen embedding: no gradient needed below q, k, v.
        let dIn: UnsafeMutablePointer<Float>? = l == 0 ? nil : dxn
        linearBackwardShared([(w.wq, .q, dq), (w.wk, .k, dk), (w.wv, .v, dv)], layer: l, dInp: dIn, inp: a.xn1, h: a.h,
                             dropoutOn: dropoutOn)
        if l > 0 { timed(.elementwise) {
            rmsnormBackward(dInp: dx, dWeight: nil, dOut: dxn, inp: x, weight: w.attentionNorm, rows: N, channels: C, epsilon: eps)
        } }
    }
}
