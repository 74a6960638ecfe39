/// The element types a safetensors file may declare (`dtype` strings of the reference reader),
/// listed in the reference enum's order, which is ascending alignment.
public enum SafetensorsDType: String, CaseIterable, Sendable {
    case bool = "BOOL", f4 = "F4", f6e2m3 = "F6_E2M3", f6e3m2 = "F6_E3M2", u8 = "U8", i8 = "I8"
    case f8e5m2 = "F8_E5M2", f8e4m3 = "F8_E4M3", f8e8m0 = "F8_E8M0"
    case f8e4m3fnuz = "F8_E4M3FNUZ", f8e5m2fnuz = "F8_E5M2FNUZ"
    case i16 = "I16", u16 = "U16", f16 = "F16", bf16 = "BF16"
    case i32 = "I32", u32 = "U32", f32 = "F32", c64 = "C64", f64 = "F64", i64 = "I64", u64 = "U64"

    /// Bits per element.
    public var bitSize: Int {
        switch self {
        case .f4: return 4
        case .f6e2m3, .f6e3m2: return 6
        case .bool, .u8, .i8, .f8e5m2, .f8e4m3, .f8e8m0, .f8e4m3fnuz, .f8e5m2fnuz: return 8
        case .i16, .u16, .f16, .bf16: return 16
        case .i32, .u32, .f32: return 32
        case .c64, .f64, .i64, .u64: return 64
        }
    }

    /// Position in the reference enum (the writer orders tensors by this, descending).
    var order: Int { SafetensorsDType.allCases.firstIndex(of: self)! }
}

/// One tensor entry of a safetensors header.
public struct SafetensorsTensorInfo: Equatable, Sendable {
    public let name: String
    public let dtype: SafetensorsDType
    /// PyTorch order (outermost first).
    public let shape: [Int]
    /// Byte range relative to the start of the data buffer (end exclusive).
    public let dataOffsets: (begin: Int, end: Int)
    public var byteCount: Int { dataOffsets.end - dataOffsets.begin }
    public var elementCount: Int { shape.reduce(1, *) }

    public static func == (a: Self, b: Self) -> Bool {
        a.name == b.name && a.dtype == b.dtype && a.shape == b.shape && a.dataOffsets == b.dataOffsets
    }
}

/// One `.safetensors` file, memory-mapped and fully validated (SPEC §7.2) on open.
public final class SafetensorsFile: TensorSource, @unchecked Sendable {
    /// Largest header the reference reader accepts.
    public static let maxHeaderSize = 100_000_000

    public let path: String
    public let mapping: MappedFile
    /// The `__metadata__` map (empty if absent).
    public let metadata: [String: String]
    /// Tensor names in data-offset (file) order.
    public let tensorNames: [String]
    /// File offset of the data buffer (8 + header length).
    public let dataStart: Int
    private let infos: [String: SafetensorsTensorInfo]

    public convenience init(path: String) throws {
        try self.init(mapping: MappedFile(path: path))
    }

