/// A minimal GGUF v3 writer: metadata of every value type, tensors stored as given (F32, F16 or
/// raw blocks of any type), data aligned to `alignment` (default 32). Writes atomically.
public struct GGUFWriter {
    public let alignment: Int
    public private(set) var metadataKeys: [String] = []
    public private(set) var metadata: [String: GGUFValue] = [:]
    public private(set) var tensors: [(info: GGUFTensorInfo, bytes: [UInt8])] = []
    private var dataSize = 0

    /// `alignment` must be a power of two; if it is not 32, `general.alignment` is written.
    public init(alignment: Int = GGUFFile.defaultAlignment) throws {
        guard alignment > 0, alignment & (alignment - 1) == 0, alignment <= Int(UInt32.max) else {
            throw ModelFormatError.invalidValue(file: "<writer>", field: "general.alignment", value: String(alignment), expected: "a power of two")
        }
        self.alignment = alignment
        if alignment != GGUFFile.defaultAlignment {
            metadataKeys.append("general.alignment")
            metadata["general.alignment"] = .uint32(UInt32(alignment))
        }
    }

    /// Adds a metadata entry (keys keep insertion order; duplicates are an error).
    public mutating func add(_ key: String, _ value: GGUFValue) throws {
        guard metadata[key] == nil else {
            throw ModelFormatError.invalidValue(file: "<writer>", field: "metadata key", value: key, expected: "a unique key")
        }
        if key == "general.alignment" {
            guard case let .uint32(a) = value, Int(a) == alignment else {
                throw ModelFormatError.invalidValue(file: "<writer>", field: key, value: "\(value)", expected: "set through init(alignment:)")
            }
        }
        if case let .array(.integers(t, _)) = value, ![0, 1, 2, 3, 4, 5, 10, 11].contains(t) {
            throw ModelFormatError.invalidValue(file: "<writer>", field: key, value: "element type \(t)", expected: "an integer type")
        }
        if case let .array(.floats(t, _)) = value, t != 6, t != 12 {
            throw ModelFormatError.invalidValue(file: "<writer>", field: key, value: "element type \(t)", expected: "6 or 12")
        }
        metadataKeys.append(key)
        metadata[key] = value
    }

    /// Adds a tensor from raw bytes; `dims` in GGUF order (innermost first).
    public mutating func addTensor(_ name: String, type: GGMLType, dims: [Int], bytes: [UInt8]) throws {
        guard !name.isEmpty, name.utf8.count < GGUFFile.maxNameLength, !tensors.contains(where: { $0.info.name == name }) else {
            throw ModelFormatError.invalidValue(file: "<writer>", field: "tensor name", value: name,
                                                expected: "a unique, non-empty name shorter than \(GGUFFile.maxNameLength) bytes")
        }
        guard dims.count <= GGUFFile.maxDims, dims.allSatisfy({ $0 > 0 }), (dims.first ?? 1) % type.blockSize == 0 else {
            throw ModelFormatError.invalidValue(file: "<writer>", field: "tensor \(name).dims", value: "\(dims)",
                                                expected: "1...4 positive dims, dims[0] a multiple of \(type.blockSize)")
        }
        let n = dims.reduce(1, *) / type.blockSize * type.typeSize
        guard bytes.count == n else {
            throw ModelFormatError.invalidValue(file: "<writer>", field: "tensor \(name) byte count", value: String(bytes.count),
                                                expected: "\(n) for \(type) dims \(dims)")
        }
        tensors.append((GGUFTensorInfo(name: name, type: type, dims: dims, offset: dataSize, byteCount: n), bytes))
        dataSize += (n + alignment - 1) / alignment * alignment
    }

    /// Adds a float32 tensor, `shape` in PyTorch order, stored as F32 or F16.
    public mutating func addTensor(_ name: String, shape: [Int], values: [Float], type: GGMLType = .f32) throws {
        guard shape.reduce(1, *) == values.count else {
            throw ModelFormatError.invalidValue(file: "<writer>", field: "tensor \(name) value count", value: String(values.count),
                                                expected: "\(shape.reduce(1, *)) for shape \(shape)")
        }
        let bytes: [UInt8]
        switch type {
        case .f32: bytes = values.withUnsafeBytes { Array($0) }
        case .f16: bytes = values.map { Float16($0).bitPattern }.withUnsafeBytes { Array($0) }
        default: throw ModelFormatError.unsupportedDType(file: "<writer>", tensor: name, dtype: type.description)
        }
        try addTensor(name, type: type, dims: shape.reversed(), bytes: bytes)
    }

