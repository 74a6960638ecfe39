// ggml Q8_0 dequantization and fused matrix-vector product. See q8.h.
#include <string.h>
#include "q8.h"
#include "CKernels.h"
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

// R rows at once (R = 4 or 1; always_inline so each R is its own unrolled body): x is loaded once
// per 8 columns and shared by the R rows.
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

AVX2_TARGET static void gemv_avx2(float *y, const uint8_t *blocks, const float *x, int64_t row_begin,
                                  int64_t row_end, int64_t cols) {
    const int64_t bpr = cols / 32;
    int64_t r = row_begin;
    for (; r + 4 <= row_end; r += 4) gemv_rows_avx2(y + (r - row_begin), blocks, x, r, bpr, 4);
    for (; r < row_end; r++) gemv_rows_avx2(y + (r - row_begin), blocks, x, r, bpr, 1);
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
