// Fixtures: scripts/make_training_fixtures.py (masking.json: chats rendered by transformers'
// apply_chat_template, tokenized by HF tokenizers, labels from character offsets of the assistant spans).
import Foundation
import Testing
import _TestSupport
@testable import QLoRA

@Suite struct TrainingDataTests {
    struct Missing: Error {}
    static func unwrap<T>(_ x: T?) throws -> T { guard let x else { throw Missing() }; return x }

    static func bundle(_ dir: String) throws -> TokenizerBundle {
        try TokenizerBundle.load(huggingFaceDirectory: Fixtures.path("tokenizer/\(dir)"))
    }

    @Test func multiTurnChatMaskingMatchesOffsetReference() throws {
        let data = try #require(FileManager.default.contents(atPath: Fixtures.path("training/masking.json")))
        let cases = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        #expect(cases.count == 6)
        for c in cases {
            let dir = (c["tokenizer"] as! String).replacingOccurrences(of: "tokenizer/", with: "")
            let tok = try TrainingTokenizer(bundle: try Self.bundle(dir))
            let messages = (c["messages"] as! [[String: String]]).map { ChatMessage(role: $0["role"]!, content: $0["content"]!) }
            var mismatch = false
            let (ids, labels) = try tok.tokenize(.chat(messages), mismatch: &mismatch)
            #expect(ids == c["input_ids"] as! [Int], "\(dir) \(messages.count) messages: ids")
            #expect(labels == c["labels"] as! [Int], "\(dir) \(messages.count) messages: labels")
            #expect(!mismatch)
            // Every assistant turn is trained: one closing EOS/end-of-turn label per assistant message.
            let eos = tok.bundle.tokenizer.eosTokenId!
            #expect(labels.filter { $0 == eos }.count == messages.filter { $0.role == "assistant" }.count)
        }
    }

    @Test func eosThatIsAlsoPadIsTrained() throws {
        let b = try Self.bundle("smollm2-reduced")
        #expect(b.tokenizer.padTokenId == b.tokenizer.eosTokenId)  // <|im_end|> is both
        let tok = try TrainingTokenizer(bundle: b)
        let ds = try TrainingData.load(jsonl: #"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}"#,
                                       file: "x.jsonl", tokenizer: tok)
        let ex = try #require(ds.examples.first)
        let lastTrained = try #require(ex.labels.lastIndex { $0 != TrainingExample.ignoreIndex })
        #expect(ex.labels[lastTrained] == b.tokenizer.eosTokenId)
        // Through the batcher (padding with the same id) the EOS keeps its label and pads get −100.
        var stream = try BatchStream(examples: ds.examples + [TrainingExample(inputIds: Array(5...84), labels: Array(5...84))],
                                     options: BatchingOptions(batchSize: 2, maxSeqLen: 128, padTokenId: b.tokenizer.padTokenId!))
        let batch = try Self.unwrap(stream.next())
        let row = try #require(batch.rows.first { $0.exampleIndices == [0] })
        #expect(row.labels[lastTrained] == b.tokenizer.eosTokenId)
        #expect(row.length < batch.width)
        #expect(row.labels[row.length...].allSatisfy { $0 == TrainingExample.ignoreIndex })
        #expect(row.inputIds[row.length...].allSatisfy { $0 == b.tokenizer.padTokenId })
    }

