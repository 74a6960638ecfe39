// ggml Q8_0 dequantization and fused matrix-vector product. See q8.h.
#include <math.h>
#include <string.h>
#include "q8.h"
#include "CKernels.h"
#include "kernels_internal.h"
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QLORA_X86 1
#endif

static int q8_force_portable = 0;
void qlora_q8_force_portable(int force) { q8_force_portable = force; }
static inline int q8_use_avx2(void) { return !q8_force_portable && qlora_cpu_has_avx2(); }

// IEEE half → float, exact (normals, subnormals, inf, NaN).
static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    uint32_t bits;
    if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else {                                  // subnormal: normalize
        int e = -1;
        do { e++; man <<= 1; } while ((man & 0x400u) == 0);
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3FFu) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float block_scale(const uint8_t *b) {
    uint16_t h;
    memcpy(&h, b, 2);
    return half_to_float(h);
}

// ---------------------------------------------------------------------------------------------
// int16 decoding (qlora_q8_gemv16).

#define Q8_X_MAX 32767.0f

void qlora_q8_quantize_input16(int16_t *xq, float *xscale, const float *x, int64_t cols) {
    for (int64_t c = 0; c < cols; c += 32) {
        const float m = finite_absmax(x + c, 32);
        const float inv = m > 0.0f ? Q8_X_MAX / m : 0.0f;
        xscale[c / 32] = m >= 0.0f ? m / Q8_X_MAX : NAN;
        for (int j = 0; j < 32; j++) xq[c + j] = m >= 0.0f ? round_clamp16(x[c + j] * inv, 32767) : 0;
    }
}

static void gemv16_portable(float *y, const uint8_t *blocks, const int16_t *xq, const float *xscale,
                            int64_t row_begin, int64_t row_end, int64_t cols) {
    const int64_t bpr = cols / 32;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *b = blocks + r * bpr * QLORA_Q8_BLOCK_BYTES;
        float sum = 0.0f;
        for (int64_t k = 0; k < bpr; k++, b += QLORA_Q8_BLOCK_BYTES) {
            const int8_t *q = (const int8_t *)(b + 2);
            int32_t dot = 0;
            for (int j = 0; j < 32; j++) dot += (int32_t)q[j] * xq[k * 32 + j];
            sum += (float)dot * (block_scale(b) * xscale[k]);
        }
        y[r - row_begin] = sum;
    }
}

// ---------------------------------------------------------------------------------------------
// Portable bodies.

static void dequantize_portable(float *out, const uint8_t *blocks, int64_t row_begin, int64_t row_end, int64_t cols) {
    const int64_t bpr = cols / 32;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *b = blocks + r * bpr * QLORA_Q8_BLOCK_BYTES;
        float *o = out + (r - row_begin) * cols;
        for (int64_t k = 0; k < bpr; k++, b += QLORA_Q8_BLOCK_BYTES, o += 32) {
            const float d = block_scale(b);
            const int8_t *q = (const int8_t *)(b + 2);
            for (int j = 0; j < 32; j++) o[j] = (float)q[j] * d;
        }
    }
}

static void gemv_portable(float *y, const uint8_t *blocks, const float *x, int64_t row_begin, int64_t row_end,
                          int64_t cols) {
    const int64_t bpr = cols / 32;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *b = blocks + r * bpr * QLORA_Q8_BLOCK_BYTES;
        float sum = 0.0f;
        for (int64_t k = 0; k < bpr; k++, b += QLORA_Q8_BLOCK_BYTES) {
            const int8_t *q = (const int8_t *)(b + 2);
            const float *xb = x + k * 32;
            float part = 0.0f;
            for (int j = 0; j < 32; j++) part += (float)q[j] * xb[j];
            sum += part * block_scale(b);
        }
        y[r - row_begin] = sum;
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2 bodies: 8 int8 → 8 int32 (vpmovsxbd) → 8 float per step, 4 steps per block.

#ifdef QLORA_X86
#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

AVX2_TARGET static inline float scale_f16c(const uint8_t *b) {
    uint16_t h;
    memcpy(&h, b, 2);
    return _cvtsh_ss(h);
}

AVX2_TARGET static inline __m256 load8(const int8_t *q) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q)));
}

