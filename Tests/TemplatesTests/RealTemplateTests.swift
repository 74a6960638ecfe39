// Fixture: Tests/Fixtures/templates/chat_templates.json, written by scripts/make_template_fixtures.py
// (transformers' render_jinja_template — what apply_chat_template(tokenize=False) runs — on the real
// chat templates of SmolLM2, Llama-2/3/3.1, Mistral, Qwen2.5, Gemma-2 and Phi-3.5).
import Foundation
import Testing
import Templates
import _TestSupport

@Suite struct RealTemplateTests {
    struct Fixture {
        let templates: [String: TemplateValue]
        let conversations: TemplateValue
        let tools: TemplateValue
        let cases: [TemplateValue]
    }

    static func load() throws -> Fixture {
        let text = try String(contentsOfFile: Fixtures.path("templates/chat_templates.json"), encoding: .utf8)
        let doc = try parseOrderedJSON(text)
        guard case .array(let templates)? = doc["templates"], case .array(let cases)? = doc["cases"],
              let conversations = doc["conversations"], let tools = doc["tools"] else {
            throw OrderedJSONError(description: "fixture lacks templates/cases/conversations/tools")
        }
        var byName: [String: TemplateValue] = [:]
        for t in templates { if case .string(let n)? = t["name"] { byName[n] = t } }
        return Fixture(templates: byName, conversations: conversations, tools: tools, cases: cases)
    }

    static func string(_ v: TemplateValue?) -> String? { if case .string(let s)? = v { return s } else { return nil } }

    @Test func everyFixtureCaseRendersByteForByte() throws {
        let fx = try Self.load()
        #expect(fx.templates.count == 8)
        #expect(fx.cases.count >= 128)
        var compiled: [String: ChatTemplate] = [:]
        for (name, t) in fx.templates { compiled[name] = try ChatTemplate(try #require(Self.string(t["template"]))) }
        var checked = 0, errors = 0
        for c in fx.cases {
            let name = try #require(Self.string(c["template"]))
            let convName = try #require(Self.string(c["conversation"]))
            let t = try #require(fx.templates[name])
            let tmpl = try #require(compiled[name])
            let agp = c["add_generation_prompt"] == .bool(true)
            var context: [String: TemplateValue] = [
                "messages": try #require(fx.conversations[convName]),
                "add_generation_prompt": .bool(agp),
                "tools": c["tools"] == .bool(true) ? fx.tools : .none,
                "documents": .none,
            ]
            if let bos = Self.string(t["bos_token"]) { context["bos_token"] = .string(bos) }
            if let eos = Self.string(t["eos_token"]) { context["eos_token"] = .string(eos) }
            if case .dictionary(let extra)? = t["extra"] { for (k, v) in extra { context[k] = v } }
            let label = "\(name) / \(convName) / add_generation_prompt=\(agp)"
            if let expected = Self.string(c["expected"]) {
                let got = try tmpl.render(context)
                #expect(Array(got.utf8) == Array(expected.utf8), "\(label)\n--- got ---\n\(got)\n--- expected ---\n\(expected)")
                checked += 1
            } else {
                let message = try #require(Self.string(c["error"]))
                #expect(throws: TemplateError.raised(message), "\(label)") { try tmpl.render(context) }
                errors += 1
            }
        }
        #expect(checked + errors == fx.cases.count)
        #expect(errors >= 10)
    }

    @Test func chatMessageConvenienceMatchesFixture() throws {
        // The typed API (ChatMessage, bosToken/eosToken) must give the same bytes as the generic context.
        let fx = try Self.load()
        for c in fx.cases where c["tools"] == nil {
            guard let expected = Self.string(c["expected"]) else { continue }
            let name = try #require(Self.string(c["template"]))
            let t = try #require(fx.templates[name])
            guard case .array(let raw)? = fx.conversations[try #require(Self.string(c["conversation"]))] else {
                Issue.record("conversation missing"); continue
            }
            let messages = try raw.map { ChatMessage(role: try #require(Self.string($0["role"])),
                                                      content: try #require(Self.string($0["content"]))) }
            var extra: [String: TemplateValue] = [:]
            if case .dictionary(let e)? = t["extra"] { for (k, v) in e { extra[k] = v } }
            if t["bos_token"] == TemplateValue.none { extra["bos_token"] = TemplateValue.none }
            let got = try ChatTemplate(try #require(Self.string(t["template"]))).render(
                messages: messages, addGenerationPrompt: c["add_generation_prompt"] == .bool(true),
                bosToken: Self.string(t["bos_token"]) ?? "", eosToken: Self.string(t["eos_token"]) ?? "", extra: extra)
            #expect(got == expected, "\(name)")
        }
    }

    @Test func smolLM2TemplateMatchesSpecExample() throws {
        let fx = try Self.load()
        let t = try ChatTemplate(try #require(Self.string(fx.templates["SmolLM2-135M-Instruct"]?["template"])))
        let got = try t.render(messages: [ChatMessage(role: "user", content: "I need help with my order")],
                               addGenerationPrompt: true)
        #expect(got == "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                + "<|im_start|>user\nI need help with my order<|im_end|>\n<|im_start|>assistant\n")
    }
}
