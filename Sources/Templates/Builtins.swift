// Filters, tests and the Python methods (str, dict) that chat templates call.

extension Interpreter {
    // MARK: Methods

    /// A bound method of `v` named `name`, or nil if the type has no such method.
    func method(_ v: Value, _ name: String) -> Value? {
        func bound(_ body: @escaping (Arguments) throws -> Value) -> Value {
            .function(Function(name: name, call: body))
        }
        switch v {
        case .string(let s):
            let u = Array(s.unicodeScalars)
            switch name {
            case "strip", "lstrip", "rstrip":
                return bound { args in
                    let chars = try optionalString(args.value(0, "chars"))
                    return .string(pyStrip(u, chars: chars, left: name != "rstrip", right: name != "lstrip"))
                }
            case "upper": return bound { _ in .string(s.uppercased()) }
            case "lower": return bound { _ in .string(s.lowercased()) }
            case "title": return bound { _ in .string(pyTitle(u)) }
            case "capitalize": return bound { _ in .string(pyCapitalize(u)) }
            case "startswith", "endswith":
                return bound { args in
                    guard let p = args.value(0, "prefix") else { throw BuiltinError("missing argument") }
                    let options: [Value]
                    if let a = p.items { options = a } else { options = [p] }
                    for o in options {
                        guard case .string(let x) = o else { throw BuiltinError("argument must be str, not \(o.typeName)") }
                        let xs = Array(x.unicodeScalars)
                        if xs.count <= u.count {
                            if name == "startswith" ? u[..<xs.count].elementsEqual(xs) : u[(u.count - xs.count)...].elementsEqual(xs) {
                                return .bool(true)
                            }
                        }
                    }
                    return .bool(false)
                }
            case "split", "rsplit":
                return bound { args in
                    let sep = try optionalString(args.value(0, "sep"))
                    let maxsplit = args.value(1, "maxsplit").flatMap(intValue) ?? -1
                    return .array(pySplit(u, sep: sep, maxsplit: maxsplit, fromRight: name == "rsplit").map { .string($0) })
                }
            case "splitlines":
                return bound { _ in .array(pySplitLines(u).map { .string($0) }) }
            case "replace":
                return bound { args in
                    guard case .string(let old)? = args.value(0, "old"), case .string(let new)? = args.value(1, "new") else {
                        throw BuiltinError("replace() takes two strings")
                    }
                    let count = args.value(2, "count").flatMap(intValue) ?? -1
                    return .string(pyReplace(u, Array(old.unicodeScalars), Array(new.unicodeScalars), count: count))
                }
            case "find", "index", "count":
                return bound { args in
                    guard case .string(let sub)? = args.value(0, "sub") else { throw BuiltinError("\(name)() takes a string") }
                    let needle = Array(sub.unicodeScalars)
                    if name == "count" {
                        if needle.isEmpty { return .int(u.count + 1) }
                        var n = 0, i = 0
                        while let j = findScalars(u, needle, from: i) { n += 1; i = j + needle.count }
                        return .int(n)
                    }
                    if let j = findScalars(u, needle, from: 0) { return .int(j) }
                    if name == "index" { throw BuiltinError("substring not found") }
                    return .int(-1)
                }
            case "join":
                return bound { args in
                    guard let items = args.value(0, "iterable") else { throw BuiltinError("join() takes an iterable") }
                    let parts = try self.iterate(items, line: 0).map { v -> String in
                        guard case .string(let x) = v else { throw BuiltinError("sequence item: expected str instance, \(v.typeName) found") }
                        return x
                    }
                    return .string(parts.joined(separator: s))
                }
            case "isdigit", "isalpha", "isspace", "isupper", "islower", "isalnum":
                return bound { _ in
                    guard !u.isEmpty else { return .bool(false) }
                    switch name {
                    case "isdigit": return .bool(u.allSatisfy { $0.properties.numericType == .decimal || $0.properties.numericType == .digit })
                    case "isalpha": return .bool(u.allSatisfy { $0.properties.isAlphabetic })
                    case "isalnum": return .bool(u.allSatisfy { $0.properties.isAlphabetic || $0.properties.numericType != nil })
                    case "isspace": return .bool(u.allSatisfy(isPythonWhitespace))
                    case "isupper": return .bool(s.uppercased() == s && s.lowercased() != s)
                    default: return .bool(s.lowercased() == s && s.uppercased() != s)
                    }
                }
            default: return nil
            }
        case .dict(let d):
            switch name {
            case "get":
                return bound { args in
                    guard case .string(let k)? = args.value(0, "key") else { return args.value(1, "default") ?? .none }
                    return d[k] ?? args.value(1, "default") ?? .none
                }
            case "items": return bound { _ in .array(d.pairs.map { .tuple([.string($0.0), $0.1]) }) }
            case "keys": return bound { _ in .array(d.keys.map { .string($0) }) }
            case "values": return bound { _ in .array(d.values) }
            default: return nil
            }
        case .array(let a), .tuple(let a):
            switch name {
            case "index":
                return bound { args in
                    guard let x = args.positional.first, let i = a.firstIndex(where: { valuesEqual($0, x) }) else {
                        throw BuiltinError("value is not in list")
                    }
                    return .int(i)
                }
            case "count":
                return bound { args in
                    guard let x = args.positional.first else { throw BuiltinError("count() takes one argument") }
                    return .int(a.filter { valuesEqual($0, x) }.count)
                }
            default: return nil
            }
        default:
            return nil
        }
    }

