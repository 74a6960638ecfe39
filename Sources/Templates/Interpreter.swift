// Evaluates the statement tree against a context, with jinja2's scoping: `for` bodies and macro
// calls get their own frame, `if` does not, and `namespace` objects carry values out of loops.

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

enum Flow { case normal, breakLoop, continueLoop }

final class Interpreter {
    private let globals: [String: Value]
    private var frames: [[String: Value]] = [[:]]
    var out = ""

    init(context: [String: Value]) {
        var g: [String: Value] = [:]
        g["raise_exception"] = .function(Function(name: "raise_exception") { args in
            throw TemplateError.raised(args.positional.first?.str ?? "")
        })
        g["strftime_now"] = .function(Function(name: "strftime_now") { args in
            .string(strftimeNow(args.positional.first?.str ?? ""))
        })
        g["range"] = .function(Function(name: "range") { args in try builtinRange(args) })
        g["namespace"] = .function(Function(name: "namespace") { args in
            var attrs = OrderedDict()
            for p in args.positional {
                guard case .dict(let d) = p else { throw BuiltinError("namespace() takes keyword arguments or a dict") }
                for (k, v) in d.pairs { attrs[k] = v }
            }
            for (k, v) in args.keyword { attrs[k] = v }
            return .namespace(Namespace(attrs))
        })
        g["dict"] = .function(Function(name: "dict") { args in
            var d = OrderedDict()
            for p in args.positional {
                guard case .dict(let other) = p else { throw BuiltinError("dict() takes keyword arguments or a dict") }
                for (k, v) in other.pairs { d[k] = v }
            }
            for (k, v) in args.keyword { d[k] = v }
            return .dict(d)
        })
        for (k, v) in context { g[k] = v }
        globals = g
    }

    // MARK: Variables

    func lookup(_ name: String) -> Value {
        for frame in frames.reversed() { if let v = frame[name] { return v } }
        return globals[name] ?? .undefined("'\(name)' is undefined")
    }

    private func assign(_ target: Target, _ value: Value, line: Int) throws {
        switch target {
        case .name(let n):
            frames[frames.count - 1][n] = value
        case .tuple(let names):
            let items = try iterate(value, line: line)
            guard items.count == names.count else {
                throw TemplateError.runtime(message: "cannot unpack \(items.count) values into \(names.count) names",
                                            line: line)
            }
            for (n, v) in zip(names, items) { frames[frames.count - 1][n] = v }
        case let .attribute(obj, attr):
            guard case .namespace(let ns) = lookup(obj) else {
                throw TemplateError.runtime(message: "cannot assign attribute '\(attr)' on '\(obj)': it is not a namespace",
                                            line: line)
            }
            if attr.hasPrefix("_") {
                throw TemplateError.runtime(message: "cannot store underscore-prefixed attribute '\(attr)' on a namespace",
                                            line: line)
            }
            ns.attributes[attr] = value
        }
    }

    // MARK: Statements

    func render(_ nodes: [Node]) throws -> Flow {
        for node in nodes {
            let flow = try execute(node)
            if flow != .normal { return flow }
        }
        return .normal
    }

    private func capture(_ nodes: [Node]) throws -> String {
        let saved = out
        out = ""
        defer { out = saved }
        _ = try render(nodes)
        return out
    }

    private func execute(_ node: Node) throws -> Flow {
        switch node {
        case .text(let s):
            out += s
        case .output(let e):
            out += try eval(e).str
        case let .ifChain(branches, elseBody):
            for (cond, body) in branches where try eval(cond).truthy {
                return try render(body)
            }
            return try render(elseBody)
        case let .forLoop(target, iterExpr, condition, body, elseBody, line):
            return try executeFor(target, iterExpr, condition, body, elseBody, line)
        case let .set(target, e, line):
            try assign(target, try eval(e), line: line)
        case let .setBlock(name, body, filters):
            var v = Value.string(try capture(body))
            for (f, args, kwargs, line) in filters {
                v = try applyFilter(f, v, try evalArguments(args, kwargs), line: line)
            }
            frames[frames.count - 1][name] = v
        case let .macro(name, params, body):
            frames[frames.count - 1][name] = .function(makeMacro(name, params, body))
        case let .callBlock(callExpr, callerParams, body):
            guard case let .call(fnExpr, args, kwargs) = callExpr.kind else { return .normal }
            let caller = makeMacro("caller", callerParams, body)
            var arguments = try evalArguments(args, kwargs)
            arguments.keyword.append(("caller", .function(caller)))
            out += try callValue(try eval(fnExpr), arguments, line: callExpr.line).str
        case let .filterBlock(filters, body):
            var v = Value.string(try capture(body))
            for (f, args, kwargs, line) in filters {
                v = try applyFilter(f, v, try evalArguments(args, kwargs), line: line)
            }
            out += v.str
        case .breakLoop:
            return .breakLoop
        case .continueLoop:
            return .continueLoop
        }
        return .normal
    }

