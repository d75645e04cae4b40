/* Winograd F(2x2, 3x3) transforms for tiny maps (conv_plan "winograd" with "tiny": 3x3,
 * stride 1, padding 1 on every side, even H and W, H*W <= 64), float32 on AVX2.
 *
 * Why: at 8x8 and 4x4 the row transforms of _conv_winograd.pyx / wino.h see 4 or 2 tiles a row
 * (their vectors run over a row's tiles), so the per-row work dominates and F(2x2) ran 2.5x
 * slower than the batch GEMM (bench/RESULTS.md).  Here the vector lanes are 8 IMAGES instead:
 * a channel's planes of 8 images are transposed into one zero-bordered (H+2) x (W+2) x 8
 * block, and every tile's B^T d B is 32 whole-vector additions, nothing wasted.  The
 * transformed tiles' column (within a task's V / M) is group * (th*tw*8) + tile * 8 + lane,
 * lane = image within its group of 8 (missing images: zero lanes, never stored).
 *
 * The additions are those of _conv_winograd.pyx's F(2x2) in the same order (no FMA
 * contraction: intrinsics only); every value depends on its own image alone, so an image's
 * bits do not depend on its batch, its lane or the thread count (the GEMM between them is
 * csrc/fgemm.h / sgemm.h: one FMA chain over the channels per output).
 * Each function returns 0 when it did nothing (no AVX2 + FMA, or fgemm disabled).
 */
#ifndef CONVKIT_WINOTINY_H
#define CONVKIT_WINOTINY_H

#include <stddef.h>
#include <string.h>

#include "fgemm.h"

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include <immintrin.h>
#define CK_WT_BUILT 1
#define CK_WT_TARGET __attribute__((target("avx2,fma")))
#else
#define CK_WT_BUILT 0
#endif

/* scratch floats a task needs: the zero-bordered input block, the output block */
static inline ptrdiff_t ck_wt_scratch(ptrdiff_t H, ptrdiff_t W)
{
    return 8 * ((H + 2) * (W + 2) + H * W);
}

#if CK_WT_BUILT

static int ck_wt_available(void) { return ck_fgemm_available(); }

/* r[i] (8 rows of 8) becomes its transpose */
CK_WT_TARGET static inline void ck_wt_tr8(__m256 r[8])
{
    __m256 t[8], u[8];
    for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int q = 0; q < 4; ++q) {
        r[q] = _mm256_permute2f128_ps(u[q], u[4 + q], 0x20);
        r[4 + q] = _mm256_permute2f128_ps(u[q], u[4 + q], 0x31);
    }
}

/* The input tiles of channel plane c of ng <= 8 images (image i's plane at x + i * istride,
 * H x W): v[e * vs + tile * 8 + lane] = (B^T d B)[e / 4, e % 4] of the tile at tile row i,
 * column j (tile = i * W/2 + j; d = rows 2i-1 .. 2i+2, columns 2j-1 .. 2j+2, zero outside).
 * s: ck_wt_scratch floats; its first (H+2)*(W+2)*8 must have zero borders (the caller zeroes
 * them once: only the interior is written here). */
CK_WT_TARGET static int ck_wt_input_f(const float *x, ptrdiff_t istride, int ng, ptrdiff_t H,
                                      ptrdiff_t W, float *v, ptrdiff_t vs, float *s)
{
    if (!ck_wt_available())
        return 0;
    const ptrdiff_t Wp = W + 2, th = H / 2, tw = W / 2;
    if (W == 8) {
        __m256 r[8];
        for (ptrdiff_t h = 0; h < H; ++h) {
            for (int i = 0; i < 8; ++i)
                r[i] = i < ng ? _mm256_loadu_ps(x + i * istride + h * 8) : _mm256_setzero_ps();
            ck_wt_tr8(r);
            for (int w = 0; w < 8; ++w)
                _mm256_storeu_ps(s + ((h + 1) * Wp + w + 1) * 8, r[w]);
        }
    } else {
        for (ptrdiff_t h = 0; h < H; ++h)
            for (ptrdiff_t w = 0; w < W; ++w) {
                float *d = s + ((h + 1) * Wp + w + 1) * 8;
                for (int i = 0; i < 8; ++i)
                    d[i] = i < ng ? x[i * istride + h * W + w] : 0.0f;
            }
    }
    for (ptrdiff_t ti = 0; ti < th; ++ti)
        for (ptrdiff_t tj = 0; tj < tw; ++tj) {
            const float *d = s + (2 * ti * Wp + 2 * tj) * 8;
            float *o = v + (ti * tw + tj) * 8;
            __m256 t[4][4];
            for (int k = 0; k < 4; ++k) {  /* B^T down the 4 rows, column k */
                __m256 r0 = _mm256_loadu_ps(d + k * 8), r1 = _mm256_loadu_ps(d + (Wp + k) * 8);
                __m256 r2 = _mm256_loadu_ps(d + (2 * Wp + k) * 8);
                __m256 r3 = _mm256_loadu_ps(d + (3 * Wp + k) * 8);
                t[0][k] = _mm256_sub_ps(r0, r2);
                t[1][k] = _mm256_add_ps(r1, r2);
                t[2][k] = _mm256_sub_ps(r2, r1);
                t[3][k] = _mm256_sub_ps(r1, r3);
            }
            for (int k = 0; k < 4; ++k) {  /* B across the columns of row k */
                _mm256_storeu_ps(o + (4 * k) * vs, _mm256_sub_ps(t[k][0], t[k][2]));
                _mm256_storeu_ps(o + (4 * k + 1) * vs, _mm256_add_ps(t[k][1], t[k][2]));
                _mm256_storeu_ps(o + (4 * k + 2) * vs, _mm256_sub_ps(t[k][2], t[k][1]));
                _mm256_storeu_ps(o + (4 * k + 3) * vs, _mm256_sub_ps(t[k][1], t[k][3]));
            }
        }
    return 1;
}

