// The umbrella module: everything a tool built on swift-qlora needs, through one import.
@_exported import Kernels
@_exported import ModelFormats
@_exported import Quantization
@_exported import BPE
@_exported import Templates
@_exported import Llama
