import ArgumentParser
import Foundation
import Yams

/// `qlora train --config FILE.yaml`: a YAML mapping of flag names to values, turned into
/// command-line arguments placed before the real ones, so that a flag given on the command line
/// overrides the file (single-value options keep their last value; every on/off flag of `train`
/// has a `--no-` form).
///
///     model: SmolLM2-135M-Instruct.Q4_1.gguf   # any flag, by its long name
///     data: data/json-extraction
///     output: runs/extract
///     learning-rate: 2e-4                      # or learning_rate
///     target-modules: [q_proj, v_proj]         # a list is joined with commas
///     pack: true                               # flags take true / false
///
/// Keys are the flags' long names in kebab-case or snake_case. Unknown keys, values of the wrong
/// shape and values the flag rejects are errors naming the file, the line, the key and the value.
/// Relative paths in the file are relative to the working directory, as on the command line.
enum TrainConfigFile {
    enum Error: Swift.Error, CustomStringConvertible, Equatable {
        case cannotRead(file: String, reason: String)
        case notYAML(file: String, reason: String)
        case notMapping(file: String)
        case unknownKey(file: String, line: Int, key: String, value: String, suggestion: String?)
        case badValue(file: String, line: Int, key: String, value: String, reason: String)
        case repeatedOption(String)

        var description: String {
            switch self {
            case let .cannotRead(file, reason): return "\(file): cannot read the config file: \(reason)"
            case let .notYAML(file, reason): return "\(file): not valid YAML: \(reason)"
            case let .notMapping(file): return "\(file): a config file must be a YAML mapping of flag names to values"
            case let .unknownKey(file, line, key, value, suggestion):
                return "\(file):\(line): unknown key '\(key)' (value \(value))"
                    + (suggestion.map { "; did you mean '\($0)'?" } ?? "; keys are the long names of the flags in `qlora train --help`")
            case let .badValue(file, line, key, value, reason): return "\(file):\(line): key '\(key)' = \(value): \(reason)"
            case let .repeatedOption(name): return "\(name) is given more than once"
            }
        }
    }

    /// What the YAML keys may name: the long names of a command's options and flags.
    struct Spec {
        enum Kind { case option(repeating: Bool), flag }
        var kinds: [String: Kind] = [:]
        /// Options without a default; given placeholder values when one key is checked alone.
        var required: [String] = []

        /// Read from the command's own argument definitions (ArgumentParser's JSON help dump), so
        /// every flag the command has is a key, with no second list to keep in step.
        init(_ command: ParsableArguments.Type) {
            guard let object = try? JSONSerialization.jsonObject(with: Data(command._dumpHelp().utf8)) as? [String: Any],
                  let info = object["command"] as? [String: Any],
                  let arguments = info["arguments"] as? [[String: Any]] else { return }
            for argument in arguments {
                let names = (argument["names"] as? [[String: Any]] ?? [])
                    .filter { $0["kind"] as? String == "long" }.compactMap { $0["name"] as? String }
                let kind: Kind
                switch argument["kind"] as? String {
                case "option": kind = .option(repeating: argument["isRepeating"] as? Bool ?? false)
                case "flag": kind = .flag
                default: continue
                }
                for name in names where !Spec.excluded.contains(name) { kinds[name] = kind }
                if case .option = kind, argument["isOptional"] as? Bool == false, let name = names.first {
                    required.append(name)
                }
            }
        }

        /// Not settable from a file.
        static let excluded: Set<String> = ["config", "help", "version", "experimental-dump-help"]
    }

    struct Entry {
        var key: String
        var line: Int
        var valueText: String
        var arguments: [String]
    }

    /// The arguments that the YAML text stands for, one entry per key in file order.
    static func entries(yaml text: String, file: String, spec: Spec) throws -> [Entry] {
        let root: Node?
        do { root = try Yams.compose(yaml: text) } catch {
            throw Error.notYAML(file: file, reason: "\(error)".replacingOccurrences(of: "\n", with: " "))
        }
        guard let root else { return [] }   // an empty file
        guard let mapping = root.mapping else {
            if root.null != nil { return [] }
            throw Error.notMapping(file: file)
        }
        var entries: [Entry] = []
        var seen: [String: String] = [:]
        for (keyNode, value) in mapping {
            let line = keyNode.mark?.line ?? 0
            let written = keyNode.scalar?.string ?? "\(keyNode.any)"
            let valueText = describe(value)
            let key = written.replacingOccurrences(of: "_", with: "-")
            if let earlier = seen[key] {
                throw Error.badValue(file: file, line: line, key: written, value: valueText,
                                     reason: "the same setting as '\(earlier)' earlier in the file")
            }
            seen[key] = written
            func bad(_ reason: String) -> Error { .badValue(file: file, line: line, key: written, value: valueText, reason: reason) }

            var arguments: [String]
            switch spec.kinds[key] {
            case .flag?:
                guard let on = boolValue(value) else { throw bad("expected true or false") }
                if on {
                    arguments = ["--\(key)"]
                } else if key.hasPrefix("no-"), case .flag? = spec.kinds[String(key.dropFirst(3))] {
                    arguments = ["--\(key.dropFirst(3))"]
                } else if case .flag? = spec.kinds["no-\(key)"] {
                    arguments = ["--no-\(key)"]
                } else {
                    arguments = []   // a plain flag, off by default
                }
            case let .option(repeating)?:
                if value.mapping != nil { throw bad("expected a value, not a mapping") }
                if let sequence = value.sequence {
                    var items: [String] = []
                    for item in sequence {
                        guard let s = item.scalar, item.null == nil else { throw bad("expected a list of plain values") }
                        items.append(s.string)
                    }
                    if items.isEmpty { throw bad("the list is empty") }
                    arguments = repeating ? items.flatMap { ["--\(key)", $0] } : ["--\(key)", items.joined(separator: ",")]
                } else {
                    guard let s = value.scalar, !(value.null != nil && s.style == .plain) else { throw bad("no value") }
                    arguments = ["--\(key)", s.string]
                }
            case nil:
                // `double-quant: false` for a plain `--no-double-quant` flag.
                if case .flag? = spec.kinds["no-\(key)"], let on = boolValue(value) {
                    arguments = on ? [] : ["--no-\(key)"]
                } else {
                    throw Error.unknownKey(file: file, line: line, key: written, value: valueText,
                                           suggestion: closest(to: key, in: Array(spec.kinds.keys)))
                }
            }
            entries.append(Entry(key: written, line: line, valueText: valueText, arguments: arguments))
        }
        return entries
    }

