// The training loop end to end on a tiny model: tiny-llama-untied's weights (scripts/make_llama_fixtures.py)
// with tiny-spm's SentencePiece tokenizer (scripts/make_tokenizer_fixtures.py), symlinked into a temp
// folder as SentencePieceModelTests does; the JSONL data is written by the test itself.
import Foundation
import Testing
import _TestSupport
@testable import QLoRA

@Suite struct TrainerTests {
    static let pairs: [(String, String)] = [
        ("What is two plus two?", "Four."), ("Name a color.", "Blue."), ("Say hello.", "Hello there."),
        ("What is the sky?", "The sky is blue."), ("Count to three.", "One two three."),
        ("Is fire hot?", "Yes, fire is hot."), ("Name a fruit.", "An apple."), ("What day follows Monday?", "Tuesday."),
    ]

    static func jsonl(_ pairs: [(String, String)]) throws -> String {
        try pairs.map { q, a in
            let record: [String: Any] = ["messages": [["role": "user", "content": q], ["role": "assistant", "content": a]]]
            return String(decoding: try JSONSerialization.data(withJSONObject: record, options: [.sortedKeys]), as: UTF8.self)
        }.joined(separator: "\n") + "\n"
    }

    /// A temp folder with `model/` (symlinked fixtures), `data/train.jsonl`, `data/valid.jsonl`.
    func makeWorkspace(_ tag: String, train: [(String, String)], valid: [(String, String)]) throws -> URL {
        let fm = FileManager.default
        let root = fm.temporaryDirectory.appendingPathComponent("qlora-trainer-\(tag)-\(getpid())")
        try? fm.removeItem(at: root)
        let model = root.appendingPathComponent("model"), data = root.appendingPathComponent("data")
        try Fixtures.linkTinyLlama2Model(at: model)
        try fm.createDirectory(at: data, withIntermediateDirectories: true)
        try Self.jsonl(train).write(to: data.appendingPathComponent("train.jsonl"), atomically: true, encoding: .utf8)
        if !valid.isEmpty {
            try Self.jsonl(valid).write(to: data.appendingPathComponent("valid.jsonl"), atomically: true, encoding: .utf8)
        }
        return root
    }

    func makeTrainer(_ root: URL, quantization: QuantizationPolicy, options: TrainerOptions, output: String = "out") throws -> Trainer {
        let bundle = try ModelBundle(path: root.appendingPathComponent("model").path, contextLength: options.maxSeqLen,
                                     quantization: quantization)
        let splits = try Trainer.loadData(path: root.appendingPathComponent("data").path, bundle: bundle, options: options)
        return try Trainer(bundle: bundle, data: splits, options: options,
                           outputDirectory: root.appendingPathComponent(output).path)
    }

    @Test(arguments: [QuantizationPolicy.nf4, QuantizationPolicy.none])
    func lossDecreasesAndWritesMetricsAndPEFTAdapter(quantization: QuantizationPolicy) throws {
        let root = try makeWorkspace("run-\(quantization.quantType.rawValue)", train: Self.pairs, valid: Array(Self.pairs.prefix(3)))
        defer { try? FileManager.default.removeItem(at: root) }
        var options = TrainerOptions()
        options.steps = 15; options.batchSize = 2; options.maxSeqLen = 64; options.learningRate = 1e-2
        options.loraRank = 4; options.loraAlpha = 8; options.loraDropout = 0; options.evalEvery = 5; options.seed = 7
        let trainer = try makeTrainer(root, quantization: quantization, options: options)
        var events: [TrainerEvent] = []
        let summary = try trainer.run { events.append($0) }

        // Loss goes down (on the train split and on held-in validation data).
        let losses = events.compactMap { if case let .step(m) = $0 { return m.loss } else { return nil } }
        #expect(losses.count == 15)
        let lastThree = losses.suffix(3).reduce(0, +) / 3
        #expect(lastThree < losses[0] - 0.5, "losses \(losses)")
        let valids = events.compactMap { if case let .validation(_, l, _, _) = $0 { return l } else { return nil } }
        #expect(valids.count == 3)
        #expect(valids.last! < valids.first!, "valid losses \(valids)")
        #expect(summary.firstLoss == losses[0] && summary.finalLoss == losses[14] && summary.finalValidLoss == valids.last)
        #expect(events.last == .saved(directory: trainer.outputDirectory))

        // metrics.jsonl: 15 train lines and 3 valid lines with the fields.
        let text = try String(contentsOfFile: root.appendingPathComponent("out/metrics.jsonl").path, encoding: .utf8)
        let lines = text.split(separator: "\n").map(String.init)
        #expect(lines.count == 18)
        var trainSteps: [Int] = [], validSteps: [Int] = []
        for line in lines {
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let step = try #require(object["step"] as? Int)
            let loss = try #require(object["loss"] as? Double)
            let lr = try #require(object["learning_rate"] as? Double)
            let tps = try #require(object["tokens_per_second"] as? Double)
            #expect(loss.isFinite && loss > 0 && abs(lr - 1e-2) < 1e-12 && tps > 0)
            switch object["split"] as? String {
            case "train": trainSteps.append(step); #expect(abs(loss - losses[step - 1]) <= 1e-12 * losses[step - 1])
            case "valid": validSteps.append(step)
            default: Issue.record("bad split in \(line)")
            }
        }
        #expect(trainSteps == Array(1...15))
        #expect(validSteps == [5, 10, 15])

        // The PEFT adapter: names and shapes in the safetensors file, and it reads back equal.
        let config = trainer.model.config
        let st = try SafetensorsFile(path: root.appendingPathComponent("out/adapter_model.safetensors").path)
        #expect(st.tensorNames.count == config.layerCount * 7 * 2)
        #expect(try st.shape(of: "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight") == [4, config.hiddenSize])
        #expect(try st.shape(of: "base_model.model.model.layers.1.mlp.down_proj.lora_B.weight") == [config.hiddenSize, 4])
        #expect(try st.shape(of: "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight") == [config.intermediateSize, 4])
        let read = try AdapterFile.read(directory: root.appendingPathComponent("out").path)
        #expect(read.layers == trainer.adapterWeights().layers)
        #expect(read.config.r == 4 && read.config.loraAlpha == 8 && read.config.loraDropout == 0)
        #expect(Set(read.config.targetModules) == Set(LoRATarget.allCases.map(\.rawValue)))
        // Training moved B away from its zero initialisation.
        #expect(read.layers[0]["v_proj"]!.b.values.contains { $0 != 0 })
    }

