// GEMM with 4-bit weights decoded straight into packed B panels. See nf4gemm.h.
//
// C[m, nc] (+)= A[m, kd] · B[kd, nc], A row-major (the activations, never copied), B read from the
// 4-bit weight W [n, k]:  forward  B = Wᵀ (kd = k, nc = n: B[p, j] = W[j, p]),
//                         backward B = W  (kd = n, nc = k: B[p, j] = W[p, j]).
// Loops (BLIS): thread's column range → NC chunks → KC slices of the reduction (B slice packed as
// 16-column micro-panels [kc][16], zero-padded) → MC-row blocks of A (stay in L2) → micro-panels
// (B micro-panel stays in L1) → 6-row micro-tiles. Packed values are code[nibble] · blockScale, the
// same float32 products as qlora_nf4_dequantize, so the result is an sgemm of the dequantized W up
// to summation order.
#include "nf4gemm.h"
#include "CKernels.h"
#include "kernels_internal.h"
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define QLORA_X86 1
#endif

// The block scale is two float32 roundings (bitsandbytes): no fused multiply-add in the decoding.
// The micro-kernels use explicit FMA intrinsics (AVX2) or separate multiply and add (portable).
#pragma STDC FP_CONTRACT OFF

enum {
    NR = 16,        // micro-tile columns: two ymm of B per reduction step
    MR = 6,         // micro-tile rows: 6 × 2 = 12 accumulators + 2 B + 1 broadcast = 15 of 16 ymm
    KC_MAX = 320,   // reduction slice: a B micro-panel (kc × 16 floats ≤ 20 KiB) stays in the 32 KiB L1D
    MC_MAX = 120,   // A block rows (120 × 320 floats = 150 KiB) and the packed B slice (NC_MAX × KC_MAX,
    NC_MAX = 256,   // 320 KiB) fit together in the 512 KiB L2 (larger NC/MC measured 5–15 % slower)
};

int64_t qlora_nf4_gemm_pack_floats(void) { return (int64_t)KC_MAX * NC_MAX; }

static int gemm_force_portable = 0;
void qlora_nf4_gemm_force_portable(int force) { gemm_force_portable = force; }



static inline int64_t block_of(const qlora_nf4_weight *w, int64_t i, int bshift) {
    return bshift >= 0 ? (i >> bshift) : i / w->blocksize;
}

// Value of flat element i; `cache` holds the last block's scale (runs of one row hit it).
typedef struct { int64_t block; float scale; } scale_cache;
static inline float value_at(const qlora_nf4_weight *w, int64_t i, int bshift, scale_cache *cache) {
    int64_t b = block_of(w, i, bshift);
    if (b != cache->block) { cache->block = b; cache->scale = nf4_block_scale(w, b); }
    uint8_t byte = w->packed[i >> 1];
    int code = (i & 1) ? (byte & 0x0F) : (byte >> 4);
    return w->code[code] * cache->scale;
}

// ---------------------------------------------------------------------------------------------
// Packing, portable (any alignment). dst is one micro-panel [kc][16].

// Forward: dst[p·16 + j] = W[n0 + j, k0 + p] for j < nr, 0 for nr ≤ j < 16.
static void pack_fwd_portable(float *dst, const qlora_nf4_weight *w, int64_t kdim, int64_t n0, int nr,
                              int64_t k0, int64_t kc, int bshift) {
    for (int j = 0; j < NR; j++) {
        if (j >= nr) {
            for (int64_t p = 0; p < kc; p++) dst[p * NR + j] = 0.0f;
            continue;
        }
        scale_cache cache = {-1, 0.0f};
        const int64_t e = (n0 + j) * kdim + k0;
        for (int64_t p = 0; p < kc; p++) dst[p * NR + j] = value_at(w, e + p, bshift, &cache);
    }
}

// Backward: dst[p·16 + j] = W[p0 + p, j0 + j] for j < nr, 0 for nr ≤ j < 16 (W is [·, cols]).
static void pack_bwd_portable(float *dst, const qlora_nf4_weight *w, int64_t cols, int64_t p0, int64_t kc,
                              int64_t j0, int nr, int bshift) {
    for (int64_t p = 0; p < kc; p++) {
        scale_cache cache = {-1, 0.0f};
        const int64_t e = (p0 + p) * cols + j0;
        float *d = dst + p * NR;
        for (int j = 0; j < nr; j++) d[j] = value_at(w, e + j, bshift, &cache);
        for (int j = nr; j < NR; j++) d[j] = 0.0f;
    }
}

