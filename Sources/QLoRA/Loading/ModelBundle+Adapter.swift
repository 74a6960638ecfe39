import Foundation

/// What is wrong with a LoRA adapter for a given base. Each case names the adapter folder, the
/// tensor (or layer and module) and the offending values.
public enum AdapterError: Error, CustomStringConvertible {
    /// `mergeAdapter` was asked to merge into a 4-bit weight (use `attachAdapter`: unmerged).
    case needsFloatBase(file: String, tensor: String, quantization: String)
    case layerCount(file: String, adapter: Int, model: Int)
    case unknownModule(file: String, layer: Int, module: String)
    case shape(file: String, tensor: String, expected: [Int], actual: [Int])
    case nonFinite(file: String, tensor: String, index: [Int], value: Float)
    case invalidScaling(file: String, r: Int, loraAlpha: Double, scaling: Double)

    public var description: String {
        switch self {
        case let .needsFloatBase(file, tensor, q):
            return "\(file): cannot merge '\(tensor)' into a 4-bit base weight (\(q)); apply the adapter unmerged or load the base with --quantize none"
        case let .layerCount(file, adapter, model):
            return "\(file): the adapter has \(adapter) layers but the model has \(model)"
        case let .unknownModule(file, layer, module):
            return "\(file): layer \(layer): unknown target module '\(module)'"
        case let .shape(file, tensor, expected, actual):
            return "\(file): tensor '\(tensor)' has shape \(actual), expected \(expected)"
        case let .nonFinite(file, tensor, index, value):
            return "\(file): tensor '\(tensor)' holds \(value) at \(index) (expected finite values)"
        case let .invalidScaling(file, r, alpha, scaling):
            return "\(file): adapter_config.json r = \(r), lora_alpha = \(alpha) give scaling \(scaling) (expected a finite number)"
        }
    }
}

/// How `ModelBundle.applyAdapter` put an adapter on the base.
public enum AdapterApplication: String, Sendable {
    /// W += scaling·B·A in the float32 base weights (exact; no cost per token).
    case merged
    /// y = base(x) + scaling·(x·Aᵀ)·Bᵀ at every forward, over a float32 or 4-bit base (QLoRA's way).
    case unmerged
}

extension ModelBundle {
    /// One adapted projection, checked against the base.
    struct CheckedLoRA {
        let layer: Int
        let target: LoRATarget
        let pair: LoRAPair
        let base: LinearWeight
    }

    /// Reads the adapter folder and checks it against this base: number of layers, module names,
    /// the shapes of lora_A [r, in] and lora_B [out, r], finite values and a finite scaling.
    func checkedAdapter(directory: String) throws -> (adapter: LoRAAdapterWeights, parts: [CheckedLoRA]) {
        let adapter = try AdapterFile.read(directory: directory)
        let weights = model.weights
        guard adapter.layers.count == weights.layers.count else {
            throw AdapterError.layerCount(file: directory, adapter: adapter.layers.count, model: weights.layers.count)
        }
        let scaling = adapter.config.scaling
        guard scaling.isFinite, Float(scaling).isFinite else {
            throw AdapterError.invalidScaling(file: directory, r: adapter.config.r, loraAlpha: adapter.config.loraAlpha, scaling: scaling)
        }
        var parts: [CheckedLoRA] = []
        for (i, modules) in adapter.layers.enumerated() {
            let layer = weights.layers[i]
            for (module, pair) in modules.sorted(by: { $0.key < $1.key }) {
                guard let target = LoRATarget(rawValue: module) else {
                    throw AdapterError.unknownModule(file: directory, layer: i, module: module)
                }
                let base: LinearWeight
                switch target {
                case .q: base = layer.wq
                case .k: base = layer.wk
                case .v: base = layer.wv
                case .o: base = layer.wo
                case .gate: base = layer.wGate
                case .up: base = layer.wUp
                case .down: base = layer.wDown
                }
                let rows = base.rows, cols = base.cols, r = pair.a.rows
                let nameA = LoRAAdapterWeights.tensorName(layer: i, module: module, matrix: "A")
                let nameB = LoRAAdapterWeights.tensorName(layer: i, module: module, matrix: "B")
                guard r > 0, pair.a.cols == cols, pair.a.values.count == r * cols else {
                    throw AdapterError.shape(file: directory, tensor: nameA, expected: [r, cols], actual: [pair.a.rows, pair.a.cols])
                }
                guard pair.b.rows == rows, pair.b.cols == r, pair.b.values.count == rows * r else {
                    throw AdapterError.shape(file: directory, tensor: nameB, expected: [rows, r], actual: [pair.b.rows, pair.b.cols])
                }
                for (name, m) in [(nameA, pair.a), (nameB, pair.b)] {
                    if let j = m.values.firstIndex(where: { !$0.isFinite }) {
                        throw AdapterError.nonFinite(file: directory, tensor: name, index: [j / m.cols, j % m.cols], value: m.values[j])
                    }
                }
                parts.append(CheckedLoRA(layer: i, target: target, pair: pair, base: base))
            }
        }
        return (adapter, parts)
    }

