import ArgumentParser
import Foundation
import QLoRA

struct ChatCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "Chat with a model in the terminal (multi-turn, with its chat template).",
        discussion: "Type a message and press Enter. /reset starts a new conversation; /exit or end of input quits.")

    @OptionGroup var modelArguments: ModelArguments
    @OptionGroup var adapterArguments: AdapterArguments
    @Option(help: "A system message for the conversation.") var system: String?
    @Option(help: "Most tokens per answer.") var maxTokens: Int = 512
    @OptionGroup var sampling: SamplingArguments

    func run() throws {
        let bundle = try adapterArguments.load(modelArguments)
        let interactive = isatty(STDIN_FILENO) != 0
        var messages: [ChatMessage] = []
        func resetConversation() {
            messages = system.map { [ChatMessage(role: "system", content: $0)] } ?? []
        }
        resetConversation()
        if interactive { printError("Chatting with \(bundle.path). /reset starts over, /exit quits.") }
        var turn = 0
        while true {
            if interactive { writeOut("\n> ") }
            guard let line = readLine() else { break }
            let input = line.trimmingCharacters(in: .whitespaces)
            if input.isEmpty { continue }
            if input == "/exit" || input == "/quit" { break }
            if input == "/reset" { resetConversation(); printError("[new conversation]"); continue }
            messages.append(ChatMessage(role: "user", content: input))
            var prompt = try bundle.chatPrompt(messages).ids
            // Drop the oldest turns when the conversation outgrows the context.
            while prompt.count + maxTokens > bundle.model.contextLength && messages.count > 1 {
                let first = messages.first?.role == "system" ? 1 : 0
                messages.remove(at: first)
                if messages.count > first, messages[first].role == "assistant" { messages.remove(at: first) }
                prompt = try bundle.chatPrompt(messages).ids
            }
            var options = bundle.generationOptions()
            options.maxTokens = maxTokens
            var parameters = sampling.parameters
            parameters.seed = sampling.seed &+ UInt64(turn)
            options.sampling = parameters
            if !interactive { writeOut("assistant: ") }
            let result = try Generator.generate(model: bundle.model, tokenizer: bundle.tokenizer.tokenizer,
                                                promptTokens: prompt, options: options, onText: { writeOut($0) })
            writeOut("\n")
            messages.append(ChatMessage(role: "assistant", content: result.text))
            turn += 1
        }
    }
}
