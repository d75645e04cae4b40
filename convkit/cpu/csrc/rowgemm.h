/* A float32 GEMM whose B rows sit at arbitrary offsets (AVX2 + FMA), for the sub-pixel grad_x
 * (convkit/cpu/_conv_phases.pyx conv2d_grad_x_subpixel): B row k is b + boff[k], so the taps of
 * a padded slab of grad_y are read in place -- no column matrix, no BLAS packing.
 *
 *   out[p*ldo + j] = sum over k = 0 .. K-1, in order, of wt[(p/4)*4*K + 4*k + p%4] * b[boff[k] + j]
 *
 * for p < P (a multiple of 4) and j < L: wt holds the weights in 4-row panels, k-major, so a
 * panel's 4 weights of tap k are one 16-byte load.  Each output is one chain of fused
 * multiply-adds over k, the same whatever block or thread computes it.  A tile is 4 rows x 24
 * columns (12 accumulators); for each 24-column block every panel reads the block's K rows of
 * B (24*K floats: L1 for K <= 256) and streams its own weights; the last L % 24 columns go 8 at
 * a time over 8 rows.  Reads b[boff[k] + j] for j < L only (the tail by masked loads).
 *
 * ck_rowgemm_f returns 0, doing nothing, where the CPU lacks AVX2 or FMA (or on another
 * architecture): the caller then takes the BLAS path. */
#ifndef CK_ROWGEMM_H
#define CK_ROWGEMM_H

#include <stddef.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define CK_RG_TARGET __attribute__((target("avx2,fma")))



/* row r of a panel: its weight of tap k times 1 or 3 column vectors */
#define CK_RG_FMA3(r, a0, a1, a2)                                                               \
    do {                                                                                        \
        const __m256 wr = _mm256_broadcast_ss(w + 4 * k + (r));                                 \
        a0 = _mm256_fmadd_ps(wr, x0, a0);                                                       \
        a1 = _mm256_fmadd_ps(wr, x1, a1);                                                       \
        a2 = _mm256_fmadd_ps(wr, x2, a2);                                                       \
    } while (0)
#define CK_RG_STORE3(r, a0, a1, a2)                                                             \
    do {                                                                                        \
        _mm256_storeu_ps(o + (r) * ldo, a0);                                                    \
        _mm256_storeu_ps(o + (r) * ldo + 8, a1);                                                \
        _mm256_storeu_ps(o + (r) * ldo + 16, a2);                                               \
    } while (0)
#define CK_RG_FMA4(wp, a0, a1, a2, a3)                                                          \
    do {                                                                                        \
        a0 = _mm256_fmadd_ps(_mm256_broadcast_ss((wp) + 4 * k), x, a0);                         \
        a1 = _mm256_fmadd_ps(_mm256_broadcast_ss((wp) + 4 * k + 1), x, a1);                     \
        a2 = _mm256_fmadd_ps(_mm256_broadcast_ss((wp) + 4 * k + 2), x, a2);                     \
        a3 = _mm256_fmadd_ps(_mm256_broadcast_ss((wp) + 4 * k + 3), x, a3);                     \
    } while (0)
#define CK_RG_MSTORE4(r, a0, a1, a2, a3)                                                        \
    do {                                                                                        \
        _mm256_maskstore_ps(o + (r) * ldo, mask, a0);                                           \
        _mm256_maskstore_ps(o + ((r) + 1) * ldo, mask, a1);                                     \
        _mm256_maskstore_ps(o + ((r) + 2) * ldo, mask, a2);                                     \
        _mm256_maskstore_ps(o + ((r) + 3) * ldo, mask, a3);                                     \
    } while (0)

/* one 4-row panel, columns [j, j + 24), taps [0, K) of w / boff: twelve accumulators, named
 * (an array of them is kept in memory by GCC, a store per multiply-add); acc: go on from the
 * sums already in o (a float32 chain stored and reloaded is the same chain) */
CK_RG_TARGET static inline void ck_rg_tile3(ptrdiff_t K, const float *w, const float *b,
                                            const ptrdiff_t *boff, float *o, ptrdiff_t ldo,
                                            int acc)
{
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
    __m256 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
    if (acc) {
        a00 = _mm256_loadu_ps(o), a01 = _mm256_loadu_ps(o + 8), a02 = _mm256_loadu_ps(o + 16);
        a10 = _mm256_loadu_ps(o + ldo), a11 = _mm256_loadu_ps(o + ldo + 8);
        a12 = _mm256_loadu_ps(o + ldo + 16);
        a20 = _mm256_loadu_ps(o + 2 * ldo), a21 = _mm256_loadu_ps(o + 2 * ldo + 8);
        a22 = _mm256_loadu_ps(o + 2 * ldo + 16);
        a30 = _mm256_loadu_ps(o + 3 * ldo), a31 = _mm256_loadu_ps(o + 3 * ldo + 8);
        a32 = _mm256_loadu_ps(o + 3 * ldo + 16);
    }
    for (ptrdiff_t k = 0; k < K; ++k) {
        const float *bk = b + boff[k];
        const __m256 x0 = _mm256_loadu_ps(bk), x1 = _mm256_loadu_ps(bk + 8),
                     x2 = _mm256_loadu_ps(bk + 16);
        CK_RG_FMA3(0, a00, a01, a02);
        CK_RG_FMA3(1, a10, a11, a12);
        CK_RG_FMA3(2, a20, a21, a22);
        CK_RG_FMA3(3, a30, a31, a32);
    }
    CK_RG_STORE3(0, a00, a01, a02);
    CK_RG_STORE3(1, a10, a11, a12);
    CK_RG_STORE3(2, a20, a21, a22);
    CK_RG_STORE3(3, a30, a31, a32);
}

