/// A small, fast, reproducible random number generator (xoshiro256**, seeded through SplitMix64).
/// Same seed, same stream, on every platform: sampling and (later) LoRA initialization use it so
/// that runs are repeatable.
public struct SeededRandom: RandomNumberGenerator, Sendable {
    private var s0, s1, s2, s3: UInt64

    public init(seed: UInt64) {
        var x = seed
        func splitMix() -> UInt64 {
            x &+= 0x9E37_79B9_7F4A_7C15
            var z = x
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s0 = splitMix(); s1 = splitMix(); s2 = splitMix(); s3 = splitMix()
    }

    public mutating func next() -> UInt64 {
        let result = ((s1 &* 5) << 7 | (s1 &* 5) >> 57) &* 9
        let t = s1 << 17
        s2 ^= s0; s3 ^= s1; s1 ^= s2; s0 ^= s3
        s2 ^= t
        s3 = (s3 << 45) | (s3 >> 19)
        return result
    }

    /// A uniform float in [0, 1) with 24 random bits.
    public mutating func nextUnitFloat() -> Float {
        Float(next() >> 40) * (1.0 / Float(1 << 24))
    }

    /// The generator's state, for checkpoints that must resume bit-identically.
    public var state: [UInt64] { [s0, s1, s2, s3] }
    public init(state: [UInt64]) {
        precondition(state.count == 4, "SeededRandom state has 4 words")
        (s0, s1, s2, s3) = (state[0], state[1], state[2], state[3])
    }
}
