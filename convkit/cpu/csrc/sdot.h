/* Weight gradients as dot products: both operands run along k.
 *
 * The weight gradient of a conv is gw[f, tap] = sum over (image, output position) of
 * gy[f, pos] * x_tap[pos]: a GEMM whose k runs along the output positions, where grad_y and the
 * input's taps are both stored k-contiguous.  A packed GEMM must transpose both into panels (and
 * the taps must first be copied out by im2col); for a conv with few taps and many positions --
 * a 7x7 stem has 147 taps and 12544 positions per image -- the packing and im2col cost half as
 * much as the arithmetic (bench/RESULTS.md, "stem_224").
 *
 * Here an 8 x 3 tile of (filter, tap) pairs keeps 24 zmm accumulators, each summing 16 lanes of
 * positions: per 16 positions it loads 8 rows of grad_y (copied block by block into an aligned
 * buffer, ck_sdot_copy) and 3 tap rows read in place (in the forward's phase planes, at a fixed
 * offset per tap: no im2col) and does 24 multiply-adds; 8 x 3 divides the usual 64 filters and
 * 147 taps of a stem.  The lane sums go into the task's buffer of 16-float partials per pair,
 * added once per pass over a block of rows (no horizontal sum in the loop) and reduced once at
 * the end.  One core: 140-150 GFLOP/s in the loop (peak ~177), 105-115 for a whole stem_224
 * weight gradient (its 25.7 MB of grad_y come from memory).
 *
 * The order of every sum is fixed by the loop structure (rows ascending, 16 lanes; the caller
 * adds its tasks' partials and lanes in a fixed order), so the result is the same on every run,
 * whichever thread computes a pair.
 */
#ifndef CONVKIT_SDOT_H
#define CONVKIT_SDOT_H

#include "sgemm.h"

#if CK_SGEMM_BUILT

#define CK_DOT_MR 8
#define CK_DOT_NR 3

/* part[(i*n + j)*16 + l] += sum over r < R and w < wn with w % 16 == l of
 *     a[i*lda + r*ars + w] * b[boff[j] + r*brs + w]
 * for i < m, j < n (a: m rows of R runs of wn floats; b: n tap rows at offsets boff). */
CK_TARGET static void ck_sdot_accum(ptrdiff_t m, ptrdiff_t n, ptrdiff_t R, ptrdiff_t wn,
                                    const float *a, ptrdiff_t lda, ptrdiff_t ars,
                                    const float *b, const ptrdiff_t *boff, ptrdiff_t brs,
                                    float *part, const float *pf, ptrdiff_t pf_rows,
                                    ptrdiff_t pf_len, ptrdiff_t pf_ld)
{
    const ptrdiff_t wv = wn & ~(ptrdiff_t)15;
    const __mmask16 tail = ck_mask(wn - wv);
    /* pf (when not NULL): the next block the caller reads (pf_rows runs of pf_len floats,
     * pf_ld apart), prefetched into L2 a few lines per tile so that its reads from memory
     * overlap this block's arithmetic instead of stalling the copy (13% of a stem_224
     * gradient on one core) */
    const ptrdiff_t pf_lines_row = (pf_len + 15) / 16;
    const ptrdiff_t pf_lines = pf != NULL ? pf_rows * pf_lines_row : 0;
    const ptrdiff_t tiles = ((m + CK_DOT_MR - 1) / CK_DOT_MR)
                            * ((n + CK_DOT_NR - 1) / CK_DOT_NR);
    const ptrdiff_t pf_step = (pf_lines + tiles - 1) / (tiles > 0 ? tiles : 1);
    ptrdiff_t pf_next = 0;
    for (ptrdiff_t i0 = 0; i0 < m; i0 += CK_DOT_MR) {
        const ptrdiff_t mr = m - i0 < CK_DOT_MR ? m - i0 : CK_DOT_MR;
        const float *ar[CK_DOT_MR];
        for (int i = 0; i < CK_DOT_MR; i++)  /* rows past m repeat the last (results dropped) */
            ar[i] = a + (i0 + (i < mr ? i : mr - 1)) * lda;
        for (ptrdiff_t j0 = 0; j0 < n; j0 += CK_DOT_NR) {
            const ptrdiff_t nr = n - j0 < CK_DOT_NR ? n - j0 : CK_DOT_NR;
            for (ptrdiff_t q = 0; q < pf_step && pf_next < pf_lines; q++, pf_next++)
                _mm_prefetch((const char *)(pf + (pf_next / pf_lines_row) * pf_ld
                                            + (pf_next % pf_lines_row) * 16), _MM_HINT_T1);
            const float *b0 = b + boff[j0];
            const float *b1 = b + boff[j0 + (nr > 1 ? 1 : 0)];
            const float *b2 = b + boff[j0 + (nr > 2 ? 2 : nr - 1)];
            __m512 c[CK_DOT_MR][CK_DOT_NR];
#pragma GCC unroll 8
            for (int i = 0; i < CK_DOT_MR; i++)
                c[i][0] = c[i][1] = c[i][2] = _mm512_setzero_ps();
            for (ptrdiff_t r = 0; r < R; r++) {
                const ptrdiff_t ao = r * ars, bo = r * brs;
                ptrdiff_t w = 0;
                for (; w < wv; w += 16) {
                    const __m512 v0 = _mm512_loadu_ps(b0 + bo + w);
                    const __m512 v1 = _mm512_loadu_ps(b1 + bo + w);
                    const __m512 v2 = _mm512_loadu_ps(b2 + bo + w);
#pragma GCC unroll 8
                    for (int i = 0; i < CK_DOT_MR; i++) {
                        __m512 u = _mm512_loadu_ps(ar[i] + ao + w);
                        CK_AVX512_PIN(u);  /* one load, not one per use (27 -> 11) */
                        c[i][0] = _mm512_fmadd_ps(u, v0, c[i][0]);
                        c[i][1] = _mm512_fmadd_ps(u, v1, c[i][1]);
                        c[i][2] = _mm512_fmadd_ps(u, v2, c[i][2]);
                    }
                }
                if (tail) {
                    const __m512 v0 = _mm512_maskz_loadu_ps(tail, b0 + bo + w);
                    const __m512 v1 = _mm512_maskz_loadu_ps(tail, b1 + bo + w);
                    const __m512 v2 = _mm512_maskz_loadu_ps(tail, b2 + bo + w);
#pragma GCC unroll 8
                    for (int i = 0; i < CK_DOT_MR; i++) {
                        const __m512 u = _mm512_maskz_loadu_ps(tail, ar[i] + ao + w);
                        c[i][0] = _mm512_fmadd_ps(u, v0, c[i][0]);
                        c[i][1] = _mm512_fmadd_ps(u, v1, c[i][1]);
                        c[i][2] = _mm512_fmadd_ps(u, v2, c[i][2]);
                    }
                }
            }
#pragma GCC unroll 8
            for (int i = 0; i < CK_DOT_MR; i++) {
                if (i >= mr)
                    break;
                float *p = part + ((i0 + i) * n + j0) * 16;
#pragma GCC unroll 3
                for (int j = 0; j < CK_DOT_NR; j++)
                    if (j < nr)
                        _mm512_storeu_ps(p + j * 16,
                                         _mm512_add_ps(_mm512_loadu_ps(p + j * 16), c[i][j]));
            }
        }
    }
}

