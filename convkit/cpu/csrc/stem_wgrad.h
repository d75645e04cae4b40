/* The stem's weight gradient by a 1-D Winograd along the rows (conv_plan "weight_stem_wino"), the
 * transpose of the forward's (csrc/stem_wino.h): on the column phases of the padded input P, a
 * 7-wide stride-2 kernel row's gradient is
 *
 *   gw[f, c, kh, 2v]     = sum over (n, r, j) of gy[n, f, r, j] * P[c, r*sh + kh, 2j + 2v]      (v < 4)
 *   gw[f, c, kh, 2v + 1] = sum over (n, r, j) of gy[n, f, r, j] * P[c, r*sh + kh, 2j + 2v + 1]  (v < 3)
 *
 * and over a tile of 4 columns j = 4t + i each is a correlation of the 4 values of grad_y (the
 * filter) with 7 / 6 of the phase's inputs (the data): F(4, 4) / F(3, 4) on the forward's points
 * 0, 1, -1, 1/2, -1/2, 2 and infinity (F(3, 4) takes all but 2).  The data transform B^T d is
 * the forward's (the same V, built by ck_sw_phases / ck_sw_input_row), the filter transform
 * evaluates grad_y's tile polynomial at the points (scaled by 8 at +-1/2: small integers), and
 * as the sums over the batch's tiles run in the transform domain the output transform is done
 * once per weight, at the end:
 *
 *   M[k][f, (c, kh, pw)] = sum over tiles (n, r, t) of Gy[k][f, r, t] * V[k][c, kh % sh, pw][r + kh / sh, t]
 *   gw[f, c, kh, 2v + pw] = sum over k of A[pw][k][v] * M[k][f, (c, kh, pw)]       (in double)
 *
 * 13 products per kernel row, 4 columns and filter where the direct weight_stem does 28.
 *
 * ck_stem_wgrad_offsets: each transformed tap's row offset in its point's block of V, each
 *   point's taps padded to a multiple of 3 (the tiles' width; the padded taps read V's start and
 *   their sums are dropped).
 * ck_stem_wgrad_slab_f: one slab (an image's block of hr output rows): V from the stride-8 column
 *   phases of its input rows, then per 4-filter panel the filter transform of its grad_y rows
 *   (Gy: 7 points x 4 filters x hr*nt tiles) and the products as 4-filter x 3-tap dot products
 *   over the slab's hr*nt tiles (one run: V's rows are nt apart), each reduced in a fixed tree
 *   to one float and added into the panel's partial sums; the bias gradient's from the point-1
 *   row (each tile's sum of 4) likewise.  Partial sums: per panel [taps][4 filters], then F bias
 *   sums (ck_stem_wgrad_part_floats).
 * ck_stem_wgrad_fold: a panel's weights from the groups' partial sums, added group by group in
 *   order, then the output transform in double.
 * The caller's slabs, groups and their order fix every sum: the bits do not follow the thread
 * count.  Winograd mixes a tile's values (inf * 0 = NaN): where the result is not finite the
 * caller runs the direct weight_stem (convkit/cpu/conv.py _bwd_weight_stem_wino).  Returns 0,
 * doing nothing, without AVX2 + FMA. */
#ifndef CK_STEM_WGRAD_H
#define CK_STEM_WGRAD_H

#include <stddef.h>
#include <string.h>
#include "stem_wino.h"

/* taps of point k padded to a multiple of 3 */
static inline ptrdiff_t ck_sww_ptaps(int k, ptrdiff_t CK)
{
    return (ck_sw_taps(k) * CK + 2) / 3 * 3;
}

/* all points' padded taps (one panel's partial sums per filter) */
static inline ptrdiff_t ck_stem_wgrad_taps(ptrdiff_t C, ptrdiff_t KH)
{
    ptrdiff_t n = 0;
    for (int k = 0; k < CK_SW_PTS; ++k)
        n += ck_sww_ptaps(k, C * KH);
    return n;
}

/* floats of one slab's scratch for ``rows`` output rows (conv_plan.stem_wgrad_floats): the
 * forward's (csrc/stem_wino.h ck_stem_wino_floats), its products' room holding the transformed
 * grad_y with 8 floats of slack per point */
static inline ptrdiff_t ck_stem_wgrad_floats(ptrdiff_t C, ptrdiff_t KH, ptrdiff_t sh,
                                             ptrdiff_t rows, ptrdiff_t Wo)
{
    return ck_stem_wino_floats(C, KH, sh, rows, Wo) + 7 * 8;
}