    /// Parses an already mapped file.
    public init(mapping map: MappedFile) throws {
        let path = map.path
        self.path = path
        mapping = map
        var r = map.reader()
        let n64 = try r.u64("header length")
        guard n64 <= UInt64(SafetensorsFile.maxHeaderSize) else {
            throw ModelFormatError.invalidValue(file: path, field: "header length", value: String(n64),
                                                expected: "at most \(SafetensorsFile.maxHeaderSize) bytes")
        }
        let n = Int(n64)
        let headerBytes = try r.bytes(n, "header (JSON, \(n) bytes)")
        dataStart = 8 + n
        guard n > 0, headerBytes[0] == UInt8(ascii: "{") else {
            throw ModelFormatError.invalidValue(file: path, field: "header", value: n == 0 ? "empty" : "first byte 0x\(String(headerBytes[0], radix: 16))",
                                                expected: "a JSON object starting with '{'")
        }
        let json: JSONValue
        do {
            json = try JSONParser.parse(headerBytes)
        } catch let e as JSONParseError {
            throw ModelFormatError.invalidValue(file: path, field: "header", value: "\(e.message) at header byte \(e.offset)",
                                                expected: "a valid UTF-8 JSON object")
        }
        guard case let .object(members) = json else {
            throw ModelFormatError.invalidValue(file: path, field: "header", value: json.typeName, expected: "a JSON object")
        }

        var metadata: [String: String] = [:]
        var list: [SafetensorsTensorInfo] = []
        list.reserveCapacity(members.count)
        for (key, value) in members {
            if key == "__metadata__" {
                guard case let .object(kv) = value else {
                    throw ModelFormatError.invalidValue(file: path, field: "__metadata__", value: value.typeName,
                                                        expected: "an object of string values")
                }
                for (k, v) in kv {
                    guard case let .string(s) = v else {
                        throw ModelFormatError.invalidValue(file: path, field: "__metadata__.\(k)", value: v.typeName, expected: "a string")
                    }
                    metadata[k] = s
                }
                continue
            }
            list.append(try SafetensorsFile.parseEntry(file: path, name: key, value: value))
        }

        // Coverage: sorted by offsets, starting at 0, contiguous, ending at the file's end.
        list.sort { ($0.dataOffsets.begin, $0.dataOffsets.end) < ($1.dataOffsets.begin, $1.dataOffsets.end) }
        var expected = 0
        for info in list {
            if info.dataOffsets.begin != expected {
                let what = info.dataOffsets.begin > expected ? "a hole" : "an overlap"
                throw ModelFormatError.invalidValue(file: path, field: "\(info.name).data_offsets",
                                                    value: "[\(info.dataOffsets.begin), \(info.dataOffsets.end)]",
                                                    expected: "to start at \(expected) (\(what) in the data buffer)")
            }
            expected = info.dataOffsets.end
        }
        let (total, overflow) = dataStart.addingReportingOverflow(expected)
        if overflow || total != map.size {
            throw ModelFormatError.invalidValue(file: path, field: "data buffer size",
                                                value: "\(map.size - dataStart) bytes in the file",
                                                expected: "\(expected) bytes, as the tensors' data_offsets cover")
        }
        self.metadata = metadata
        tensorNames = list.map(\.name)
        infos = Dictionary(uniqueKeysWithValues: list.map { ($0.name, $0) })
    }

