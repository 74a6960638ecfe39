import Foundation

public enum LossPlotError: Error, Equatable, CustomStringConvertible {
    case cannotRead(file: String, reason: String)
    /// `line` is 1-based.
    case badLine(file: String, line: Int, reason: String)
    case cannotWrite(file: String, reason: String)

    public var description: String {
        switch self {
        case let .cannotRead(file, reason): return "\(file): cannot read: \(reason)"
        case let .badLine(file, line, reason): return "\(file):\(line): \(reason)"
        case let .cannotWrite(file, reason): return "\(file): cannot write: \(reason)"
        }
    }
}

/// A self-contained SVG chart of a run's loss curves (`loss.svg` beside `metrics.jsonl`).
///
/// The chart has a title, a grid with tick labels on both axes, the train loss as a line (with
/// markers while there are few points), the validation loss as dots joined by a dashed line, and a
/// legend with the last train loss and the best validation loss. The y axis is logarithmic when
/// every loss is positive and the largest is more than 10^1.5 (≈ 32) times the smallest, as when a
/// run starts far from its plateau; otherwise it is linear. Points are drawn in step order; a step
/// that appears twice (a resumed run re-logging a step) keeps its last value; non-finite losses
/// are left out.
public enum LossPlot {
    public static let width = 720.0, height = 420.0
    /// Loss ratio (largest / smallest) above which the y axis is logarithmic.
    public static let logScaleRatio = pow(10, 1.5)

    static let plotLeft = 76.0, plotRight = width - 24, plotTop = 48.0, plotBottom = height - 56
    static let trainColor = "#1f77b4", validColor = "#d62728"

