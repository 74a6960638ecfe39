// swift-tools-version: 6.0
// swift-qlora: QLoRA fine-tuning of LLaMA-family models on CPUs, in Swift.
import PackageDescription

// Release builds of the numeric modules: the CPU's own vector ISA (SIMD types are SSE2-only
// otherwise) and cross-module specialization. See shared SWIFT-PERFORMANCE.md §3 and §7.
let fast: [SwiftSetting] = [
    .unsafeFlags(["-Ounchecked", "-enforce-exclusivity=unchecked", "-target-cpu", "native",
                  "-cross-module-optimization"], .when(configuration: .release)),
]
let v5: SwiftSetting = .swiftLanguageMode(.v5)

let package = Package(
    name: "swift-qlora",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "qlora", targets: ["qlora"]),
        .library(name: "QLoRA", targets: ["QLoRA"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
    ],
    targets: [
        // MARK: - Implementation details
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .target(name: "_CKernels", cSettings: [.unsafeFlags(["-O3"])]),

        // MARK: - Library modules, in data-flow order
        .target(name: "Kernels",
                dependencies: ["_CKernels", .target(name: "CBLAS", condition: .when(platforms: [.linux]))],
                swiftSettings: fast + [v5],
                linkerSettings: [.linkedFramework("Accelerate", .when(platforms: [.macOS]))]),
        .target(name: "ModelFormats", swiftSettings: fast + [v5]),
        .target(name: "BPE", swiftSettings: fast + [v5]),
        .target(name: "Templates", swiftSettings: [v5]),
        .target(name: "Quantization", dependencies: ["Kernels", "_CKernels", "ModelFormats"], swiftSettings: fast + [v5]),
        .target(name: "Llama", dependencies: ["Kernels", "ModelFormats", "Quantization"], swiftSettings: fast + [v5]),
        .target(name: "QLoRA", dependencies: ["Kernels", "ModelFormats", "Quantization", "BPE", "Templates", "Llama"],
                swiftSettings: fast + [v5]),

        // MARK: - Public API: the command-line tool
        .executableTarget(name: "qlora",
                          dependencies: ["QLoRA", "Llama", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                         .product(name: "Yams", package: "Yams")],
                          swiftSettings: [v5]),
        .executableTarget(name: "nf4-bench", dependencies: ["Quantization", "Kernels"], path: "Benchmarks/nf4-bench", swiftSettings: fast + [v5]),
        .executableTarget(name: "attention-bench", dependencies: ["Kernels"], path: "Benchmarks/attention-bench", swiftSettings: fast + [v5]),
        .executableTarget(name: "nf4-gemm", dependencies: ["Quantization", "Kernels"], path: "Benchmarks/nf4-gemm", swiftSettings: fast + [v5]),
        .executableTarget(name: "train-step", dependencies: ["Llama", "ModelFormats", "Kernels", "Quantization"], path: "Benchmarks/train-step", swiftSettings: fast + [v5]),

        // MARK: - Tests
        .target(name: "_TestSupport", path: "Tests/_TestSupport", swiftSettings: [v5]),
        .testTarget(name: "KernelsTests", dependencies: ["_TestSupport", "Kernels"], swiftSettings: [v5]),
        .testTarget(name: "QuantizationTests", dependencies: ["_TestSupport", "Quantization", "ModelFormats"], swiftSettings: [v5]),
        .testTarget(name: "ModelFormatsTests", dependencies: ["_TestSupport", "ModelFormats"], swiftSettings: [v5]),
        .testTarget(name: "BPETests", dependencies: ["_TestSupport", "BPE", "QLoRA"], swiftSettings: [v5]),
        .testTarget(name: "TemplatesTests", dependencies: ["_TestSupport", "Templates"], swiftSettings: [v5]),
        .testTarget(name: "LlamaTests", dependencies: ["_TestSupport", "Llama", "QLoRA"], swiftSettings: [v5]),
        .testTarget(name: "QLoRATests", dependencies: ["_TestSupport", "QLoRA"], swiftSettings: [v5]),
    ]
)