// ---------------------------------------------------------------------------------------------
// Micro-kernel, portable: c[i, 0..<16] (+)= Σ_p a[i·lda + p] · b[p·16 + 0..<16], i < mr.

static void kernel_portable(int mr, int64_t kc, const float *a, int64_t lda, const float *b, float *c,
                            int64_t ldc, int acc) {
    float t[MR][NR];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) t[i][j] = 0.0f;
    for (int64_t p = 0; p < kc; p++) {
        const float *bp = b + p * NR;
        for (int i = 0; i < mr; i++) {
            const float av = a[i * lda + p];
            for (int j = 0; j < NR; j++) t[i][j] += av * bp[j];
        }
    }
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < NR; j++) c[i * ldc + j] = acc ? c[i * ldc + j] + t[i][j] : t[i][j];
}

// ---------------------------------------------------------------------------------------------
// AVX2 bodies.

#ifdef QLORA_X86
#define AVX2_TARGET __attribute__((target("avx2,fma,f16c")))

// 8 consecutive weights from the 4 bytes at p (element 2j = high nibble of byte j): the word is
// broadcast, shifted right per lane so lane l's nibble sits in bits 0–3 (vpermps reads bits 0–2) and
// left so the nibble's bit 3 is the sign bit (vblendvps takes the upper 8 table entries).
AVX2_TARGET static inline __m256 decode8(const uint8_t *p, __m256 lo, __m256 hi, __m256i right, __m256i left) {
    int32_t word;
    __builtin_memcpy(&word, p, 4);
    const __m256i v = _mm256_set1_epi32(word);
    const __m256i idx = _mm256_srlv_epi32(v, right);
    const __m256i sgn = _mm256_sllv_epi32(v, left);
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                            _mm256_castsi256_ps(sgn));
}

#define DECODE_CONSTANTS                                                              \
    const __m256 lo = _mm256_loadu_ps(w->code), hi = _mm256_loadu_ps(w->code + 8);    \
    const __m256i right = _mm256_setr_epi32(4, 0, 12, 8, 20, 16, 28, 24);             \
    const __m256i left = _mm256_setr_epi32(24, 28, 16, 20, 8, 12, 0, 4)

AVX2_TARGET static inline void transpose8(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20); r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20); r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31); r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31); r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// Forward packing when kdim % 8 == 0 (then every 8-element run starts on a byte and lies in one
// block): 8 rows × 8 weights decoded, scaled, transposed and stored as 8 rows of the panel. A group
// of fewer than 8 valid rows (n tail) is packed by the portable code.
AVX2_TARGET static void pack_fwd_avx2(float *dst, const qlora_nf4_weight *w, int64_t kdim, int64_t n0, int nr,
                                      int64_t k0, int64_t kc, int bshift) {
    if (kdim % 8 != 0 || kc % 8 != 0 || k0 % 8 != 0 || nr < 8) {
        pack_fwd_portable(dst, w, kdim, n0, nr, k0, kc, bshift);
        return;
    }
    DECODE_CONSTANTS;
    for (int g = 0; g < 2; g++) {
        if (8 * g + 8 > nr) {
            // Rows 8..<nr of the panel (and zeros): the portable packer on a [kc][16] view of columns 8…15.
            for (int64_t p = 0; p < kc; p++)
                for (int j = 8; j < NR; j++) dst[p * NR + j] = 0.0f;
            for (int j = 8; j < nr; j++) {
                scale_cache cache = {-1, 0.0f};
                const int64_t e = (n0 + j) * kdim + k0;
                for (int64_t p = 0; p < kc; p++) dst[p * NR + j] = value_at(w, e + p, bshift, &cache);
            }
            continue;
        }
        int64_t e[8];
        for (int r = 0; r < 8; r++) e[r] = (n0 + 8 * g + r) * kdim + k0;
        for (int64_t p = 0; p < kc; p += 8) {
            __m256 v[8];
            for (int r = 0; r < 8; r++) {
                const int64_t i = e[r] + p;
                const __m256 s = _mm256_set1_ps(nf4_block_scale(w, block_of(w, i, bshift)));
                v[r] = _mm256_mul_ps(decode8(w->packed + (i >> 1), lo, hi, right, left), s);
            }
            transpose8(v);
            float *d = dst + p * NR + 8 * g;
            for (int t = 0; t < 8; t++) _mm256_storeu_ps(d + t * NR, v[t]);
        }
    }
}

