#!/usr/bin/env python3
"""Builds the ModelFormats test fixtures in Tests/Fixtures/formats/ (run with /opt/peers/venv/bin/python).

quants.gguf                 one tensor per ggml type F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K,
                            written by gguf-py. Non-K types are quantized by gguf.quants.quantize from seeded random
                            data; gguf-py cannot quantize K types, so those hold seeded random (valid) blocks.
quants_expected.safetensors the same names as F32: gguf.quants.dequantize of each tensor's stored bytes.
tiny_c5.gguf                SPEC Appendix C.5 (its SHA-256 is checked here).
smollm2_expected.safetensors first 64 values (gguf-py dequantization) of a few tensors of the real SmolLM2 GGUF.
reference.safetensors       written by Python safetensors (numpy) for the writer byte-identity test.
"""
import hashlib
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T, GGUFWriter, GGUFReader
from safetensors.numpy import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "formats")
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(20261127)


def random_k_blocks(qtype, n_blocks):
    """Random but valid K-quant blocks: random bytes, with finite, moderate fp16 scales."""
    blk, size = gguf.GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    def halves(lo, hi):
        return rng.uniform(lo, hi, size=(n_blocks, 1)).astype(np.float16).view(np.uint8)
    if qtype in (T.Q4_K, T.Q5_K):
        b[:, 0:2] = halves(1e-4, 0.05)   # d
        b[:, 2:4] = halves(1e-4, 0.05)   # dmin
    elif qtype == T.Q6_K:
        b[:, 208:210] = halves(-0.02, 0.02)  # d (signed)
    return b


def quants():
    w = GGUFWriter(os.path.join(OUT, "quants.gguf"), arch="llama")
    expected = {}
    rows, cols = 3, 512
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    x[0, :8] = [0.0, -0.0, 1.0, -2.5, 65504.0, 6.0e-8, -3.0e-5, 1e-3]  # exact, max, subnormal halves
    for name, qt in [("f32", T.F32), ("f16", T.F16), ("bf16", T.BF16), ("q4_0", T.Q4_0), ("q4_1", T.Q4_1),
                     ("q5_0", T.Q5_0), ("q5_1", T.Q5_1), ("q8_0", T.Q8_0)]:
        data = x.copy()
        if qt == T.Q8_0:
            data[1, :32] = 0.0  # an all-zero block (d = 0)
        q = gguf.quants.quantize(data, qt)
        w.add_tensor(name, q, raw_dtype=qt)
        expected[name] = gguf.quants.dequantize(q, qt).astype(np.float32).reshape(rows, cols)
    for name, qt in [("q4_k", T.Q4_K), ("q5_k", T.Q5_K), ("q6_k", T.Q6_K)]:
        blk, size = gguf.GGML_QUANT_SIZES[qt]
        q = random_k_blocks(qt, rows * cols // blk).reshape(rows, cols // blk * size)
        w.add_tensor(name, q, raw_dtype=qt)
        expected[name] = gguf.quants.dequantize(q, qt).astype(np.float32).reshape(rows, cols)
    # A 3-D F32 tensor to check shape reversal.
    cube = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4) / 4
    w.add_tensor("cube", cube)
    expected["cube"] = cube
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    save_file(expected, os.path.join(OUT, "quants_expected.safetensors"))
    # Check that gguf-py reads our file back to the same values.
    r = GGUFReader(os.path.join(OUT, "quants.gguf"))
    for t in r.tensors:
        got = gguf.quants.dequantize(t.data, t.tensor_type).reshape(expected[t.name].shape)
        assert np.array_equal(got.view(np.uint32), expected[t.name].view(np.uint32)), t.name


def tiny_c5():
    path = os.path.join(OUT, "tiny_c5.gguf")
    w = GGUFWriter(path, arch="llama")
    w.add_uint32("llama.block_count", 1)
    w.add_uint32("llama.embedding_length", 32)
    w.add_float32("llama.rope.freq_base", 100000.0)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", ["a", "b"])
    w.add_bool("tokenizer.ggml.add_bos_token", False)
    x = ((np.arange(64, dtype=np.float32) - 32) / 8).reshape(2, 32)
    w.add_tensor("token_embd.weight", x)
    w.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(x, T.Q8_0), raw_dtype=T.Q8_0)
    w.add_tensor("blk.0.attn_k.weight", gguf.quants.quantize(x, T.Q4_0), raw_dtype=T.Q4_0)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert digest == "10b3ccbf9930eeb896fe936456ec93a0857c8a83a6a2a50b2c2eb54d1666b19b", digest


def smollm2():
    path = os.path.expanduser("~/.cache/swift-qlora/SmolLM2-135M-Instruct.Q4_1.gguf")
    r = GGUFReader(path)
    out = {}
    for t in r.tensors:
        if t.name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.0.ffn_down.weight", "output_norm.weight",
                      "blk.29.attn_v.weight"):
            v = gguf.quants.dequantize(t.data, t.tensor_type).reshape(-1)
            out[t.name] = np.ascontiguousarray(v[:64].astype(np.float32))
            # last 64 values too (checks row/offset arithmetic at the end of the tensor)
            out[t.name + ".tail"] = np.ascontiguousarray(v[-64:].astype(np.float32))
    save_file(out, os.path.join(OUT, "smollm2_expected.safetensors"))


def reference_safetensors():
    t = {
        "model.layers.0.weight": (np.arange(24, dtype=np.float32) * 0.25 - 3).reshape(4, 6),
        "bias": np.array([1.5, -2.0, 3.25], dtype=np.float16),
        "ids": np.array([[1, 2], [3, -4]], dtype=np.int64),
        "mask": np.array([1, 0, 255], dtype=np.uint8),
        "flag": np.array([True, False]),
        "scalar": np.array(7.5, dtype=np.float64),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "i32": np.array([-1, 2], dtype=np.int32),
        "zeta": np.array([9], dtype=np.int16),
        "é-unicode \"quoted\" back\\slash\ttab\u0001": np.array([0.5], dtype=np.float32),
    }
    save_file(t, os.path.join(OUT, "reference.safetensors"), metadata={"format": "pt"})
    # (The reference writer emits __metadata__ keys in HashMap order, so byte identity is only
    # defined for at most one metadata key.)


if __name__ == "__main__":
    quants()
    tiny_c5()
    smollm2()
    reference_safetensors()
    for f in sorted(os.listdir(OUT)):
        os.chmod(os.path.join(OUT, f), 0o644)
        print(f, os.path.getsize(os.path.join(OUT, f)))
