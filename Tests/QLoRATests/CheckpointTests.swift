// Checkpoints, bit-identical resume, best adapter, early stopping, interruption, epochs, and the
// base model's content hash. The model is TrainerTests' tiny one: tiny-llama-untied's weights
// (scripts/make_llama_fixtures.py) with tiny-spm's tokenizer (scripts/make_tokenizer_fixtures.py);
// the JSONL data is written by the tests. Hashes are checked against FIPS 180-4 vectors and the
// system's `sha256sum`.
import Foundation
import Testing
import _TestSupport
@testable import QLoRA

@Suite(.serialized) struct CheckpointTests {
    let helper = TrainerTests()

    static func bytes(_ path: String) throws -> [UInt8] {
        guard let d = FileManager.default.contents(atPath: path) else { throw TrainerError.noCheckpoint(directory: path) }
        return Array(d)
    }

    static func adapterBytes(_ dir: URL) throws -> [UInt8] {
        try bytes(dir.appendingPathComponent(AdapterFile.weightsFileName).path)
    }

    /// Small but not trivial: grad-accum 2, dropout on, validation on, rank 48 (so that adamw-8bit
    /// keeps some parameters in 8 bits: down A and gate/up B have 48 × 96 ≥ 4096 elements).
    static func options(_ optimizer: TrainerOptions.Optimizer, steps: Int) -> TrainerOptions {
        var o = TrainerOptions()
        o.steps = steps; o.batchSize = 1; o.gradAccum = 2; o.maxSeqLen = 48; o.learningRate = 5e-3
        o.loraRank = 48; o.loraAlpha = 16; o.loraDropout = 0.1; o.evalEvery = 2; o.seed = 11
        o.optimizer = optimizer; o.warmupSteps = 2; o.saveEvery = 3; o.saveTotalLimit = 0
        return o
    }

    static func trainSteps(_ metricsFile: URL) throws -> (train: [Int], valid: [Int]) {
        let text = try String(contentsOf: metricsFile, encoding: .utf8)
        var train: [Int] = [], valid: [Int] = []
        for line in text.split(separator: "\n") {
            let o = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let step = try #require(o["step"] as? Int)
            if o["split"] as? String == "train" { train.append(step) } else { valid.append(step) }
        }
        return (train, valid)
    }

    // MARK: - Resume

