/* Winograd F(4x4, 2x2) over the polyphase planes of a stride-2 4x4 conv (conv_plan
 * "polywino"), float32 on AVX2 + FMA.
 *
 * Why: a stride-2 conv with a 4x4 kernel (conv_transpose2d's grad_x at stride 2, kernel 4)
 * split into its 4 input phase planes Q_pq[r][c] = x[2r + p - pt][2c + q - pl] and its 4 2x2
 * sub-kernels w[:, :, 2a + p, 2b + q] is a STRIDE-1 2x2 conv over 4*C channels:
 *   y[o][i][j] = sum_{c, p, q, a, b} w[o][c][2a+p][2b+q] Q_pq[c][i+a][j+b].
 * A direct kernel runs at the FMA peak and no faster; F(4x4, 2x2) takes 25 multiplies per 16
 * outputs instead of 64 (2.56x fewer), the GEMMs over the 25 transformed positions on
 * csrc/fgemm.h.  Interpolation points 0, 1, -1, 1/2 and infinity (bench/RESULTS.md, tenth
 * session: convt_28's max error 4-7e-6 of the largest output, F(4x4, 3x3)'s 2.8e-6 on a 3x3
 * conv of that size, direct sums ~1e-6):
 *   B^T = [[1,-2,-1,2,0],[0,-1,1,2,0],[0,1,-3,2,0],[0,-1,0,1,0],[0,1,-2,-1,2]]
 *   G   = [[1,0],[1/2,1/2],[-1/6,1/6],[-8/3,-4/3],[0,1/2]]   (the filters: Python, float64)
 *   A^T = [[1,1,1,1,0],[0,1,-1,1/2,0],[0,1,1,1/4,0],[0,1,-1,1/8,1]]
 * The vector lanes are 8 channels (input) or 8 filters (output): the planes of 8 channels are
 * staged channels-last with zero borders, so a tile's transform is whole-vector arithmetic.
 * Layouts: V[e][tile][k] (k = phase * Cp + channel, Cp channels rounded up to 8) and
 * M[e][tile][f], so M[e] = V[e] @ U[e] (U[e]: k x f) is one row-major GEMM per position e.
 * Every value of an output tile depends on that tile's inputs alone, in a fixed order (the
 * GEMM: one FMA chain over k), so the bits do not depend on the task split or thread count.
 * grad_weight (conv_plan "weight_polywino"): the transposed algorithm, dw = G^T [(A dy A^T) .
 * (B^T d B)] G summed over the tiles -- the forward's V, grad_y's 4x4 tiles by A
 * (ck_pw_grad_input_f), the sums one chain over the batch's tiles a GEMM output.
 * Each function returns 0 when it did nothing (no AVX2 + FMA, or fgemm disabled).
 */
#ifndef CONVKIT_POLYWINO_H
#define CONVKIT_POLYWINO_H

#include <stddef.h>
#include <string.h>

#include "fgemm.h"

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
#define CK_PW_BUILT 1
#define CK_PW_TARGET __attribute__((target("avx2,fma")))
#else
#define CK_PW_BUILT 0
#endif

/* floats of one task's staged block: 4 phases of (4 * trows + 1) rows of (4 * tw + 1) columns,
 * 8 channels each */
static inline ptrdiff_t ck_pw_stage_floats(ptrdiff_t trows, ptrdiff_t tw)
{
    return 4 * (4 * trows + 1) * (4 * tw + 1) * 8;
}

#if CK_PW_BUILT

static int ck_pw_available(void) { return ck_fgemm_available(); }

/* Stage nc <= 8 channels (channel i's plane at x + i * cstride, H x W) for the tile rows
 * starting at phase row r0: s[((ph * nr + r - r0) * cols + c) * 8 + i] = Q_ph[r][c] of
 * channel i, ph = 2p + q, rows r0 .. r0 + nr - 1, columns 0 .. cols - 1; zero outside x and
 * in lanes >= nc.  Blocks of 16 x columns inside x: even and odd columns split, then 8 x 8
 * transposes (channels to lanes); the columns at the edges one by one. */
