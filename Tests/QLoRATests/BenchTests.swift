// Benchmarks, synthetic NF4 models and the memory plan. No fixtures: the synthetic models are built
// in the test; the one real-model test uses Fixtures.smolLM2GGUF (scripts/fetch_model.sh).
import Foundation
import Testing
import _TestSupport
@testable import QLoRA

@Suite struct BenchTests {
    static func tinyConfig() throws -> LlamaConfig {
        try LlamaConfig(hiddenSize: 64, intermediateSize: 160, layerCount: 2, headCount: 4, kvHeadCount: 2,
                        vocabularySize: 97, maxPositionEmbeddings: 128)
    }

    @Test func publishedShapes() {
        let c7 = SyntheticModelShape.llama7b.config, c13 = SyntheticModelShape.llama13b.config
        let c33 = SyntheticModelShape.llama33b.config
        let s7: [Int] = [c7.hiddenSize, c7.intermediateSize, c7.layerCount, c7.headCount, c7.vocabularySize]
        let s13: [Int] = [c13.hiddenSize, c13.intermediateSize, c13.layerCount, c13.headCount]
        let s33: [Int] = [c33.hiddenSize, c33.intermediateSize, c33.layerCount, c33.headCount, c33.headDim]
        #expect(s7 == [4096, 11008, 32, 32, 32000])
        #expect(s13 == [5120, 13824, 40, 40])
        #expect(s33 == [6656, 17920, 60, 52, 128])
        // 6.74 B parameters for LLaMA-7B (untied head), as published.
        let params = BaseMemoryReport.estimate(config: c7, separateLMHead: true, policy: .nf4).totalParameters
        #expect(abs(Double(params) - 6.738e9) < 0.01e9)
    }

