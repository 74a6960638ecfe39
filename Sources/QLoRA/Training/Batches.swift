// Batching: length-grouped padded batches or packed rows, and a resumable data cursor.

/// One row of a batch. `segmentStarts[t]` is the index in the row of the first token of the example
/// token t belongs to: token t may attend to tokens s with segmentStarts[t] ≤ s ≤ t (no attention
/// across packed examples); its RoPE position is t − segmentStarts[t]. Padding tokens form their
/// own one-token segments (segmentStarts[t] = t) and have label −100.
public struct TrainingRow: Equatable, Sendable {
    public var inputIds: [Int]
    public var labels: [Int]
    public var segmentStarts: [Int]
    /// Number of real (non-padding) tokens; they come first.
    public var length: Int
    /// Indices (into the dataset) of the examples in this row, in order.
    public var exampleIndices: [Int]
}

public struct TrainingBatch: Equatable, Sendable {
    public var rows: [TrainingRow]
    /// Row width (all rows have it).
    public var width: Int
    /// Trained label tokens that enter the shifted loss (label ≠ −100 at positions ≥ 1 of a segment).
    public var labelTokenCount: Int {
        rows.reduce(0) { acc, r in
            var n = 0
            for t in 0..<r.length where r.labels[t] != TrainingExample.ignoreIndex && r.segmentStarts[t] != t { n += 1 }
            return acc + n
        }
    }
}

public struct BatchingOptions: Sendable, Equatable {
    public enum Mode: Sendable, Equatable {
        /// Length-grouped batches (HF `get_length_grouped_indices`), each padded to its longest row
        /// rounded up to `padToMultipleOf`.
        case groupByLength
        /// Random order, each padded batch.
        case shuffled
        /// Examples packed into rows of exactly `maxSeqLen` tokens (right-padded at the end).
        case pack
    }
    public var batchSize: Int
    public var maxSeqLen: Int
    public var mode: Mode
    public var padToMultipleOf: Int
    public var padTokenId: Int
    public var seed: UInt64
    public var dropLast: Bool
    public init(batchSize: Int, maxSeqLen: Int, mode: Mode = .groupByLength, padToMultipleOf: Int = 1,
                padTokenId: Int, seed: UInt64 = 42, dropLast: Bool = false) {
        self.batchSize = batchSize; self.maxSeqLen = maxSeqLen; self.mode = mode
        self.padToMultipleOf = max(1, padToMultipleOf); self.padTokenId = padTokenId; self.seed = seed; self.dropLast = dropLast
    }
}

/// Where the batch stream is: checkpoint this and restore it to resume bit-identically.
public struct DataCursor: Codable, Equatable, Sendable {
    public var epoch: Int
    /// Next batch index within the epoch.
    public var batchIndex: Int
    /// The RNG state at the start of `epoch` (the epoch's order is derived from it).
    public var epochRNGState: [UInt64]
}

/// HF `get_length_grouped_indices` (SPEC §5.4), with our seeded RNG instead of torch.randperm:
/// random permutation → mega-batches of `megaBatchMult · batchSize` (default min(n / (4·batchSize), 50),
/// at least 1) → each sorted by length descending (stable) → the longest element overall swapped to
/// the front of the first mega-batch.
public func lengthGroupedIndices(lengths: [Int], batchSize: Int, megaBatchMult: Int? = nil,
                                 rng: inout SeededRandom) -> [Int] {
    let n = lengths.count
    guard n > 0 else { return [] }
    let mult = max(1, megaBatchMult ?? min(n / (4 * max(1, batchSize)), 50))
    let perm = randomPermutation(n, rng: &rng)
    let mega = mult * max(1, batchSize)
    var groups: [[Int]] = stride(from: 0, to: n, by: mega).map { s in
        Array(perm[s..<min(s + mega, n)]).enumerated().sorted { a, b in
            lengths[a.element] != lengths[b.element] ? lengths[a.element] > lengths[b.element] : a.offset < b.offset
        }.map(\.element)
    }
    var best = 0
    for g in 1..<groups.count where lengths[groups[g][0]] > lengths[groups[best][0]] { best = g }
    (groups[0][0], groups[best][0]) = (groups[best][0], groups[0][0])
    return groups.flatMap { $0 }
}

/// Fisher–Yates over 0..<n with `rng` (uniform via rejection-free multiply-shift on 64 bits).
public func randomPermutation(_ n: Int, rng: inout SeededRandom) -> [Int] {
    var p = Array(0..<n)
    if n < 2 { return p }
    for i in stride(from: n - 1, to: 0, by: -1) {
        let j = Int(UInt64(i + 1).multipliedFullWidth(by: rng.next()).high)
        p.swapAt(i, j)
    }
    return p
}

/// The epoch-by-epoch batch stream over a dataset.
public struct BatchStream: Sendable {
    public let examples: [TrainingExample]
    public let options: BatchingOptions
    public private(set) var cursor: DataCursor
    private var plan: [[Int]] = []      // this epoch: batches of example indices (pack: rows of indices, grouped later)
    private var nextEpochState: [UInt64] = []