AVX2_TARGET static void dequantize_avx2(float *out, const uint8_t *blocks, int64_t row_begin, int64_t row_end,
                                        int64_t cols) {
    const int64_t bpr = cols / 32;
    const int64_t nb = (row_end - row_begin) * bpr;
    const uint8_t *b = blocks + row_begin * bpr * QLORA_Q8_BLOCK_BYTES;
    for (int64_t k = 0; k < nb; k++, b += QLORA_Q8_BLOCK_BYTES, out += 32) {
        const __m256 d = _mm256_set1_ps(scale_f16c(b));
        const int8_t *q = (const int8_t *)(b + 2);
        _mm256_storeu_ps(out, _mm256_mul_ps(load8(q), d));
        _mm256_storeu_ps(out + 8, _mm256_mul_ps(load8(q + 8), d));
        _mm256_storeu_ps(out + 16, _mm256_mul_ps(load8(q + 16), d));
        _mm256_storeu_ps(out + 24, _mm256_mul_ps(load8(q + 24), d));
    }
}

AVX2_TARGET static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// Fallback for rows longer than Q8_PERMUTED_MAX_COLS: R rows at once (R = 4 or 1), x shared.
AVX2_TARGET __attribute__((always_inline)) static inline void gemv_rows_avx2(
        float *y, const uint8_t *blocks, const float *x, int64_t r, int64_t bpr, int R) {
    const uint8_t *p[4];
    __m256 total[4];
    for (int k = 0; k < R; k++) {
        p[k] = blocks + (r + k) * bpr * QLORA_Q8_BLOCK_BYTES;
        total[k] = _mm256_setzero_ps();
    }
    for (int64_t bb = 0; bb < bpr; bb++) {
        const float *xb = x + bb * 32;
        const __m256 x0 = _mm256_loadu_ps(xb), x1 = _mm256_loadu_ps(xb + 8);
        const __m256 x2 = _mm256_loadu_ps(xb + 16), x3 = _mm256_loadu_ps(xb + 24);
        for (int k = 0; k < R; k++) {
            const uint8_t *b = p[k] + bb * QLORA_Q8_BLOCK_BYTES;
            const int8_t *q = (const int8_t *)(b + 2);
            __m256 a0 = _mm256_mul_ps(load8(q), x0);
            __m256 a1 = _mm256_mul_ps(load8(q + 8), x1);
            a0 = _mm256_fmadd_ps(load8(q + 16), x2, a0);
            a1 = _mm256_fmadd_ps(load8(q + 24), x3, a1);
            total[k] = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(scale_f16c(b)), total[k]);
        }
    }
    for (int k = 0; k < R; k++) y[k] = hsum(total[k]);
}

// The decode path (LM head): one row at a time, so the weights are read as ONE sequential stream.
// (Four interleaved row streams, as above, ran at half the speed once the matrix is out of cache:
// 5.5 vs 10–11 GB/s per core on Zen 3, 2026-11-27.) The 32 int8 of a block are sign-extended with
// 4 in-lane vpshufb (byte to the top of each dword) and an arithmetic shift, instead of 4
// lane-crossing vpmovsxbd; the lanes come out as q[4j..4j+3 | 16+4j..16+4j+3] for j = 0…3, so x is
// permuted once per call into the same order.
#define Q8_PERMUTED_MAX_COLS 8192

AVX2_TARGET static void permute_x32(float *xp, const float *x, int64_t cols) {
    for (int64_t c = 0; c < cols; c += 32)
        for (int j = 0; j < 4; j++) _mm256_storeu_ps(xp + c + 8 * j, _mm256_loadu2_m128(x + c + 16 + 4 * j, x + c + 4 * j));
}

AVX2_TARGET static inline __m256 sext_dword(__m256i q, __m256i mask) {
    return _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_shuffle_epi8(q, mask), 24));
}

AVX2_TARGET static void gemv_permuted_avx2(float *y, const uint8_t *blocks, const float *x, int64_t row_begin,
                                           int64_t row_end, int64_t cols) {
    float xp[Q8_PERMUTED_MAX_COLS] __attribute__((aligned(32)));
    permute_x32(xp, x, cols);
    const int64_t bpr = cols / 32;
    // mask[j]: dword i of each lane takes byte 4j + i of that lane into its top byte (−1 = zero).
    __m256i mask[4];
    for (int j = 0; j < 4; j++) {
        int8_t t[32];
        for (int i = 0; i < 32; i++) t[i] = (i & 3) == 3 ? (int8_t)(4 * j + ((i & 15) >> 2)) : -1;
        mask[j] = _mm256_loadu_si256((const __m256i *)t);
    }
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *b = blocks + r * bpr * QLORA_Q8_BLOCK_BYTES;
        __m256 t0 = _mm256_setzero_ps(), t1 = _mm256_setzero_ps();
        for (int64_t bb = 0; bb < bpr; bb++, b += QLORA_Q8_BLOCK_BYTES) {
            const float *xb = xp + bb * 32;
            const __m256i q = _mm256_loadu_si256((const __m256i *)(b + 2));
            __m256 a0 = _mm256_mul_ps(sext_dword(q, mask[0]), _mm256_load_ps(xb));
            __m256 a1 = _mm256_mul_ps(sext_dword(q, mask[1]), _mm256_load_ps(xb + 8));
            a0 = _mm256_fmadd_ps(sext_dword(q, mask[2]), _mm256_load_ps(xb + 16), a0);
            a1 = _mm256_fmadd_ps(sext_dword(q, mask[3]), _mm256_load_ps(xb + 24), a1);
            const __m256 part = _mm256_add_ps(a0, a1), d = _mm256_set1_ps(scale_f16c(b));
            if (bb & 1) t1 = _mm256_fmadd_ps(part, d, t1); else t0 = _mm256_fmadd_ps(part, d, t0);
        }
        y[r - row_begin] = hsum(_mm256_add_ps(t0, t1));
    }
}