    /// `qlora` arguments (after the program name) with `train --config FILE` expanded: the file's
    /// arguments go right after `train`, before the command line's own, which therefore win.
    /// Any other command line is returned as it is.
    static func expand(_ argv: [String]) throws -> [String] {
        guard argv.first == "train" else { return argv }
        var path: String?
        var index = 1
        while index < argv.count {
            let a = argv[index]
            if a == "--" { break }
            var value: String?
            if a == "--config", index + 1 < argv.count { value = argv[index + 1]; index += 1 }
            else if a.hasPrefix("--config=") { value = String(a.dropFirst("--config=".count)) }
            if let value {
                if path != nil { throw Error.repeatedOption("--config") }
                path = value
            }
            index += 1
        }
        guard let path else { return argv }
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw Error.cannotRead(file: path, reason: (error as NSError).localizedDescription)
        }
        let spec = Spec(TrainCommand.self)
        let fileEntries = try entries(yaml: text, file: path, spec: spec)
        let merged = ["train"] + fileEntries.flatMap(\.arguments) + argv.dropFirst()

        // When the whole fails to parse, blame the file's key that fails alone with the same message.
        do { _ = try QLoRATool.parseAsRoot(merged) } catch {
            let message = QLoRATool.message(for: error)
            let placeholders = spec.required.flatMap { ["--\($0)", "placeholder"] }
            for entry in fileEntries where !entry.arguments.isEmpty {
                do { _ = try TrainCommand.parse(placeholders + entry.arguments) } catch {
                    let alone = TrainCommand.message(for: error)
                    if alone == message {
                        throw Error.badValue(file: path, line: entry.line, key: entry.key, value: entry.valueText, reason: alone)
                    }
                }
            }
        }
        return merged
    }

    static func boolValue(_ node: Node) -> Bool? {
        guard let s = node.scalar else { return nil }
        switch s.string.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default: return nil
        }
    }

    /// A value as written in the file (for messages).
    static func describe(_ node: Node) -> String {
        if let s = node.scalar { return s.string.isEmpty ? "(empty)" : s.string }
        if let seq = node.sequence { return "[" + seq.map(describe).joined(separator: ", ") + "]" }
        if let map = node.mapping { return "{" + map.map { "\(describe($0.key)): \(describe($0.value))" }.joined(separator: ", ") + "}" }
        return "\(node.any)"
    }

    /// The known key nearest `key` in edit distance, when it is near enough to be a typo.
    static func closest(to key: String, in candidates: [String]) -> String? {
        func distance(_ a: [Character], _ b: [Character]) -> Int {
            var previous = Array(0...b.count)
            for i in a.indices {
                var current = [i + 1] + [Int](repeating: 0, count: b.count)
                for j in b.indices {
                    current[j + 1] = min(previous[j + 1] + 1, current[j] + 1, previous[j] + (a[i] == b[j] ? 0 : 1))
                }
                previous = current
            }
            return previous[b.count]
        }
        let k = Array(key)
        var best: (name: String, distance: Int)?
        for name in candidates.sorted() {
            let d = distance(k, Array(name))
            if best == nil || d < best!.distance { best = (name, d) }
        }
        guard let best, best.distance <= max(2, key.count / 4) else { return nil }
        return best.name
    }
}

/// The tool's entry point: ArgumentParser's, after expanding `train --config FILE`. (Defined here
/// rather than in QLoRATool.swift so that the config file stays one feature in one file; a type's
/// own `main()` is the one `@main` calls.)
extension QLoRATool {
    static func main() {
        let arguments: [String]
        do { arguments = try TrainConfigFile.expand(Array(CommandLine.arguments.dropFirst())) } catch {
            printError("Error: \(error)")
            Foundation.exit(64)   // EX_USAGE, as ArgumentParser exits for bad flags
        }
        QLoRATool.main(arguments)
    }
}