    /// The SVG document.
    public static func svg(train: [(step: Int, loss: Double)], valid: [(step: Int, loss: Double)], title: String) -> String {
        let train = cleaned(train), valid = cleaned(valid)
        let all = train + valid
        var out = """
        <?xml version="1.0" encoding="UTF-8"?>
        <svg xmlns="http://www.w3.org/2000/svg" width="\(fmt(width))" height="\(fmt(height))" \
        viewBox="0 0 \(fmt(width)) \(fmt(height))" font-family="Helvetica, Arial, sans-serif" font-size="12">
        <rect x="0" y="0" width="\(fmt(width))" height="\(fmt(height))" fill="#ffffff"/>
        <text class="title" x="\(fmt(width / 2))" y="28" text-anchor="middle" font-size="15" font-weight="bold" \
        fill="#222222">\(escape(title))</text>

        """

        // Domains.
        let steps = all.map(\.step), losses = all.map(\.loss)
        var x0 = Double(steps.min() ?? 0), x1 = Double(steps.max() ?? 1)
        if x1 <= x0 { x0 -= 1; x1 += 1 }
        let yScale = YScale(losses: losses)
        let xTicks = linearTicks(x0, x1, target: 7, integer: true).filter { $0 >= x0 && $0 <= x1 }
        func px(_ step: Double) -> Double { plotLeft + (step - x0) / (x1 - x0) * (plotRight - plotLeft) }
        func py(_ loss: Double) -> Double { plotBottom - yScale.fraction(loss) * (plotBottom - plotTop) }

        // Grid and tick labels.
        out += "<g class=\"grid\" stroke=\"#e6e6e6\" stroke-width=\"1\">\n"
        for t in xTicks { out += "<line x1=\"\(fmt(px(t)))\" y1=\"\(fmt(plotTop))\" x2=\"\(fmt(px(t)))\" y2=\"\(fmt(plotBottom))\"/>\n" }
        for t in yScale.ticks { out += "<line x1=\"\(fmt(plotLeft))\" y1=\"\(fmt(py(t.value)))\" x2=\"\(fmt(plotRight))\" y2=\"\(fmt(py(t.value)))\"/>\n" }
        out += "</g>\n<g class=\"x-ticks\" fill=\"#333333\" text-anchor=\"middle\">\n"
        for t in xTicks {
            out += "<line x1=\"\(fmt(px(t)))\" y1=\"\(fmt(plotBottom))\" x2=\"\(fmt(px(t)))\" y2=\"\(fmt(plotBottom + 5))\" stroke=\"#333333\"/>"
            out += "<text x=\"\(fmt(px(t)))\" y=\"\(fmt(plotBottom + 19))\">\(Int(t))</text>\n"
        }
        out += "</g>\n<g class=\"y-ticks\" fill=\"#333333\" text-anchor=\"end\">\n"
        for t in yScale.ticks {
            out += "<line x1=\"\(fmt(plotLeft - 5))\" y1=\"\(fmt(py(t.value)))\" x2=\"\(fmt(plotLeft))\" y2=\"\(fmt(py(t.value)))\" stroke=\"#333333\"/>"
            if let label = t.label {
                out += "<text x=\"\(fmt(plotLeft - 8))\" y=\"\(fmt(py(t.value) + 4))\">\(label)</text>"
            }
            out += "\n"
        }
        out += "</g>\n"
        // Axes and their names.
        out += "<path class=\"axes\" d=\"M\(fmt(plotLeft)),\(fmt(plotTop))V\(fmt(plotBottom))H\(fmt(plotRight))\" "
            + "fill=\"none\" stroke=\"#333333\" stroke-width=\"1\"/>\n"
        out += "<text class=\"x-label\" x=\"\(fmt((plotLeft + plotRight) / 2))\" y=\"\(fmt(height - 14))\" "
            + "text-anchor=\"middle\" fill=\"#222222\">step</text>\n"
        let yName = yScale.isLog ? "loss (log scale)" : "loss"
        out += "<text class=\"y-label\" x=\"18\" y=\"\(fmt((plotTop + plotBottom) / 2))\" text-anchor=\"middle\" fill=\"#222222\" "
            + "transform=\"rotate(-90 18 \(fmt((plotTop + plotBottom) / 2)))\">\(yName)</text>\n"

        if all.isEmpty {
            out += "<text class=\"empty\" x=\"\(fmt((plotLeft + plotRight) / 2))\" y=\"\(fmt((plotTop + plotBottom) / 2))\" "
                + "text-anchor=\"middle\" fill=\"#888888\">no losses logged yet</text>\n</svg>\n"
            return out
        }

        // Curves.
        func points(_ series: [(step: Int, loss: Double)]) -> String {
            series.map { "\(fmt(px(Double($0.step)))),\(fmt(py($0.loss)))" }.joined(separator: " ")
        }
        if !train.isEmpty {
            out += "<polyline class=\"train\" points=\"\(points(train))\" fill=\"none\" stroke=\"\(trainColor)\" "
                + "stroke-width=\"1.6\" stroke-linejoin=\"round\" stroke-linecap=\"round\"/>\n"
            if train.count <= 40 {
                out += "<g class=\"train-markers\" fill=\"\(trainColor)\">"
                let r = train.count == 1 ? "3.6" : "2.2"
                for p in train { out += "<circle cx=\"\(fmt(px(Double(p.step))))\" cy=\"\(fmt(py(p.loss)))\" r=\"\(r)\"/>" }
                out += "</g>\n"
            }
        }
        if !valid.isEmpty {
            out += "<polyline class=\"valid\" points=\"\(points(valid))\" fill=\"none\" stroke=\"\(validColor)\" "
                + "stroke-width=\"1.3\" stroke-dasharray=\"5 3\"/>\n<g class=\"valid-markers\" fill=\"\(validColor)\" "
                + "stroke=\"#ffffff\" stroke-width=\"1\">"
            for p in valid { out += "<circle cx=\"\(fmt(px(Double(p.step))))\" cy=\"\(fmt(py(p.loss)))\" r=\"3.6\"/>" }
            out += "</g>\n"
        }

        // Legend, top right inside the plot.
        var entries: [(kind: String, text: String)] = []
        if let last = train.last { entries.append(("train", "train (last \(lossText(last.loss)) at step \(last.step))")) }
        if let best = valid.min(by: { $0.loss < $1.loss }) {
            entries.append(("valid", "validation (best \(lossText(best.loss)) at step \(best.step))"))
        }
        let longest = entries.map(\.text.count).max() ?? 0
        let boxWidth = 40 + Double(longest) * 6.4, boxHeight = 10 + 18 * Double(entries.count)
        let bx = plotRight - boxWidth - 8, by = plotTop + 8
        out += "<g class=\"legend\">\n<rect x=\"\(fmt(bx))\" y=\"\(fmt(by))\" width=\"\(fmt(boxWidth))\" "
            + "height=\"\(fmt(boxHeight))\" fill=\"#ffffff\" fill-opacity=\"0.9\" stroke=\"#cccccc\"/>\n"
        for (i, e) in entries.enumerated() {
            let cy = by + 14 + 18 * Double(i)
            if e.kind == "train" {
                out += "<line x1=\"\(fmt(bx + 8))\" y1=\"\(fmt(cy))\" x2=\"\(fmt(bx + 30))\" y2=\"\(fmt(cy))\" "
                    + "stroke=\"\(trainColor)\" stroke-width=\"1.6\"/>"
            } else {
                out += "<line x1=\"\(fmt(bx + 8))\" y1=\"\(fmt(cy))\" x2=\"\(fmt(bx + 30))\" y2=\"\(fmt(cy))\" "
                    + "stroke=\"\(validColor)\" stroke-width=\"1.3\" stroke-dasharray=\"5 3\"/>"
                    + "<circle cx=\"\(fmt(bx + 19))\" cy=\"\(fmt(cy))\" r=\"3.6\" fill=\"\(validColor)\" stroke=\"#ffffff\"/>"
            }
            out += "<text x=\"\(fmt(bx + 36))\" y=\"\(fmt(cy + 4))\" fill=\"#222222\">\(escape(e.text))</text>\n"
        }
        out += "</g>\n</svg>\n"
        return out
    }