    @Test func syntheticWeightsAreSeededNF4WithDoubleQuantization() throws {
        let cfg = try Self.tinyConfig()
        let a = try LlamaWeights.synthetic(config: cfg, seed: 7)
        let b = try LlamaWeights.synthetic(config: cfg, seed: 7)
        let c = try LlamaWeights.synthetic(config: cfg, seed: 8)
        #expect(a.memoryReport.linearFloat32.parameters == 0)
        var histogram = [Int](repeating: 0, count: 16), nibbles = 0
        for l in 0..<cfg.layerCount {
            for (i, w) in a.layers[l].linearWeights.enumerated() {
                let q = try #require(w.quantizedTensor)
                #expect(q.quantType == .nf4 && q.isDoubleQuantized && q.blocksize == 64)
                #expect(q.packed == b.layers[l].linearWeights[i].quantizedTensor!.packed)
                #expect(q.packed != c.layers[l].linearWeights[i].quantizedTensor!.packed)
                // absmax drawn in 0.05 · [0.7, 1.3], then double-quantized (8-bit dynamic map: ≤ ~2 % of the range)
                for s in q.blockScales() { #expect(s > 0.034 && s < 0.066) }
                for byte in q.packed { histogram[Int(byte >> 4)] += 1; histogram[Int(byte & 15)] += 1; nibbles += 2 }
            }
        }
        for n in histogram { #expect(abs(Double(n) / Double(nibbles) - 1.0 / 16) < 0.01) }
        #expect(Array(a.storage) == Array(b.storage))
        // A plain forward of the synthetic model gives finite logits.
        let model = try LlamaModel(config: cfg, weights: a, maxContext: 16)
        let logits = try model.forward(tokens: [1, 5, 9, 2], startPosition: 0, logits: .all)
        let finite = logits.allSatisfy { $0.isFinite }
        #expect(finite)
    }

    @Test func planBaseBytesFromShapesMatchesHeldTensors() throws {
        let cfg = try Self.tinyConfig()
        let w = try LlamaWeights.synthetic(config: cfg, seed: 1)
        #expect(MemoryPlan.baseBytes(w) == MemoryPlan.baseBytes(config: cfg, policy: .nf4, separateLMHead: true))
        // 4-bit: codes are half a byte per weight, plus scales; float32 embeddings and head.
        let linear = cfg.layerCount * MemoryPlan.linearShapes(cfg).reduce(0) { $0 + $1.0 * $1.1 }
        #expect(MemoryPlan.baseBytes(w) > linear / 2 + 2 * 4 * cfg.vocabularySize * cfg.hiddenSize)
    }

    @Test func packingIsBackToBackLikeThePeer() throws {
        let e1 = TrainingExample(inputIds: [10, 11, 12, 13, 14], labels: [-100, -100, 12, -100, -100])
        let e2 = TrainingExample(inputIds: [20, 21, 22], labels: [-100, 21, 22])
        let rows = try PackedRows.pack([e1, e2, e1], seqLen: 4)
        // stream: 10 11 12 13 | 14 20 21 22 | 10 11 12 13 | (14 dropped)
        #expect(rows.rowCount == 3 && rows.streamTokens == 13)
        #expect(rows.inputIds[1] == [14, 20, 21, 22])
        // labels run from the first labelled token to the example's end (the peer's completion + "<|im_end|>\n")
        #expect(rows.labels[0] == [-100, -100, 12, 13])
        #expect(rows.labels[1] == [14, -100, 21, 22])
        let b = rows.batch(step: 1, batchSize: 2)   // rows 2 and 0 (wraps)
        #expect(b.ids == rows.inputIds[2] + rows.inputIds[0])
        #expect(b.trained == 2 + 2)                 // positions 1…3 of each row with a label
        #expect(throws: BenchmarkError.self) { try PackedRows.pack([e1], seqLen: 1) }
    }

    @Test func firstStepMatchesInferenceForwardAndTrainingLowersLoss() throws {
        let cfg = try Self.tinyConfig()
        let w = try LlamaWeights.synthetic(config: cfg, seed: 3)
        let rows = PackedRows.synthetic(vocabularySize: cfg.vocabularySize, seqLen: 16, rows: 2, seed: 5)
        var o = TrainBenchmarkOptions()
        o.seqLen = 16; o.batchSize = 2; o.steps = 4; o.warmupSteps = 1; o.loraRank = 4; o.learningRate = 3e-2
        let r = try TrainBenchmark.run(weights: w, rows: rows, options: o)
        #expect(abs(r.lossFirst - r.referenceLoss) <= 1e-3 * max(1, r.referenceLoss))
        #expect(r.losses.count == 5 && r.stepSeconds.count == 4)
        #expect(r.lossLast < r.lossFirst)            // the same batch every step (2 rows, batch 2)
        #expect(r.tokensPerSecond > 0 && r.forwardSeconds != nil)
        #expect(r.trainedTokensFirstStep == 2 * 15)
        // Checkpointing changes memory, not the losses.
        o.gradientCheckpointing = true
        let r2 = try TrainBenchmark.run(weights: w, rows: rows, options: o)
        for (x, y) in zip(r.losses, r2.losses) { #expect(abs(x - y) < 1e-4) }
    }

    @Test func refusesALossThatDiffersFromTheReference() throws {
        #expect(throws: BenchmarkError.referenceMismatch(loss: 2.1, reference: 2.0, tolerance: 2e-3)) {
            try TrainBenchmark.checkReference(loss: 2.1, reference: 2.0, tolerance: 1e-3)
        }
        #expect(throws: BenchmarkError.self) { try TrainBenchmark.checkReference(loss: .nan, reference: 2.0, tolerance: 1e-3) }
        try TrainBenchmark.checkReference(loss: 2.0015, reference: 2.0, tolerance: 1e-3)
    }

    /// bench generate checks one int16-decoded token's logits against float32 (0 when decoding in float32).
    @Test func generateBenchmarkChecksInt16DecodeAgainstFloat32() throws {
        let cfg = try LlamaConfig(hiddenSize: 128, intermediateSize: 192, layerCount: 2, headCount: 4, kvHeadCount: 2,
                                  vocabularySize: 97, maxPositionEmbeddings: 64)
        let model = try LlamaModel(config: cfg, weights: try LlamaWeights.synthetic(config: cfg, seed: 3), maxContext: 24)
        var o = GenerateBenchmarkOptions()
        o.promptTokens = 8; o.generatedTokens = 4; o.repetitions = 1
        let fast = try GenerateBenchmark.run(model: model, options: o)
        #expect(fast.decodeLogitError > 0 && fast.decodeLogitError < 1e-3)
        #expect(model.decodeArithmetic == .int16)   // restored after the check
        model.decodeArithmetic = .float32
        #expect(try GenerateBenchmark.run(model: model, options: o).decodeLogitError == 0)
    }

    @Test func fitPicksTheLargestBatchThatFits() throws {
        let cfg = SyntheticModelShape.llama7b.config
        let base = MemoryPlan.baseBytes(config: cfg, policy: .nf4, separateLMHead: true)
        var o = MemoryPlanOptions(batchSize: 1, seqLen: 512, rank: 16)
        func peak(_ b: Int, _ ckpt: Bool) -> Int {
            o.batchSize = b; o.gradientCheckpointing = ckpt
            return MemoryPlan.estimate(config: cfg, baseBytes: base, options: o).peakBytes
        }
        // more rows or no checkpointing cost memory
        #expect(peak(2, true) > peak(1, true) && peak(1, false) > peak(1, true))
        let f1 = MemoryPlan.fit(budget: peak(3, false), config: cfg, baseBytes: base, options: o, maxBatchSize: 8)
        #expect(f1?.batchSize == 3 && f1?.gradientCheckpointing == false)
        let f2 = MemoryPlan.fit(budget: peak(1, false) - 1, config: cfg, baseBytes: base, options: o, maxBatchSize: 8)
        #expect(f2?.gradientCheckpointing == true && (f2?.batchSize ?? 0) >= 1)
        #expect(peak(f2!.batchSize, true) < peak(1, false))
        #expect(f2!.batchSize == 8 || peak(f2!.batchSize + 1, true) >= peak(1, false))
        #expect(MemoryPlan.fit(budget: peak(1, true) - 1, config: cfg, baseBytes: base, options: o, maxBatchSize: 8) == nil)
        let capped = MemoryPlan.fit(budget: 1 << 40, config: cfg, baseBytes: base, options: o, maxBatchSize: 4)
        #expect(capped?.batchSize == 4 && capped?.gradientCheckpointing == false)
    }

    /// The plan's training-model bytes are what `LoRAModel` really allocates (sizes from the
    /// allocator) and a step touches — with and without checkpointing, with more rows than the
    /// fused LM head materializes at once (the plan once counted all N · V logits: over by 14–23 %
    /// at small batches).
    @Test func planTrainingModelBytesEqualLoRAModelAllocations() throws {
        let cfg = try LlamaConfig(hiddenSize: 128, intermediateSize: 352, layerCount: 3, headCount: 4, kvHeadCount: 2,
                                  vocabularySize: 1000, maxPositionEmbeddings: 256)
        let w = try LlamaWeights.synthetic(config: cfg, seed: 4)
        for (batch, seq, ckpt, rank) in [(2, 96, true, 8), (3, 64, false, 4), (1, 32, true, 16)] {
            let model = try LoRAModel(weights: w, batchSize: batch, seqLen: seq, rank: rank, gradientCheckpointing: ckpt)
            let buffers = model.memoryBuffers
            let plan = MemoryPlan.estimate(config: cfg, baseBytes: MemoryPlan.baseBytes(w),
                                           options: MemoryPlanOptions(batchSize: batch, seqLen: seq, rank: rank,
                                                                      gradientCheckpointing: ckpt, inferenceContext: 0))
            let touched = buffers.reduce(0) { $0 + $1.trainingBytes }
            // malloc rounds each block up (≤ 16 B small, ≤ one page mmapped): that much per buffer
            let slack = buffers.count * 4112
            #expect(plan.trainingModelBytes <= touched && touched <= plan.trainingModelBytes + slack,
                    "batch \(batch) seq \(seq) ckpt \(ckpt): plan \(plan.trainingModelBytes), LoRAModel \(touched)")
            // the logits: allocated [N, V], only `trainingLogitRows` rows touched by a step
            let logits = try #require(buffers.first { $0.name == "logits" })
            let N = batch * seq, V = cfg.vocabularySize
            #expect(logits.allocatedBytes >= 4 * N * V)
            #expect(logits.trainingBytes == 4 * min(N, LoRAModel.trainingLogitRows) * V)
            // a forward-only pass (validation) touches them all: the option adds the rest
            var o = plan.options
            o.forwardOnlyLogits = true
            let withValidation = MemoryPlan.estimate(config: cfg, baseBytes: MemoryPlan.baseBytes(w), options: o)
            #expect(withValidation.peakBytes - plan.peakBytes == 4 * N * V - logits.trainingBytes)
        }
    }

    /// The time calibration measures positive, finite rates on this machine and says so.
    @Test func throughputProbeMeasuresThisMachine() throws {
        let cfg = try LlamaConfig(hiddenSize: 256, intermediateSize: 704, layerCount: 4, headCount: 4, kvHeadCount: 2,
                                  vocabularySize: 500, maxPositionEmbeddings: 256)
        let o = MemoryPlanOptions(batchSize: 2, seqLen: 64, rank: 8, gradientCheckpointing: true, inferenceContext: 0)
        let t = try MemoryPlan.Throughput.measure(config: cfg, options: o, repeats: 1)
        #expect(t.flopsPerSecond.isFinite && t.flopsPerSecond > 1e8 && t.flopsPerSecond < 1e13)
        #expect(t.dequantizedPerSecond.isFinite && t.dequantizedPerSecond > 0)
        #expect(t.source.hasPrefix("measured now"))
        let plan = MemoryPlan.estimate(config: cfg, baseBytes: 0, options: o, throughput: t)
        #expect(plan.secondsPerStep > 0 && plan.secondsPerStep.isFinite)
        // more rows, more time
        var o2 = o
        o2.batchSize = 8
        #expect(MemoryPlan.estimate(config: cfg, baseBytes: 0, options: o2, throughput: t).secondsPerStep > plan.secondsPerStep)
    }

    @Test func residentMemoryReadsProc() throws {
        let now = try #require(ProcessMemory.residentBytes())
        let peak = try #require(ProcessMemory.peakResidentBytes())
        #expect(now > 1 << 20 && peak >= now)
    }

    /// The real model: one step of SmolLM2 (NF4) reproduces the inference forward's loss.
    @Test func smolLM2FirstStepMatchesReference() throws {
        let bundle = try ModelBundle(path: Fixtures.smolLM2GGUF, contextLength: 64, quantization: .nf4)
        let text = """
        {"prompt": "What is 15 plus 78?", "completion": "15 plus 78 is 93."}
        {"prompt": "Name the capital city of Egypt.", "completion": "The capital of Egypt is Cairo."}
        {"prompt": "Write the number 2254 in words.", "completion": "Two thousand two hundred and fifty-four."}
        """
        let tok = try TrainingTokenizer(bundle: bundle.tokenizer,
                                        options: TrainingDataOptions(maxSeqLen: 1 << 20, promptCompletionAsChat: true))
        let data = try TrainingData.load(jsonl: text, file: "inline", tokenizer: tok)
        let rows = try PackedRows.pack(data.examples, seqLen: 48)
        #expect(rows.rowCount >= 1)
        var o = TrainBenchmarkOptions()
        o.seqLen = 48; o.batchSize = 1; o.steps = 1; o.warmupSteps = 0; o.measureForward = false
        let r = try TrainBenchmark.run(weights: bundle.model.weights, rows: rows, options: o)
        #expect(r.lossFirst > 0.05 && r.lossFirst < 8)
        // The per-op split: every kind that a step runs was timed, inside the measured forward+backward.
        let forward = r.opSeconds.mapValues { $0[.forward] ?? 0 }
        for kind in [LoRAStepProfile.Kind.linear, .lora, .attention, .elementwise, .head] { #expect(forward[kind, default: 0] > 0) }
        #expect(r.opSeconds.values.allSatisfy { ($0[.recompute] ?? 0) == 0 })   // no checkpointing
        let booked = r.opSeconds.values.reduce(0) { $0 + $1.values.reduce(0, +) }
        #expect(booked > 0.5 * r.forwardBackwardSeconds && booked <= r.forwardBackwardSeconds * 1.001)
        // The GGUF's Q8_0 embedding is held in Q8_0 (34 bytes per 32 values): the shape-only estimate is told so.
        let kinds = try MemoryPlan.embeddingStorage(path: Fixtures.smolLM2GGUF)
        #expect(kinds.embedding == .q8_0)
        #expect(MemoryPlan.baseBytes(bundle.model.weights)
                == MemoryPlan.baseBytes(config: bundle.config, policy: .nf4, separateLMHead: false,
                                        embedding: kinds.embedding, lmHead: kinds.lmHead))
    }
}
