// Splits template source into text and tags, applying jinja2's whitespace control exactly as
// transformers configures it (trim_blocks, lstrip_blocks, keep_trailing_newline = False), and
// tokenizes the inside of each tag.

struct Token: Equatable {
    enum Kind: Equatable { case name, string, integer, float, op, end }
    let kind: Kind
    /// The token's text: the name, the operator, the decoded string literal, or the number's digits.
    let text: String
    let line: Int
    let column: Int
}

/// A piece of the template: literal text, a `{{ … }}` or a `{% … %}` (tokens exclude delimiters).
enum Segment {
    case text(String, line: Int)
    case output([Token], line: Int, column: Int)
    case block([Token], line: Int, column: Int)
}

struct Lexer {
    private let src: [Unicode.Scalar]
    private var pos = 0
    private var line = 1
    private var column = 1
    private let trimBlocks: Bool
    private let lstripBlocks: Bool

    init(_ source: String, trimBlocks: Bool = true, lstripBlocks: Bool = true) {
        // jinja2 normalizes newlines and drops one trailing newline (keep_trailing_newline=False).
        var s: [Unicode.Scalar] = []
        s.reserveCapacity(source.unicodeScalars.count)
        var it = source.unicodeScalars.makeIterator()
        var pending: Unicode.Scalar? = it.next()
        while let u = pending {
            pending = it.next()
            if u == "\r" {
                s.append("\n")
                if pending == "\n" { pending = it.next() }
            } else { s.append(u) }
        }
        if s.last == "\n" { s.removeLast() }
        src = s
        self.trimBlocks = trimBlocks
        self.lstripBlocks = lstripBlocks
    }

    // MARK: Scanning helpers

    private func peek(_ offset: Int = 0) -> Unicode.Scalar? {
        pos + offset < src.count ? src[pos + offset] : nil
    }

    private mutating func advance(_ n: Int = 1) {
        for _ in 0..<n where pos < src.count {
            if src[pos] == "\n" { line += 1; column = 1 } else { column += 1 }
            pos += 1
        }
    }

    private func starts(_ s: String, at p: Int) -> Bool {
        var i = p
        for u in s.unicodeScalars {
            guard i < src.count, src[i] == u else { return false }
            i += 1
        }
        return true
    }

    private func error(_ message: String, token: String) -> TemplateError {
        .syntax(message: message, line: line, column: column, token: token)
    }

    /// Index of the next `{{`, `{%` or `{#` at or after `from`.
    private func nextTagStart(from: Int) -> Int? {
        var i = from
        while i + 1 < src.count {
            if src[i] == "{", src[i + 1] == "{" || src[i + 1] == "%" || src[i + 1] == "#" { return i }
            i += 1
        }
        return nil
    }

    // MARK: Segments

    mutating func segments() throws -> [Segment] {
        var out: [Segment] = []
        var lineStarting = true
        while pos < src.count {
            let textLine = line
            guard let start = nextTagStart(from: pos) else {
                out.append(.text(String(String.UnicodeScalarView(src[pos...])), line: textLine))
                advance(src.count - pos)
                break
            }
            var text = Array(src[pos..<start])
            let kind = src[start + 1]
            let sign = start + 2 < src.count ? src[start + 2] : nil
            let isRaw = kind == "%" && rawTagLength(at: start, name: "raw") != nil
            if sign == "-" {
                while let last = text.last, isPythonWhitespace(last) { text.removeLast() }
            } else if sign != "+" && lstripBlocks && kind != "{" {
                var lpos = 0
                if let nl = text.lastIndex(of: "\n") { lpos = nl + 1 }
                if lpos > 0 || lineStarting {
                    let tail = text[lpos...]
                    if !tail.isEmpty && tail.allSatisfy(isPythonWhitespace) { text.removeSubrange(lpos...) }
                }
            }
            if !text.isEmpty { out.append(.text(String(String.UnicodeScalarView(text)), line: textLine)) }
            advance(start - pos)
            let tagLine = line, tagColumn = column

            if isRaw {
                lineStarting = try lexRaw(into: &out)
                continue
            }
            switch kind {
            case "#":
                advance(2)
                if peek() == "-" || peek() == "+" { advance() }
                // Find the comment end.
                var found = false
                while pos < src.count {
                    if starts("-#}", at: pos) {
                        advance(3)
                        while let u = peek(), isPythonWhitespace(u) { advance() }
                        found = true; break
                    }
                    if starts("#}", at: pos) {
                        let plus = pos > 0 && src[pos - 1] == "+"
                        advance(2)
                        if trimBlocks && !plus && peek() == "\n" { advance() }
                        found = true; break
                    }
                    advance()
                }
                if !found {
                    throw TemplateError.syntax(message: "missing end of comment tag", line: tagLine,
                                               column: tagColumn, token: "{#")
                }
                lineStarting = pos > 0 && src[pos - 1] == "\n"
            case "{":
                advance(2)
                if peek() == "-" || peek() == "+" { advance() }
                let (tokens, consumedNewline) = try lexTag(block: false, tagLine: tagLine, tagColumn: tagColumn)
                out.append(.output(tokens, line: tagLine, column: tagColumn))
                lineStarting = consumedNewline
            default:
                advance(2)
                if peek() == "-" || peek() == "+" { advance() }
                let (tokens, consumedNewline) = try lexTag(block: true, tagLine: tagLine, tagColumn: tagColumn)
                out.append(.block(tokens, line: tagLine, column: tagColumn))
                lineStarting = consumedNewline
            }
        }
        return out
    }

