import Foundation

/// JSON text as Python's `json.dumps(value, indent=2, sort_keys=True)` writes it (what transformers
/// writes for config.json), from Foundation JSON values (`JSONSerialization` output) and Swift
/// Bool/Int/Double/String/arrays/dictionaries. Floats always keep a decimal point or exponent
/// (`6.0`, `1e-05`): transformers checks e.g. that `llm_int8_threshold` is a float. Non-ASCII
/// characters are written as UTF-8 (not `\u` escapes).
enum PythonStyleJSON {
    static func text(_ value: Any) -> String {
        var out = ""
        write(value, indent: 0, into: &out)
        return out
    }

    private static func write(_ value: Any, indent: Int, into out: inout String) {
        let pad = String(repeating: " ", count: indent + 2), closePad = String(repeating: " ", count: indent)
        switch value {
        case is NSNull:
            out += "null"
        case let v as String:
            quote(v, into: &out)
        case let v as [String: Any]:
            if v.isEmpty { out += "{}"; return }
            out += "{\n"
            for (k, key) in v.keys.sorted().enumerated() {
                if k > 0 { out += ",\n" }
                out += pad
                quote(key, into: &out)
                out += ": "
                write(v[key]!, indent: indent + 2, into: &out)
            }
            out += "\n" + closePad + "}"
        case let v as [Any]:
            if v.isEmpty { out += "[]"; return }
            out += "[\n"
            for (k, item) in v.enumerated() {
                if k > 0 { out += ",\n" }
                out += pad
                write(item, indent: indent + 2, into: &out)
            }
            out += "\n" + closePad + "]"
        default:
            out += scalar(value)
        }
    }

    /// Bool, integer or float, telling Foundation's boxed numbers apart by their ObjC type code.
    private static func scalar(_ value: Any) -> String {
        if type(of: value) == Bool.self { return (value as! Bool) ? "true" : "false" }
        if type(of: value) == Int.self { return String(value as! Int) }
        if type(of: value) == Double.self { return float(value as! Double) }
        if type(of: value) == Float.self { return float(Double(value as! Float)) }
        if let n = value as? NSNumber {
            switch String(cString: n.objCType) {
            case "c", "B": return n.boolValue ? "true" : "false"
            case "f", "d": return float(n.doubleValue)
            default: return String(n.int64Value)
            }
        }
        var s = ""
        quote("\(value)", into: &s)
        return s
    }

    private static func float(_ x: Double) -> String {
        if x.isNaN { return "NaN" }
        if x.isInfinite { return x > 0 ? "Infinity" : "-Infinity" }
        return x.description  // shortest round-trip digits, Python's repr spelling (1e-05, 6.0)
    }

    private static func quote(_ s: String, into out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}": out += "\\b"
            case "\u{0C}": out += "\\f"
            default:
                if u.value < 0x20 || u.value == 0x7F {
                    out += String(format: "\\u%04x", u.value)
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out += "\""
    }
}
