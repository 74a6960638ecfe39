// Attention kernels (see attention.h): AVX2+FMA decode and training forward/backward, portable decode.
//
// Training kernels work on one (batch row, kv head) item with its g query heads stacked token-major
// (stacked row r = token t0 + r/g, head r%g), in blocks of query tokens [t0, t1) seeing keys [k0, t1)
// (k0 = first segment start in the block, rounded down to 16). Keys (and values for the backward) are
// packed once per item into 16-key panels [D][16] (B of S = Q·Kᵀ and dP = dO·Vᵀ) and values (keys)
// into contiguous 16-column strips (B of O = P·V and dQ = dS·K). Per block: S = scale·Q·Kᵀ into an L2
// tile (16-key strips above a row group's last key or below its first visible key skipped), masked
// softmax rows, then small GEMMs by one 6×16 register micro-kernel (A broadcast from rows given by
// pointer, B rows contiguous, 12 accumulators). Decode: online softmax over 64-position blocks with up
// to 3 query heads of a kv head in registers at once.
#include "attention.h"
#include "CKernels.h"
#include "kernels_internal.h"
#include <math.h>
#include <string.h>

static int attn_force_portable = 0;
void qlora_attention_force_portable(int force) { attn_force_portable = force; }
int qlora_attention_use_avx2(void) { return !attn_force_portable && qlora_cpu_has_avx2(); }

static inline int64_t round16(int64_t x) { return (x + 15) & ~(int64_t)15; }
static inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

int64_t qlora_attention_train_scratch(int64_t T, int64_t g, int64_t D, int64_t block_rows, int backward) {
    int64_t M = g * block_rows, LT = round16(T);
    return backward ? 4 * LT * D + 2 * M * LT + 2 * M * D + 16 : 2 * LT * D + M * LT + 16;
}

// ---------------------------------------------------------------------------------------------
// Portable decode: online softmax over blocks of 64 keys.
#define DEC_BLOCK 64
#define DEC_MAXD 256

