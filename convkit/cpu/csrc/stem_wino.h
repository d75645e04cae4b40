/* The stem forward with a 1-D Winograd transform along the rows (conv_plan "stem_wino"): a 7-wide
 * stride-2 kernel row is, on the two column phases of the input, a 4-tap (even columns) and a
 * 3-tap (odd columns) stride-1 correlation.  Each is computed as Winograd F(4, 4) / F(4, 3) over
 * tiles of 4 output columns on one set of points -- 0, 1, -1, 1/2, -1/2, 2 and infinity (F(4, 3)
 * takes all but 2) -- so both share one output transform A^T, and the sum over channels, kernel
 * rows and column phases runs in the transform domain:
 *
 *   M[k][f, r, t] = sum over taps (c, kh, pw) of U[f, c, kh, pw][k] * V[c, kh % sh, pw][k][r + kh / sh, t]
 *   y[f, r, 4t + q] = (sum over k of A^T[q][k] * M[k][f, r, t]) + bias[f]
 *
 * 7 + 6 = 13 products per kernel row and 4 outputs where the direct stem (csrc/stem.h) does 28:
 * 2.15x fewer multiplies.  Rows (y) stay direct (a sum over the kernel rows).
 *
 * ck_stem_wino_filters: U = G g per filter row (double, then float), in csrc/rowgemm.h's 4-row
 *   panels: per panel, per point k, taps (c, kh, pw) in order (pw 0 then 1; point 2 has pw 0 only).
 * ck_stem_wino_offsets: each tap's row offset in its point's block of V (same order).
 * ck_stem_wino_forward_f: one task (an image's block of hr output rows) from the stride-8 column
 *   phases R of its input rows (R[c, ph, m][a, t] = P[c, (h0 + a)*sh + ph, 8t + m], t <= nt, the
 *   padded image P; 8 x 8 transposes of each padded row): the input transform B^T d of
 *   every tile of every phase row into V, then per 4-filter panel and point the products as
 *   csrc/stem.h's forward (ck_stem_forward_avx2: one fused multiply-add chain per output over the
 *   taps in order, the task's rows one run of hr*nt tiles), then the output transform into y.
 *   Every step is fixed per output, so the bits do not depend on the task split, the thread
 *   count or the batch.
 *
 * Winograd mixes a tile's values (inf * 0 = NaN): the caller runs the direct stem where an
 * operand is not finite (convkit/cpu/conv.py _fwd_stem_wino).  Point choice and error:
 * bench/stem_wino_accuracy.py.  Returns 0, doing nothing, without AVX2 + FMA. */
#ifndef CK_STEM_WINO_H
#define CK_STEM_WINO_H

#include <stddef.h>
#include <string.h>
#include "fgemm.h"     /* ck_fg_tr8 */
#include "stem.h"

#define CK_SW_PTS 7             /* 0, 1, -1, 1/2, -1/2, 2, inf */

/* taps per (c, kh) at point k: both column phases, except the point 2 only F(4, 4) has */
static inline ptrdiff_t ck_sw_taps(ptrdiff_t k) { return k == 5 ? 1 : 2; }

/* G (F(4, 4): 7 x 4, F(4, 3): 6 x 3), each row scaled so that B^T's row is small integers; the
 * scales cancel in the products */
static const double ck_sw_g4[7][4] = {
    {1.0 / 2, 0.0, 0.0, 0.0},
    {1.0 / 6, 1.0 / 6, 1.0 / 6, 1.0 / 6},
    {1.0 / 18, -1.0 / 18, 1.0 / 18, -1.0 / 18},
    {8.0 / 9, 4.0 / 9, 2.0 / 9, 1.0 / 9},
    {8.0 / 15, -4.0 / 15, 2.0 / 15, -1.0 / 15},
    {1.0 / 90, 1.0 / 45, 2.0 / 45, 4.0 / 45},
    {0.0, 0.0, 0.0, 1.0 / 4}};
static const double ck_sw_g3[6][3] = {
    {1.0, 0.0, 0.0},
    {1.0 / 6, 1.0 / 6, 1.0 / 6},
    {1.0 / 6, -1.0 / 6, 1.0 / 6},
    {4.0 / 3, 2.0 / 3, 1.0 / 3},
    {4.0 / 3, -2.0 / 3, 1.0 / 3},
    {0.0, 0.0, 1.0 / 4}};
