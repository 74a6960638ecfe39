// Helpers shared by the C kernels (private to the target: not in include/).
#ifndef QLORA_KERNELS_INTERNAL_H
#define QLORA_KERNELS_INTERNAL_H
#include <stdint.h>
#include "nf4.h"

// Scale of 4-bit block b: absmax[b], or with double quantization nested_map[qabsmax[b]] ·
// nested_absmax[b / nested_blocksize] + offset, two float32 roundings as bitsandbytes (callers
// compile with FP_CONTRACT OFF so they are never fused).
static inline float nf4_block_scale(const qlora_nf4_weight *w, int64_t b) {
    if (w->qabsmax == 0) return w->absmax[b];
    float s = w->nested_map[w->qabsmax[b]] * w->nested_absmax[b / w->nested_blocksize];
    float r = s + w->offset;
    return r;
}

// log2(v) for a power of two v > 0, else −1.
static inline int log2_exact(int64_t v) {
    if (v <= 0 || (v & (v - 1)) != 0) return -1;
    int k = 0;
    while ((1LL << k) < v) k++;
    return k;
}

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
// exp(x) for 8 lanes: Cephes-style range reduction x = n·ln2 + r, degree-5 polynomial for e^r,
// 2^n built in the exponent bits. Relative error ≲ 2e-7 on [-87, 88]; inputs are clamped there.
__attribute__((target("avx2,fma,f16c"))) static inline __m256 exp256(__m256 x) {
    x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3365447504f));
    __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
    fx = _mm256_floor_ps(fx);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    __m256 x2 = _mm256_mul_ps(x, x);
    y = _mm256_fmadd_ps(y, x2, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
    __m256i n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
    return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(n, 23)));
}
#endif

#endif
