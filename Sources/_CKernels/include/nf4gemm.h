// Matrix products with a frozen 4-bit weight W [n, k] (layout: nf4.h) whose B panels are decoded
// straight from the packed codes: no dequantized copy of W. BLIS-style: B is packed KC × 16 panels
// at a time into caller scratch, the micro-kernel (6 × 16, 12 ymm accumulators, A broadcast from
// the row-major input) runs over MC-row blocks of A. Never allocates, never prints, creates no
// threads: the caller runs thread t of `threads` (0 ≤ t < threads) with its own `pack` buffer of
// qlora_nf4_gemm_pack_floats() floats; the threads write disjoint output columns.
// Any m ≥ 1, n, k ≥ 1 and any blocksize/row alignment; the AVX2 decoder is used when k % 8 == 0
// (scalar decoding otherwise; the micro-kernel is the same). Outputs come first (llm.c order).
#ifndef QLORA_NF4GEMM_H
#define QLORA_NF4GEMM_H
#include <stdint.h>
#include "nf4.h"

/// Floats each thread's `pack` buffer must hold (constant; 320 KiB).
int64_t qlora_nf4_gemm_pack_floats(void);

/// Forces the portable bodies (force != 0) or restores run-time choice (AVX2 when the CPU has it).
void qlora_nf4_gemm_force_portable(int force);

/// out[m, n] (+)= inp[m, k] · Wᵀ, W [n, k]; overwrites out unless `accumulate`.
/// Thread t computes output columns [16·P·t/T, 16·P·(t+1)/T) ∩ [0, n), P = ceil(n / 16).
void qlora_nf4_gemm_forward(float *out, const float *inp, const qlora_nf4_weight *w, int64_t m, int64_t n,
                            int64_t k, int accumulate, float *pack, int thread, int threads);

/// d_inp[m, k] (+)= d_out[m, n] · W, W [n, k]; overwrites d_inp unless `accumulate`.
/// Thread t computes output columns [16·P·t/T, 16·P·(t+1)/T) ∩ [0, k), P = ceil(k / 16).
void qlora_nf4_gemm_backward_input(float *d_inp, const float *d_out, const qlora_nf4_weight *w, int64_t m,
                                   int64_t n, int64_t k, int accumulate, float *pack, int thread, int threads);

#endif
