import Dispatch
import Foundation
import QLoRA

/// Shows a training run's events. On a terminal the step figures are one line redrawn in place
/// (step/total, a bar, loss, learning rate, tokens/s, ETA, resident memory) and other events print
/// above it; otherwise (a pipe or a file) every step is a plain line with the same figures.
final class ProgressDisplay: @unchecked Sendable {
    let isTerminal: Bool
    private let lock = NSLock()
    private var liveLine = false
    private var started: Date?
    private var firstStep = 1
    private(set) var totalSteps = 0
    private(set) var lastStep = 0
    private(set) var bestValidation: (step: Int, loss: Double)?
    private(set) var lastValidation: (step: Int, loss: Double)?
    private(set) var stopReason: (step: Int, reason: TrainerEvent.StopReason)?
    private(set) var lastCheckpoint: String?
    private(set) var savedDirectory: String?

    init(isTerminal: Bool = isatty(STDOUT_FILENO) != 0) {
        self.isTerminal = isTerminal
    }

    /// A line of its own (above the live line on a terminal).
    func message(_ text: String) {
        lock.lock(); defer { lock.unlock() }
        if liveLine { writeOut("\r\u{1B}[2K") }
        writeOut(text + "\n")
        if liveLine { writeOut(currentLine) }
        fflush(stdout)
    }

    /// Ends the live line, if any, so that what follows starts on a fresh line.
    func finish() {
        lock.lock(); defer { lock.unlock() }
        if liveLine { writeOut("\n"); liveLine = false }
        fflush(stdout)
    }

    private var currentLine = ""

    func handle(_ event: TrainerEvent) {
        switch event {
        case let .started(trainExamples, validExamples, parameters, first, total):
            started = Date(); firstStep = first; totalSteps = total
            var text = "training \(parameters) LoRA parameters on \(trainExamples) examples (\(validExamples) validation), "
                + "\(total) steps"
            if first > 1 { text += "; resuming at step \(first)" }
            message(text)
        case let .step(m):
            lastStep = m.step
            show(m)
        case let .validation(step, loss, tokens, isBest):
            lastValidation = (step, loss)
            if isBest || bestValidation.map({ loss < $0.loss }) ?? true { bestValidation = (step, loss) }
            message(String(format: "step %d  valid_loss %.4f  (%d tokens)%@", step, loss, tokens, isBest ? "  best so far" : ""))
        case let .checkpoint(step, directory):
            lastCheckpoint = directory
            message("step \(step)  checkpoint saved to \(directory)")
        case let .stopped(step, reason):
            finish()   // the last step's line stays above the closing messages
            stopReason = (step, reason)
            switch reason {
            case .interrupted:
                message("stopped at step \(step) of \(totalSteps): interrupted")
            case let .earlyStopping(bestStep, bestLoss):
                message(String(format: "stopped at step %d of %d: early stopping (no better validation loss since step %d, %.4f)",
                               step, totalSteps, bestStep, bestLoss))
            }
        case let .saved(directory):
            finish()
            savedDirectory = directory
            message("wrote adapter to \(directory)")
        }
    }

    private func show(_ m: TrainerStepMetrics) {
        let total = max(totalSteps, m.step)
        let elapsed = started.map { Date().timeIntervalSince($0) } ?? 0
        let done = max(1, m.step - firstStep + 1)
        let eta = elapsed / Double(done) * Double(total - m.step)
        let rss = ProcessMemory.residentBytes().map(ProcessMemory.format(bytes:)) ?? "?"
        lock.lock(); defer { lock.unlock() }
        if isTerminal {
            let fraction = Double(m.step) / Double(total)
            let width = 20, filled = Int((fraction * Double(width)).rounded(.down))
            let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
            var line = String(format: "step %d/%d %@ %3.0f%%  loss %.4f  lr %.2e  %.0f tok/s  ETA %@  RSS %@",
                              m.step, total, bar, fraction * 100, m.loss, m.learningRate, m.tokensPerSecond,
                              Self.duration(eta), rss)
            if let columns = Self.terminalColumns(), line.count > columns - 1 { line = String(line.prefix(columns - 1)) }
            currentLine = line
            writeOut("\r\u{1B}[2K" + line)
            liveLine = true
        } else {
            writeOut(String(format: "step %d/%d  loss %.4f  lr %.2e  grad_norm %.3f  tok/s %.0f  elapsed %@  ETA %@  RSS %@\n",
                            m.step, total, m.loss, m.learningRate, m.gradNorm, m.tokensPerSecond,
                            Self.duration(elapsed), Self.duration(eta), rss))
        }
        fflush(stdout)
    }

    /// "45s", "3m12s", "1h02m".
    static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "?" }
        let s = Int(seconds.rounded())
        if s < 60 { return "\(s)s" }
        if s < 3600 { return "\(s / 60)m\(String(format: "%02d", s % 60))s" }
        return "\(s / 3600)h\(String(format: "%02d", (s % 3600) / 60))m"
    }

    static func terminalColumns() -> Int? {
        var size = winsize()
        guard ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0, size.ws_col > 0 else { return nil }
        return Int(size.ws_col)
    }
}

/// Ctrl-C during training: the first asks the trainer to save and stop after the current step,
/// a second quits at once.
final class InterruptHandler: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    private var source: DispatchSourceSignal?

    var requested: Bool {
        lock.lock(); defer { lock.unlock() }
        return count > 0
    }

    func install(display: ProgressDisplay) {
        signal(SIGINT, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: .global())
        source.setEventHandler { [weak self, display] in
            guard let self else { return }
            self.lock.lock()
            self.count += 1
            let n = self.count
            self.lock.unlock()
            if n == 1 {
                display.message("^C: stopping after the current step and saving a checkpoint (Ctrl-C again to quit at once, unsaved)")
            } else {
                display.message("^C again: quitting now; steps since the last checkpoint are lost")
                display.finish()
                exit(130)
            }
        }
        source.resume()
        self.source = source
    }

    func uninstall() {
        source?.cancel()
        source = nil
        signal(SIGINT, SIG_DFL)
    }
}
