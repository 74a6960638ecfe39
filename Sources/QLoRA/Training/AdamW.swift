// AdamW (SPEC §4.3), 8-bit blockwise states (§4.4), a paged (mmap-backed) state store (§4.1), and
// global-norm gradient clipping (torch.nn.utils.clip_grad_norm_).
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

public enum OptimizerError: Error, Equatable, CustomStringConvertible {
    case mismatch(field: String, value: String, expected: String)
    case paging(file: String, reason: String)
    public var description: String {
        switch self {
        case let .mismatch(field, value, expected): return "optimizer: \(field) = \(value) (expected \(expected))"
        case let .paging(file, reason): return "optimizer state file \(file): \(reason)"
        }
    }
}

public struct AdamWConfig: Equatable, Sendable {
    public var beta1: Double = 0.9
    public var beta2: Double = 0.999
    public var eps: Double = 1e-8
    public var weightDecay: Double = 0.0
    /// Global-norm clipping threshold (qlora.py default 0.3); nil disables clipping.
    public var maxGradNorm: Double? = 0.3
    /// 32 or 8 (8-bit blockwise states for parameters with ≥ `min8BitSize` elements).
    public var stateBits: Int = 32
    public var min8BitSize: Int = 4096
    public var blockSize: Int = 256
    /// Keep the states in a memory-mapped temporary file (MAP_SHARED) the OS can page out.
    public var paged: Bool = false
    /// Where the paged state file is created (default: the temporary directory); it is unlinked at once.
    public var pagedDirectory: String? = nil
    public init(beta1: Double = 0.9, beta2: Double = 0.999, eps: Double = 1e-8, weightDecay: Double = 0.0,
                maxGradNorm: Double? = 0.3, stateBits: Int = 32, min8BitSize: Int = 4096, blockSize: Int = 256,
                paged: Bool = false, pagedDirectory: String? = nil) {
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay; self.maxGradNorm = maxGradNorm
        self.stateBits = stateBits; self.min8BitSize = min8BitSize; self.blockSize = blockSize
        self.paged = paged; self.pagedDirectory = pagedDirectory
    }
}

/// The optimizer state as plain arrays (for checkpoints). Per parameter either `m`/`v` (32-bit) or
/// codes + absmax (8-bit).
public struct AdamWState: Equatable, Codable, Sendable {
    public struct Parameter: Equatable, Codable, Sendable {
        public var m: [Float]?
        public var v: [Float]?
        public var codes1: [UInt8]?
        public var codes2: [UInt8]?
        public var absmax1: [Float]?
        public var absmax2: [Float]?
    }
    public var step: Int
    public var parameters: [Parameter]
}

/// Global L2 norm of all gradients, then (if it exceeds `maxNorm`) every gradient scaled by
/// maxNorm / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_ does. Returns the norm before clipping.
@discardableResult
public func clipGradientsByGlobalNorm(_ grads: [UnsafeMutableBufferPointer<Float>], maxNorm: Double) -> Double {
    var total = 0.0
    for g in grads {
        var s = 0.0
        for x in g { s += Double(x) * Double(x) }
        total += s
    }
    let norm = total.squareRoot()
    let coef = Float(maxNorm / (norm + 1e-6))
    if coef < 1 {
        for g in grads { for i in 0..<g.count { g[i] *= coef } }
    }
    return norm
}

/// Raw storage for the states: heap memory, or a shared mapping of an unlinked temporary file.
final class StateStore {
    let base: UnsafeMutableRawPointer
    let size: Int
    let mapped: Bool
    let filePath: String