/* Filter plane f of ng <= 8 images from the products m[e * ms + tile * 8 + lane]:
 * y[i * ostride + (2 ti + r) * W + 2 tj + q] = (A^T m A)[r, q] + bias for image i < ng.
 * s: ck_wt_scratch floats (the output block after the input block). */
CK_WT_TARGET static int ck_wt_output_f(const float *m, ptrdiff_t ms, int ng, ptrdiff_t H,
                                       ptrdiff_t W, float bias, float *y, ptrdiff_t ostride,
                                       float *s)
{
    if (!ck_wt_available())
        return 0;
    const ptrdiff_t th = H / 2, tw = W / 2;
    float *q = s + 8 * (H + 2) * (W + 2);
    const __m256 b = _mm256_set1_ps(bias);
    for (ptrdiff_t ti = 0; ti < th; ++ti)
        for (ptrdiff_t tj = 0; tj < tw; ++tj) {
            const float *p = m + (ti * tw + tj) * 8;
            __m256 e[16];
            for (int k = 0; k < 16; ++k)
                e[k] = _mm256_loadu_ps(p + k * ms);
            /* the sums of _conv_winograd.pyx's _wino_output_row, in its order */
            __m256 s0 = _mm256_add_ps(_mm256_add_ps(e[0], e[4]), e[8]);
            __m256 s1 = _mm256_add_ps(_mm256_add_ps(e[1], e[5]), e[9]);
            __m256 s2 = _mm256_add_ps(_mm256_add_ps(e[2], e[6]), e[10]);
            __m256 s3 = _mm256_add_ps(_mm256_add_ps(e[3], e[7]), e[11]);
            __m256 s4 = _mm256_sub_ps(_mm256_sub_ps(e[4], e[8]), e[12]);
            __m256 s5 = _mm256_sub_ps(_mm256_sub_ps(e[5], e[9]), e[13]);
            __m256 s6 = _mm256_sub_ps(_mm256_sub_ps(e[6], e[10]), e[14]);
            __m256 s7 = _mm256_sub_ps(_mm256_sub_ps(e[7], e[11]), e[15]);
            float *o = q + ((2 * ti) * W + 2 * tj) * 8;
            _mm256_storeu_ps(o, _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s0, s1), s2), b));
            _mm256_storeu_ps(o + 8, _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(s1, s2), s3), b));
            _mm256_storeu_ps(o + W * 8,
                             _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s4, s5), s6), b));
            _mm256_storeu_ps(o + W * 8 + 8,
                             _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(s5, s6), s7), b));
        }
    if (W == 8 && ng == 8) {
        __m256 r[8];
        for (ptrdiff_t h = 0; h < H; ++h) {
            for (int w = 0; w < 8; ++w)
                r[w] = _mm256_loadu_ps(q + (h * 8 + w) * 8);
            ck_wt_tr8(r);
            for (int i = 0; i < 8; ++i)
                _mm256_storeu_ps(y + i * ostride + h * 8, r[i]);
        }
    } else {
        for (int i = 0; i < ng; ++i)
            for (ptrdiff_t p = 0; p < H * W; ++p)
                y[i * ostride + p] = q[p * 8 + i];
    }
    return 1;
}

#else  /* !CK_WT_BUILT */

static int ck_wt_available(void) { return 0; }
static int ck_wt_input_f(const float *x, ptrdiff_t istride, int ng, ptrdiff_t H, ptrdiff_t W,
                         float *v, ptrdiff_t vs, float *s)
{
    (void)x; (void)istride; (void)ng; (void)H; (void)W; (void)v; (void)vs; (void)s;
    return 0;
}
static int ck_wt_output_f(const float *m, ptrdiff_t ms, int ng, ptrdiff_t H, ptrdiff_t W,
                          float bias, float *y, ptrdiff_t ostride, float *s)
{
    (void)m; (void)ms; (void)ng; (void)H; (void)W; (void)bias; (void)y; (void)ostride; (void)s;
    return 0;
}

#endif  /* CK_WT_BUILT */
#endif  /* CONVKIT_WINOTINY_H */
