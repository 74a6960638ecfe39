/// One GGUF metadata value (GGUF v3 value types 0…12). Arrays keep their element type.
public enum GGUFValue: Equatable, Sendable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case float32(Float), bool(Bool), string(String)
    case array(GGUFValueArray)
    case uint64(UInt64), int64(Int64), float64(Double)

    /// Any integer type as Int (nil for non-integers, or a UInt64 that does not fit).
    public var int: Int? {
        switch self {
        case let .uint8(v): return Int(v)
        case let .int8(v): return Int(v)
        case let .uint16(v): return Int(v)
        case let .int16(v): return Int(v)
        case let .uint32(v): return Int(v)
        case let .int32(v): return Int(v)
        case let .uint64(v): return v <= UInt64(Int.max) ? Int(v) : nil
        case let .int64(v): return Int(v)
        default: return nil
        }
    }
    /// float32/float64 (and integers) as Double.
    public var double: Double? {
        switch self {
        case let .float32(v): return Double(v)
        case let .float64(v): return v
        default: return int.map(Double.init)
        }
    }
    public var float: Float? { double.map(Float.init) }
    public var string: String? { if case let .string(s) = self { return s } else { return nil } }
    public var bool: Bool? { if case let .bool(b) = self { return b } else { return nil } }
    public var stringArray: [String]? { if case let .array(.string(a)) = self { return a } else { return nil } }
    /// Integer arrays of any element type as [Int].
    public var intArray: [Int]? { if case let .array(a) = self { return a.ints } else { return nil } }
    /// Float arrays (float32/float64) as [Float].
    public var floatArray: [Float]? { if case let .array(a) = self { return a.floats } else { return nil } }
}

/// A homogeneous GGUF array. Integer element types are widened to Int64 (keeping the wire type
/// in `elementType`), floats to Double; nested arrays are rejected by the reader, as ggml does.
public enum GGUFValueArray: Equatable, Sendable {
    case integers(elementType: UInt32, values: [Int64])
    case floats(elementType: UInt32, values: [Double])
    case bools([Bool])
    case string([String])

    public var count: Int {
        switch self {
        case let .integers(_, v): return v.count
        case let .floats(_, v): return v.count
        case let .bools(v): return v.count
        case let .string(v): return v.count
        }
    }
    public var ints: [Int]? { if case let .integers(_, v) = self { return v.map { Int($0) } } else { return nil } }
    public var floats: [Float]? { if case let .floats(_, v) = self { return v.map { Float($0) } } else { return nil } }
}
