import ArgumentParser
import Foundation
import QLoRA

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect", abstract: "Describe a model: architecture, parameters, tensor storage, chat template.")

    @OptionGroup var modelArguments: ModelArguments
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let i = try ModelInspection(path: modelArguments.model, policy: modelArguments.policy)
        let loaded = i.loaded
        let c = i.config
        if json {
            let object: [String: Any] = [
                "path": i.path, "format": i.format.rawValue, "model_type": c.modelType,
                "parameters": i.parameterCount, "tensors": i.tensorCount, "bytes": i.bytes,
                "bits_per_parameter": i.bitsPerParameter,
                "config": ["hidden_size": c.hiddenSize, "intermediate_size": c.intermediateSize,
                           "num_hidden_layers": c.layerCount, "num_attention_heads": c.headCount,
                           "num_key_value_heads": c.kvHeadCount, "head_dim": c.headDim,
                           "vocab_size": c.vocabularySize, "rope_theta": c.ropeTheta, "rms_norm_eps": c.rmsNormEpsilon,
                           "max_position_embeddings": c.maxPositionEmbeddings, "tie_word_embeddings": c.tieWordEmbeddings],
                "storage": i.groups.map { ["type": $0.type, "tensors": $0.tensors, "parameters": $0.parameters, "bytes": $0.bytes] },
                "chat_template": i.chatTemplate ?? NSNull(),
                "loaded": ["quantization": i.policy.description, "parameters": loaded.totalParameters,
                           "bytes": loaded.totalBytes, "bits_per_parameter": loaded.bitsPerParameter,
                           "linear_bits_per_parameter": i.policy.isQuantized ? loaded.linear4Bit.bitsPerParameter
                                                                            : loaded.linearFloat32.bitsPerParameter,
                           "by_kind": loaded.parts.filter { $0.part.parameters > 0 }.map {
                               ["kind": $0.name, "parameters": $0.part.parameters, "bytes": $0.part.bytes] }],
            ]
            print(jsonString(object))
            return
        }
        print("\(i.path) (\(i.format.rawValue))")
        for (k, v) in i.metadata { print("  \(k): \(v)") }
        print("architecture: \(c.modelType), \(c.layerCount) layers, hidden \(c.hiddenSize), FFN \(c.intermediateSize), "
              + "\(c.headCount) heads / \(c.kvHeadCount) KV heads × \(c.headDim), vocabulary \(c.vocabularySize)")
        print("  RoPE θ \(c.ropeTheta)\(c.ropeScaling == nil ? "" : " (llama3 scaling)"), RMSNorm ε \(c.rmsNormEpsilon), "
              + "context \(c.maxPositionEmbeddings), \(c.tieWordEmbeddings ? "tied" : "separate") LM head"
              + (c.attentionBias ? ", q/k/v bias" : ""))
        print(String(format: "parameters: %d (%.1f M) in %d tensors, %.1f MiB, %.2f bits/parameter",
                     i.parameterCount, Double(i.parameterCount) / 1e6, i.tensorCount,
                     Double(i.bytes) / 1_048_576, i.bitsPerParameter))
        print("storage by type:")
        for g in i.groups {
            print(String(format: "  %-6@ %4d tensors %12d parameters %10.2f MiB", g.type as NSString, g.tensors,
                         g.parameters, Double(g.bytes) / 1_048_576))
        }
        print(String(format: "loaded base (%@): %.1f MiB, %.3f bits/parameter", i.policy.description as NSString,
                     Double(loaded.totalBytes) / 1_048_576, loaded.bitsPerParameter))
        for (name, part) in loaded.parts where part.parameters > 0 {
            print(String(format: "  %-14@ %12d parameters %10.2f MiB %7.3f bits/parameter", name as NSString,
                         part.parameters, Double(part.bytes) / 1_048_576, part.bitsPerParameter))
        }
        if let t = i.chatTemplate { print("chat template:\n\(t)") } else { print("chat template: none") }
    }
}