/* one group's partial sums: F/4 panels of [taps][4], then F bias sums */
static inline ptrdiff_t ck_stem_wgrad_part_floats(ptrdiff_t F, ptrdiff_t C, ptrdiff_t KH)
{
    return F * (ck_stem_wgrad_taps(C, KH) + 1);
}

/* boff[ck_stem_wgrad_taps]: ck_stem_wino_offsets per point, each padded with zeros */
static void ck_stem_wgrad_offsets(ptrdiff_t C, ptrdiff_t KH, ptrdiff_t sh, ptrdiff_t Ra,
                                  ptrdiff_t nt, ptrdiff_t *boff)
{
    ptrdiff_t i = 0;
    for (int k = 0; k < CK_SW_PTS; ++k) {
        const ptrdiff_t end = i + ck_sww_ptaps(k, C * KH);
        for (ptrdiff_t ck = 0; ck < C * KH; ++ck) {
            const ptrdiff_t c = ck / KH, kh = ck % KH;
            for (ptrdiff_t pw = 0; pw < ck_sw_taps(k); ++pw)
                boff[i++] = ((c * sh + kh % sh) * 2 + pw) * ck_sw_vblock(Ra, nt) + (kh / sh) * nt;
        }
        while (i < end)
            boff[i++] = 0;
    }
}

/* the output transform's weight of point k for column v of phase pw (pw 0: F(4, 4), v < 4;
 * pw 1: F(3, 4), v < 3): the point's power v times the scale that makes the transforms exact
 * with csrc/stem_wino.h's B^T rows and this file's filter transform */
static double ck_sww_a(int pw, int k, int v)
{
    static const double pt[CK_SW_PTS] = {0.0, 1.0, -1.0, 0.5, -0.5, 2.0, 0.0};
    static const double s4[CK_SW_PTS] = {1.0 / 2, 1.0 / 6, 1.0 / 18, 1.0 / 9, 1.0 / 15,
                                         1.0 / 90, 1.0 / 4};
    static const double s3[CK_SW_PTS] = {1.0, 1.0 / 6, 1.0 / 6, 1.0 / 6, 1.0 / 6, 0.0, 1.0 / 4};
    const int last = pw ? 2 : 3;
    double p = 1.0;
    if (k == 6)
        p = v == last ? 1.0 : 0.0;          /* infinity: the top coefficient */
    else
        for (int i = 0; i < v; ++i)
            p *= pt[k];
    return (pw ? s3[k] : s4[k]) * p;
}

/* a panel's weights (filters p .. p + 3 of (F, C, KH, 7)) and biases (gb: the panel's 4, or
 * NULL) from the groups' partial sums (groups_n of ldgrp floats): first the groups added into
 * group 0's sums of the panel, group by group in order (whole runs, which the compiler
 * vectorises: each sum the same chain of adds as one at a time), then per filter the output
 * transform in double.  Overwrites group 0's sums of the panel. */
static void ck_stem_wgrad_fold(ptrdiff_t p, ptrdiff_t F, ptrdiff_t C, ptrdiff_t KH,
                               ptrdiff_t groups_n, float *part, ptrdiff_t ldgrp, float *gw,
                               float *gb)
{
    const ptrdiff_t CK = C * KH, Kt = ck_stem_wgrad_taps(C, KH);
    float *pp = part + p * Kt, *pb = part + F * Kt + p;
    for (ptrdiff_t g = 1; g < groups_n; ++g) {
        const float *qp = pp + g * ldgrp, *qb = pb + g * ldgrp;
        for (ptrdiff_t i = 0; i < 4 * Kt; ++i)
            pp[i] += qp[i];
        for (int i = 0; i < 4; ++i)
            pb[i] += qb[i];
    }
    ptrdiff_t base[CK_SW_PTS], b = 0;
    double A[2][4][CK_SW_PTS];      /* ck_sww_a once per panel, not per weight */
    for (int k = 0; k < CK_SW_PTS; ++k) {
        base[k] = b;
        b += ck_sww_ptaps(k, CK);
        for (int pw = 0; pw < 2; ++pw)
            for (int v = 0; v < 4; ++v)
                A[pw][v][k] = ck_sww_a(pw, k, v);
    }
    for (ptrdiff_t f = p; f < p + 4; ++f)
        for (ptrdiff_t ck = 0; ck < CK; ++ck)
            for (int pw = 0; pw < 2; ++pw) {
                double m[CK_SW_PTS];
                for (int k = 0; k < CK_SW_PTS; ++k)
                    m[k] = pw && k == 5 ? 0.0
                         : (double)pp[4 * (base[k] + ck * ck_sw_taps(k) + pw) + f - p];
                for (int v = 0; v < 4 - pw; ++v) {
                    double s = 0.0;
                    for (int k = 0; k < CK_SW_PTS; ++k)
                        if (!(pw && k == 5))
                            s += A[pw][v][k] * m[k];
                    gw[(f * CK + ck) * 7 + 2 * v + pw] = (float)s;
                }
            }
    if (gb)
        for (int i = 0; i < 4; ++i)
            gb[i] = pb[i];
}