    /// Length of `{%[-+]? <name> [-+]?%}` at `p`, if that is what is there.
    private func rawTagLength(at p: Int, name: String) -> Int? {
        guard starts("{%", at: p) else { return nil }
        var i = p + 2
        if i < src.count, src[i] == "-" || src[i] == "+" { i += 1 }
        while i < src.count, isPythonWhitespace(src[i]) { i += 1 }
        guard starts(name, at: i) else { return nil }
        i += name.unicodeScalars.count
        while i < src.count, isPythonWhitespace(src[i]) { i += 1 }
        if i < src.count, src[i] == "-" || src[i] == "+" { i += 1 }
        guard starts("%}", at: i) else { return nil }
        return i + 2 - p
    }

    /// `{% raw %}…{% endraw %}`: the body is text, verbatim.
    private mutating func lexRaw(into out: inout [Segment]) throws -> Bool {
        let startLine = line, startColumn = column
        let openLen = rawTagLength(at: pos, name: "raw")!
        let openMinusEnd = src[pos + openLen - 3] == "-"
        advance(openLen)
        if openMinusEnd { while let u = peek(), isPythonWhitespace(u) { advance() } }
        else if trimBlocks && peek() == "\n" { advance() }
        var i = pos
        while i < src.count {
            if let n = rawTagLength(at: i, name: "endraw") {
                var body = Array(src[pos..<i])
                if src[i + 2] == "-" { while let l = body.last, isPythonWhitespace(l) { body.removeLast() } }
                let textLine = line
                if !body.isEmpty { out.append(.text(String(String.UnicodeScalarView(body)), line: textLine)) }
                let minusEnd = src[i + n - 3] == "-"
                advance(i + n - pos)
                if minusEnd { while let u = peek(), isPythonWhitespace(u) { advance() } }
                else if trimBlocks && peek() == "\n" { advance() }
                return pos > 0 && src[pos - 1] == "\n"
            }
            i += 1
        }
        throw TemplateError.syntax(message: "missing endraw tag", line: startLine, column: startColumn,
                                   token: "{% raw %}")
    }