// Backward packing: a full 16-column panel of a row is two 8-weight runs (cols % 8 == 0 keeps each
// on a byte and inside one block); other panels use the portable code.
AVX2_TARGET static void pack_bwd_avx2(float *dst, const qlora_nf4_weight *w, int64_t cols, int64_t p0, int64_t kc,
                                      int64_t j0, int nr, int bshift) {
    if (cols % 8 != 0 || j0 % 8 != 0 || nr != NR) {
        pack_bwd_portable(dst, w, cols, p0, kc, j0, nr, bshift);
        return;
    }
    DECODE_CONSTANTS;
    for (int64_t p = 0; p < kc; p++) {
        const int64_t i = (p0 + p) * cols + j0;
        const __m256 s0 = _mm256_set1_ps(nf4_block_scale(w, block_of(w, i, bshift)));
        const __m256 s1 = _mm256_set1_ps(nf4_block_scale(w, block_of(w, i + 8, bshift)));
        const uint8_t *q = w->packed + (i >> 1);
        _mm256_storeu_ps(dst + p * NR, _mm256_mul_ps(decode8(q, lo, hi, right, left), s0));
        _mm256_storeu_ps(dst + p * NR + 8, _mm256_mul_ps(decode8(q + 4, lo, hi, right, left), s1));
    }
}

// 6 × 16 micro-kernel (mr ≤ 6 rows, a compile-time constant in each inlined copy): per reduction
// step two B loads, mr broadcasts of A and 2·mr FMAs into mr × 2 ymm accumulators.
AVX2_TARGET __attribute__((always_inline)) static inline void kernel_avx2_body(
        const int mr, int64_t kc, const float *a, int64_t lda, const float *b, float *c, int64_t ldc, int acc) {
    __m256 c0[MR], c1[MR];
    for (int i = 0; i < mr; i++) {
        c0[i] = _mm256_setzero_ps(); c1[i] = _mm256_setzero_ps();
        // The C tile is touched only after the kc loop: start fetching its (up to 2) lines per row now.
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + NR - 1), _MM_HINT_T0);
    }
    const float *a0 = a, *a3 = a + 3 * lda;
#pragma clang loop unroll_count(4)
    for (int64_t p = 0; p < kc; p++) {
        const __m256 b0 = _mm256_loadu_ps(b + p * NR), b1 = _mm256_loadu_ps(b + p * NR + 8);
        for (int i = 0; i < mr; i++) {
            const float *ai = i < 3 ? a0 + i * lda : a3 + (i - 3) * lda;
            const __m256 av = _mm256_broadcast_ss(ai + p);
            c0[i] = _mm256_fmadd_ps(av, b0, c0[i]);
            c1[i] = _mm256_fmadd_ps(av, b1, c1[i]);
        }
    }
    for (int i = 0; i < mr; i++) {
        float *ci = c + i * ldc;
        if (acc) {
            c0[i] = _mm256_add_ps(c0[i], _mm256_loadu_ps(ci));
            c1[i] = _mm256_add_ps(c1[i], _mm256_loadu_ps(ci + 8));
        }
        _mm256_storeu_ps(ci, c0[i]);
        _mm256_storeu_ps(ci + 8, c1[i]);
    }
}

AVX2_TARGET static void kernel_avx2(int mr, int64_t kc, const float *a, int64_t lda, const float *b, float *c,
                                    int64_t ldc, int acc) {
    switch (mr) {
    case 6: kernel_avx2_body(6, kc, a, lda, b, c, ldc, acc); break;
    case 5: kernel_avx2_body(5, kc, a, lda, b, c, ldc, acc); break;
    case 4: kernel_avx2_body(4, kc, a, lda, b, c, ldc, acc); break;
    case 3: kernel_avx2_body(3, kc, a, lda, b, c, ldc, acc); break;
    case 2: kernel_avx2_body(2, kc, a, lda, b, c, ldc, acc); break;
    default: kernel_avx2_body(1, kc, a, lda, b, c, ldc, acc); break;
    }
}
#endif

// ---------------------------------------------------------------------------------------------
// Driver.

typedef void (*kernel_fn)(int mr, int64_t kc, const float *a, int64_t lda, const float *b, float *c,
                          int64_t ldc, int acc);

