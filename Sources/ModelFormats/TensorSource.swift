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
    /// Writes rows `rows` of the tensor seen as a matrix `[rowCount, rowLength]` (rowLength = the
    /// last PyTorch dim, 1 for a scalar) as float32 into `destination` (count = rows.count·rowLength).
    /// E.g. embedding lookups without converting the whole table. A default implementation reads
    /// the whole tensor; GGUF and safetensors sources read only the requested rows.
    func readFloat32Rows(_ name: String, rows: Range<Int>, into destination: UnsafeMutableBufferPointer<Float>) throws
}

extension TensorSource {
    public func readFloat32Rows(_ name: String, rows: Range<Int>, into destination: UnsafeMutableBufferPointer<Float>) throws {
        let shape = try shape(of: name)
        let (rowLength, _) = try checkRows(file: "\(Self.self)", name: name, shape: shape, rows: rows, destination: destination.count)
        let all = try float32Array(name)
        for (k, r) in rows.enumerated() {
            for c in 0..<rowLength { destination[k * rowLength + c] = all[r * rowLength + c] }
        }
    }
}

/// Validates a row read; returns (rowLength, rowCount).
func checkRows(file: String, name: String, shape: [Int], rows: Range<Int>, destination: Int) throws -> (Int, Int) {
    let count = shape.reduce(1, *)
    let rowLength = shape.last ?? 1
    let rowCount = rowLength == 0 ? 0 : count / rowLength
    guard rows.lowerBound >= 0, rows.upperBound <= rowCount else {
        throw ModelFormatError.invalidValue(file: file, field: "\(name) rows", value: "\(rows)",
                                            expected: "a range inside 0..<\(rowCount)")
    }
    guard destination == rows.count * rowLength else {
        throw ModelFormatError.invalidValue(file: file, field: "\(name) destination count", value: String(destination),
                                            expected: "\(rows.count * rowLength) (\(rows.count) rows of \(rowLength))")
    }
    return (rowLength, rowCount)
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