    private static func putString(_ s: String, _ out: inout [UInt8]) {
        put(UInt64(s.utf8.count), &out)
        out += Array(s.utf8)
    }

    private static func put<T: FixedWidthInteger>(_ v: T, _ out: inout [UInt8]) {
        withUnsafeBytes(of: v.littleEndian) { out += $0 }
    }

    private static func typeID(_ v: GGUFValue) -> UInt32 {
        switch v {
        case .uint8: return 0
        case .int8: return 1
        case .uint16: return 2
        case .int16: return 3
        case .uint32: return 4
        case .int32: return 5
        case .float32: return 6
        case .bool: return 7
        case .string: return 8
        case .array: return 9
        case .uint64: return 10
        case .int64: return 11
        case .float64: return 12
        }
    }

    private static func putValue(_ v: GGUFValue, _ out: inout [UInt8]) {
        switch v {
        case let .uint8(x): put(x, &out)
        case let .int8(x): put(x, &out)
        case let .uint16(x): put(x, &out)
        case let .int16(x): put(x, &out)
        case let .uint32(x): put(x, &out)
        case let .int32(x): put(x, &out)
        case let .float32(x): put(x.bitPattern, &out)
        case let .bool(x): out.append(x ? 1 : 0)
        case let .string(x): putString(x, &out)
        case let .uint64(x): put(x, &out)
        case let .int64(x): put(x, &out)
        case let .float64(x): put(x.bitPattern, &out)
        case let .array(a):
            switch a {
            case let .integers(t, values):
                put(t, &out); put(UInt64(values.count), &out)
                for x in values {
                    switch t {
                    case 0: put(UInt8(truncatingIfNeeded: x), &out)
                    case 1: put(Int8(truncatingIfNeeded: x), &out)
                    case 2: put(UInt16(truncatingIfNeeded: x), &out)
                    case 3: put(Int16(truncatingIfNeeded: x), &out)
                    case 4: put(UInt32(truncatingIfNeeded: x), &out)
                    case 5: put(Int32(truncatingIfNeeded: x), &out)
                    default: put(x, &out)
                    }
                }
            case let .floats(t, values):
                put(t, &out); put(UInt64(values.count), &out)
                for x in values { if t == 6 { put(Float(x).bitPattern, &out) } else { put(x.bitPattern, &out) } }
            case let .bools(values):
                put(UInt32(7), &out); put(UInt64(values.count), &out)
                for x in values { out.append(x ? 1 : 0) }
            case let .string(values):
                put(UInt32(8), &out); put(UInt64(values.count), &out)
                for x in values { putString(x, &out) }
            }
        }
    }

    /// Header, metadata and tensor infos, padded to the data section.
    public func headerBytes() -> [UInt8] {
        var out: [UInt8] = Array("GGUF".utf8)
        GGUFWriter.put(UInt32(3), &out)
        GGUFWriter.put(UInt64(tensors.count), &out)
        GGUFWriter.put(UInt64(metadataKeys.count), &out)
        for k in metadataKeys {
            let v = metadata[k]!
            GGUFWriter.putString(k, &out)
            GGUFWriter.put(GGUFWriter.typeID(v), &out)
            GGUFWriter.putValue(v, &out)
        }
        for (info, _) in tensors {
            GGUFWriter.putString(info.name, &out)
            GGUFWriter.put(UInt32(info.dims.count), &out)
            for d in info.dims { GGUFWriter.put(UInt64(d), &out) }
            GGUFWriter.put(info.type.rawValue, &out)
            GGUFWriter.put(UInt64(info.offset), &out)
        }
        if !tensors.isEmpty {
            while out.count % alignment != 0 { out.append(0) }
        }
        return out
    }

    /// Writes the file atomically (temporary file + rename).
    public func write(to path: String) throws {
        let out = try AtomicFileWriter(path: path)
        do {
            try out.write(headerBytes())
            for (info, bytes) in tensors {
                try out.write(bytes)
                let padded = (info.byteCount + alignment - 1) / alignment * alignment
                try out.zeros(padded - info.byteCount)
            }
            try out.commit()
        } catch {
            out.abandon()
            throw error
        }
    }
}
