// Fixtures: Tests/Fixtures/nf4/*.safetensors, made by scripts/make_nf4_fixtures.py (bitsandbytes 0.50.2, CPU).
// Golden values: SPEC Appendix B (map hashes) and C.1–C.4.
import Foundation
import Testing
import ModelFormats
import Quantization
import _TestSupport

private func bytes(_ f: SafetensorsFile, _ name: String) throws -> [UInt8] { Array(try f.rawBytes(name)) }

private func floats(_ f: SafetensorsFile, _ name: String) throws -> [Float] {
    let n = try f.info(name).elementCount
    var out = [Float](repeating: 0, count: n)
    try out.withUnsafeMutableBufferPointer { try f.readFloat32(name, into: $0) }
    return out
}

private func floatBytes(_ v: [Float]) -> [UInt8] { WeightDType.float32.encode(v) }

private func hexBytes(_ s: String) -> [UInt8] {
    var out: [UInt8] = []
    var it = s.makeIterator()
    while let a = it.next(), let b = it.next() { out.append(UInt8(String([a, b]), radix: 16)!) }
    return out
}

@Suite struct QuantizedTensor4BitTests {
    static let fixtureNames = ["nf4_f32_odd", "nf4_bf16_dq", "nf4_f32_dq_bs128", "nf4_f16_dq_bs32",
                               "fp4_f32_odd", "fp4_bf16_dq", "fp4_f32_bs256", "nf4_f32_dq_const"]

    @Test(arguments: fixtureNames)
    func quantizationMatchesBitsandbytesBytes(name: String) throws {
        let f = try SafetensorsFile(path: Fixtures.path("nf4/\(name).safetensors"))
        let type = try #require(QuantType4Bit(rawValue: f.metadata["quant_type"] ?? ""))
        let blocksize = try #require(Int(f.metadata["blocksize"] ?? ""))
        let dtype = try #require(WeightDType(rawValue: f.metadata["dtype"] ?? ""))
        let dq = f.metadata["double_quant"] == "1"
        let shape = try f.shape(of: "input")
        let input = try floats(f, "input")

        let q = try QuantizedTensor4Bit.quantize(input, shape: shape, dtype: dtype, quantType: type,
                                                 blocksize: blocksize, doubleQuant: dq)
        #expect(q.packed == (try bytes(f, "packed")))
        #expect(floatBytes(q.quantMap) == (try bytes(f, "quant_map")))
        switch q.scales {
        case .float32(let absmax):
            #expect(!dq)
            #expect(floatBytes(absmax) == (try bytes(f, "absmax")))
        case .doubleQuantized(let d):
            #expect(dq)
            #expect(d.codes == (try bytes(f, "absmax")))
            #expect(floatBytes(d.nestedAbsmax) == (try bytes(f, "nested_absmax")))
            #expect(floatBytes([d.offset]) == (try bytes(f, "offset")))
            #expect(floatBytes(d.nestedQuantMap) == (try bytes(f, "nested_quant_map")))
            #expect(floatBytes(q.blockScales()) == (try bytes(f, "absmax_restored")))
        }
        let expected = try bytes(f, "dequantized")
        #expect(q.dequantizedBytes() == expected)
        #expect(dtype.encode(q.dequantizeReference()) == expected)
    }

    @Test(arguments: fixtureNames)
    func dequantizationOfStoredStateMatchesBitsandbytes(name: String) throws {
        let f = try SafetensorsFile(path: Fixtures.path("nf4/\(name).safetensors"))
        let type = try #require(QuantType4Bit(rawValue: f.metadata["quant_type"] ?? ""))
        let dtype = try #require(WeightDType(rawValue: f.metadata["dtype"] ?? ""))
        let scales: BlockScales
        if f.contains("nested_absmax") {
            scales = .doubleQuantized(DoubleQuantization(
                codes: try bytes(f, "absmax"), nestedAbsmax: try floats(f, "nested_absmax"),
                offset: try floats(f, "offset")[0], nestedQuantMap: try floats(f, "nested_quant_map")))
        } else {
            scales = .float32(try floats(f, "absmax"))
        }
        let q = try QuantizedTensor4Bit(quantType: type, blocksize: Int(f.metadata["blocksize"] ?? "") ?? 0,
                                        shape: try f.shape(of: "input"), dtype: dtype, packed: try bytes(f, "packed"),
                                        scales: scales, quantMap: try floats(f, "quant_map"))
        #expect(q.dequantizedBytes() == (try bytes(f, "dequantized")))
    }

