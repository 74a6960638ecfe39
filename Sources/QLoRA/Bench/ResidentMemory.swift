import Foundation

/// This process's resident memory, read from /proc/self/status (Linux). Returns nil elsewhere.
/// (A small reader for the benchmarks; Support/ProcessMemory.swift may replace it.)
public enum ResidentMemory {
    /// Current resident set size in bytes (VmRSS).
    public static func currentBytes() -> Int? { field("VmRSS:") }

    /// Peak resident set size in bytes since start or since the last `resetPeak()` (VmHWM).
    public static func peakBytes() -> Int? { field("VmHWM:") }

    /// Resets the peak to the current RSS (writes "5" to /proc/self/clear_refs, Linux ≥ 4.0).
    /// Returns false when the kernel does not allow it (then `peakBytes` stays the lifetime peak).
    @discardableResult
    public static func resetPeak() -> Bool {
        guard let h = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return false }
        defer { try? h.close() }
        do { try h.write(contentsOf: Data("5".utf8)) } catch { return false }
        return true
    }

    private static func field(_ name: String) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix(name) {
            // "VmHWM:	  123456 kB"
            let parts = line.dropFirst(name.count).split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let first = parts.first, let kb = Int(first) else { return nil }
            return kb * 1024
        }
        return nil
    }
}

/// Monotonic seconds.
@inline(__always)
func benchNow() -> Double { Double(DispatchTime.now().uptimeNanoseconds) * 1e-9 }

/// Median of a non-empty array (mean of the two middle values for an even count); 0 when empty.
func median(_ xs: [Double]) -> Double {
    guard !xs.isEmpty else { return 0 }
    let s = xs.sorted(), n = s.count
    return n % 2 == 1 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2])
}