static void decode_portable(float *out, const float *q, const float *keys, const float *values, int64_t n,
                            int64_t g, int64_t D, int64_t ld, float scale) {
    float s[DEC_BLOCK];
    for (int64_t h = 0; h < g; h++) {
        const float *qh = q + h * D;
        float *oh = out + h * D;
        for (int64_t i = 0; i < D; i++) oh[i] = 0.0f;
        float m = -INFINITY, l = 0.0f;
        for (int64_t b0 = 0; b0 < n; b0 += DEC_BLOCK) {
            int64_t nb = imin(DEC_BLOCK, n - b0);
            float bm = -INFINITY;
            for (int64_t j = 0; j < nb; j++) {
                const float *kr = keys + (b0 + j) * ld;
                float d = 0.0f;
                for (int64_t i = 0; i < D; i++) d += qh[i] * kr[i];
                s[j] = d * scale;
                bm = s[j] > bm ? s[j] : bm;
            }
            float mn = bm > m ? bm : m, f = expf(m - mn);
            l *= f;
            for (int64_t i = 0; i < D; i++) oh[i] *= f;
            for (int64_t j = 0; j < nb; j++) {
                float p = expf(s[j] - mn);
                l += p;
                const float *vr = values + (b0 + j) * ld;
                for (int64_t i = 0; i < D; i++) oh[i] += p * vr[i];
            }
            m = mn;
        }
        float inv = 1.0f / l;
        for (int64_t i = 0; i < D; i++) oh[i] *= inv;
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA bodies.
#if defined(__x86_64__)
#include <immintrin.h>
#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE static inline __attribute__((always_inline))


// The four horizontal sums of a, b, c, d as one 4-lane vector.
AVX2 INLINE __m128 att_hsum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// --- Decode -----------------------------------------------------------------------------------

// s[h][j] = scale · q_h · k_j for HN heads and nb keys (4 at a time, D % 8 == 0).
AVX2 INLINE void dec_scores(float *s, int64_t lds, const float *q, const float *keys, int64_t nb, int64_t D,
                            int64_t ld, float scale, const int HN) {
    __m256 vs = _mm256_set1_ps(scale);
    int64_t j = 0;
    for (; j + 4 <= nb; j += 4) {
        const float *k0 = keys + j * ld, *k1 = k0 + ld, *k2 = k1 + ld, *k3 = k2 + ld;
        __m256 acc[3][4];
        for (int h = 0; h < HN; h++) for (int u = 0; u < 4; u++) acc[h][u] = _mm256_setzero_ps();
        for (int64_t i = 0; i < D; i += 8) {
            __m256 x0 = _mm256_loadu_ps(k0 + i), x1 = _mm256_loadu_ps(k1 + i);
            __m256 x2 = _mm256_loadu_ps(k2 + i), x3 = _mm256_loadu_ps(k3 + i);
            for (int h = 0; h < HN; h++) {
                __m256 qv = _mm256_loadu_ps(q + h * D + i);
                acc[h][0] = _mm256_fmadd_ps(qv, x0, acc[h][0]);
                acc[h][1] = _mm256_fmadd_ps(qv, x1, acc[h][1]);
                acc[h][2] = _mm256_fmadd_ps(qv, x2, acc[h][2]);
                acc[h][3] = _mm256_fmadd_ps(qv, x3, acc[h][3]);
            }
        }
        for (int h = 0; h < HN; h++) {
            __m128 r = att_hsum4(acc[h][0], acc[h][1], acc[h][2], acc[h][3]);
            _mm_storeu_ps(s + h * lds + j, _mm_mul_ps(r, _mm256_castps256_ps128(vs)));
        }
    }
    for (; j < nb; j++) {
        const float *kr = keys + j * ld;
        for (int h = 0; h < HN; h++) {
            __m256 a = _mm256_setzero_ps();
            for (int64_t i = 0; i < D; i += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + h * D + i), _mm256_loadu_ps(kr + i), a);
            s[h * lds + j] = hsum256(a) * scale;
        }
    }
}

// o_h[D] += Σ_j p[h][j] · v_j for HN heads (D % 8 == 0), 32 columns at a time in registers.
AVX2 INLINE void dec_pv(float *o, const float *p, int64_t ldp, const float *values, int64_t nb, int64_t D,
                        int64_t ld, const int HN) {
    int64_t c = 0;
    for (; c + 32 <= D; c += 32) {
        __m256 acc[3][4];
        for (int h = 0; h < HN; h++) for (int u = 0; u < 4; u++) acc[h][u] = _mm256_loadu_ps(o + h * D + c + 8 * u);
        for (int64_t j = 0; j < nb; j++) {
            const float *vr = values + j * ld + c;
            __m256 v0 = _mm256_loadu_ps(vr), v1 = _mm256_loadu_ps(vr + 8);
            __m256 v2 = _mm256_loadu_ps(vr + 16), v3 = _mm256_loadu_ps(vr + 24);
            for (int h = 0; h < HN; h++) {
                __m256 pv = _mm256_broadcast_ss(p + h * ldp + j);
                acc[h][0] = _mm256_fmadd_ps(pv, v0, acc[h][0]);
                acc[h][1] = _mm256_fmadd_ps(pv, v1, acc[h][1]);
                acc[h][2] = _mm256_fmadd_ps(pv, v2, acc[h][2]);
                acc[h][3] = _mm256_fmadd_ps(pv, v3, acc[h][3]);
            }
        }
        for (int h = 0; h < HN; h++) for (int u = 0; u < 4; u++) _mm256_storeu_ps(o + h * D + c + 8 * u, acc[h][u]);
    }
    for (; c < D; c += 8) {
        __m256 acc[3];
        for (int h = 0; h < HN; h++) acc[h] = _mm256_loadu_ps(o + h * D + c);
        for (int64_t j = 0; j < nb; j++) {
            __m256 v0 = _mm256_loadu_ps(values + j * ld + c);
            for (int h = 0; h < HN; h++) acc[h] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + h * ldp + j), v0, acc[h]);
        }
        for (int h = 0; h < HN; h++) _mm256_storeu_ps(o + h * D + c, acc[h]);
    }
}

