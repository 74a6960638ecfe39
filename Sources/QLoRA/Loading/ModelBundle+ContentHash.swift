// The base model's identity for adapters and checkpoints: a SHA-256 content hash of its files.
import Foundation
import ModelFormats

extension ModelBundle {
    /// The files a model's content hash covers: the .gguf file itself, or for a Hugging Face folder
    /// config.json followed by every *.safetensors file in byte-wise sorted name order (tokenizer
    /// files are not part of it).
    public static func contentHashFiles(path: String) throws -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ModelFormatError.unreadable(file: path, reason: "no such file or directory")
        }
        guard isDirectory.boolValue else { return [path] }
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: path) } catch {
            throw ModelFormatError.unreadable(file: path, reason: "\(error)")
        }
        let weights = names.filter { $0.hasSuffix(".safetensors") }
            .sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        guard !weights.isEmpty else {
            throw ModelFormatError.unreadable(file: path, reason: "no *.safetensors files to hash")
        }
        return (["config.json"] + weights).map { (path as NSString).appendingPathComponent($0) }
    }

    /// "sha256:<hex>" of the bytes of `contentHashFiles(path:)` concatenated, i.e. the same as
    /// `sha256sum model.gguf` or `cat config.json $(LC_ALL=C ls *.safetensors) | sha256sum`.
    public static func contentHash(path: String) throws -> String {
        var hasher = SHA256Hasher()
        for file in try contentHashFiles(path: path) { try hasher.update(contentsOfFile: file) }
        return "sha256:" + hasher.finalizeHex()
    }

    /// `ModelBundle.contentHash(path:)` of this bundle's files (reads them all: ~0.3 s per 100 MB).
    public func contentHash() throws -> String { try ModelBundle.contentHash(path: path) }
}
