import ArgumentParser
import Foundation
import QLoRA

struct QuantizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "quantize",
        abstract: "Write a bitsandbytes 4-bit Hugging Face folder (loads in transformers as is) from a GGUF or HF model.")

    enum QuantTypeOption: String, ExpressibleByArgument, CaseIterable { case nf4, fp4 }
    enum DTypeOption: String, ExpressibleByArgument, CaseIterable { case bfloat16, float16, float32 }

    @Option(help: "A .gguf file (llama architecture) or a Hugging Face model folder.") var model: String
    @Option(help: "The folder to create (must not exist).") var output: String
    @Option(help: "4-bit data type: nf4 or fp4.") var quantType: QuantTypeOption = .nf4
    @Flag(inversion: .prefixedNo, help: "Double-quantize the block scales (bnb_4bit_use_double_quant).") var doubleQuant = true
    @Option(help: "Elements per quantization block (32…4096, a power of two).") var blocksize = 64
    @Option(help: "Dtype of unquantized tensors and compute dtype: bfloat16, float16 or float32 (default: the source's; bfloat16 for GGUF).")
    var dtype: DTypeOption?

    func validate() throws {
        guard [32, 64, 128, 256, 512, 1024, 2048, 4096].contains(blocksize) else {
            throw ValidationError("--blocksize must be a power of two from 32 to 4096 (got \(blocksize))")
        }
    }

    func run() throws {
        let options = QuantizeOptions(quantType: quantType == .nf4 ? .nf4 : .fp4, doubleQuant: doubleQuant,
                                      blocksize: blocksize, dtype: dtype.flatMap { WeightDType(rawValue: $0.rawValue) })
        let s = try quantizeModel(source: model, output: output, options: options)
        print(String(format: "wrote %@: %d tensors (%d in 4-bit %@%@, blocksize %d), %d parameters, other tensors %@",
                     s.output, s.tensorCount, s.quantizedTensorCount, options.quantType.rawValue,
                     options.doubleQuant ? " + double quant" : "", options.blocksize, s.parameterCount, s.dtype.rawValue))
        print(String(format: "model.safetensors: %d bytes (%.2f MiB), %.2f bits/parameter overall, %.3f bits/parameter in the 4-bit weights",
                     s.fileBytes, Double(s.fileBytes) / 1_048_576, s.bitsPerParameter, s.quantizedBitsPerParameter))
        print("files: model.safetensors, " + s.files.joined(separator: ", "))
        print(String(format: "time: %.2f s", s.seconds))
    }
}
