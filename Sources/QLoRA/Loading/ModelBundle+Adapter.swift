import Foundation

public enum AdapterError: Error, CustomStringConvertible {
    case needsFloatBase(file: String, quantization: String)
    case layerCount(file: String, adapter: Int, model: Int)
    case unknownModule(file: String, layer: Int, module: String)
    case shape(file: String, tensor: String, expected: [Int], actual: [Int])

    public var description: String {
        switch self {
        case let .needsFloatBase(file, q):
            return "\(file): adapters are merged into float32 base weights for now; load the base with --quantize none (got \(q))"
        case let .layerCount(file, adapter, model):
            return "\(file): the adapter has \(adapter) layers but the model has \(model)"
        case let .unknownModule(file, layer, module):
            return "\(file): layer \(layer): unknown target module '\(module)'"
        case let .shape(file, tensor, expected, actual):
            return "\(file): tensor '\(tensor)' has shape \(actual), expected \(expected)"
        }
    }
}

extension ModelBundle {
    /// Reads a PEFT LoRA adapter folder and merges it into the float32 base weights:
    /// W += scaling · B·A for every adapted projection (PEFT's `get_delta_weight`).
    /// Needs a base loaded with `QuantizationPolicy.none`.
    @discardableResult
    public func mergeAdapter(directory: String) throws -> LoRAAdapterWeights {
        let adapter = try AdapterFile.read(directory: directory)
        let weights = model.weights
        guard adapter.layers.count == weights.layers.count else {
            throw AdapterError.layerCount(file: directory, adapter: adapter.layers.count, model: weights.layers.count)
        }
        let scale = Float(adapter.config.scaling)
        for (i, modules) in adapter.layers.enumerated() {
            let layer = weights.layers[i]
            for (module, pair) in modules.sorted(by: { $0.key < $1.key }) {
                let target: LinearWeight
                switch module {
                case "q_proj": target = layer.wq
                case "k_proj": target = layer.wk
                case "v_proj": target = layer.wv
                case "o_proj": target = layer.wo
                case "gate_proj": target = layer.wGate
                case "up_proj": target = layer.wUp
                case "down_proj": target = layer.wDown
                default: throw AdapterError.unknownModule(file: directory, layer: i, module: module)
                }
                guard case let .dense(w, rows, cols) = target else {
                    throw AdapterError.needsFloatBase(file: directory, quantization: "\(quantization)")
                }
                let r = pair.a.rows
                guard pair.a.cols == cols else {
                    throw AdapterError.shape(file: directory, tensor: LoRAAdapterWeights.tensorName(layer: i, module: module, matrix: "A"),
                                             expected: [r, cols], actual: [pair.a.rows, pair.a.cols])
                }
                guard pair.b.rows == rows, pair.b.cols == r else {
                    throw AdapterError.shape(file: directory, tensor: LoRAAdapterWeights.tensorName(layer: i, module: module, matrix: "B"),
                                             expected: [rows, r], actual: [pair.b.rows, pair.b.cols])
                }
                pair.b.values.withUnsafeBufferPointer { b in
                    pair.a.values.withUnsafeBufferPointer { a in
                        BLAS.sgemm(m: rows, n: cols, k: r, alpha: scale, a: b.baseAddress!, b: a.baseAddress!,
                                   beta: 1, c: w)
                    }
                }
            }
        }
        model.reset()
        return adapter
    }
}