    private func executeFor(_ target: Target, _ iterExpr: Expr, _ condition: Expr?, _ body: [Node],
                            _ elseBody: [Node], _ line: Int) throws -> Flow {
        var items = try iterate(try eval(iterExpr), line: line)
        frames.append([:])
        defer { frames.removeLast() }
        if let condition {
            var kept: [Value] = []
            for item in items {
                try assign(target, item, line: line)
                if try eval(condition).truthy { kept.append(item) }
            }
            items = kept
        }
        if items.isEmpty {
            frames.removeLast(); frames.append([:])
            _ = try render(elseBody)
            return .normal
        }
        let n = items.count
        for (k, item) in items.enumerated() {
            var loop = OrderedDict()
            loop["index"] = .int(k + 1)
            loop["index0"] = .int(k)
            loop["revindex"] = .int(n - k)
            loop["revindex0"] = .int(n - k - 1)
            loop["first"] = .bool(k == 0)
            loop["last"] = .bool(k == n - 1)
            loop["length"] = .int(n)
            loop["depth"] = .int(1)
            loop["depth0"] = .int(0)
            loop["previtem"] = k > 0 ? items[k - 1] : .undefined("there is no previous item")
            loop["nextitem"] = k + 1 < n ? items[k + 1] : .undefined("there is no next item")
            loop["cycle"] = .function(Function(name: "loop.cycle") { args in
                guard !args.positional.isEmpty else { throw BuiltinError("no items for cycling given") }
                return args.positional[k % args.positional.count]
            })
            frames[frames.count - 1]["loop"] = .dict(loop)
            try assign(target, item, line: line)
            let flow = try render(body)
            if flow == .breakLoop { break }
        }
        return .normal
    }

    private func makeMacro(_ name: String, _ params: [(String, Expr?)], _ body: [Node]) -> Function {
        Function(name: name) { [unowned self] args in
            var frame: [String: Value] = [:]
            var varargs: [Value] = []
            for (k, v) in args.positional.enumerated() {
                if k < params.count { frame[params[k].0] = v } else { varargs.append(v) }
            }
            var extraKwargs = OrderedDict()
            for (k, v) in args.keyword {
                if params.contains(where: { $0.0 == k }) || k == "caller" { frame[k] = v } else { extraKwargs[k] = v }
            }
            let savedFrames = self.frames
            self.frames = [self.frames[0], frame]
            defer { self.frames = savedFrames }
            for (p, def) in params where self.frames[1][p] == nil {
                self.frames[1][p] = try def.map { try self.eval($0) } ?? .undefined("parameter '\(p)' was not provided")
            }
            self.frames[1]["varargs"] = .array(varargs)
            self.frames[1]["kwargs"] = .dict(extraKwargs)
            return .string(try self.capture(body))
        }
    }

    // MARK: Expressions

    func evalArguments(_ args: [Expr], _ kwargs: [(String, Expr)]) throws -> Arguments {
        Arguments(positional: try args.map { try eval($0) }, keyword: try kwargs.map { ($0.0, try eval($0.1)) })
    }

    func eval(_ e: Expr) throws -> Value {
        do {
            return try evalUnwrapped(e)
        } catch let b as BuiltinError {
            throw TemplateError.runtime(message: b.message, line: e.line)
        }
    }