    @Test func everyFormatIsDetectedAndMasked() throws {
        let b = try Self.bundle("smollm2-reduced")
        let tok = try TrainingTokenizer(bundle: b)
        let eos = b.tokenizer.eosTokenId!
        let lines = [
            #"{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}"#,
            #"{"prompt": "What is 2+2?", "completion": " 4"}"#,
            #"{"text": "just some text"}"#,
            #"{"instruction": "Add", "input": "2 and 2", "output": "4"}"#,
            #"{"instruction": "Say hi", "output": "hi"}"#,
            ####"{"text": "### Human: Hello there ### Assistant: Hi! ### Human: Bye ### Assistant: Goodbye."}"####,
            "",
        ]
        let ds = try TrainingData.load(jsonl: lines.joined(separator: "\n"), file: "all.jsonl", tokenizer: tok)
        #expect(ds.summary.formats == ["messages": 1, "prompt-completion": 1, "text": 1, "alpaca": 2, "guanaco": 1])
        #expect(ds.examples.map(\.line) == [1, 2, 3, 4, 5, 6])
        // prompt/completion: source masked, target + EOS trained (SPEC §5.4).
        let pc = ds.examples[1]
        let src = b.tokenizer.encode("What is 2+2?", addSpecialTokens: true), tgt = b.tokenizer.encode(" 4", addSpecialTokens: false) + [eos]
        #expect(pc.inputIds == src + tgt)
        #expect(pc.labels == [Int](repeating: -100, count: src.count) + tgt)
        // text: everything trained, EOS appended.
        #expect(ds.examples[2].labels == ds.examples[2].inputIds && ds.examples[2].inputIds.last == eos)
        // alpaca: the exact qlora.py prompt.
        let alpacaSrc = b.tokenizer.encode(DataFormats.alpacaPrompt(instruction: "Add", input: "2 and 2"), addSpecialTokens: true)
        #expect(ds.examples[3].inputIds == alpacaSrc + b.tokenizer.encode("4", addSpecialTokens: false) + [eos])
        #expect(DataFormats.alpacaPrompt(instruction: "Say hi", input: "").hasSuffix("### Instruction:\nSay hi\n\n### Response: "))
        // guanaco → messages → chat template, both assistant turns trained.
        #expect(DataFormats.guanacoMessages("### Human: Hello there ### Assistant: Hi! ### Human: Bye ### Assistant: Goodbye.")
                == [ChatMessage(role: "user", content: "Hello there"), ChatMessage(role: "assistant", content: "Hi!"),
                    ChatMessage(role: "user", content: "Bye"), ChatMessage(role: "assistant", content: "Goodbye.")])
        let g = ds.examples[5]
        let trained = b.tokenizer.decode(g.labels.filter { $0 != -100 })
        #expect(trained == "Hi!<|im_end|>Goodbye.<|im_end|>")
        let chatTrained = b.tokenizer.decode(ds.examples[0].labels.filter { $0 != -100 })
        #expect(chatTrained == "A<|im_end|>")
        // trainOnPrompt trains everything.
        var o = TrainingDataOptions(); o.trainOnPrompt = true
        let all = try TrainingData.load(jsonl: lines[0], file: "x", tokenizer: try TrainingTokenizer(bundle: b, options: o))
        #expect(all.examples[0].labels == all.examples[0].inputIds)
    }

    @Test func badLinesNameFileAndLine() throws {
        let tok = try TrainingTokenizer(bundle: try Self.bundle("smollm2-reduced"))
        let good = #"{"text": "ok"}"#
        let bad: [(String, String)] = [
            (#"{"text": "ok""#, "invalid JSON"),
            (#"{"prompt": 5, "completion": "x"}"#, "'prompt' must be a string"),
            (#"{"messages": [{"role": "user", "content": "only a question"}]}"#, "no trained token"),
            (#"{"messages": []}"#, "empty"),
            (#"{"messages": [{"role": "robot", "content": "x"}]}"#, "robot"),
            (#"{"foo": "bar"}"#, "unknown layout"),
            (#"[1, 2]"#, "expected a JSON object"),
            (#"{"text": ""}"#, "empty"),
        ]
        for (line, why) in bad {
            do {
                _ = try TrainingData.load(jsonl: [good, "", line, good].joined(separator: "\n"), file: "d.jsonl", tokenizer: tok)
                Issue.record("no error for \(line)")
            } catch let TrainingDataError.badLine(file, lineNo, reason) {
                #expect(file == "d.jsonl" && lineNo == 3)
                #expect(reason.contains(why), "\(reason)")
            }
        }
        var o = TrainingDataOptions(); o.skipBadLines = true
        let ds = try TrainingData.load(jsonl: ([good] + bad.map(\.0) + [good]).joined(separator: "\n"), file: "d.jsonl",
                                       tokenizer: try TrainingTokenizer(bundle: try Self.bundle("smollm2-reduced"), options: o))
        #expect(ds.examples.count == 2)
        #expect(ds.summary.skipped.count == bad.count)
        #expect(ds.summary.skipped.first == .badLine(file: "d.jsonl", line: 2, reason: "invalid JSON ({\"text\": \"ok\")"))
    }

    @Test func maxSeqLenTruncatesOrDrops() throws {
        let b = try Self.bundle("smollm2-reduced")
        let long = "{\"text\": \"" + String(repeating: "hello world ", count: 30) + "\"}", short = #"{"text": "hi"}"#
        var o = TrainingDataOptions(maxSeqLen: 16)
        let t = try TrainingData.load(jsonl: [long, short].joined(separator: "\n"), file: "f", tokenizer: try TrainingTokenizer(bundle: b, options: o))
        #expect(t.summary.truncated == 1 && t.summary.droppedTooLong == 0 && t.examples.count == 2)
        #expect(t.examples[0].count == 16)
        o.longExamples = .drop
        let d = try TrainingData.load(jsonl: [long, short].joined(separator: "\n"), file: "f", tokenizer: try TrainingTokenizer(bundle: b, options: o))
        #expect(d.summary.droppedTooLong == 1 && d.summary.truncated == 0 && d.examples.count == 1)
    }

    @Test func folderWithSplits() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("qlora-data-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let tok = try TrainingTokenizer(bundle: try Self.bundle("tiny-spm"))
        #expect(throws: TrainingDataError.missingSplit(directory: dir.path, file: "train.jsonl")) { try TrainingData.load(path: dir.path, tokenizer: tok) }
        try #"{"text": "a b"}"#.write(to: dir.appendingPathComponent("train.jsonl"), atomically: true, encoding: .utf8)
        try "{\"text\": \"c\"}\n{\"text\": \"d\"}\n".write(to: dir.appendingPathComponent("valid.jsonl"), atomically: true, encoding: .utf8)
        let s = try TrainingData.load(path: dir.path, tokenizer: tok)
        #expect(s.train.examples.count == 1 && s.valid?.examples.count == 2 && s.test == nil)
        #expect(s.valid?.examples[1].line == 2 && s.valid?.examples[1].file.hasSuffix("valid.jsonl") == true)
    }

    // MARK: - Batching

    static func syntheticExamples(_ n: Int, seed: UInt64) -> [TrainingExample] {
        var rng = SeededRandom(seed: seed)
        return (0..<n).map { i in
            let len = 2 + Int(rng.next() % 30)
            let ids = (0..<len).map { 1000 * i + $0 }
            return TrainingExample(inputIds: ids, labels: ids.map { $0 % 3 == 0 ? -100 : $0 }, file: "s", line: i + 1)
        }
    }

    @Test func packingNeverAttendsAcrossExamples() throws {
        let ex = Self.syntheticExamples(40, seed: 3)
        var stream = try BatchStream(examples: ex, options: BatchingOptions(batchSize: 3, maxSeqLen: 64, mode: .pack, padTokenId: 0, seed: 9))
        var seen: [Int] = []
        for _ in 0..<stream.batchesPerEpoch {
            let batch = try Self.unwrap(stream.next())
            #expect(batch.width == 64)
            for row in batch.rows {
                #expect(row.inputIds.count == 64 && row.labels.count == 64 && row.segmentStarts.count == 64)
                var t = 0
                for i in row.exampleIndices {
                    let e = ex[i]
                    #expect(Array(row.inputIds[t..<(t + e.count)]) == e.inputIds)
                    #expect(row.segmentStarts[t..<(t + e.count)].allSatisfy { $0 == t })
                    #expect(row.labels[t] == -100)  // segment start never a target
                    #expect(Array(row.labels[(t + 1)..<(t + e.count)]) == Array(e.labels.dropFirst()))
                    t += e.count
                }
                #expect(t == row.length)
                for p in row.length..<64 { #expect(row.segmentStarts[p] == p && row.labels[p] == -100) }
                // Attention: token q may see s iff segmentStarts[q] <= s <= q; that never reaches a
                // token of another example.
                let owner = { (q: Int) -> Int in var t = 0; for (k, i) in row.exampleIndices.enumerated() { t += ex[i].count; if q < t { return k } }; return -1 }
                for q in stride(from: 0, to: row.length, by: 3) {
                    for s in row.segmentStarts[q]...q { #expect(owner(s) == owner(q)) }
                    if row.segmentStarts[q] > 0 { #expect(owner(row.segmentStarts[q] - 1) != owner(q)) }
                }
                seen += row.exampleIndices
            }
        }
        #expect(seen.sorted() == Array(0..<40))  // every example once per epoch
    }

    @Test func lengthGroupingIsSeededAndPutsLongestFirst() throws {
        let lengths = (0..<200).map { ($0 * 37) % 101 + 1 }
        var r1 = SeededRandom(seed: 1), r2 = SeededRandom(seed: 1), r3 = SeededRandom(seed: 2)
        let a = lengthGroupedIndices(lengths: lengths, batchSize: 4, rng: &r1)
        #expect(a == lengthGroupedIndices(lengths: lengths, batchSize: 4, rng: &r2))
        #expect(a != lengthGroupedIndices(lengths: lengths, batchSize: 4, rng: &r3))
        #expect(a.sorted() == Array(0..<200))
        #expect(lengths[a[0]] == lengths.max())
        // Mega-batches of min(200/16, 50)·4 = 48, each sorted descending (except the swapped front).
        for s in stride(from: 0, to: 200, by: 48) {
            let g = Array(a[s..<min(s + 48, 200)]).map { lengths[$0] }
            #expect(Array(g.dropFirst()) == Array(g.dropFirst()).sorted(by: >))
        }
        // Padding is small: grouped batches waste far less than random ones.
        let ex = Self.syntheticExamples(200, seed: 4)
        func padding(_ mode: BatchingOptions.Mode) throws -> Int {
            var s = try BatchStream(examples: ex, options: BatchingOptions(batchSize: 8, maxSeqLen: 64, mode: mode, padTokenId: 0))
            var pad = 0
            for _ in 0..<s.batchesPerEpoch { let b = try Self.unwrap(s.next()); pad += b.rows.reduce(0) { $0 + b.width - $1.length } }
            return pad
        }
        #expect(try padding(.groupByLength) * 3 < padding(.shuffled))
    }

    @Test func cursorRestoreReproducesTheBatchSequence() throws {
        let ex = Self.syntheticExamples(30, seed: 5)
        for mode in [BatchingOptions.Mode.groupByLength, .shuffled, .pack] {
            let opts = BatchingOptions(batchSize: 4, maxSeqLen: 48, mode: mode, padTokenId: 0, seed: 11)
            var a = try BatchStream(examples: ex, options: opts)
            let per = a.batchesPerEpoch
            for _ in 0..<(per + 2) { _ = a.next() }  // into epoch 1
            let saved = try JSONEncoder().encode(a.cursor)
            var expected: [TrainingBatch] = []
            for _ in 0..<(2 * per) { expected.append(try Self.unwrap(a.next())) }
            var b = try BatchStream(examples: ex, options: opts, cursor: try JSONDecoder().decode(DataCursor.self, from: saved))
            var got: [TrainingBatch] = []
            for _ in 0..<(2 * per) { got.append(try Self.unwrap(b.next())) }
            #expect(got == expected, "\(mode)")
            #expect(a.cursor == b.cursor && a.cursor.epoch == 3)
            // Epochs differ in order.
            var c = try BatchStream(examples: ex, options: opts)
            let e0 = (0..<per).map { _ in c.next()!.rows.map(\.exampleIndices) }
            let e1 = (0..<per).map { _ in c.next()!.rows.map(\.exampleIndices) }
            #expect(e0 != e1)
        }
    }
}
