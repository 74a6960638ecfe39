import Foundation

/// The weights of a Hugging Face model folder: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json` (`weight_map`), or every `*.safetensors` file in the folder.
public final class SafetensorsModel: TensorSource, @unchecked Sendable {
    public let directory: String
    /// The opened files, in the order they were found.
    public let files: [SafetensorsFile]
    /// Every tensor name: each file's names in file order, files in order.
    public let tensorNames: [String]
    private let owner: [String: Int]

    public static let indexFileName = "model.safetensors.index.json"
    public static let singleFileName = "model.safetensors"

    public init(directory: String) throws {
        self.directory = directory
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
            throw ModelFormatError.unreadable(file: directory, reason: "not a directory")
        }
        let dir = URL(fileURLWithPath: directory)
        let single = dir.appendingPathComponent(SafetensorsModel.singleFileName).path
        let index = dir.appendingPathComponent(SafetensorsModel.indexFileName).path
        var weightMap: [(tensor: String, shard: String)]? = nil
        var paths: [String]
        if fm.fileExists(atPath: single) {
            paths = [single]
        } else if fm.fileExists(atPath: index) {
            let map = try SafetensorsModel.readWeightMap(index)
            weightMap = map
            var shards: [String] = []
            var seen = Set<String>()
            for (tensor, shard) in map where seen.insert(shard).inserted {
                guard !shard.isEmpty, !shard.contains("/"), shard != ".", shard != ".." else {
                    throw ModelFormatError.invalidValue(file: index, field: "weight_map.\(tensor)", value: shard,
                                                        expected: "a file name inside the model folder")
                }
                let p = dir.appendingPathComponent(shard).path
                guard fm.fileExists(atPath: p) else {
                    throw ModelFormatError.invalidValue(file: index, field: "weight_map.\(tensor)", value: shard,
                                                        expected: "a shard file present in \(directory)")
                }
                shards.append(p)
            }
            paths = shards
        } else {
            let names = (try? fm.contentsOfDirectory(atPath: directory)) ?? []
            paths = names.filter { $0.hasSuffix(".safetensors") }.sorted().map { dir.appendingPathComponent($0).path }
            guard !paths.isEmpty else {
                throw ModelFormatError.unreadable(file: directory,
                                                  reason: "no model.safetensors, \(SafetensorsModel.indexFileName) or *.safetensors file")
            }
        }
        let files = try paths.map { try SafetensorsFile(path: $0) }
        var owner: [String: Int] = [:]
        var names: [String] = []
        for (k, f) in files.enumerated() {
            for name in f.tensorNames {
                if let other = owner[name] {
                    throw ModelFormatError.invalidValue(file: f.path, field: "tensor \(name)", value: "also in \(files[other].path)",
                                                        expected: "each tensor in exactly one shard")
                }
                owner[name] = k
                names.append(name)
            }
        }
        if let weightMap {
            for (tensor, shard) in weightMap {
                guard let k = owner[tensor] else {
                    throw ModelFormatError.missingTensor(file: dir.appendingPathComponent(shard).path, name: tensor)
                }
                let actual = URL(fileURLWithPath: files[k].path).lastPathComponent
                guard actual == shard else {
                    throw ModelFormatError.invalidValue(file: index, field: "weight_map.\(tensor)", value: shard,
                                                        expected: "\(actual), the shard that holds it")
                }
            }
        }
        self.files = files
        self.owner = owner
        tensorNames = names
    }

    private static func readWeightMap(_ index: String) throws -> [(tensor: String, shard: String)] {
        let map = try MappedFile(path: index)
        let json: JSONValue
        do {
            json = try JSONParser.parse(map.bytes(at: 0, count: map.size))
        } catch let e as JSONParseError {
            throw ModelFormatError.invalidValue(file: index, field: "JSON", value: "\(e.message) at byte \(e.offset)",
                                                expected: "a valid JSON object")
        }
        guard case let .object(top) = json, let wm = top.first(where: { $0.key == "weight_map" })?.value else {
            throw ModelFormatError.invalidValue(file: index, field: "weight_map", value: "missing", expected: "an object")
        }
        guard case let .object(entries) = wm else {
            throw ModelFormatError.invalidValue(file: index, field: "weight_map", value: wm.typeName, expected: "an object")
        }
        return try entries.map { key, value in
            guard case let .string(s) = value else {
                throw ModelFormatError.invalidValue(file: index, field: "weight_map.\(key)", value: value.typeName, expected: "a string")
            }
            return (key, s)
        }
    }

    /// The file holding a tensor.
    public func file(containing name: String) throws -> SafetensorsFile {
        guard let k = owner[name] else { throw ModelFormatError.missingTensor(file: directory, name: name) }
        return files[k]
    }

    public func contains(_ name: String) -> Bool { owner[name] != nil }
    public func info(_ name: String) throws -> SafetensorsTensorInfo { try file(containing: name).info(name) }
    public func dtype(_ name: String) throws -> SafetensorsDType { try file(containing: name).dtype(name) }
    public func shape(of name: String) throws -> [Int] { try file(containing: name).shape(of: name) }
    public func rawBytes(_ name: String) throws -> UnsafeRawBufferPointer { try file(containing: name).rawBytes(name) }
    public func readFloat32(_ name: String, into destination: UnsafeMutableBufferPointer<Float>) throws {
        try file(containing: name).readFloat32(name, into: destination)
    }
    public func readFloat32Rows(_ name: String, rows: Range<Int>, into destination: UnsafeMutableBufferPointer<Float>) throws {
        try file(containing: name).readFloat32Rows(name, rows: rows, into: destination)
    }
    /// Metadata of all files merged (first file wins on a conflict).
    public var metadata: [String: String] {
        var m: [String: String] = [:]
        for f in files { m.merge(f.metadata) { old, _ in old } }
        return m
    }
}
