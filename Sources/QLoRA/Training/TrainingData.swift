// Tokenization and loss masking of training records (SPEC §5.4), and loading JSONL files / split folders.
import Foundation

/// One tokenized example: `labels[t]` is `inputIds[t]` where the token is trained, else
/// `TrainingExample.ignoreIndex`. Labels are NOT shifted: the loss at position t predicts label t+1.
public struct TrainingExample: Equatable, Sendable {
    public static let ignoreIndex = -100
    public var inputIds: [Int]
    public var labels: [Int]
    /// Where it came from (file, 1-based line).
    public var file: String
    public var line: Int
    public init(inputIds: [Int], labels: [Int], file: String = "", line: Int = 0) {
        self.inputIds = inputIds; self.labels = labels; self.file = file; self.line = line
    }
    public var count: Int { inputIds.count }
    public var trainedTokenCount: Int { labels.reduce(0) { $0 + ($1 == TrainingExample.ignoreIndex ? 0 : 1) } }
}

public struct TrainingDataOptions: Sendable {
    public enum LongExamples: Sendable { case truncate, drop }
    public var maxSeqLen: Int
    public var longExamples: LongExamples
    /// Train on the prompt / user / system tokens too.
    public var trainOnPrompt: Bool
    /// Collect bad lines in the summary instead of throwing at the first one.
    public var skipBadLines: Bool
    /// Render prompt/completion and alpaca records as a [user, assistant] conversation with the chat
    /// template instead of qlora.py's raw `source + target + EOS`.
    public var promptCompletionAsChat: Bool
    /// Append EOS to `text` records.
    public var appendEOSToText: Bool
    public init(maxSeqLen: Int = 512, longExamples: LongExamples = .truncate, trainOnPrompt: Bool = false,
                skipBadLines: Bool = false, promptCompletionAsChat: Bool = false, appendEOSToText: Bool = true) {
        self.maxSeqLen = maxSeqLen; self.longExamples = longExamples; self.trainOnPrompt = trainOnPrompt
        self.skipBadLines = skipBadLines; self.promptCompletionAsChat = promptCompletionAsChat; self.appendEOSToText = appendEOSToText
    }
}

/// Counts of what loading did.
public struct TrainingDataSummary: Equatable, Sendable {
    public var lines = 0
    public var examples = 0
    public var tokens = 0
    public var trainedTokens = 0
    /// Examples cut to maxSeqLen.
    public var truncated = 0
    /// Examples longer than maxSeqLen dropped (`.drop`), or left with no trained token after truncation.
    public var droppedTooLong = 0
    /// Chat examples where a rendered prefix did not tokenize to a prefix of the whole conversation
    /// (the span boundaries then fall back to the longest common token prefix).
    public var prefixMismatches = 0
    public var formats: [String: Int] = [:]
    /// Bad lines skipped (`skipBadLines`).
    public var skipped: [TrainingDataError] = []
    public init() {}
}

public struct TrainingDataset: Sendable {
    public var examples: [TrainingExample]
    public var summary: TrainingDataSummary
}

public struct TrainingDataSplits: Sendable {
    public var train: TrainingDataset
    public var valid: TrainingDataset?
    public var test: TrainingDataset?
}

/// Turns records into tokens and labels with a model's tokenizer and chat template.
///
/// Chat masking (assistant spans), the prefix method: for each assistant message i the conversation
/// is rendered twice with the template, `before` = messages[..<i] with add_generation_prompt (or ""
/// for i = 0) and `upto` = messages[...i] without it; both are tokenized (no added special tokens, as
/// apply_chat_template does) and the tokens [len(before), len(upto)) of the whole conversation are
/// the assistant span, cut after the last EOS / end-of-turn id in it (so ChatML's "\n" after
/// `<|im_end|>` is not trained, but `<|im_end|>` is — even when it is also the pad token). The
/// prefix property (tokens(before) ⊑ tokens(upto) ⊑ tokens(all)) is checked; where a tokenizer merges
/// across the boundary the longest common prefix is used instead and `prefixMismatches` counts it.
public struct TrainingTokenizer {
    public let bundle: TokenizerBundle
    public let template: ChatTemplate?
    public let options: TrainingDataOptions
    let endIds: Set<Int>
    let eosId: Int?

    public init(bundle: TokenizerBundle, options: TrainingDataOptions = TrainingDataOptions()) throws {
        self.bundle = bundle
        self.options = options
        template = try bundle.chatTemplate.map { try ChatTemplate($0) }
        eosId = bundle.tokenizer.eosTokenId ?? bundle.eosTokenIds.first
        endIds = Set(bundle.eosTokenIds + (eosId.map { [$0] } ?? []))
    }

