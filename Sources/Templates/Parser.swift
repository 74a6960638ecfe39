// Recursive-descent parser: segments → statement tree, tag tokens → expressions, following
// jinja2's grammar and operator precedence.

final class Expr {
    enum Kind {
        case literal(Value)
        case name(String)
        case list([Expr])
        case tuple([Expr])
        case dict([(Expr, Expr)])
        case attribute(Expr, String)
        case item(Expr, Expr)
        case slice(Expr, Expr?, Expr?, Expr?)
        case call(Expr, [Expr], [(String, Expr)])
        case filter(Expr, String, [Expr], [(String, Expr)])
        case test(Expr, String, [Expr], negated: Bool)
        case negate(Expr)
        case plus(Expr)
        case not(Expr)
        case and(Expr, Expr)
        case or(Expr, Expr)
        case binary(String, Expr, Expr)
        case compare(Expr, [(String, Expr)])
        case conditional(Expr, then: Expr, else: Expr?)
    }
    let kind: Kind
    let line: Int
    init(_ kind: Kind, line: Int) { self.kind = kind; self.line = line }
}

/// Where `set` and `for` store values.
enum Target {
    case name(String)
    case attribute(String, String)  // ns.attr
    case tuple([String])
}

indirect enum Node {
    case text(String)
    case output(Expr)
    case ifChain([(Expr, [Node])], else: [Node])
    case forLoop(Target, Expr, condition: Expr?, body: [Node], else: [Node], line: Int)
    case set(Target, Expr, line: Int)
    case setBlock(String, [Node], filters: [(String, [Expr], [(String, Expr)], Int)])
    case macro(String, [(String, Expr?)], [Node])
    case callBlock(Expr, callerParams: [(String, Expr?)], body: [Node])
    case filterBlock([(String, [Expr], [(String, Expr)], Int)], [Node])
    case breakLoop, continueLoop
}

struct Parser {
    private let segments: [Segment]
    private var index = 0

    init(_ segments: [Segment]) { self.segments = segments }

    mutating func parseTemplate() throws -> [Node] {
        let (nodes, end) = try parseNodes(until: [])
        if let end { throw syntaxError("unexpected '\(end.current.text)' tag", end.current) }
        return nodes
    }

    private func syntaxError(_ message: String, _ token: Token) -> TemplateError {
        .syntax(message: message, line: token.line, column: token.column, token: token.text)
    }

    /// Parses nodes until a block tag whose first word is in `ends`; returns that tag's stream (positioned
    /// after the word) or nil at the end of the template.
    private mutating func parseNodes(until ends: Set<String>) throws -> ([Node], TokenStream?) {
        var nodes: [Node] = []
        while index < segments.count {
            let seg = segments[index]
            index += 1
            switch seg {
            case .text(let s, _):
                nodes.append(.text(s))
            case let .output(tokens, line, column):
                var ts = TokenStream(tokens, line: line, column: column)
                let e = try ts.parseExpression()
                try ts.expectEnd("}}")
                nodes.append(.output(e))
            case let .block(tokens, line, column):
                var ts = TokenStream(tokens, line: line, column: column)
                let word = try ts.expectName()
                if ends.contains(word.text) { return (nodes, ts.rewound(to: word)) }
                nodes.append(try parseStatement(word, &ts))
            }
        }
        if !ends.isEmpty {
            let last = segments.last
            var line = 1, column = 1
            if case let .block(_, l, c)? = last { line = l; column = c }
            if case let .output(_, l, c)? = last { line = l; column = c }
            if case let .text(_, l)? = last { line = l }
            throw TemplateError.syntax(message: "unexpected end of template, expected one of: "
                                       + ends.sorted().joined(separator: ", "),
                                       line: line, column: column, token: "<end of template>")
        }
        return (nodes, nil)
    }