    /// Reads a PEFT LoRA adapter folder and merges it into the float32 base weights:
    /// W += scaling · B·A for every adapted projection (PEFT's `get_delta_weight`).
    /// Throws `AdapterError.needsFloatBase` (before changing anything) when an adapted weight is 4-bit.
    @discardableResult
    public func mergeAdapter(directory: String) throws -> LoRAAdapterWeights {
        let (adapter, parts) = try checkedAdapter(directory: directory)
        try merge(adapter, parts, directory: directory)
        return adapter
    }

    func merge(_ adapter: LoRAAdapterWeights, _ parts: [CheckedLoRA], directory: String) throws {
        for p in parts where p.base.quantizedTensor != nil {
            throw AdapterError.needsFloatBase(file: directory, tensor: "model.layers.\(p.layer).\(p.target.block).\(p.target.rawValue).weight",
                                              quantization: "\(quantization)")
        }
        let scale = Float(adapter.config.scaling)
        for p in parts {
            guard case let .dense(w, rows, cols) = p.base else { continue }
            p.pair.b.values.withUnsafeBufferPointer { b in
                p.pair.a.values.withUnsafeBufferPointer { a in
                    BLAS.sgemm(m: rows, n: cols, k: p.pair.a.rows, alpha: scale, a: b.baseAddress!, b: a.baseAddress!,
                               beta: 1, c: w)
                }
            }
        }
        model.reset()
    }

    /// Reads a PEFT LoRA adapter folder and attaches it unmerged: every forward adds
    /// scaling·(x·Aᵀ)·Bᵀ to the adapted projections, over the base as held (float32 or 4-bit; no
    /// float32 copy of a 4-bit base is made). Replaces an adapter attached before.
    @discardableResult
    public func attachAdapter(directory: String) throws -> LoRAAdapterWeights {
        let (adapter, parts) = try checkedAdapter(directory: directory)
        try attach(adapter, parts, directory: directory)
        return adapter
    }

    func attach(_ adapter: LoRAAdapterWeights, _ parts: [CheckedLoRA], directory: String) throws {
        let scale = Float(adapter.config.scaling)
        var branches = [[LoRATarget: LinearLoRA]](repeating: [:], count: model.weights.layers.count)
        for p in parts {
            branches[p.layer][p.target] = try LinearLoRA(
                a: p.pair.a.values, b: p.pair.b.values, rank: p.pair.a.rows, inFeatures: p.pair.a.cols,
                outFeatures: p.pair.b.rows, scale: scale,
                name: "\(directory): base_model.model.model.layers.\(p.layer).\(p.target.block).\(p.target.rawValue)")
        }
        try model.attachLoRA(branches)
    }

    /// Applies an adapter the fastest exact way the base allows: merged into the weights when
    /// `merge` is true and every adapted weight is float32, otherwise unmerged (`attachAdapter`).
    public func applyAdapter(directory: String, merge: Bool) throws -> (adapter: LoRAAdapterWeights, application: AdapterApplication) {
        let (adapter, parts) = try checkedAdapter(directory: directory)
        if merge, parts.allSatisfy({ $0.base.quantizedTensor == nil }) {
            try self.merge(adapter, parts, directory: directory)
            return (adapter, .merged)
        }
        try attach(adapter, parts, directory: directory)
        return (adapter, .unmerged)
    }

    /// When the adapter records the content hash of the base it was trained on
    /// (`swift_qlora.base_model_hash`) and it differs from this bundle's `contentHash()`, both
    /// hashes; nil when they agree or the adapter records none. Reads the model's files.
    public func adapterBaseMismatch(_ adapter: LoRAAdapterWeights) throws -> (adapter: String, base: String)? {
        guard let expected = adapter.config.baseModelHash else { return nil }
        let actual = try contentHash()
        return expected == actual ? nil : (expected, actual)
    }
}