// One group of HN ≤ 3 heads, online softmax over blocks of DEC_BLOCK keys.
AVX2 INLINE void dec_group(float *out, const float *q, const float *keys, const float *values, int64_t n, int64_t D,
                           int64_t ld, float scale, const int HN) {
    float s[3 * DEC_BLOCK] __attribute__((aligned(32)));
    float m[3], l[3];
    for (int h = 0; h < HN; h++) { m[h] = -INFINITY; l[h] = 0.0f; memset(out + h * D, 0, (size_t)D * sizeof(float)); }
    for (int64_t b0 = 0; b0 < n; b0 += DEC_BLOCK) {
        int64_t nb = imin(DEC_BLOCK, n - b0);
        dec_scores(s, DEC_BLOCK, q, keys + b0 * ld, nb, D, ld, scale, HN);
        for (int h = 0; h < HN; h++) {
            float *sh = s + h * DEC_BLOCK;
            __m256 vm = _mm256_set1_ps(-INFINITY);
            int64_t j = 0;
            for (; j + 8 <= nb; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(sh + j));
            float bm = hmax256(vm);
            for (; j < nb; j++) bm = sh[j] > bm ? sh[j] : bm;
            float mn = bm > m[h] ? bm : m[h];
            if (mn > m[h] && b0 > 0) {
                float f = exp1(m[h] - mn);
                l[h] *= f;
                __m256 vf = _mm256_set1_ps(f);
                for (int64_t i = 0; i < D; i += 8)
                    _mm256_storeu_ps(out + h * D + i, _mm256_mul_ps(_mm256_loadu_ps(out + h * D + i), vf));
            }
            m[h] = mn;
            __m256 vmn = _mm256_set1_ps(mn), sum = _mm256_setzero_ps();
            for (j = 0; j + 8 <= nb; j += 8) {
                __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(sh + j), vmn));
                _mm256_storeu_ps(sh + j, e);
                sum = _mm256_add_ps(sum, e);
            }
            float ls = hsum256(sum);
            for (; j < nb; j++) { sh[j] = exp1(sh[j] - mn); ls += sh[j]; }
            l[h] += ls;
        }
        dec_pv(out, s, DEC_BLOCK, values + b0 * ld, nb, D, ld, HN);
    }
    for (int h = 0; h < HN; h++) {
        __m256 vi = _mm256_set1_ps(1.0f / l[h]);
        for (int64_t i = 0; i < D; i += 8)
            _mm256_storeu_ps(out + h * D + i, _mm256_mul_ps(_mm256_loadu_ps(out + h * D + i), vi));
    }
}

AVX2 static void decode_avx2(float *out, const float *q, const float *keys, const float *values, int64_t n,
                             int64_t g, int64_t D, int64_t ld, float scale) {
    for (int64_t h0 = 0; h0 < g; h0 += 3) {
        int64_t hn = imin(3, g - h0);
        float *o = out + h0 * D;
        const float *qq = q + h0 * D;
        if (hn == 3) dec_group(o, qq, keys, values, n, D, ld, scale, 3);
        else if (hn == 2) dec_group(o, qq, keys, values, n, D, ld, scale, 2);
        else dec_group(o, qq, keys, values, n, D, ld, scale, 1);
    }
}

// --- Training: the 6×16 micro-kernel and the GEMM shapes built on it --------------------------

// c[i][0..16) = (acc ? c[i] : 0) + alpha · Σ_{k<kn} a[i][k·aks] · b[k·ldb + 0..16), i < 6.
AVX2 INLINE void mk6x16(const float *const *a, int64_t aks, const float *b, int64_t ldb, int64_t kn,
                        float *const *c, float alpha, int acc) {
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps(), c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps(), c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
    const float *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3], *a4 = a[4], *a5 = a[5];
    int64_t off = 0;
    for (int64_t k = 0; k < kn; k++, off += aks, b += ldb) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8), x;
        x = _mm256_broadcast_ss(a0 + off); c00 = _mm256_fmadd_ps(x, b0, c00); c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(a1 + off); c10 = _mm256_fmadd_ps(x, b0, c10); c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(a2 + off); c20 = _mm256_fmadd_ps(x, b0, c20); c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(a3 + off); c30 = _mm256_fmadd_ps(x, b0, c30); c31 = _mm256_fmadd_ps(x, b1, c31);
        x = _mm256_broadcast_ss(a4 + off); c40 = _mm256_fmadd_ps(x, b0, c40); c41 = _mm256_fmadd_ps(x, b1, c41);
        x = _mm256_broadcast_ss(a5 + off); c50 = _mm256_fmadd_ps(x, b0, c50); c51 = _mm256_fmadd_ps(x, b1, c51);
    }
    __m256 va = _mm256_set1_ps(alpha);