    private mutating func parseStatement(_ word: Token, _ ts: inout TokenStream) throws -> Node {
        switch word.text {
        case "if":
            var branches: [(Expr, [Node])] = []
            var cond = try ts.parseExpression()
            try ts.expectEnd("%}")
            while true {
                let (body, endTag) = try parseNodes(until: ["elif", "else", "endif"])
                var end = endTag!
                let w = try end.expectName()
                branches.append((cond, body))
                if w.text == "elif" {
                    cond = try end.parseExpression(); try end.expectEnd("%}")
                    continue
                }
                try end.expectEnd("%}")
                if w.text == "else" {
                    let (elseBody, e2) = try parseNodes(until: ["endif"])
                    var end2 = e2!; _ = try end2.expectName(); try end2.expectEnd("%}")
                    return .ifChain(branches, else: elseBody)
                }
                return .ifChain(branches, else: [])
            }
        case "for":
            let target = try ts.parseAssignTarget(allowAttribute: false)
            try ts.expectName("in")
            let iter = try ts.parseExpression(noConditional: true)
            var condition: Expr?
            if ts.skipName("if") { condition = try ts.parseExpression() }
            if ts.skipName("recursive") {
                throw syntaxError("recursive loops are not supported", ts.previous)
            }
            try ts.expectEnd("%}")
            let (body, endTag) = try parseNodes(until: ["else", "endfor"])
            var end = endTag!
            let w = try end.expectName(); try end.expectEnd("%}")
            var elseBody: [Node] = []
            if w.text == "else" {
                let (e, e2) = try parseNodes(until: ["endfor"])
                var end2 = e2!; _ = try end2.expectName(); try end2.expectEnd("%}")
                elseBody = e
            }
            return .forLoop(target, iter, condition: condition, body: body, else: elseBody, line: word.line)
        case "set":
            let target = try ts.parseAssignTarget(allowAttribute: true)
            if ts.skipOp("=") {
                let value = try ts.parseTupleOrExpression()
                try ts.expectEnd("%}")
                return .set(target, value, line: word.line)
            }
            guard case .name(let name) = target else {
                throw syntaxError("block set needs a plain variable name", word)
            }
            let filters = try ts.parseFilterChain()
            try ts.expectEnd("%}")
            let (body, endTag) = try parseNodes(until: ["endset"])
            var end = endTag!; _ = try end.expectName(); try end.expectEnd("%}")
            return .setBlock(name, body, filters: filters)
        case "macro":
            let name = try ts.expectName().text
            let params = try ts.parseParameters()
            try ts.expectEnd("%}")
            let (body, endTag) = try parseNodes(until: ["endmacro"])
            var end = endTag!; _ = try end.expectName(); _ = ts; if end.peekName() != nil { _ = try end.expectName() }
            try end.expectEnd("%}")
            return .macro(name, params, body)
        case "call":
            var callerParams: [(String, Expr?)] = []
            if ts.peekOp("(") { callerParams = try ts.parseParameters() }
            let call = try ts.parseExpression()
            guard case .call = call.kind else { throw syntaxError("expected a macro call after 'call'", word) }
            try ts.expectEnd("%}")
            let (body, endTag) = try parseNodes(until: ["endcall"])
            var end = endTag!; _ = try end.expectName(); try end.expectEnd("%}")
            return .callBlock(call, callerParams: callerParams, body: body)
        case "filter":
            let filters = try ts.parseFilterChain(requireFirstPipe: false)
            try ts.expectEnd("%}")
            let (body, endTag) = try parseNodes(until: ["endfilter"])
            var end = endTag!; _ = try end.expectName(); try end.expectEnd("%}")
            return .filterBlock(filters, body)
        case "generation":
            // transformers' {% generation %} marks assistant text; when rendering it is transparent.
            try ts.expectEnd("%}")
            let (body, endTag) = try parseNodes(until: ["endgeneration"])
            var end = endTag!; _ = try end.expectName(); try end.expectEnd("%}")
            return .ifChain([(Expr(.literal(.bool(true)), line: word.line), body)], else: [])
        case "break":
            try ts.expectEnd("%}"); return .breakLoop
        case "continue":
            try ts.expectEnd("%}"); return .continueLoop
        default:
            throw syntaxError("unknown tag '\(word.text)'", word)
        }
    }
}

/// The tokens of one tag, with the expression grammar.
struct TokenStream {
    private let tokens: [Token]
    private var i = 0
    private let endToken: Token