/* dst[i*R*ds + r*ds + w] = a[i*lda + r*ars + w] for i < m, r < R, w < wn: a block of grad_y
 * copied to a 64-byte aligned buffer (dst aligned, ds a multiple of 16), so that the 8 row
 * loads per step of ck_sdot_accum do not each straddle two cache lines (numpy's arrays are
 * 16-byte aligned: 105 -> 140 GFLOP/s on one core for stem_224).  When sums is not NULL it
 * also adds each row's values into its 16-lane partial sums[i*16 + l] (lane l = w % 16, as in
 * the copy's source, so the sums do not depend on where grad_y sits in memory). */
CK_TARGET static void ck_sdot_copy(ptrdiff_t m, ptrdiff_t R, ptrdiff_t wn, const float *a,
                                   ptrdiff_t lda, ptrdiff_t ars, float *dst, ptrdiff_t ds,
                                   float *sums)
{
    const ptrdiff_t wv = wn & ~(ptrdiff_t)15;
    const __mmask16 tail = ck_mask(wn - wv);
    for (ptrdiff_t i = 0; i < m; i++) {
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
        for (ptrdiff_t r = 0; r < R; r++) {
            const float *p = a + i * lda + r * ars;
            float *d = dst + (i * R + r) * ds;
            ptrdiff_t w = 0;
            for (; w + 32 <= wv; w += 32) {
                const __m512 v0 = _mm512_loadu_ps(p + w), v1 = _mm512_loadu_ps(p + w + 16);
                _mm512_store_ps(d + w, v0);
                _mm512_store_ps(d + w + 16, v1);
                s0 = _mm512_add_ps(s0, v0);
                s1 = _mm512_add_ps(s1, v1);
            }
            if (w < wv) {
                const __m512 v0 = _mm512_loadu_ps(p + w);
                _mm512_store_ps(d + w, v0);
                s0 = _mm512_add_ps(s0, v0);
                w += 16;
            }
            if (tail) {
                const __m512 v1 = _mm512_maskz_loadu_ps(tail, p + w);
                _mm512_store_ps(d + w, v1);
                s1 = _mm512_add_ps(s1, v1);
            }
        }
        if (sums != NULL)
            _mm512_storeu_ps(sums + i * 16, _mm512_add_ps(_mm512_loadu_ps(sums + i * 16),
                                                          _mm512_add_ps(s0, s1)));
    }
}

#else  /* no AVX-512 build */

static void ck_sdot_accum(ptrdiff_t m, ptrdiff_t n, ptrdiff_t R, ptrdiff_t wn, const float *a,
                          ptrdiff_t lda, ptrdiff_t ars, const float *b, const ptrdiff_t *boff,
                          ptrdiff_t brs, float *part, const float *pf, ptrdiff_t pf_rows,
                          ptrdiff_t pf_len, ptrdiff_t pf_ld)
{
    (void)m; (void)n; (void)R; (void)wn; (void)a; (void)lda; (void)ars; (void)b; (void)boff;
    (void)brs; (void)part; (void)pf; (void)pf_rows; (void)pf_len; (void)pf_ld;
}

static void ck_sdot_copy(ptrdiff_t m, ptrdiff_t R, ptrdiff_t wn, const float *a, ptrdiff_t lda,
                         ptrdiff_t ars, float *dst, ptrdiff_t ds, float *sums)
{
    (void)m; (void)R; (void)wn; (void)a; (void)lda; (void)ars; (void)dst; (void)ds; (void)sums;
}

#endif
#endif
