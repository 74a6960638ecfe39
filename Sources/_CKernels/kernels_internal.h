// Helpers shared by the C kernels (private to the target: not in include/).
#ifndef QLORA_KERNELS_INTERNAL_H
#define QLORA_KERNELS_INTERNAL_H
#include <float.h>
#include <math.h>
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

// The int16 input quantizers' block scale: the largest |x[j]| for j < n, or −1 when some x[j] is
// infinite or NaN (the caller then stores a NaN scale, so the product is not finite either).
static inline float finite_absmax(const float *x, int64_t n) {
    float m = 0.0f;
    for (int64_t j = 0; j < n; j++) {
        const float a = x[j] < 0.0f ? -x[j] : x[j];
        if (!(a <= FLT_MAX)) return -1.0f;   // inf or NaN
        if (a > m) m = a;
    }
    return m;
}

// Round to nearest (ties to even, as lrintf) and clamp to [−limit, limit].
static inline int16_t round_clamp16(float v, long limit) {
    long q = lrintf(v);
    return (int16_t)(q > limit ? limit : q < -limit ? -limit : q);
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
__attribute__((target("avx2,fma,f16c"))) static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma,f16c"))) static inline float hmax256(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// exp of a scalar with the same polynomial (for loop tails, so results don't depend on the length).
__attribute__((target("avx2,fma,f16c"))) static inline float exp1(float x) { return _mm256_cvtss_f32(exp256(_mm256_set1_ps(x))); }

// In place softmax of x[n] (n ≥ 1).
__attribute__((target("avx2,fma,f16c"))) static inline void softmax_avx2(float *x, int64_t n) {
    int64_t i = 0;
    __m256 vm = _mm256_set1_ps(x[0]);
    for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
    float m = hmax256(vm);
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    vm = _mm256_set1_ps(m);
    __m256 vs = _mm256_setzero_ps();
    for (i = 0; i + 8 <= n; i += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
        _mm256_storeu_ps(x + i, e);
        vs = _mm256_add_ps(vs, e);
    }
    float s = hsum256(vs);
    for (; i < n; i++) { x[i] = exp1(x[i] - m); s += x[i]; }
    float inv = 1.0f / s;
    __m256 vi = _mm256_set1_ps(inv);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vi));
    for (; i < n; i++) x[i] *= inv;
}
#endif

#endif