    private func evalUnwrapped(_ e: Expr) throws -> Value {
        switch e.kind {
        case .literal(let v):
            return v
        case .name(let n):
            return lookup(n)
        case .list(let items):
            return .array(try items.map { try eval($0) })
        case .tuple(let items):
            return .tuple(try items.map { try eval($0) })
        case .dict(let pairs):
            var d = OrderedDict()
            for (k, v) in pairs {
                let key = try eval(k)
                guard case .string(let ks) = key else {
                    throw TemplateError.runtime(message: "dictionary keys must be strings, got \(key.typeName)", line: e.line)
                }
                d[ks] = try eval(v)
            }
            return .dict(d)
        case let .attribute(base, name):
            return try getAttribute(try eval(base), name, line: e.line)
        case let .item(base, index):
            return try getItem(try eval(base), try eval(index), line: e.line)
        case let .slice(base, start, stop, step):
            return try slice(try eval(base), start: try start.map { try eval($0) }, stop: try stop.map { try eval($0) },
                             step: try step.map { try eval($0) }, line: e.line)
        case let .call(fn, args, kwargs):
            return try callValue(try eval(fn), try evalArguments(args, kwargs), line: e.line)
        case let .filter(base, name, args, kwargs):
            let v = try eval(base)
            return try applyFilter(name, v, try evalArguments(args, kwargs), line: e.line)
        case let .test(base, name, args, negated):
            let v = try eval(base)
            let r = try applyTest(name, v, try args.map { try eval($0) }, line: e.line)
            return .bool(r != negated)
        case .negate(let x):
            switch try eval(x) {
            case .int(let i): return .int(-i)
            case .double(let d): return .double(-d)
            case .bool(let b): return .int(b ? -1 : 0)
            case let v: throw TemplateError.runtime(message: "bad operand type for unary -: '\(v.typeName)'", line: e.line)
            }
        case .plus(let x):
            let v = try eval(x)
            switch v {
            case .int, .double: return v
            case .bool(let b): return .int(b ? 1 : 0)
            default: throw TemplateError.runtime(message: "bad operand type for unary +: '\(v.typeName)'", line: e.line)
            }
        case .not(let x):
            return .bool(!(try eval(x).truthy))
        case let .and(l, r):
            let a = try eval(l)
            return a.truthy ? try eval(r) : a
        case let .or(l, r):
            let a = try eval(l)
            return a.truthy ? a : try eval(r)
        case let .binary(op, l, r):
            return try binary(op, try eval(l), try eval(r), line: e.line)
        case let .compare(first, ops):
            var left = try eval(first)
            for (op, rightExpr) in ops {
                let right = try eval(rightExpr)
                if !(try compare(op, left, right, line: e.line)) { return .bool(false) }
                left = right
            }
            return .bool(true)
        case let .conditional(cond, then, other):
            if try eval(cond).truthy { return try eval(then) }
            return try other.map { try eval($0) } ?? .undefined("the inline if expression evaluated to false and no else section was defined")
        }
    }

    func callValue(_ fn: Value, _ args: Arguments, line: Int) throws -> Value {
        switch fn {
        case .function(let f):
            do { return try f.call(args) } catch let b as BuiltinError {
                throw TemplateError.runtime(message: "\(f.name)(): \(b.message)", line: line)
            }
        case .undefined(let why):
            throw TemplateError.runtime(message: "\(why), so it cannot be called", line: line)
        default:
            throw TemplateError.runtime(message: "'\(fn.typeName)' object is not callable", line: line)
        }
    }

    // MARK: Access

    func getAttribute(_ v: Value, _ name: String, line: Int) throws -> Value {
        switch v {
        case .undefined(let why):
            throw TemplateError.runtime(message: "\(why) (while reading attribute '\(name)')", line: line)
        case .namespace(let ns):
            return ns.attributes[name] ?? .undefined("'Namespace' object has no attribute '\(name)'")
        case .dict(let d):
            if let m = method(v, name) { return m }
            return d[name] ?? .undefined("'dict object' has no attribute '\(name)'")
        default:
            if let m = method(v, name) { return m }
            return .undefined("'\(v.typeName) object' has no attribute '\(name)'")
        }
    }

