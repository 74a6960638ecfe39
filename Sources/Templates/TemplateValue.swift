// The values a chat template sees (context variables) and the richer values it computes with.

/// A value passed into a template: the JSON-like data of a chat (messages, tools, flags, tokens).
/// Dictionaries keep their keys in insertion order, as Python dicts do (templates that print them,
/// e.g. through `tojson`, depend on it).
public enum TemplateValue: Equatable, Sendable {
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([TemplateValue])
    case dictionary([(key: String, value: TemplateValue)])

    public static func == (a: TemplateValue, b: TemplateValue) -> Bool {
        switch (a, b) {
        case (.none, .none): return true
        case let (.bool(x), .bool(y)): return x == y
        case let (.int(x), .int(y)): return x == y
        case let (.double(x), .double(y)): return x == y
        case let (.string(x), .string(y)): return x.unicodeScalars.elementsEqual(y.unicodeScalars)
        case let (.array(x), .array(y)): return x == y
        case let (.dictionary(x), .dictionary(y)):
            return x.count == y.count && zip(x, y).allSatisfy { $0.key == $1.key && $0.value == $1.value }
        default: return false
        }
    }

    /// The value of `key` in a dictionary (nil for other cases or a missing key).
    public subscript(key: String) -> TemplateValue? {
        if case .dictionary(let pairs) = self { return pairs.first { $0.key == key }?.value }
        return nil
    }
}

extension TemplateValue: ExpressibleByNilLiteral {
    public init(nilLiteral: ()) { self = .none }
}
extension TemplateValue: ExpressibleByBooleanLiteral {
    public init(booleanLiteral value: Bool) { self = .bool(value) }
}
extension TemplateValue: ExpressibleByIntegerLiteral {
    public init(integerLiteral value: Int) { self = .int(value) }
}
extension TemplateValue: ExpressibleByFloatLiteral {
    public init(floatLiteral value: Double) { self = .double(value) }
}
extension TemplateValue: ExpressibleByStringLiteral {
    public init(stringLiteral value: String) { self = .string(value) }
}
extension TemplateValue: ExpressibleByArrayLiteral {
    public init(arrayLiteral elements: TemplateValue...) { self = .array(elements) }
}
extension TemplateValue: ExpressibleByDictionaryLiteral {
    public init(dictionaryLiteral elements: (String, TemplateValue)...) {
        self = .dictionary(elements.map { (key: $0.0, value: $0.1) })
    }
}

// MARK: - Runtime values

/// An insertion-ordered string-keyed dictionary.
struct OrderedDict {
    private(set) var keys: [String] = []
    private var storage: [String: Value] = [:]

    init() {}
    init(_ pairs: [(String, Value)]) { for (k, v) in pairs { self[k] = v } }

    var count: Int { keys.count }
    var pairs: [(String, Value)] { keys.map { ($0, storage[$0]!) } }
    var values: [Value] { keys.map { storage[$0]! } }

    subscript(key: String) -> Value? {
        get { storage[key] }
        set {
            if let v = newValue {
                if storage.updateValue(v, forKey: key) == nil { keys.append(key) }
            } else if storage.removeValue(forKey: key) != nil {
                keys.removeAll { $0 == key }
            }
        }
    }
}

/// A `namespace(...)` object: the one mutable value templates have (`set ns.x = …`).
final class Namespace {
    var attributes: OrderedDict
    init(_ attributes: OrderedDict) { self.attributes = attributes }
}

/// Arguments of a call: positional, then keyword.
struct Arguments {
    var positional: [Value] = []
    var keyword: [(String, Value)] = []

    func value(_ index: Int, _ name: String) -> Value? {
        if index < positional.count { return positional[index] }
        return keyword.first { $0.0 == name }?.1
    }
}

/// A callable: a global function, a macro, a bound method or `loop.cycle`.
struct Function {
    let name: String
    let call: (Arguments) throws -> Value
}