    init(_ tokens: [Token], line: Int, column: Int) {
        self.tokens = tokens
        let last = tokens.last
        endToken = Token(kind: .end, text: "<end of tag>", line: last?.line ?? line,
                         column: (last?.column ?? column) + (last?.text.count ?? 2))
    }

    var current: Token { i < tokens.count ? tokens[i] : endToken }
    var previous: Token { i > 0 ? tokens[i - 1] : current }
    private mutating func next() -> Token { let t = current; if i < tokens.count { i += 1 }; return t }

    func rewound(to token: Token) -> TokenStream {
        var copy = self
        if let k = tokens.firstIndex(of: token) { copy.i = k }
        return copy
    }

    private func error(_ message: String, _ t: Token? = nil) -> TemplateError {
        let t = t ?? current
        return .syntax(message: message, line: t.line, column: t.column, token: t.text)
    }

    func peekOp(_ op: String) -> Bool { current.kind == .op && current.text == op }
    func peekName() -> String? { current.kind == .name ? current.text : nil }
    private func peekName(_ n: String) -> Bool { current.kind == .name && current.text == n }

    mutating func skipOp(_ op: String) -> Bool { if peekOp(op) { i += 1; return true }; return false }
    mutating func skipName(_ n: String) -> Bool { if peekName(n) { i += 1; return true }; return false }

    mutating func expectOp(_ op: String) throws {
        guard skipOp(op) else { throw error("expected '\(op)'") }
    }
    @discardableResult
    mutating func expectName(_ n: String? = nil) throws -> Token {
        guard current.kind == .name, n == nil || current.text == n else {
            throw error(n.map { "expected '\($0)'" } ?? "expected a name")
        }
        return next()
    }
    mutating func expectEnd(_ close: String) throws {
        guard i >= tokens.count else { throw error("expected '\(close)'") }
    }

    // MARK: Statement pieces

    mutating func parseAssignTarget(allowAttribute: Bool) throws -> Target {
        let first = try expectName().text
        if allowAttribute && skipOp(".") { return .attribute(first, try expectName().text) }
        if peekOp(",") {
            var names = [first]
            while skipOp(",") { if peekName() == nil { break }; names.append(try expectName().text) }
            return .tuple(names)
        }
        return .name(first)
    }

    mutating func parseParameters() throws -> [(String, Expr?)] {
        try expectOp("(")
        var params: [(String, Expr?)] = []
        while !skipOp(")") {
            if !params.isEmpty { try expectOp(",") ; if skipOp(")") { break } }
            let name = try expectName().text
            params.append((name, skipOp("=") ? try parseExpression() : nil))
        }
        return params
    }

    mutating func parseFilterChain(requireFirstPipe: Bool = true) throws -> [(String, [Expr], [(String, Expr)], Int)] {
        var filters: [(String, [Expr], [(String, Expr)], Int)] = []
        var first = true
        while (first && !requireFirstPipe) || skipOp("|") {
            first = false
            let (name, line) = try parseDottedName()
            var args: [Expr] = [], kwargs: [(String, Expr)] = []
            if peekOp("(") { (args, kwargs) = try parseCallArguments() }
            filters.append((name, args, kwargs, line))
        }
        return filters
    }

    private mutating func parseDottedName() throws -> (String, Int) {
        let t = try expectName()
        var name = t.text
        while skipOp(".") { name += "." + (try expectName().text) }
        return (name, t.line)
    }

    // MARK: Expressions (lowest to highest precedence)

    /// `a, b` without brackets is a tuple (as in `set x = a, b`).
    mutating func parseTupleOrExpression() throws -> Expr {
        let first = try parseExpression()
        guard peekOp(",") else { return first }
        var items = [first]
        while skipOp(",") { if i >= tokens.count { break }; items.append(try parseExpression()) }
        return Expr(.tuple(items), line: first.line)
    }

    mutating func parseExpression(noConditional: Bool = false) throws -> Expr {
        if noConditional { return try parseOr() }
        var e = try parseOr()
        while skipName("if") {
            let cond = try parseOr()
            var other: Expr?
            if skipName("else") { other = try parseExpression() }
            e = Expr(.conditional(cond, then: e, else: other), line: e.line)
        }
        return e
    }