    func getItem(_ v: Value, _ key: Value, line: Int) throws -> Value {
        switch (v, key) {
        case (.undefined(let why), _):
            throw TemplateError.runtime(message: "\(why) (while reading item \(key.repr))", line: line)
        case let (.dict(d), .string(k)):
            if let x = d[k] { return x }
            return method(v, k) ?? .undefined("'dict object' has no attribute '\(k)'")
        case let (.namespace(ns), .string(k)):
            return ns.attributes[k] ?? .undefined("'Namespace' object has no attribute '\(k)'")
        case let (.array(a), _), let (.tuple(a), _):
            guard let i = intValue(key) else {
                if case .string(let s) = key { return method(v, s) ?? .undefined("'list object' has no attribute '\(s)'") }
                throw TemplateError.runtime(message: "list indices must be integers, not \(key.typeName)", line: line)
            }
            let j = i < 0 ? a.count + i : i
            return (0..<a.count).contains(j) ? a[j] : .undefined("list object has no element \(i)")
        case let (.string(s), _):
            guard let i = intValue(key) else {
                if case .string(let name) = key { return method(v, name) ?? .undefined("'str object' has no attribute '\(name)'") }
                throw TemplateError.runtime(message: "string indices must be integers, not \(key.typeName)", line: line)
            }
            let u = Array(s.unicodeScalars)
            let j = i < 0 ? u.count + i : i
            return (0..<u.count).contains(j) ? .string(String(u[j])) : .undefined("str object has no element \(i)")
        default:
            if case .string(let name) = key, let m = method(v, name) { return m }
            return .undefined("'\(v.typeName) object' has no element \(key.repr)")
        }
    }

    private func slice(_ v: Value, start: Value?, stop: Value?, step: Value?, line: Int) throws -> Value {
        func bound(_ x: Value?) throws -> Int? {
            guard let x, !(x.isUndefined) else { return nil }
            if case .none = x { return nil }
            guard let i = intValue(x) else {
                throw TemplateError.runtime(message: "slice indices must be integers or None, not \(x.typeName)", line: line)
            }
            return i
        }
        let st = try bound(step) ?? 1
        if st == 0 { throw TemplateError.runtime(message: "slice step cannot be zero", line: line) }
        func indices(_ n: Int) throws -> [Int] {
            var lo = try bound(start), hi = try bound(stop)
            if st > 0 {
                var a = lo ?? 0, b = hi ?? n
                if a < 0 { a = max(0, a + n) }; if b < 0 { b = max(0, b + n) }
                a = min(a, n); b = min(b, n)
                lo = a; hi = b
                return a < b ? Array(stride(from: a, to: b, by: st)) : []
            } else {
                var a = lo ?? (n - 1), b = hi ?? -1 - n
                if a < 0 { a += n }; if b < 0 { b += n }
                a = min(a, n - 1); b = max(b, -1)
                return a > b ? Array(stride(from: a, to: b, by: st)) : []
            }
        }
        switch v {
        case .array(let a): return .array(try indices(a.count).map { a[$0] })
        case .tuple(let a): return .tuple(try indices(a.count).map { a[$0] })
        case .string(let s):
            let u = Array(s.unicodeScalars)
            var r = String.UnicodeScalarView()
            for i in try indices(u.count) { r.append(u[i]) }
            return .string(String(r))
        case .undefined(let why):
            throw TemplateError.runtime(message: "\(why) (while slicing)", line: line)
        default:
            throw TemplateError.runtime(message: "'\(v.typeName)' object is not subscriptable", line: line)
        }
    }

    func iterate(_ v: Value, line: Int) throws -> [Value] {
        switch v {
        case .array(let a), .tuple(let a): return a
        case .dict(let d): return d.keys.map { .string($0) }
        case .string(let s): return s.unicodeScalars.map { .string(String($0)) }
        case .undefined: return []
        case .namespace(let ns): return ns.attributes.keys.map { .string($0) }
        default:
            throw TemplateError.runtime(message: "'\(v.typeName)' object is not iterable", line: line)
        }
    }

    // MARK: Operators

