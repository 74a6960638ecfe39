// Training checkpoints: layout, trainer_state.json, atomic folder commits, discovery and pruning.
//
// A run folder DIR holds:
//   DIR/metrics.jsonl                         one JSON line per train step / validation
//   DIR/adapter_model.safetensors, adapter_config.json   the latest adapter (PEFT)
//   DIR/checkpoint-<step>/                    complete checkpoints (the newest `saveTotalLimit`)
//       adapter_model.safetensors, adapter_config.json   a loadable PEFT adapter on its own
//       optimizer.safetensors                 AdamW moments (F32, or U8 codes + F32 absmax), step
//       trainer_state.json                    step, data cursor, dropout counter, schedule, best
//                                             validation, options and data fingerprints
//   DIR/best/                                 the adapter of the best validation loss (+ best.json)
// Every folder is built as DIR/.tmp-…, its files fsynced, then renamed into place (and DIR
// fsynced), so a crash leaves either the old folder or the new one, never a partial one; stale
// .tmp-… folders are removed when a run starts.
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The contents of a checkpoint's trainer_state.json.
public struct TrainerCheckpointState: Codable, Equatable, Sendable {
    public static let formatName = "swift-qlora-trainer-state"
    public static let currentVersion = 1

    public struct Cursor: Codable, Equatable, Sendable {
        public var epoch: Int
        public var batchIndex: Int
        /// The four xoshiro256** words at the start of `epoch`, as 16-digit hex.
        public var epochRNGState: [String]
        public init(_ c: DataCursor) {
            epoch = c.epoch; batchIndex = c.batchIndex
            epochRNGState = c.epochRNGState.map { hex64($0) }
        }
        public func dataCursor(file: String) throws -> DataCursor {
            let words = epochRNGState.compactMap { UInt64($0, radix: 16) }
            guard words.count == 4, epochRNGState.count == 4, epoch >= 0, batchIndex >= 0 else {
                throw TrainerError.invalidCheckpoint(file: file, field: "data_cursor",
                                                     reason: "epoch \(epoch), batch \(batchIndex), rng \(epochRNGState) (expected 4 hex words)")
            }
            return DataCursor(epoch: epoch, batchIndex: batchIndex, epochRNGState: words)
        }
    }

    public struct Schedule: Codable, Equatable, Sendable {
        public var kind: String
        public var baseLearningRate: Double
        public var totalSteps: Int
        public var warmupSteps: Int
    }

    public var format: String = formatName
    public var version: Int = currentVersion
    /// Optimizer steps done.
    public var step: Int
    public var dataCursor: Cursor
    /// `LoRAModel.step` (selects the dropout masks), hex.
    public var dropoutStep: String
    public var schedule: Schedule
    public var trainedTokens: Int
    public var firstLoss: Double?
    public var lastLoss: Double?
    public var lastValidLoss: Double?
    public var bestValidLoss: Double?
    public var bestStep: Int?
    public var validationsSinceImprovement: Int
    /// Settings a resumed run must share (field → value as text; see `Trainer.resumeFingerprint`).
    public var fingerprint: [String: String]
    /// Other settings of the run that wrote it, for the record (free to change on resume).
    public var settings: [String: String]

    enum CodingKeys: String, CodingKey {
        case format, version, step, schedule, fingerprint, settings
        case dataCursor = "data_cursor", dropoutStep = "dropout_step", trainedTokens = "trained_tokens"
        case firstLoss = "first_loss", lastLoss = "last_loss", lastValidLoss = "last_valid_loss"
        case bestValidLoss = "best_valid_loss", bestStep = "best_step"
        case validationsSinceImprovement = "validations_since_improvement"
    }