/* B^T (rows as G's) */
static const float ck_sw_b4[7][7] = {
    {2, -1, -10, 5, 8, -4, 0},
    {0, -2, -1, 9, 4, -4, 0},
    {0, 2, -3, -7, 12, -4, 0},
    {0, 2, 3, -4, -3, 2, 0},
    {0, -2, 5, 0, -5, 2, 0},
    {0, 1, 0, -5, 0, 4, 0},
    {0, -2, 1, 10, -5, -8, 4}};
static const float ck_sw_b3[6][6] = {
    {1, 0, -5, 0, 4, 0},
    {0, -1, -1, 4, 4, 0},
    {0, 1, -1, -4, 4, 0},
    {0, 1, 2, -1, -2, 0},
    {0, -1, 2, 1, -2, 0},
    {0, 1, 0, -5, 0, 4}};
/* F(4, 3)'s points among the seven */
static const int ck_sw_p3[6] = {0, 1, 2, 3, 4, 6};

/* w (F, C, KH, 7) -> U: F/4 panels of 13*C*KH taps x 4 filters (F a multiple of 4) */
static void ck_stem_wino_filters(ptrdiff_t F, ptrdiff_t C, ptrdiff_t KH, const float *w, float *U)
{
    const ptrdiff_t CK = C * KH, Kp = 13 * CK;
    for (ptrdiff_t f = 0; f < F; ++f) {
        float *up = U + (f / 4) * 4 * Kp + f % 4;
        ptrdiff_t base = 0;
        for (int k = 0; k < CK_SW_PTS; ++k) {
            const ptrdiff_t nt = ck_sw_taps(k);
            const int k3 = k == 6 ? 5 : k;
            for (ptrdiff_t ck = 0; ck < CK; ++ck) {
                const float *g = w + (f * CK + ck) * 7;
                double u0 = 0.0, u1 = 0.0;
                for (int v = 0; v < 4; ++v)
                    u0 += ck_sw_g4[k][v] * (double)g[2 * v];
                up[4 * (base + ck * nt)] = (float)u0;
                if (nt == 2) {
                    for (int v = 0; v < 3; ++v)
                        u1 += ck_sw_g3[k3][v] * (double)g[2 * v + 1];
                    up[4 * (base + ck * nt + 1)] = (float)u1;
                }
            }
            base += nt * CK;
        }
    }
}

/* a plane of R (Ra rows of W8 tiles) and a block of V (Ra rows of nt tiles), each followed by 8
 * floats of slack: the rows are stored as whole vectors (a masked store costs AMD's cores ~10x),
 * the last one's excess landing in the slack, every other one's in the next row, which is
 * stored after it */
static inline ptrdiff_t ck_sw_rplane(ptrdiff_t Ra, ptrdiff_t W8) { return Ra * W8 + 8; }
static inline ptrdiff_t ck_sw_vblock(ptrdiff_t Ra, ptrdiff_t nt) { return Ra * nt + 8; }

/* boff[13*C*KH]: tap (c, kh, pw) of point k reads V's block (c, kh % sh, pw) at its row kh / sh;
 * blocks of Ra rows of nt tiles (ck_sw_vblock apart) */
static void ck_stem_wino_offsets(ptrdiff_t C, ptrdiff_t KH, ptrdiff_t sh, ptrdiff_t Ra,
                                 ptrdiff_t nt, ptrdiff_t *boff)
{
    ptrdiff_t i = 0;
    for (int k = 0; k < CK_SW_PTS; ++k)
        for (ptrdiff_t ck = 0; ck < C * KH; ++ck) {
            const ptrdiff_t c = ck / KH, kh = ck % KH;
            for (ptrdiff_t pw = 0; pw < ck_sw_taps(k); ++pw)
                boff[i++] = ((c * sh + kh % sh) * 2 + pw) * ck_sw_vblock(Ra, nt) + (kh / sh) * nt;
        }
}

/* floats of one task's scratch for ``rows`` output rows (conv_plan.stem_wino_floats): the
 * stride-8 column phases R (C*sh*8 planes of Ra rows x nt + 1, + 8 slack), a padded input row
 * (whole 8 x 8 blocks), the transformed rows V (7 points x C*sh*2 blocks of Ra rows x nt, + 8
 * slack) and one panel's products M (7 points x 4 filters x rows*nt) */
