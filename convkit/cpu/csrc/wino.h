/* AVX-512 versions of the Winograd F(2x2, 3x3) row transforms of convkit/cpu/_conv.pyx
 * (_wino_input_row, _wino_output_row), float32 only, 16 tiles per step.
 *
 * They do the same additions in the same order as the portable Cython loops (no contraction
 * into FMAs), so both give the same bits; the portable loops run where the CPU has no
 * AVX-512F.  Each function returns 0 when it did nothing.  Compiled SSE2 code ran these
 * transforms one or two floats at a time: 40% of a vgg_56 forward.
 */
#ifndef CONVKIT_WINO_H
#define CONVKIT_WINO_H

#include "sgemm.h"

#if CK_SGEMM_BUILT

/* lanes [lo, hi) of a 16-lane block whose lane 0 is element `at` */
static inline __mmask16 ck_range_mask(ptrdiff_t at, ptrdiff_t lo, ptrdiff_t hi)
{
    ptrdiff_t a = lo - at, b = hi - at;
    if (a < 0)
        a = 0;
    if (b > 16)
        b = 16;
    if (b <= a)
        return 0;
    return (__mmask16)(ck_mask(b) & ~ck_mask(a));
}

CK_TARGET static void ck_wino_input_row_avx512(const float *x, ptrdiff_t H, ptrdiff_t W,
                                               ptrdiff_t r0, ptrdiff_t pl, ptrdiff_t tw,
                                               float *v, ptrdiff_t vs, float *T)
{
    /* T (4 rows of Wb): B^T down the 4 zero-padded input rows; padded column col holds
     * x[row, col - pl]; masked loads stand in for the padding */
    const ptrdiff_t Wb = 2 * tw + 2;
    const float *rows[4];
    for (int k = 0; k < 4; ++k)
        rows[k] = (r0 + k >= 0 && r0 + k < H) ? x + (r0 + k) * W : NULL;
    for (ptrdiff_t c0 = 0; c0 < Wb; c0 += 16) {
        /* padded columns [c0, c0+16) that exist: those with 0 <= col - pl < W, col < Wb */
        __mmask16 m = ck_range_mask(c0, pl, pl + W) & ck_mask(Wb - c0);
        __m512 R[4];
        for (int k = 0; k < 4; ++k)
            /* the address of lane 0 may lie before the row (masked lanes are never read) */
            R[k] = rows[k] ? _mm512_maskz_loadu_ps(m, (const float *)((const char *)rows[k]
                                                   + (c0 - pl) * (ptrdiff_t)sizeof(float)))
                           : _mm512_setzero_ps();
        __mmask16 st = ck_mask(Wb - c0);
        _mm512_mask_storeu_ps(T + c0, st, _mm512_sub_ps(R[0], R[2]));
        _mm512_mask_storeu_ps(T + Wb + c0, st, _mm512_add_ps(R[1], R[2]));
        _mm512_mask_storeu_ps(T + 2 * Wb + c0, st, _mm512_sub_ps(R[2], R[1]));
        _mm512_mask_storeu_ps(T + 3 * Wb + c0, st, _mm512_sub_ps(R[1], R[3]));
    }
    /* then B across each tile's 4 columns: tile j reads t[2j .. 2j+3] */
    const __m512i ev = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i od = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    for (int k = 0; k < 4; ++k) {
        const float *t = T + k * Wb;
        for (ptrdiff_t j0 = 0; j0 < tw; j0 += 16) {
            ptrdiff_t base = 2 * j0;
            __m512 a = _mm512_maskz_loadu_ps(ck_mask(Wb - base), t + base);
            __m512 b = _mm512_maskz_loadu_ps(ck_mask(Wb - base - 16), t + base + 16);
            __m512 a2 = _mm512_maskz_loadu_ps(ck_mask(Wb - base - 2), t + base + 2);
            __m512 b2 = _mm512_maskz_loadu_ps(ck_mask(Wb - base - 18), t + base + 18);
            __m512 t0 = _mm512_permutex2var_ps(a, ev, b);     /* t[2j]   */
            __m512 t1 = _mm512_permutex2var_ps(a, od, b);     /* t[2j+1] */
            __m512 t2 = _mm512_permutex2var_ps(a2, ev, b2);   /* t[2j+2] */
            __m512 t3 = _mm512_permutex2var_ps(a2, od, b2);   /* t[2j+3] */
            __mmask16 st = ck_mask(tw - j0);
            float *o = v + (k * 4) * vs + j0;
            _mm512_mask_storeu_ps(o, st, _mm512_sub_ps(t0, t2));
            _mm512_mask_storeu_ps(o + vs, st, _mm512_add_ps(t1, t2));
            _mm512_mask_storeu_ps(o + 2 * vs, st, _mm512_sub_ps(t2, t1));
            _mm512_mask_storeu_ps(o + 3 * vs, st, _mm512_sub_ps(t1, t3));
        }
    }
}