AVX2_TARGET static void gemv_avx2(float *y, const uint8_t *blocks, const float *x, int64_t row_begin,
                                  int64_t row_end, int64_t cols) {
    if (cols <= Q8_PERMUTED_MAX_COLS) { gemv_permuted_avx2(y, blocks, x, row_begin, row_end, cols); return; }
    const int64_t bpr = cols / 32;
    int64_t r = row_begin;
    for (; r + 4 <= row_end; r += 4) gemv_rows_avx2(y + (r - row_begin), blocks, x, r, bpr, 4);
    for (; r < row_end; r++) gemv_rows_avx2(y + (r - row_begin), blocks, x, r, bpr, 1);
}

// int16 decoding: per block, the 32 int8 weights are sign-extended to int16 by two vpmovsxbw loads and
// multiplied with x's int16 by two vpmaddwd (8 exact int32 sums of 4 products); one conversion and
// one FMA per block apply d · x's scale. One row at a time (one sequential stream, as above).
AVX2_TARGET static void gemv16_avx2(float *y, const uint8_t *blocks, const int16_t *xq, const float *xscale,
                                    int64_t row_begin, int64_t row_end, int64_t cols) {
    const int64_t bpr = cols / 32;
    for (int64_t r = row_begin; r < row_end; r++) {
        const uint8_t *b = blocks + r * bpr * QLORA_Q8_BLOCK_BYTES;
        __m256 t0 = _mm256_setzero_ps(), t1 = _mm256_setzero_ps();
        for (int64_t k = 0; k < bpr; k++, b += QLORA_Q8_BLOCK_BYTES) {
            const __m256i *xk = (const __m256i *)(xq + k * 32);
            const __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 2)));
            const __m256i w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 18)));
            const __m256i s = _mm256_add_epi32(_mm256_madd_epi16(w0, _mm256_loadu_si256(xk)),
                                               _mm256_madd_epi16(w1, _mm256_loadu_si256(xk + 1)));
            const __m256 d = _mm256_set1_ps(scale_f16c(b) * xscale[k]);
            if (k & 1) t1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, t1);
            else t0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), d, t0);
        }
        y[r - row_begin] = hsum(_mm256_add_ps(t0, t1));
    }
}
#endif

// ---------------------------------------------------------------------------------------------
// Entry points.

void qlora_q8_dequantize(float *out, const uint8_t *blocks, int64_t row_begin, int64_t row_end, int64_t cols) {
    if (row_end <= row_begin || cols <= 0) return;
#ifdef QLORA_X86
    if (q8_use_avx2()) { dequantize_avx2(out, blocks, row_begin, row_end, cols); return; }
#endif
    dequantize_portable(out, blocks, row_begin, row_end, cols);
}

void qlora_q8_gemv(float *y, const uint8_t *blocks, const float *x, int64_t row_begin, int64_t row_end,
                   int64_t cols) {
    if (row_end <= row_begin) return;
#ifdef QLORA_X86
    if (q8_use_avx2()) { gemv_avx2(y, blocks, x, row_begin, row_end, cols); return; }
#endif
    gemv_portable(y, blocks, x, row_begin, row_end, cols);
}

void qlora_q8_gemv16(float *y, const uint8_t *blocks, const int16_t *xq, const float *xscale, int64_t row_begin,
                     int64_t row_end, int64_t cols) {
    if (row_end <= row_begin) return;
#ifdef QLORA_X86
    if (q8_use_avx2()) { gemv16_avx2(y, blocks, xq, xscale, row_begin, row_end, cols); return; }
#endif
    gemv16_portable(y, blocks, xq, xscale, row_begin, row_end, cols);
}
