// Attention kernels: decode over a KV cache (one new token) and the training forward/backward of one
// (row, kv head) item with its g query heads stacked. Never allocate, never print. Sizes are int64_t.
// Outputs first, then inputs, then sizes (llm.c order). Row-major; a "row" of q/out/dq is one token
// (q_stride floats apart, the g heads of the item D floats apart), of k/v/dk/dv one position
// (kv_stride floats apart).
#ifndef QLORA_ATTENTION_H
#define QLORA_ATTENTION_H
#include <stdint.h>

/// Forces the portable bodies of the attention kernels (force != 0) or restores run-time selection.
void qlora_attention_force_portable(int force);

/// 1 when the AVX2 training kernels below may run (AVX2+FMA present, not forced portable).
int qlora_attention_use_avx2(void);

/// Decode: g query heads q[g·D] (contiguous) attend to the n cache positions keys/values[n, kv_stride]
/// (pointers at the first visible position, already offset to the kv head): out[g·D] = Σ_s softmax_s(scale·q·k_s)·v_s.
/// Online softmax over blocks of 64 positions, each cache row read once for the g heads. n ≥ 1, D ≤ 256.
void qlora_attention_decode(float *out, const float *q, const float *keys, const float *values, int64_t n,
                            int64_t g, int64_t D, int64_t kv_stride, float scale);

/// Floats of scratch one call of the training kernels needs with g heads and blocks of `block_rows`
/// tokens over T tokens (forward: backward = 0; backward: 1).
int64_t qlora_attention_train_scratch(int64_t T, int64_t g, int64_t D, int64_t block_rows, int backward);

/// Training forward (AVX2 only: call when qlora_attention_use_avx2() and D % 16 == 0, D ≤ 256) for the
/// query tokens [t0, t1) of one row, in blocks of block_rows tokens: out[t, h·D ..] = Σ_s P[t,s]·v[s]
/// with P = masked softmax(scale·q_h[t]·k[s]), keys seg[t] ≤ s ≤ t (seg NULL: 0 ≤ s ≤ t).
/// q, out point at the item's first head (head h at +h·D); k, v at its kv head. Overwrites out.
void qlora_attention_train_forward(float *out, const float *q, const float *k, const float *v,
                                   const int64_t *seg, float *scratch, int64_t t0, int64_t t1,
                                   int64_t block_rows, int64_t g, int64_t D, int64_t q_stride,
                                   int64_t kv_stride, float scale);

/// Training backward of the above for all T query tokens of one item (AVX2 only, same conditions),
/// recomputing P: dq += scale·dS·k, dk += scale·dSᵀ·q, dv += Pᵀ·dout with
/// dS = P ⊙ (dP − rowsum(P ⊙ dP)), dP = dout·vᵀ. Accumulates into dq (q's layout) and dk, dv (k's).
void qlora_attention_train_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                    const float *k, const float *v, const int64_t *seg, float *scratch,
                                    int64_t T, int64_t block_rows, int64_t g, int64_t D, int64_t q_stride,
                                    int64_t kv_stride, float scale);

#endif