#define STORE_ROW(i, r0, r1) do { float *ci = c[i]; \
        if (acc) { _mm256_storeu_ps(ci, _mm256_fmadd_ps(va, r0, _mm256_loadu_ps(ci))); \
                   _mm256_storeu_ps(ci + 8, _mm256_fmadd_ps(va, r1, _mm256_loadu_ps(ci + 8))); } \
        else { _mm256_storeu_ps(ci, _mm256_mul_ps(va, r0)); _mm256_storeu_ps(ci + 8, _mm256_mul_ps(va, r1)); } } while (0)
    STORE_ROW(0, c00, c01); STORE_ROW(1, c10, c11); STORE_ROW(2, c20, c21);
    STORE_ROW(3, c30, c31); STORE_ROW(4, c40, c41); STORE_ROW(5, c50, c51);
#undef STORE_ROW
}

// Packs keys/values rows src[c·ld + 0..D) for c < n into 16-key panels kt[c/16][D][16], zero padded to
// round16(n) keys.
static void att_pack_panels(float *kt, const float *src, int64_t ld, int64_t n, int64_t D) {
    for (int64_t c0 = 0; c0 < n; c0 += 16) {
        float *panel = kt + c0 * D;
        int64_t nc = imin(16, n - c0);
        for (int64_t j = 0; j < 16; j++) {
            if (j < nc) { const float *row = src + (c0 + j) * ld; for (int64_t d = 0; d < D; d++) panel[d * 16 + j] = row[d]; }
            else for (int64_t d = 0; d < D; d++) panel[d * 16 + j] = 0.0f;
        }
    }
}

// Packs rows src[c·ld + 0..D) for c < n into column strips rp[d/16][c][16] of LT ≥ n rows (zero padded),
// so a GEMM's B strip streams contiguously.
static void att_pack_rows(float *rp, const float *src, int64_t ld, int64_t n, int64_t LT, int64_t D) {
    for (int64_t dc = 0; dc < D; dc += 16) {
        float *p = rp + dc * LT;
        for (int64_t c = 0; c < n; c++) memcpy(p + c * 16, src + c * ld + dc, 16 * sizeof(float));
        if (LT > n) memset(p + n * 16, 0, (size_t)((LT - n) * 16) * sizeof(float));
    }
}

// S[r, c] = alpha · arow[r] · key c (D-long dots) for r < M and keys c < nk, the keys given as 16-key
// panels (kt, see att_pack_panels, starting at the tile's first key), into a tile with rows ldS apart;
// strips of 16 keys at or beyond a row group's climit (its last row's) or below all its rows' first
// key (clo) are skipped.
AVX2 static void att_scores(float *S, int64_t ldS, const float *const *arow, const int64_t *climit,
                            const int64_t *clo, int64_t M, const float *kt, int64_t nk, int64_t D, float alpha,
                            float *dummy) {
    for (int64_t c0 = 0; c0 < nk; c0 += 16) {
        const float *panel = kt + c0 * D;
        for (int64_t r0 = 0; r0 < M; r0 += 6) {
            int64_t nr = imin(6, M - r0);
            if (c0 >= climit[r0 + nr - 1]) continue;
            int64_t lo = clo[r0];
            for (int i = 1; i < nr; i++) lo = clo[r0 + i] < lo ? clo[r0 + i] : lo;
            if (c0 + 16 <= lo) continue;                  // all masked by the document starts
            const float *a[6]; float *c[6];
            for (int i = 0; i < 6; i++) {
                if (i < nr) { a[i] = arow[r0 + i]; c[i] = S + (r0 + i) * ldS + c0; }
                else { a[i] = arow[r0]; c[i] = dummy; }
            }
            mk6x16(a, 1, panel, 16, D, c, alpha, 0);
        }
    }
}

