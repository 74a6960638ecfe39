import Foundation
import ModelFormats

/// The non-tensor fields of one bitsandbytes 4-bit weight: the JSON blob stored as
/// `P weight.quant_state.bitsandbytes__<type>` (SPEC §3.2).
public struct BitsAndBytesQuantState: Equatable, Sendable {
    public var quantType: QuantType4Bit
    public var blocksize: Int
    /// Dtype of the weight before quantization.
    public var dtype: WeightDType
    /// Original shape [out, in].
    public var shape: [Int]
    /// Present iff the absmax is double-quantized: (nested_blocksize, nested_offset).
    public var nested: (blocksize: Int, offset: Float)?

    public init(quantType: QuantType4Bit, blocksize: Int, dtype: WeightDType, shape: [Int],
                nested: (blocksize: Int, offset: Float)?) {
        self.quantType = quantType
        self.blocksize = blocksize
        self.dtype = dtype
        self.shape = shape
        self.nested = nested
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.quantType == b.quantType && a.blocksize == b.blocksize && a.dtype == b.dtype && a.shape == b.shape
            && a.nested?.blocksize == b.nested?.blocksize && a.nested?.offset.bitPattern == b.nested?.offset.bitPattern
    }

    /// The state of a quantized tensor.
    public init(_ q: QuantizedTensor4Bit) {
        var nested: (Int, Float)?
        if case .doubleQuantized(let dq) = q.scales { nested = (dq.nestedBlocksize, dq.offset) }
        self.init(quantType: q.quantType, blocksize: q.blocksize, dtype: q.dtype, shape: q.shape, nested: nested)
    }

    /// The blob as bitsandbytes writes it (`json.dumps` of `QuantState.as_dict(packed=True)`'s
    /// non-tensor entries, in insertion order; the offset is the float64 repr of the float32 value).
    public var jsonBytes: [UInt8] {
        var s = "{\"quant_type\": \"\(quantType.rawValue)\", \"blocksize\": \(blocksize), \"dtype\": \"\(dtype.rawValue)\", "
            + "\"shape\": [\(shape.map(String.init).joined(separator: ", "))]"
        if let nested {
            s += ", \"nested_blocksize\": \(nested.blocksize), \"nested_dtype\": \"float32\", "
                + "\"nested_offset\": \(pythonFloatRepr(Double(nested.offset)))"
        }
        s += "}"
        return Array(s.utf8)
    }

    /// Parses a blob. `field` names it in errors.
    public init(jsonBytes: [UInt8], file: String, field: String) throws {
        func bad(_ key: String, _ value: String, _ expected: String) -> ModelFormatError {
            .invalidValue(file: file, field: key.isEmpty ? field : "\(field) \(key)", value: value, expected: expected)
        }
        let text = String(decoding: jsonBytes, as: UTF8.self)
        guard let object = try? JSONSerialization.jsonObject(with: Data(jsonBytes)), let o = object as? [String: Any] else {
            throw bad("", "\"\(text.prefix(80))\"", "a JSON object (the bitsandbytes quant state)")
        }
        let allowed: Set<String> = ["quant_type", "blocksize", "dtype", "shape", "nested_blocksize", "nested_dtype",
                                    "nested_offset", "absmax", "quant_map", "nested_absmax", "nested_quant_map", "quant_state"]
        for k in o.keys.sorted() where !allowed.contains(k) { throw bad(k, "present", "only the bitsandbytes quant-state keys") }
        func int(_ key: String) throws -> Int {
            guard let v = o[key] else { throw bad(key, "missing", "an integer") }
            guard let n = v as? NSNumber, !(v is Bool), Double(n.intValue) == n.doubleValue else {
                throw bad(key, "\(v)", "an integer")
            }
            return n.intValue
        }
        guard let qt = o["quant_type"] as? String else { throw bad("quant_type", "\(o["quant_type"] ?? "missing")", "\"nf4\" or \"fp4\"") }
        guard qt == "nf4" || qt == "fp4", let quantType = QuantType4Bit(rawValue: qt) else {
            throw bad("quant_type", "\"\(qt)\"", "\"nf4\" or \"fp4\"")
        }
        let blocksize = try int("blocksize")
        guard let ds = o["dtype"] as? String else { throw bad("dtype", "\(o["dtype"] ?? "missing")", "a dtype name") }
        let dname = ds.hasPrefix("torch.") ? String(ds.dropFirst(6)) : ds
        guard let dtype = WeightDType(rawValue: dname) else {
            throw bad("dtype", "\"\(ds)\"", "\"bfloat16\", \"float16\" or \"float32\"")
        }
        guard let sv = o["shape"] as? [Any], sv.count == 2,
              let shape = sv.map({ ($0 as? NSNumber).map { $0.intValue } }) as? [Int], shape.allSatisfy({ $0 > 0 }) else {
            throw bad("shape", "\(o["shape"] ?? "missing")", "[out, in] with positive integers")
        }
        var nested: (Int, Float)?
        if o["nested_blocksize"] != nil || o["nested_offset"] != nil || o["nested_dtype"] != nil {
            let nb = try int("nested_blocksize")
            guard nb > 0 else { throw bad("nested_blocksize", String(nb), "> 0") }
            guard let off = o["nested_offset"] as? NSNumber, !(o["nested_offset"] is Bool) else {
                throw bad("nested_offset", "\(o["nested_offset"] ?? "missing")", "a number")
            }
            if let nd = o["nested_dtype"], (nd as? String) != "float32" {
                throw bad("nested_dtype", "\(nd)", "\"float32\"")
            }
            nested = (nb, Float(off.doubleValue))
        }
        self.init(quantType: quantType, blocksize: blocksize, dtype: dtype, shape: shape, nested: nested)
    }
}

