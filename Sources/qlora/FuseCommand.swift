import ArgumentParser
import Foundation
import QLoRA

struct FuseCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fuse",
        abstract: "Merge a LoRA adapter into the (dequantized) base and write a Hugging Face folder or a GGUF file.",
        discussion: """
        The base is loaded as training holds it (--quantize, default nf4: the 4-bit weights are dequantized \
        to float32), W' = W + scaling·B·A is computed in float32 and rounded to --dtype. The merge drift is \
        the max/mean |Δlogit| over a probe text between base + unmerged adapter and the written model reloaded.
        """)

    enum FormatOption: String, ExpressibleByArgument, CaseIterable { case safetensors, gguf }
    enum DTypeOption: String, ExpressibleByArgument, CaseIterable {
        case f32, f16, bf16, float32, float16, bfloat16
        var weightDType: WeightDType {
            switch self {
            case .f32, .float32: return .float32
            case .f16, .float16: return .float16
            case .bf16, .bfloat16: return .bfloat16
            }
        }
    }

    @Option(help: "A .gguf file or a Hugging Face model folder (the base the adapter was trained on).") var model: String
    @Option(help: "A PEFT LoRA adapter folder (adapter_model.safetensors + adapter_config.json).") var adapter: String
    @Option(help: "The folder (safetensors) or .gguf file to create (must not exist).") var output: String
    @Option(help: "safetensors (a transformers-loadable folder) or gguf (a llama.cpp file).") var format: FormatOption = .safetensors
    @Option(help: "Weight dtype: f32, f16 or bf16 (default: the source's; f16 for a GGUF source). GGUF norms stay F32.")
    var dtype: DTypeOption?
    @Option(help: "How to hold the base while merging, as in training: nf4, fp4, int4 or none (the source's float weights).")
    var quantize: QuantizationPolicy.Kind = .nf4
    @Flag(name: .long, help: "Keep one float32 absmax per block (no double quantization).") var noDoubleQuant = false
    @Option(help: "Weights per 4-bit block (32, 64, 128, … 4096).") var blocksize: Int = 64
    @Option(help: "Probe text for the drift measurement (default: a built-in paragraph).") var probe: String?
    @Flag(help: "Skip the drift measurement.") var noDrift = false

    func validate() throws {
        guard QuantizedTensor4Bit.validBlocksizes.contains(blocksize) else {
            throw ValidationError("--blocksize must be one of \(QuantizedTensor4Bit.validBlocksizes) (got \(blocksize))")
        }
        if let p = probe, p.isEmpty { throw ValidationError("--probe must not be empty") }
    }

    func run() throws {
        let options = FuseOptions(format: format == .gguf ? .gguf : .safetensors, dtype: dtype?.weightDType,
                                  quantization: QuantizationPolicy(quantType: quantize, doubleQuant: !noDoubleQuant, blocksize: blocksize),
                                  probe: probe, measureDrift: !noDrift)
        let s = try fuseModel(model: model, adapter: adapter, output: output, options: options)
        print(String(format: "wrote %@ (%@, %@): %d tensors, %d parameters, %d linear weights merged, base held as %@",
                     s.output, s.format.rawValue, s.dtype.rawValue, s.tensorCount, s.parameterCount, s.mergedModules,
                     s.quantization.description))
        print(String(format: "size: %d bytes (%.2f MiB); files: %@", s.fileBytes, Double(s.fileBytes) / 1_048_576,
                     s.files.joined(separator: ", ")))
        if let d = s.drift {
            var line = String(format: "merge drift over %d probe tokens: max |Δlogit| %.3g, mean %.3g (base + adapter vs the written model)",
                              d.probeTokens, d.maxAbs, d.meanAbs)
            if let u = d.unroundedMaxAbs, let um = d.unroundedMeanAbs {
                line += String(format: "; before %@ rounding: max %.3g, mean %.3g", s.dtype.rawValue, u, um)
            }
            print(line)
            print(String(format: "adapter effect: max |Δlogit| %.3g (base alone vs base + adapter)", d.adapterEffectMaxAbs))
            if !d.tokenizerRoundTrips { printError("warning: the written tokenizer encodes the probe differently from the source's") }
        }
        print(String(format: "time: %.2f s", s.seconds))
    }
}
