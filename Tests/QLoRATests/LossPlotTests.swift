// LossPlot: the SVG must be well-formed XML (checked with Foundation's XMLParser), hold one
// polyline point per logged step at the right place, and survive one point, no validation and no
// data at all. The metrics files are written by the tests themselves.
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
@testable import QLoRA

@Suite struct LossPlotTests {
    /// The elements of an SVG document, in order, with their attributes and text.
    final class Elements: NSObject, XMLParserDelegate {
        var list: [(name: String, attributes: [String: String], text: String)] = []
        private var open: [Int] = []
        func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?,
                    attributes: [String: String] = [:]) {
            open.append(list.count)
            list.append((name, attributes, ""))
        }
        func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
            _ = open.popLast()
        }
        func parser(_ parser: XMLParser, foundCharacters string: String) {
            if let i = open.last, list[i].name == "text" { list[i].text += string }
        }

        func first(_ name: String, class c: String) -> (name: String, attributes: [String: String], text: String)? {
            list.first { $0.name == name && $0.attributes["class"] == c }
        }
        var texts: [String] { list.filter { $0.name == "text" }.map(\.text) }
    }

    func parse(_ svg: String) throws -> Elements {
        let parser = XMLParser(data: Data(svg.utf8))
        let elements = Elements()
        parser.delegate = elements
        let ok = parser.parse()
        #expect(ok, "XML error: \(String(describing: parser.parserError)) in\n\(svg.prefix(2000))")
        try #require(ok)
        #expect(elements.list.first?.name == "svg")
        return elements
    }

    func points(_ polyline: [String: String]?) throws -> [(x: Double, y: Double)] {
        let text = try #require(polyline?["points"])
        return try text.split(separator: " ").map { pair in
            let xy = pair.split(separator: ",").compactMap { Double($0) }
            try #require(xy.count == 2, "bad point \(pair)")
            return (xy[0], xy[1])
        }
    }

    @Test func svgIsWellFormedWithOnePointPerStepAndAxes() throws {
        let train = (1...50).map { (step: $0, loss: 3.0 * exp(-Double($0) / 20) + 0.5) }
        let valid = stride(from: 10, through: 50, by: 10).map { (step: $0, loss: 3.0 * exp(-Double($0) / 20) + 0.7) }
        let svg = LossPlot.svg(train: train, valid: valid, title: "run <a & b>")
        let e = try parse(svg)
        #expect(!svg.contains("nan") && !svg.contains("inf"))

        let t = try points(e.first("polyline", class: "train")?.attributes)
        #expect(t.count == 50)
        // Steps go left to right evenly; a higher loss is higher up (smaller y).
        #expect(zip(t, t.dropFirst()).allSatisfy { $0.x < $1.x })
        #expect(zip(t, t.dropFirst()).allSatisfy { $0.y <= $1.y })   // the loss only falls
        let width = t[49].x - t[0].x
        #expect(abs((t[25].x - t[0].x) - width * 25 / 49) < 0.2)
        let v = try points(e.first("polyline", class: "valid")?.attributes)
        #expect(v.count == 5)
        // Validation step 10 sits at train step 10's x, and above it (its loss is higher).
        #expect(abs(v[0].x - t[9].x) < 0.11 && v[0].y < t[9].y)
        #expect(e.list.filter { $0.name == "circle" }.count == 5 + 1)   // validation dots + the legend's (no train markers past 40 points)
        // Everything is inside the canvas.
        for p in t + v { #expect(p.x >= 0 && p.x <= LossPlot.width && p.y >= 0 && p.y <= LossPlot.height) }

        // Title (escaped), axis names, tick labels and the legend.
        let texts = e.texts
        #expect(texts.contains("run <a & b>"))
        #expect(texts.contains("step") && texts.contains("loss"))   // ratio 3.5 / 0.5 < 10^1.5: linear
        #expect(texts.contains("10") && texts.contains("50"))        // x ticks every 10 steps (1 … 50)
        #expect(texts.contains { $0.hasPrefix("train (last 0.") })
        #expect(texts.contains { $0.hasPrefix("validation (best ") && $0.hasSuffix("at step 50)") })
        #expect(e.first("g", class: "y-ticks") != nil && e.first("g", class: "x-ticks") != nil)
    }

    @Test func onePointAndNoValidation() throws {
        let e = try parse(LossPlot.svg(train: [(step: 1, loss: 2.5)], valid: [], title: "one"))
        let t = try points(e.first("polyline", class: "train")?.attributes)
        #expect(t.count == 1)
        #expect(t[0].x.isFinite && t[0].y.isFinite)
        #expect(e.first("polyline", class: "valid") == nil)
        #expect(e.first("g", class: "train-markers") != nil)   // a lone point is still visible
        #expect(!e.texts.contains { $0.hasPrefix("validation") })
    }

    @Test func emptyRunStillDrawsAFrame() throws {
        let e = try parse(LossPlot.svg(train: [], valid: [], title: "empty"))
        #expect(e.first("polyline", class: "train") == nil)
        #expect(e.texts.contains("no losses logged yet"))
    }

    @Test func wideLossRangeUsesALogScale() throws {
        let train = (1...30).map { (step: $0, loss: 200.0 / Double($0 * $0)) }   // 200 … 0.22: ~3 decades
        let e = try parse(LossPlot.svg(train: train, valid: [], title: "log"))
        #expect(e.texts.contains("loss (log scale)"))
        #expect(e.texts.contains("1") && e.texts.contains("10") && e.texts.contains("100"))
        // Equal ratios are equal distances: 200 → 50 (step 1 → 2) and 50/9 → 50/36 (step 3 → 6)... both ×1/4.
        let t = try points(e.first("polyline", class: "train")?.attributes)
        #expect(abs((t[1].y - t[0].y) - (t[5].y - t[2].y)) < 0.2)
    }

    @Test func writeReadsMetricsSkippingOtherSplitsAndACutLastLine() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("qlora-lossplot-\(getpid())")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let metrics = dir.appendingPathComponent("metrics.jsonl").path
        let svg = dir.appendingPathComponent("loss.svg").path
        var lines: [String] = []
        for s in 1...6 { lines.append(#"{"learning_rate":0.001,"loss":\#(3.0 - 0.3 * Double(s)),"split":"train","step":\#(s)}"#) }
        lines.insert(#"{"loss":2.5,"split":"valid","step":3}"#, at: 3)
        lines.append(#"{"loss":2.0,"split":"valid","step":6}"#)
        lines.append(#"{"loss":9.0,"split":"test","step":6}"#)
        try (lines.joined(separator: "\n") + "\n" + #"{"loss":1.0,"spl"#).write(toFile: metrics, atomically: true, encoding: .utf8)

        let read = try LossPlot.read(metricsFile: metrics)
        #expect(read.train.map(\.step) == Array(1...6) && read.valid.map(\.step) == [3, 6])
        #expect(read.valid.map(\.loss) == [2.5, 2.0])
        try LossPlot.write(metricsFile: metrics, to: svg)
        let e = try parse(try String(contentsOfFile: svg, encoding: .utf8))
        #expect(try points(e.first("polyline", class: "train")?.attributes).count == 6)
        #expect(try points(e.first("polyline", class: "valid")?.attributes).count == 2)
        #expect(e.texts.contains("Loss: \(dir.lastPathComponent)"))

        // A broken line in the middle is an error naming the file and the line.
        try (lines[0] + "\nnot json\n" + lines[1] + "\n").write(toFile: metrics, atomically: true, encoding: .utf8)
        #expect(throws: LossPlotError.self) { try LossPlot.read(metricsFile: metrics) }
        do { _ = try LossPlot.read(metricsFile: metrics) } catch {
            #expect("\(error)".hasPrefix("\(metrics):2: not a JSON object"))
        }
        let missing = dir.appendingPathComponent("none.jsonl").path
        do { _ = try LossPlot.read(metricsFile: missing); Issue.record("read a missing file") } catch {
            #expect("\(error)".hasPrefix("\(missing): cannot read"))
        }
    }
}
