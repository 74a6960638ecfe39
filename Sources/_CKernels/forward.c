// Forward kernels of the LLaMA block: RMSNorm, softmax, SiLU·mul, RoPE, residual add.
#include "CKernels.h"
#include "kernels_internal.h"
#include <math.h>

static int force_portable = 0;
void qlora_force_portable(int force) { force_portable = force; }
static inline int use_avx2(void) { return !force_portable && qlora_cpu_has_avx2(); }

// ---------------------------------------------------------------------------------------------
// Portable bodies (also the reference for the tail of each vector loop).

static void rmsnorm_portable(float *out, const float *inp, const float *weight, int64_t rows, int64_t dim, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *x = inp + r * dim;
        float *o = out + r * dim;
        float ss = 0.0f;
        for (int64_t i = 0; i < dim; i++) ss += x[i] * x[i];
        float rs = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int64_t i = 0; i < dim; i++) o[i] = weight[i] * (x[i] * rs);
    }
}

static void softmax_portable(float *x, int64_t n) {
    float m = x[0];
    for (int64_t i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) { x[i] = expf(x[i] - m); s += x[i]; }
    float inv = 1.0f / s;
    for (int64_t i = 0; i < n; i++) x[i] *= inv;
}

static void silu_mul_portable(float *out, const float *gate, const float *up, int64_t n) {
    for (int64_t i = 0; i < n; i++) { float g = gate[i]; out[i] = g / (1.0f + expf(-g)) * up[i]; }
}

static void rope_portable(float *x, const float *cos, const float *sin, int64_t tokens, int64_t heads,
                          int64_t head_dim, int64_t row_stride) {
    int64_t h = head_dim / 2;
    for (int64_t t = 0; t < tokens; t++) {
        const float *c = cos + t * h, *s = sin + t * h;
        for (int64_t hd = 0; hd < heads; hd++) {
            float *v = x + t * row_stride + hd * head_dim;
            for (int64_t i = 0; i < h; i++) {
                float a = v[i], b = v[i + h];
                v[i] = a * c[i] - b * s[i];
                v[i + h] = b * c[i] + a * s[i];
            }
        }
    }
}

static void add_portable(float *out, const float *a, const float *b, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static void gemv_portable(float *y, const float *w, const float *x, const float *bias, int64_t rows, int64_t cols) {
    for (int64_t r = 0; r < rows; r++) {
        const float *wr = w + r * cols;
        float s = 0.0f;
        for (int64_t i = 0; i < cols; i++) s += wr[i] * x[i];
        y[r] = bias ? s + bias[r] : s;
    }
}

// Cross-entropy of one row of logits, forward and backward in place (see qlora_cross_entropy_row).
static double xent_row_portable(float *x, int64_t n, int64_t target, float scale) {
    float m = x[0];
    for (int64_t i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    double xt = x[target], s = 0.0;
    for (int64_t i = 0; i < n; i++) { x[i] = expf(x[i] - m); s += x[i]; }
    float k = (float)((double)scale / s);
    for (int64_t i = 0; i < n; i++) x[i] *= k;
    x[target] -= scale;
    return (double)m + log(s) - xt;
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA bodies.
#if defined(__x86_64__)
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2,fma,f16c")))





AVX2 static void rmsnorm_avx2(float *out, const float *inp, const float *weight, int64_t rows, int64_t dim, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *x = inp + r * dim;
        float *o = out + r * dim;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 16 <= dim; i += 16) {
            __m256 v0 = _mm256_loadu_ps(x + i), v1 = _mm256_loadu_ps(x + i + 8);
            a0 = _mm256_fmadd_ps(v0, v0, a0);
            a1 = _mm256_fmadd_ps(v1, v1, a1);
        }
        for (; i + 8 <= dim; i += 8) { __m256 v = _mm256_loadu_ps(x + i); a0 = _mm256_fmadd_ps(v, v, a0); }
        float ss = hsum256(_mm256_add_ps(a0, a1));
        for (; i < dim; i++) ss += x[i] * x[i];
        float rs = 1.0f / sqrtf(ss / (float)dim + eps);
        __m256 vr = _mm256_set1_ps(rs);
        i = 0;
        for (; i + 8 <= dim; i += 8)
            _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(weight + i), _mm256_mul_ps(_mm256_loadu_ps(x + i), vr)));
        for (; i < dim; i++) o[i] = weight[i] * (x[i] * rs);
    }
}