/// Python's `repr(float)` for finite values: the shortest round-trip digits (Swift's `description`
/// uses the same rules, including `1e-05` and `1e+16` forms).
func pythonFloatRepr(_ x: Double) -> String {
    x.description
}

/// A model folder saved by transformers + bitsandbytes in 4 bits (config.json with a
/// `quantization_config` of `quant_method` "bitsandbytes", `load_in_4bit`; safetensors files with the
/// per-layer keys of SPEC §3.1), presented as an ordinary tensor source: each quantized weight
/// appears once, under its own name, with its original shape (readFloat32 dequantizes it exactly as
/// bitsandbytes does); the auxiliary keys (`.absmax`, `.quant_map`, `.nested_*`, `.quant_state.*`)
/// are hidden; every other tensor passes through. `quantized4Bit` hands out the stored 4-bit data as is.
/// All quant states are checked when the folder is opened.
public final class BitsAndBytesModel: QuantizedTensorSource, @unchecked Sendable {
    public let directory: String
    /// The underlying safetensors files.
    public let weights: SafetensorsModel
    /// `quantization_config` from config.json, key → JSON value.
    public let quantizationConfig: [String: Any]
    /// Every tensor name as a normal model would have it (quantized weights under their own name), in file order.
    public let tensorNames: [String]
    /// The names of the weights stored in 4 bits, in file order.
    public let quantizedTensorNames: [String]
    private let states: [String: BitsAndBytesQuantState]

    /// The suffixes bitsandbytes adds to a quantized weight's name.
    public static let auxiliarySuffixes = [".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"]
    public static let quantStateMarker = ".quant_state.bitsandbytes__"

    /// Whether `directory/config.json` declares a bitsandbytes 4-bit checkpoint.
    public static func isBitsAndBytes4Bit(directory: String) -> Bool {
        let path = (directory as NSString).appendingPathComponent("config.json")
        guard let data = FileManager.default.contents(atPath: path),
              let o = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let q = o["quantization_config"] as? [String: Any] else { return false }
        return (q["quant_method"] as? String) == "bitsandbytes" && ((q["load_in_4bit"] as? Bool) ?? (q["_load_in_4bit"] as? Bool) ?? false)
    }