    /// 6 uninterrupted steps = 3 steps interrupted by shouldStop + resume from the run folder
    /// = 3-step run extended to 6 by resuming = resume from the 6-step run's checkpoint-3 folder:
    /// the same adapter_model.safetensors bytes (and optimizer state) in every case.
    @Test(arguments: TrainerOptions.Optimizer.allCases)
    func resumeIsBitIdentical(optimizer: TrainerOptions.Optimizer) throws {
        let root = try helper.makeWorkspace("resume-\(optimizer.rawValue)", train: TrainerTests.pairs,
                                            valid: Array(TrainerTests.pairs.prefix(3)))
        defer { try? FileManager.default.removeItem(at: root) }
        let six = Self.options(optimizer, steps: 6)

        // Uninterrupted.
        let full = try helper.makeTrainer(root, quantization: .nf4, options: six, output: "full")
        var fullEvents: [TrainerEvent] = []
        let fullSummary = try full.run { fullEvents.append($0) }
        #expect(fullSummary.steps == 6 && fullSummary.stopReason == nil)
        #expect(fullEvents.contains(.checkpoint(step: 3, directory: root.appendingPathComponent("full/checkpoint-3").path)))
        #expect(fullEvents.contains(.checkpoint(step: 6, directory: root.appendingPathComponent("full/checkpoint-6").path)))
        let reference = try Self.adapterBytes(root.appendingPathComponent("full"))
        #expect(try Self.adapterBytes(root.appendingPathComponent("full/checkpoint-6")) == reference)

        // Interrupted after 3 steps, then resumed from the run folder.
        let split = root.appendingPathComponent("split")
        let first = try helper.makeTrainer(root, quantization: .nf4, options: six, output: "split")
        var done = 0, events: [TrainerEvent] = []
        let stopped = try first.run(progress: { e in
            events.append(e)
            if case .step = e { done += 1 }
        }, shouldStop: { done >= 3 })
        #expect(stopped.steps == 3 && stopped.stopReason == .interrupted)
        #expect(events.last == .stopped(step: 3, reason: .interrupted))
        #expect(events.contains(.checkpoint(step: 3, directory: split.appendingPathComponent("checkpoint-3").path)))
        #expect(Checkpoint.list(in: split.path).map(\.step) == [3])
        // The interruption's checkpoint equals the uninterrupted run's checkpoint at the same step.
        for file in [AdapterFile.weightsFileName, Checkpoint.optimizerFileName] {
            #expect(try Self.bytes(split.appendingPathComponent("checkpoint-3/\(file)").path)
                    == Self.bytes(root.appendingPathComponent("full/checkpoint-3/\(file)").path), "\(file)")
        }
        let second = try helper.makeTrainer(root, quantization: .nf4, options: six, output: "split")
        var resumedEvents: [TrainerEvent] = []
        let resumed = try second.run(resumeFrom: split.path) { resumedEvents.append($0) }
        #expect(resumedEvents.first == .started(trainExamples: TrainerTests.pairs.count, validExamples: 3,
                                                trainableParameters: second.model.trainableParameterCount, firstStep: 4, totalSteps: 6))
        #expect(resumed.firstStep == 4 && resumed.steps == 6)
        #expect(resumed.firstLoss == fullSummary.firstLoss && resumed.finalLoss == fullSummary.finalLoss)
        #expect(resumed.trainedTokens == fullSummary.trainedTokens)
        #expect(try Self.adapterBytes(split) == reference)
        #expect(try Self.bytes(split.appendingPathComponent("checkpoint-6/\(Checkpoint.optimizerFileName)").path)
                == Self.bytes(root.appendingPathComponent("full/checkpoint-6/\(Checkpoint.optimizerFileName)").path))
        // metrics.jsonl: every step and validation exactly once.
        let metrics = try Self.trainSteps(split.appendingPathComponent(Trainer.metricsFileName))
        #expect(metrics.train == Array(1...6))
        #expect(metrics.valid == [2, 4, 6])

        // A 3-step run, extended to 6 steps by resuming (constant schedule: same learning rates).
        let three = try helper.makeTrainer(root, quantization: .nf4, options: Self.options(optimizer, steps: 3), output: "short")
        _ = try three.run()
        let extended = try helper.makeTrainer(root, quantization: .nf4, options: six, output: "short")
        _ = try extended.run(resumeFrom: root.appendingPathComponent("short").path)
        #expect(try Self.adapterBytes(root.appendingPathComponent("short")) == reference)

        // From a checkpoint folder of another run, into a new output folder.
        let other = try helper.makeTrainer(root, quantization: .nf4, options: six, output: "other")
        _ = try other.run(resumeFrom: root.appendingPathComponent("full/checkpoint-3").path)
        #expect(try Self.adapterBytes(root.appendingPathComponent("other")) == reference)
        #expect(try Self.trainSteps(root.appendingPathComponent("other/metrics.jsonl")).train == Array(1...6))
    }

    /// A cosine schedule with a warmup ratio and packing: the schedule and the packed cursor resume too.
    @Test func resumeWithCosineScheduleAndPacking() throws {
        let root = try helper.makeWorkspace("resume-cosine", train: TrainerTests.pairs, valid: [])
        defer { try? FileManager.default.removeItem(at: root) }
        var o = Self.options(.adamw, steps: 7)
        o.lrSchedule = .cosine; o.warmupRatio = 0.3; o.pack = true; o.evalEvery = 0; o.saveEvery = 0; o.loraRank = 8
        let full = try helper.makeTrainer(root, quantization: .none, options: o, output: "full")
        #expect(full.warmupSteps == 3)
        _ = try full.run()
        var n = 0
        let a = try helper.makeTrainer(root, quantization: .none, options: o, output: "split")
        _ = try a.run(progress: { if case .step = $0 { n += 1 } }, shouldStop: { n == 4 })
        #expect(Checkpoint.list(in: root.appendingPathComponent("split").path).map(\.step) == [4])
        let b = try helper.makeTrainer(root, quantization: .none, options: o, output: "split")
        _ = try b.run(resumeFrom: root.appendingPathComponent("split").path)
        #expect(try Self.adapterBytes(root.appendingPathComponent("split")) == Self.adapterBytes(root.appendingPathComponent("full")))
    }

    @Test func mismatchedSettingsAreRefusedNamingTheFieldAndBothValues() throws {
        let root = try helper.makeWorkspace("mismatch", train: TrainerTests.pairs, valid: [])
        defer { try? FileManager.default.removeItem(at: root) }
        var o = Self.options(.adamw, steps: 2)
        o.loraRank = 4; o.evalEvery = 0
        _ = try helper.makeTrainer(root, quantization: .nf4, options: o).run()
        let out = root.appendingPathComponent("out").path
        let stateFile = out + "/checkpoint-2/" + Checkpoint.stateFileName

        func refusal(_ change: (inout TrainerOptions) -> Void, quantization: QuantizationPolicy = .nf4) throws -> TrainerError? {
            var changed = o
            change(&changed)
            let t = try helper.makeTrainer(root, quantization: quantization, options: changed)
            do { _ = try t.run(resumeFrom: out); return nil } catch let e as TrainerError { return e }
        }
        #expect(try refusal { $0.loraRank = 8 } == .resumeMismatch(file: stateFile, field: "loraRank", checkpoint: "4", current: "8"))
        #expect(try refusal { $0.batchSize = 2 } == .resumeMismatch(file: stateFile, field: "batchSize", checkpoint: "1", current: "2"))
        #expect(try refusal { $0.maxSeqLen = 64 } == .resumeMismatch(file: stateFile, field: "maxSeqLen", checkpoint: "48", current: "64"))
        #expect(try refusal { $0.optimizer = .adamw8bit }
                == .resumeMismatch(file: stateFile, field: "optimizer", checkpoint: "adamw", current: "adamw-8bit"))
        #expect(try refusal { $0.targets = [.q, .v] }
                == .resumeMismatch(file: stateFile, field: "targets", checkpoint: "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                                   current: "q_proj,v_proj"))
        let e = try #require(try refusal { $0.gradAccum = 1 })
        #expect(e.description.contains("gradAccum") && e.description.contains("2") && e.description.contains("1") && e.description.contains(stateFile))
        // Different base weights (float32 instead of NF4) and different data.
        if case let .resumeMismatch(_, field, _, _)? = try refusal({ _ in }, quantization: .none) { #expect(field == "quantization") }
        else { Issue.record("quantization change not refused") }
        try TrainerTests.jsonl(Array(TrainerTests.pairs.dropLast()))
            .write(to: root.appendingPathComponent("data/train.jsonl"), atomically: true, encoding: .utf8)
        if case let .resumeMismatch(_, field, saved, now)? = try refusal({ _ in }) {
            #expect(field == "data" && saved.hasPrefix("sha256:") && now.hasPrefix("sha256:") && saved != now)
        } else { Issue.record("data change not refused") }
        // Nothing to resume from.
        let empty = root.appendingPathComponent("empty").path
        try FileManager.default.createDirectory(atPath: empty, withIntermediateDirectories: true)
        #expect(throws: TrainerError.noCheckpoint(directory: empty)) { try Checkpoint.resolve(empty) }
    }

    @Test func staleTemporaryAndIncompleteCheckpointsAreIgnored() throws {
        let root = try helper.makeWorkspace("stale", train: TrainerTests.pairs, valid: [])
        defer { try? FileManager.default.removeItem(at: root) }
        var o = Self.options(.adamw, steps: 4)
        o.loraRank = 4; o.evalEvery = 0; o.saveEvery = 2
        _ = try helper.makeTrainer(root, quantization: .nf4, options: o).run()
        let out = root.appendingPathComponent("out")
        let fm = FileManager.default
        // A crash mid-save leaves a temporary folder (even one holding a whole checkpoint) and a
        // half-written file; a checkpoint-9 folder without its state file is incomplete.
        let stale = out.appendingPathComponent(".tmp-checkpoint-9-123-abc")
        try fm.copyItem(at: out.appendingPathComponent("checkpoint-4"), to: stale)
        let incomplete = out.appendingPathComponent("checkpoint-9")
        try fm.createDirectory(at: incomplete, withIntermediateDirectories: true)
        try fm.copyItem(at: out.appendingPathComponent("checkpoint-4/adapter_model.safetensors"),
                        to: incomplete.appendingPathComponent("adapter_model.safetensors"))
        try Data("garbage".utf8).write(to: out.appendingPathComponent("adapter_model.safetensors.tmp-1-2"))
        #expect(Checkpoint.list(in: out.path).map(\.step) == [2, 4])
        #expect(try Checkpoint.resolve(out.path) == out.appendingPathComponent("checkpoint-4").path)

        o.steps = 6
        var events: [TrainerEvent] = []
        let s = try helper.makeTrainer(root, quantization: .nf4, options: o).run(resumeFrom: out.path) { events.append($0) }
        #expect(s.firstStep == 5 && s.steps == 6)
        let names = try fm.contentsOfDirectory(atPath: out.path).sorted()
        #expect(!names.contains { $0.hasPrefix(".tmp-") || $0.contains(".tmp-") }, "\(names)")
        #expect(!names.contains("checkpoint-9"))
        #expect(Checkpoint.list(in: out.path).map(\.step) == [2, 4, 6])
    }

    @Test func saveTotalLimitKeepsTheNewestCheckpoints() throws {
        let root = try helper.makeWorkspace("limit", train: TrainerTests.pairs, valid: [])
        defer { try? FileManager.default.removeItem(at: root) }
        var o = Self.options(.adamw, steps: 7)
        o.loraRank = 4; o.evalEvery = 0; o.saveEvery = 2; o.saveTotalLimit = 2; o.gradAccum = 1
        var saved: [Int] = []
        let t = try helper.makeTrainer(root, quantization: .nf4, options: o)
        let s = try t.run { if case let .checkpoint(step, _) = $0 { saved.append(step) } }
        #expect(saved == [2, 4, 6, 7])
        #expect(Checkpoint.list(in: t.outputDirectory).map(\.step) == [6, 7])
        #expect(s.lastCheckpoint == root.appendingPathComponent("out/checkpoint-7").path)
        // The final checkpoint's adapter is the final adapter; its state records the run.
        #expect(try Self.adapterBytes(root.appendingPathComponent("out/checkpoint-7")) == Self.adapterBytes(root.appendingPathComponent("out")))
        let state = try Checkpoint.readState(checkpoint: root.appendingPathComponent("out/checkpoint-7").path)
        #expect(state.step == 7 && state.schedule.totalSteps == 7 && state.trainedTokens == s.trainedTokens)
        #expect(state.fingerprint["baseModelHash"] == t.baseModelHash && state.fingerprint["loraRank"] == "4")
    }

    @Test func bestHoldsTheAdapterOfTheBestValidation() throws {
        let root = try helper.makeWorkspace("best", train: TrainerTests.pairs, valid: Array(TrainerTests.pairs.suffix(3)))
        defer { try? FileManager.default.removeItem(at: root) }
        var o = Self.options(.adamw, steps: 8)
        o.loraRank = 4; o.evalEvery = 1; o.saveEvery = 1; o.saveTotalLimit = 0; o.learningRate = 3e-2; o.gradAccum = 1
        let t = try helper.makeTrainer(root, quantization: .nf4, options: o)
        var validations: [(step: Int, loss: Double, isBest: Bool)] = []
        let s = try t.run { if case let .validation(step, loss, _, isBest) = $0 { validations.append((step, loss, isBest)) } }
        #expect(validations.count == 8)
        var best = Double.infinity, bestStep = 0
        for v in validations {
            #expect(v.isBest == (v.loss < best), "step \(v.step)")
            if v.loss < best { best = v.loss; bestStep = v.step }
        }
        #expect(s.bestStep == bestStep && s.bestValidLoss == best)
        let bestDir = root.appendingPathComponent("out/best")
        #expect(try Self.adapterBytes(bestDir) == Self.adapterBytes(root.appendingPathComponent("out/checkpoint-\(bestStep)")))
        let info = try #require(Trainer.bestInfo(bestDir.path))
        #expect(info.step == bestStep && info.loss == best)
        // best/ is a loadable PEFT adapter.
        #expect(try AdapterFile.read(directory: bestDir.path).config.r == 4)
    }

    @Test func earlyStoppingStopsAfterPatienceValidationsWithoutImprovement() throws {
        // Held-out validation data the train split never sees, and a learning rate high enough to
        // overfit: the validation loss stops improving within a few steps.
        let train = Array(TrainerTests.pairs.prefix(4)), valid = Array(TrainerTests.pairs.suffix(4))
        let root = try helper.makeWorkspace("early", train: train, valid: valid)
        defer { try? FileManager.default.removeItem(at: root) }
        var o = Self.options(.adamw, steps: 60)
        o.loraRank = 8; o.evalEvery = 1; o.saveEvery = 0; o.learningRate = 5e-2; o.gradAccum = 1; o.loraDropout = 0
        o.earlyStoppingPatience = 2
        let t = try helper.makeTrainer(root, quantization: .nf4, options: o)
        var events: [TrainerEvent] = []
        let s = try t.run { events.append($0) }
        let validations = events.compactMap { e -> (Int, Double, Bool)? in
            if case let .validation(step, loss, _, isBest) = e { return (step, loss, isBest) } else { return nil }
        }
        let reason = try #require(s.stopReason)
        guard case let .earlyStopping(bestStep, bestLoss) = reason else { Issue.record("stopped for \(reason)"); return }
        #expect(s.steps < 60)
        #expect(events.last == .stopped(step: s.steps, reason: reason))
        #expect(bestLoss == validations.map(\.1).min() && bestStep == validations.first { $0.1 == bestLoss }?.0)
        // Exactly `patience` validations after the best one, none of them better.
        #expect(validations.filter { $0.0 > bestStep }.count == 2)
        #expect(validations.last!.0 == s.steps)
        #expect(Checkpoint.list(in: t.outputDirectory).map(\.step) == [s.steps])
        #expect(try Self.adapterBytes(root.appendingPathComponent("out/checkpoint-\(s.steps)")) == Self.adapterBytes(root.appendingPathComponent("out")))
        #expect(Trainer.bestInfo(root.appendingPathComponent("out/best").path)?.step == bestStep)
    }

    @Test func epochsAndWarmupRatioSetTheSteps() throws {
        let root = try helper.makeWorkspace("epochs", train: TrainerTests.pairs, valid: [])
        defer { try? FileManager.default.removeItem(at: root) }
        var o = TrainerOptions()
        o.batchSize = 2; o.maxSeqLen = 48; o.loraRank = 4; o.gradAccum = 3; o.epochs = 2; o.warmupRatio = 0.1
        let t = try helper.makeTrainer(root, quantization: .nf4, options: o)
        #expect(t.batchesPerEpoch == 4)              // 8 examples, 2 per batch
        #expect(t.totalSteps == 3)                   // ⌈2 × 4 / 3⌉
        #expect(t.warmupSteps == 1)                  // ⌈0.1 × 3⌉
        var started: TrainerEvent?
        let s = try t.run { if case .started = $0, started == nil { started = $0 } }
        #expect(started == .started(trainExamples: 8, validExamples: 0, trainableParameters: t.model.trainableParameterCount,
                                    firstStep: 1, totalSteps: 3))
        #expect(s.steps == 3 && s.totalSteps == 3)
        o.gradAccum = 1; o.epochs = 1.5
        #expect(try helper.makeTrainer(root, quantization: .nf4, options: o).totalSteps == 6)
        o.epochs = 0
        #expect(throws: TrainerError.invalidOption(field: "epochs", value: "0.0", expected: "> 0 or nil")) { try o.validate() }
        o.epochs = nil; o.earlyStoppingPatience = 1
        #expect(throws: TrainerError.self) { try o.validate() }
    }

    // MARK: - Optimizer state file

    @Test(arguments: [32, 8])
    func optimizerStateRoundTripsThroughItsFile(bits: Int) throws {
        let sizes = [5000, 300, 4096]
        let config = AdamWConfig(stateBits: bits)
        let a = try AdamW(sizes: sizes, config: config)
        var params = sizes.map { n in (0..<n).map { Float(sin(Double($0))) } }
        var grads = sizes.map { n in (0..<n).map { Float(cos(Double($0) * 0.37)) * 0.01 } }
        try a.step(parameters: &params, gradients: &grads, lr: 1e-3)
        try a.step(parameters: &params, gradients: &grads, lr: 1e-3)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("qlora-optim-\(bits)-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let file = dir.appendingPathComponent("optimizer.safetensors").path
        let names = ["p0", "p1", "p2"]
        try a.writeState(to: file, names: names)
        let b = try AdamW(sizes: sizes, config: config)
        try b.readState(from: file, names: names)
        #expect(b.state() == a.state() && b.step == 2)
        // Continuing from either gives the same parameters.
        var p1 = params, g1 = grads, p2 = params, g2 = grads
        try a.step(parameters: &p1, gradients: &g1, lr: 1e-3)
        try b.step(parameters: &p2, gradients: &g2, lr: 1e-3)
        #expect(p1 == p2)
        // A different state layout is refused by name.
        let other = try AdamW(sizes: sizes, config: AdamWConfig(stateBits: bits == 8 ? 32 : 8))
        #expect(throws: OptimizerError.mismatch(field: "\(file): __metadata__.adamw.state_bits", value: String(bits),
                                                expected: bits == 8 ? "32" : "8")) { try other.readState(from: file, names: names) }
    }

    // MARK: - Content hash

    @Test func sha256MatchesTheFIPSVectors() {
        #expect(SHA256Hasher.hex([UInt8]()) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256Hasher.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256Hasher.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(SHA256Hasher.hex(Array("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu".utf8))
                == "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1")
        // One million 'a', fed in uneven pieces (exercises the partial-block path).
        var h = SHA256Hasher()
        let a = [UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)
        var i = 0, piece = 1
        while i < a.count {
            let n = min(piece, a.count - i)
            a[i..<(i + n)].withUnsafeBytes { h.update($0) }
            i += n; piece = piece * 3 % 1000 + 1
        }
        #expect(h.finalizeHex() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    static func sha256sum(_ files: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "cat \"$@\" | sha256sum", "sh"] + files
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        return String(String(decoding: data, as: UTF8.self).prefix(64))
    }

    @Test func contentHashMatchesSha256sumAndIsRecordedInTheAdapter() throws {
        let gguf = Fixtures.path("formats/tiny_c5.gguf")
        #expect(try ModelBundle.contentHash(path: gguf) == "sha256:" + Self.sha256sum([gguf]))
        let root = try helper.makeWorkspace("hash", train: TrainerTests.pairs, valid: [])
        defer { try? FileManager.default.removeItem(at: root) }
        let model = root.appendingPathComponent("model").path
        #expect(try ModelBundle.contentHashFiles(path: model).map { ($0 as NSString).lastPathComponent } == ["config.json", "model.safetensors"])
        let expected = "sha256:" + (try Self.sha256sum([model + "/config.json", model + "/model.safetensors"]))
        #expect(try ModelBundle.contentHash(path: model) == expected)

        var o = TrainerOptions()
        o.steps = 1; o.maxSeqLen = 48; o.loraRank = 4
        let t = try helper.makeTrainer(root, quantization: .nf4, options: o)
        #expect(t.baseModelHash == expected)
        _ = try t.run()
        let adapter = try AdapterFile.read(directory: t.outputDirectory)
        #expect(adapter.config.baseModelHash == expected)
        #expect(adapter.config.baseModelNameOrPath == model)
        #expect(adapter.config.eosTokenIds == t.bundle.tokenizer.eosTokenIds)
        #expect(adapter.config.chatTemplate == t.bundle.tokenizer.chatTemplate)
    }
}
