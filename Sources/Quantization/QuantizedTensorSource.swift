import ModelFormats

/// A tensor source that can also hand out weights already stored in 4 bits (a bitsandbytes
/// checkpoint), so they are used as stored instead of being dequantized and quantized again.
public protocol QuantizedTensorSource: TensorSource {
    /// The stored 4-bit tensor called `name` (the weight's name, e.g. `model.layers.0.mlp.up_proj.weight`),
    /// or nil when that tensor is stored in full precision.
    func quantized4Bit(_ name: String) throws -> QuantizedTensor4Bit?
}
