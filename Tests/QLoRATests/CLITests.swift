// Runs the built `qlora` binary like a user would. The expected ids come from transformers
// (Tests/Fixtures/llama/smollm2-expected.json, made by scripts/make_llama_fixtures.py).
import Foundation
import Testing
import _TestSupport

struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs `qlora` (next to the test binary in the build folder) with `arguments`.
func runQLoRA(_ arguments: [String], stdin: String? = nil) throws -> CommandResult {
    let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("qlora")
    let process = Process()
    process.executableURL = binary
    process.arguments = arguments
    let out = Pipe(), err = Pipe(), input = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = input
    try process.run()
    if let stdin { input.fileHandleForWriting.write(stdin.data(using: .utf8)!) }
    try input.fileHandleForWriting.close()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    let errData = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return CommandResult(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                         stderr: String(decoding: errData, as: UTF8.self))
}

func jsonObject(_ text: String) throws -> [String: Any] {
    try #require(JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
}

@Suite(.serialized) struct CLITests {
    struct Expected { var kind: String; var text: String; var ids: [Int]; var greedy: [Int] }

    func expectations() throws -> [Expected] {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("llama/smollm2-expected.json")))
        let root = try #require(JSONSerialization.jsonObject(with: data) as? [String: Any])
        let prompts = try #require(root["prompts"] as? [[String: Any]])
        return prompts.map { Expected(kind: $0["kind"] as! String, text: $0["text"] as! String,
                                      ids: $0["ids"] as! [Int], greedy: $0["greedy"] as! [Int]) }
    }

    /// The user and system messages of a ChatML rendering.
    func messages(of rendered: String) -> (system: String?, user: String) {
        func content(_ role: String) -> String? {
            guard let start = rendered.range(of: "<|im_start|>\(role)\n") else { return nil }
            let rest = rendered[start.upperBound...]
            return String(rest[..<rest.range(of: "<|im_end|>")!.lowerBound])
        }
        let system = content("system")
        return (system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face" ? nil : system, content("user")!)
    }

    @Test func greedyGenerationMatchesTransformers() throws {
        for e in try expectations() {
            var args = ["generate", "--model", Fixtures.smolLM2GGUF, "--quantize", "none", "--max-tokens", "\(e.greedy.count)", "--ignore-eos", "--json"]
            if e.kind == "chat" {
                let m = messages(of: e.text)
                args += ["--chat", "--prompt", m.user] + (m.system.map { ["--system", $0] } ?? [])
            } else {
                args += ["--prompt", e.text]
            }
            let r = try runQLoRA(args)
            #expect(r.status == 0, "\(r.stderr)")
            let json = try jsonObject(r.stdout)
            #expect(json["prompt_tokens"] as? [Int] == e.ids, "prompt ids for \(e.text.debugDescription)")
            #expect(json["tokens"] as? [Int] == e.greedy, "greedy ids for \(e.text.debugDescription)")
            #expect(json["stop_reason"] as? String == "length")
            #expect((json["decode_tokens_per_second"] as? Double ?? 0) > 0)
        }
    }

    @Test func stopsAtEndOfTurnAndAtStopStrings() throws {
        let chat = try jsonObject(runQLoRA(["generate", "--model", Fixtures.smolLM2GGUF, "--quantize", "none", "--chat", "--json",
                                            "--prompt", "What is the capital of France?"]).stdout)
        #expect(chat["stop_reason"] as? String == "eos")
        #expect(chat["text"] as? String == "The capital of France is Paris.")
        #expect((chat["tokens"] as? [Int])?.last == 2)   // <|im_end|> closes the answer

        let raw = try jsonObject(runQLoRA(["generate", "--model", Fixtures.smolLM2GGUF, "--quantize", "none", "--json", "--max-tokens", "20",
                                           "--prompt", "The quick brown fox jumps over the lazy dog. Then the dog",
                                           "--stop", "\n"]).stdout)
        #expect(raw["stop_reason"] as? String == "stop")
        #expect(raw["text"] as? String == " ran away.")   // greedy ids 7674, 2025, 30 then "\n"
    }

    @Test func topLogprobsListTheLikeliestTokensOfEachStep() throws {
        let e = try #require(expectations().first { $0.kind == "raw" })
        let r = try runQLoRA(["generate", "--model", Fixtures.smolLM2GGUF, "--quantize", "none", "--prompt", e.text,
                              "--max-tokens", "3", "--ignore-eos", "--json", "--top-logprobs", "5"])
        #expect(r.status == 0, "\(r.stderr)")
        let json = try jsonObject(r.stdout)
        let steps = try #require(json["top_logprobs"] as? [[[String: Any]]])
        #expect(steps.count == 3)
        for (i, step) in steps.enumerated() {
            let ids = step.compactMap { $0["id"] as? Int }
            let logprobs = step.compactMap { $0["logprob"] as? Double }
            #expect(ids.count == 5 && logprobs.count == 5)
            #expect(ids.first == e.greedy[i])                       // greedy picks the most likely token
            #expect(logprobs == logprobs.sorted(by: >) && logprobs.allSatisfy { $0 <= 0 })
            #expect(logprobs.map(exp).reduce(0, +) <= 1.0001)
        }
    }

    @Test func tokenizeRoundTrips() throws {
        let text = "Héllo 123 <|im_start|>user\n  🦙 world"
        let r = try runQLoRA(["tokenize", "--model", Fixtures.smolLM2GGUF, "--text", text])
        #expect(r.status == 0, "\(r.stderr)")
        let ids = try #require(JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [Int])
        #expect(ids.contains(1))   // <|im_start|> written in the text is the special token
        let back = try runQLoRA(["tokenize", "--model", Fixtures.smolLM2GGUF, "--decode", "--text", r.stdout])
        #expect(back.stdout == text + "\n")
    }

    @Test func inspectDescribesTheModel() throws {
        let r = try runQLoRA(["inspect", "--model", Fixtures.smolLM2GGUF, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let json = try jsonObject(r.stdout)
        #expect(json["parameters"] as? Int == 134_515_008)
        #expect((json["chat_template"] as? String)?.contains("<|im_start|>") == true)
    }

    @Test func badInputExitsWithOneAndNamesTheProblem() throws {
        let missing = try runQLoRA(["generate", "--model", "/nonexistent/model.gguf", "--prompt", "hi"])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("/nonexistent/model.gguf"))

        // A GGUF cut short in its tensor data.
        let good = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("llama/tiny-llama-gqa-tied.gguf")))
        let cut = FileManager.default.temporaryDirectory.appendingPathComponent("qlora-cli-truncated.gguf")
        try good.prefix(good.count / 2).write(to: cut)
        defer { try? FileManager.default.removeItem(at: cut) }
        let truncated = try runQLoRA(["generate", "--model", cut.path, "--prompt", "hi"])
        #expect(truncated.status == 1)
        #expect(truncated.stderr.contains(cut.path), "\(truncated.stderr)")
        #expect(!truncated.stderr.contains("Fatal error"))

        let badFlag = try runQLoRA(["generate", "--model", Fixtures.smolLM2GGUF, "--prompt", "hi", "--top-p", "0"])
        #expect(badFlag.status != 0)
        #expect(badFlag.stderr.contains("--top-p"))
    }
}
