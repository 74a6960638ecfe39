// `qlora generate --adapter` against PEFT on the real SmolLM2. The adapter
// (Tests/Fixtures/peft-smollm2/adapter) was written by our own `qlora train`; the expected greedy ids
// and top-5 log-probabilities (Tests/Fixtures/peft-smollm2/expected.json) come from PEFT loading that
// adapter onto the float32 Hugging Face conversion of the same model, made by
// scripts/make_peft_logprob_fixtures.py (which also checks that PEFT finds no missing or unexpected keys).
import Foundation
import Testing
import _TestSupport

@Suite(.serialized) struct PeftLogprobTests {
    struct Step { var ids: [Int]; var logprobs: [Double] }
    struct Case { var system: String?; var user: String; var promptIds: [Int]; var tokens: [Int]; var top: [Step]; var baseTop: [Step] }

    static let adapter = Fixtures.path("peft-smollm2/adapter")

    func steps(_ any: Any?) throws -> [Step] {
        let list = try #require(any as? [[[String: Any]]])
        return list.map { step in Step(ids: step.compactMap { $0["id"] as? Int }, logprobs: step.compactMap { $0["logprob"] as? Double }) }
    }

    func cases() throws -> [Case] {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixtures.path("peft-smollm2/expected.json")))
        let root = try #require(JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(root["peft_loaded"] as? Bool == true)
        let list = try #require(root["cases"] as? [[String: Any]])
        return try list.map { c in
            Case(system: c["system"] as? String, user: try #require(c["user"] as? String),
                 promptIds: try #require(c["prompt_ids"] as? [Int]), tokens: try #require(c["tokens"] as? [Int]),
                 top: try steps(c["top_logprobs"]), baseTop: try steps(c["base_top_logprobs"]))
        }
    }

    /// Largest |Δ log-prob| over the expected top-5 entries of every step. An expected id missing
    /// from our top-5 (a near tie at rank 5) counts as the gap to our 5th log-prob when it is below it.
    func logprobDrift(expected: [Step], actual: [Step]) -> Double {
        var worst = 0.0
        for (e, a) in zip(expected, actual) {
            for (id, lp) in zip(e.ids, e.logprobs) {
                if let j = a.ids.firstIndex(of: id) { worst = max(worst, abs(a.logprobs[j] - lp)) }
                else { worst = max(worst, lp - (a.logprobs.last ?? -.infinity)) }
            }
        }
        return worst
    }

    /// Runs `qlora generate --json --top-logprobs 5` on one case.
    func generate(_ c: Case, extra: [String]) throws -> (prompt: [Int], tokens: [Int], top: [Step]) {
        var args = ["generate", "--model", Fixtures.smolLM2GGUF, "--chat", "--prompt", c.user,
                    "--max-tokens", "\(c.tokens.count)", "--ignore-eos", "--json", "--top-logprobs", "5"] + extra
        if let s = c.system { args += ["--system", s] }
        let r = try runQLoRA(args)
        #expect(r.status == 0, "\(r.stderr)")
        let json = try jsonObject(r.stdout)
        return (try #require(json["prompt_tokens"] as? [Int]), try #require(json["tokens"] as? [Int]),
                try steps(json["top_logprobs"]))
    }

    @Test func theReferenceAdapterChangesTheModel() throws {
        // Otherwise matching PEFT would prove nothing about the adapter.
        var change = 0.0
        for c in try cases() { change = max(change, logprobDrift(expected: c.baseTop, actual: c.top)) }
        #expect(change > 0.05, "largest change of a top-5 log-prob from the adapter in PEFT: \(change)")
    }

    @Test(arguments: [["--quantize", "none"], ["--quantize", "none", "--no-merge"]])
    func generateWithTheAdapterMatchesPEFT(flags: [String]) throws {
        for c in try cases() {
            let r = try generate(c, extra: ["--adapter", Self.adapter] + flags)
            #expect(r.prompt == c.promptIds, "prompt ids for \(c.user.debugDescription)")
            #expect(r.tokens == c.tokens, "greedy ids for \(c.user.debugDescription) with \(flags)")
            #expect(r.top.count == c.top.count)
            let drift = logprobDrift(expected: c.top, actual: r.top)
            #expect(drift <= 2e-3, "max |Δ log-prob| vs PEFT for \(c.user.debugDescription) with \(flags): \(drift)")
        }
    }
}