    /// Tokens and labels of one record (not yet cut to maxSeqLen). `mismatch` is set when the
    /// prefix property failed.
    public func tokenize(_ record: TrainingRecord, mismatch: inout Bool) throws -> (ids: [Int], labels: [Int]) {
        let tok = bundle.tokenizer
        let ignore = TrainingExample.ignoreIndex
        switch record {
        case let .text(t):
            var ids = tok.encode(t, addSpecialTokens: true)
            if options.appendEOSToText, let e = eosId { ids.append(e) }
            return (ids, ids)
        case let .promptCompletion(p, c):
            if options.promptCompletionAsChat {
                return try tokenize(.chat([ChatMessage(role: "user", content: p), ChatMessage(role: "assistant", content: c)]),
                                    mismatch: &mismatch)
            }
            let src = tok.encode(p, addSpecialTokens: true)
            var tgt = tok.encode(c, addSpecialTokens: false)
            if let e = eosId { tgt.append(e) }
            return (src + tgt, (options.trainOnPrompt ? src : [Int](repeating: ignore, count: src.count)) + tgt)
        case let .chat(messages):
            guard let template = template else { throw TrainingDataError.unreadable(file: "<tokenizer>", reason: "no chat template for a chat example") }
            func render(_ m: ArraySlice<ChatMessage>, _ gen: Bool) throws -> [Int] {
                let text = try template.render(messages: Array(m), addGenerationPrompt: gen,
                                               bosToken: bundle.bosToken ?? "", eosToken: bundle.eosToken ?? "")
                return tok.encode(text, addSpecialTokens: false)
            }
            let ids = try render(messages[...], false)
            var labels = options.trainOnPrompt ? ids : [Int](repeating: ignore, count: ids.count)
            if options.trainOnPrompt { return (ids, labels) }
            func commonPrefix(_ a: [Int], _ b: [Int]) -> Int {
                var k = 0
                while k < a.count && k < b.count && a[k] == b[k] { k += 1 }
                return k
            }
            for (i, m) in messages.enumerated() where m.role == "assistant" {
                let before = i == 0 ? [] : try render(messages[..<i], true)
                let upto = try render(messages[...i], false)
                var start = before.count, end = upto.count
                let pb = commonPrefix(before, upto), pu = commonPrefix(upto, ids)
                if pb != before.count || pu != upto.count {
                    mismatch = true
                    start = min(pb, pu); end = pu
                }
                // Cut after the last end-of-turn id of the span.
                if let last = (start..<end).last(where: { endIds.contains(ids[$0]) }) { end = last + 1 }
                for t in start..<max(start, end) { labels[t] = ids[t] }
            }
            return (ids, labels)
        }
    }
}

public enum TrainingData {
    /// Loads a JSONL file (as the train split) or a folder with train.jsonl and optional valid.jsonl /
    /// test.jsonl.
    public static func load(path: String, tokenizer: TrainingTokenizer) throws -> TrainingDataSplits {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
            throw TrainingDataError.unreadable(file: path, reason: "no such file or directory")
        }
        if !isDir.boolValue { return TrainingDataSplits(train: try loadFile(path, tokenizer: tokenizer), valid: nil, test: nil) }
        let dir = URL(fileURLWithPath: path)
        func split(_ name: String) throws -> TrainingDataset? {
            let p = dir.appendingPathComponent(name).path
            return FileManager.default.fileExists(atPath: p) ? try loadFile(p, tokenizer: tokenizer) : nil
        }
        guard let train = try split("train.jsonl") else { throw TrainingDataError.missingSplit(directory: path, file: "train.jsonl") }
        return TrainingDataSplits(train: train, valid: try split("valid.jsonl"), test: try split("test.jsonl"))
    }

    /// Loads one JSONL file.
    public static func loadFile(_ file: String, tokenizer: TrainingTokenizer) throws -> TrainingDataset {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw TrainingDataError.unreadable(file: file, reason: "cannot open")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw TrainingDataError.unreadable(file: file, reason: "not UTF-8") }
        return try load(jsonl: text, file: file, tokenizer: tokenizer)
    }

    /// Loads JSONL text (`file` only names it in errors).
    public static func load(jsonl text: String, file: String, tokenizer: TrainingTokenizer) throws -> TrainingDataset {
        var summary = TrainingDataSummary()
        var examples: [TrainingExample] = []
        let opts = tokenizer.options
        var lineNumber = 0
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            lineNumber += 1
            do {
                guard let (record, format) = try DataFormats.parseLine(line, file: file, lineNumber: lineNumber) else { continue }
                summary.lines += 1
                var mismatch = false
                let tokenized: (ids: [Int], labels: [Int])
                do {
                    tokenized = try tokenizer.tokenize(record, mismatch: &mismatch)
                } catch let e as TemplateError {
                    throw TrainingDataError.badLine(file: file, line: lineNumber, reason: "chat template: \(e)")
                } catch let e as TrainingDataError {
                    if case let .unreadable(_, reason) = e { throw TrainingDataError.badLine(file: file, line: lineNumber, reason: reason) }
                    throw e
                }
                var (ids, labels) = tokenized
                guard !ids.isEmpty else { throw TrainingDataError.badLine(file: file, line: lineNumber, reason: "example has no tokens") }
                guard labels.contains(where: { $0 != TrainingExample.ignoreIndex }) else {
                    throw TrainingDataError.badLine(file: file, line: lineNumber, reason: "no trained token (no assistant reply / completion)")
                }
                if mismatch { summary.prefixMismatches += 1 }
                if ids.count > opts.maxSeqLen {
                    if opts.longExamples == .drop { summary.droppedTooLong += 1; continue }
                    ids.removeLast(ids.count - opts.maxSeqLen)
                    labels.removeLast(labels.count - opts.maxSeqLen)
                    // Position 0's label is never predicted: the example must keep a trained token after it.
                    guard labels.dropFirst().contains(where: { $0 != TrainingExample.ignoreIndex }) else {
                        summary.droppedTooLong += 1; continue
                    }
                    summary.truncated += 1
                }
                summary.formats[format.rawValue, default: 0] += 1
                let ex = TrainingExample(inputIds: ids, labels: labels, file: file, line: lineNumber)
                summary.examples += 1
                summary.tokens += ids.count
                summary.trainedTokens += ex.trainedTokenCount
                examples.append(ex)
            } catch let e as TrainingDataError {
                guard opts.skipBadLines, case .badLine = e else { throw e }
                summary.skipped.append(e)
            }
        }
        return TrainingDataset(examples: examples, summary: summary)
    }
}