    // MARK: Filters

    func applyFilter(_ name: String, _ v: Value, _ args: Arguments, line: Int) throws -> Value {
        func fail(_ message: String) -> TemplateError { .runtime(message: "filter '\(name)': \(message)", line: line) }
        func arg(_ i: Int, _ n: String) -> Value? { args.value(i, n) }
        do {
            switch name {
            case "safe":
                return v
            case "escape", "e":
                var r = ""
                for c in v.str.unicodeScalars {
                    switch c {
                    case "&": r += "&amp;"; case "<": r += "&lt;"; case ">": r += "&gt;"
                    case "\"": r += "&#34;"; case "'": r += "&#39;"
                    default: r.unicodeScalars.append(c)
                    }
                }
                return .string(r)
            case "trim":
                let chars = try optionalString(arg(0, "chars"))
                return .string(pyStrip(Array(v.str.unicodeScalars), chars: chars, left: true, right: true))
            case "upper": return .string(v.str.uppercased())
            case "lower": return .string(v.str.lowercased())
            case "capitalize": return .string(pyCapitalize(Array(v.str.unicodeScalars)))
            case "title": return .string(jinjaTitle(Array(v.str.unicodeScalars)))
            case "string": return .string(v.str)
            case "length", "count":
                switch v {
                case .string(let s): return .int(s.unicodeScalars.count)
                case .array(let a), .tuple(let a): return .int(a.count)
                case .dict(let d): return .int(d.count)
                case .undefined: return .int(0)
                case .namespace(let ns): return .int(ns.attributes.count)
                default: throw fail("object of type '\(v.typeName)' has no len()")
                }
            case "first":
                let items = try iterate(v, line: line)
                return items.first ?? .undefined("no first item, sequence was empty")
            case "last":
                let items = try iterate(v, line: line)
                return items.last ?? .undefined("no last item, sequence was empty")
            case "list":
                return .array(try iterate(v, line: line))
            case "reverse":
                if case .string(let s) = v { return .string(String(String.UnicodeScalarView(s.unicodeScalars.reversed()))) }
                return .array(try iterate(v, line: line).reversed())
            case "items":
                switch v {
                case .dict(let d): return .array(d.pairs.map { .tuple([.string($0.0), $0.1]) })
                case .undefined: return .array([])
                default: throw fail("can only get item pairs from a mapping, not \(v.typeName)")
                }
            case "dictsort":
                guard case .dict(let d) = v else { throw fail("can only sort a mapping") }
                let sorted = d.pairs.sorted { pyStringLess($0.0.lowercased(), $1.0.lowercased()) }
                return .array(sorted.map { .tuple([.string($0.0), $0.1]) })
            case "default", "d":
                let def = arg(0, "default_value") ?? .string("")
                let boolean = arg(1, "boolean")?.truthy ?? false
                if v.isUndefined || (boolean && !v.truthy) { return def }
                return v
            case "join":
                let sep = arg(0, "d")?.str ?? ""
                var items = try iterate(v, line: line)
                if let attr = arg(1, "attribute") { items = try items.map { try attributePath($0, attr, line: line) } }
                return .string(items.map(\.str).joined(separator: sep))
            case "int":
                let def = arg(0, "default") ?? .int(0)
                switch v {
                case .int: return v
                case .bool(let b): return .int(b ? 1 : 0)
                case .double(let d): return d.isFinite ? .int(Int(d)) : def
                case .string(let s):
                    let t = pyStrip(Array(s.unicodeScalars), chars: nil, left: true, right: true).replacingOccurrences("_", "")
                    if let i = Int(t) { return .int(i) }
                    if let d = Double(t), d.isFinite { return .int(Int(d)) }
                    return def
                default: return def
                }
            case "float":
                let def = arg(0, "default") ?? .double(0)
                switch v {
                case .double: return v
                case .int(let i): return .double(Double(i))
                case .bool(let b): return .double(b ? 1 : 0)
                case .string(let s):
                    return Double(pyStrip(Array(s.unicodeScalars), chars: nil, left: true, right: true)).map { .double($0) } ?? def
                default: return def
                }
            case "abs":
                switch v {
                case .int(let i): return .int(abs(i))
                case .double(let d): return .double(abs(d))
                case .bool(let b): return .int(b ? 1 : 0)
                default: throw fail("bad operand type for abs(): '\(v.typeName)'")
                }
            case "round":
                guard let x = doubleValue(v) else { throw fail("round() needs a number") }
                let precision = arg(0, "precision").flatMap(intValue) ?? 0
                let methodName = arg(1, "method")?.str ?? "common"
                var p = 1.0; for _ in 0..<max(0, precision) { p *= 10 }
                let rule: FloatingPointRoundingRule = methodName == "ceil" ? .up : (methodName == "floor" ? .down : .toNearestOrAwayFromZero)
                return .double((x * p).rounded(rule) / p)
            case "tojson":
                let indent = arg(0, "indent")
                let sortKeys = args.keyword.first { $0.0 == "sort_keys" }?.1.truthy ?? false
                var separators: (String, String)?
                if let seps = args.keyword.first(where: { $0.0 == "separators" })?.1.items, seps.count == 2 {
                    separators = (seps[0].str, seps[1].str)
                }
                var indentString: String?
                switch indent {
                case .int(let n)?: indentString = String(repeating: " ", count: max(0, n))
                case .string(let s)?: indentString = s
                default: indentString = nil
                }
                return .string(try toJSON(v, indent: indentString, separators: separators, sortKeys: sortKeys, level: 0))
            case "indent":
                var width = "    "
                if let w = arg(0, "width") {
                    if case .string(let s) = w { width = s } else if let n = intValue(w) { width = String(repeating: " ", count: n) }
                }
                let first = arg(1, "first")?.truthy ?? false
                let blank = arg(2, "blank")?.truthy ?? false
                let lines = pySplitLines(Array((v.str + "\n").unicodeScalars))
                var rv: String
                if blank {
                    rv = lines.joined(separator: "\n" + width)
                } else {
                    rv = lines.first ?? ""
                    let rest = lines.dropFirst()
                    if !rest.isEmpty { rv += "\n" + rest.map { $0.isEmpty ? $0 : width + $0 }.joined(separator: "\n") }
                }
                return .string(first ? width + rv : rv)
            case "replace":
                guard let old = arg(0, "old"), let new = arg(1, "new") else { throw fail("needs two arguments") }
                let count = arg(2, "count").flatMap(intValue) ?? -1
                return .string(pyReplace(Array(v.str.unicodeScalars), Array(old.str.unicodeScalars), Array(new.str.unicodeScalars),
                                         count: count))
            case "select", "reject":
                let items = try iterate(v, line: line)
                guard let testName = args.positional.first?.str else {
                    return .array(items.filter { $0.truthy == (name == "select") })
                }
                let rest = Array(args.positional.dropFirst())
                return .array(try items.filter { try applyTest(testName, $0, rest, line: line) == (name == "select") })
            case "selectattr", "rejectattr":
                let items = try iterate(v, line: line)
                guard let attr = args.positional.first else { throw fail("needs an attribute name") }
                let want = name == "selectattr"
                if args.positional.count < 2 {
                    return .array(try items.filter { try attributePath($0, attr, line: line).truthy == want })
                }
                let testName = args.positional[1].str
                let rest = Array(args.positional.dropFirst(2))
                return .array(try items.filter {
                    try applyTest(testName, try attributePath($0, attr, line: line), rest, line: line) == want
                })
            case "map":
                let items = try iterate(v, line: line)
                if let attr = args.keyword.first(where: { $0.0 == "attribute" })?.1 {
                    let def = args.keyword.first { $0.0 == "default" }?.1
                    return .array(try items.map {
                        let x = try attributePath($0, attr, line: line)
                        if x.isUndefined, let def { return def }
                        return x
                    })
                }
                guard let filterName = args.positional.first?.str else { throw fail("needs a filter name or attribute=") }
                let rest = Arguments(positional: Array(args.positional.dropFirst()), keyword: args.keyword)
                return .array(try items.map { try applyFilter(filterName, $0, rest, line: line) })
            case "unique":
                var seen: [Value] = []
                for x in try iterate(v, line: line) where !seen.contains(where: { valuesEqual($0, x) }) { seen.append(x) }
                return .array(seen)
            case "sort":
                let reverse = arg(0, "reverse")?.truthy ?? false
                let attr = arg(2, "attribute")
                let items = try iterate(v, line: line)
                let keyed = try items.map { item in (try attr.map { a in try attributePath(item, a, line: line) } ?? item, item) }
                var failed = false
                let sorted = keyed.sorted { a, b in
                    guard let c = orderedCompare(a.0, b.0) else { failed = true; return false }
                    return reverse ? c > 0 : c < 0
                }
                if failed { throw fail("items cannot be compared") }
                return .array(sorted.map(\.1))
            case "sum":
                var total = Value.int(0)
                for x in try iterate(v, line: line) {
                    if let i = intValue(total), let j = intValue(x), !isFloat(x) { total = .int(i + j) }
                    else if let a = doubleValue(total), let b = doubleValue(x) { total = .double(a + b) }
                    else { throw fail("cannot add \(x.typeName)") }
                }
                return total
            case "min", "max":
                let items = try iterate(v, line: line)
                guard var best = items.first else { return .undefined("no \(name) item, sequence was empty") }
                for x in items.dropFirst() {
                    guard let c = orderedCompare(x, best) else { throw fail("items cannot be compared") }
                    if name == "min" ? c < 0 : c > 0 { best = x }
                }
                return best
            case "wordcount":
                return .int(pySplit(Array(v.str.unicodeScalars), sep: nil, maxsplit: -1, fromRight: false).count)
            default:
                throw TemplateError.runtime(message: "no filter named '\(name)'", line: line)
            }
        } catch let b as BuiltinError {
            throw fail(b.message)
        }
    }