// crow[r][0..D) (+)= alpha · Σ_{lo ≤ c < climit} A[r·lda + c] · B_c, climit = the row group's last row's,
// lo = the group's smallest clo (A is zero outside each row's [clo, climit)). B_c's 16-column strip j is at
// B + c·ldb + j·strip (plain rows: ldb = row stride, strip = 16; packed strips: ldb = 16, strip = 16·LT).
AVX2 static void att_rows_times(float *const *crow, int64_t M, const float *A, int64_t lda, const int64_t *climit,
                                const int64_t *clo, const float *B, int64_t ldb, int64_t strip, int64_t D,
                                float alpha, int acc, float *dummy) {
    for (int64_t dc = 0; dc < D; dc += 16) {
        for (int64_t r0 = 0; r0 < M; r0 += 6) {
            int64_t nr = imin(6, M - r0);
            int64_t lo = clo[r0];
            for (int i = 1; i < nr; i++) lo = clo[r0 + i] < lo ? clo[r0 + i] : lo;
            const float *a[6]; float *c[6];
            for (int i = 0; i < 6; i++) {
                if (i < nr) { a[i] = A + (r0 + i) * lda + lo; c[i] = crow[r0 + i] + dc; }
                else { a[i] = A + r0 * lda + lo; c[i] = dummy; }
            }
            mk6x16(a, 1, B + lo * ldb + (dc / 16) * strip, ldb, climit[r0 + nr - 1] - lo, c, alpha, acc);
        }
    }
}

// dst[c·ld + 0..D) += Σ_{r ≥ first row seeing key c} A[r·lda + c] · Bs[r·D + 0..D) for keys c < nk
// (key k0 + c; stacked row r is token t0 + r/g and sees keys ≤ its token).
AVX2 static void att_cols_times(float *dst, int64_t ld, int64_t nk, const float *A, int64_t lda, int64_t M,
                                const int64_t *clo, const float *Bs, int64_t D, int64_t g, int64_t k0, int64_t t0,
                                float *dummy) {
    for (int64_t dc = 0; dc < D; dc += 16) {
        for (int64_t c0 = 0; c0 < nk; c0 += 6) {
            int64_t nc = imin(6, nk - c0), key0 = k0 + c0;
            int64_t r0 = key0 > t0 ? (key0 - t0) * g : 0;
            int64_t r1 = M;                                // rows past r1 have all these keys masked
            while (r1 > r0 && clo[r1 - 1] > c0 + nc - 1) r1--;
            if (r0 >= r1) continue;
            const float *a[6]; float *c[6];
            for (int i = 0; i < 6; i++) {
                if (i < nc) { a[i] = A + r0 * lda + c0 + i; c[i] = dst + (c0 + i) * ld + dc; }
                else { a[i] = A + r0 * lda + c0; c[i] = dummy; }
            }
            mk6x16(a, lda, Bs + r0 * D + dc, D, r1 - r0, c, 1.0f, 1);
        }
    }
}

// In place masked softmax of a stacked row: valid keys [cl, ch), zeros elsewhere in [0, ldS).
AVX2 static void att_softmax_row(float *row, int64_t cl, int64_t ch, int64_t ldS) {
    softmax_avx2(row + cl, ch - cl);
    if (cl > 0) memset(row, 0, (size_t)cl * sizeof(float));
    if (ch < ldS) memset(row + ch, 0, (size_t)(ldS - ch) * sizeof(float));
}