static ptrdiff_t ck_stem_wino_floats(ptrdiff_t C, ptrdiff_t KH, ptrdiff_t sh, ptrdiff_t rows,
                                     ptrdiff_t Wo)
{
    const ptrdiff_t nt = (Wo + 3) / 4, Ra = rows + (KH - 1) / sh;
    return C * sh * 8 * ck_sw_rplane(Ra, nt + 1) + 64 * ((nt + 8) / 8)
           + 7 * C * sh * 2 * ck_sw_vblock(Ra, nt)
           + 28 * rows * nt;
}

/* the next slab's (same image, hr rows further) input rows that this one does not read, rows
 * [r0, r0 + rows) of each channel (lines: 64-byte lines of a channel's run), prefetched into L1
 * a share per panel while this slab's products run (the read of x in ck_sw_phases then waits
 * less: ~0.3 ms of stem_224's grad_weight, RESULTS.md's eleventh session) */
typedef struct { ptrdiff_t r0, lines, C, per; } ck_sw_xnext;

static inline ck_sw_xnext ck_sw_xnext_of(ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t sh,
                                         ptrdiff_t pt, ptrdiff_t h0, ptrdiff_t Ra, ptrdiff_t hr,
                                         ptrdiff_t panels)
{
    ptrdiff_t r0 = (h0 + Ra) * sh - pt, r1 = (h0 + hr + Ra) * sh - pt;
    r0 = r0 < 0 ? 0 : r0 > H ? H : r0;
    r1 = r1 < r0 ? r0 : r1 > H ? H : r1;
    ck_sw_xnext n = {r0, ((r1 - r0) * W * 4 + 63) / 64, C, 0};
    n.per = panels > 0 ? (C * n.lines + panels - 1) / panels : 0;
    return n;
}

#if CK_FG_BUILT

/* panel i's share of ck_sw_xnext's lines of x (C, H, W) */
CK_ST_TARGET CK_ST_INLINE void ck_sw_xprefetch(const ck_sw_xnext *n, const float *x, ptrdiff_t H,
                                               ptrdiff_t W, ptrdiff_t i)
{
    const ptrdiff_t end = (i + 1) * n->per < n->C * n->lines ? (i + 1) * n->per
                                                             : n->C * n->lines;
    for (ptrdiff_t l = i * n->per; l < end; ++l)
        _mm_prefetch((const char *)(x + ((l / n->lines) * H + n->r0) * W) + (l % n->lines) * 64,
                     _MM_HINT_T0);
}

/* R[c, ph, m][a, t] = P[c, (h0 + a)*sh + ph, 8t + m] for a < Ra, t < W8 (P: x zero-padded by
 * pt rows, pl columns; planes ck_sw_rplane apart): each input row into a padded row buf, then
 * 8 x 8 transposes, stored whole (up to 7 floats past a row: the next row's or the slack) */
CK_ST_TARGET static void ck_sw_phases(const float *x, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W,
                                      ptrdiff_t sh, ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t h0,
                                      ptrdiff_t Ra, ptrdiff_t W8, float *R, float *buf)
{
    const ptrdiff_t plane = ck_sw_rplane(Ra, W8), nb = (W8 + 7) / 8;
    for (ptrdiff_t c = 0; c < C; ++c)
        for (ptrdiff_t ph = 0; ph < sh; ++ph)
            for (ptrdiff_t a = 0; a < Ra; ++a) {
                float *dst = R + (c * sh + ph) * 8 * plane + a * W8;
                const ptrdiff_t r = (h0 + a) * sh + ph - pt;
                if (r < 0 || r >= H) {
                    for (int m = 0; m < 8; ++m)
                        memset(dst + m * plane, 0, W8 * sizeof(float));
                    continue;
                }
                /* buf[J] = P[.., J] for J < 64*nb: x's columns J - pl, zeros around */
                const ptrdiff_t len = 64 * nb;
                const ptrdiff_t lo = pl < len ? pl : len;
                const ptrdiff_t hi = pl + W < len ? pl + W : len;
                memset(buf, 0, lo * sizeof(float));
                if (hi > lo)
                    memcpy(buf + lo, x + (c * H + r) * W + (lo - pl), (hi - lo) * sizeof(float));
                if (len > (hi > lo ? hi : lo))
                    memset(buf + (hi > lo ? hi : lo), 0, (len - (hi > lo ? hi : lo)) * sizeof(float));
                for (ptrdiff_t b = 0; b < nb; ++b) {
                    __m256 o[8];        /* o[i]: tile 8b + i; then o[m]: phase m of 8 tiles */
                    for (int i = 0; i < 8; ++i)
                        o[i] = _mm256_loadu_ps(buf + 64 * b + 8 * i);
                    ck_fg_tr8(o);
                    const ptrdiff_t t = 8 * b;
                    for (int m = 0; m < 8; ++m)
                        _mm256_storeu_ps(dst + m * plane + t, o[m]);
                }
            }
}

