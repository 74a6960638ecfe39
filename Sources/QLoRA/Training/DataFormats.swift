// Training data formats: one JSON object per JSONL line, detected per line (SPEC §5.3).
import Foundation

/// What went wrong reading training data. Every case names the file and, for content errors, the
/// 1-based line number.
public enum TrainingDataError: Error, Equatable, CustomStringConvertible {
    case unreadable(file: String, reason: String)
    case badLine(file: String, line: Int, reason: String)
    /// A directory without train.jsonl.
    case missingSplit(directory: String, file: String)

    public var description: String {
        switch self {
        case let .unreadable(file, reason): return "\(file): cannot read: \(reason)"
        case let .badLine(file, line, reason): return "\(file):\(line): \(reason)"
        case let .missingSplit(directory, file): return "\(directory): no \(file)"
        }
    }
}

/// One training record before tokenization.
public enum TrainingRecord: Equatable, Sendable {
    /// A conversation rendered with the chat template; every assistant turn is trained.
    case chat([ChatMessage])
    /// Source (masked) and target (trained, followed by EOS), tokenized as in qlora.py (SPEC §5.4).
    case promptCompletion(prompt: String, completion: String)
    /// Plain text, all trained.
    case text(String)
}

/// The formats a line can be in.
public enum TrainingDataFormat: String, CaseIterable, Sendable {
    case messages, promptCompletion = "prompt-completion", text, alpaca, guanaco
}

public enum DataFormats {
    /// ALPACA_PROMPT_DICT of qlora.py (note the trailing space after "### Response:").
    public static func alpacaPrompt(instruction: String, input: String) -> String {
        if input.isEmpty {
            return "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n\(instruction)\n\n### Response: "
        }
        return "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n\(instruction)\n\n### Input:\n\(input)\n\n### Response: "
    }

    /// The OASST1/Guanaco text form `### Human: … ### Assistant: …` as messages (user/assistant
    /// alternating, contents trimmed of surrounding whitespace); nil if the text does not start with
    /// a `### Human:` turn or a turn is empty.
    public static func guanacoMessages(_ text: String) -> [ChatMessage]? {
        let markers = [("### Human:", "user"), ("### Assistant:", "assistant")]
        var messages: [ChatMessage] = []
        var rest = Substring(text)
        guard let first = rest.range(of: markers[0].0), rest[rest.startIndex..<first.lowerBound].allSatisfy(\.isWhitespace) else {
            return nil
        }
        rest = rest[first.upperBound...]
        var role = "user"
        while true {
            // Next marker of either kind.
            var next: (Range<Substring.Index>, String)? = nil
            for (m, r) in markers {
                if let range = rest.range(of: m), next == nil || range.lowerBound < next!.0.lowerBound { next = (range, r) }
            }
            let content = (next.map { rest[rest.startIndex..<$0.0.lowerBound] } ?? rest).trimmingCharacters(in: .whitespacesAndNewlines)
            guard !content.isEmpty else { return nil }
            messages.append(ChatMessage(role: role, content: content))
            guard let (range, r) = next else { break }
            role = r
            rest = rest[range.upperBound...]
        }
        return messages
    }

    /// Parses one JSONL line. Blank lines give nil. Throws `badLine` for broken JSON, a non-object,
    /// wrong field types, unknown layouts and empty conversations.
    public static func parseLine(_ line: Substring, file: String, lineNumber: Int) throws -> (TrainingRecord, TrainingDataFormat)? {
        if line.allSatisfy(\.isWhitespace) { return nil }
        func bad(_ reason: String) -> TrainingDataError { .badLine(file: file, line: lineNumber, reason: reason) }
        let object: Any
        do {
            object = try JSONSerialization.jsonObject(with: Data(line.utf8), options: [])
        } catch {
            throw bad("invalid JSON (\(String(line.prefix(60))))")
        }
        guard let o = object as? [String: Any] else { throw bad("expected a JSON object, got \(String(line.prefix(40)))") }
        func string(_ key: String, required: Bool = true) throws -> String? {
            guard let v = o[key], !(v is NSNull) else {
                if required { throw bad("missing field '\(key)'") }
                return nil
            }
            guard let s = v as? String else { throw bad("field '\(key)' must be a string, got \(describe(v))") }
            return s
        }
        if let raw = o["messages"] {
            guard let list = raw as? [Any] else { throw bad("field 'messages' must be an array, got \(describe(raw))") }
            var messages: [ChatMessage] = []
            for (k, item) in list.enumerated() {
                guard let m = item as? [String: Any] else { throw bad("messages[\(k)] must be an object, got \(describe(item))") }
                guard let role = m["role"] as? String else { throw bad("messages[\(k)].role must be a string, got \(describe(m["role"]))") }
                guard ["system", "user", "assistant"].contains(role) else {
                    throw bad("messages[\(k)].role = \"\(role)\" (expected system, user or assistant)")
                }
                guard let content = m["content"] as? String else {
                    throw bad("messages[\(k)].content must be a string, got \(describe(m["content"]))")
                }
                messages.append(ChatMessage(role: role, content: content))
            }
            guard !messages.isEmpty else { throw bad("field 'messages' is empty") }
            return (.chat(messages), .messages)
        }
        if o["prompt"] != nil || o["completion"] != nil {
            let p = try string("prompt")!, c = try string("completion")!
            guard !c.isEmpty else { throw bad("field 'completion' is empty") }
            return (.promptCompletion(prompt: p, completion: c), .promptCompletion)
        }
        if o["instruction"] != nil {
            let instruction = try string("instruction")!, input = try string("input", required: false) ?? ""
            let output = try string("output")!
            guard !output.isEmpty else { throw bad("field 'output' is empty") }
            return (.promptCompletion(prompt: alpacaPrompt(instruction: instruction, input: input), completion: output), .alpaca)
        }
        if o["text"] != nil {
            let t = try string("text")!
            guard !t.isEmpty else { throw bad("field 'text' is empty") }
            if t.contains("### Human:") {
                guard let messages = guanacoMessages(t) else { throw bad("field 'text' has malformed '### Human: … ### Assistant: …' turns") }
                return (.chat(messages), .guanaco)
            }
            return (.text(t), .text)
        }
        throw bad("unknown layout with keys \(o.keys.sorted()) (expected messages, prompt/completion, text, or instruction/input/output)")
    }

    static func describe(_ v: Any?) -> String {
        guard let v = v else { return "nothing" }
        if v is NSNull { return "null" }
        if let s = v as? String { return "\"\(s.prefix(40))\"" }
        if v is [Any] { return "an array" }
        if v is [String: Any] { return "an object" }
        return "\(v)"
    }
}
