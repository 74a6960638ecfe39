// The public entry point: a parsed chat template, rendered the way transformers' apply_chat_template
// renders it (jinja2 with trim_blocks and lstrip_blocks, raise_exception, strftime_now, tojson).

/// One message of a conversation.
public struct ChatMessage: Equatable, Sendable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// A compiled Jinja chat template (the `chat_template` of a tokenizer_config.json or GGUF
/// `tokenizer.chat_template`).
public struct ChatTemplate: @unchecked Sendable {
    /// The template text as given.
    public let source: String
    private let nodes: [Node]

    /// Parses `source`; throws `TemplateError.syntax` naming the line, column and token.
    public init(_ source: String) throws {
        self.source = source
        var lexer = Lexer(source)
        var parser = Parser(try lexer.segments())
        nodes = try parser.parseTemplate()
    }

    /// Renders with exactly the given variables (plus the globals `raise_exception`, `strftime_now`,
    /// `namespace`, `range`, `dict`).
    public func render(_ context: [String: TemplateValue]) throws -> String {
        let interpreter = Interpreter(context: context.mapValues(Value.init))
        _ = try interpreter.render(nodes)
        return interpreter.out
    }

    /// Renders a conversation as `tokenizer.apply_chat_template(messages, tokenize=False,
    /// add_generation_prompt:)` does: `messages`, `add_generation_prompt`, `tools` and `documents`
    /// (none), `bos_token`, `eos_token`, then `extra` (which wins on a clash).
    public func render(messages: [ChatMessage], addGenerationPrompt: Bool, bosToken: String = "",
                       eosToken: String = "", extra: [String: TemplateValue] = [:]) throws -> String {
        var context: [String: TemplateValue] = [
            "messages": .array(messages.map { .dictionary([(key: "role", value: .string($0.role)),
                                                           (key: "content", value: .string($0.content))]) }),
            "add_generation_prompt": .bool(addGenerationPrompt),
            "tools": .none,
            "documents": .none,
            "bos_token": .string(bosToken),
            "eos_token": .string(eosToken),
        ]
        for (k, v) in extra { context[k] = v }
        return try render(context)
    }
}