    /// `attribute="a.b"` / `attribute=0` as the selectattr, map and join filters take it.
    private func attributePath(_ v: Value, _ path: Value, line: Int) throws -> Value {
        if let i = intValue(path) { return try getItem(v, .int(i), line: line) }
        var x = v
        for part in path.str.split(separator: ".", omittingEmptySubsequences: false) {
            if let i = Int(part) { x = try getItem(x, .int(i), line: line) }
            else { x = try getItem(x, .string(String(part)), line: line) }
            if x.isUndefined { return x }
        }
        return x
    }

    // MARK: Tests

    func applyTest(_ name: String, _ v: Value, _ args: [Value], line: Int) throws -> Bool {
        func other() throws -> Value {
            guard let a = args.first else { throw TemplateError.runtime(message: "test '\(name)' needs an argument", line: line) }
            return a
        }
        switch name {
        case "defined": return !v.isUndefined
        case "undefined": return v.isUndefined
        case "none": if case .none = v { return true }; return false
        case "string": if case .string = v { return true }; return false
        case "mapping": if case .dict = v { return true }; return false
        case "iterable":
            switch v { case .string, .array, .tuple, .dict, .namespace, .undefined: return true; default: return false }
        case "sequence":
            switch v { case .string, .array, .tuple, .dict, .undefined: return true; default: return false }
        case "number": switch v { case .int, .double, .bool: return true; default: return false }
        case "integer": if case .int = v { return true }; return false
        case "float": if case .double = v { return true }; return false
        case "boolean": if case .bool = v { return true }; return false
        case "true": if case .bool(true) = v { return true }; return false
        case "false": if case .bool(false) = v { return true }; return false
        case "callable": if case .function = v { return true }; return false
        case "odd", "even":
            guard let i = intValue(v) else { throw TemplateError.runtime(message: "test '\(name)' needs an integer", line: line) }
            return (i % 2 != 0) == (name == "odd")
        case "divisibleby":
            guard let i = intValue(v), let j = intValue(try other()), j != 0 else {
                throw TemplateError.runtime(message: "test 'divisibleby' needs non-zero integers", line: line)
            }
            return i % j == 0
        case "lower": if case .string(let s) = v { return s.lowercased() == s }; return false
        case "upper": if case .string(let s) = v { return s.uppercased() == s }; return false
        case "equalto", "eq", "==": return valuesEqual(v, try other())
        case "ne", "!=": return !valuesEqual(v, try other())
        case "lt", "lessthan", "<": return try compare("<", v, try other(), line: line)
        case "le", "<=": return try compare("<=", v, try other(), line: line)
        case "gt", "greaterthan", ">": return try compare(">", v, try other(), line: line)
        case "ge", ">=": return try compare(">=", v, try other(), line: line)
        case "in": return try contains(try other(), v, line: line)
        case "sameas":
            let o = try other()
            switch (v, o) {
            case (.none, .none): return true
            case let (.bool(a), .bool(b)): return a == b
            case let (.namespace(a), .namespace(b)): return a === b
            default: return false
            }
        default:
            throw TemplateError.runtime(message: "no test named '\(name)'", line: line)
        }
    }

