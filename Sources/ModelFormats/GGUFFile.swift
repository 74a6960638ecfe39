import Dispatch

/// One tensor's entry in a GGUF file.
public struct GGUFTensorInfo: Equatable, Sendable {
    public let name: String
    public let type: GGMLType
    /// GGUF (ggml) order: `dims[0]` is the innermost, fastest-varying dimension.
    public let dims: [Int]
    /// Offset relative to the start of the data section.
    public let offset: Int
    /// Bytes of tensor data.
    public let byteCount: Int
    /// PyTorch order (outermost first) = `dims` reversed.
    public var shape: [Int] { dims.reversed() }
    public var elementCount: Int { dims.reduce(1, *) }
}

/// A GGUF v2/v3 file, memory-mapped and validated on open (SPEC §8.1). Tensors are read from
/// the mapping and reported exactly as stored (no Q/K permutation).
public final class GGUFFile: TensorSource, @unchecked Sendable {
    /// Alignment used when `general.alignment` is absent.
    public static let defaultAlignment = 32
    public static let maxDims = 4
    /// ggml's GGML_MAX_NAME: tensor names must be shorter than this many bytes.
    public static let maxNameLength = 64

    public let path: String
    public let mapping: MappedFile
    public let version: UInt32
    /// Metadata by key, and the keys in file order.
    public let metadata: [String: GGUFValue]
    public let metadataKeys: [String]
    public let alignment: Int
    /// File offset of the tensor data section.
    public let dataOffset: Int
    /// Tensor infos in file order.
    public let tensorInfos: [GGUFTensorInfo]
    public let tensorNames: [String]
    private let index: [String: Int]

    public convenience init(path: String) throws {
        try self.init(mapping: MappedFile(path: path))
    }