#if CK_FG_BUILT

/* 8 tiles of 4 grad_y values (g: the tiles' first; n of them exist, n > 0) -> e[q]: value q of
 * each tile (zeros past n) */
CK_ST_TARGET CK_ST_INLINE void ck_sww_tiles(const float *g, ptrdiff_t n, __m256 e[4])
{
    __m256 v[4];
    for (int j = 0; j < 4; ++j) {
        const ptrdiff_t m = n - 8 * j;
        v[j] = m >= 8 ? _mm256_loadu_ps(g + 8 * j)
             : m > 0 ? _mm256_maskload_ps(g + 8 * j, ck_st_mask(m)) : _mm256_setzero_ps();
    }
    /* v: tiles (0 1) (2 3) (4 5) (6 7) -> 128-bit halves (t, t + 4), then 4 x 4 transposes */
    const __m256 u0 = _mm256_permute2f128_ps(v[0], v[2], 0x20);
    const __m256 u1 = _mm256_permute2f128_ps(v[0], v[2], 0x31);
    const __m256 u2 = _mm256_permute2f128_ps(v[1], v[3], 0x20);
    const __m256 u3 = _mm256_permute2f128_ps(v[1], v[3], 0x31);
    const __m256 l01 = _mm256_unpacklo_ps(u0, u1), h01 = _mm256_unpackhi_ps(u0, u1);
    const __m256 l23 = _mm256_unpacklo_ps(u2, u3), h23 = _mm256_unpackhi_ps(u2, u3);
    e[0] = _mm256_shuffle_ps(l01, l23, 0x44);
    e[1] = _mm256_shuffle_ps(l01, l23, 0xEE);
    e[2] = _mm256_shuffle_ps(h01, h23, 0x44);
    e[3] = _mm256_shuffle_ps(h01, h23, 0xEE);
}

/* one grad_y row's filter transform (or a run of rows of whole tiles): Wo values -> nt tiles at
 * each of the 7 points (o + k*ok):
 * the tile polynomial g0 + g1 x + g2 x^2 + g3 x^3 at 0, 1, -1, 2 and infinity (its top
 * coefficient), 8 times it at +-1/2 -- exact scalings, one rounding per add.  Whole vectors are
 * stored, up to 7 tiles past nt (masked stores cost AMD's cores ~10x): the caller writes the
 * rows in order and leaves room after the last */
CK_ST_TARGET static void ck_sww_dy_row(const float *g, ptrdiff_t Wo, ptrdiff_t nt, float *o,
                                       ptrdiff_t ok)
{
    const __m256 two = _mm256_set1_ps(2.0f), four = _mm256_set1_ps(4.0f),
                 eight = _mm256_set1_ps(8.0f);
    for (ptrdiff_t t = 0; t < nt; t += 8) {
        __m256 e[4], p[7];
        ck_sww_tiles(g + 4 * t, Wo - 4 * t, e);
        const __m256 s02 = _mm256_add_ps(e[0], e[2]), s13 = _mm256_add_ps(e[1], e[3]);
        const __m256 h02 = _mm256_fmadd_ps(eight, e[0], _mm256_mul_ps(two, e[2]));
        const __m256 h13 = _mm256_fmadd_ps(four, e[1], e[3]);
        const __m256 d02 = _mm256_fmadd_ps(four, e[2], e[0]);
        const __m256 d13 = _mm256_fmadd_ps(eight, e[3], _mm256_mul_ps(two, e[1]));
        p[0] = e[0];
        p[1] = _mm256_add_ps(s02, s13);
        p[2] = _mm256_sub_ps(s02, s13);
        p[3] = _mm256_add_ps(h02, h13);
        p[4] = _mm256_sub_ps(h02, h13);
        p[5] = _mm256_add_ps(d02, d13);
        p[6] = e[3];
        for (int k = 0; k < 7; ++k)
            _mm256_storeu_ps(o + k * ok + t, p[k]);
    }
}

