// 4-bit blockwise weights (bitsandbytes NF4 / FP4 layout, optionally double-quantized absmax):
// dequantization into a caller buffer and the fused matrix-vector product used for decoding.
// Never allocates, never prints. Sizes are int64_t; outputs come first (llm.c order).
//
// Layout (SPEC §1.3, §2): the weight [rows, cols] is flattened row-major; element i has the 4-bit
// code in byte i/2, HIGH nibble for even i; block b = elements [b·blocksize, (b+1)·blocksize)
// (blocks ignore row boundaries). Block scale: absmax[b], or with double quantization
// nested_map[qabsmax[b]] · nested_absmax[b / nested_blocksize] + offset (two float32 roundings,
// as bitsandbytes). Value = code[nibble] · scale (float32).
#ifndef QLORA_NF4_H
#define QLORA_NF4_H
#include <stdint.h>

typedef struct {
    const uint8_t *packed;          // (n + 1) / 2 bytes
    const float *absmax;            // nb float32 scales, or NULL when double-quantized
    const uint8_t *qabsmax;         // nb 8-bit codes (double quantization), else NULL
    const float *nested_absmax;     // ceil(nb / nested_blocksize) (double quantization)
    const float *nested_map;        // 256-entry dynamic map (double quantization)
    const float *code;              // 16-entry table indexed by the 4-bit code
    float offset;                   // double quantization offset
    int64_t blocksize;              // 32 … 4096, a power of two
    int64_t nested_blocksize;       // 256
} qlora_nf4_weight;

/// Forces the portable bodies of the qlora_nf4_* kernels (force != 0) or restores run-time choice.
void qlora_nf4_force_portable(int force);

/// out[k] = scale of block block_begin + k, for block_begin ≤ b < block_end (bitsandbytes-exact).
void qlora_nf4_block_scales(float *out, const qlora_nf4_weight *w, int64_t block_begin, int64_t block_end);

/// Quantization (bitsandbytes' CPU `quantize_4bit`, SPEC §1.3) of blocks [block_begin, block_end) of
/// x[n]: absmax[b] = max |x| over block b; x̂ = x · (1/max(absmax, 1e−38)) for full blocks and
/// x / max(absmax, 1e−38) for a final partial one, clamped to [−1, 1]; sorted position q = number of
/// `midpoints` (15, ascending) strictly below x̂; code = order[q]; the element after a final odd one
/// is `zero_code`. Writes packed bytes [block_begin·blocksize/2, …) and absmax[block_begin …). The
/// blocksize must be even. A block with a NaN or infinite value is done element by element.
void qlora_nf4_quantize_blocks(uint8_t *packed, float *absmax, const float *x, int64_t n, int64_t blocksize,
                               int64_t block_begin, int64_t block_end, const float midpoints[15],
                               const uint8_t order[16], uint8_t zero_code);

/// out[k] = value of flat element start + k, k < count (bitsandbytes-exact float32).
/// For a tile of rows r0..<r1 of a [rows, cols] weight: start = r0·cols, count = (r1 − r0)·cols.
void qlora_nf4_dequantize(float *out, const qlora_nf4_weight *w, int64_t start, int64_t count);

/// y[r − row_begin] = Σ_c W[r, c] · x[c] for row_begin ≤ r < row_end; W is [·, cols].
/// Dequantizes in registers; the block scale multiplies each block's partial dot product.
/// AVX2: byte-plane (vpshufb) decoding when cols % 64 == 0, blocksize % 64 == 0, cols % blocksize
/// == 0 and cols ≤ 8192; else the vpermps body when cols % blocksize == 0; else the portable one.
void qlora_nf4_gemv(float *y, const qlora_nf4_weight *w, const float *x, int64_t row_begin, int64_t row_end,
                    int64_t cols);

/// Decoding with 16-bit integer products (`qlora_nf4_gemv16`): x is quantized per 64-element chunk to
/// int16 in [−8191, 8191] (scale = chunk max |x| / 8191), the 16 codes to int16 in [−32767, 32767]
/// (scale = max |code| / 32767); each chunk's 64 products are summed exactly in int32 (≤ 8 products per
/// 32-bit lane: 8 · 32767 · 8191 < 2³¹), then scaled in float32. Relative error ~1e-4 (x's 14 bits),
/// 10× below bfloat16 compute. Requires cols % 64 == 0 and blocksize % 64 == 0.
int qlora_nf4_gemv16_supported(const qlora_nf4_weight *w, int64_t cols);

/// xq[cols] and xscale[cols / 64] for `qlora_nf4_gemv16`; xq is stored in the kernel's element order.
/// A non-finite x gives a non-finite scale (so a non-finite output, as the float path would).
void qlora_nf4_quantize_input16(int16_t *xq, float *xscale, const float *x, int64_t cols);

/// y[r − row_begin] ≈ Σ_c W[r, c] · x[c] from x quantized by `qlora_nf4_quantize_input16`.
void qlora_nf4_gemv16(float *y, const qlora_nf4_weight *w, const int16_t *xq, const float *xscale,
                      int64_t row_begin, int64_t row_end, int64_t cols);

#endif
