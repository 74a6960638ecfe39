// Fixtures: Tests/Fixtures/formats/{tiny_c5.gguf,reference.safetensors}, made by scripts/make_format_fixtures.py
import Foundation
import Testing
import _TestSupport
@testable import ModelFormats

/// Seeded random mutations and truncations of valid files: each must load or throw
/// ModelFormatError (never crash, hang or allocate wildly). Bounded to ~1.2 s per format.
@Suite struct FormatFuzzTests {
    private func fuzz(_ fixture: String, seed: UInt64, open: (MappedFile) throws -> Void) throws -> (loaded: Int, rejected: Int, iterations: Int) {
        let original = try readBytes(Fixtures.path(fixture))
        var rng = SplitMix64(state: seed)
        var loaded = 0, rejected = 0
        let start = Date()
        var iteration = 0
        while Date().timeIntervalSince(start) < 1.2 || iteration < 200 {
            iteration += 1
            var b = original
            switch rng.next() % 4 {
            case 0: // flip a few random bytes
                for _ in 0..<(1 + Int(rng.next() % 4)) { b[Int(rng.next() % UInt64(b.count))] = UInt8(truncatingIfNeeded: rng.next()) }
            case 1: // truncate
                b = Array(b.prefix(Int(rng.next() % UInt64(b.count))))
            case 2: // write a huge or random 8-byte value somewhere (counts, lengths, dims, offsets)
                let at = Int(rng.next() % UInt64(b.count - 8))
                let v: UInt64 = rng.next() % 2 == 0 ? rng.next() : UInt64.max - rng.next() % 1000
                withUnsafeBytes(of: v.littleEndian) { for k in 0..<8 { b[at + k] = $0[k] } }
            default: // mutate within the header region (first 512 bytes) where the structure is
                let limit = min(512, b.count)
                for _ in 0..<(1 + Int(rng.next() % 3)) { b[Int(rng.next() % UInt64(limit))] = UInt8(truncatingIfNeeded: rng.next()) }
            }
            do {
                try open(MappedFile(path: "fuzz\(iteration)", bytes: b))
                loaded += 1
            } catch is ModelFormatError {
                rejected += 1
            }
        }
        return (loaded, rejected, iteration)
    }

    @Test func ggufMutationsNeverCrash() throws {
        let r = try fuzz("formats/tiny_c5.gguf", seed: 0x5EED_0001) { file in
            let g = try GGUFFile(mapping: file)
            for n in g.tensorNames { _ = try g.float32Array(n) }
        }
        #expect(r.rejected > 0)
        #expect(r.loaded > 0)
        print("GGUF fuzz: \(r.iterations) mutations, \(r.loaded) loaded, \(r.rejected) rejected")
    }

    @Test func safetensorsMutationsNeverCrash() throws {
        let r = try fuzz("formats/reference.safetensors", seed: 0x5EED_0002) { file in
            let f = try SafetensorsFile(mapping: file)
            for n in f.tensorNames where [.f32, .f16, .bf16].contains(try f.dtype(n)) { _ = try f.float32Array(n) }
        }
        #expect(r.rejected > 0)
        #expect(r.loaded > 0)
        print("safetensors fuzz: \(r.iterations) mutations, \(r.loaded) loaded, \(r.rejected) rejected")
    }
}
