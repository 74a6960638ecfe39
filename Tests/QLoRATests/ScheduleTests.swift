// Fixtures: scripts/make_training_fixtures.py (schedules.json: transformers' schedulers at every step).
import Foundation
import Testing
import _TestSupport
@testable import QLoRA

@Suite struct ScheduleTests {
    @Test func schedulesMatchTransformersAtEveryStep() throws {
        let data = try #require(FileManager.default.contents(atPath: Fixtures.path("training/schedules.json")))
        let cases = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        #expect(cases.count == 12)
        for c in cases {
            let kind = try #require(LRSchedule.Kind(rawValue: c["kind"] as! String))
            let total = c["total"] as! Int, warm = c["warmup"] as! Int, base = c["base"] as! Double
            let lrs = c["lrs"] as! [Double]
            let s = LRSchedule(kind: kind, baseLR: base, totalSteps: total, warmupSteps: warm)
            for (step, expected) in lrs.enumerated() {
                let got = s.learningRate(step: step)
                #expect(abs(got - expected) <= 1e-12 * max(1, abs(expected) / base), "\(kind) T=\(total) W=\(warm) step \(step): \(got) vs \(expected)")
            }
        }
    }

    @Test func warmupRatioRoundsUpLikeTheTrainer() {
        #expect(LRSchedule(kind: .linear, baseLR: 1, totalSteps: 100, warmupRatio: 0.03).warmupSteps == 3)
        #expect(LRSchedule(kind: .linear, baseLR: 1, totalSteps: 10, warmupRatio: 0.03).warmupSteps == 1)
        #expect(LRSchedule(kind: .cosine, baseLR: 1, totalSteps: 10, warmupRatio: 0).warmupSteps == 0)
    }
}
