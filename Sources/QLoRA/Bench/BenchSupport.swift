import Foundation

/// Monotonic seconds.
@inline(__always)
func benchNow() -> Double { Double(DispatchTime.now().uptimeNanoseconds) * 1e-9 }

/// Median of a non-empty array (mean of the two middle values for an even count); 0 when empty.
func median(_ xs: [Double]) -> Double {
    guard !xs.isEmpty else { return 0 }
    let s = xs.sorted(), n = s.count
    return n % 2 == 1 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2])
}