CK_PW_TARGET static int ck_pw_stage_f(const float *x, ptrdiff_t cstride, int nc, ptrdiff_t H,
                                      ptrdiff_t W, ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t r0,
                                      ptrdiff_t nr, ptrdiff_t cols, float *s)
{
    if (!ck_pw_available())
        return 0;
    ptrdiff_t ylo = 2 * r0 - pt, yhi = 2 * (r0 + nr) - pt;   /* x rows r0 .. r0+nr-1 read */
    for (ptrdiff_t yy = ylo; yy < yhi; ++yy)        /* the rows outside x: zeros */
        if (yy < 0 || yy >= H) {
            ptrdiff_t p = (yy + pt) & 1, r = ((yy + pt) >> 1) - r0;
            float *d0 = s + ((2 * p) * nr + r) * cols * 8;
            memset(d0, 0, sizeof(float) * cols * 8);
            memset(d0 + nr * cols * 8, 0, sizeof(float) * cols * 8);
        }
    if (ylo < 0)
        ylo = 0;
    if (yhi > H)
        yhi = H;
    ptrdiff_t xhi = 2 * cols - pl;
    if (xhi > W)
        xhi = W;
    /* plane columns [cb0, cb1) in whole blocks of 8 read x columns 2c - pl .. inside [0, W) */
    const ptrdiff_t cb0 = (pl + 1) / 2;
    ptrdiff_t nb = (xhi - (2 * cb0 - pl)) / 16;
    if (nb < 0)
        nb = 0;
    const ptrdiff_t cb1 = cb0 + 8 * nb;
    for (ptrdiff_t yy = ylo; yy < yhi; ++yy) {
        ptrdiff_t p = (yy + pt) & 1, r = ((yy + pt) >> 1) - r0;
        float *d0 = s + ((2 * p) * nr + r) * cols * 8, *d1 = d0 + nr * cols * 8;
        for (ptrdiff_t cb = cb0; cb < cb1; cb += 8) {
            __m256 ev[8], od[8];
            const ptrdiff_t xs = 2 * cb - pl;
            for (int i = 0; i < 8; ++i) {
                if (i < nc) {
                    const float *src = x + i * cstride + yy * W + xs;
                    __m256 lo = _mm256_loadu_ps(src), hi = _mm256_loadu_ps(src + 8);
                    __m256 e = _mm256_shuffle_ps(lo, hi, 0x88), o = _mm256_shuffle_ps(lo, hi, 0xDD);
                    ev[i] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xD8));
                    od[i] = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xD8));
                } else {
                    ev[i] = od[i] = _mm256_setzero_ps();
                }
            }
            ck_fg_tr8(ev);
            ck_fg_tr8(od);
            /* x column xs + 2k + q is plane column cb + k of phase q ((xs + pl) even) */
            for (int k = 0; k < 8; ++k) {
                _mm256_storeu_ps(d0 + (cb + k) * 8, ev[k]);
                _mm256_storeu_ps(d1 + (cb + k) * 8, od[k]);
            }
        }
        for (int q = 0; q < 2; ++q) {   /* the columns outside the blocks, zeros past x */
            float *d = q ? d1 : d0;
            for (ptrdiff_t c = 0; c < cols; ++c) {
                if (c == cb0 && cb1 > cb0)
                    c = cb1;
                if (c >= cols)
                    break;
                ptrdiff_t xx = 2 * c + q - pl;
                int in = xx >= 0 && xx < xhi;
                for (int i = 0; i < 8; ++i)
                    d[c * 8 + i] = in && i < nc ? x[i * cstride + yy * W + xx] : 0.0f;
            }
        }
    }
    return 1;
}

/* Stage nc <= 8 channels of a plane read at stride 1 (conv2d's grad_x by F(4x4, 2x2), see
 * ck_pw_output_d2s_f): s[((r - r0) * cols + c) * 8 + i] = x[i][r - pt][c - pl] for rows
 * r0 .. r0 + nr - 1, columns 0 .. cols - 1; zero outside x and in lanes >= nc.  8 x 8
 * transposes over the columns inside x, the rest one by one. */
