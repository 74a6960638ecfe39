/// Everything that can be wrong with a LLaMA config, checkpoint or forward call. Each case names
/// the file (or call), the key or tensor, and the offending value.
public enum LlamaError: Error, Equatable, CustomStringConvertible {
    /// A config key holds a value we cannot use (or is missing: value "missing").
    case invalidConfig(file: String, key: String, value: String, expected: String)
    /// The config's model type / GGUF architecture is not one this module runs.
    case unsupportedArchitecture(file: String, key: String, value: String)
    /// A tensor the model needs is absent.
    case missingTensor(file: String, name: String)
    /// A tensor's shape differs from the one the config implies.
    case shapeMismatch(file: String, tensor: String, expected: [Int], actual: [Int])
    /// A forward call's argument is out of range (token id, position, context length).
    case invalidInput(field: String, value: String, expected: String)

    public var description: String {
        switch self {
        case let .invalidConfig(file, key, value, expected):
            return "\(file): invalid \(key) = \(value) (expected \(expected))"
        case let .unsupportedArchitecture(file, key, value):
            return "\(file): unsupported \(key) = \(value) (supported: llama, mistral, qwen2)"
        case let .missingTensor(file, name):
            return "\(file): missing tensor '\(name)'"
        case let .shapeMismatch(file, tensor, expected, actual):
            return "\(file): tensor '\(tensor)' has shape \(actual), expected \(expected)"
        case let .invalidInput(field, value, expected):
            return "forward: invalid \(field) = \(value) (expected \(expected))"
        }
    }
}