    // MARK: JSON (transformers' tojson: json.dumps with ensure_ascii=False)

    func toJSON(_ v: Value, indent: String?, separators: (String, String)?, sortKeys: Bool, level: Int) throws -> String {
        let (itemSep, keySep) = separators ?? (indent == nil ? (", ", ": ") : (",", ": "))
        func newline(_ l: Int) -> String {
            guard let indent else { return "" }
            return "\n" + String(repeating: indent, count: l)
        }
        switch v {
        case .none: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .double(let d):
            if d.isNaN { return "NaN" }
            if d.isInfinite { return d < 0 ? "-Infinity" : "Infinity" }
            return pythonFloat(d)
        case .string(let s): return jsonString(s)
        case .array(let a), .tuple(let a):
            if a.isEmpty { return "[]" }
            let inner = try a.map { try toJSON($0, indent: indent, separators: separators, sortKeys: sortKeys, level: level + 1) }
            return "[" + newline(level + 1) + inner.joined(separator: itemSep + newline(level + 1)) + newline(level) + "]"
        case .dict(let d):
            if d.count == 0 { return "{}" }
            var pairs = d.pairs
            if sortKeys { pairs.sort { pyStringLess($0.0, $1.0) } }
            let inner = try pairs.map {
                jsonString($0.0) + keySep + (try toJSON($0.1, indent: indent, separators: separators, sortKeys: sortKeys, level: level + 1))
            }
            return "{" + newline(level + 1) + inner.joined(separator: itemSep + newline(level + 1)) + newline(level) + "}"
        case .undefined, .namespace, .function:
            throw BuiltinError("Object of type \(v.typeName) is not JSON serializable")
        }
    }
}

