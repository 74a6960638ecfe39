#!/usr/bin/env python3
"""Builds the Quantization test fixtures in Tests/Fixtures/nf4/ (run with /opt/peers/venv/bin/python).

Every file is the output of bitsandbytes (0.50.2, CPU backend) `quantize_4bit` / `dequantize_4bit` on a seeded
input. One safetensors file per case, tensors:
  input             the input, in its own dtype (F32 / BF16 / F16), shape [out, in]
  packed            U8 [(n+1)//2]      packed 4-bit codes (first element in the high nibble)
  absmax            F32 [nb] (no DQ) or U8 [nb] (DQ: 8-bit codes)
  quant_map         F32 [16]
  nested_absmax     F32 [ceil(nb/256)]  (DQ only)
  nested_quant_map  F32 [256]           (DQ only)
  offset            F32 [1]             (DQ only)
  absmax_restored   F32 [nb]            (DQ only) dequantize_blockwise(absmax codes) + offset
  dequantized       [out, in] in the input dtype: dequantize_4bit(packed, state)
metadata: quant_type, blocksize, dtype, double_quant ("1"/"0").

Before writing, the script checks two facts the Swift code relies on and aborts if they fail:
  * torch.mean of a float32 vector on this CPU equals our emulation of ATen's cascade sum (8-lane AVX2
    vectors, 4-way ILP, 4 levels) followed by a float32 division by n;
  * the bnb C++ 8-bit blockwise quantizer equals a 65536-entry LUT indexed by
    uint16(fma((v + 1) * 0.5, 65535, 0.5)) (single rounding).
"""
import os
import sys

import numpy as np
import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F
from safetensors.torch import save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "Tests", "Fixtures", "nf4")
os.makedirs(OUT, exist_ok=True)
assert bnb.__version__ == "0.50.2", bnb.__version__

f32 = np.float32


# ---------------------------------------------------------------- torch.mean emulation (ATen SumKernel.cpp)
def ceil_log2(x):
    return 0 if x <= 1 else int(np.ceil(np.log2(x)))


def multi_row_sum(rows):
    """rows: array [size, 4, 8] float32 → [4, 8] partial sums, ATen's 4-level cascade."""
    size = rows.shape[0]
    num_levels = 4
    level_power = max(4, ceil_log2(size) // num_levels)
    level_step = 1 << level_power
    level_mask = level_step - 1
    acc = np.zeros((num_levels,) + rows.shape[1:], dtype=f32)
    i = 0
    while i + level_step <= size:
        for _ in range(level_step):
            acc[0] = acc[0] + rows[i]
            i += 1
        for j in range(1, num_levels):
            acc[j] = acc[j] + acc[j - 1]
            acc[j - 1] = 0
            if (i & (level_mask << (j * level_power))) != 0:
                break
    while i < size:
        acc[0] = acc[0] + rows[i]
        i += 1
    for j in range(1, num_levels):
        acc[0] = acc[0] + acc[j]
    return acc[0]


def emulated_mean(x):
    x = np.asarray(x, dtype=f32)
    n = x.size
    lanes = 8
    vec_size = n // lanes
    total = f32(0)
    if vec_size > 0 and n >= lanes:
        vecs = x[: vec_size * lanes].reshape(vec_size, lanes)
        size_ilp = vec_size // 4
        partial = multi_row_sum(vecs[: size_ilp * 4].reshape(size_ilp, 4, lanes)) if size_ilp > 0 \
            else np.zeros((4, lanes), dtype=f32)
        for i in range(size_ilp * 4, vec_size):
            partial[0] = partial[0] + vecs[i]
        for k in range(1, 4):
            partial[0] = partial[0] + partial[k]
        for k in range(vec_size * lanes, n):
            total = f32(total + x[k])
        for k in range(lanes):
            total = f32(total + partial[0][k])
    else:
        for k in range(n):
            total = f32(total + x[k])
    return f32(total / f32(n))


def check_mean():
    rng = np.random.default_rng(7)
    sizes = list(range(1, 300)) + [511, 1000, 1728, 4096, 5184, 13824, 20000, 32768]
    for n in sizes:
        x = (rng.random(n, dtype=np.float32) * 3).astype(f32)
        got = emulated_mean(x)
        want = torch.from_numpy(x).mean().item()
        if np.float32(want) != got:
            sys.exit(f"torch.mean emulation differs at n={n}: {want!r} vs {got!r}")
    print("torch.mean emulation: OK for", len(sizes), "sizes up to", max(sizes))


# ---------------------------------------------------------------- bnb C++ 8-bit LUT quantizer emulation
def lut_8bit(code):
    code = np.asarray(code, dtype=f32)
    mid = (f32(0.5) * (code[:-1] + code[1:])).astype(f32)
    vals = (f32(-1) + (f32(2) * np.arange(65536, dtype=f32)) / f32(65535)).astype(f32)
    return np.searchsorted(mid, vals, side="left").astype(np.uint8)  # number of midpoints < val


def lut_index(v):
    v = np.clip(v.astype(f32), f32(-1), f32(1))
    t = ((v + f32(1)) * f32(0.5)).astype(f32)
    return (t.astype(np.float64) * 65535.0 + 0.5).astype(f32).astype(np.uint16)  # fma: one rounding


def check_8bit():
    code = F.create_dynamic_map(signed=True).float()
    lut = lut_8bit(code.numpy())
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(1 << 20) * np.exp(rng.standard_normal(1 << 20) * 3)).astype(f32)
    x[::97] = 0
    q, st = F.quantize_blockwise(torch.from_numpy(x), code=code, blocksize=256)
    am = st.absmax.numpy()
    xs = x.reshape(-1, 256)
    inv = (f32(1) / am).astype(f32)
    idx = lut_index((xs * inv[:, None]).astype(f32))
    mine = lut[idx].reshape(-1)
    if not np.array_equal(mine, q.numpy()):
        sys.exit(f"8-bit LUT emulation differs in {(mine != q.numpy()).sum()} of {x.size}")
    print("8-bit LUT emulation: OK on", x.size, "values")