// dp ← scale · p ⊙ (dp − Σ p ⊙ dp) on [cl, ch), zeros elsewhere in [0, ldS).
AVX2 static void att_dsoftmax_row(float *dp, const float *p, int64_t cl, int64_t ch, int64_t ldS, float scale) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = cl;
    for (; i + 8 <= ch; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(p + i), _mm256_loadu_ps(dp + i), acc);
    float dot = hsum256(acc);
    for (; i < ch; i++) dot += p[i] * dp[i];
    __m256 vd = _mm256_set1_ps(dot), vs = _mm256_set1_ps(scale);
    for (i = cl; i + 8 <= ch; i += 8) {
        __m256 pv = _mm256_mul_ps(vs, _mm256_loadu_ps(p + i));
        _mm256_storeu_ps(dp + i, _mm256_mul_ps(pv, _mm256_sub_ps(_mm256_loadu_ps(dp + i), vd)));
    }
    for (; i < ch; i++) dp[i] = scale * p[i] * (dp[i] - dot);
    if (cl > 0) memset(dp, 0, (size_t)cl * sizeof(float));
    if (ch < ldS) memset(dp + ch, 0, (size_t)(ldS - ch) * sizeof(float));
}

#define ATT_MAXM 1024

static inline int64_t seg_lo(const int64_t *seg, int64_t t) {
    if (!seg) return 0;
    int64_t s = seg[t];
    return s < 0 ? 0 : (s > t ? t : s);
}

// Block geometry shared by forward and backward: rows, key start, per-row key limits.
typedef struct { int64_t M, k0, nk, ldS; } att_block;

static att_block att_block_setup(const int64_t *seg, int64_t t0, int64_t t1, int64_t g, int64_t *climit, int64_t *clo) {
    att_block b;
    b.k0 = t1;
    for (int64_t t = t0; t < t1; t++) { int64_t lo = seg_lo(seg, t); b.k0 = lo < b.k0 ? lo : b.k0; }
    b.k0 &= ~(int64_t)15;                      // start on a 16-key panel boundary
    b.M = (t1 - t0) * g;
    b.nk = t1 - b.k0;
    b.ldS = round16(b.nk);
    for (int64_t r = 0; r < b.M; r++) {
        int64_t t = t0 + r / g;
        climit[r] = t - b.k0 + 1;
        clo[r] = seg_lo(seg, t) - b.k0;
    }
    return b;
}

AVX2 static void train_forward_avx2(float *out, const float *q, const float *k, const float *v, const int64_t *seg,
                                    float *scratch, int64_t t0, int64_t t1, int64_t R, int64_t g, int64_t D,
                                    int64_t qs, int64_t kvs, float scale) {
    const float *arow[ATT_MAXM]; float *crow[ATT_MAXM]; int64_t climit[ATT_MAXM], clo[ATT_MAXM];
    int64_t LT = round16(t1);
    float *kt = scratch, *vp = kt + LT * D, *P = vp + LT * D, *dummy = P + g * R * LT;
    att_pack_panels(kt, k, kvs, t1, D);       // keys 0 ..< t1 as panels, once for all blocks
    att_pack_rows(vp, v, kvs, t1, LT, D);     // values as contiguous column strips
    for (int64_t b0 = t0; b0 < t1; b0 += R) {
        int64_t b1 = imin(t1, b0 + R);
        att_block bl = att_block_setup(seg, b0, b1, g, climit, clo);
        for (int64_t r = 0; r < bl.M; r++) {
            int64_t t = b0 + r / g, h = r % g;
            arow[r] = q + t * qs + h * D;
            crow[r] = out + t * qs + h * D;
        }
        att_scores(P, bl.ldS, arow, climit, clo, bl.M, kt + bl.k0 * D, bl.nk, D, scale, dummy);
        for (int64_t r = 0; r < bl.M; r++) att_softmax_row(P + r * bl.ldS, clo[r], climit[r], bl.ldS);
        att_rows_times(crow, bl.M, P, bl.ldS, climit, clo, vp + bl.k0 * 16, 16, 16 * LT, D, 1.0f, 0, dummy);
    }
}

