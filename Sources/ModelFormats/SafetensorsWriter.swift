/// Builds a `.safetensors` file exactly as the reference (Rust/Python) writer does (SPEC §7.3):
/// tensors ordered by dtype alignment descending then name, compact JSON header with
/// `__metadata__` first (keys sorted), header padded with spaces to a multiple of 8.
/// The file is written atomically (temporary file + rename).
public struct SafetensorsWriter {
    public struct Entry {
        public let name: String
        public let dtype: SafetensorsDType
        public let shape: [Int]
        public let byteCount: Int
        let fill: (AtomicFileWriter) throws -> Void
    }

    public var metadata: [String: String]
    public private(set) var entries: [Entry] = []

    public init(metadata: [String: String] = [:]) { self.metadata = metadata }

    private static func byteCount(_ name: String, _ dtype: SafetensorsDType, _ shape: [Int]) throws -> Int {
        var n = 1
        for d in shape {
            guard d >= 0 else {
                throw ModelFormatError.invalidValue(file: "<writer>", field: "\(name).shape", value: "\(shape)", expected: "non-negative dims")
            }
            let (p, o) = n.multipliedReportingOverflow(by: d)
            guard !o else {
                throw ModelFormatError.invalidValue(file: "<writer>", field: "\(name).shape", value: "\(shape)", expected: "a size that fits in Int")
            }
            n = p
        }
        guard (n * dtype.bitSize) % 8 == 0 else {
            throw ModelFormatError.invalidValue(file: "<writer>", field: "\(name).shape", value: "\(shape)",
                                                expected: "a whole number of bytes for \(dtype.rawValue)")
        }
        return n * dtype.bitSize / 8
    }

    private mutating func append(_ e: Entry) throws {
        guard e.name != "__metadata__", !entries.contains(where: { $0.name == e.name }) else {
            throw ModelFormatError.invalidValue(file: "<writer>", field: "tensor name", value: e.name, expected: "a unique name other than __metadata__")
        }
        entries.append(e)
    }

    /// Adds a tensor from raw little-endian bytes (copied).
    public mutating func add(_ name: String, dtype: SafetensorsDType, shape: [Int], bytes: [UInt8]) throws {
        let n = try SafetensorsWriter.byteCount(name, dtype, shape)
        guard bytes.count == n else {
            throw ModelFormatError.invalidValue(file: "<writer>", field: "\(name) byte count", value: String(bytes.count),
                                                expected: "\(n) for shape \(shape) × \(dtype.rawValue)")
        }
        try append(Entry(name: name, dtype: dtype, shape: shape, byteCount: n, fill: { try $0.write(bytes) }))
    }

    /// Adds a float32 tensor (copied).
    public mutating func add(_ name: String, shape: [Int], float32 values: [Float]) throws {
        let bytes = values.withUnsafeBytes { Array($0) }
        try add(name, dtype: .f32, shape: shape, bytes: bytes)
    }

    /// Adds a tensor whose bytes are produced only when the file is written: `provider` must
    /// return exactly the tensor's byte count (the buffer only needs to live during the call).
    public mutating func add(_ name: String, dtype: SafetensorsDType, shape: [Int],
                             provider: @escaping ((UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws {
        let n = try SafetensorsWriter.byteCount(name, dtype, shape)
        try append(Entry(name: name, dtype: dtype, shape: shape, byteCount: n, fill: { out in
            var written = false
            try provider { bytes in
                guard bytes.count == n, !written else {
                    throw ModelFormatError.invalidValue(file: out.path, field: "\(name) byte count", value: String(bytes.count),
                                                        expected: "\(n), provided once")
                }
                written = true
                try out.write(bytes)
            }
            guard written else {
                throw ModelFormatError.invalidValue(file: out.path, field: "\(name) data", value: "none provided", expected: "\(n) bytes")
            }
        }))
    }

    /// Tensors in the order the reference writer stores them.
    public var orderedEntries: [Entry] {
        entries.sorted { a, b in
            a.dtype.order != b.dtype.order ? a.dtype.order > b.dtype.order : Array(a.name.utf8).lexicographicallyPrecedes(Array(b.name.utf8))
        }
    }

    /// The 8-byte length plus the padded JSON header.
    public func headerBytes() -> [UInt8] {
        var json: [UInt8] = [UInt8(ascii: "{")]
        var first = true
        func sep() { if !first { json.append(UInt8(ascii: ",")) }; first = false }
        if !metadata.isEmpty {
            sep()
            JSONWriter.quote("__metadata__", into: &json)
            json += Array(":{".utf8)
            for (k, key) in metadata.keys.sorted(by: { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }).enumerated() {
                if k > 0 { json.append(UInt8(ascii: ",")) }
                JSONWriter.quote(key, into: &json)
                json.append(UInt8(ascii: ":"))
                JSONWriter.quote(metadata[key]!, into: &json)
            }
            json.append(UInt8(ascii: "}"))
        }
        var offset = 0
        for e in orderedEntries {
            sep()
            JSONWriter.quote(e.name, into: &json)
            json += Array(":{\"dtype\":\"\(e.dtype.rawValue)\",\"shape\":[\(e.shape.map(String.init).joined(separator: ","))],\"data_offsets\":[\(offset),\(offset + e.byteCount)]}".utf8)
            offset += e.byteCount
        }
        json.append(UInt8(ascii: "}"))
        while json.count % 8 != 0 { json.append(0x20) }
        var out = withUnsafeBytes(of: UInt64(json.count).littleEndian) { Array($0) }
        out += json
        return out
    }

    /// Writes the file atomically.
    public func write(to path: String) throws {
        let out = try AtomicFileWriter(path: path)
        do {
            try out.write(headerBytes())
            for e in orderedEntries { try e.fill(out) }
            try out.commit()
        } catch {
            out.abandon()
            throw error
        }
    }
}