/* 4 filters (g + i*L) x taps q + boff[0..2], dot products over L values, each reduced in a
 * fixed tree (pairs, then quads, then the two halves) and added into part[4*j + i] */
CK_ST_TARGET static void ck_sww_tile(ptrdiff_t L, const float *g, const float *q,
                                     const ptrdiff_t *boff, float *part)
{
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00;
    __m256 a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
    const float *q0 = q + boff[0], *q1 = q + boff[1], *q2 = q + boff[2], *gr = g;
    const ptrdiff_t ldg = L;
    const __m256i mask = ck_st_mask(L & 7);
    CK_ST_WRUN(L);
    /* s_j: [tap j of filters 0..3 over lanes 0-3 | the same over lanes 4-7] */
    const __m256 s0 = _mm256_hadd_ps(_mm256_hadd_ps(a00, a10), _mm256_hadd_ps(a20, a30));
    const __m256 s1 = _mm256_hadd_ps(_mm256_hadd_ps(a01, a11), _mm256_hadd_ps(a21, a31));
    const __m256 s2 = _mm256_hadd_ps(_mm256_hadd_ps(a02, a12), _mm256_hadd_ps(a22, a32));
    const __m256 t01 = _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20),
                                     _mm256_permute2f128_ps(s0, s1, 0x31));
    const __m128 t2 = _mm_add_ps(_mm256_castps256_ps128(s2), _mm256_extractf128_ps(s2, 1));
    _mm256_storeu_ps(part, _mm256_add_ps(_mm256_loadu_ps(part), t01));
    _mm_storeu_ps(part + 8, _mm_add_ps(_mm_loadu_ps(part + 8), t2));
}

/* 4 filters' sums of L values (rows g + i*L) in the same tree, added into part[0..3] */
CK_ST_TARGET static void ck_sww_sums(ptrdiff_t L, const float *g, float *part)
{
    __m256 a[4];
    const ptrdiff_t full = L & ~(ptrdiff_t)7;
    const __m256i mask = ck_st_mask(L - full);
    for (int i = 0; i < 4; ++i) {
        a[i] = _mm256_setzero_ps();
        for (ptrdiff_t j = 0; j < full; j += 8)
            a[i] = _mm256_add_ps(a[i], _mm256_loadu_ps(g + i * L + j));
        if (full < L)
            a[i] = _mm256_add_ps(a[i], _mm256_maskload_ps(g + i * L + full, mask));
    }
    const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    const __m128 t = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    _mm_storeu_ps(part, _mm_add_ps(_mm_loadu_ps(part), t));
}

