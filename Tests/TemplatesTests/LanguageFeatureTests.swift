// Fixture: the "features" of Tests/Fixtures/templates/chat_templates.json, written by
// scripts/make_template_fixtures.py: one small template per language feature (statements, whitespace
// control, operators, filters, tests, methods), rendered by the jinja2 environment transformers builds.
import Testing
import Templates
import _TestSupport

@Suite struct LanguageFeatureTests {
    @Test func everyFeatureMatchesJinja2() throws {
        let text = try String(contentsOfFile: Fixtures.path("templates/chat_templates.json"), encoding: .utf8)
        guard case .array(let features)? = try parseOrderedJSON(text)["features"] else {
            Issue.record("fixture has no features"); return
        }
        #expect(features.count >= 50)
        for f in features {
            guard case .string(let name)? = f["name"], case .string(let source)? = f["template"],
                  case .dictionary(let pairs)? = f["context"] else { Issue.record("bad feature entry"); continue }
            var context: [String: TemplateValue] = [:]
            for (k, v) in pairs { context[k] = v }
            if case .string(let expected)? = f["expected"] {
                do {
                    let got = try ChatTemplate(source).render(context)
                    #expect(Array(got.utf8) == Array(expected.utf8), "\(name): got \(got.debugDescription), expected \(expected.debugDescription)")
                } catch {
                    Issue.record("\(name): threw \(error)")
                }
            } else if case .string(let message)? = f["error"] {
                #expect(throws: TemplateError.raised(message), "\(name)") { try ChatTemplate(source).render(context) }
            }
        }
    }
}

@Suite struct TemplateErrorTests {
    @Test func syntaxErrorNamesLineColumnAndToken() {
        let source = "line one\n{% if x %}\n  {{ a + }}\n{% endif %}"
        #expect(throws: TemplateError.syntax(message: "expected an expression, got the end of the tag",
                                             line: 3, column: 9, token: "<end of tag>")) {
            try ChatTemplate(source)
        }
    }

    @Test func unknownTagIsASyntaxError() {
        #expect(throws: TemplateError.syntax(message: "unknown tag 'frobnicate'", line: 2, column: 4, token: "frobnicate")) {
            try ChatTemplate("ok\n{% frobnicate %}")
        }
    }

    @Test func unclosedBlockIsASyntaxError() throws {
        do {
            _ = try ChatTemplate("{% for m in messages %}{{ m }}")
            Issue.record("expected a syntax error")
        } catch let e as TemplateError {
            guard case let .syntax(message, line, _, _) = e else { Issue.record("wrong error \(e)"); return }
            #expect(message.contains("endfor"))
            #expect(line == 1)
            #expect(e.description.contains("line 1"))
        }
    }

    @Test func unterminatedStringNamesItsPosition() {
        #expect(throws: TemplateError.syntax(message: "unterminated string literal", line: 1, column: 7, token: "'")) {
            try ChatTemplate("ab {{ 'oops }}")
        }
    }

    @Test func runtimeErrorsNameWhatFailedAndTheLine() throws {
        let t = try ChatTemplate("a\nb\n{{ 1 + 'x' }}")
        #expect(throws: TemplateError.runtime(message: "unsupported operand type(s) for +: 'int' and 'str'", line: 3)) {
            try t.render([:])
        }
        let u = try ChatTemplate("{{ missing.attr }}")
        do {
            _ = try u.render([:])
            Issue.record("expected an undefined error")
        } catch let TemplateError.runtime(message, line) {
            #expect(message.contains("'missing' is undefined"))
            #expect(line == 1)
        }
        #expect(throws: TemplateError.runtime(message: "no filter named 'nosuch'", line: 1)) {
            try ChatTemplate("{{ 1 | nosuch }}").render([:])
        }
    }

    @Test func raiseExceptionThrowsRaised() throws {
        let t = try ChatTemplate("{{ raise_exception('Conversation roles must alternate') }}")
        #expect(throws: TemplateError.raised("Conversation roles must alternate")) { try t.render([:]) }
        #expect(TemplateError.raised("x").description == "template raised an exception: x")
    }

    @Test func templateValueLiterals() {
        let v: TemplateValue = ["a": 1, "b": [true, nil, 2.5, "s"]]
        #expect(v["a"] == .int(1))
        #expect(v["b"] == .array([.bool(true), .none, .double(2.5), .string("s")]))
        #expect(v != ["b": [true, nil, 2.5, "s"], "a": 1])  // keys are ordered
    }
}