// MARK: - Python string operations, on Unicode scalars (Python's code points)

func optionalString(_ v: Value?) throws -> String? {
    switch v {
    case nil, .none?, .undefined?: return nil
    case .string(let s)?: return s
    case let x?: throw BuiltinError("expected a string, got \(x.typeName)")
    }
}

private func makeString<S: Sequence>(_ s: S) -> String where S.Element == Unicode.Scalar {
    var v = String.UnicodeScalarView(); v.append(contentsOf: s); return String(v)
}

func pyStrip(_ u: [Unicode.Scalar], chars: String?, left: Bool, right: Bool) -> String {
    let set = chars.map { Set($0.unicodeScalars) }
    func strip(_ c: Unicode.Scalar) -> Bool { set.map { $0.contains(c) } ?? isPythonWhitespace(c) }
    var lo = 0, hi = u.count
    if left { while lo < hi, strip(u[lo]) { lo += 1 } }
    if right { while hi > lo, strip(u[hi - 1]) { hi -= 1 } }
    return makeString(u[lo..<hi])
}

func pyCapitalize(_ u: [Unicode.Scalar]) -> String {
    guard let f = u.first else { return "" }
    return String(f).uppercased() + makeString(u.dropFirst()).lowercased()
}

/// Python `str.title()`: a letter after a non-letter starts a word.
func pyTitle(_ u: [Unicode.Scalar]) -> String {
    var out = ""
    var previousCased = false
    for c in u {
        let cased = c.properties.isCased || c.properties.isAlphabetic
        if cased { out += previousCased ? String(c).lowercased() : String(c).uppercased() } else { out.unicodeScalars.append(c) }
        previousCased = cased
    }
    return out
}