    public init(directory: String) throws {
        self.directory = directory
        let configPath = (directory as NSString).appendingPathComponent("config.json")
        guard let data = FileManager.default.contents(atPath: configPath) else {
            throw ModelFormatError.unreadable(file: configPath, reason: "no such file")
        }
        guard let top = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ModelFormatError.invalidValue(file: configPath, field: "JSON", value: "unparseable", expected: "a JSON object")
        }
        guard let q = top["quantization_config"] as? [String: Any] else {
            throw ModelFormatError.invalidValue(file: configPath, field: "quantization_config", value: "\(top["quantization_config"] ?? "missing")",
                                                expected: "an object with quant_method \"bitsandbytes\" and load_in_4bit true")
        }
        guard (q["quant_method"] as? String) == "bitsandbytes" else {
            throw ModelFormatError.invalidValue(file: configPath, field: "quantization_config.quant_method",
                                                value: "\(q["quant_method"] ?? "missing")", expected: "\"bitsandbytes\"")
        }
        guard (q["load_in_4bit"] as? Bool) ?? (q["_load_in_4bit"] as? Bool) ?? false else {
            throw ModelFormatError.invalidValue(file: configPath, field: "quantization_config.load_in_4bit",
                                                value: "\(q["load_in_4bit"] ?? "missing")", expected: "true (8-bit checkpoints are not supported)")
        }
        quantizationConfig = q
        let weights = try SafetensorsModel(directory: directory)
        self.weights = weights