    static func hex64(_ x: UInt64) -> String {
        let s = String(x, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}

/// Finding, reading and writing checkpoint folders.
public enum Checkpoint {
    public static let directoryPrefix = "checkpoint-"
    public static let bestDirectoryName = "best"
    public static let bestInfoFileName = "best.json"
    public static let optimizerFileName = "optimizer.safetensors"
    public static let stateFileName = "trainer_state.json"
    /// Prefix of folders under construction (and of replaced ones awaiting deletion).
    public static let temporaryPrefix = ".tmp-"

    /// The step of a folder named checkpoint-<step>, else nil.
    public static func step(ofDirectoryNamed name: String) -> Int? {
        guard name.hasPrefix(directoryPrefix), let s = Int(name.dropFirst(directoryPrefix.count)), s >= 0,
              name == directoryPrefix + String(s) else { return nil }
        return s
    }

    /// True when `path` holds the four files of a checkpoint.
    public static func isComplete(_ path: String) -> Bool {
        let fm = FileManager.default
        return [AdapterFile.weightsFileName, AdapterFile.configFileName, optimizerFileName, stateFileName]
            .allSatisfy { fm.fileExists(atPath: (path as NSString).appendingPathComponent($0)) }
    }

    /// The complete checkpoints of a run folder, oldest (lowest step) first.
    public static func list(in directory: String) -> [(step: Int, path: String)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.compactMap { name -> (Int, String)? in
            guard let s = step(ofDirectoryNamed: name) else { return nil }
            let path = (directory as NSString).appendingPathComponent(name)
            return isComplete(path) ? (s, path) : nil
        }.sorted { $0.0 < $1.0 }
    }

    /// The newest complete checkpoint of a run folder.
    public static func latest(in directory: String) -> String? { list(in: directory).last?.path }

    /// A `--resume` argument as a checkpoint folder: the folder itself when it holds trainer_state.json,
    /// else the newest complete checkpoint-<step> inside it.
    public static func resolve(_ path: String) throws -> String {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw TrainerError.noCheckpoint(directory: path)
        }
        if FileManager.default.fileExists(atPath: (path as NSString).appendingPathComponent(stateFileName)) {
            guard isComplete(path) else {
                throw TrainerError.invalidCheckpoint(file: path, field: "files",
                                                     reason: "incomplete (needs \(AdapterFile.weightsFileName), \(AdapterFile.configFileName), \(optimizerFileName), \(stateFileName))")
            }
            return path
        }
        guard let latest = latest(in: path) else { throw TrainerError.noCheckpoint(directory: path) }
        return latest
    }

    /// Reads and checks a checkpoint's trainer_state.json.
    public static func readState(checkpoint directory: String) throws -> TrainerCheckpointState {
        let file = (directory as NSString).appendingPathComponent(stateFileName)
        guard let data = FileManager.default.contents(atPath: file) else {
            throw TrainerError.invalidCheckpoint(file: file, field: "(file)", reason: "missing or unreadable")
        }
        let state: TrainerCheckpointState
        do { state = try JSONDecoder().decode(TrainerCheckpointState.self, from: data) } catch {
            throw TrainerError.invalidCheckpoint(file: file, field: "(json)", reason: "\(error)")
        }
        guard state.format == TrainerCheckpointState.formatName else {
            throw TrainerError.invalidCheckpoint(file: file, field: "format", reason: "\(state.format) (expected \(TrainerCheckpointState.formatName))")
        }
        guard state.version == TrainerCheckpointState.currentVersion else {
            throw TrainerError.invalidCheckpoint(file: file, field: "version", reason: "\(state.version) (expected \(TrainerCheckpointState.currentVersion))")
        }
        guard state.step >= 0 else { throw TrainerError.invalidCheckpoint(file: file, field: "step", reason: "\(state.step) (expected ≥ 0)") }
        guard UInt64(state.dropoutStep, radix: 16) != nil else {
            throw TrainerError.invalidCheckpoint(file: file, field: "dropout_step", reason: "\(state.dropoutStep) (expected hex)")
        }
        _ = try state.dataCursor.dataCursor(file: file)
        return state
    }

    // MARK: - File system helpers

    /// Encodes `state` as sorted, indented JSON.
    static func encode(_ state: TrainerCheckpointState) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(state) + Data("\n".utf8)
    }