/* B^T d (a x a, rows a apart) of one 8-tile vector: row k to o + pt[k]*vblk, whole (a row's
 * last vector reaches into the next row or the block's slack) */
CK_ST_TARGET CK_ST_INLINE void ck_sw_bt(const int a, const float *B, const __m256 *d, float *o,
                                        const int *pt, ptrdiff_t vblk)
{
#pragma GCC unroll 7
    for (int k = 0; k < a; ++k) {
        __m256 s = _mm256_setzero_ps();
#pragma GCC unroll 7
        for (int j = 0; j < a; ++j)
            if (B[k * a + j] != 0.0f)
                s = _mm256_fmadd_ps(_mm256_set1_ps(B[k * a + j]), d[j], s);
        _mm256_storeu_ps(o + pt[k] * vblk, s);
    }
}

/* one phase row a of R's (c, ph) (8 planes pl apart, nt + 1 tiles each) into V's rows a of
 * blocks pw 0 and 1 at every point (points vblk apart, blocks pwo apart); called for the rows in
 * order (each row's excess lands in the next, ck_sw_vblock) */
CK_ST_TARGET static void ck_sw_input_row(const float *r, ptrdiff_t pl, ptrdiff_t nt, float *v0,
                                         ptrdiff_t vblk, ptrdiff_t pwo)
{
    for (ptrdiff_t t = 0; t < nt; t += 8) {
        const int m = nt - t < 8;
        const __m256i mask = ck_st_mask(nt - t);
        __m256 e[8], n[5];
#define CK_SW_LD(p) (m ? _mm256_maskload_ps((p), mask) : _mm256_loadu_ps(p))
        for (int j = 0; j < 8; ++j)
            e[j] = CK_SW_LD(r + j * pl + t);
        for (int j = 0; j < 5; ++j)
            n[j] = CK_SW_LD(r + j * pl + t + 1);
#undef CK_SW_LD
        const __m256 d4[7] = {e[0], e[2], e[4], e[6], n[0], n[2], n[4]};
        const __m256 d3[6] = {e[1], e[3], e[5], e[7], n[1], n[3]};
        static const int p4[7] = {0, 1, 2, 3, 4, 5, 6};
        ck_sw_bt(7, &ck_sw_b4[0][0], d4, v0 + t, p4, vblk);
        ck_sw_bt(6, &ck_sw_b3[0][0], d3, v0 + pwo + t, ck_sw_p3, vblk);
    }
}

/* 8 tiles of one output row: M's 7 rows (mk apart) -> y's outputs 4t .. 4t + 31 (+ bias) of
 * which the first ``left`` exist; the tiles' loads masked when m; stream: 32 whole outputs on
 * a 16-byte boundary go by non-temporal stores (ck_stem_wino_forward_f) */