    /// batch 1 × gradAccum 2 and batch 2 × gradAccum 1 see the same two examples (of different
    /// trained-token counts) in step 1, so the accumulated gradient and the update must agree.
    @Test func gradientAccumulationMatchesTheLargerBatch() throws {
        let two = [Self.pairs[0], Self.pairs[3]]
        let root = try makeWorkspace("accum", train: two, valid: [])
        defer { try? FileManager.default.removeItem(at: root) }
        var options = TrainerOptions()
        options.steps = 1; options.maxSeqLen = 48; options.learningRate = 1e-3; options.loraRank = 4
        options.loraDropout = 0; options.maxGradNorm = nil; options.seed = 3
        var big = options; big.batchSize = 2; big.gradAccum = 1
        var accumulated = options; accumulated.batchSize = 1; accumulated.gradAccum = 2
        let a = try makeTrainer(root, quantization: .nf4, options: big, output: "big")
        let b = try makeTrainer(root, quantization: .nf4, options: accumulated, output: "accum")
        let sa = try a.run(), sb = try b.run()
        #expect(sa.trainedTokens == sb.trainedTokens)
        #expect(abs(sa.firstLoss - sb.firstLoss) < 1e-5 * max(1, abs(sa.firstLoss)))
        let ga = a.model.gradients, gb = b.model.gradients
        var maxDiff: Float = 0, maxAbs: Float = 0
        for (x, y) in zip(ga, gb) { for i in 0..<x.count { maxDiff = max(maxDiff, abs(x[i] - y[i])); maxAbs = max(maxAbs, abs(x[i])) } }
        #expect(maxAbs > 0)
        #expect(maxDiff <= 1e-4 * maxAbs, "max gradient difference \(maxDiff) (max |g| \(maxAbs))")
        var maxParamDiff: Float = 0
        for (x, y) in zip(a.model.parameters, b.model.parameters) { for i in 0..<x.count { maxParamDiff = max(maxParamDiff, abs(x[i] - y[i])) } }
        #expect(maxParamDiff < 1e-5, "max parameter difference \(maxParamDiff)")
    }

    @Test func divergingRunThrowsNamingTheStep() throws {
        let root = try makeWorkspace("nan", train: Self.pairs, valid: [])
        defer { try? FileManager.default.removeItem(at: root) }
        var options = TrainerOptions()
        options.steps = 5; options.maxSeqLen = 48; options.learningRate = 1e30; options.loraRank = 4; options.loraDropout = 0
        let trainer = try makeTrainer(root, quantization: .none, options: options)
        do {
            _ = try trainer.run()
            Issue.record("expected a non-finite loss error")
        } catch let TrainerError.nonFiniteLoss(step, _) {
            #expect(step >= 2 && step <= 5)
            #expect(TrainerError.nonFiniteLoss(step: step, loss: .nan).description.contains("step \(step)"))
        }
    }

    @Test func invalidOptionsAreRejectedByName() {
        var options = TrainerOptions()
        options.gradAccum = 0
        #expect(throws: TrainerError.invalidOption(field: "gradAccum", value: "0", expected: "≥ 1")) { try options.validate() }
    }
}