    private static func parseEntry(file: String, name: String, value: JSONValue) throws -> SafetensorsTensorInfo {
        guard case let .object(fields) = value else {
            throw ModelFormatError.invalidValue(file: file, field: name, value: value.typeName, expected: "a tensor entry object")
        }
        func field(_ k: String) throws -> JSONValue {
            guard let v = fields.first(where: { $0.key == k })?.value else {
                throw ModelFormatError.invalidValue(file: file, field: "\(name).\(k)", value: "missing", expected: "present")
            }
            return v
        }
        guard case let .string(dtypeText) = try field("dtype") else {
            throw ModelFormatError.invalidValue(file: file, field: "\(name).dtype", value: try field("dtype").typeName, expected: "a string")
        }
        guard let dtype = SafetensorsDType(rawValue: dtypeText) else {
            throw ModelFormatError.invalidValue(file: file, field: "\(name).dtype", value: dtypeText,
                                                expected: "one of " + SafetensorsDType.allCases.map(\.rawValue).joined(separator: ", "))
        }
        guard case let .array(dims) = try field("shape") else {
            throw ModelFormatError.invalidValue(file: file, field: "\(name).shape", value: try field("shape").typeName, expected: "an array")
        }
        var shape: [Int] = []
        var count = 1
        var overflow = false
        for d in dims {
            guard let v = d.nonNegativeInt else {
                throw ModelFormatError.invalidValue(file: file, field: "\(name).shape", value: "\(d)", expected: "non-negative integers")
            }
            shape.append(v)
            if !overflow { (count, overflow) = count.multipliedReportingOverflow(by: v) }
        }
        guard case let .array(offs) = try field("data_offsets"), offs.count == 2,
              let begin = offs[0].nonNegativeInt, let end = offs[1].nonNegativeInt, begin <= end else {
            throw ModelFormatError.invalidValue(file: file, field: "\(name).data_offsets", value: "\(try field("data_offsets"))",
                                                expected: "[begin, end] with 0 <= begin <= end")
        }
        let bits = count.multipliedReportingOverflow(by: dtype.bitSize)
        if overflow || bits.overflow || bits.partialValue % 8 != 0 || bits.partialValue / 8 != end - begin {
            let size = overflow || bits.overflow ? "overflowing" : (bits.partialValue % 8 != 0 ? "\(bits.partialValue) bits (not whole bytes)" : "\(bits.partialValue / 8) bytes")
            throw ModelFormatError.invalidValue(file: file, field: "\(name).data_offsets",
                                                value: "[\(begin), \(end)] (\(end - begin) bytes)",
                                                expected: "a span equal to shape \(shape) × \(dtype.rawValue) = \(size)")
        }
        return SafetensorsTensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: (begin, end))
    }

    /// The header entry of a tensor.
    public func info(_ name: String) throws -> SafetensorsTensorInfo {
        guard let i = infos[name] else { throw ModelFormatError.missingTensor(file: path, name: name) }
        return i
    }

    public func dtype(_ name: String) throws -> SafetensorsDType { try info(name).dtype }

    public func shape(of name: String) throws -> [Int] { try info(name).shape }

    public func contains(_ name: String) -> Bool { infos[name] != nil }

    /// The tensor's bytes inside the mapping (valid while this object lives).
    public func rawBytes(_ name: String) throws -> UnsafeRawBufferPointer {
        let i = try info(name)
        return mapping.bytes(at: dataStart + i.dataOffsets.begin, count: i.byteCount)
    }

    /// Widens only rows `rows` (a row = the last dim).
    public func readFloat32Rows(_ name: String, rows: Range<Int>, into destination: UnsafeMutableBufferPointer<Float>) throws {
        let i = try info(name)
        let (rowLength, _) = try checkRows(file: path, name: name, shape: i.shape, rows: rows, destination: destination.count)
        guard [.f32, .f16, .bf16].contains(i.dtype) else {
            throw ModelFormatError.unsupportedDType(file: path, tensor: name, dtype: i.dtype.rawValue)
        }
        let size = i.dtype.bitSize / 8
        try widenToFloat32(file: path, tensor: name, dtype: i.dtype,
                           source: mapping.bytes(at: dataStart + i.dataOffsets.begin + rows.lowerBound * rowLength * size,
                                                 count: rows.count * rowLength * size),
                           into: destination)
    }

    public func readFloat32(_ name: String, into destination: UnsafeMutableBufferPointer<Float>) throws {
        let i = try info(name)
        guard destination.count == i.elementCount else {
            throw ModelFormatError.invalidValue(file: path, field: "\(name) destination count", value: String(destination.count),
                                                expected: "\(i.elementCount) (shape \(i.shape))")
        }
        try widenToFloat32(file: path, tensor: name, dtype: i.dtype,
                           source: mapping.bytes(at: dataStart + i.dataOffsets.begin, count: i.byteCount),
                           into: destination)
    }
}

/// F32 / F16 / BF16 little-endian bytes → float32.
func widenToFloat32(file: String, tensor: String, dtype: SafetensorsDType,
                    source: UnsafeRawBufferPointer, into destination: UnsafeMutableBufferPointer<Float>) throws {
    let n = destination.count
    guard n > 0, let dst = destination.baseAddress, let src = source.baseAddress else { return }
    switch dtype {
    case .f32:
        UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: n * 4)
    case .f16:
        for k in 0..<n {
            dst[k] = Float(Float16(bitPattern: UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self))))
        }
    case .bf16:
        for k in 0..<n {
            let b = UInt16(littleEndian: src.loadUnaligned(fromByteOffset: 2 * k, as: UInt16.self))
            dst[k] = Float(bitPattern: UInt32(b) << 16)
        }
    default:
        throw ModelFormatError.unsupportedDType(file: file, tensor: tensor, dtype: dtype.rawValue)
    }
}