CK_ST_TARGET CK_ST_INLINE void ck_sw_out8(const int m, __m256i mask, const float *M,
                                          ptrdiff_t mk, float *yo, ptrdiff_t left, __m256 bv,
                                          int stream)
{
    __m256 a[7];
    for (int k = 0; k < 7; ++k)
        a[k] = m ? _mm256_maskload_ps(M + k * mk, mask) : _mm256_loadu_ps(M + k * mk);
    /* A^T: columns 0, 1, -1, 1/2, -1/2, 2, inf */
    const __m256 s1 = _mm256_add_ps(a[1], a[2]), d1 = _mm256_sub_ps(a[1], a[2]);
    const __m256 s2 = _mm256_add_ps(a[3], a[4]), d2 = _mm256_sub_ps(a[3], a[4]);
    __m256 o[4];
    o[0] = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a[0], s1), s2), a[5]);
    o[1] = _mm256_fmadd_ps(_mm256_set1_ps(2.0f), a[5],
                           _mm256_fmadd_ps(_mm256_set1_ps(0.5f), d2, d1));
    o[2] = _mm256_fmadd_ps(_mm256_set1_ps(4.0f), a[5],
                           _mm256_fmadd_ps(_mm256_set1_ps(0.25f), s2, s1));
    o[3] = _mm256_add_ps(_mm256_fmadd_ps(_mm256_set1_ps(8.0f), a[5],
                                         _mm256_fmadd_ps(_mm256_set1_ps(0.125f), d2, d1)), a[6]);
    for (int q = 0; q < 4; ++q)
        o[q] = _mm256_add_ps(o[q], bv);
    /* 8 tiles x 4 columns -> 32 consecutive outputs */
    const __m256 lo01 = _mm256_unpacklo_ps(o[0], o[1]), hi01 = _mm256_unpackhi_ps(o[0], o[1]);
    const __m256 lo23 = _mm256_unpacklo_ps(o[2], o[3]), hi23 = _mm256_unpackhi_ps(o[2], o[3]);
    const __m256 t04 = _mm256_shuffle_ps(lo01, lo23, 0x44), t15 = _mm256_shuffle_ps(lo01, lo23, 0xEE);
    const __m256 t26 = _mm256_shuffle_ps(hi01, hi23, 0x44), t37 = _mm256_shuffle_ps(hi01, hi23, 0xEE);
    o[0] = _mm256_permute2f128_ps(t04, t15, 0x20);
    o[1] = _mm256_permute2f128_ps(t26, t37, 0x20);
    o[2] = _mm256_permute2f128_ps(t04, t15, 0x31);
    o[3] = _mm256_permute2f128_ps(t26, t37, 0x31);
    if (left >= 32 && stream && ((size_t)yo & 15) == 0) {
        if (((size_t)yo & 31) == 0)
            for (int j = 0; j < 4; ++j)
                _mm256_stream_ps(yo + 8 * j, o[j]);
        else            /* (numpy's large arrays start 16 bytes into a line) */
            for (int j = 0; j < 4; ++j) {
                _mm_stream_ps(yo + 8 * j, _mm256_castps256_ps128(o[j]));
                _mm_stream_ps(yo + 8 * j + 4, _mm256_extractf128_ps(o[j], 1));
            }
    } else if (left >= 32) {
        for (int j = 0; j < 4; ++j)
            _mm256_storeu_ps(yo + 8 * j, o[j]);
    } else {
        for (int j = 0; 8 * j < left; ++j) {
            if (left - 8 * j >= 8)
                _mm256_storeu_ps(yo + 8 * j, o[j]);
            else
                _mm256_maskstore_ps(yo + 8 * j, ck_st_mask(left - 8 * j), o[j]);
        }
    }
}

/* one output row of a filter: M's 7 rows (mk apart, nt tiles) -> y's Wo values + bias */
CK_ST_TARGET static void ck_sw_output_row(const float *M, ptrdiff_t mk, ptrdiff_t nt,
                                          ptrdiff_t Wo, float *y, float bias, int stream)
{
    const __m256 bv = _mm256_set1_ps(bias);
    const __m256i none = _mm256_setzero_si256();
    ptrdiff_t t = 0;
    for (; t + 8 <= nt; t += 8)
        ck_sw_out8(0, none, M + t, mk, y + 4 * t, Wo - 4 * t, bv, stream);
    if (t < nt)
        ck_sw_out8(1, ck_st_mask(nt - t), M + t, mk, y + 4 * t, Wo - 4 * t, bv, 0);
}