    /// The train and validation losses of a metrics.jsonl file (as the Trainer writes it: one JSON
    /// object per line with "split", "step" and "loss"). Lines of other splits are ignored; a last
    /// line without its newline (a write cut short) is skipped.
    public static func read(metricsFile: String) throws -> (train: [(step: Int, loss: Double)], valid: [(step: Int, loss: Double)]) {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: metricsFile)) } catch {
            throw LossPlotError.cannotRead(file: metricsFile, reason: (error as NSError).localizedDescription)
        }
        var train: [(step: Int, loss: Double)] = [], valid: [(step: Int, loss: Double)] = []
        let lines = data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false)
        for (index, line) in lines.enumerated() {
            let isCutShort = index == lines.count - 1   // no newline after it (or the empty tail)
            if line.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\r") }) { continue }
            guard let object = (try? JSONSerialization.jsonObject(with: Data(line))) as? [String: Any] else {
                if isCutShort { continue }
                throw LossPlotError.badLine(file: metricsFile, line: index + 1,
                                            reason: "not a JSON object: \(String(decoding: line.prefix(80), as: UTF8.self))")
            }
            guard let split = object["split"] as? String else {
                throw LossPlotError.badLine(file: metricsFile, line: index + 1, reason: "no \"split\" string")
            }
            guard split == "train" || split == "valid" else { continue }
            guard let step = object["step"] as? Int else {
                throw LossPlotError.badLine(file: metricsFile, line: index + 1, reason: "\"step\" = \(object["step"] ?? "missing"): expected an integer")
            }
            guard let loss = object["loss"] as? Double else {
                throw LossPlotError.badLine(file: metricsFile, line: index + 1, reason: "\"loss\" = \(object["loss"] ?? "missing"): expected a number")
            }
            if split == "train" { train.append((step, loss)) } else { valid.append((step, loss)) }
        }
        return (train, valid)
    }

    /// Reads `metricsFile` and writes the chart to `svgPath` (atomically), titled with the name of
    /// the folder that holds the metrics.
    public static func write(metricsFile: String, to svgPath: String) throws {
        let series = try read(metricsFile: metricsFile)
        let run = URL(fileURLWithPath: metricsFile).deletingLastPathComponent().lastPathComponent
        let text = svg(train: series.train, valid: series.valid, title: "Loss: \(run)")
        do { try Data(text.utf8).write(to: URL(fileURLWithPath: svgPath), options: .atomic) } catch {
            throw LossPlotError.cannotWrite(file: svgPath, reason: (error as NSError).localizedDescription)
        }
    }

    // MARK: - Helpers

    /// Finite losses, sorted by step, the last value of a repeated step kept.
    static func cleaned(_ points: [(step: Int, loss: Double)]) -> [(step: Int, loss: Double)] {
        var byStep: [Int: Double] = [:]
        for p in points where p.loss.isFinite { byStep[p.step] = p.loss }
        return byStep.keys.sorted().map { ($0, byStep[$0]!) }
    }

    struct YScale {
        var isLog: Bool
        var lo: Double, hi: Double
        var ticks: [(value: Double, label: String?)]

        init(losses: [Double]) {
            let mn = losses.min() ?? 0, mx = losses.max() ?? 1
            if mn > 0, mx / mn > LossPlot.logScaleRatio {
                isLog = true
                lo = log10(mn) - 0.04 * log10(mx / mn)
                hi = log10(mx) + 0.04 * log10(mx / mn)
                var candidates: [Double] = []
                for e in Int(floor(lo))...Int(ceil(hi)) {
                    for m in [1.0, 2, 5] { candidates.append(m * pow(10, Double(e))) }
                }
                let (l, h) = (lo, hi)
                let inside = candidates.filter { log10($0) >= l - 1e-9 && log10($0) <= h + 1e-9 }
                let decadesOnly = inside.count > 12
                ticks = inside.compactMap { v in
                    let isDecade = abs(log10(v) - log10(v).rounded()) < 1e-9
                    if decadesOnly && !isDecade { return nil }
                    return (v, LossPlot.logLabel(v))
                }
            } else {
                isLog = false
                var a = mn, b = mx
                if b - a < 1e-12 { let pad = max(abs(a) * 0.1, 0.1); a -= pad; b += pad }
                let pad = 0.05 * (b - a)
                a -= pad; b += pad
                if mn >= 0 && a < 0 { a = 0 }
                let step = LossPlot.niceStep((b - a) / 5)
                lo = floor(a / step + 1e-9) * step
                hi = ceil(b / step - 1e-9) * step
                let decimals = max(0, Int(-floor(log10(step) + 1e-9)))
                var t: [(Double, String?)] = []
                var v = lo
                while v <= hi + step * 1e-6 {
                    t.append((v, String(format: "%.\(decimals)f", abs(v) < step * 1e-6 ? 0 : v)))
                    v += step
                }
                ticks = t
            }
        }

        /// Where a loss sits between the bottom (0) and top (1) of the plot.
        func fraction(_ loss: Double) -> Double {
            let v = isLog ? log10(loss) : loss
            return (v - lo) / (hi - lo)
        }
    }

    /// 1, 2 or 5 × a power of ten, at least `raw`.
    static func niceStep(_ raw: Double) -> Double {
        let e = pow(10, floor(log10(raw)))
        for m in [1.0, 2, 5, 10] where m * e >= raw * (1 - 1e-9) { return m * e }
        return 10 * e
    }

    /// Multiples of a nice step in [a, b], about `target` of them.
    static func linearTicks(_ a: Double, _ b: Double, target: Int, integer: Bool) -> [Double] {
        var step = niceStep((b - a) / Double(target))
        if integer { step = max(1, step.rounded()) }
        var ticks: [Double] = []
        var v = ceil(a / step - 1e-9) * step
        while v <= b + 1e-9 { ticks.append(v); v += step }
        return ticks
    }

    static func logLabel(_ v: Double) -> String {
        if v >= 1000 || v < 0.001 { return String(format: "%.0e", v) }
        if v >= 1 { return String(format: "%.0f", v) }
        let decimals = Int(-floor(log10(v) + 1e-9))
        return String(format: "%.\(decimals)f", v)
    }

    static func lossText(_ v: Double) -> String {
        abs(v) >= 0.01 || v == 0 ? String(format: "%.4f", v) : String(format: "%.3e", v)
    }

    static func fmt(_ v: Double) -> String {
        let r = (v * 10).rounded() / 10
        return r == r.rounded() ? String(Int(r)) : String(format: "%.1f", r)
    }

    static func escape(_ s: String) -> String {
        var out = ""
        for c in s {
            switch c {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            default: out.append(c)
            }
        }
        return out
    }
}
