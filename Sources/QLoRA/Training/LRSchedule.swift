// Learning-rate schedules matching transformers' get_{constant,cosine,linear}_schedule_with_warmup.
import Foundation

public struct LRSchedule: Equatable, Sendable {
    public enum Kind: String, Sendable, CaseIterable { case constant, cosine, linear }
    public var kind: Kind
    public var baseLR: Double
    public var totalSteps: Int
    public var warmupSteps: Int

    public init(kind: Kind, baseLR: Double, totalSteps: Int, warmupSteps: Int) {
        self.kind = kind; self.baseLR = baseLR; self.totalSteps = totalSteps; self.warmupSteps = max(0, warmupSteps)
    }

    /// Warmup as a fraction of the total: ceil(totalSteps · ratio), as the HF Trainer does.
    public init(kind: Kind, baseLR: Double, totalSteps: Int, warmupRatio: Double) {
        self.init(kind: kind, baseLR: baseLR, totalSteps: totalSteps, warmupSteps: Int((Double(totalSteps) * warmupRatio).rounded(.up)))
    }

    /// The multiplier for optimizer step `step` (0-based: the first update uses step 0).
    public func factor(step: Int) -> Double {
        let s = Double(step), w = Double(warmupSteps)
        if step < warmupSteps { return s / max(1, w) }
        switch kind {
        case .constant:
            return 1
        case .linear:
            return max(0, Double(totalSteps - step) / max(1, Double(totalSteps - warmupSteps)))
        case .cosine:
            let progress = (s - w) / max(1, Double(totalSteps - warmupSteps))
            return max(0, 0.5 * (1 + cos(Double.pi * 2 * 0.5 * progress)))
        }
    }

    /// The learning rate of optimizer step `step` (0-based).
    public func learningRate(step: Int) -> Double { baseLR * factor(step: step) }
}
