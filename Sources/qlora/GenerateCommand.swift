import ArgumentParser
import Foundation
import QLoRA

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate", abstract: "Generate text from a prompt, streaming tokens as they come.")

    @OptionGroup var modelArguments: ModelArguments
    @OptionGroup var adapterArguments: AdapterArguments
    @Option(help: "The prompt text.") var prompt: String
    @Flag(help: "Wrap the prompt as one user message in the model's chat template, with the generation prompt.")
    var chat = false
    @Option(help: "A system message (with --chat).") var system: String?
    @Option(help: "Most tokens to generate.") var maxTokens: Int = 256
    @OptionGroup var sampling: SamplingArguments
    @Option(help: "Stop when this text appears (repeatable); the text is cut before it.") var stop: [String] = []
    @Flag(help: "Do not stop at end-of-sequence tokens or stop strings: generate exactly --max-tokens.") var ignoreEos = false
    @Flag(help: "Print one JSON object instead of streaming text.") var json = false
    @Option(help: "With --json: for each generated token, the K most likely ids and their log-probabilities.")
    var topLogprobs: Int = 0

    func validate() throws {
        guard maxTokens >= 1 else { throw ValidationError("--max-tokens must be at least 1 (got \(maxTokens))") }
        if system != nil && !chat { throw ValidationError("--system needs --chat") }
        guard topLogprobs >= 0 else { throw ValidationError("--top-logprobs must be ≥ 0 (got \(topLogprobs))") }
        if topLogprobs > 0 && !json { throw ValidationError("--top-logprobs needs --json") }
    }

    func run() throws {
        let bundle = try adapterArguments.load(modelArguments)
        let promptIds: [Int]
        if chat {
            var messages: [ChatMessage] = []
            if let system { messages.append(ChatMessage(role: "system", content: system)) }
            messages.append(ChatMessage(role: "user", content: prompt))
            promptIds = try bundle.chatPrompt(messages).ids
        } else {
            promptIds = bundle.rawPrompt(prompt)
        }
        var options = bundle.generationOptions()
        options.maxTokens = maxTokens
        options.sampling = sampling.parameters
        options.stopStrings = stop
        options.ignoreEOS = ignoreEos
        options.topLogprobs = topLogprobs
        let result = try Generator.generate(model: bundle.model, tokenizer: bundle.tokenizer.tokenizer,
                                            promptTokens: promptIds, options: options,
                                            onText: json ? { _ in } : { writeOut($0) })
        if json {
            var object: [String: Any] = [
                "prompt_tokens": result.promptTokens,
                "tokens": result.tokens,
                "text": result.text,
                "stop_reason": result.stopReason.rawValue,
                "prefill_tokens_per_second": result.prefillTokensPerSecond,
                "decode_tokens_per_second": result.decodeTokensPerSecond,
            ]
            if topLogprobs > 0 {
                object["top_logprobs"] = result.topLogprobs.map { step in
                    step.map { ["id": $0.id, "logprob": Double($0.logprob)] as [String: Any] }
                }
            }
            print(jsonString(object))
        } else {
            writeOut("\n")
            printError(String(format: "[%d prompt tokens, %.1f tok/s prefill; %d generated, %.1f tok/s decode; stop: %@]",
                              result.promptTokens.count, result.prefillTokensPerSecond, result.tokens.count,
                              result.decodeTokensPerSecond, result.stopReason.rawValue))
        }
    }
}
