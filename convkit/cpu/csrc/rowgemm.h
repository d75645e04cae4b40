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
#include "cpufeat.h"

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
 * sums already in o (a float32 chain stored and reloaded is the same chain).  Not inlined:
 * inlined into ck_rg_pass with per-panel bases, GCC kept the B pointer's parts on the stack
 * (three more loads per tap) */
CK_RG_TARGET __attribute__((noinline)) static void ck_rg_tile3(ptrdiff_t K, const float *w, const float *b,
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
/* one pass: taps [k0, k0 + kc) of K, every panel and column block, going on from the sums in
 * out when k0 > 0; pbase (NULL: none): panel p/4 reads B from b + pbase[p/4] (the sub-pixel
 * grad_x's phases, each its own window shift) */
CK_RG_TARGET static void ck_rg_pass(ptrdiff_t P, ptrdiff_t L, ptrdiff_t K, ptrdiff_t k0,
                                    ptrdiff_t kc, const float *wt, const float *b,
                                    const ptrdiff_t *boff, float *out, ptrdiff_t ldo,
                                    const ptrdiff_t *pbase, int acc)
{
    ptrdiff_t j = 0;
    for (; j + 24 <= L; j += 24)
        for (ptrdiff_t p = 0; p < P; p += 4)
            ck_rg_tile3(kc, wt + p * K + 4 * k0, b + (pbase ? pbase[p / 4] : 0) + j, boff + k0,
                        out + p * ldo + j, ldo, acc);
    for (; j < L; j += 8) {
        const int n = L - j < 8 ? (int)(L - j) : 8;
        for (ptrdiff_t p = 0; p < P;) {
            const ptrdiff_t s0 = pbase ? pbase[p / 4] : 0;
            /* two panels share a B load where they read the same B */
            const int R = P - p >= 8 && (!pbase || pbase[p / 4 + 1] == s0) ? 8 : 4;
            ck_rg_narrow(kc, R, wt + p * K + 4 * k0, wt + (p + 4) * K + 4 * k0, b + s0 + j,
                         boff + k0, out + p * ldo + j, ldo, n, acc);
            p += R;
        }
    }
}

CK_RG_TARGET static void ck_rowgemm_avx2(ptrdiff_t P, ptrdiff_t L, ptrdiff_t K, const float *wt,
                                         const float *b, const ptrdiff_t *boff, float *out,
                                         ptrdiff_t ldo, ptrdiff_t KC, const ptrdiff_t *pbase)
{
    ptrdiff_t k0 = 0;
    do {
        ck_rg_pass(P, L, K, k0, K - k0 < KC ? K - k0 : KC, wt, b, boff, out, ldo, pbase,
                   k0 > 0);
        k0 += KC;
    } while (k0 < K);
}

/* dst[w*C + c] = x[c*ldx + w] for w < W, c < C (an image row of C channels, ldx apart, to
 * channels-last): 8 x 8 blocks by register transposes, the edges one value at a time.  The
 * strided gather one value at a time took an eighth of convt_28's grad_weight.  AVX2 alone
 * (no FMA): deform_conv.h's bordered channels-last rows use it too. */
__attribute__((target("avx2"))) static void ck_rg_to_cl(const float *x, ptrdiff_t ldx,
                                                        ptrdiff_t C, ptrdiff_t W, float *dst)
{
    ptrdiff_t c = 0;
    for (; c + 8 <= C; c += 8) {
        ptrdiff_t w = 0;
        for (; w + 8 <= W; w += 8) {
            const float *s = x + c * ldx + w;
            const __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + ldx);
            const __m256 r2 = _mm256_loadu_ps(s + 2 * ldx), r3 = _mm256_loadu_ps(s + 3 * ldx);
            const __m256 r4 = _mm256_loadu_ps(s + 4 * ldx), r5 = _mm256_loadu_ps(s + 5 * ldx);
            const __m256 r6 = _mm256_loadu_ps(s + 6 * ldx), r7 = _mm256_loadu_ps(s + 7 * ldx);
            const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
            const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
            const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
            const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
            const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
            const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
            const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
            const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
            float *d = dst + w * C + c;
            _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
            _mm256_storeu_ps(d + C, _mm256_permute2f128_ps(u1, u5, 0x20));
            _mm256_storeu_ps(d + 2 * C, _mm256_permute2f128_ps(u2, u6, 0x20));
            _mm256_storeu_ps(d + 3 * C, _mm256_permute2f128_ps(u3, u7, 0x20));
            _mm256_storeu_ps(d + 4 * C, _mm256_permute2f128_ps(u0, u4, 0x31));
            _mm256_storeu_ps(d + 5 * C, _mm256_permute2f128_ps(u1, u5, 0x31));
            _mm256_storeu_ps(d + 6 * C, _mm256_permute2f128_ps(u2, u6, 0x31));
            _mm256_storeu_ps(d + 7 * C, _mm256_permute2f128_ps(u3, u7, 0x31));
        }
        for (; w < W; ++w)
            for (ptrdiff_t i = 0; i < 8; ++i)
                dst[w * C + c + i] = x[(c + i) * ldx + w];
    }
    for (; c < C; ++c)
        for (ptrdiff_t w = 0; w < W; ++w)
            dst[w * C + c] = x[c * ldx + w];
}

