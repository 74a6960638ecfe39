/// A file (or set of files) that holds named tensors: a GGUF file, one or many safetensors files.
///
/// Shapes are always reported in PyTorch order (outermost first): a linear weight is `[out, in]`,
/// whatever order the file itself uses (GGUF stores dims innermost first). Values are produced as
/// float32, dequantizing or widening as needed; names are the file's own names.
public protocol TensorSource: AnyObject {
    /// Every tensor name in the source, in file order.
    var tensorNames: [String] { get }
    /// The shape of a tensor, PyTorch order; throws `ModelFormatError.missingTensor` if absent.
    func shape(of name: String) throws -> [Int]
    /// Writes the tensor's values, row-major, as float32 into `destination`
    /// (whose count must equal the product of the shape).
    func readFloat32(_ name: String, into destination: UnsafeMutableBufferPointer<Float>) throws
}

extension TensorSource {
    public func contains(_ name: String) -> Bool { tensorNames.contains(name) }

    /// The tensor's values as a new array (convenience for small tensors and tests).
    public func float32Array(_ name: String) throws -> [Float] {
        let count = try shape(of: name).reduce(1, *)
        var values = [Float](repeating: 0, count: count)
        try values.withUnsafeMutableBufferPointer { try readFloat32(name, into: $0) }
        return values
    }
}