AVX2 static void silu_mul_avx2(float *out, const float *gate, const float *up, int64_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 e = exp256(_mm256_sub_ps(zero, g));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
    }
    for (; i < n; i++) { float g = gate[i]; out[i] = g / (1.0f + exp1(-g)) * up[i]; }
}

AVX2 static void rope_avx2(float *x, const float *cos, const float *sin, int64_t tokens, int64_t heads,
                           int64_t head_dim, int64_t row_stride) {
    int64_t h = head_dim / 2;
    for (int64_t t = 0; t < tokens; t++) {
        const float *c = cos + t * h, *s = sin + t * h;
        for (int64_t hd = 0; hd < heads; hd++) {
            float *v = x + t * row_stride + hd * head_dim;
            int64_t i = 0;
            for (; i + 8 <= h; i += 8) {
                __m256 a = _mm256_loadu_ps(v + i), b = _mm256_loadu_ps(v + i + h);
                __m256 vc = _mm256_loadu_ps(c + i), vs = _mm256_loadu_ps(s + i);
                _mm256_storeu_ps(v + i, _mm256_sub_ps(_mm256_mul_ps(a, vc), _mm256_mul_ps(b, vs)));
                _mm256_storeu_ps(v + i + h, _mm256_add_ps(_mm256_mul_ps(b, vc), _mm256_mul_ps(a, vs)));
            }
            for (; i < h; i++) {
                float a = v[i], b = v[i + h];
                v[i] = a * c[i] - b * s[i];
                v[i + h] = b * c[i] + a * s[i];
            }
        }
    }
}

AVX2 static void add_avx2(float *out, const float *a, const float *b, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
    for (; i < n; i++) out[i] = a[i] + b[i];
}

AVX2 static void exp_avx2(float *out, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, exp256(_mm256_loadu_ps(x + i)));
    for (; i < n; i++) out[i] = exp1(x[i]);
}
// 4 rows at a time, two 8-lane accumulators per row (8 independent FMA chains).
AVX2 static void gemv_avx2(float *y, const float *w, const float *x, const float *bias, int64_t rows, int64_t cols) {
    int64_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *w0 = w + r * cols, *w1 = w0 + cols, *w2 = w1 + cols, *w3 = w2 + cols;
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        __m256 b0 = _mm256_setzero_ps(), b1 = _mm256_setzero_ps(), b2 = _mm256_setzero_ps(), b3 = _mm256_setzero_ps();
        int64_t i = 0;
        for (; i + 16 <= cols; i += 16) {
            __m256 xa = _mm256_loadu_ps(x + i), xb = _mm256_loadu_ps(x + i + 8);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + i), xa, a0); b0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + i + 8), xb, b0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + i), xa, a1); b1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + i + 8), xb, b1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + i), xa, a2); b2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + i + 8), xb, b2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + i), xa, a3); b3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + i + 8), xb, b3);
        }
        for (; i + 8 <= cols; i += 8) {
            __m256 xa = _mm256_loadu_ps(x + i);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w0 + i), xa, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w1 + i), xa, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w2 + i), xa, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w3 + i), xa, a3);
        }
        float s0 = hsum256(_mm256_add_ps(a0, b0)), s1 = hsum256(_mm256_add_ps(a1, b1));
        float s2 = hsum256(_mm256_add_ps(a2, b2)), s3 = hsum256(_mm256_add_ps(a3, b3));
        for (; i < cols; i++) { s0 += w0[i] * x[i]; s1 += w1[i] * x[i]; s2 += w2[i] * x[i]; s3 += w3[i] * x[i]; }
        if (bias) { s0 += bias[r]; s1 += bias[r + 1]; s2 += bias[r + 2]; s3 += bias[r + 3]; }
        y[r] = s0; y[r + 1] = s1; y[r + 2] = s2; y[r + 3] = s3;
    }
    if (r < rows) gemv_portable(y + r, w + r * cols, x, bias ? bias + r : 0, rows - r, cols);
}
AVX2 static double xent_row_avx2(float *x, int64_t n, int64_t target, float scale) {
    int64_t i = 0;
    __m256 vm = _mm256_set1_ps(x[0]);
    for (; i + 8 <= n; i += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
    float m = hmax256(vm);
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    double xt = x[target], s = 0.0;
    vm = _mm256_set1_ps(m);
    i = 0;
    // exp in place; 8-lane float partial sums flushed to double every 1024 elements
    while (i + 8 <= n) {
        __m256 acc = _mm256_setzero_ps();
        int64_t stop = i + 1024 < n ? i + 1024 : n;
        for (; i + 8 <= stop; i += 8) {
            __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + i), vm));
            _mm256_storeu_ps(x + i, e);
            acc = _mm256_add_ps(acc, e);
        }
        s += hsum256(acc);
    }
    for (; i < n; i++) { x[i] = exp1(x[i] - m); s += x[i]; }
    float k = (float)((double)scale / s);
    __m256 vk = _mm256_set1_ps(k);
    for (i = 0; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vk));
    for (; i < n; i++) x[i] *= k;
    x[target] -= scale;
    return (double)m + log(s) - xt;
}
#define HAVE_AVX2_BODIES 1
#endif