CK_ST_TARGET static void ck_stem_wino_avx2(ptrdiff_t F, ptrdiff_t C, ptrdiff_t KH, ptrdiff_t sh,
                                           const float *U, const ptrdiff_t *boff, const float *x,
                                           ptrdiff_t H, ptrdiff_t W, ptrdiff_t pt, ptrdiff_t pl,
                                           ptrdiff_t h0, ptrdiff_t Ra, ptrdiff_t hr, ptrdiff_t Wo,
                                           float *ws, float *y, ptrdiff_t ldy, const float *bias,
                                           int stream)
{
    const ptrdiff_t nt = (Wo + 3) / 4, W8 = nt + 1, L = hr * nt;
    const ptrdiff_t rows = hr + (KH - 1) / sh;          /* phase rows this block reads */
    const ptrdiff_t rp = ck_sw_rplane(Ra, W8), vb = ck_sw_vblock(Ra, nt);
    const ptrdiff_t vblk = C * sh * 2 * vb, CK = C * KH;
    float *R = ws, *buf = R + C * sh * 8 * rp, *V = buf + 64 * ((nt + 8) / 8);
    float *M = V + 7 * vblk;
    ck_sw_phases(x, C, H, W, sh, pt, pl, h0, Ra, W8, R, buf);
    for (ptrdiff_t c = 0; c < C; ++c)
        for (ptrdiff_t ph = 0; ph < sh; ++ph)
            for (ptrdiff_t a = 0; a < rows; ++a)
                ck_sw_input_row(R + (c * sh + ph) * 8 * rp + a * W8, rp, nt,
                                V + (c * sh + ph) * 2 * vb + a * nt, vblk, vb);
    const ck_sw_xnext xn = ck_sw_xnext_of(C, H, W, sh, pt, h0, Ra, hr, F / 4);
    for (ptrdiff_t p = 0; p < F; p += 4) {
        const float *up = U + p * 13 * CK;
        ptrdiff_t base = 0;
        ck_sw_xprefetch(&xn, x, H, W, p / 4);
        for (int k = 0; k < CK_SW_PTS; ++k) {
            const ptrdiff_t K = ck_sw_taps(k) * CK;
            ck_stem_forward_avx2(4, K, up + 4 * base, V + k * vblk, boff + base, L, 1, L,
                                 M + k * 4 * L, L, NULL);
            base += K;
        }
        for (ptrdiff_t i = 0; i < 4; ++i) {
            const float b = bias ? bias[p + i] : 0.0f;
            if (4 * nt == Wo)       /* whole tiles: the block's rows are one run of outputs */
                ck_sw_output_row(M + i * L, 4 * L, L, 4 * L, y + (p + i) * ldy, b, stream);
            else
                for (ptrdiff_t r = 0; r < hr; ++r)
                    ck_sw_output_row(M + i * L + r * nt, 4 * L, nt, Wo,
                                     y + (p + i) * ldy + r * Wo, b, stream);
        }
    }
    if (stream)
        _mm_sfence();       /* the non-temporal stores done before the team's barrier */
}

/* one task: output rows [h0, h0 + hr) of image x (C, H, W) into y (that image's row h0 of
 * filter 0; filters ldy apart, rows Wo apart); F a multiple of 4; U, boff: ck_stem_wino_filters
 * and ck_stem_wino_offsets (Ra = rows + (KH-1)/sh, nt = ceil(Wo/4)); ws: ck_stem_wino_floats.
 * stream: y's whole 32-output runs by non-temporal stores (the same values): for a y past the
 * caches, whose lines a plain store would first read from memory (tuning.STEM_STREAM_BYTES) */
static int ck_stem_wino_forward_f(ptrdiff_t F, ptrdiff_t C, ptrdiff_t KH, ptrdiff_t sh,
                                  const float *U, const ptrdiff_t *boff, const float *x,
                                  ptrdiff_t H, ptrdiff_t W, ptrdiff_t pt, ptrdiff_t pl,
                                  ptrdiff_t h0, ptrdiff_t Ra, ptrdiff_t hr, ptrdiff_t Wo,
                                  float *ws, float *y, ptrdiff_t ldy, const float *bias,
                                  int stream)
{
    if (F % 4 != 0 || !ck_rowgemm_available())
        return 0;
    ck_stem_wino_avx2(F, C, KH, sh, U, boff, x, H, W, pt, pl, h0, Ra, hr, Wo, ws, y, ldy, bias,
                      stream);
    return 1;
}

#else

static int ck_stem_wino_forward_f(ptrdiff_t F, ptrdiff_t C, ptrdiff_t KH, ptrdiff_t sh,
                                  const float *U, const ptrdiff_t *boff, const float *x,
                                  ptrdiff_t H, ptrdiff_t W, ptrdiff_t pt, ptrdiff_t pl,
                                  ptrdiff_t h0, ptrdiff_t Ra, ptrdiff_t hr, ptrdiff_t Wo,
                                  float *ws, float *y, ptrdiff_t ldy, const float *bias,
                                  int stream)
{
    (void)stream; (void)F; (void)C; (void)KH; (void)sh; (void)U; (void)boff; (void)x; (void)H;
    (void)W; (void)pt; (void)pl; (void)h0; (void)Ra; (void)hr; (void)Wo; (void)ws; (void)y; (void)ldy;
    (void)bias;
    return 0;
}

#endif
#endif