    private func binary(_ op: String, _ a: Value, _ b: Value, line: Int) throws -> Value {
        if op == "~" { return .string(a.str + b.str) }
        func fail() -> TemplateError {
            if case .undefined(let why) = a { return .runtime(message: why, line: line) }
            if case .undefined(let why) = b { return .runtime(message: why, line: line) }
            return .runtime(message: "unsupported operand type(s) for \(op): '\(a.typeName)' and '\(b.typeName)'", line: line)
        }
        switch (op, a, b) {
        case let ("+", .string(x), .string(y)): return .string(x + y)
        case let ("+", .array(x), .array(y)): return .array(x + y)
        case let ("+", .tuple(x), .tuple(y)): return .tuple(x + y)
        case let ("*", .string(s), n), let ("*", n, .string(s)):
            guard let k = intValue(n), !isFloat(n) else { throw fail() }
            return .string(String(repeating: s, count: max(0, k)))
        case let ("*", .array(s), n), let ("*", n, .array(s)):
            guard let k = intValue(n), !isFloat(n) else { throw fail() }
            return .array(Array([[Value]](repeating: s, count: max(0, k)).joined()))
        default: break
        }
        if let x = intValue(a), let y = intValue(b), !isFloat(a), !isFloat(b) {
            switch op {
            case "+": return .int(x &+ y)
            case "-": return .int(x &- y)
            case "*": return .int(x &* y)
            case "/":
                guard y != 0 else { throw TemplateError.runtime(message: "division by zero", line: line) }
                return .double(Double(x) / Double(y))
            case "//":
                guard y != 0 else { throw TemplateError.runtime(message: "integer division or modulo by zero", line: line) }
                var q = x / y; if (x % y != 0) && ((x < 0) != (y < 0)) { q -= 1 }
                return .int(q)
            case "%":
                guard y != 0 else { throw TemplateError.runtime(message: "integer division or modulo by zero", line: line) }
                var r = x % y; if r != 0 && ((r < 0) != (y < 0)) { r += y }
                return .int(r)
            case "**":
                if y < 0 { return .double(pow(Double(x), Double(y))) }
                var r = 1; for _ in 0..<y { r = r &* x }
                return .int(r)
            default: throw fail()
            }
        }
        if let x = doubleValue(a), let y = doubleValue(b) {
            switch op {
            case "+": return .double(x + y)
            case "-": return .double(x - y)
            case "*": return .double(x * y)
            case "/":
                guard y != 0 else { throw TemplateError.runtime(message: "float division by zero", line: line) }
                return .double(x / y)
            case "//":
                guard y != 0 else { throw TemplateError.runtime(message: "float floor division by zero", line: line) }
                return .double((x / y).rounded(.down))
            case "%":
                guard y != 0 else { throw TemplateError.runtime(message: "float modulo", line: line) }
                var r = fmod(x, y); if r != 0 && ((r < 0) != (y < 0)) { r += y }
                return .double(r)
            case "**": return .double(pow(x, y))
            default: throw fail()
            }
        }
        throw fail()
    }

    func compare(_ op: String, _ a: Value, _ b: Value, line: Int) throws -> Bool {
        switch op {
        case "==": return valuesEqual(a, b)
        case "!=": return !valuesEqual(a, b)
        case "in": return try contains(b, a, line: line)
        case "notin": return !(try contains(b, a, line: line))
        default:
            guard let c = orderedCompare(a, b) else {
                throw TemplateError.runtime(message: "'\(op)' not supported between instances of '\(a.typeName)' and '\(b.typeName)'",
                                            line: line)
            }
            switch op {
            case "<": return c < 0
            case "<=": return c <= 0
            case ">": return c > 0
            default: return c >= 0
            }
        }
    }

    func contains(_ container: Value, _ item: Value, line: Int) throws -> Bool {
        switch container {
        case .string(let s):
            guard case .string(let sub) = item else {
                throw TemplateError.runtime(message: "'in <string>' requires string as left operand, not \(item.typeName)",
                                            line: line)
            }
            return findScalars(Array(s.unicodeScalars), Array(sub.unicodeScalars), from: 0) != nil
        case .array(let a), .tuple(let a): return a.contains { valuesEqual($0, item) }
        case .dict(let d):
            if case .string(let k) = item { return d[k] != nil }
            return false
        case .undefined: return false
        case .namespace(let ns):
            if case .string(let k) = item { return ns.attributes[k] != nil }
            return false
        default:
            throw TemplateError.runtime(message: "argument of type '\(container.typeName)' is not iterable", line: line)
        }
    }
}

/// An error from a builtin that does not know its template line; the evaluator adds it.
struct BuiltinError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

// MARK: - Value helpers

