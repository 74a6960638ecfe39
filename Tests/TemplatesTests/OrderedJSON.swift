// A small JSON reader that keeps object keys in file order (Foundation's JSONSerialization does not,
// and templates that print dictionaries depend on the order).
import Templates

struct OrderedJSONError: Error, CustomStringConvertible {
    let description: String
}

func parseOrderedJSON(_ text: String) throws -> TemplateValue {
    var p = OrderedJSONParser(Array(text.unicodeScalars))
    let v = try p.value()
    p.skipSpace()
    guard p.i == p.s.count else { throw OrderedJSONError(description: "trailing data at \(p.i)") }
    return v
}

private struct OrderedJSONParser {
    let s: [Unicode.Scalar]
    var i = 0
    init(_ s: [Unicode.Scalar]) { self.s = s }

    mutating func skipSpace() { while i < s.count, [" ", "\n", "\r", "\t"].contains(s[i]) { i += 1 } }

    func fail(_ m: String) -> OrderedJSONError { OrderedJSONError(description: "\(m) at offset \(i)") }

    mutating func literal(_ word: String) throws {
        for u in word.unicodeScalars {
            guard i < s.count, s[i] == u else { throw fail("expected \(word)") }
            i += 1
        }
    }

    mutating func value() throws -> TemplateValue {
        skipSpace()
        guard i < s.count else { throw fail("unexpected end") }
        switch s[i] {
        case "{":
            i += 1
            var pairs: [(key: String, value: TemplateValue)] = []
            skipSpace()
            if s[i] == "}" { i += 1; return .dictionary(pairs) }
            while true {
                skipSpace()
                let k = try string()
                skipSpace()
                try literal(":")
                pairs.append((key: k, value: try value()))
                skipSpace()
                if s[i] == "," { i += 1; continue }
                try literal("}")
                return .dictionary(pairs)
            }
        case "[":
            i += 1
            var items: [TemplateValue] = []
            skipSpace()
            if s[i] == "]" { i += 1; return .array(items) }
            while true {
                items.append(try value())
                skipSpace()
                if s[i] == "," { i += 1; continue }
                try literal("]")
                return .array(items)
            }
        case "\"": return .string(try string())
        case "t": try literal("true"); return .bool(true)
        case "f": try literal("false"); return .bool(false)
        case "n": try literal("null"); return .none
        default:
            let start = i
            while i < s.count, "+-0123456789.eE".unicodeScalars.contains(s[i]) { i += 1 }
            var v = String.UnicodeScalarView(); v.append(contentsOf: s[start..<i])
            let text = String(v)
            if let n = Int(text) { return .int(n) }
            if let d = Double(text) { return .double(d) }
            throw fail("bad number \(text)")
        }
    }

    mutating func string() throws -> String {
        try literal("\"")
        var out = String.UnicodeScalarView()
        while true {
            guard i < s.count else { throw fail("unterminated string") }
            let c = s[i]; i += 1
            if c == "\"" { return String(out) }
            if c != "\\" { out.append(c); continue }
            let e = s[i]; i += 1
            switch e {
            case "n": out.append("\n")
            case "t": out.append("\t")
            case "r": out.append("\r")
            case "b": out.append("\u{08}")
            case "f": out.append("\u{0C}")
            case "u":
                var code = try hex4()
                if (0xD800..<0xDC00).contains(code), s[i] == "\\", s[i + 1] == "u" {
                    i += 2
                    let low = try hex4()
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                }
                guard let u = Unicode.Scalar(code) else { throw fail("bad \\u escape") }
                out.append(u)
            default: out.append(e)
            }
        }
    }

    mutating func hex4() throws -> UInt32 {
        guard i + 4 <= s.count else { throw fail("short \\u escape") }
        var v = String.UnicodeScalarView(); v.append(contentsOf: s[i..<(i + 4)])
        i += 4
        guard let n = UInt32(String(v), radix: 16) else { throw fail("bad \\u escape") }
        return n
    }
}