    /// Tokens up to the closing `}}` / `%}` (not counted while brackets are open, as jinja2 does).
    /// Returns whether the consumed tag end finished with a newline (jinja2's `line_starting`).
    private mutating func lexTag(block: Bool, tagLine: Int, tagColumn: Int) throws -> ([Token], Bool) {
        var tokens: [Token] = []
        var depth = 0
        let close: Unicode.Scalar = block ? "%" : "}"
        while true {
            while let u = peek(), isPythonWhitespace(u) { advance() }
            guard let c = peek() else {
                throw TemplateError.syntax(message: "unexpected end of template, expected '\(block ? "%}" : "}}")'",
                                           line: tagLine, column: tagColumn, token: block ? "{%" : "{{")
            }
            if depth == 0 {
                if (c == "-" || c == "+") && peek(1) == close && peek(2) == "}" {
                    advance(3)
                    if c == "-" { while let u = peek(), isPythonWhitespace(u) { advance() } }
                    return (tokens, pos > 0 && src[pos - 1] == "\n")
                }
                if c == close && peek(1) == "}" {
                    advance(2)
                    if block && trimBlocks && peek() == "\n" { advance() }
                    return (tokens, pos > 0 && src[pos - 1] == "\n")
                }
            }
            let tl = line, tc = column
            if isNameStart(c) {
                var s = String.UnicodeScalarView()
                while let u = peek(), isNameChar(u) { s.append(u); advance() }
                tokens.append(Token(kind: .name, text: String(s), line: tl, column: tc))
            } else if c == "'" || c == "\"" {
                tokens.append(Token(kind: .string, text: try lexString(quote: c), line: tl, column: tc))
            } else if isDigit(c) {
                tokens.append(lexNumber(line: tl, column: tc))
            } else {
                let two = peek(1).map { String(c) + String($0) } ?? ""
                let op: String
                if ["//", "**", "==", "!=", "<=", ">="].contains(two) { op = two }
                else if "+-*/%~<>=()[]{},.:|;".unicodeScalars.contains(c) { op = String(c) }
                else { throw error("unexpected character", token: String(c)) }
                if op == "(" || op == "[" || op == "{" { depth += 1 }
                if op == ")" || op == "]" || op == "}" {
                    if depth == 0 { throw error("unexpected '\(op)'", token: op) }
                    depth -= 1
                }
                advance(op.unicodeScalars.count)
                tokens.append(Token(kind: .op, text: op, line: tl, column: tc))
            }
        }
    }

    private mutating func lexNumber(line tl: Int, column tc: Int) -> Token {
        var s = String.UnicodeScalarView()
        func digits(_ lexer: inout Lexer) {
            while let u = lexer.peek(), isDigit(u) || (u == "_" && lexer.peek(1).map(isDigit) == true) {
                if u != "_" { s.append(u) }
                lexer.advance()
            }
        }
        digits(&self)
        var isFloat = false
        if peek() == ".", let d = peek(1), isDigit(d) {
            isFloat = true; s.append("."); advance(); digits(&self)
        }
        if peek() == "e" || peek() == "E" {
            let signed = peek(1) == "+" || peek(1) == "-"
            if let d = peek(signed ? 2 : 1), isDigit(d) {
                isFloat = true; s.append("e"); advance()
                if signed { s.append(peek()!); advance() }
                digits(&self)
            }
        }
        return Token(kind: isFloat ? .float : .integer, text: String(s), line: tl, column: tc)
    }

    /// A quoted string literal, decoded as jinja2 does (Python's unicode-escape rules).
    private mutating func lexString(quote: Unicode.Scalar) throws -> String {
        let startLine = line, startColumn = column
        advance()
        var out = String.UnicodeScalarView()
        while true {
            guard let c = peek() else {
                throw TemplateError.syntax(message: "unterminated string literal", line: startLine,
                                           column: startColumn, token: String(quote))
            }
            advance()
            if c == quote { return String(out) }
            if c != "\\" { out.append(c); continue }
            guard let e = peek() else { continue }
            advance()
            switch e {
            case "\n": break
            case "\\": out.append("\\")
            case "'": out.append("'")
            case "\"": out.append("\"")
            case "a": out.append("\u{07}")
            case "b": out.append("\u{08}")
            case "f": out.append("\u{0C}")
            case "n": out.append("\n")
            case "r": out.append("\r")
            case "t": out.append("\t")
            case "v": out.append("\u{0B}")
            case "x", "u", "U":
                let n = e == "x" ? 2 : (e == "u" ? 4 : 8)
                var hex = ""
                for _ in 0..<n {
                    guard let h = peek(), h.properties.isASCIIHexDigit else {
                        throw TemplateError.syntax(message: "truncated \\\(e) escape in string literal",
                                                   line: line, column: column, token: "\\\(e)" + hex)
                    }
                    hex.unicodeScalars.append(h); advance()
                }
                guard let v = UInt32(hex, radix: 16), let u = Unicode.Scalar(v) else {
                    throw TemplateError.syntax(message: "invalid escape in string literal", line: line,
                                               column: column, token: "\\\(e)" + hex)
                }
                out.append(u)
            case "0"..."7":
                var v = e.value - 48
                for _ in 0..<2 {
                    guard let d = peek(), ("0"..."7").contains(d) else { break }
                    v = v * 8 + d.value - 48; advance()
                }
                out.append(Unicode.Scalar(v)!)
            default:
                out.append("\\"); out.append(e)
            }
        }
    }
}

func isPythonWhitespace(_ u: Unicode.Scalar) -> Bool {
    u.properties.isWhitespace || (0x1C...0x1F).contains(u.value)
}
private func isDigit(_ u: Unicode.Scalar) -> Bool { ("0"..."9").contains(u) }
private func isNameStart(_ u: Unicode.Scalar) -> Bool {
    ("a"..."z").contains(u) || ("A"..."Z").contains(u) || u == "_" || (u.value > 127 && u.properties.isXIDStart)
}
private func isNameChar(_ u: Unicode.Scalar) -> Bool {
    isNameStart(u) || isDigit(u) || (u.value > 127 && u.properties.isXIDContinue)
}