CK_PW_TARGET static int ck_pw_stage1_f(const float *x, ptrdiff_t cstride, int nc, ptrdiff_t H,
                                       ptrdiff_t W, ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t r0,
                                       ptrdiff_t nr, ptrdiff_t cols, float *s)
{
    if (!ck_pw_available())
        return 0;
    ptrdiff_t ylo = r0 - pt, yhi = r0 + nr - pt;
    if (ylo < 0)
        ylo = 0;
    if (yhi > H)
        yhi = H;
    if (yhi <= ylo) {               /* no row of x in the block */
        memset(s, 0, sizeof(float) * nr * cols * 8);
        return 1;
    }
    ptrdiff_t xhi = cols - pl;      /* x columns 0 .. xhi - 1 land in the block */
    if (xhi > W)
        xhi = W;
    if (xhi < 0)
        xhi = 0;
    /* zeros: the rows outside x, then in each row of x the columns left of and past it (a
     * row's columns pl .. pl + xhi - 1 are all written below, every lane) */
    memset(s, 0, sizeof(float) * (ylo + pt - r0) * cols * 8);
    memset(s + (yhi + pt - r0) * cols * 8, 0, sizeof(float) * (nr - (yhi + pt - r0)) * cols * 8);
    for (ptrdiff_t yy = ylo; yy < yhi; ++yy) {
        float *row = s + (yy + pt - r0) * cols * 8;
        ptrdiff_t left = pl < cols ? pl : cols;
        memset(row, 0, sizeof(float) * left * 8);
        if (left + xhi < cols)
            memset(row + (left + xhi) * 8, 0, sizeof(float) * (cols - left - xhi) * 8);
    }
    for (ptrdiff_t yy = ylo; yy < yhi; ++yy) {
        float *d = s + ((yy + pt - r0) * cols + pl) * 8;
        ptrdiff_t xx = 0;
        for (; xx + 8 <= xhi; xx += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; ++i)
                r[i] = i < nc ? _mm256_loadu_ps(x + i * cstride + yy * W + xx)
                              : _mm256_setzero_ps();
            ck_fg_tr8(r);
            for (int k = 0; k < 8; ++k)
                _mm256_storeu_ps(d + (xx + k) * 8, r[k]);
        }
        for (; xx < xhi; ++xx)
            for (int i = 0; i < 8; ++i)
                d[xx * 8 + i] = i < nc ? x[i * cstride + yy * W + xx] : 0.0f;
    }
    return 1;
}

/* B^T of 5 vectors, in place (the additions in this order; 2a as a + a, exact) */
#define CK_PW_BT(d0, d1, d2, d3, d4, o0, o1, o2, o3, o4)                                \
    do {                                                                                 \
        __m256 t_ = _mm256_sub_ps(d3, d1), u_ = _mm256_sub_ps(d3, d2);                    \
        __m256 w_ = _mm256_sub_ps(d4, d2);                                                \
        o0 = _mm256_add_ps(_mm256_sub_ps(d0, d2), _mm256_add_ps(t_, t_));                 \
        o1 = _mm256_add_ps(_mm256_sub_ps(d2, d1), _mm256_add_ps(d3, d3));                 \
        o2 = _mm256_add_ps(_mm256_sub_ps(d1, d2), _mm256_add_ps(u_, u_));                 \
        o3 = t_;                                                                          \
        o4 = _mm256_sub_ps(_mm256_add_ps(w_, w_), t_);                                    \
    } while (0)

/* The input tiles of a staged block of nph phases (ck_pw_stage_f: 4, ck_pw_stage1_f: 1;
 * nr = 4 * ntr + 1 rows, cols = 4 * tw + 1):
 * v[e * es + (a * tw + j) * ts + ph * phs + lane] = (B^T d B)[e / 5][e % 5] of phase ph's tile
 * at tile row a, column j (d: rows 4a .. 4a+4, columns 4j .. 4j+4 of the block). */
