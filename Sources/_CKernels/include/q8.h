// ggml Q8_0 weights: dequantization into a caller buffer and the fused matrix-vector product used
// for the LM head when decoding. Never allocates, never prints. Sizes are int64_t; outputs first.
//
// Layout (ggml block_q8_0, SPEC §8.7): a [rows, cols] matrix, cols % 32 == 0, is rows · cols/32
// blocks of 34 bytes, row-major: a little-endian fp16 scale d, then 32 int8 q. Value = q · d, exact
// in float32 (an 8-bit times an 11-bit significand).
#ifndef QLORA_Q8_H
#define QLORA_Q8_H
#include <stdint.h>

/// Bytes of one Q8_0 block (32 values).
#define QLORA_Q8_BLOCK_BYTES 34

/// Forces the portable bodies of the qlora_q8_* kernels (force != 0) or restores run-time choice.
void qlora_q8_force_portable(int force);

/// out[(r − row_begin)·cols + c] = W[r, c] for row_begin ≤ r < row_end (exact float32 values).
void qlora_q8_dequantize(float *out, const uint8_t *blocks, int64_t row_begin, int64_t row_end, int64_t cols);

/// y[r − row_begin] = Σ_c W[r, c] · x[c] for row_begin ≤ r < row_end; cols % 32 == 0.
/// Dequantizes in registers; each block's scale multiplies that block's partial dot product.
void qlora_q8_gemv(float *y, const uint8_t *blocks, const float *x, int64_t row_begin, int64_t row_end,
                   int64_t cols);

/// The int16 decode product (`qlora_q8_gemv16`): x quantized per 32-element block to int16 in
/// [−32767, 32767] (scale = block max |x| / 32767), in element order; the 32 int8 × int16 products of a
/// block are summed exactly in int32, then scaled by d · x's scale in float32. Relative error ~2e-5
/// (x's 16 bits; the weights are exact). A non-finite x gives a non-finite scale.
void qlora_q8_quantize_input16(int16_t *xq, float *xscale, const float *x, int64_t cols);

/// y[r − row_begin] ≈ Σ_c W[r, c] · x[c] from x quantized by `qlora_q8_quantize_input16`; cols % 32 == 0.
void qlora_q8_gemv16(float *y, const uint8_t *blocks, const int16_t *xq, const float *xscale, int64_t row_begin,
                     int64_t row_end, int64_t cols);

#endif
