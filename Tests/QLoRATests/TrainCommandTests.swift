// `qlora train` as a user runs it (the built binary, through runQLoRA of CLITests.swift): the YAML
// config file and its precedence, --target-modules, and a short real run on the tiny Llama-2 model
// folder (Fixtures.linkTinyLlama2Model: tiny-llama-untied's weights from scripts/make_llama_fixtures.py
// with tiny-spm's tokenizer from scripts/make_tokenizer_fixtures.py); the JSONL data and the YAML
// files are written by the tests themselves. --dry-run prints the settings the command resolved.
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
import _TestSupport

@Suite(.serialized) struct TrainCommandTests {
    /// A fresh temp folder for one test.
    func folder(_ tag: String) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("qlora-train-cli-\(tag)-\(getpid())")
        try? FileManager.default.removeItem(at: url)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    func write(_ text: String, _ url: URL) throws -> String {
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    func dryRun(_ arguments: [String]) throws -> [String: Any] {
        let r = try runQLoRA(["train", "--dry-run"] + arguments)
        #expect(r.status == 0, "\(r.stderr)")
        return try jsonObject(r.stdout)
    }

    @Test func configFileAloneSetsEverything() throws {
        let dir = try folder("file-only")
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = try write("""
            # every kind of value
            model: some/model.gguf
            data: some/data
            output: runs/a
            quantize: fp4
            context-length: 256
            no-double-quant: true
            steps: 7
            learning_rate: 5e-4        # snake_case works too
            lora-rank: 8
            lr-schedule: cosine
            warmup-ratio: 0.1
            save-every: 3
            save-total-limit: 4
            eval-every: 2
            early-stopping-patience: 2
            resume: runs/a/checkpoint-3
            optimizer: adamw-8bit
            target-modules: [q_proj, v]
            pack: true
            grad-checkpoint: false
            epochs: 1.5
            """, dir.appendingPathComponent("train.yaml"))
        let s = try dryRun(["--config", config])
        #expect(s["model"] as? String == "some/model.gguf" && s["data"] as? String == "some/data" && s["output"] as? String == "runs/a")
        #expect(s["quantize"] as? String == "fp4" && s["context-length"] as? Int == 256 && s["double-quant"] as? Bool == false)
        #expect(s["steps"] as? Int == 7 && s["epochs"] as? Double == 1.5 && s["steps-overridden-by-epochs"] as? Int == 7)
        #expect(s["learning-rate"] as? Double == 5e-4 && s["lora-rank"] as? Int == 8)
        #expect(s["lr-schedule"] as? String == "cosine" && s["warmup-ratio"] as? Double == 0.1)
        #expect(s["save-every"] as? Int == 3 && s["save-total-limit"] as? Int == 4)
        #expect(s["eval-every"] as? Int == 2 && s["early-stopping-patience"] as? Int == 2)
        #expect(s["resume"] as? String == "runs/a/checkpoint-3" && s["optimizer"] as? String == "adamw-8bit")
        #expect(s["target-modules"] as? [String] == ["q_proj", "v_proj"])
        #expect(s["pack"] as? Bool == true && s["grad-checkpoint"] as? Bool == false)
        #expect(s["config"] as? String == config)
        // Untouched settings keep their defaults.
        #expect(s["batch-size"] as? Int == 1 && s["lora-alpha"] as? Double == 32 && s["seed"] as? Int == 42)
    }

    @Test func commandLineFlagsOverrideTheFile() throws {
        let dir = try folder("override")
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = try write("""
            model: file.gguf
            data: file-data
            output: file-out
            steps: 10
            learning-rate: 1e-4
            pack: true
            train-on-prompt: false
            target-modules: q_proj,k_proj
            """, dir.appendingPathComponent("c.yaml"))
        // Flags before and after --config alike win over the file.
        let s = try dryRun(["--steps", "3", "--config", config, "--output", "cli-out", "--no-pack", "--train-on-prompt",
                            "--target-modules", "down"])
        #expect(s["steps"] as? Int == 3 && s["output"] as? String == "cli-out")
        #expect(s["pack"] as? Bool == false && s["train-on-prompt"] as? Bool == true)
        #expect(s["target-modules"] as? [String] == ["down_proj"])
        #expect(s["learning-rate"] as? Double == 1e-4 && s["model"] as? String == "file.gguf")   // not overridden
        // `--config=FILE` is the same thing.
        let t = try dryRun(["--config=\(config)", "--learning-rate", "3e-3"])
        #expect(t["learning-rate"] as? Double == 3e-3 && t["steps"] as? Int == 10 && t["pack"] as? Bool == true)
    }

    @Test func unknownKeysAndBadValuesNameFileKeyAndValue() throws {
        let dir = try folder("errors")
        defer { try? FileManager.default.removeItem(at: dir) }
        func failure(_ yaml: String, _ name: String) throws -> String {
            let path = try write("model: m.gguf\ndata: d\noutput: o\n" + yaml, dir.appendingPathComponent(name))
            let r = try runQLoRA(["train", "--dry-run", "--config", path])
            #expect(r.status != 0, "\(yaml) was accepted: \(r.stdout)")
            #expect(r.stderr.contains(path), "\(r.stderr)")
            return r.stderr
        }
        let unknown = try failure("lerning-rate: 2e-4\n", "unknown.yaml")
        #expect(unknown.contains(":4: unknown key 'lerning-rate' (value 2e-4)") && unknown.contains("did you mean 'learning-rate'"),
                "\(unknown)")
        let wrongType = try failure("pack: 3\n", "flag.yaml")
        #expect(wrongType.contains(":4: key 'pack' = 3: expected true or false"), "\(wrongType)")
        let notNumber = try failure("steps: many\n", "steps.yaml")
        #expect(notNumber.contains(":4: key 'steps' = many:") && notNumber.contains("many"), "\(notNumber)")
        let outOfRange = try failure("batch_size: 0\n", "range.yaml")
        #expect(outOfRange.contains(":4: key 'batch_size' = 0: training option batchSize = 0: expected ≥ 1"), "\(outOfRange)")
        let badEnum = try failure("optimizer: sgd\n", "enum.yaml")
        #expect(badEnum.contains("key 'optimizer' = sgd:"), "\(badEnum)")
        let mapping = try failure("seed: {a: 1}\n", "mapping.yaml")
        #expect(mapping.contains("key 'seed' = {a: 1}: expected a value, not a mapping"), "\(mapping)")
        let noValue = try failure("steps:\n", "empty.yaml")
        #expect(noValue.contains("key 'steps' = (empty): no value"), "\(noValue)")
        let twice = try failure("learning-rate: 1\nlearning_rate: 2\n", "twice.yaml")
        #expect(twice.contains(":5: key 'learning_rate' = 2: the same setting as 'learning-rate'"), "\(twice)")
        let nested = try failure("config: other.yaml\n", "nested.yaml")
        #expect(nested.contains("unknown key 'config'"), "\(nested)")
        let notYAML = try failure("steps: [1\n", "broken.yaml")
        #expect(notYAML.contains("not valid YAML"), "\(notYAML)")

        let missing = try runQLoRA(["train", "--config", dir.appendingPathComponent("none.yaml").path])
        #expect(missing.status != 0 && missing.stderr.contains("none.yaml: cannot read"), "\(missing.stderr)")
        // A bad value on the command line is still the command line's error.
        let ok = try write("model: m.gguf\ndata: d\noutput: o\n", dir.appendingPathComponent("ok.yaml"))
        let cli = try runQLoRA(["train", "--dry-run", "--config", ok, "--steps", "0"])
        #expect(cli.status != 0 && !cli.stderr.contains(ok) && cli.stderr.contains("steps"), "\(cli.stderr)")
    }