AVX2 static void train_backward_avx2(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                     const float *k, const float *v, const int64_t *seg, float *scratch, int64_t T,
                                     int64_t R, int64_t g, int64_t D, int64_t qs, int64_t kvs, float scale) {
    const float *arow[ATT_MAXM], *orow[ATT_MAXM]; float *crow[ATT_MAXM];
    int64_t climit[ATT_MAXM], clo[ATT_MAXM];
    int64_t LT = round16(T), Mmax = g * R;
    float *kt = scratch, *vt = kt + LT * D, *kp = vt + LT * D, *P = kp + LT * D, *dS = P + Mmax * LT;
    float *Qs = dS + Mmax * LT, *Os = Qs + Mmax * D, *dummy = Os + Mmax * D;
    att_pack_panels(kt, k, kvs, T, D);
    att_pack_panels(vt, v, kvs, T, D);
    att_pack_rows(kp, k, kvs, T, LT, D);
    for (int64_t b0 = 0; b0 < T; b0 += R) {
        int64_t b1 = imin(T, b0 + R);
        att_block bl = att_block_setup(seg, b0, b1, g, climit, clo);
        for (int64_t t = b0; t < b1; t++) {       // stacked, contiguous copies of q and dout
            memcpy(Qs + (t - b0) * g * D, q + t * qs, (size_t)(g * D) * sizeof(float));
            memcpy(Os + (t - b0) * g * D, dout + t * qs, (size_t)(g * D) * sizeof(float));
        }
        for (int64_t r = 0; r < bl.M; r++) {
            int64_t t = b0 + r / g, h = r % g;
            arow[r] = Qs + r * D;
            orow[r] = Os + r * D;
            crow[r] = dq + t * qs + h * D;
        }
        att_scores(P, bl.ldS, arow, climit, clo, bl.M, kt + bl.k0 * D, bl.nk, D, scale, dummy);
        for (int64_t r = 0; r < bl.M; r++) att_softmax_row(P + r * bl.ldS, clo[r], climit[r], bl.ldS);
        att_scores(dS, bl.ldS, orow, climit, clo, bl.M, vt + bl.k0 * D, bl.nk, D, 1.0f, dummy);     // dP = dO · vᵀ
        for (int64_t r = 0; r < bl.M; r++)
            att_dsoftmax_row(dS + r * bl.ldS, P + r * bl.ldS, clo[r], climit[r], bl.ldS, scale);
        att_rows_times(crow, bl.M, dS, bl.ldS, climit, clo, kp + bl.k0 * 16, 16, 16 * LT, D, 1.0f, 1, dummy);          // dq += dS · k
        att_cols_times(dk + bl.k0 * kvs, kvs, bl.nk, dS, bl.ldS, bl.M, clo, Qs, D, g, bl.k0, b0, dummy);  // dk += dSᵀ · q
        att_cols_times(dv + bl.k0 * kvs, kvs, bl.nk, P, bl.ldS, bl.M, clo, Os, D, g, bl.k0, b0, dummy);   // dv += Pᵀ · dO
    }
}
#define HAVE_AVX2_BODIES 1
#endif

// ---------------------------------------------------------------------------------------------
// Public entry points.

void qlora_attention_decode(float *out, const float *q, const float *keys, const float *values, int64_t n,
                            int64_t g, int64_t D, int64_t kv_stride, float scale) {
#if HAVE_AVX2_BODIES
    if (qlora_attention_use_avx2() && D % 8 == 0 && D <= DEC_MAXD) {
        decode_avx2(out, q, keys, values, n, g, D, kv_stride, scale);
        return;
    }
#endif
    decode_portable(out, q, keys, values, n, g, D, kv_stride, scale);
}

void qlora_attention_train_forward(float *out, const float *q, const float *k, const float *v,
                                   const int64_t *seg, float *scratch, int64_t t0, int64_t t1,
                                   int64_t block_rows, int64_t g, int64_t D, int64_t q_stride,
                                   int64_t kv_stride, float scale) {
#if HAVE_AVX2_BODIES
    train_forward_avx2(out, q, k, v, seg, scratch, t0, t1, block_rows, g, D, q_stride, kv_stride, scale);
#endif
}

void qlora_attention_train_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                    const float *k, const float *v, const int64_t *seg, float *scratch,
                                    int64_t T, int64_t block_rows, int64_t g, int64_t D, int64_t q_stride,
                                    int64_t kv_stride, float scale) {
#if HAVE_AVX2_BODIES
    train_backward_avx2(dq, dk, dv, dout, q, k, v, seg, scratch, T, block_rows, g, D, q_stride, kv_stride, scale);
#endif
}