CK_PW_TARGET static int ck_pw_input_f(const float *s, ptrdiff_t ntr, ptrdiff_t tw, float *v,
                                      ptrdiff_t es, ptrdiff_t ts, ptrdiff_t phs, int nph)
{
    if (!ck_pw_available())
        return 0;
    const ptrdiff_t nr = 4 * ntr + 1, cols = 4 * tw + 1;
    for (int ph = 0; ph < nph; ++ph)
        for (ptrdiff_t a = 0; a < ntr; ++a)
            for (ptrdiff_t j = 0; j < tw; ++j) {
                const float *d = s + ((ph * nr + 4 * a) * cols + 4 * j) * 8;
                float *o = v + (a * tw + j) * ts + ph * phs;
                __m256 t[5][5];
                for (int k = 0; k < 5; ++k) {   /* B^T down the 5 rows, column k */
                    __m256 r0 = _mm256_loadu_ps(d + k * 8);
                    __m256 r1 = _mm256_loadu_ps(d + (cols + k) * 8);
                    __m256 r2 = _mm256_loadu_ps(d + (2 * cols + k) * 8);
                    __m256 r3 = _mm256_loadu_ps(d + (3 * cols + k) * 8);
                    __m256 r4 = _mm256_loadu_ps(d + (4 * cols + k) * 8);
                    CK_PW_BT(r0, r1, r2, r3, r4, t[0][k], t[1][k], t[2][k], t[3][k], t[4][k]);
                }
                for (int k = 0; k < 5; ++k) {   /* B across the columns of row k */
                    __m256 o0, o1, o2, o3, o4;
                    CK_PW_BT(t[k][0], t[k][1], t[k][2], t[k][3], t[k][4], o0, o1, o2, o3, o4);
                    _mm256_storeu_ps(o + (5 * k) * es, o0);
                    _mm256_storeu_ps(o + (5 * k + 1) * es, o1);
                    _mm256_storeu_ps(o + (5 * k + 2) * es, o2);
                    _mm256_storeu_ps(o + (5 * k + 3) * es, o3);
                    _mm256_storeu_ps(o + (5 * k + 4) * es, o4);
                }
            }
    return 1;
}

/* A (5 x 4, A^T's transpose) of 4 vectors: the weight gradient's grad_y side (the transposed
 * F(4x4, 2x2): dw = G^T [(A dy A^T) . (B^T d B)] G, summed over the tiles); scales exact */
#define CK_PW_A(g0, g1, g2, g3, o0, o1, o2, o3, o4)                                       \
    do {                                                                                 \
        __m256 p_ = _mm256_add_ps(g0, g2), q_ = _mm256_add_ps(g1, g3);                    \
        o0 = g0;                                                                          \
        o1 = _mm256_add_ps(p_, q_);                                                       \
        o2 = _mm256_sub_ps(p_, q_);                                                       \
        o3 = _mm256_fmadd_ps(g3, _mm256_set1_ps(0.125f),                                  \
                             _mm256_fmadd_ps(g2, _mm256_set1_ps(0.25f),                   \
                                             _mm256_fmadd_ps(g1, _mm256_set1_ps(0.5f), g0))); \
        o4 = g3;                                                                          \
    } while (0)

/* The grad_y tiles of a block staged by ck_pw_stage1_f (nr = 4 * ntr rows, cols = 4 * tw,
 * 8 filters in the lanes): z[e * es + (a * tw + j) * ts + lane] = (A g A^T)[e / 5][e % 5] of
 * the 4 x 4 tile g at rows 4a .. 4a+3, columns 4j .. 4j+3 (zero beyond grad_y: no terms). */
CK_PW_TARGET static int ck_pw_grad_input_f(const float *s, ptrdiff_t ntr, ptrdiff_t tw, float *z,
                                           ptrdiff_t es, ptrdiff_t ts)
{
    if (!ck_pw_available())
        return 0;
    const ptrdiff_t cols = 4 * tw;
    for (ptrdiff_t a = 0; a < ntr; ++a)
        for (ptrdiff_t j = 0; j < tw; ++j) {
            const float *d = s + (4 * a * cols + 4 * j) * 8;
            float *o = z + (a * tw + j) * ts;
            __m256 t[5][4];
            for (int k = 0; k < 4; ++k) {   /* A down the 4 rows, column k */
                __m256 r0 = _mm256_loadu_ps(d + k * 8);
                __m256 r1 = _mm256_loadu_ps(d + (cols + k) * 8);
                __m256 r2 = _mm256_loadu_ps(d + (2 * cols + k) * 8);
                __m256 r3 = _mm256_loadu_ps(d + (3 * cols + k) * 8);
                CK_PW_A(r0, r1, r2, r3, t[0][k], t[1][k], t[2][k], t[3][k], t[4][k]);
            }
            for (int k = 0; k < 5; ++k) {   /* A^T across the columns of row k */
                __m256 o0, o1, o2, o3, o4;
                CK_PW_A(t[k][0], t[k][1], t[k][2], t[k][3], o0, o1, o2, o3, o4);
                _mm256_storeu_ps(o + (5 * k) * es, o0);
                _mm256_storeu_ps(o + (5 * k + 1) * es, o1);
                _mm256_storeu_ps(o + (5 * k + 2) * es, o2);
                _mm256_storeu_ps(o + (5 * k + 3) * es, o3);
                _mm256_storeu_ps(o + (5 * k + 4) * es, o4);
            }
        }
    return 1;
}