    @Test func targetModulesParse() throws {
        let base = ["--model", "m", "--data", "d", "--output", "o"]
        #expect(try dryRun(base + ["--target-modules", "v_proj, q ,q_proj"])["target-modules"] as? [String] == ["q_proj", "v_proj"])
        #expect(try dryRun(base + ["--target-modules", "all-linear"])["target-modules"] as? [String]
                == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        #expect(try dryRun(base + ["--target-modules", "gate,up,down"])["target-modules"] as? [String] == ["gate_proj", "up_proj", "down_proj"])
        let bad = try runQLoRA(["train", "--dry-run"] + base + ["--target-modules", "q_proj,attn"])
        #expect(bad.status != 0 && bad.stderr.contains("unknown module 'attn'"), "\(bad.stderr)")
        let empty = try runQLoRA(["train", "--dry-run"] + base + ["--target-modules", ","])
        #expect(empty.status != 0 && empty.stderr.contains("--target-modules is empty"), "\(empty.stderr)")
    }

    /// A workspace with the tiny model, data/train.jsonl + valid.jsonl and a config for a short run.
    func tinyRun(_ tag: String, steps: Int) throws -> (root: URL, config: String) {
        let root = try folder(tag)
        try Fixtures.linkTinyLlama2Model(at: root.appendingPathComponent("model"))
        let data = root.appendingPathComponent("data")
        try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true)
        _ = try write(TrainerTests.jsonl(TrainerTests.pairs), data.appendingPathComponent("train.jsonl"))
        _ = try write(TrainerTests.jsonl(Array(TrainerTests.pairs.prefix(3))), data.appendingPathComponent("valid.jsonl"))
        let config = try write("""
            model: \(root.appendingPathComponent("model").path)
            data: \(data.path)
            output: \(root.appendingPathComponent("out").path)
            steps: \(steps)
            batch-size: 2
            max-seq-len: 64
            learning-rate: 1e-2
            lora-rank: 4
            lora-alpha: 8
            lora-dropout: 0
            eval-every: 2
            """, root.appendingPathComponent("train.yaml"))
        return (root, config)
    }

    @Test func shortRunWritesMetricsPlotAndAdapterWithPlainProgress() throws {
        let (root, config) = try tinyRun("run", steps: 4)
        defer { try? FileManager.default.removeItem(at: root) }
        let r = try runQLoRA(["train", "--config", config, "--seed", "3"])
        #expect(r.status == 0, "\(r.stderr)")
        let out = root.appendingPathComponent("out")

        // One plain progress line per step (no terminal here), with every field.
        let stepLines = r.stdout.split(separator: "\n").filter { $0.hasPrefix("step ") && $0.contains(" loss ") }
        #expect(stepLines.map { String($0.prefix(8)) } == ["step 1/4", "step 2/4", "step 3/4", "step 4/4"], "\(r.stdout)")
        for line in stepLines {
            for field in ["loss ", "lr ", "grad_norm ", "tok/s ", "elapsed ", "ETA ", "RSS "] {
                #expect(line.contains(field), "\(line) lacks \(field)")
            }
            #expect(!line.contains("RSS ?"), "\(line)")
        }
        #expect(!r.stdout.contains("\u{1B}[") && !r.stdout.contains("\r"))
        #expect(r.stdout.contains("step 2  valid_loss ") && r.stdout.contains("step 4  valid_loss "))
        #expect(r.stdout.contains("done: 4 steps"))
        #expect(r.stdout.contains("peak memory (RSS): "))
        #expect(r.stdout.contains("adapter: \(out.path)"))
        #expect(r.stdout.contains("loss plot: \(out.appendingPathComponent("loss.svg").path)"))

        // metrics.jsonl: 4 train + 2 valid lines.
        let metrics = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        let splits = try metrics.split(separator: "\n").map { try jsonObject(String($0))["split"] as? String }
        #expect(splits.filter { $0 == "train" }.count == 4 && splits.filter { $0 == "valid" }.count == 2)
        #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("adapter_model.safetensors").path))

        // loss.svg: well-formed, four train points and two validation points.
        let svg = try Data(contentsOf: out.appendingPathComponent("loss.svg"))
        final class Polylines: NSObject, XMLParserDelegate {
            var points: [String: Int] = [:]
            func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                        attributes: [String: String] = [:]) {
                if name == "polyline", let c = attributes["class"] { points[c] = attributes["points"]?.split(separator: " ").count }
            }
        }
        let parser = XMLParser(data: svg), polylines = Polylines()
        parser.delegate = polylines
        #expect(parser.parse())
        #expect(polylines.points == ["train": 4, "valid": 2])
    }

    /// Runs `qlora` and calls `onOutput` with everything printed so far, each time more comes.
    func runStreaming(_ arguments: [String], onOutput: @escaping (String, Process) -> Void) throws -> CommandResult {
        let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("qlora")
        let process = Process()
        process.executableURL = binary
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        let lock = NSLock()
        nonisolated(unsafe) var text = ""
        out.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            guard !data.isEmpty else { return }
            lock.lock(); text += String(decoding: data, as: UTF8.self); let now = text; lock.unlock()
            onOutput(now, process)
        }
        try process.run()
        process.waitUntilExit()
        out.fileHandleForReading.readabilityHandler = nil
        let rest = out.fileHandleForReading.readDataToEndOfFile()
        lock.lock(); text += String(decoding: rest, as: UTF8.self); let stdout = text; lock.unlock()
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return CommandResult(status: process.terminationStatus, stdout: stdout, stderr: stderr)
    }

    @Test func ctrlCSavesAndStops() throws {
        let (root, config) = try tinyRun("sigint1", steps: 100_000)
        defer { try? FileManager.default.removeItem(at: root) }
        let sent = NSLock()
        nonisolated(unsafe) var signalled = false
        let r = try runStreaming(["train", "--config", config, "--eval-every", "0"]) { text, process in
            sent.lock(); defer { sent.unlock() }
            if !signalled, text.contains("step 3/") { process.interrupt(); signalled = true }
        }
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("^C: stopping after the current step"))
        let stopped = try #require(r.stdout.split(separator: "\n").first { $0.hasPrefix("stopped at step ") }, "\(r.stdout)")
        #expect(stopped.hasSuffix(" of 100000: interrupted"))
        let step = try #require(Int(stopped.split(separator: " ")[3]))
        #expect(step >= 3 && step < 1000)
        #expect(r.stdout.contains("done: \(step) steps in ") && r.stdout.contains("(interrupted)"))
        let out = root.appendingPathComponent("out")
        let metrics = try String(contentsOf: out.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        #expect(metrics.split(separator: "\n").count == step)
        #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("loss.svg").path))
        #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("adapter_model.safetensors").path))
    }
}
