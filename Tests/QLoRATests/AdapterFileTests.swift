// Fixtures: scripts/make_training_fixtures.py (training/peft-tiny: an adapter saved by PEFT 0.21.2 for
// Tests/Fixtures/llama/tiny-llama-gqa-tied; peft-tiny-expected.json: its keys, shapes and sums).
import Foundation
import Testing
import _TestSupport
@testable import QLoRA

@Suite struct AdapterFileTests {
    @Test func readsAnAdapterWrittenByPEFT() throws {
        let a = try AdapterFile.read(directory: Fixtures.path("training/peft-tiny"))
        #expect(a.config.r == 4 && a.config.loraAlpha == 8 && a.config.useRSLoRA && a.config.loraDropout == 0.05)
        #expect(a.config.targetModules == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"])
        #expect(a.config.scaling == 4)  // 8 / √4
        #expect(a.config.baseModelNameOrPath?.hasSuffix("tiny-llama-gqa-tied") == true)
        let data = try #require(FileManager.default.contents(atPath: Fixtures.path("training/peft-tiny-expected.json")))
        let exp = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(exp["metadata"] as? [String: String] == ["format": "pt"])
        let tensors = exp["tensors"] as! [String: [String: Any]]
        #expect(tensors.count == 2 * 7 * 2)
        #expect(a.layers.count == 2)
        var n = 0
        for (i, layer) in a.layers.enumerated() {
            #expect(layer.count == 7)
            for (module, pair) in layer {
                for (mat, m) in [("A", pair.a), ("B", pair.b)] {
                    let name = LoRAAdapterWeights.tensorName(layer: i, module: module, matrix: mat)
                    let e = try #require(tensors[name], "\(name)")
                    #expect([m.rows, m.cols] == e["shape"] as! [Int])
                    let sum = m.values.reduce(0.0) { $0 + Double($1) }
                    #expect(abs(sum - (e["sum"] as! Double)) <= 1e-5, "\(name)")
                    #expect(m.values.first! == Float(e["first"] as! Double) && m.values.last! == Float(e["last"] as! Double))
                    n += 1
                }
                #expect(pair.a.rows == 4 && pair.b.cols == 4)
                #expect(pair.a.cols == (module == "down_proj" ? 96 : 64))
                #expect(pair.b.rows == (["k_proj", "v_proj"].contains(module) ? 32 : module == "gate_proj" || module == "up_proj" ? 96 : 64))
            }
        }
        #expect(n == 28)
    }

    @Test func writeThenReadRoundTripsAndMatchesPEFTLayout() throws {
        let src = try AdapterFile.read(directory: Fixtures.path("training/peft-tiny"))
        var a = src
        a.config.baseModelHash = "sha256:0123abcd"
        a.config.chatTemplate = "{{ messages }}\n\"quoted\" é"
        a.config.eosTokenIds = [2, 7]
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("qlora-adapter-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try AdapterFile.write(a, to: dir)
        let back = try AdapterFile.read(directory: dir)
        #expect(back == a)
        // For `make_training_fixtures.py --check-adapter DIR` (PEFT loads our files): keep a copy.
        if let keep = ProcessInfo.processInfo.environment["QLORA_KEEP_ADAPTER_DIR"] { try AdapterFile.write(a, to: keep) }
        // Same tensor names, shapes and bytes as PEFT's own file; metadata format pt.
        let ours = try SafetensorsFile(path: dir + "/adapter_model.safetensors")
        let theirs = try SafetensorsFile(path: Fixtures.path("training/peft-tiny/adapter_model.safetensors"))
        #expect(ours.metadata == ["format": "pt", "swift_qlora.base_model_hash": "sha256:0123abcd", "swift_qlora.eos_token_ids": "[2, 7]",
                                  "swift_qlora.chat_template": "{{ messages }}\n\"quoted\" é"])
        #expect(Set(ours.tensorNames) == Set(theirs.tensorNames))
        for name in theirs.tensorNames {
            #expect(try ours.info(name).dtype == .f32 && ours.shape(of: name) == theirs.shape(of: name))
            #expect(Array(try ours.rawBytes(name)) == Array(try theirs.rawBytes(name)))
        }
        // Config: sorted keys, 2-space indent, only LoraConfig fields (extras are in the safetensors metadata).
        let text = try String(contentsOfFile: dir + "/adapter_config.json", encoding: .utf8)
        #expect(text.hasPrefix("{\n  \"alpha_pattern\": {},\n  \"base_model_name_or_path\": "))
        #expect(text.contains("\n  \"r\": 4,\n") && text.contains("\"use_rslora\": true") && text.contains("\"lora_alpha\": 8,"))
        let obj = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let keys = text.split(separator: "\n").filter { $0.hasPrefix("  \"") }.map { String($0.dropFirst(3).prefix { $0 != "\"" }) }
        #expect(keys == keys.sorted() && keys.count == obj.count)
        #expect(obj["swift_qlora"] == nil && obj.count == 19)
        // No temporary files left behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["adapter_config.json", "adapter_model.safetensors"])
    }

    @Test func badConfigsAreRejectedWithTheField() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("qlora-adapter-bad-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (json, field) in [(#"{"peft_type": "IA3"}"#, "peft_type"), (#"{"peft_type": "LORA", "use_dora": true}"#, "use_dora"),
                              (#"{"peft_type": "LORA", "rank_pattern": {"q_proj": 4}}"#, "rank_pattern")] {
            try json.write(toFile: dir + "/adapter_config.json", atomically: true, encoding: .utf8)
            do { _ = try AdapterFile.readConfig(dir + "/adapter_config.json"); Issue.record("accepted \(json)") }
            catch let ModelFormatError.invalidValue(_, f, _, _) { #expect(f == field) }
        }
        // Minimal PEFT config: defaults.
        try #"{"peft_type": "LORA"}"#.write(toFile: dir + "/adapter_config.json", atomically: true, encoding: .utf8)
        let c = try AdapterFile.readConfig(dir + "/adapter_config.json")
        #expect(c.r == 8 && c.loraAlpha == 8 && !c.useRSLoRA && c.targetModules == ["q_proj", "v_proj"])
    }
}