/* dst[4*i + f] = s[f*lds + i] for i < n, f < 4: four rows into rowgemm's 4-row panel order
 * (8 positions at a time by register transposes). */
__attribute__((target("avx2"))) static void ck_rg_panel4(const float *s, ptrdiff_t lds,
                                                         ptrdiff_t n, float *dst)
{
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 r0 = _mm256_loadu_ps(s + i), r1 = _mm256_loadu_ps(s + lds + i);
        const __m256 r2 = _mm256_loadu_ps(s + 2 * lds + i), r3 = _mm256_loadu_ps(s + 3 * lds + i);
        const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
        const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
        /* a position's 4 filters: u0 = i0 | i4, u1 = i1 | i5, u2 = i2 | i6, u3 = i3 | i7 */
        const __m256 u0 = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t0),
                                                              _mm256_castps_pd(t2)));
        const __m256 u1 = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t0),
                                                              _mm256_castps_pd(t2)));
        const __m256 u2 = _mm256_castpd_ps(_mm256_unpacklo_pd(_mm256_castps_pd(t1),
                                                              _mm256_castps_pd(t3)));
        const __m256 u3 = _mm256_castpd_ps(_mm256_unpackhi_pd(_mm256_castps_pd(t1),
                                                              _mm256_castps_pd(t3)));
        float *d = dst + 4 * i;
        _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u1, 0x20));
        _mm256_storeu_ps(d + 8, _mm256_permute2f128_ps(u2, u3, 0x20));
        _mm256_storeu_ps(d + 16, _mm256_permute2f128_ps(u0, u1, 0x31));
        _mm256_storeu_ps(d + 24, _mm256_permute2f128_ps(u2, u3, 0x31));
    }
    for (; i < n; ++i)
        for (ptrdiff_t f = 0; f < 4; ++f)
            dst[4 * i + f] = s[f * lds + i];
}

/* dst[2j] = s0[j] (+ bias) for j < n0, dst[2j + 1] = s1[j] (+ bias) for j < n1: a row of the
 * sub-pixel grad_x from its two column phases, 16 values per step (unpack + lane permute), the
 * bias added as the scalar loop adds it (one float32 add per value; none where !has_bias, so
 * a -0 stays -0). */