    @Test func dynamicMapsAndNF4TableMatchAppendixB() {
        #expect(SHA256.hex(floats: Codebooks.dynamicMap(signed: true))
                == "e732639a65f497b4ad684bb166a4467708255edd5207757de8b8f0c7e1fda89c")
        #expect(SHA256.hex(floats: Codebooks.dynamicMap(signed: false))
                == "305f002cc11278fb769d13b25b9fd0c7c83c8402c40a878fe086f4039fde6398")
        #expect(SHA256.hex(floats: Codebooks.nf4) == "8501941daa1b8a90ad1bbfeb632e5101b5dddbc4bb52d6e55abcfd777e60c06a")
        let m = Codebooks.signedDynamicMap
        #expect(m.count == 256 && m[0] == -0.99296875 && m[127] == 0 && m[255] == 1)
    }

    @Test func appendixC1NF4Float32() throws {
        let x = (0..<120).map { Float(($0 * 37) % 101 - 50) / 64 }
        let q = try QuantizedTensor4Bit.quantize(x, shape: [3, 40])
        #expect(q.packed == hexBytes("04c16e29f3b05d17e29f3c05d18e2af4c16e18e3b05d17e29f3b05d18e2af4c16d18e3b04c17e29f3b05d17e2af4c06d18e2a04c16e29f3b05d17e29"))
        #expect(q.scales == .float32([0.78125, 0.78125]))
        let d = q.dequantize()
        #expect(Array(d.prefix(8)) == [-0.78125, -0.22221982, 0.34430456, -0.5439006, -0.07113284,
                                       0.56481004, -0.41021332, 0.12572671])
        #expect(SHA256.hex(floats: d) == "74e070f1600894530601b102465d648de1ef9d3674d36ba3af30d3842c2c67c5")
    }

    @Test func appendixC2OddCountPadsWithZeroCode() throws {
        let x = (0..<75).map { Float(($0 * 37) % 101 - 50) / 64 }
        let q = try QuantizedTensor4Bit.quantize(x, shape: [1, 75])
        #expect(q.packed == hexBytes("04c16e29f3b05d17e29f3c05d18e2af4c16e18e3b05d17e29f3b05d18e2af4c16e18e3b04d17"))
        #expect(q.scales == .float32([0.78125, 0.765625]))
    }

    @Test func appendixC3DoubleQuantBFloat16() throws {
        let x = (0..<19200).map { Float(($0 * 7919) % 509 - 254) / 256 }
        let q = try QuantizedTensor4Bit.quantize(x, shape: [300, 64], dtype: .bfloat16, doubleQuant: true)
        #expect(Array(q.packed.prefix(16)) == hexBytes("081b2d4e6091c2d4e70a1c3e5f70a1c3"))
        #expect(SHA256.hex(q.packed) == "e3b0daa60bc04764083395062ca0f6570bb5ae8934d409f6b111cd3f603c617d")
        guard case .doubleQuantized(let dq) = q.scales else { Issue.record("not double-quantized"); return }
        #expect(Array(dq.codes.prefix(16)) == [224, 44, 224, 80, 202, 202, 80, 224, 44, 44, 224, 80, 202, 202, 80, 224])
        #expect(SHA256.hex(dq.codes) == "432a76880386e451c2ac4414fa70c6b05539b05458a18284e16957f3540d9d50")
        #expect(dq.nestedAbsmax == [0.012382805, 0.012382805])
        #expect(floatBytes([dq.offset]) == [0x85, 0x2b, 0x7c, 0x3f])
        #expect(Array(q.blockScales().prefix(4)) == [0.9921108, 0.98040515, 0.9921108, 0.9843754])
        let d = q.dequantize()
        #expect(Array(d.prefix(8)) == [-0.9921875, 0.0791015625, -0.69140625, 0.3359375, -0.51953125,
                                       0.55859375, -0.28125, 0.71875])
        #expect(SHA256.hex(q.dequantizedBytes()) == "abb49be4ff3b6635b85cc9f41892cc79e5ad981dc145e4491b673848e5786eff")
    }

    @Test func appendixC4Linear4bitWeight() throws {
        let x: [Float] = (0..<384).map { (i: Int) -> Float in
            let num: Int = (i * 13) % 97 - 48
            let shift: Int = 5 + (i / 64) % 3
            return Float(num) / Float(1 << shift)
        }
        let q = try QuantizedTensor4Bit.quantize(x, shape: [3, 128], dtype: .bfloat16, doubleQuant: true)
        guard case .doubleQuantized(let dq) = q.scales else { Issue.record("not double-quantized"); return }
        #expect(dq.codes == [255, 56, 14, 255, 56, 14])
        #expect(dq.nestedAbsmax == [0.625])
        #expect(dq.offset == 0.875)
        #expect(q.packed == hexBytes("01358bdf0247ace01358bef1247ade01359cef1247ade01369cef1247ade01369cef1258bde01369cef1258bdf0246ace01358bdf0247ace01358bef1247ade01359cef1247ade01369cef1247ade01369cef1258bde01369cef1258bdf0246ace01358bdf0247ace01358bef1247ade01359cef1247ade01369cef1247ade01369cef1258bde01369cef1258bdf0246ace01358bdf0247ace01358bef1247ade01359cef1247ade01369cef1247ade01369cef1258bde01369cef1258bdf024"))
        #expect(SHA256.hex(q.dequantizedBytes()) == "f4c2bc70526f2dd0ec61ae83b2cb0d3581fa9ff96e937730b29e7a25cfa7d84e")
        let d = q.dequantize()
        let rowSums: [Float] = (0..<3).map { (r: Int) -> Float in d[(r * 128)..<(r * 128 + 128)].reduce(0, +) }
        #expect(rowSums == [-3.3701171875, -1.3896484375, 0.723388671875])
    }

    @Test func int4RoundTripErrorIsAtMostHalfAStep() throws {
        var rng = SplitMix(seed: 3)
        let x = (0..<1000).map { _ in rng.nextFloat() * 2 - 1 }
        let q = try QuantizedTensor4Bit.quantize(x, shape: [10, 100], quantType: .int4)
        let d = q.dequantize()
        guard case .float32(let absmax) = q.scales else { Issue.record("expected float32 scales"); return }
        for i in 0..<x.count {
            let step = absmax[i / 64] / 7
            #expect(abs(d[i] - x[i]) <= step / 2 * 1.0001)
        }
        // The element with |x| = absmax maps to ±7 exactly.
        let i = (0..<64).max { abs(x[$0]) < abs(x[$1]) }!
        #expect(abs(d[i]) == absmax[0])
    }

    @Test func rejectsInvalidArguments() {
        #expect(throws: QuantizationError.self) { try QuantizedTensor4Bit.quantize([1, 2], shape: [1, 2], blocksize: 48) }
        #expect(throws: QuantizationError.self) { try QuantizedTensor4Bit.quantize([1, 2, 3], shape: [1, 2]) }
        #expect(throws: QuantizationError.self) {
            try QuantizedTensor4Bit(quantType: .nf4, blocksize: 64, shape: [2, 64], dtype: .float32,
                                    packed: [UInt8](repeating: 0, count: 64), scales: .float32([1]))
        }
        #expect(throws: QuantizationError.self) {
            try QuantizedTensor4Bit(quantType: .nf4, blocksize: 64, shape: [2, 64], dtype: .float32,
                                    packed: [UInt8](repeating: 0, count: 63), scales: .float32([1, 1]))
        }
    }
}

/// Deterministic test data.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E3779B97F4A7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
        return z ^ (z >> 31)
    }
    mutating func nextFloat() -> Float { Float(next() >> 40) / Float(1 << 24) }
    mutating func normal() -> Float {
        let u = max(Double(next() >> 11) / Double(1 << 53), 1e-12), v = Double(next() >> 11) / Double(1 << 53)
        return Float((-2 * log(u)).squareRoot() * cos(2 * Double.pi * v))
    }
}