// One micro-tile: full-width tiles go straight to C; an nr < 16 tile goes through a 6 × 16 buffer.
static inline void tile(kernel_fn kernel, int mr, int nr, int64_t kc, const float *a, int64_t lda,
                        const float *b, float *c, int64_t ldc, int acc) {
    if (nr == NR) {
        kernel(mr, kc, a, lda, b, c, ldc, acc);
        return;
    }
    float t[MR * NR];
    kernel(mr, kc, a, lda, b, t, NR, 0);
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) c[i * ldc + j] = acc ? c[i * ldc + j] + t[i * NR + j] : t[i * NR + j];
}

static inline int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

// C[m, ncols] (+)= A[m, kd] · B; B micro-panels packed by the direction's packer from W [n, k].
static void gemm(float *c, const float *a, const qlora_nf4_weight *w, int64_t m, int64_t ncols, int64_t kd,
                 int64_t wcols, int forward, int accumulate, float *pack, int thread, int threads) {
    if (m <= 0 || ncols <= 0 || threads <= 0 || thread < 0 || thread >= threads) return;
    const int64_t panels = (ncols + NR - 1) / NR;
    const int64_t c0 = NR * (panels * thread / threads);
    int64_t c1 = NR * (panels * (thread + 1) / threads);
    if (c1 > ncols) c1 = ncols;
    if (c0 >= c1) return;
    if (kd <= 0) {   // empty reduction: C = 0 (or unchanged)
        if (!accumulate)
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = c0; j < c1; j++) c[i * ncols + j] = 0.0f;
        return;
    }
    int avx2 = 0;
    kernel_fn kernel = kernel_portable;
#ifdef QLORA_X86
    if (!gemm_force_portable && qlora_cpu_has_avx2()) { avx2 = 1; kernel = kernel_avx2; }
#endif
    const int bshift = log2_exact(w->blocksize);
    const int64_t kslices = (kd + KC_MAX - 1) / KC_MAX;
    const int64_t kc_nom = round_up((kd + kslices - 1) / kslices, 8);
    const int64_t mblocks = (m + MC_MAX - 1) / MC_MAX;
    const int64_t mc_nom = round_up((m + mblocks - 1) / mblocks, MR);
    for (int64_t jc = c0; jc < c1; jc += NC_MAX) {
        const int64_t nc = c1 - jc < NC_MAX ? c1 - jc : NC_MAX;
        for (int64_t pc = 0; pc < kd; pc += kc_nom) {
            const int64_t kc = kd - pc < kc_nom ? kd - pc : kc_nom;
            for (int64_t jr = 0; jr < nc; jr += NR) {
                const int nr = (int)(nc - jr < NR ? nc - jr : NR);
                float *dst = pack + (jr / NR) * kc * NR;
#ifdef QLORA_X86
                if (avx2) {
                    if (forward) pack_fwd_avx2(dst, w, wcols, jc + jr, nr, pc, kc, bshift);
                    else pack_bwd_avx2(dst, w, wcols, pc, kc, jc + jr, nr, bshift);
                    continue;
                }
#endif
                if (forward) pack_fwd_portable(dst, w, wcols, jc + jr, nr, pc, kc, bshift);
                else pack_bwd_portable(dst, w, wcols, pc, kc, jc + jr, nr, bshift);
            }
            const int acc = accumulate || pc > 0;
            for (int64_t ic = 0; ic < m; ic += mc_nom) {
                const int64_t mc = m - ic < mc_nom ? m - ic : mc_nom;
                for (int64_t jr = 0; jr < nc; jr += NR) {
                    const int nr = (int)(nc - jr < NR ? nc - jr : NR);
                    const float *b = pack + (jr / NR) * kc * NR;
                    for (int64_t ir = 0; ir < mc; ir += MR) {
                        const int mr = (int)(mc - ir < MR ? mc - ir : MR);
                        const int64_t row = ic + ir;
                        tile(kernel, mr, nr, kc, a + row * kd + pc, kd, b, c + row * ncols + jc + jr, ncols, acc);
                    }
                }
            }
        }
    }
}

void qlora_nf4_gemm_forward(float *out, const float *inp, const qlora_nf4_weight *w, int64_t m, int64_t n,
                            int64_t k, int accumulate, float *pack, int thread, int threads) {
    gemm(out, inp, w, m, n, k, k, 1, accumulate, pack, thread, threads);
}

void qlora_nf4_gemm_backward_input(float *d_inp, const float *d_out, const qlora_nf4_weight *w, int64_t m,
                                   int64_t n, int64_t k, int accumulate, float *pack, int thread, int threads) {
    gemm(d_inp, d_out, w, m, k, n, k, 0, accumulate, pack, thread, threads);
}