/* A^T of 5 vectors: 4 outputs */
#define CK_PW_AT(m0, m1, m2, m3, m4, y0, y1, y2, y3)                                      \
    do {                                                                                 \
        __m256 p_ = _mm256_add_ps(m1, m2), q_ = _mm256_sub_ps(m1, m2);                    \
        y0 = _mm256_add_ps(_mm256_add_ps(m0, p_), m3);                                    \
        y1 = _mm256_fmadd_ps(m3, _mm256_set1_ps(0.5f), q_);                               \
        y2 = _mm256_fmadd_ps(m3, _mm256_set1_ps(0.25f), p_);                              \
        y3 = _mm256_add_ps(_mm256_fmadd_ps(m3, _mm256_set1_ps(0.125f), q_), m4);          \
    } while (0)

/* Tiles j0 .. j1 - 1 of tile row a of a task's tiles from the products m[e * es + tile * ts +
 * lane]: ob[(r * 4tw + 4j + q) * 8 + lane] = (A^T m A)[r][q] of tile (a, j) + b */
CK_PW_TARGET static inline void ck_pw_tilerow_f(const float *m, ptrdiff_t es, ptrdiff_t ts,
                                                ptrdiff_t a, ptrdiff_t tw, ptrdiff_t j0,
                                                ptrdiff_t j1, __m256 b, float *ob)
{
    const ptrdiff_t ow = 4 * tw;    /* ob: 4 rows of 4 * tw columns of 8 filters */
    for (ptrdiff_t j = j0; j < j1; ++j) {
        const float *p = m + (a * tw + j) * ts;
        __m256 t[4][5];
        for (int k = 0; k < 5; ++k) {   /* A^T down the 5 rows, column k */
            __m256 e0 = _mm256_loadu_ps(p + k * es), e1 = _mm256_loadu_ps(p + (5 + k) * es);
            __m256 e2 = _mm256_loadu_ps(p + (10 + k) * es);
            __m256 e3 = _mm256_loadu_ps(p + (15 + k) * es);
            __m256 e4 = _mm256_loadu_ps(p + (20 + k) * es);
            CK_PW_AT(e0, e1, e2, e3, e4, t[0][k], t[1][k], t[2][k], t[3][k]);
        }
        for (int r = 0; r < 4; ++r) {   /* A across the columns of row r */
            __m256 y0, y1, y2, y3;
            CK_PW_AT(t[r][0], t[r][1], t[r][2], t[r][3], t[r][4], y0, y1, y2, y3);
            float *o = ob + (r * ow + 4 * j) * 8;
            _mm256_storeu_ps(o, _mm256_add_ps(y0, b));
            _mm256_storeu_ps(o + 8, _mm256_add_ps(y1, b));
            _mm256_storeu_ps(o + 16, _mm256_add_ps(y2, b));
            _mm256_storeu_ps(o + 24, _mm256_add_ps(y3, b));
        }
    }
}

CK_PW_TARGET static inline __m256 ck_pw_bias8(const float *bias, int nf)
{
    float bb[8] = {0};
    for (int i = 0; i < nf; ++i)
        bb[i] = bias[i];
    return _mm256_loadu_ps(bb);
}

/* Filters f0 .. f0 + nf - 1 (nf <= 8) of tiles first .. first + count - 1 (row-major) of a
 * task's ntr x tw tiles from the products m[e * es + tile * ts + lane] (m at filter f0):
 * y[i * fstride + (4a + r) * Wo + 4j + q] = (A^T m A)[r][q] + bias[i] for the rows 4a + r <
 * rows and columns 4j + q < Wo (y at row 0 of the task's first tile row, filter f0).  A tile
 * row's outputs go through ob (128 * tw floats, filters in the lanes), then out by 8 x 8
 * transposes, 8 columns at a time (a run of tiles may start and end inside a tile row:
 * conv_plan's tile runs, where whole rows leave the team idle). */