# ---------------------------------------------------------------- fixtures
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def make_input(seed, shape, dtype, zero_blocks=(), outliers=(), blocksize=64, exact_ties=False):
    rng = np.random.default_rng(seed)
    n = shape[0] * shape[1]
    x = rng.standard_normal(n).astype(f32) * f32(0.05)
    for b in zero_blocks:
        x[b * blocksize:(b + 1) * blocksize] = 0
    for i in outliers:
        x[i] = f32(3.5) if i % 2 else f32(-4.25)
    if exact_ties:
        # block 1 has absmax exactly 1.0, so x̂ = x: put every NF4/FP4 midpoint and its float neighbours in it.
        nf4 = F.get_4bit_type("nf4", device="cpu").numpy()
        fp4 = np.sort(F.get_4bit_type("fp4", device="cpu").numpy())
        mids = np.concatenate([(nf4[:-1] + nf4[1:]) / f32(2), (fp4[:-1] + fp4[1:]) / f32(2)]).astype(f32)
        vals = np.concatenate([mids, np.nextafter(mids, f32(2)), np.nextafter(mids, f32(-2))]).astype(f32)
        base = blocksize
        x[base:base + blocksize] = 0
        x[base] = 1.0
        take = vals[: blocksize - 1]
        x[base + 1: base + 1 + take.size] = take
    t = torch.from_numpy(x.reshape(shape)).to(TORCH_DTYPES[dtype])
    return t


def write_case(name, t, quant_type, blocksize, dq):
    packed, st = F.quantize_4bit(t, blocksize=blocksize, compress_statistics=dq, quant_type=quant_type)
    deq = F.dequantize_4bit(packed, st)
    tensors = {
        "input": t.contiguous(),
        "packed": packed.reshape(-1).contiguous(),
        "absmax": st.absmax.contiguous(),
        "quant_map": st.code.float().contiguous(),
        "dequantized": deq.contiguous(),
    }
    if dq:
        tensors["nested_absmax"] = st.state2.absmax.contiguous()
        tensors["nested_quant_map"] = st.state2.code.float().contiguous()
        tensors["offset"] = st.offset.reshape(1).float().contiguous()
        restored = F.dequantize_blockwise(st.absmax, st.state2) + st.offset
        tensors["absmax_restored"] = restored.float().contiguous()
        # our assumptions, checked here too
        assert emulated_mean(F.quantize_4bit(t, blocksize=blocksize, compress_statistics=False,
                                             quant_type=quant_type)[1].absmax.numpy()) == st.offset.item()
    meta = {"quant_type": quant_type, "blocksize": str(blocksize), "dtype": str(t.dtype).replace("torch.", ""),
            "double_quant": "1" if dq else "0"}
    path = os.path.join(OUT, name + ".safetensors")
    save_file(tensors, path, metadata=meta)
    print(f"{name}: shape {list(t.shape)}, nb {st.absmax.numel()}, {os.path.getsize(path)} bytes")


def main():
    check_mean()
    check_8bit()
    # NF4, f32, odd count, an all-zero block, outliers, exact midpoint ties; no DQ
    write_case("nf4_f32_odd", make_input(1, (7, 75), "float32", zero_blocks=[3], outliers=[5, 200, 333],
                                          exact_ties=True), "nf4", 64, False)
    # NF4, bf16, DQ, 329 blocks (2 nested blocks), rows not a multiple of 64
    write_case("nf4_bf16_dq", make_input(2, (300, 70), "bfloat16", zero_blocks=[10], outliers=[17, 9000]),
               "nf4", 64, True)
    # NF4, f32, DQ, blocksize 128, 4 nested blocks, odd count
    write_case("nf4_f32_dq_bs128", make_input(3, (129, 257), "float32", zero_blocks=[0, 200],
                                              outliers=[1000, 30001], blocksize=128), "nf4", 128, True)
    # NF4, f16, DQ, blocksize 32
    write_case("nf4_f16_dq_bs32", make_input(4, (100, 90), "float16", zero_blocks=[5], blocksize=32),
               "nf4", 32, True)
    # FP4, f32, odd count, zero block, ties; no DQ
    write_case("fp4_f32_odd", make_input(5, (7, 75), "float32", zero_blocks=[3], outliers=[5, 200, 333],
                                          exact_ties=True), "fp4", 64, False)
    # FP4, bf16, DQ, odd count, 265 blocks
    write_case("fp4_bf16_dq", make_input(6, (131, 129), "bfloat16", zero_blocks=[2], outliers=[77]),
               "fp4", 64, True)
    # FP4, f32, blocksize 256, no DQ
    write_case("fp4_f32_bs256", make_input(7, (40, 100), "float32", blocksize=256), "fp4", 256, False)
    # DQ where every block has the same absmax: nested absmax is 0
    const = torch.tensor(np.tile(np.linspace(-0.5, 0.5, 64, dtype=f32), 8).reshape(8, 64))
    write_case("nf4_f32_dq_const", const, "nf4", 64, True)


if __name__ == "__main__":
    main()