/// jinja2's `title` filter: words start after whitespace or one of `-({[<`.
func jinjaTitle(_ u: [Unicode.Scalar]) -> String {
    var out = ""
    var atStart = true
    for c in u {
        let boundary = isPythonWhitespace(c) || "-({[<".unicodeScalars.contains(c)
        if boundary { out.unicodeScalars.append(c); atStart = true; continue }
        out += atStart ? String(c).uppercased() : String(c).lowercased()
        atStart = false
    }
    return out
}

func pySplit(_ u: [Unicode.Scalar], sep: String?, maxsplit: Int, fromRight: Bool) -> [String] {
    if let sep {
        let s = Array(sep.unicodeScalars)
        guard !s.isEmpty else { return [makeString(u)] }
        if fromRight && maxsplit >= 0 {
            let r = pySplit(u.reversed(), sep: makeString(s.reversed()), maxsplit: maxsplit, fromRight: false)
            return r.reversed().map { makeString($0.unicodeScalars.reversed()) }
        }
        var parts: [String] = [], i = 0, n = 0
        while maxsplit < 0 || n < maxsplit, let j = findScalars(u, s, from: i) {
            parts.append(makeString(u[i..<j])); i = j + s.count; n += 1
        }
        parts.append(makeString(u[i...]))
        return parts
    }
    if fromRight && maxsplit >= 0 {
        return pySplit(u.reversed(), sep: nil, maxsplit: maxsplit, fromRight: false).reversed().map { makeString($0.unicodeScalars.reversed()) }
    }
    var parts: [String] = []
    var i = 0, n = 0
    while i < u.count {
        while i < u.count, isPythonWhitespace(u[i]) { i += 1 }
        if i == u.count { break }
        if maxsplit >= 0 && n == maxsplit {
            var end = u.count
            while end > i, isPythonWhitespace(u[end - 1]) { end -= 1 }
            parts.append(makeString(u[i..<end])); break
        }
        var j = i
        while j < u.count, !isPythonWhitespace(u[j]) { j += 1 }
        parts.append(makeString(u[i..<j])); n += 1; i = j
    }
    return parts
}

/// Python `str.splitlines()` (without keepends).
func pySplitLines(_ u: [Unicode.Scalar]) -> [String] {
    var lines: [String] = []
    var start = 0, i = 0
    while i < u.count {
        let c = u[i].value
        if [0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029].contains(c) {
            lines.append(makeString(u[start..<i]))
            if c == 0x0D, i + 1 < u.count, u[i + 1] == "\n" { i += 1 }
            start = i + 1
        }
        i += 1
    }
    if start < u.count { lines.append(makeString(u[start...])) }
    return lines
}

func pyReplace(_ u: [Unicode.Scalar], _ old: [Unicode.Scalar], _ new: [Unicode.Scalar], count: Int) -> String {
    var out = String.UnicodeScalarView()
    var n = 0
    if old.isEmpty {
        for c in u {
            if count < 0 || n < count { out.append(contentsOf: new); n += 1 }
            out.append(c)
        }
        if count < 0 || n < count { out.append(contentsOf: new) }
        return String(out)
    }
    var i = 0
    while count < 0 || n < count, let j = findScalars(u, old, from: i) {
        out.append(contentsOf: u[i..<j]); out.append(contentsOf: new); i = j + old.count; n += 1
    }
    out.append(contentsOf: u[i...])
    return String(out)
}

func pyStringLess(_ a: String, _ b: String) -> Bool { orderedCompare(.string(a), .string(b)) == -1 }

extension String {
    func replacingOccurrences(_ old: String, _ new: String) -> String {
        pyReplace(Array(unicodeScalars), Array(old.unicodeScalars), Array(new.unicodeScalars), count: -1)
    }
}

/// A JSON string literal as Python's json.dumps(ensure_ascii=False) writes it.
func jsonString(_ s: String) -> String {
    var out = "\""
    for c in s.unicodeScalars {
        switch c {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case "\u{08}": out += "\\b"
        case "\u{0C}": out += "\\f"
        default:
            if c.value < 0x20 {
                let h = String(c.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - h.count) + h
            } else { out.unicodeScalars.append(c) }
        }
    }
    return out + "\""
}
