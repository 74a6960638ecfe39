import ArgumentParser
import QLoRA

@main
struct QLoRATool: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "qlora",
        abstract: "QLoRA fine-tuning and inference for LLaMA-family models on CPUs.",
        version: "0.1.0",
        subcommands: [GenerateCommand.self, ChatCommand.self, TokenizeCommand.self, InspectCommand.self, QuantizeCommand.self, PerplexityCommand.self, TrainCommand.self, FuseCommand.self, BenchCommand.self, PlanCommand.self])
}
