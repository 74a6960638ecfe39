import Foundation
#if canImport(Darwin)
import Darwin
#endif

/// This process's resident memory, as the operating system counts it: on Linux `VmRSS` and
/// `VmHWM` of /proc/self/status, on macOS `task_info(MACH_TASK_BASIC_INFO)`. Each call reads
/// afresh (cheap enough to call once per training step); `nil` when the system does not say.
public enum ProcessMemory {
    /// Bytes resident now.
    public static func residentBytes() -> Int? {
        #if os(Linux)
        return procStatusBytes(field: "VmRSS")
        #elseif canImport(Darwin)
        return machBasicInfo().map { Int($0.resident_size) }
        #else
        return nil
        #endif
    }

    /// The most bytes resident at once since the process started (its high-water mark).
    public static func peakResidentBytes() -> Int? {
        #if os(Linux)
        return procStatusBytes(field: "VmHWM")
        #elseif canImport(Darwin)
        return machBasicInfo().map { Int($0.resident_size_max) }
        #else
        return nil
        #endif
    }

    /// A byte count for people: "512 KiB", "87.3 MiB", "1.25 GiB".
    /// Resets the peak to the current RSS (Linux ≥ 4.0: writes "5" to /proc/self/clear_refs), so that
    /// `peakResidentBytes` measures a phase. Returns false where that is not possible.
    @discardableResult
    public static func resetPeak() -> Bool {
        #if os(Linux)
        guard let h = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return false }
        defer { try? h.close() }
        do { try h.write(contentsOf: Data("5".utf8)) } catch { return false }
        return true
        #else
        return false
        #endif
    }

    public static func format(bytes: Int) -> String {
        let b = Double(bytes)
        if b >= 1_073_741_824 { return String(format: "%.2f GiB", b / 1_073_741_824) }
        if b >= 1_048_576 { return String(format: "%.1f MiB", b / 1_048_576) }
        if b >= 1024 { return String(format: "%.0f KiB", b / 1024) }
        return "\(bytes) B"
    }

    #if os(Linux)
    /// A `Name:   1234 kB` line of /proc/self/status, in bytes.
    static func procStatusBytes(field: String) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        return parseStatus(text, field: field)
    }
    #endif

    /// The value of `field` in /proc/<pid>/status text, in bytes (the kernel writes kB = KiB).
    static func parseStatus(_ text: String, field: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
            let parts = line.dropFirst(field.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let first = parts.first, let value = Int(first) else { return nil }
            let unit = parts.count > 1 ? parts[1].lowercased() : "b"
            switch unit {
            case "kb": return value * 1024
            case "mb": return value * 1_048_576
            case "b": return value
            default: return nil
            }
        }
        return nil
    }

    #if canImport(Darwin)
    static func machBasicInfo() -> mach_task_basic_info? {
        var info = mach_task_basic_info()
        var count = mach_msg_type_number_t(MemoryLayout<mach_task_basic_info>.size / MemoryLayout<natural_t>.size)
        let status = withUnsafeMutablePointer(to: &info) {
            $0.withMemoryRebound(to: integer_t.self, capacity: Int(count)) {
                task_info(mach_task_self_, task_flavor_t(MACH_TASK_BASIC_INFO), $0, &count)
            }
        }
        return status == KERN_SUCCESS ? info : nil
    }
    #endif
}
