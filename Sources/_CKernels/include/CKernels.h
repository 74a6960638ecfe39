// The C surface of swift-qlora: hot loops over float/uint8 buffers that need intrinsics
// or vector exp. Never allocates, never prints. Row-major buffers; sizes are int64_t.
// Each kernel has an AVX2+FMA body and a portable body; the public entry point picks one at
// run time with qlora_cpu_has_avx2(). Outputs come first, then inputs, then sizes (llm.c order).
#ifndef QLORA_CKERNELS_H
#define QLORA_CKERNELS_H
#include <stdint.h>
#include <stddef.h>
#include "nf4.h"   // 4-bit (NF4/FP4/Int4) dequantization and GEMV
#include "nf4gemm.h"   // GEMM with 4-bit weights decoded into the packed B panels

/// 1 when the CPU has AVX2+FMA+F16C (checked once at run time).
int qlora_cpu_has_avx2(void);

/// Forces the portable bodies (force != 0) or restores run-time selection (0). For tests.
void qlora_force_portable(int force);

/// out[r, :] = weight ⊙ (inp[r, :] · 1/sqrt(mean(inp[r, :]²) + eps)) for r < rows. out may alias inp.
void qlora_rmsnorm_forward(float *out, const float *inp, const float *weight, int64_t rows, int64_t dim, float eps);

/// In place softmax of one row of n values (n ≥ 1).
void qlora_softmax_forward(float *x, int64_t n);

/// out[i] = silu(gate[i]) · up[i], silu(z) = z / (1 + exp(−z)). out may alias gate or up.
void qlora_silu_mul_forward(float *out, const float *gate, const float *up, int64_t n);

/// In place rotate_half RoPE (Hugging Face convention) on x[tokens, heads, head_dim] whose token rows are
/// `row_stride` floats apart. cos/sin are [tokens, head_dim/2] tables for those tokens' positions:
/// x[i] ← x[i]·c − x[i+h]·s,  x[i+h] ← x[i+h]·c + x[i]·s  (h = head_dim/2, i < h).
void qlora_rope_forward(float *x, const float *cos, const float *sin, int64_t tokens, int64_t heads,
                        int64_t head_dim, int64_t row_stride);

/// out[i] = a[i] + b[i]. out may alias a or b.
void qlora_add_forward(float *out, const float *a, const float *b, int64_t n);

/// out[i] = exp(x[i]) with the vector polynomial of the AVX2 path (expf in the portable path). For tests.
void qlora_exp(float *out, const float *x, int64_t n);

/// y[r] = W[r, :] · x (+ bias[r]) for r < rows; W is [rows, cols] row-major (ld = cols). bias may be NULL.
void qlora_gemv_forward(float *y, const float *w, const float *x, const float *bias, int64_t rows, int64_t cols);

/// Cross-entropy of one row of n logits x against `target` (0 ≤ target < n), forward and backward in
/// one pass, IN PLACE: returns the loss logsumexp(x) − x[target] (max-subtracted, sum in double) and
/// leaves x = scale · (softmax(x) − onehot(target)).
double qlora_cross_entropy_row(float *x, int64_t n, int64_t target, float scale);

#endif