/* y[r, 2j + q] = (A^T m_j A)[r, q] + bias for tiles j < tw, rows 0 and (two_rows) 1, Wo columns */
CK_TARGET static void ck_wino_output_row_avx512(const float *m, ptrdiff_t ms, ptrdiff_t tw,
                                                float bias, float *y, ptrdiff_t Wo, int two_rows)
{
    const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                        24, 8);
    const __m512 vb = _mm512_set1_ps(bias);
    for (ptrdiff_t j0 = 0; j0 < tw; j0 += 16) {
        __mmask16 lm = ck_mask(tw - j0);
        __m512 e[16];
        for (int i = 0; i < 16; ++i)
            e[i] = (two_rows || i < 12) ? _mm512_maskz_loadu_ps(lm, m + i * ms + j0)
                                        : _mm512_setzero_ps();
        ptrdiff_t col = 2 * j0;
        __mmask16 s0 = ck_mask(Wo - col), s1 = ck_mask(Wo - col - 16);
        /* row 0: s_q = m_q + m_{4+q} + m_{8+q} */
        __m512 a0 = _mm512_add_ps(_mm512_add_ps(e[0], e[4]), e[8]);
        __m512 a1 = _mm512_add_ps(_mm512_add_ps(e[1], e[5]), e[9]);
        __m512 a2 = _mm512_add_ps(_mm512_add_ps(e[2], e[6]), e[10]);
        __m512 a3 = _mm512_add_ps(_mm512_add_ps(e[3], e[7]), e[11]);
        __m512 y0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), a2), vb);
        __m512 y1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(a1, a2), a3), vb);
        _mm512_mask_storeu_ps(y + col, s0, _mm512_permutex2var_ps(y0, lo, y1));
        _mm512_mask_storeu_ps(y + col + 16, s1, _mm512_permutex2var_ps(y0, hi, y1));
        if (!two_rows)
            continue;
        /* row 1: s_q = m_{4+q} - m_{8+q} - m_{12+q} */
        __m512 b0 = _mm512_sub_ps(_mm512_sub_ps(e[4], e[8]), e[12]);
        __m512 b1 = _mm512_sub_ps(_mm512_sub_ps(e[5], e[9]), e[13]);
        __m512 b2 = _mm512_sub_ps(_mm512_sub_ps(e[6], e[10]), e[14]);
        __m512 b3 = _mm512_sub_ps(_mm512_sub_ps(e[7], e[11]), e[15]);
        __m512 z0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(b0, b1), b2), vb);
        __m512 z1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(b1, b2), b3), vb);
        _mm512_mask_storeu_ps(y + Wo + col, s0, _mm512_permutex2var_ps(z0, lo, z1));
        _mm512_mask_storeu_ps(y + Wo + col + 16, s1, _mm512_permutex2var_ps(z0, hi, z1));
    }
}

static int ck_wino_input_row_f(const float *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t r0,
                               ptrdiff_t pl, ptrdiff_t tw, float *v, ptrdiff_t vs, float *scratch)
{
    if (!ck_sgemm_available())
        return 0;
    ck_wino_input_row_avx512(x, H, W, r0, pl, tw, v, vs, scratch);
    return 1;
}