// ---------------------------------------------------------------------------------------------
// Public entry points.
#if HAVE_AVX2_BODIES
#define DISPATCH(avx, portable) if (use_avx2()) avx; else portable
#else
#define DISPATCH(avx, portable) portable
#endif

void qlora_rmsnorm_forward(float *out, const float *inp, const float *weight, int64_t rows, int64_t dim, float eps) {
    DISPATCH(rmsnorm_avx2(out, inp, weight, rows, dim, eps), rmsnorm_portable(out, inp, weight, rows, dim, eps));
}
void qlora_softmax_forward(float *x, int64_t n) {
    if (n <= 0) return;
    DISPATCH(softmax_avx2(x, n), softmax_portable(x, n));
}
void qlora_silu_mul_forward(float *out, const float *gate, const float *up, int64_t n) {
    DISPATCH(silu_mul_avx2(out, gate, up, n), silu_mul_portable(out, gate, up, n));
}
void qlora_rope_forward(float *x, const float *cos, const float *sin, int64_t tokens, int64_t heads,
                        int64_t head_dim, int64_t row_stride) {
    DISPATCH(rope_avx2(x, cos, sin, tokens, heads, head_dim, row_stride),
             rope_portable(x, cos, sin, tokens, heads, head_dim, row_stride));
}
void qlora_add_forward(float *out, const float *a, const float *b, int64_t n) {
    DISPATCH(add_avx2(out, a, b, n), add_portable(out, a, b, n));
}
void qlora_exp(float *out, const float *x, int64_t n) {
#if HAVE_AVX2_BODIES
    if (use_avx2()) { exp_avx2(out, x, n); return; }
#endif
    for (int64_t i = 0; i < n; i++) out[i] = expf(x[i]);
}
void qlora_gemv_forward(float *y, const float *w, const float *x, const float *bias, int64_t rows, int64_t cols) {
    DISPATCH(gemv_avx2(y, w, x, bias, rows, cols), gemv_portable(y, w, x, bias, rows, cols));
}
double qlora_cross_entropy_row(float *x, int64_t n, int64_t target, float scale) {
#if HAVE_AVX2_BODIES
    if (use_avx2()) return xent_row_avx2(x, n, target, scale);
#endif
    return xent_row_portable(x, n, target, scale);
}