CK_RG_TARGET static void ck_rg_interleave2(float *dst, const float *s0, const float *s1,
                                           ptrdiff_t n0, ptrdiff_t n1, int has_bias, float bias)
{
    const ptrdiff_t m = n0 < n1 ? n0 : n1;
    const __m256 bv = _mm256_set1_ps(bias);
    ptrdiff_t j = 0;
    for (; j + 8 <= m; j += 8) {
        __m256 a = _mm256_loadu_ps(s0 + j), b = _mm256_loadu_ps(s1 + j);
        if (has_bias) {
            a = _mm256_add_ps(a, bv);
            b = _mm256_add_ps(b, bv);
        }
        const __m256 lo = _mm256_unpacklo_ps(a, b), hi = _mm256_unpackhi_ps(a, b);
        _mm256_storeu_ps(dst + 2 * j, _mm256_permute2f128_ps(lo, hi, 0x20));
        _mm256_storeu_ps(dst + 2 * j + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
    }
    for (ptrdiff_t i = j; i < n0; ++i)
        dst[2 * i] = has_bias ? s0[i] + bias : s0[i];
    for (ptrdiff_t i = j; i < n1; ++i)
        dst[2 * i + 1] = has_bias ? s1[i] + bias : s1[i];
}

/* dst (nr x Wp) = rows [r0, r0 + nr), columns [c0, c0 + Wp) of the plane x (H x W), 0 outside
 * it: the sub-pixel grad_x's slab rows by vector moves (a memcpy and two memsets per row of 28
 * values cost more than the copy). */
CK_RG_TARGET static void ck_rg_pad_rows(const float *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t r0,
                                        ptrdiff_t nr, ptrdiff_t c0, ptrdiff_t Wp, float *dst)
{
    const ptrdiff_t lo = c0 < 0 ? (-c0 < Wp ? -c0 : Wp) : 0;
    ptrdiff_t up = W - c0 < Wp ? W - c0 : Wp;
    if (up < lo)
        up = lo;
    for (ptrdiff_t r = 0; r < nr; ++r) {
        float *d = dst + r * Wp;
        if (r0 + r < 0 || r0 + r >= H || up - lo < 8) {
            for (ptrdiff_t j = 0; j < Wp; ++j)
                d[j] = r0 + r >= 0 && r0 + r < H && j >= lo && j < up
                           ? x[(r0 + r) * W + c0 + j] : 0.0f;
            continue;
        }
        const float *src = x + (r0 + r) * W + c0;
        for (ptrdiff_t j = 0; j < lo; ++j)
            d[j] = 0.0f;
        ptrdiff_t j = lo;
        for (; j + 8 <= up; j += 8)
            _mm256_storeu_ps(d + j, _mm256_loadu_ps(src + j));
        if (j < up)             /* the last 8 again, overlapping (up - lo >= 8) */
            _mm256_storeu_ps(d + up - 8, _mm256_loadu_ps(src + up - 8));
        for (j = up; j < Wp; ++j)
            d[j] = 0.0f;
    }
}

static int ck_rowgemm_available(void)
{
    return ck_cpu_has_avx2_fma();
}

static int ck_rowgemm_f(ptrdiff_t P, ptrdiff_t L, ptrdiff_t K, const float *wt, const float *b,
                        const ptrdiff_t *boff, float *out, ptrdiff_t ldo)
{
    if (P % 4 != 0 || !ck_rowgemm_available())
        return 0;
    ck_rowgemm_avx2(P, L, K, wt, b, boff, out, ldo, K > 0 ? K : 1, NULL);
    return 1;
}

/* ck_rowgemm_kc_f with panel p/4 reading B from b + pbase[p/4]:
 *   out[p*ldo + j] = sum over k, in order, of wt[...] * b[pbase[p/4] + boff[k] + j]
 * (each output the same chain as ck_rowgemm_f's on B shifted by its panel's base; the
 * panels' shifted B rows of a column block take more of L1: kc taps per pass keep them there). */
static int ck_rowgemm_shift_f(ptrdiff_t P, ptrdiff_t L, ptrdiff_t K, const float *wt,
                              const float *b, const ptrdiff_t *boff, const ptrdiff_t *pbase,
                              float *out, ptrdiff_t ldo, ptrdiff_t kc)
{
    if (P % 4 != 0 || kc < 1 || !ck_rowgemm_available())
        return 0;
    ck_rowgemm_avx2(P, L, K, wt, b, boff, out, ldo, kc, pbase);
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
    ck_rowgemm_avx2(P, L, K, wt, b, boff, out, ldo, kc, NULL);
    return 1;
}

/* A pass over taps [k0, k0 + kc) alone (0 < kc, k0 + kc <= K), going on from the sums in out
 * where acc (else from zero) whatever k0: a chain longer than one wt / boff (the weight
 * gradient's batch, one image's panels and offsets at a time) is these passes in order. */
static int ck_rowgemm_pass_acc_f(ptrdiff_t P, ptrdiff_t L, ptrdiff_t K, ptrdiff_t k0,
                                 ptrdiff_t kc, int acc, const float *wt, const float *b,
                                 const ptrdiff_t *boff, float *out, ptrdiff_t ldo)
{
    if (P % 4 != 0 || kc < 1 || k0 < 0 || k0 + kc > K || !ck_rowgemm_available())
        return 0;
    ck_rg_pass(P, L, K, k0, kc, wt, b, boff, out, ldo, NULL, acc);
    return 1;
}

/* ck_rowgemm_kc_f's pass over taps [k0, k0 + kc) alone, going on from the sums in out when
 * k0 > 0: passes in order over [0, K) give ck_rowgemm_f's bits, whatever else runs between
 * them (the weight gradient interleaves kernel rows pass by pass). */
static int ck_rowgemm_pass_f(ptrdiff_t P, ptrdiff_t L, ptrdiff_t K, ptrdiff_t k0, ptrdiff_t kc,
                             const float *wt, const float *b, const ptrdiff_t *boff, float *out,
                             ptrdiff_t ldo)
{
    return ck_rowgemm_pass_acc_f(P, L, K, k0, kc, k0 > 0, wt, b, boff, out, ldo);
}


#else

static int ck_rowgemm_pass_acc_f(ptrdiff_t P, ptrdiff_t L, ptrdiff_t K, ptrdiff_t k0,
                                 ptrdiff_t kc, int acc, const float *wt, const float *b,
                                 const ptrdiff_t *boff, float *out, ptrdiff_t ldo)
{
    (void)P; (void)L; (void)K; (void)k0; (void)kc; (void)acc; (void)wt; (void)b; (void)boff;
    (void)out; (void)ldo;
    return 0;
}

static int ck_rowgemm_pass_f(ptrdiff_t P, ptrdiff_t L, ptrdiff_t K, ptrdiff_t k0, ptrdiff_t kc,
                             const float *wt, const float *b, const ptrdiff_t *boff, float *out,
                             ptrdiff_t ldo)
{
    (void)P; (void)L; (void)K; (void)k0; (void)kc; (void)wt; (void)b; (void)boff; (void)out;
    (void)ldo;
    return 0;
}

static void ck_rg_to_cl(const float *x, ptrdiff_t ldx, ptrdiff_t C, ptrdiff_t W, float *dst)
{
    for (ptrdiff_t w = 0; w < W; ++w)
        for (ptrdiff_t c = 0; c < C; ++c)
            dst[w * C + c] = x[c * ldx + w];
}

static void ck_rg_panel4(const float *s, ptrdiff_t lds, ptrdiff_t n, float *dst)
{
    for (ptrdiff_t i = 0; i < n; ++i)
        for (ptrdiff_t f = 0; f < 4; ++f)
            dst[4 * i + f] = s[f * lds + i];
}

static void ck_rg_interleave2(float *dst, const float *s0, const float *s1, ptrdiff_t n0,
                              ptrdiff_t n1, int has_bias, float bias)
{
    for (ptrdiff_t i = 0; i < n0; ++i)
        dst[2 * i] = has_bias ? s0[i] + bias : s0[i];
    for (ptrdiff_t i = 0; i < n1; ++i)
        dst[2 * i + 1] = has_bias ? s1[i] + bias : s1[i];
}

static void ck_rg_pad_rows(const float *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t r0, ptrdiff_t nr,
                           ptrdiff_t c0, ptrdiff_t Wp, float *dst)
{
    for (ptrdiff_t r = 0; r < nr; ++r)
        for (ptrdiff_t j = 0; j < Wp; ++j) {
            const ptrdiff_t q = c0 + j;
            dst[r * Wp + j] = r0 + r >= 0 && r0 + r < H && q >= 0 && q < W
                                  ? x[(r0 + r) * W + q] : 0.0f;
        }
}

static int ck_rowgemm_available(void) { return 0; }

static int ck_rowgemm_f(ptrdiff_t P, ptrdiff_t L, ptrdiff_t K, const float *wt, const float *b,
                        const ptrdiff_t *boff, float *out, ptrdiff_t ldo)
{
    (void)P; (void)L; (void)K; (void)wt; (void)b; (void)boff; (void)out; (void)ldo;
    return 0;
}

static int ck_rowgemm_shift_f(ptrdiff_t P, ptrdiff_t L, ptrdiff_t K, const float *wt,
                              const float *b, const ptrdiff_t *boff, const ptrdiff_t *pbase,
                              float *out, ptrdiff_t ldo, ptrdiff_t kc)
{
    (void)P; (void)L; (void)K; (void)wt; (void)b; (void)boff; (void)pbase; (void)out;
    (void)ldo; (void)kc;
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