    /// Parses an already mapped file.
    public init(mapping map: MappedFile) throws {
        let path = map.path
        self.path = path
        mapping = map
        var r = map.reader()
        let magic = try r.bytes(4, "magic")
        guard Array(magic) == Array("GGUF".utf8) else {
            throw ModelFormatError.invalidValue(file: path, field: "magic",
                                                value: "0x" + magic.map { String(format2: $0) }.joined(),
                                                expected: "\"GGUF\" (0x47475546)")
        }
        let version = try r.u32("version")
        if version == 1 {
            throw ModelFormatError.invalidValue(file: path, field: "version", value: "1",
                                                expected: "2 or 3 (GGUF v1 is no longer supported)")
        }
        if version & 0x0000_FFFF == 0 {
            throw ModelFormatError.invalidValue(file: path, field: "version", value: String(version),
                                                expected: "2 or 3 (this looks byte-swapped: a big-endian file on a little-endian host?)")
        }
        guard version == 2 || version == 3 else {
            throw ModelFormatError.invalidValue(file: path, field: "version", value: String(version), expected: "2 or 3")
        }
        self.version = version
        let tensorCount64 = try r.u64("tensor_count")
        let kvCount64 = try r.u64("metadata_kv_count")
        // A count larger than the whole file is absurd; otherwise the loop below reports the first
        // field that does not fit (each KV needs at least 13 bytes, so the loop is bounded).
        guard kvCount64 <= UInt64(map.size) else {
            throw ModelFormatError.invalidValue(file: path, field: "metadata_kv_count", value: String(kvCount64),
                                                expected: "at most \(map.size) (the file has \(map.size) bytes)")
        }
        let kvCount = Int(kvCount64)
        var metadata: [String: GGUFValue] = [:]
        var keys: [String] = []
        metadata.reserveCapacity(min(kvCount, r.remaining / 13))
        keys.reserveCapacity(min(kvCount, r.remaining / 13))
        for k in 0..<kvCount {
            let key = try GGUFFile.readString(&r, field: "metadata[\(k)].key", strict: true)
            let type = try r.u32("metadata[\(key)].type")
            let value = try GGUFFile.readValue(&r, type: type, key: key)
            guard metadata.updateValue(value, forKey: key) == nil else {
                throw ModelFormatError.invalidValue(file: path, field: "metadata[\(k)].key", value: key, expected: "a unique key (duplicate)")
            }
            keys.append(key)
        }
        self.metadata = metadata
        metadataKeys = keys

        var alignment = GGUFFile.defaultAlignment
        if let a = metadata["general.alignment"] {
            guard case let .uint32(v) = a, v != 0, v & (v - 1) == 0 else {
                throw ModelFormatError.invalidValue(file: path, field: "general.alignment", value: "\(a)",
                                                    expected: "a UINT32 power of two")
            }
            alignment = Int(v)
        }
        self.alignment = alignment

        guard tensorCount64 <= UInt64(map.size) else {
            throw ModelFormatError.invalidValue(file: path, field: "tensor_count", value: String(tensorCount64),
                                                expected: "at most \(map.size) (the file has \(map.size) bytes)")
        }
        let tensorCount = Int(tensorCount64)
        var infos: [GGUFTensorInfo] = []
        var index: [String: Int] = [:]
        infos.reserveCapacity(min(tensorCount, r.remaining / 24))
        index.reserveCapacity(min(tensorCount, r.remaining / 24))
        for t in 0..<tensorCount {
            let name = try GGUFFile.readString(&r, field: "tensor_info[\(t)].name", strict: true)
            guard name.utf8.count < GGUFFile.maxNameLength else {
                throw ModelFormatError.invalidValue(file: path, field: "tensor_info[\(t)].name", value: name,
                                                    expected: "fewer than \(GGUFFile.maxNameLength) bytes")
            }
            guard index[name] == nil else {
                throw ModelFormatError.invalidValue(file: path, field: "tensor_info[\(t)].name", value: name, expected: "a unique name (duplicate)")
            }
            let nDims = try r.u32("tensor \(name).n_dims")
            guard nDims <= UInt32(GGUFFile.maxDims) else {
                throw ModelFormatError.invalidValue(file: path, field: "tensor \(name).n_dims", value: String(nDims),
                                                    expected: "at most \(GGUFFile.maxDims)")
            }
            var dims: [Int] = []
            var elements = 1
            for d in 0..<Int(nDims) {
                let v = try r.u64("tensor \(name).dims[\(d)]")
                guard v > 0, v <= UInt64(Int.max) else {
                    throw ModelFormatError.invalidValue(file: path, field: "tensor \(name).dims[\(d)]", value: String(v),
                                                        expected: "a positive dimension")
                }
                let (p, o) = elements.multipliedReportingOverflow(by: Int(v))
                guard !o else {
                    throw ModelFormatError.invalidValue(file: path, field: "tensor \(name).dims", value: "\(dims + [Int(v)])",
                                                        expected: "an element count that fits in 63 bits")
                }
                elements = p
                dims.append(Int(v))
            }
            let rawType = try r.u32("tensor \(name).type")
            guard let type = GGMLType(rawValue: rawType) else {
                throw ModelFormatError.invalidValue(file: path, field: "tensor \(name).type", value: String(rawType),
                                                    expected: "a known ggml type id")
            }
            let ne0 = dims.first ?? 1
            guard ne0 % type.blockSize == 0 else {
                throw ModelFormatError.invalidValue(file: path, field: "tensor \(name).dims[0]", value: String(ne0),
                                                    expected: "a multiple of \(type)'s block size \(type.blockSize)")
            }
            let (bytes, o) = (elements / type.blockSize).multipliedReportingOverflow(by: type.typeSize)
            guard !o else {
                throw ModelFormatError.invalidValue(file: path, field: "tensor \(name).dims", value: "\(dims)",
                                                    expected: "a byte size that fits in 63 bits")
            }
            let offset64 = try r.u64("tensor \(name).offset")
            guard offset64 <= UInt64(Int.max), offset64 % UInt64(alignment) == 0 else {
                throw ModelFormatError.invalidValue(file: path, field: "tensor \(name).offset", value: String(offset64),
                                                    expected: "a multiple of the alignment \(alignment)")
            }
            index[name] = infos.count
            infos.append(GGUFTensorInfo(name: name, type: type, dims: dims, offset: Int(offset64), byteCount: bytes))
        }
        let end = r.offset
        let dataOffset = tensorCount == 0 ? end : (end + alignment - 1) / alignment * alignment
        self.dataOffset = dataOffset
        for info in infos {
            let (start, o1) = dataOffset.addingReportingOverflow(info.offset)
            let (stop, o2) = start.addingReportingOverflow(info.byteCount)
            guard !o1, !o2, stop <= map.size else {
                throw ModelFormatError.truncated(file: path, field: "tensor \(info.name) data", offset: o1 ? Int.max : start,
                                                 needed: info.byteCount, size: map.size)
            }
        }
        tensorInfos = infos
        tensorNames = infos.map(\.name)
        self.index = index
    }

    // MARK: - Metadata parsing