/* columns [j, j + n), n <= 8 (masked where n < 8): R = 4 or 8 rows (one or two panels, w0 and
 * w1) -- eight accumulators keep the FMA pipes busy where 4 would wait on their latency */
CK_RG_TARGET static inline void ck_rg_narrow(ptrdiff_t K, int R, const float *w0, const float *w1,
                                             const float *b, const ptrdiff_t *boff, float *o,
                                             ptrdiff_t ldo, int n, int acc)
{
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    __m256 a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    if (acc) {
        a0 = _mm256_maskload_ps(o, mask), a1 = _mm256_maskload_ps(o + ldo, mask);
        a2 = _mm256_maskload_ps(o + 2 * ldo, mask), a3 = _mm256_maskload_ps(o + 3 * ldo, mask);
        if (R == 8) {
            a4 = _mm256_maskload_ps(o + 4 * ldo, mask), a5 = _mm256_maskload_ps(o + 5 * ldo, mask);
            a6 = _mm256_maskload_ps(o + 6 * ldo, mask), a7 = _mm256_maskload_ps(o + 7 * ldo, mask);
        }
    }
    for (ptrdiff_t k = 0; k < K; ++k) {
        const __m256 x = n == 8 ? _mm256_loadu_ps(b + boff[k])
                                : _mm256_maskload_ps(b + boff[k], mask);
        CK_RG_FMA4(w0, a0, a1, a2, a3);
        if (R == 8)
            CK_RG_FMA4(w1, a4, a5, a6, a7);
    }
    CK_RG_MSTORE4(0, a0, a1, a2, a3);
    if (R == 8)
        CK_RG_MSTORE4(4, a4, a5, a6, a7);
}

/* KC: taps per pass (K: one pass); a longer K is summed in passes, each going on from the
 * stored sums -- the same chain, so the same bits as one pass -- and each pass runs every
 * column block, so its KC rows of B are read once from memory (K = 0: one pass, zeros) */
CK_RG_TARGET static void ck_rowgemm_avx2(ptrdiff_t P, ptrdiff_t L, ptrdiff_t K, const float *wt,
                                         const float *b, const ptrdiff_t *boff, float *out,
                                         ptrdiff_t ldo, ptrdiff_t KC)
{
    ptrdiff_t k0 = 0;
    do {
        const ptrdiff_t kc = K - k0 < KC ? K - k0 : KC;
        const int acc = k0 > 0;
        ptrdiff_t j = 0;
        for (; j + 24 <= L; j += 24)
            for (ptrdiff_t p = 0; p < P; p += 4)
                ck_rg_tile3(kc, wt + p * K + 4 * k0, b + j, boff + k0, out + p * ldo + j, ldo,
                            acc);
        for (; j < L; j += 8) {
            const int n = L - j < 8 ? (int)(L - j) : 8;
            for (ptrdiff_t p = 0; p < P; p += 8) {
                const int R = P - p >= 8 ? 8 : 4;
                ck_rg_narrow(kc, R, wt + p * K + 4 * k0, wt + (p + 4) * K + 4 * k0, b + j,
                             boff + k0, out + p * ldo + j, ldo, n, acc);
            }
        }
        k0 += KC;
    } while (k0 < K);
}

static int ck_rowgemm_available(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return known;
}

static int ck_rowgemm_f(ptrdiff_t P, ptrdiff_t L, ptrdiff_t K, const float *wt, const float *b,
                        const ptrdiff_t *boff, float *out, ptrdiff_t ldo)
{
    if (P % 4 != 0 || !ck_rowgemm_available())
        return 0;
    ck_rowgemm_avx2(P, L, K, wt, b, boff, out, ldo, K > 0 ? K : 1);
    return 1;
}

/* ck_rowgemm_f in passes of kc taps (kc >= 1): a pass's kc B rows stay in L1 while every
 * panel and column block reads them, for a K whose rows would not (the weight gradient's K is
 * the batch's positions).  The same bits as ck_rowgemm_f. */
static int ck_rowgemm_kc_f(ptrdiff_t P, ptrdiff_t L, ptrdiff_t K, const float *wt, const float *b,
                           const ptrdiff_t *boff, float *out, ptrdiff_t ldo, ptrdiff_t kc)
{
    if (P % 4 != 0 || kc < 1 || !ck_rowgemm_available())
        return 0;
    ck_rowgemm_avx2(P, L, K, wt, b, boff, out, ldo, kc);
    return 1;
}

#else

static int ck_rowgemm_available(void) { return 0; }

static int ck_rowgemm_f(ptrdiff_t P, ptrdiff_t L, ptrdiff_t K, const float *wt, const float *b,
                        const ptrdiff_t *boff, float *out, ptrdiff_t ldo)
{
    (void)P; (void)L; (void)K; (void)wt; (void)b; (void)boff; (void)out; (void)ldo;
    return 0;
}

static int ck_rowgemm_kc_f(ptrdiff_t P, ptrdiff_t L, ptrdiff_t K, const float *wt, const float *b,
                           const ptrdiff_t *boff, float *out, ptrdiff_t ldo, ptrdiff_t kc)
{
    (void)kc;
    return ck_rowgemm_f(P, L, K, wt, b, boff, out, ldo);
}

#endif
#endif