    init(size: Int, paged: Bool, directory: String?) throws {
        self.size = max(size, 1)
        mapped = paged
        if !paged {
            base = UnsafeMutableRawPointer.allocate(byteCount: self.size, alignment: 4096)
            base.initializeMemory(as: UInt8.self, repeating: 0, count: self.size)
            filePath = ""
            return
        }
        let dir = directory ?? NSTemporaryDirectory()
        var template = Array((URL(fileURLWithPath: dir).appendingPathComponent("qlora-optim-XXXXXX").path).utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        let path = String(cString: template)
        filePath = path
        guard fd >= 0 else { throw OptimizerError.paging(file: path, reason: "mkstemp: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        unlink(path)  // the mapping keeps the file alive; nothing is left behind
        guard ftruncate(fd, off_t(self.size)) == 0 else {
            throw OptimizerError.paging(file: path, reason: "ftruncate \(self.size): \(String(cString: strerror(errno)))")
        }
        guard let p = mmap(nil, self.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw OptimizerError.paging(file: path, reason: "mmap \(self.size) bytes: \(String(cString: strerror(errno)))")
        }
        base = p
        _ = madvise(base, self.size, MADV_RANDOM)  // parameters are visited one by one; no read-ahead across them
    }

    /// Hint that [offset, offset+count) is about to be used (page-aligned regions only).
    func willNeed(offset: Int, count: Int) {
        guard mapped, count > 0 else { return }
        _ = madvise(base + offset, count, MADV_WILLNEED)
    }

    deinit {
        if mapped { munmap(base, size) } else { base.deallocate() }
    }
}

/// AdamW over a fixed list of float32 parameters. 32-bit: bitsandbytes' update (SPEC §4.3):
/// m = β1·m + (1−β1)·g, v = β2·v + (1−β2)·g², p ·= 1 − lr·wd, p += −lr·c2/c1 · m / (√v + eps·c2) with
/// c1 = 1 − β1^t, c2 = √(1 − β2^t). 8-bit (parameters with ≥ min8BitSize elements): bitsandbytes'
/// CPU blockwise update: dequantize m (signed dynamic map) and v (unsigned map) per block of 256,
/// update in float32 with p += −lr/c1 · m / (√v/c2 + eps), re-quantize to the nearest code.
public final class AdamW {
    public let config: AdamWConfig
    public let sizes: [Int]
    public private(set) var step: Int = 0
    let store: StateStore
    let offsets: [Int]
    let eightBit: [Bool]
    let map1: [Float], map2: [Float]
    let lut1: [UInt8], lut2: [UInt8]

    public init(sizes: [Int], config: AdamWConfig = AdamWConfig()) throws {
        guard config.stateBits == 32 || config.stateBits == 8 else {
            throw OptimizerError.mismatch(field: "stateBits", value: String(config.stateBits), expected: "32 or 8")
        }
        guard config.blockSize > 0 else { throw OptimizerError.mismatch(field: "blockSize", value: String(config.blockSize), expected: "> 0") }
        self.config = config
        self.sizes = sizes
        eightBit = sizes.map { config.stateBits == 8 && $0 >= config.min8BitSize }
        let align = config.paged ? 4096 : 64
        var offs: [Int] = [], total = 0
        for (i, n) in sizes.enumerated() {
            offs.append(total)
            let bytes = eightBit[i] ? 2 * n + 2 * 4 * ((n + config.blockSize - 1) / config.blockSize) : 8 * n
            total += (bytes + align - 1) / align * align
        }
        offsets = offs
        store = try StateStore(size: total, paged: config.paged, directory: config.pagedDirectory)
        map1 = Codebooks.dynamicMap(signed: true)
        map2 = Codebooks.dynamicMap(signed: false)
        lut1 = AdamW.nearestLUT(map1)
        lut2 = AdamW.nearestLUT(map2)
    }

    /// Bytes of optimizer state.
    public var stateBytes: Int { store.size }

    /// bitsandbytes' CPU quantize LUT: entry i = index of the nearest map value to −1 + 2i/65535
    /// (the number of midpoints below it).
    static func nearestLUT(_ map: [Float]) -> [UInt8] {
        let mids = (0..<(map.count - 1)).map { 0.5 * (map[$0] + map[$0 + 1]) }
        var lut = [UInt8](repeating: 0, count: 65536)
        var c = 0
        for i in 0..<65536 {
            let v = -1 + (2 * Float(i)) / 65535
            while c < mids.count && mids[c] < v { c += 1 }
            lut[i] = UInt8(c)
        }
        return lut
    }

    /// One optimizer step at learning rate `lr`: clips the gradients in place (if `maxGradNorm`) and
    /// updates the parameters. Returns the global gradient norm before clipping.
    @discardableResult
    public func step(parameters: [UnsafeMutableBufferPointer<Float>], gradients: [UnsafeMutableBufferPointer<Float>], lr: Double) throws -> Double {
        guard parameters.count == sizes.count, gradients.count == sizes.count else {
            throw OptimizerError.mismatch(field: "parameter count", value: "\(parameters.count) / \(gradients.count) gradients", expected: String(sizes.count))
        }
        for i in 0..<sizes.count where parameters[i].count != sizes[i] || gradients[i].count != sizes[i] {
            throw OptimizerError.mismatch(field: "parameter \(i) size", value: "\(parameters[i].count) (gradient \(gradients[i].count))", expected: String(sizes[i]))
        }
        var norm = 0.0
        if let maxNorm = config.maxGradNorm { norm = clipGradientsByGlobalNorm(gradients, maxNorm: maxNorm) }
        step += 1
        for i in 0..<sizes.count where sizes[i] > 0 {
            if eightBit[i] { update8(i, parameters[i], gradients[i], lr) } else { update32(i, parameters[i], gradients[i], lr) }
        }
        return norm
    }

    /// Array convenience.
    @discardableResult
    public func step(parameters: inout [[Float]], gradients: inout [[Float]], lr: Double) throws -> Double {
        var p: [UnsafeMutableBufferPointer<Float>] = [], g: [UnsafeMutableBufferPointer<Float>] = []
        // Copy into stable buffers, update, copy back (keeps the pointer API the single implementation).
        for k in 0..<parameters.count {
            let pb = UnsafeMutableBufferPointer<Float>.allocate(capacity: parameters[k].count); _ = pb.initialize(from: parameters[k])
            p.append(pb)
        }
        for k in 0..<gradients.count {
            let gb = UnsafeMutableBufferPointer<Float>.allocate(capacity: gradients[k].count); _ = gb.initialize(from: gradients[k])
            g.append(gb)
        }
        defer { p.forEach { $0.deallocate() }; g.forEach { $0.deallocate() } }
        let n = try step(parameters: p, gradients: g, lr: lr)
        for k in 0..<parameters.count { parameters[k] = Array(p[k]) }
        for k in 0..<gradients.count { gradients[k] = Array(g[k]) }
        return n
    }

    private func update32(_ i: Int, _ p: UnsafeMutableBufferPointer<Float>, _ g: UnsafeMutableBufferPointer<Float>, _ lr: Double) {
        let n = sizes[i]
        store.willNeed(offset: offsets[i], count: 8 * n)
        let m = (store.base + offsets[i]).assumingMemoryBound(to: Float.self)
        let v = m + n
        let b1 = Float(config.beta1), b2 = Float(config.beta2)
        let a1 = Float(1 - config.beta1), a2 = Float(1 - config.beta2)
        let c1 = 1 - pow(config.beta1, Double(step)), c2 = (1 - pow(config.beta2, Double(step))).squareRoot()
        let stepSize = Float(-lr * c2 / c1)
        let epsC2 = Float(config.eps * c2)
        let decay = Float(1 - lr * config.weightDecay)
        let pp = p.baseAddress!, gp = g.baseAddress!
        let wd = config.weightDecay > 0
        for k in 0..<n {
            let gk = gp[k]
            let mk = m[k] * b1 + gk * a1
            let vk = v[k] * b2 + gk * gk * a2
            m[k] = mk; v[k] = vk
            var pk = pp[k]
            if wd { pk *= decay }
            pp[k] = pk + stepSize * (mk / (vk.squareRoot() + epsC2))
        }
    }

    private func update8(_ i: Int, _ p: UnsafeMutableBufferPointer<Float>, _ g: UnsafeMutableBufferPointer<Float>, _ lr: Double) {
        let n = sizes[i], bs = config.blockSize, nb = (n + bs - 1) / bs
        store.willNeed(offset: offsets[i], count: 2 * n + 8 * nb)
        let q1 = (store.base + offsets[i]).assumingMemoryBound(to: UInt8.self)
        let q2 = q1 + n
        let absPtr = UnsafeMutableRawPointer(q1 + 2 * n)
        // absmax arrays (float32, possibly unaligned after 2n bytes → use loadUnaligned/storeBytes).
        let b1 = Float(config.beta1), b2 = Float(config.beta2)
        let a1 = Float(1 - config.beta1), a2 = Float(1 - config.beta2)
        let c1 = 1 - pow(config.beta1, Double(step)), c2 = (1 - pow(config.beta2, Double(step))).squareRoot()
        let c2f = Float(c2), epsf = Float(config.eps), stepSize = Float(-lr / c1)
        let decay = Float(1 - lr * config.weightDecay), wd = config.weightDecay > 0
        let pp = p.baseAddress!, gp = g.baseAddress!
        var mBuf = [Float](repeating: 0, count: bs), vBuf = [Float](repeating: 0, count: bs)
        map1.withUnsafeBufferPointer { c1map in map2.withUnsafeBufferPointer { c2map in
        lut1.withUnsafeBufferPointer { l1 in lut2.withUnsafeBufferPointer { l2 in
        mBuf.withUnsafeMutableBufferPointer { mb in vBuf.withUnsafeMutableBufferPointer { vb in
            for b in 0..<nb {
                let s = b * bs, e = min(s + bs, n)
                let am1 = absPtr.loadUnaligned(fromByteOffset: 4 * b, as: Float.self)
                let am2 = absPtr.loadUnaligned(fromByteOffset: 4 * (nb + b), as: Float.self)
                var new1: Float = 0, new2: Float = 0
                for k in s..<e {
                    let gk = gp[k]
                    let mk = c1map[Int(q1[k])] * am1 * b1 + gk * a1
                    let vk = c2map[Int(q2[k])] * am2 * b2 + gk * gk * a2
                    mb[k - s] = mk; vb[k - s] = vk
                    new1 = max(new1, abs(mk)); new2 = max(new2, abs(vk))
                    let denom = vk.squareRoot() / c2f + epsf
                    var pk = pp[k]
                    if wd { pk *= decay }
                    pp[k] = pk + stepSize * (mk / denom)
                }
                absPtr.storeBytes(of: new1, toByteOffset: 4 * b, as: Float.self)
                absPtr.storeBytes(of: new2, toByteOffset: 4 * (nb + b), as: Float.self)
                AdamW.quantize(mb.baseAddress!, e - s, absmax: new1, lut: l1, into: q1 + s)
                AdamW.quantize(vb.baseAddress!, e - s, absmax: new2, lut: l2, into: q2 + s)
            }
        }}}}}}
    }

    /// bitsandbytes CPU quantize_blockwise for one block (all-zero block → codes 0).
    static func quantize(_ x: UnsafeMutablePointer<Float>, _ count: Int, absmax: Float, lut: UnsafeBufferPointer<UInt8>,
                         into out: UnsafeMutablePointer<UInt8>) {
        if absmax == 0 { for k in 0..<count { out[k] = 0 }; return }
        let inv = 1 / absmax
        for k in 0..<count {
            let v = min(max(x[k] * inv, -1), 1)
            let u = Float(0.5).addingProduct((v + 1) * 0.5, 65535)
            out[k] = lut[Int(u)]
        }
    }

    /// The state as plain arrays.
    public func state() -> AdamWState {
        var params: [AdamWState.Parameter] = []
        for (i, n) in sizes.enumerated() {
            let base = store.base + offsets[i]
            if eightBit[i] {
                let nb = (n + config.blockSize - 1) / config.blockSize
                let q = base.assumingMemoryBound(to: UInt8.self)
                let absRaw = UnsafeRawPointer(base + 2 * n)
                params.append(AdamWState.Parameter(
                    codes1: Array(UnsafeBufferPointer(start: q, count: n)), codes2: Array(UnsafeBufferPointer(start: q + n, count: n)),
                    absmax1: (0..<nb).map { absRaw.loadUnaligned(fromByteOffset: 4 * $0, as: Float.self) },
                    absmax2: (0..<nb).map { absRaw.loadUnaligned(fromByteOffset: 4 * (nb + $0), as: Float.self) }))
            } else {
                let m = base.assumingMemoryBound(to: Float.self)
                params.append(AdamWState.Parameter(m: Array(UnsafeBufferPointer(start: m, count: n)),
                                                   v: Array(UnsafeBufferPointer(start: m + n, count: n))))
            }
        }
        return AdamWState(step: step, parameters: params)
    }

    /// Restores a state saved by `state()` from an optimizer with the same sizes and config.
    public func restore(_ s: AdamWState) throws {
        guard s.parameters.count == sizes.count else {
            throw OptimizerError.mismatch(field: "state parameter count", value: String(s.parameters.count), expected: String(sizes.count))
        }
        for (i, n) in sizes.enumerated() where n > 0 {
            let ps = s.parameters[i]
            let base = store.base + offsets[i]
            if eightBit[i] {
                let nb = (n + config.blockSize - 1) / config.blockSize
                guard let c1 = ps.codes1, let c2 = ps.codes2, let a1 = ps.absmax1, let a2 = ps.absmax2,
                      c1.count == n, c2.count == n, a1.count == nb, a2.count == nb else {
                    throw OptimizerError.mismatch(field: "state of parameter \(i)", value: "missing or mis-sized 8-bit arrays", expected: "codes \(n), absmax \(nb)")
                }
                c1.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: n) }
                c2.withUnsafeBytes { (base + n).copyMemory(from: $0.baseAddress!, byteCount: n) }
                a1.withUnsafeBytes { (base + 2 * n).copyMemory(from: $0.baseAddress!, byteCount: 4 * nb) }
                a2.withUnsafeBytes { (base + 2 * n + 4 * nb).copyMemory(from: $0.baseAddress!, byteCount: 4 * nb) }
            } else {
                guard let m = ps.m, let v = ps.v, m.count == n, v.count == n else {
                    throw OptimizerError.mismatch(field: "state of parameter \(i)", value: "missing or mis-sized m/v", expected: "\(n) elements")
                }
                m.withUnsafeBytes { base.copyMemory(from: $0.baseAddress!, byteCount: 4 * n) }
                v.withUnsafeBytes { (base + 4 * n).copyMemory(from: $0.baseAddress!, byteCount: 4 * n) }
            }
        }
        step = s.step
    }
}

// MARK: - State files (checkpoints)

extension AdamW {
    /// Writes the state as a safetensors file (atomically, fsynced): per parameter `names[i]`,
    /// `<name>.exp_avg` / `<name>.exp_avg_sq` (F32) for 32-bit states, or `<name>.exp_avg.codes` /
    /// `<name>.exp_avg_sq.codes` (U8) with `<name>.exp_avg.absmax` / `<name>.exp_avg_sq.absmax` (F32)
    /// for 8-bit ones. The metadata holds the step and the configuration (`adamw.*` keys).
    public func writeState(to path: String, names: [String]) throws {
        guard names.count == sizes.count, Set(names).count == names.count else {
            throw OptimizerError.mismatch(field: "state tensor names", value: "\(names.count) (\(Set(names).count) distinct)",
                                          expected: "\(sizes.count) distinct names")
        }
        var w = SafetensorsWriter(metadata: stateMetadata())
        let s = state()
        for (i, p) in s.parameters.enumerated() {
            let n = sizes[i]
            if let m = p.m, let v = p.v {
                try w.add(names[i] + ".exp_avg", shape: [n], float32: m)
                try w.add(names[i] + ".exp_avg_sq", shape: [n], float32: v)
            } else if let c1 = p.codes1, let c2 = p.codes2, let a1 = p.absmax1, let a2 = p.absmax2 {
                try w.add(names[i] + ".exp_avg.codes", dtype: .u8, shape: [n], bytes: c1)
                try w.add(names[i] + ".exp_avg_sq.codes", dtype: .u8, shape: [n], bytes: c2)
                try w.add(names[i] + ".exp_avg.absmax", shape: [a1.count], float32: a1)
                try w.add(names[i] + ".exp_avg_sq.absmax", shape: [a2.count], float32: a2)
            }
        }
        try w.write(to: path)
    }