CK_PW_TARGET static int ck_pw_output_f(const float *m, ptrdiff_t es, ptrdiff_t ts,
                                       ptrdiff_t ntr, ptrdiff_t tw, ptrdiff_t first,
                                       ptrdiff_t count, int nf, const float *bias, float *y,
                                       ptrdiff_t fstride, ptrdiff_t rows, ptrdiff_t Wo,
                                       float *ob)
{
    if (!ck_pw_available())
        return 0;
    const __m256 b = ck_pw_bias8(bias, nf);
    const ptrdiff_t ow = 4 * tw;
    for (ptrdiff_t a = first / tw; a < ntr && a * tw < first + count; ++a) {
        ptrdiff_t j0 = first - a * tw, j1 = first + count - a * tw;
        if (j0 < 0)
            j0 = 0;
        if (j1 > tw)
            j1 = tw;
        ck_pw_tilerow_f(m, es, ts, a, tw, j0, j1, b, ob);
        ptrdiff_t nrow = rows - 4 * a, cend = 4 * j1 < Wo ? 4 * j1 : Wo;
        if (nrow > 4)
            nrow = 4;
        for (ptrdiff_t r = 0; r < nrow; ++r) {
            float *yr = y + (4 * a + r) * Wo;
            const float *orow = ob + r * ow * 8;
            ptrdiff_t c = 4 * j0;
            for (; c + 8 <= cend; c += 8) {
                __m256 v[8];
                for (int k = 0; k < 8; ++k)
                    v[k] = _mm256_loadu_ps(orow + (c + k) * 8);
                ck_fg_tr8(v);
                for (int i = 0; i < nf; ++i)
                    _mm256_storeu_ps(yr + i * fstride + c, v[i]);
            }
            for (; c < cend; ++c)
                for (int i = 0; i < nf; ++i)
                    yr[i * fstride + c] = orow[c * 8 + i];
        }
    }
    return 1;
}

/* conv2d's grad_x of a 4x4 stride-2 conv (conv_transpose2d's forward) by F(4x4, 2x2): output
 * phase (P, Q) of grad_x is a 2x2 conv of grad_y (padded by 1) with the flipped sub-kernel
 * w[:, :, 2(1-b) + P, 2(1-b') + Q], on one grid Z[u][v] (u, v from 0) for the 4 phases:
 * y[i * fstride + Y * W + X] = Z[u][v] + bias[i], Y = 2u + P - pt, X = 2v + Q - pl, for the
 * Y < H, X < W that are >= 0 (y at plane 0 of filter f0; m at phase (P, 0)'s filter f0, phase
 * (P, 1)'s qoff floats on; the task's tile rows start at grid row u0).  Both column phases of
 * a tile row go through ob (256 * tw floats), then out as whole runs of 16 columns of y
 * (8 x 8 transposes, the two phases interleaved); the columns at the edges one by one. */
