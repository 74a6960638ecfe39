/// Everything that can be wrong with a model file. Each case names the file, the field
/// (a header field, metadata key or tensor name) and the offending value, so the message
/// alone tells a user what to fix.
public enum ModelFormatError: Error, Equatable, CustomStringConvertible {
    /// The file could not be opened or mapped.
    case unreadable(file: String, reason: String)
    /// The file ends before `field` could be read (needed `needed` bytes at `offset`, file has `size`).
    case truncated(file: String, field: String, offset: Int, needed: Int, size: Int)
    /// A field holds a value the format does not allow.
    case invalidValue(file: String, field: String, value: String, expected: String)
    /// A tensor the model needs is absent.
    case missingTensor(file: String, name: String)
    /// A tensor has a data type this reader does not handle.
    case unsupportedDType(file: String, tensor: String, dtype: String)

    public var description: String {
        switch self {
        case let .unreadable(file, reason):
            return "\(file): cannot read: \(reason)"
        case let .truncated(file, field, offset, needed, size):
            return "\(file): truncated: \(field) needs \(needed) bytes at offset \(offset), but the file has \(size) bytes"
        case let .invalidValue(file, field, value, expected):
            return "\(file): invalid \(field) = \(value) (expected \(expected))"
        case let .missingTensor(file, name):
            return "\(file): missing tensor '\(name)'"
        case let .unsupportedDType(file, tensor, dtype):
            return "\(file): tensor '\(tensor)' has unsupported dtype \(dtype)"
        }
    }
}