    /// The metadata `writeState` stores; `readState` requires the same values.
    func stateMetadata() -> [String: String] {
        func bits(_ x: Double) -> String { String(x.bitPattern, radix: 16) }
        return ["format": "swift-qlora-adamw", "adamw.step": String(step), "adamw.state_bits": String(config.stateBits),
                "adamw.block_size": String(config.blockSize), "adamw.min_8bit_size": String(config.min8BitSize),
                "adamw.beta1_bits": bits(config.beta1), "adamw.beta2_bits": bits(config.beta2), "adamw.eps_bits": bits(config.eps),
                "adamw.parameter_count": String(sizes.count)]
    }

    /// Restores a state written by `writeState` for the same parameter names, sizes and state layout
    /// (learning-rate-free settings such as weight decay and clipping may differ). Throws
    /// `OptimizerError.mismatch` naming the file and the field.
    public func readState(from path: String, names: [String]) throws {
        let file = try SafetensorsFile(path: path)
        let expected = stateMetadata()
        for key in ["format", "adamw.state_bits", "adamw.block_size", "adamw.min_8bit_size", "adamw.beta1_bits",
                    "adamw.beta2_bits", "adamw.eps_bits", "adamw.parameter_count"] where file.metadata[key] != expected[key] {
            throw OptimizerError.mismatch(field: "\(path): __metadata__.\(key)", value: file.metadata[key] ?? "missing",
                                          expected: expected[key]!)
        }
        guard let stepText = file.metadata["adamw.step"], let savedStep = Int(stepText), savedStep >= 0 else {
            throw OptimizerError.mismatch(field: "\(path): __metadata__.adamw.step", value: file.metadata["adamw.step"] ?? "missing",
                                          expected: "a step count ≥ 0")
        }
        guard names.count == sizes.count else {
            throw OptimizerError.mismatch(field: "state tensor names", value: String(names.count), expected: String(sizes.count))
        }
        func floats(_ name: String, _ count: Int) throws -> [Float] {
            guard file.contains(name) else { throw OptimizerError.mismatch(field: "\(path): tensor \(name)", value: "missing", expected: "F32 [\(count)]") }
            let info = try file.info(name)
            guard info.dtype == .f32, info.shape == [count] else {
                throw OptimizerError.mismatch(field: "\(path): tensor \(name)", value: "\(info.dtype.rawValue) \(info.shape)", expected: "F32 [\(count)]")
            }
            let raw = try file.rawBytes(name)
            return [Float](unsafeUninitializedCapacity: count) { buf, done in
                UnsafeMutableRawBufferPointer(buf).copyMemory(from: raw); done = count
            }
        }
        func bytes(_ name: String, _ count: Int) throws -> [UInt8] {
            guard file.contains(name) else { throw OptimizerError.mismatch(field: "\(path): tensor \(name)", value: "missing", expected: "U8 [\(count)]") }
            let info = try file.info(name)
            guard info.dtype == .u8, info.shape == [count] else {
                throw OptimizerError.mismatch(field: "\(path): tensor \(name)", value: "\(info.dtype.rawValue) \(info.shape)", expected: "U8 [\(count)]")
            }
            return Array(try file.rawBytes(name))
        }
        var params: [AdamWState.Parameter] = []
        for (i, n) in sizes.enumerated() {
            if eightBit[i] {
                let nb = (n + config.blockSize - 1) / config.blockSize
                params.append(AdamWState.Parameter(codes1: try bytes(names[i] + ".exp_avg.codes", n),
                                                   codes2: try bytes(names[i] + ".exp_avg_sq.codes", n),
                                                   absmax1: try floats(names[i] + ".exp_avg.absmax", nb),
                                                   absmax2: try floats(names[i] + ".exp_avg_sq.absmax", nb)))
            } else {
                params.append(AdamWState.Parameter(m: try floats(names[i] + ".exp_avg", n), v: try floats(names[i] + ".exp_avg_sq", n)))
            }
        }
        try restore(AdamWState(step: savedStep, parameters: params))
    }
}