    private mutating func parseOr() throws -> Expr {
        var e = try parseAnd()
        while skipName("or") { let r = try parseAnd(); e = Expr(.or(e, r), line: e.line) }
        return e
    }

    private mutating func parseAnd() throws -> Expr {
        var e = try parseNot()
        while skipName("and") { let r = try parseNot(); e = Expr(.and(e, r), line: e.line) }
        return e
    }

    private mutating func parseNot() throws -> Expr {
        if peekName("not") {
            let t = next()
            return Expr(.not(try parseNot()), line: t.line)
        }
        return try parseCompare()
    }

    private mutating func parseCompare() throws -> Expr {
        let left = try parseMath1()
        var ops: [(String, Expr)] = []
        while true {
            if current.kind == .op, ["==", "!=", "<", "<=", ">", ">="].contains(current.text) {
                let op = next().text
                ops.append((op, try parseMath1()))
            } else if skipName("in") {
                ops.append(("in", try parseMath1()))
            } else if peekName("not"), i + 1 < tokens.count, tokens[i + 1].kind == .name, tokens[i + 1].text == "in" {
                i += 2
                ops.append(("notin", try parseMath1()))
            } else { break }
        }
        return ops.isEmpty ? left : Expr(.compare(left, ops), line: left.line)
    }

    private mutating func parseMath1() throws -> Expr {
        var e = try parseConcat()
        while current.kind == .op, current.text == "+" || current.text == "-" {
            let op = next().text
            let r = try parseConcat()
            e = Expr(.binary(op, e, r), line: e.line)
        }
        return e
    }

    private mutating func parseConcat() throws -> Expr {
        var e = try parseMath2()
        while skipOp("~") { let r = try parseMath2(); e = Expr(.binary("~", e, r), line: e.line) }
        return e
    }

    private mutating func parseMath2() throws -> Expr {
        var e = try parsePow()
        while current.kind == .op, ["*", "/", "//", "%"].contains(current.text) {
            let op = next().text
            let r = try parsePow()
            e = Expr(.binary(op, e, r), line: e.line)
        }
        return e
    }

    private mutating func parsePow() throws -> Expr {
        var e = try parseUnary()
        while skipOp("**") { let r = try parseUnary(); e = Expr(.binary("**", e, r), line: e.line) }
        return e
    }

    private mutating func parseUnary(withFilter: Bool = true) throws -> Expr {
        var e: Expr
        if peekOp("-") {
            let t = next(); e = Expr(.negate(try parseUnary(withFilter: false)), line: t.line)
        } else if peekOp("+") {
            let t = next(); e = Expr(.plus(try parseUnary(withFilter: false)), line: t.line)
        } else {
            e = try parsePrimary()
        }
        e = try parsePostfix(e)
        if withFilter { e = try parseFilterExpression(e) }
        return e
    }

    private mutating func parsePrimary() throws -> Expr {
        let t = current
        switch t.kind {
        case .name:
            i += 1
            switch t.text {
            case "true", "True": return Expr(.literal(.bool(true)), line: t.line)
            case "false", "False": return Expr(.literal(.bool(false)), line: t.line)
            case "none", "None": return Expr(.literal(.none), line: t.line)
            default: return Expr(.name(t.text), line: t.line)
            }
        case .string:
            var s = next().text
            while current.kind == .string { s += next().text }
            return Expr(.literal(.string(s)), line: t.line)
        case .integer:
            i += 1
            guard let v = Int(t.text) else { throw error("integer literal out of range", t) }
            return Expr(.literal(.int(v)), line: t.line)
        case .float:
            i += 1
            return Expr(.literal(.double(Double(t.text) ?? .nan)), line: t.line)
        case .op where t.text == "(":
            i += 1
            if skipOp(")") { return Expr(.tuple([]), line: t.line) }
            let e = try parseExpression()
            if peekOp(",") {
                var items = [e]
                while skipOp(",") { if peekOp(")") { break }; items.append(try parseExpression()) }
                try expectOp(")")
                return Expr(.tuple(items), line: t.line)
            }
            try expectOp(")")
            return e
        case .op where t.text == "[":
            i += 1
            var items: [Expr] = []
            while !skipOp("]") {
                if !items.isEmpty { try expectOp(","); if skipOp("]") { break } }
                items.append(try parseExpression())
            }
            return Expr(.list(items), line: t.line)
        case .op where t.text == "{":
            i += 1
            var pairs: [(Expr, Expr)] = []
            while !skipOp("}") {
                if !pairs.isEmpty { try expectOp(","); if skipOp("}") { break } }
                let k = try parseExpression()
                try expectOp(":")
                pairs.append((k, try parseExpression()))
            }
            return Expr(.dict(pairs), line: t.line)
        default:
            throw error(t.kind == .end ? "expected an expression, got the end of the tag" : "unexpected '\(t.text)'")
        }
    }