    public init(examples: [TrainingExample], options: BatchingOptions, cursor: DataCursor? = nil) throws {
        guard options.batchSize > 0, options.maxSeqLen > 0 else {
            throw TrainingDataError.unreadable(file: "<batching>", reason: "batchSize \(options.batchSize) and maxSeqLen \(options.maxSeqLen) must be positive")
        }
        if let long = examples.firstIndex(where: { $0.count > options.maxSeqLen || $0.count == 0 }) {
            throw TrainingDataError.badLine(file: examples[long].file, line: examples[long].line,
                                            reason: "example has \(examples[long].count) tokens (expected 1…\(options.maxSeqLen))")
        }
        self.examples = examples
        self.options = options
        self.cursor = cursor ?? DataCursor(epoch: 0, batchIndex: 0, epochRNGState: SeededRandom(seed: options.seed).state)
        guard self.cursor.epochRNGState.count == 4 else {
            throw TrainingDataError.unreadable(file: "<cursor>", reason: "epochRNGState has \(self.cursor.epochRNGState.count) words (expected 4)")
        }
        makePlan()
    }

    /// Batches per epoch.
    public var batchesPerEpoch: Int { plan.count }

    private mutating func makePlan() {
        var rng = SeededRandom(state: cursor.epochRNGState)
        let bs = options.batchSize
        var groups: [[Int]]
        switch options.mode {
        case .groupByLength, .shuffled:
            let order = options.mode == .shuffled ? randomPermutation(examples.count, rng: &rng)
                : lengthGroupedIndices(lengths: examples.map(\.count), batchSize: bs, rng: &rng)
            groups = stride(from: 0, to: order.count, by: bs).map { Array(order[$0..<min($0 + bs, order.count)]) }
        case .pack:
            // Rows first (greedy in shuffled order), then batches of rows.
            let order = randomPermutation(examples.count, rng: &rng)
            var rows: [[Int]] = []
            var current: [Int] = [], used = 0
            for i in order {
                let n = examples[i].count
                if used + n > options.maxSeqLen, !current.isEmpty { rows.append(current); current = []; used = 0 }
                current.append(i); used += n
            }
            if !current.isEmpty { rows.append(current) }
            groups = rows.map { [$0.count] + $0 }  // encoded row: count then indices; batches formed in batch(at:)
            groups = stride(from: 0, to: groups.count, by: bs).map { s in groups[s..<min(s + bs, groups.count)].flatMap { $0 } }
        }
        if options.dropLast, let last = groups.last, options.mode != .pack, last.count < bs { groups.removeLast() }
        plan = groups
        nextEpochState = rng.state
    }

    /// The next batch; moves to the next epoch (new order) when this one is done. Nil only for an
    /// empty dataset.
    public mutating func next() -> TrainingBatch? {
        if plan.isEmpty { return nil }
        if cursor.batchIndex >= plan.count {
            cursor = DataCursor(epoch: cursor.epoch + 1, batchIndex: 0, epochRNGState: nextEpochState)
            makePlan()
        }
        let b = batch(plan[cursor.batchIndex])
        cursor.batchIndex += 1
        return b
    }

    private func batch(_ entry: [Int]) -> TrainingBatch {
        let ignore = TrainingExample.ignoreIndex
        var rowsOfIndices: [[Int]] = []
        if options.mode == .pack {
            var k = 0
            while k < entry.count { let c = entry[k]; rowsOfIndices.append(Array(entry[(k + 1)..<(k + 1 + c)])); k += 1 + c }
        } else {
            rowsOfIndices = entry.map { [$0] }
        }
        let longest = rowsOfIndices.map { $0.reduce(0) { $0 + examples[$1].count } }.max() ?? 0
        let m = options.padToMultipleOf
        let width = options.mode == .pack ? options.maxSeqLen : max(longest, min(options.maxSeqLen, (longest + m - 1) / m * m))
        var rows: [TrainingRow] = []
        for indices in rowsOfIndices {
            var ids: [Int] = [], labels: [Int] = [], starts: [Int] = []
            ids.reserveCapacity(width); labels.reserveCapacity(width); starts.reserveCapacity(width)
            for i in indices {
                let s = ids.count
                ids += examples[i].inputIds
                labels += examples[i].labels
                // The first token of a segment is never a prediction target (nothing before it in the
                // segment); masking it stops the previous example's last token from predicting it.
                labels[s] = ignore
                starts += [Int](repeating: s, count: examples[i].count)
            }
            let length = ids.count
            for t in length..<width { ids.append(options.padTokenId); labels.append(ignore); starts.append(t) }
            rows.append(TrainingRow(inputIds: ids, labels: labels, segmentStarts: starts, length: length, exampleIndices: indices))
        }
        return TrainingBatch(rows: rows, width: width)
    }
}