/// What the evaluator computes with: template values plus jinja2's Undefined, namespaces and functions.
indirect enum Value {
    /// jinja2's default Undefined; the string says what was missing, for error messages.
    case undefined(String)
    case none
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([Value])
    /// A Python tuple: behaves as a list but prints as `(a, b)` (dict.items() pairs, `(x, y)` literals).
    case tuple([Value])
    case dict(OrderedDict)
    case namespace(Namespace)
    case function(Function)

    init(_ v: TemplateValue) {
        switch v {
        case .none: self = .none
        case .bool(let b): self = .bool(b)
        case .int(let i): self = .int(i)
        case .double(let d): self = .double(d)
        case .string(let s): self = .string(s)
        case .array(let a): self = .array(a.map(Value.init))
        case .dictionary(let pairs): self = .dict(OrderedDict(pairs.map { ($0.key, Value($0.value)) }))
        }
    }

    /// The items of a list or tuple.
    var items: [Value]? {
        switch self { case .array(let a), .tuple(let a): return a; default: return nil }
    }

    var isUndefined: Bool { if case .undefined = self { return true } else { return false } }

    /// Python truthiness (Undefined is falsy).
    var truthy: Bool {
        switch self {
        case .undefined, .none: return false
        case .bool(let b): return b
        case .int(let i): return i != 0
        case .double(let d): return d != 0
        case .string(let s): return !s.isEmpty
        case .array(let a), .tuple(let a): return !a.isEmpty
        case .dict(let d): return d.count > 0
        case .namespace, .function: return true
        }
    }

    /// The name Python would give the value's type, for error messages.
    var typeName: String {
        switch self {
        case .undefined: return "Undefined"
        case .none: return "NoneType"
        case .bool: return "bool"
        case .int: return "int"
        case .double: return "float"
        case .string: return "str"
        case .array: return "list"
        case .tuple: return "tuple"
        case .dict: return "dict"
        case .namespace: return "Namespace"
        case .function: return "function"
        }
    }

    /// Python `str(value)`, as `{{ value }}` prints it (Undefined prints nothing).
    var str: String {
        switch self {
        case .undefined: return ""
        case .string(let s): return s
        default: return repr
        }
    }

    /// Python `repr(value)`, used for values inside printed lists and dicts.
    var repr: String {
        switch self {
        case .undefined: return ""
        case .none: return "None"
        case .bool(let b): return b ? "True" : "False"
        case .int(let i): return String(i)
        case .double(let d): return pythonFloat(d)
        case .string(let s): return pythonStringRepr(s)
        case .array(let a): return "[" + a.map(\.repr).joined(separator: ", ") + "]"
        case .tuple(let a): return "(" + a.map(\.repr).joined(separator: ", ") + (a.count == 1 ? ",)" : ")")
        case .dict(let d):
            return "{" + d.pairs.map { pythonStringRepr($0.0) + ": " + $0.1.repr }.joined(separator: ", ") + "}"
        case .namespace(let ns):
            return "<Namespace " + Value.dict(ns.attributes).repr + ">"
        case .function(let f): return "<function \(f.name)>"
        }
    }
}

/// Python's `repr(float)`: shortest round-trip digits, `inf`, `nan`, exponent form outside 1e-4 ..< 1e16.
func pythonFloat(_ d: Double) -> String {
    if d.isNaN { return "nan" }
    if d.isInfinite { return d < 0 ? "-inf" : "inf" }
    var s = d.description  // shortest round-trip, like Python
    if let e = s.firstIndex(of: "e") {
        // Swift writes 1e-05 / 1e+16 like Python; make sure the mantissa has no ".0" Python would drop.
        var mantissa = String(s[..<e]); let exp = String(s[s.index(after: e)...])
        if mantissa.hasSuffix(".0") { mantissa.removeLast(2) }
        let sign = exp.hasPrefix("-") ? "-" : "+"
        var digits = exp.drop { $0 == "+" || $0 == "-" }
        while digits.count < 2 { digits = "0" + digits }
        s = mantissa + "e" + sign + digits
    }
    return s
}

/// Python's `repr(str)`.
func pythonStringRepr(_ s: String) -> String {
    let quote: Character = (s.contains("'") && !s.contains("\"")) ? "\"" : "'"
    var out = String(quote)
    for u in s.unicodeScalars {
        switch u {
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if Character(u) == quote { out += "\\" + String(quote) }
            else if u.value < 0x20 || u.value == 0x7f {
                out += "\\x" + String(format2hex(u.value))
            } else { out.unicodeScalars.append(u) }
        }
    }
    out.append(quote)
    return out
}

func format2hex(_ v: UInt32) -> String {
    let h = String(v, radix: 16)
    return h.count < 2 ? "0" + h : h
}