        // Find the quant-state blobs, one per quantized weight.
        var states: [String: BitsAndBytesQuantState] = [:]
        for name in weights.tensorNames {
            guard let r = name.range(of: Self.quantStateMarker) else { continue }
            let base = String(name[..<r.lowerBound])
            let suffix = String(name[r.upperBound...])
            let file = try weights.file(containing: name).path
            guard suffix == "nf4" || suffix == "fp4" else {
                throw ModelFormatError.invalidValue(file: file, field: "tensor \(name) quant type", value: "\"\(suffix)\"",
                                                    expected: "nf4 or fp4")
            }
            guard states[base] == nil else {
                throw ModelFormatError.invalidValue(file: file, field: "tensor \(name)", value: "a second quant_state key for \(base)",
                                                    expected: "exactly one quant_state.bitsandbytes__* key per weight")
            }
            let info = try weights.info(name)
            guard info.dtype == .u8, info.shape.count == 1 else {
                throw ModelFormatError.invalidValue(file: file, field: "tensor \(name)", value: "\(info.dtype.rawValue) \(info.shape)",
                                                    expected: "U8 [length of the JSON blob]")
            }
            let blob = Array(try weights.rawBytes(name))
            let state = try BitsAndBytesQuantState(jsonBytes: blob, file: file, field: "tensor \(name)")
            guard state.quantType.rawValue == suffix else {
                throw ModelFormatError.invalidValue(file: file, field: "tensor \(name) quant_type", value: "\"\(state.quantType.rawValue)\"",
                                                    expected: "\"\(suffix)\" (the key's suffix)")
            }
            states[base] = state
        }
        // Every auxiliary key belongs to a quantized weight.
        var names: [String] = []
        for name in weights.tensorNames {
            if name.contains(Self.quantStateMarker) { continue }
            if let sfx = Self.auxiliarySuffixes.first(where: { name.hasSuffix($0) }) {
                let base = String(name.dropLast(sfx.count))
                guard states[base] != nil else {
                    throw ModelFormatError.invalidValue(file: try weights.file(containing: name).path, field: "tensor \(name)",
                                                        value: "present without \(base)\(Self.quantStateMarker)nf4|fp4",
                                                        expected: "a quant_state key for every quantized weight")
                }
                continue
            }
            names.append(name)
        }
        tensorNames = names
        quantizedTensorNames = names.filter { states[$0] != nil }
        self.states = states
        for base in states.keys.sorted() { _ = try load(base) }  // validate every quantized weight now
    }

    /// The parsed quant state of a quantized weight, nil for other tensors.
    public func quantState(of name: String) -> BitsAndBytesQuantState? { states[name] }

    public func quantized4Bit(_ name: String) throws -> QuantizedTensor4Bit? {
        guard states[name] != nil else {
            guard weights.contains(name) else { throw ModelFormatError.missingTensor(file: directory, name: name) }
            return nil
        }
        return try load(name)
    }

    private func load(_ name: String) throws -> QuantizedTensor4Bit {
        let state = states[name]!
        let marker = "\(name)\(Self.quantStateMarker)\(state.quantType.rawValue)"
        let file = (try? weights.file(containing: marker).path) ?? directory
        func bad(_ tensor: String, _ value: String, _ expected: String) -> ModelFormatError {
            .invalidValue(file: file, field: "tensor \(tensor)", value: value, expected: expected)
        }
        func tensor(_ key: String, _ dtype: SafetensorsDType, count: Int, what: String) throws -> UnsafeRawBufferPointer {
            guard weights.contains(key) else { throw ModelFormatError.missingTensor(file: file, name: key) }
            let info = try weights.info(key)
            guard info.dtype == dtype, info.elementCount == count else {
                throw bad(key, "\(info.dtype.rawValue) \(info.shape)", "\(dtype.rawValue) with \(count) elements (\(what))")
            }
            return try weights.rawBytes(key)
        }
        func floats(_ raw: UnsafeRawBufferPointer) -> [Float] {
            (0..<raw.count / 4).map { Float(bitPattern: raw.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self).littleEndian) }
        }
        let n = state.shape[0] * state.shape[1]
        guard QuantizedTensor4Bit.validBlocksizes.contains(state.blocksize) else {
            throw bad(marker, "blocksize \(state.blocksize)", "one of \(QuantizedTensor4Bit.validBlocksizes)")
        }
        let nb = (n + state.blocksize - 1) / state.blocksize
        let packed = Array(try tensor(name, .u8, count: (n + 1) / 2, what: "packed 4-bit codes of shape \(state.shape) from \(marker)"))
        let quantMap = floats(try tensor(name + ".quant_map", .f32, count: 16, what: "the 16-entry \(state.quantType.rawValue) table"))
        let scales: BlockScales
        if let nested = state.nested {
            let codes = Array(try tensor(name + ".absmax", .u8, count: nb, what: "\(nb) blocks of \(state.blocksize), double-quantized"))
            let nn = (nb + nested.blocksize - 1) / nested.blocksize
            let nestedAbsmax = floats(try tensor(name + ".nested_absmax", .f32, count: nn,
                                                 what: "\(nn) nested blocks of \(nested.blocksize)"))
            let map = floats(try tensor(name + ".nested_quant_map", .f32, count: 256, what: "the 256-entry dynamic map"))
            scales = .doubleQuantized(DoubleQuantization(codes: codes, nestedAbsmax: nestedAbsmax, offset: nested.offset,
                                                         nestedQuantMap: map, nestedBlocksize: nested.blocksize))
        } else {
            for extra in [".nested_absmax", ".nested_quant_map"] where weights.contains(name + extra) {
                throw bad(name + extra, "present", "absent: \(marker) has no nested_* fields")
            }
            scales = .float32(floats(try tensor(name + ".absmax", .f32, count: nb, what: "\(nb) blocks of \(state.blocksize)")))
        }
        do {
            return try QuantizedTensor4Bit(quantType: state.quantType, blocksize: state.blocksize, shape: state.shape,
                                           dtype: state.dtype, packed: packed, scales: scales, quantMap: quantMap)
        } catch let e as QuantizationError {
            throw bad(name, "\(e)", "a consistent 4-bit tensor")
        }
    }

    public func shape(of name: String) throws -> [Int] {
        if let s = states[name] { return s.shape }
        return try weights.shape(of: name)
    }

    public func readFloat32(_ name: String, into destination: UnsafeMutableBufferPointer<Float>) throws {
        guard states[name] != nil else { return try weights.readFloat32(name, into: destination) }
        let q = try load(name)
        guard destination.count == q.count else {
            throw ModelFormatError.invalidValue(file: directory, field: "\(name) destination count", value: String(destination.count),
                                                expected: "\(q.count) for shape \(q.shape)")
        }
        let values = q.dequantize()
        _ = destination.initialize(from: values)
    }

    public func readFloat32Rows(_ name: String, rows: Range<Int>, into destination: UnsafeMutableBufferPointer<Float>) throws {
        guard let s = states[name] else { return try weights.readFloat32Rows(name, rows: rows, into: destination) }
        let columns = s.shape[1]
        guard rows.lowerBound >= 0, rows.upperBound <= s.shape[0], destination.count == rows.count * columns else {
            throw ModelFormatError.invalidValue(file: directory, field: "\(name) rows", value: "\(rows) into \(destination.count) floats",
                                                expected: "rows inside 0..<\(s.shape[0]), \(columns) floats each")
        }
        let all = try load(name).dequantize()
        _ = destination.initialize(from: all[(rows.lowerBound * columns)..<(rows.upperBound * columns)])
    }
}