    /// Creates `path` with `bytes` and fsyncs it (not atomic by itself: used inside temporary folders).
    static func writeSynced(_ bytes: Data, to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw TrainerError.cannotWrite(file: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        try bytes.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw TrainerError.cannotWrite(file: path, reason: String(cString: strerror(errno)))
                }
                done += n
            }
        }
        guard fsync(fd) == 0 else { throw TrainerError.cannotWrite(file: path, reason: "fsync: \(String(cString: strerror(errno)))") }
    }

    /// fsyncs a file or folder already written (its data reaches the disk whichever descriptor wrote it).
    static func sync(_ path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw TrainerError.cannotWrite(file: path, reason: "open for fsync: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw TrainerError.cannotWrite(file: path, reason: "fsync: \(String(cString: strerror(errno)))") }
    }

    /// A fresh, empty temporary folder inside `directory` for building `name`.
    static func makeTemporary(in directory: String, for name: String) throws -> String {
        let path = (directory as NSString).appendingPathComponent(
            "\(temporaryPrefix)\(name)-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))")
        do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false) } catch {
            throw TrainerError.cannotWrite(file: path, reason: "\(error)")
        }
        return path
    }

    /// Moves the finished temporary folder `temp` to `directory/name`, replacing an existing folder of
    /// that name (moved aside first, deleted after), and fsyncs `directory`.
    static func commit(_ temp: String, in directory: String, as name: String) throws {
        try sync(temp)
        let target = (directory as NSString).appendingPathComponent(name)
        let fm = FileManager.default
        var aside: String? = nil
        if fm.fileExists(atPath: target) {
            let old = (directory as NSString).appendingPathComponent(
                "\(temporaryPrefix)old-\(name)-\(getpid())-\(String(UInt32.random(in: 0...UInt32.max), radix: 16))")
            guard rename(target, old) == 0 else {
                throw TrainerError.cannotWrite(file: target, reason: "rename to \(old): \(String(cString: strerror(errno)))")
            }
            aside = old
        }
        guard rename(temp, target) == 0 else {
            let why = String(cString: strerror(errno))
            if let old = aside { _ = rename(old, target) }
            throw TrainerError.cannotWrite(file: target, reason: "rename from \(temp): \(why)")
        }
        try sync(directory)
        if let old = aside { try? fm.removeItem(atPath: old) }
    }

    /// Removes leftovers of an interrupted save: temporary folders and files (`.tmp-…`, and the
    /// `*.tmp-*` files of atomic file writes). A folder moved aside by a replace that never
    /// finished is moved back first when its target is missing.
    public static func removeStaleTemporaries(in directory: String) {
        let fm = FileManager.default
        let names = (try? fm.contentsOfDirectory(atPath: directory)) ?? []
        for name in names where name.hasPrefix(temporaryPrefix + "old-") {
            // .tmp-old-<name>-<pid>-<rand>: <name> may itself contain dashes.
            let rest = name.dropFirst((temporaryPrefix + "old-").count)
            let parts = rest.split(separator: "-", omittingEmptySubsequences: false)
            guard parts.count >= 3 else { continue }
            let original = parts.dropLast(2).joined(separator: "-")
            let target = (directory as NSString).appendingPathComponent(original)
            if !fm.fileExists(atPath: target) {
                _ = rename((directory as NSString).appendingPathComponent(name), target)
            }
        }
        for name in (try? fm.contentsOfDirectory(atPath: directory)) ?? [] {
            let isTempFolder = name.hasPrefix(temporaryPrefix)
            let isTempFile = (name.hasPrefix(AdapterFile.weightsFileName + ".tmp-") || name.hasPrefix(AdapterFile.configFileName + ".tmp-")
                              || name.hasPrefix(Trainer.metricsFileName + ".tmp-"))
            if isTempFolder || isTempFile { try? fm.removeItem(atPath: (directory as NSString).appendingPathComponent(name)) }
        }
    }

    /// Deletes the oldest complete checkpoints beyond `keep` (0 keeps all).
    @discardableResult
    static func prune(in directory: String, keep: Int) -> [Int] {
        guard keep > 0 else { return [] }
        let all = list(in: directory)
        guard all.count > keep else { return [] }
        var removed: [Int] = []
        for c in all.prefix(all.count - keep) {
            // Rename first so a half-deleted folder never looks like a checkpoint.
            let aside = (directory as NSString).appendingPathComponent("\(temporaryPrefix)delete-\(directoryPrefix)\(c.step)-\(getpid())")
            if rename(c.path, aside) == 0 { try? FileManager.default.removeItem(atPath: aside); removed.append(c.step) }
        }
        return removed
    }
}