    private static func readString(_ r: inout ByteReader, field: @autoclosure () -> String, strict: Bool) throws -> String {
        let len = try r.u64(field() + " length")
        guard len <= UInt64(r.remaining) else {
            throw ModelFormatError.truncated(file: r.file, field: field(), offset: r.offset, needed: len > UInt64(Int.max) ? Int.max : Int(len), size: r.size)
        }
        let bytes = try r.bytes(Int(len), field())
        if strict {
            guard let s = String(validating: bytes, as: UTF8.self) else {
                throw ModelFormatError.invalidValue(file: r.file, field: field(), value: "bytes \(Array(bytes.prefix(32)))",
                                                    expected: "valid UTF-8")
            }
            return s
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static let typeNames = ["UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL",
                                    "STRING", "ARRAY", "UINT64", "INT64", "FLOAT64"]

    private static func readBool(_ r: inout ByteReader, field: @autoclosure () -> String) throws -> Bool {
        let b = try r.u8(field())
        guard b <= 1 else {
            throw ModelFormatError.invalidValue(file: r.file, field: field(), value: String(b), expected: "a BOOL (0 or 1)")
        }
        return b == 1
    }

    private static func readValue(_ r: inout ByteReader, type: UInt32, key: String) throws -> GGUFValue {
        switch type {
        case 0: return .uint8(try r.u8(key))
        case 1: return .int8(try r.i8(key))
        case 2: return .uint16(try r.u16(key))
        case 3: return .int16(try r.i16(key))
        case 4: return .uint32(try r.u32(key))
        case 5: return .int32(try r.i32(key))
        case 6: return .float32(try r.f32(key))
        case 7: return .bool(try readBool(&r, field: key))
        case 8: return .string(try readString(&r, field: key, strict: false))
        case 10: return .uint64(try r.u64(key))
        case 11: return .int64(try r.i64(key))
        case 12: return .float64(try r.f64(key))
        case 9:
            let elementType = try r.u32("\(key).element_type")
            let count64 = try r.u64("\(key).count")
            let minSize: Int
            switch elementType {
            case 0, 1, 7: minSize = 1
            case 2, 3: minSize = 2
            case 4, 5, 6: minSize = 4
            case 8, 10, 11, 12: minSize = 8
            case 9:
                throw ModelFormatError.invalidValue(file: r.file, field: "\(key).element_type", value: "9 (ARRAY)",
                                                    expected: "a non-array type (nested arrays are not supported)")
            default:
                throw ModelFormatError.invalidValue(file: r.file, field: "\(key).element_type", value: String(elementType),
                                                    expected: "a GGUF value type 0...12")
            }
            guard count64 <= UInt64(r.remaining / minSize) else {
                throw ModelFormatError.truncated(file: r.file, field: "\(key) (array of \(count64) \(typeNames[Int(elementType)]))",
                                                 offset: r.offset, needed: count64 > UInt64(Int.max / minSize) ? Int.max : Int(count64) * minSize,
                                                 size: r.size)
            }
            let n = Int(count64)
            switch elementType {
            case 8:
                var a: [String] = []
                a.reserveCapacity(n)
                for i in 0..<n { a.append(try readString(&r, field: "\(key)[\(i)]", strict: false)) }
                return .array(.string(a))
            case 7:
                var a: [Bool] = []
                a.reserveCapacity(n)
                for i in 0..<n { a.append(try readBool(&r, field: "\(key)[\(i)]")) }
                return .array(.bools(a))
            case 6, 12:
                var a: [Double] = []
                a.reserveCapacity(n)
                for i in 0..<n {
                    a.append(elementType == 6 ? Double(try r.f32("\(key)[\(i)]")) : try r.f64("\(key)[\(i)]"))
                }
                return .array(.floats(elementType: elementType, values: a))
            default:
                var a = [Int64](repeating: 0, count: n)
                try a.withUnsafeMutableBufferPointer { out in
                    for i in 0..<n {
                        switch elementType {
                        case 0: out[i] = Int64(try r.u8(key))
                        case 1: out[i] = Int64(try r.i8(key))
                        case 2: out[i] = Int64(try r.u16(key))
                        case 3: out[i] = Int64(try r.i16(key))
                        case 4: out[i] = Int64(try r.u32(key))
                        case 5: out[i] = Int64(try r.i32(key))
                        case 10: out[i] = Int64(bitPattern: try r.u64(key))
                        default: out[i] = try r.i64(key)
                        }
                    }
                }
                return .array(.integers(elementType: elementType, values: a))
            }
        default:
            throw ModelFormatError.invalidValue(file: r.file, field: "metadata[\(key)].type", value: String(type),
                                                expected: "a GGUF value type 0...12")
        }
    }

    // MARK: - Tensors

    public func tensorInfo(_ name: String) throws -> GGUFTensorInfo {
        guard let i = index[name] else { throw ModelFormatError.missingTensor(file: path, name: name) }
        return tensorInfos[i]
    }

    public func contains(_ name: String) -> Bool { index[name] != nil }

    public func shape(of name: String) throws -> [Int] { try tensorInfo(name).shape }

    /// The tensor's bytes inside the mapping (valid while this object lives).
    public func rawBytes(_ name: String) throws -> UnsafeRawBufferPointer {
        let i = try tensorInfo(name)
        return mapping.bytes(at: dataOffset + i.offset, count: i.byteCount)
    }

    /// Dequantizes only rows `rows` (a row = `dims[0]` values = the last PyTorch dim).
    public func readFloat32Rows(_ name: String, rows: Range<Int>, into destination: UnsafeMutableBufferPointer<Float>) throws {
        let info = try tensorInfo(name)
        guard info.type.canDequantize else {
            throw ModelFormatError.unsupportedDType(file: path, tensor: name, dtype: info.type.description)
        }
        let (rowLength, _) = try checkRows(file: path, name: name, shape: info.shape, rows: rows, destination: destination.count)
        guard !rows.isEmpty, rowLength > 0, let dst = destination.baseAddress else { return }
        let blocksPerRow = rowLength / info.type.blockSize
        let rowBytes = blocksPerRow * info.type.typeSize
        let src = mapping.base + dataOffset + info.offset + rows.lowerBound * rowBytes
        GGMLDequant.dequantize(info.type, src, dst, blocks: blocksPerRow * rows.count)
    }

    /// Dequantizes (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K) exactly as
    /// ggml's `dequantize_row_*`; rows are split across threads for large tensors.
    public func readFloat32(_ name: String, into destination: UnsafeMutableBufferPointer<Float>) throws {
        let info = try tensorInfo(name)
        guard info.type.canDequantize else {
            throw ModelFormatError.unsupportedDType(file: path, tensor: name, dtype: info.type.description)
        }
        let count = info.elementCount
        guard destination.count == count else {
            throw ModelFormatError.invalidValue(file: path, field: "\(name) destination count", value: String(destination.count),
                                                expected: "\(count) (shape \(info.shape))")
        }
        guard count > 0, let dst = destination.baseAddress else { return }
        let src = mapping.base + dataOffset + info.offset
        let type = info.type
        let blocks = count / type.blockSize
        // Split into chunks of whole blocks; parallel only when worth it.
        let chunkCount = count >= 1 << 16 ? min(16, max(1, blocks / 64)) : 1
        if chunkCount == 1 {
            GGMLDequant.dequantize(type, src, dst, blocks: blocks)
            return
        }
        let per = (blocks + chunkCount - 1) / chunkCount
        DispatchQueue.concurrentPerform(iterations: chunkCount) { c in
            let b0 = c * per
            let b1 = min(blocks, b0 + per)
            if b0 < b1 {
                GGMLDequant.dequantize(type, src + b0 * type.typeSize, dst + b0 * type.blockSize, blocks: b1 - b0)
            }
        }
    }
}

extension String {
    init(format2 byte: UInt8) {
        let hex = Array("0123456789abcdef")
        self = String([hex[Int(byte >> 4)], hex[Int(byte & 15)]])
    }
}

// MARK: - Typed metadata access that throws errors naming the file and key

extension GGUFFile {
    private func value(_ key: String, expected: String) throws -> GGUFValue {
        guard let v = metadata[key] else {
            throw ModelFormatError.invalidValue(file: path, field: key, value: "missing", expected: expected)
        }
        return v
    }

    /// A STRING value; throws if missing or of another type.
    public func string(_ key: String) throws -> String {
        let v = try value(key, expected: "a STRING")
        guard let s = v.string else { throw ModelFormatError.invalidValue(file: path, field: key, value: "\(v)", expected: "a STRING") }
        return s
    }

    /// Any integer value as Int; throws if missing or not an integer.
    public func int(_ key: String) throws -> Int {
        let v = try value(key, expected: "an integer")
        guard let i = v.int else { throw ModelFormatError.invalidValue(file: path, field: key, value: "\(v)", expected: "an integer") }
        return i
    }

    /// A FLOAT32/FLOAT64 (or integer) value as Float; throws if missing or not numeric.
    public func float(_ key: String) throws -> Float {
        let v = try value(key, expected: "a number")
        guard let f = v.float else { throw ModelFormatError.invalidValue(file: path, field: key, value: "\(v)", expected: "a number") }
        return f
    }

    /// An ARRAY of STRING; throws if missing or of another type.
    public func stringArray(_ key: String) throws -> [String] {
        let v = try value(key, expected: "an ARRAY of STRING")
        guard let a = v.stringArray else {
            throw ModelFormatError.invalidValue(file: path, field: key, value: String("\(v)".prefix(80)), expected: "an ARRAY of STRING")
        }
        return a
    }
}