CK_PW_TARGET static int ck_pw_output_d2s_f(const float *m, ptrdiff_t qoff, ptrdiff_t es,
                                           ptrdiff_t ts, ptrdiff_t ntr, ptrdiff_t tw, int nf,
                                           const float *bias, float *y, ptrdiff_t fstride,
                                           ptrdiff_t H, ptrdiff_t W, ptrdiff_t u0, int P,
                                           ptrdiff_t pt, ptrdiff_t pl, float *ob)
{
    if (!ck_pw_available())
        return 0;
    const __m256 b = ck_pw_bias8(bias, nf);
    const ptrdiff_t ow = 4 * tw;
    float *ob1 = ob + 4 * ow * 8;
    /* runs of 8 grid columns v .. v+7 (both phases: X = 2v - pl .. 2v - pl + 15) inside y */
    const ptrdiff_t vb0 = (pl + 1) / 2;
    ptrdiff_t vb1 = vb0;
    while (vb1 + 8 <= ow && 2 * (vb1 + 8) - pl <= W)
        vb1 += 8;
    for (ptrdiff_t a = 0; a < ntr; ++a) {
        ck_pw_tilerow_f(m, es, ts, a, tw, 0, tw, b, ob);
        ck_pw_tilerow_f(m + qoff, es, ts, a, tw, 0, tw, b, ob1);
        for (int r = 0; r < 4; ++r) {
            ptrdiff_t Y = 2 * (u0 + 4 * a + r) + P - pt;
            if (Y < 0 || Y >= H)
                continue;
            const float *o0 = ob + r * ow * 8, *o1 = ob1 + r * ow * 8;
            float *yr = y + Y * W - pl;     /* yr[2v + Q]: column X = 2v + Q - pl */
            for (ptrdiff_t v = vb0; v < vb1; v += 8) {
                __m256 e0[8], e1[8];
                for (int k = 0; k < 8; ++k) {
                    e0[k] = _mm256_loadu_ps(o0 + (v + k) * 8);
                    e1[k] = _mm256_loadu_ps(o1 + (v + k) * 8);
                }
                ck_fg_tr8(e0);
                ck_fg_tr8(e1);
                for (int i = 0; i < nf; ++i) {
                    __m256 lo = _mm256_unpacklo_ps(e0[i], e1[i]);
                    __m256 hi = _mm256_unpackhi_ps(e0[i], e1[i]);
                    float *d = yr + i * fstride + 2 * v;
                    _mm256_storeu_ps(d, _mm256_permute2f128_ps(lo, hi, 0x20));
                    _mm256_storeu_ps(d + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
                }
            }
            for (ptrdiff_t v = 0; v < ow; ++v) {
                if (v == vb0 && vb1 > vb0)
                    v = vb1;
                if (v >= ow || 2 * v - pl >= W)
                    break;
                for (int q = 0; q < 2; ++q) {
                    ptrdiff_t X = 2 * v + q - pl;
                    if (X < 0 || X >= W)
                        continue;
                    const float *o = q ? o1 : o0;
                    for (int i = 0; i < nf; ++i)
                        yr[i * fstride + 2 * v + q] = o[v * 8 + i];
                }
            }
        }
    }
    return 1;
}

#else  /* !CK_PW_BUILT */

static int ck_pw_available(void) { return 0; }
static int ck_pw_stage_f(const float *x, ptrdiff_t cstride, int nc, ptrdiff_t H, ptrdiff_t W,
                         ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t r0, ptrdiff_t nr, ptrdiff_t cols,
                         float *s)
{
    (void)x; (void)cstride; (void)nc; (void)H; (void)W; (void)pt; (void)pl; (void)r0;
    (void)nr; (void)cols; (void)s;
    return 0;
}
static int ck_pw_input_f(const float *s, ptrdiff_t ntr, ptrdiff_t tw, float *v, ptrdiff_t es,
                         ptrdiff_t ts, ptrdiff_t phs, int nph)
{
    (void)s; (void)ntr; (void)tw; (void)v; (void)es; (void)ts; (void)phs; (void)nph;
    return 0;
}
static int ck_pw_stage1_f(const float *x, ptrdiff_t cstride, int nc, ptrdiff_t H, ptrdiff_t W,
                          ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t r0, ptrdiff_t nr, ptrdiff_t cols,
                          float *s)
{
    (void)x; (void)cstride; (void)nc; (void)H; (void)W; (void)pt; (void)pl; (void)r0;
    (void)nr; (void)cols; (void)s;
    return 0;
}
static int ck_pw_output_d2s_f(const float *m, ptrdiff_t qoff, ptrdiff_t es, ptrdiff_t ts,
                              ptrdiff_t ntr, ptrdiff_t tw, int nf, const float *bias, float *y,
                              ptrdiff_t fstride, ptrdiff_t H, ptrdiff_t W, ptrdiff_t u0, int P,
                              ptrdiff_t pt, ptrdiff_t pl, float *ob)
{
    (void)m; (void)qoff; (void)es; (void)ts; (void)ntr; (void)tw; (void)nf; (void)bias;
    (void)y; (void)fstride; (void)H; (void)W; (void)u0; (void)P; (void)pt; (void)pl; (void)ob;
    return 0;
}
static int ck_pw_grad_input_f(const float *s, ptrdiff_t ntr, ptrdiff_t tw, float *z,
                              ptrdiff_t es, ptrdiff_t ts)
{
    (void)s; (void)ntr; (void)tw; (void)z; (void)es; (void)ts;
    return 0;
}
static int ck_pw_output_f(const float *m, ptrdiff_t es, ptrdiff_t ts, ptrdiff_t ntr,
                          ptrdiff_t tw, ptrdiff_t first, ptrdiff_t count, int nf,
                          const float *bias, float *y, ptrdiff_t fstride, ptrdiff_t rows,
                          ptrdiff_t Wo, float *ob)
{
    (void)m; (void)es; (void)ts; (void)ntr; (void)tw; (void)first; (void)count; (void)nf;
    (void)bias; (void)y;
    (void)fstride; (void)rows; (void)Wo; (void)ob;
    return 0;
}

#endif  /* CK_PW_BUILT */
#endif  /* CONVKIT_POLYWINO_H */
