import Foundation

/// Where test fixtures live: committed files under Tests/Fixtures, and the real SmolLM2 model
/// that the test command fetches (scripts/fetch_model.sh) into the model cache.
public enum Fixtures {
    /// `Tests/Fixtures` of this checkout, found from this source file's path.
    public static let directory: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")

    /// A committed fixture file, e.g. `Fixtures.path("formats/tiny.gguf")`.
    public static func path(_ relative: String) -> String {
        directory.appendingPathComponent(relative).path
    }

    /// Path of SmolLM2-135M-Instruct.Q4_1.gguf: $QLORA_SMOLLM2_GGUF, else the default cache path.
    /// Real-model tests fail (not skip) when it is missing: the test command always fetches it.
    public static var smolLM2GGUF: String {
        if let p = ProcessInfo.processInfo.environment["QLORA_SMOLLM2_GGUF"], !p.isEmpty { return p }
        let cache = ProcessInfo.processInfo.environment["QLORA_CACHE"]
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/swift-qlora").path
        return cache + "/SmolLM2-135M-Instruct.Q4_1.gguf"
    }

    /// Makes `folder` a model folder pairing the tiny random Llama-2-style model
    /// (llama/tiny-llama-untied) with the real SentencePiece tokenizer (tokenizer/tiny-spm), by
    /// symlinks. Replaces whatever was there.
    public static func linkTinyLlama2Model(at folder: URL) throws {
        let fm = FileManager.default
        try? fm.removeItem(at: folder)
        try fm.createDirectory(at: folder, withIntermediateDirectories: true)
        for (dir, name) in [("llama/tiny-llama-untied", "config.json"), ("llama/tiny-llama-untied", "model.safetensors"),
                            ("tokenizer/tiny-spm", "tokenizer.json"), ("tokenizer/tiny-spm", "tokenizer_config.json")] {
            try fm.createSymbolicLink(atPath: folder.appendingPathComponent(name).path, withDestinationPath: path("\(dir)/\(name)"))
        }
    }
}