static int ck_wino_output_row_f(const float *m, ptrdiff_t ms, ptrdiff_t tw, float bias, float *y,
                                ptrdiff_t Wo, int two_rows)
{
    if (!ck_sgemm_available())
        return 0;
    ck_wino_output_row_avx512(m, ms, tw, bias, y, Wo, two_rows);
    return 1;
}

/* The filter transform of _conv.pyx's _wino_filter (U = G g G^T) for up to 16 filters at
 * once, one per lane: filter l's 9 values start at g + l*ls (reversed when flip: grad_x's
 * filters, turned by 180 degrees), its 16 outputs go to u[e*us + l].  Same operations in the
 * same order as the scalar code.  The scalar code took 0.7 ms (forward) and 1.1 ms (grad_x)
 * of a 256 x 256 layer's 6-9 ms on two cores. */
CK_TARGET static void ck_wino_filters_avx512(const float *g, ptrdiff_t ls, ptrdiff_t nl, int flip,
                                             float *u, ptrdiff_t us)
{
    const __mmask16 m = ck_mask(nl);
    const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6,
                                                            5, 4, 3, 2, 1, 0),
                                           _mm512_set1_epi32((int)ls));
    const __m512 h = _mm512_set1_ps(0.5f);
    __m512 v[9], t[12];
    for (int k = 0; k < 9; ++k)
        v[k] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, idx, g + (flip ? 8 - k : k), 4);
    for (int k = 0; k < 3; ++k) {                              /* t (4x3) = G g */
        t[k] = v[k];
        t[3 + k] = _mm512_mul_ps(h, _mm512_add_ps(_mm512_add_ps(v[k], v[3 + k]), v[6 + k]));
        t[6 + k] = _mm512_mul_ps(h, _mm512_add_ps(_mm512_sub_ps(v[k], v[3 + k]), v[6 + k]));
        t[9 + k] = v[6 + k];
    }
    for (int k = 0; k < 4; ++k) {                              /* row k of t G^T */
        const __m512 a = t[k * 3], b = t[k * 3 + 1], c = t[k * 3 + 2];
        _mm512_mask_storeu_ps(u + (k * 4) * us, m, a);
        _mm512_mask_storeu_ps(u + (k * 4 + 1) * us, m,
                              _mm512_mul_ps(h, _mm512_add_ps(_mm512_add_ps(a, b), c)));
        _mm512_mask_storeu_ps(u + (k * 4 + 2) * us, m,
                              _mm512_mul_ps(h, _mm512_add_ps(_mm512_sub_ps(a, b), c)));
        _mm512_mask_storeu_ps(u + (k * 4 + 3) * us, m, c);
    }
}

static int ck_wino_filters_f(const float *g, ptrdiff_t ls, ptrdiff_t nl, int flip, float *u,
                             ptrdiff_t us)
{
    if (!ck_sgemm_available() || ls * 15 + 9 > 0x7fffffff)
        return 0;
    ck_wino_filters_avx512(g, ls, nl, flip, u, us);
    return 1;
}

#else

static int ck_wino_input_row_f(const float *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t r0,
                               ptrdiff_t pl, ptrdiff_t tw, float *v, ptrdiff_t vs, float *scratch)
{
    (void)x; (void)H; (void)W; (void)r0; (void)pl; (void)tw; (void)v; (void)vs; (void)scratch;
    return 0;
}

static int ck_wino_output_row_f(const float *m, ptrdiff_t ms, ptrdiff_t tw, float bias, float *y,
                                ptrdiff_t Wo, int two_rows)
{
    (void)m; (void)ms; (void)tw; (void)bias; (void)y; (void)Wo; (void)two_rows;
    return 0;
}

static int ck_wino_filters_f(const float *g, ptrdiff_t ls, ptrdiff_t nl, int flip, float *u,
                             ptrdiff_t us)
{
    (void)g; (void)ls; (void)nl; (void)flip; (void)u; (void)us;
    return 0;
}

#endif
#endif