CK_ST_TARGET static void ck_stem_wgrad_avx2(ptrdiff_t F, ptrdiff_t C, ptrdiff_t KH, ptrdiff_t sh,
                                            const ptrdiff_t *boff, const float *x, ptrdiff_t H,
                                            ptrdiff_t W, ptrdiff_t pt, ptrdiff_t pl,
                                            ptrdiff_t h0, ptrdiff_t Ra, ptrdiff_t hr,
                                            ptrdiff_t Wo, const float *gy, ptrdiff_t ldg,
                                            float *ws, float *part, int with_bias)
{
    const ptrdiff_t nt = (Wo + 3) / 4, W8 = nt + 1, L = hr * nt;
    const ptrdiff_t rows = hr + (KH - 1) / sh;          /* phase rows this block reads */
    const ptrdiff_t rp = ck_sw_rplane(Ra, W8), vb = ck_sw_vblock(Ra, nt);
    const ptrdiff_t vblk = C * sh * 2 * vb, CK = C * KH, Kt = ck_stem_wgrad_taps(C, KH);
    float *R = ws, *buf = R + C * sh * 8 * rp, *V = buf + 64 * ((nt + 8) / 8);
    float *G = V + 7 * vblk;            /* the forward's M: 7 points x (4 x L + 8 slack) */
    const ptrdiff_t gk = 4 * L + 8;
    ck_sw_phases(x, C, H, W, sh, pt, pl, h0, Ra, W8, R, buf);
    for (ptrdiff_t c = 0; c < C; ++c)
        for (ptrdiff_t ph = 0; ph < sh; ++ph)
            for (ptrdiff_t a = 0; a < rows; ++a)
                ck_sw_input_row(R + (c * sh + ph) * 8 * rp + a * W8, rp, nt,
                                V + (c * sh + ph) * 2 * vb + a * nt, vblk, vb);
    /* grad_y is read once, from memory: the next panel's rows (4 runs of hr*Wo floats) are
     * prefetched a few lines per tile while this panel's products run; during the last panel,
     * the next slab's first (its rows follow these in the image: ldg / Wo rows).  Into L1
     * (T0): on the Zen 4 a T1 / T2 prefetch left the transform ~0.8 ms slower of stem_224's
     * ~11 (bench/stem_wgrad_parts.c, RESULTS.md's eleventh session) */
    const ptrdiff_t run = (hr * Wo * 4 + 63) / 64, lines = 4 * run, tiles = Kt / 3;
    const float *gnext = (h0 + 2 * hr) * Wo <= ldg ? gy + hr * Wo : NULL;
    const ck_sw_xnext xn = ck_sw_xnext_of(C, H, W, sh, pt, h0, Ra, hr, F / 4);
    for (ptrdiff_t p = 0; p < F; p += 4) {
        ck_sw_xprefetch(&xn, x, H, W, p / 4);
        for (ptrdiff_t i = 0; i < 4; ++i)
            if (4 * nt == Wo)       /* whole tiles: the slab's rows are one run of tiles */
                ck_sww_dy_row(gy + (p + i) * ldg, hr * Wo, L, G + i * L, gk);
            else
                for (ptrdiff_t r = 0; r < hr; ++r)
                    ck_sww_dy_row(gy + (p + i) * ldg + r * Wo, Wo, nt, G + i * L + r * nt, gk);
        float *pp = part + p * Kt;
        const char *next = (const char *)(p + 4 < F ? gy + (p + 4) * ldg : gnext);
        /* tile i ends with (i + 1) * lines / tiles lines prefetched, counted without
         * divisions: rem steps by lines, a line per tiles of it; line li of filter row fi */
        ptrdiff_t base = 0, rem = 0, fi = 0, li = 0;
        for (int k = 0; k < CK_SW_PTS; ++k) {
            const ptrdiff_t nk = ck_sww_ptaps(k, CK);
            for (ptrdiff_t j = 0; j < nk; j += 3) {
                if (next)
                    for (rem += lines; rem >= tiles; rem -= tiles) {
                        _mm_prefetch(next + fi * ldg * 4 + li * 64, _MM_HINT_T0);
                        if (++li == run)
                            li = 0, ++fi;
                    }
                ck_sww_tile(L, G + k * gk, V + k * vblk, boff + base + j, pp + 4 * (base + j));
            }
            base += nk;
        }
        if (with_bias)
            ck_sww_sums(L, G + gk, part + F * Kt + p);     /* point 1: each tile's sum */
    }
}

/* one slab: output rows [h0, h0 + hr) of image x (C, H, W) and its grad_y gy (that image's row
 * h0 of filter 0; filters ldg apart, rows Wo apart), its products added into part (one group's,
 * ck_stem_wgrad_part_floats); F a multiple of 4; boff: ck_stem_wgrad_offsets (Ra = rows +
 * (KH-1)/sh, nt = ceil(Wo/4)); ws: ck_stem_wgrad_floats */
static int ck_stem_wgrad_slab_f(ptrdiff_t F, ptrdiff_t C, ptrdiff_t KH, ptrdiff_t sh,
                                const ptrdiff_t *boff, const float *x, ptrdiff_t H, ptrdiff_t W,
                                ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t h0, ptrdiff_t Ra,
                                ptrdiff_t hr, ptrdiff_t Wo, const float *gy, ptrdiff_t ldg,
                                float *ws, float *part, int with_bias)
{
    if (F % 4 != 0 || !ck_rowgemm_available())
        return 0;
    ck_stem_wgrad_avx2(F, C, KH, sh, boff, x, H, W, pt, pl, h0, Ra, hr, Wo, gy, ldg, ws, part,
                       with_bias);
    return 1;
}

#else

static int ck_stem_wgrad_slab_f(ptrdiff_t F, ptrdiff_t C, ptrdiff_t KH, ptrdiff_t sh,
                                const ptrdiff_t *boff, const float *x, ptrdiff_t H, ptrdiff_t W,
                                ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t h0, ptrdiff_t Ra,
                                ptrdiff_t hr, ptrdiff_t Wo, const float *gy, ptrdiff_t ldg,
                                float *ws, float *part, int with_bias)
{
    (void)F; (void)C; (void)KH; (void)sh; (void)boff; (void)x; (void)H; (void)W; (void)pt;
    (void)pl; (void)h0; (void)Ra; (void)hr; (void)Wo; (void)gy; (void)ldg; (void)ws; (void)part;
    (void)with_bias;
    return 0;
}

#endif
#endif