func intValue(_ v: Value) -> Int? {
    switch v {
    case .int(let i): return i
    case .bool(let b): return b ? 1 : 0
    default: return nil
    }
}

func isFloat(_ v: Value) -> Bool { if case .double = v { return true } else { return false } }

func doubleValue(_ v: Value) -> Double? {
    switch v {
    case .int(let i): return Double(i)
    case .bool(let b): return b ? 1 : 0
    case .double(let d): return d
    default: return nil
    }
}

/// Python `==`.
func valuesEqual(_ a: Value, _ b: Value) -> Bool {
    switch (a, b) {
    case (.undefined, .undefined), (.none, .none): return true
    case let (.string(x), .string(y)): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
    case let (.array(x), .array(y)), let (.tuple(x), .tuple(y)):
        return x.count == y.count && zip(x, y).allSatisfy { valuesEqual($0, $1) }
    case let (.dict(x), .dict(y)):
        return x.count == y.count && x.pairs.allSatisfy { k, v in y[k].map { valuesEqual(v, $0) } ?? false }
    case let (.namespace(x), .namespace(y)): return x === y
    default:
        if let x = doubleValue(a), let y = doubleValue(b) {
            if let i = intValue(a), let j = intValue(b) { return i == j }
            return x == y
        }
        return false
    }
}

/// Python ordering (`<` etc.): numbers, strings by code point, lists lexicographically.
func orderedCompare(_ a: Value, _ b: Value) -> Int? {
    switch (a, b) {
    case let (.string(x), .string(y)):
        var i = x.unicodeScalars.makeIterator(), j = y.unicodeScalars.makeIterator()
        while true {
            switch (i.next(), j.next()) {
            case (nil, nil): return 0
            case (nil, _): return -1
            case (_, nil): return 1
            case let (p?, q?): if p != q { return p.value < q.value ? -1 : 1 }
            }
        }
    case let (.array(x), .array(y)), let (.tuple(x), .tuple(y)):
        for (p, q) in zip(x, y) where !valuesEqual(p, q) { return orderedCompare(p, q) }
        return x.count == y.count ? 0 : (x.count < y.count ? -1 : 1)
    default:
        if let i = intValue(a), let j = intValue(b) { return i == j ? 0 : (i < j ? -1 : 1) }
        if let x = doubleValue(a), let y = doubleValue(b) { return x == y ? 0 : (x < y ? -1 : 1) }
        return nil
    }
}

func findScalars(_ hay: [Unicode.Scalar], _ needle: [Unicode.Scalar], from: Int) -> Int? {
    if needle.isEmpty { return from <= hay.count ? from : nil }
    guard hay.count >= needle.count else { return nil }
    var i = from
    while i + needle.count <= hay.count {
        if hay[i] == needle[0] && hay[i..<(i + needle.count)].elementsEqual(needle) { return i }
        i += 1
    }
    return nil
}

private func builtinRange(_ args: Arguments) throws -> Value {
    let ints = try args.positional.map { v -> Int in
        guard let i = intValue(v), !isFloat(v) else { throw BuiltinError("range() arguments must be integers, got \(v.typeName)") }
        return i
    }
    var start = 0, stop = 0, step = 1
    switch ints.count {
    case 1: stop = ints[0]
    case 2: start = ints[0]; stop = ints[1]
    case 3: start = ints[0]; stop = ints[1]; step = ints[2]
    default: throw BuiltinError("range() expects 1 to 3 arguments, got \(ints.count)")
    }
    if step == 0 { throw BuiltinError("range() arg 3 must not be zero") }
    if (step > 0 && start >= stop) || (step < 0 && start <= stop) { return .array([]) }
    let count = step > 0 ? (stop - start + step - 1) / step : (start - stop - step - 1) / -step
    if count > 1_000_000 { throw BuiltinError("range() of \(count) items is too large") }
    return .array(stride(from: start, to: stop, by: step).map { .int($0) })
}

/// transformers' `strftime_now(format)`: the local time, formatted by C strftime.
private func strftimeNow(_ format: String) -> String {
    var t = time(nil)
    var tmValue = tm()
    localtime_r(&t, &tmValue)
    var buffer = [CChar](repeating: 0, count: 512)
    let n = strftime(&buffer, buffer.count, format, &tmValue)
    return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