    private mutating func parsePostfix(_ base: Expr) throws -> Expr {
        var e = base
        while true {
            if peekOp(".") {
                i += 1
                let t = next()
                switch t.kind {
                case .name: e = Expr(.attribute(e, t.text), line: t.line)
                case .integer: e = Expr(.item(e, Expr(.literal(.int(Int(t.text) ?? 0)), line: t.line)), line: t.line)
                default: throw error("expected an attribute name after '.'", t)
                }
            } else if peekOp("[") {
                let t = next()
                e = try parseSubscript(e, line: t.line)
            } else if peekOp("(") {
                let (args, kwargs) = try parseCallArguments()
                e = Expr(.call(e, args, kwargs), line: e.line)
            } else {
                return e
            }
        }
    }

    private mutating func parseSubscript(_ base: Expr, line: Int) throws -> Expr {
        var parts: [Expr?] = []
        var current: Expr?
        var isSlice = false
        while !skipOp("]") {
            if skipOp(":") {
                isSlice = true
                parts.append(current); current = nil
                continue
            }
            if current != nil { throw error("expected ']' or ':'") }
            current = try parseExpression()
        }
        parts.append(current)
        if !isSlice {
            guard let index = parts[0] else { throw error("expected a subscript") }
            return Expr(.item(base, index), line: line)
        }
        while parts.count < 3 { parts.append(nil) }
        if parts.count > 3 { throw error("too many ':' in slice") }
        return Expr(.slice(base, parts[0], parts[1], parts[2]), line: line)
    }

    mutating func parseCallArguments() throws -> ([Expr], [(String, Expr)]) {
        try expectOp("(")
        var args: [Expr] = [], kwargs: [(String, Expr)] = []
        var first = true
        while !skipOp(")") {
            if !first { try expectOp(","); if skipOp(")") { break } }
            first = false
            if current.kind == .name, i + 1 < tokens.count, tokens[i + 1].kind == .op, tokens[i + 1].text == "=" {
                let name = next().text; i += 1
                kwargs.append((name, try parseExpression()))
            } else {
                if !kwargs.isEmpty { throw error("positional argument after keyword argument") }
                args.append(try parseExpression())
            }
        }
        return (args, kwargs)
    }

    private mutating func parseFilterExpression(_ base: Expr) throws -> Expr {
        var e = base
        while true {
            if skipOp("|") {
                let (name, line) = try parseDottedName()
                var args: [Expr] = [], kwargs: [(String, Expr)] = []
                if peekOp("(") { (args, kwargs) = try parseCallArguments() }
                e = Expr(.filter(e, name, args, kwargs), line: line)
            } else if peekName("is") {
                let t = next()
                let negated = skipName("not")
                let (name, _) = try parseDottedName()
                var args: [Expr] = []
                if peekOp("(") {
                    let (a, kw) = try parseCallArguments()
                    args = a + kw.map(\.1)
                } else if [.name, .string, .integer, .float].contains(current.kind) || peekOp("[") || peekOp("{"),
                          !(current.kind == .name && ["else", "or", "and", "if", "in", "not", "is"].contains(current.text)) {
                    var arg = try parsePrimary()
                    arg = try parsePostfix(arg)
                    args = [arg]
                }
                e = Expr(.test(e, name, args, negated: negated), line: t.line)
            } else if peekOp("(") {
                let (args, kwargs) = try parseCallArguments()
                e = Expr(.call(e, args, kwargs), line: e.line)
            } else {
                return e
            }
        }
    }
}
