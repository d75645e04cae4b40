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
 * The weight gradient (conv_plan "weight_winotiny"): grad_y's tiles by ck_wt_grad_f, the
 * products of a part of the batch by ck_wt_wgrad_dot_f, the parts' sums and G^T M G by
 * ck_wt_wgrad_out_f (plain C, double).
 * Each AVX2 function returns 0 when it did nothing (no AVX2 + FMA, or fgemm disabled).
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

/* The weight gradient's last step, filter f: gw[c * 9 ..] = G^T M G (3x3) for each of C
 * channels, M (4x4)[e] = the sum over parts p of m[p * ps + e * es + c], added in double in
 * order and rounded once; G = [[1,0,0],[1/2,1/2,1/2],[1/2,-1/2,1/2],[0,0,1]] (the forward's
 * filter transform U = G g G^T, transposed).  The parts are summed along c, 64 channels at a
 * time (m's rows 4 KiB apart share L1 sets: one c at a time through them missed L1 ~130 times a
 * channel, 2-3x the whole kernel's time at 32 x 32 channels and 8 parts). */
static void ck_wt_wgrad_out_f(const float *m, ptrdiff_t es, ptrdiff_t parts, ptrdiff_t ps,
                              ptrdiff_t C, float *gw)
{
    double D[16 * 64];
    for (ptrdiff_t c0 = 0; c0 < C; c0 += 64) {
        const ptrdiff_t nc = C - c0 < 64 ? C - c0 : 64;
        for (int e = 0; e < 16; ++e)
            for (ptrdiff_t c = 0; c < nc; ++c)
                D[e * 64 + c] = 0.0;
        for (ptrdiff_t p = 0; p < parts; ++p)
            for (int e = 0; e < 16; ++e) {
                const float *r = m + p * ps + e * es + c0;
                for (ptrdiff_t c = 0; c < nc; ++c)
                    D[e * 64 + c] += (double)r[c];
            }
        for (ptrdiff_t c = 0; c < nc; ++c) {
            double M[16], t[12];
            for (int e = 0; e < 16; ++e)
                M[e] = D[e * 64 + c];
            for (int k = 0; k < 4; ++k) {  /* t (3x4) = G^T M, column k */
                t[k] = M[k] + 0.5 * (M[4 + k] + M[8 + k]);
                t[4 + k] = 0.5 * (M[4 + k] - M[8 + k]);
                t[8 + k] = 0.5 * (M[4 + k] + M[8 + k]) + M[12 + k];
            }
            float *g = gw + (c0 + c) * 9;
            for (int i = 0; i < 3; ++i) {  /* row i of t G */
                const double *r = t + 4 * i;
                g[3 * i] = (float)(r[0] + 0.5 * (r[1] + r[2]));
                g[3 * i + 1] = (float)(0.5 * (r[1] - r[2]));
                g[3 * i + 2] = (float)(0.5 * (r[1] + r[2]) + r[3]);
            }
        }
    }
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

/* grad_y's tiles of filter plane f of ng <= 8 images (image i's plane at gy + i * istride,
 * H x W) for the weight gradient: z[e * zs + tile * 8 + lane] = (A g A^T)[e / 4, e % 4] of
 * the 2x2 block g at tile row i, column j (tile = i * W/2 + j), A = the transpose of A^T =
 * [[1,1,1,0],[0,1,-1,-1]] (the forward's output transform, transposed).  s: ck_wt_scratch
 * floats (its interior rows hold the 8 images' planes side by side, as ck_wt_input_f). */
CK_WT_TARGET static int ck_wt_grad_f(const float *gy, ptrdiff_t istride, int ng, ptrdiff_t H,
                                     ptrdiff_t W, float *z, ptrdiff_t zs, float *s)
{
    if (!ck_wt_available())
        return 0;
    const ptrdiff_t tw = W / 2;
    if (W == 8) {
        __m256 r[8];
        for (ptrdiff_t h = 0; h < H; ++h) {
            for (int i = 0; i < 8; ++i)
                r[i] = i < ng ? _mm256_loadu_ps(gy + i * istride + h * 8) : _mm256_setzero_ps();
            ck_wt_tr8(r);
            for (int w = 0; w < 8; ++w)
                _mm256_storeu_ps(s + (h * 8 + w) * 8, r[w]);
        }
    } else {
        for (ptrdiff_t p = 0; p < H * W; ++p)
            for (int i = 0; i < 8; ++i)
                s[p * 8 + i] = i < ng ? gy[i * istride + p] : 0.0f;
    }
    for (ptrdiff_t ti = 0; ti < H / 2; ++ti)
        for (ptrdiff_t tj = 0; tj < tw; ++tj) {
            const float *d = s + (2 * ti * W + 2 * tj) * 8;
            float *o = z + (ti * tw + tj) * 8;
            const __m256 a = _mm256_loadu_ps(d), b = _mm256_loadu_ps(d + 8);
            const __m256 c = _mm256_loadu_ps(d + W * 8), e = _mm256_loadu_ps(d + W * 8 + 8);
            const __m256 zero = _mm256_setzero_ps();
            /* A down the 2 rows (a b / c e): rows a, a+c, a-c, -c of columns 0 and 1 */
            __m256 t0[4] = {a, _mm256_add_ps(a, c), _mm256_sub_ps(a, c), _mm256_sub_ps(zero, c)};
            __m256 t1[4] = {b, _mm256_add_ps(b, e), _mm256_sub_ps(b, e), _mm256_sub_ps(zero, e)};
            for (int k = 0; k < 4; ++k) {  /* A across row k */
                _mm256_storeu_ps(o + (4 * k) * zs, t0[k]);
                _mm256_storeu_ps(o + (4 * k + 1) * zs, _mm256_add_ps(t0[k], t1[k]));
                _mm256_storeu_ps(o + (4 * k + 2) * zs, _mm256_sub_ps(t0[k], t1[k]));
                _mm256_storeu_ps(o + (4 * k + 3) * zs, _mm256_sub_ps(zero, t1[k]));
            }
        }
    return 1;
}

/* the sums of the 8 lanes of r0 .. r3, in a fixed order: lane pairs, then pairs of pairs
 * (_mm256_hadd_ps), then the two 128-bit halves */
CK_WT_TARGET static inline __m128 ck_wt_hsum4(__m256 r0, __m256 r1, __m256 r2, __m256 r3)
{
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(r0, r1), _mm256_hadd_ps(r2, r3));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* The weight gradient's plane products: m[f * ldm + c] (+)= sum over k < K (a multiple of 8)
 * of z[f * zs + k] * v[c * vs + k], f < F, c < C (acc: add to m, else overwrite).  Each output
 * is 8 lane chains (k = lane mod 8, one FMA each in k order) summed by ck_wt_hsum4: a
 * fixed order, the same wherever the output sits.  Blocks of 2 filters x 4 channels (8 chains and 6
 * loads a step in 14 registers); why not the GEMM: both operands run along k, so a GEMM packs
 * (transposes) one of them each call, and its calls with k of 32-256 cost 2-4x the FMAs. */
CK_WT_TARGET static int ck_wt_wgrad_dot_f(const float *z, ptrdiff_t zs, const float *v,
                                          ptrdiff_t vs, ptrdiff_t K, ptrdiff_t F, ptrdiff_t C,
                                          float *m, ptrdiff_t ldm, int acc)
{
    if (!ck_wt_available())
        return 0;
    for (ptrdiff_t f = 0; f < F; f += 2) {
        const int nf = F - f < 2 ? 1 : 2;
        for (ptrdiff_t c = 0; c < C; c += 4) {
            const int nc = C - c < 4 ? (int)(C - c) : 4;
            const float *z0 = z + f * zs, *z1 = z + (f + nf - 1) * zs;
            const float *v0 = v + c * vs, *v1 = v + (c + (nc > 1)) * vs;
            const float *v2 = v + (c + (nc > 2) * 2) * vs, *v3 = v + (c + (nc > 3) * 3) * vs;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            for (ptrdiff_t k = 0; k < K; k += 8) {  /* (short blocks repeat a row: unused) */
                const __m256 p = _mm256_loadu_ps(z0 + k), q = _mm256_loadu_ps(z1 + k);
                __m256 x = _mm256_loadu_ps(v0 + k);
                a0 = _mm256_fmadd_ps(p, x, a0);
                b0 = _mm256_fmadd_ps(q, x, b0);
                x = _mm256_loadu_ps(v1 + k);
                a1 = _mm256_fmadd_ps(p, x, a1);
                b1 = _mm256_fmadd_ps(q, x, b1);
                x = _mm256_loadu_ps(v2 + k);
                a2 = _mm256_fmadd_ps(p, x, a2);
                b2 = _mm256_fmadd_ps(q, x, b2);
                x = _mm256_loadu_ps(v3 + k);
                a3 = _mm256_fmadd_ps(p, x, a3);
                b3 = _mm256_fmadd_ps(q, x, b3);
            }
            const __m128 r[2] = {ck_wt_hsum4(a0, a1, a2, a3), ck_wt_hsum4(b0, b1, b2, b3)};
            for (int i = 0; i < nf; ++i) {
                float *o = m + (f + i) * ldm + c;
                if (nc == 4) {
                    _mm_storeu_ps(o, acc ? _mm_add_ps(_mm_loadu_ps(o), r[i]) : r[i]);
                } else {
                    float t[4];
                    _mm_storeu_ps(t, r[i]);
                    for (int j = 0; j < nc; ++j)
                        o[j] = acc ? o[j] + t[j] : t[j];
                }
            }
        }
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

static int ck_wt_grad_f(const float *gy, ptrdiff_t istride, int ng, ptrdiff_t H, ptrdiff_t W,
                        float *z, ptrdiff_t zs, float *s)
{
    (void)gy; (void)istride; (void)ng; (void)H; (void)W; (void)z; (void)zs; (void)s;
    return 0;
}

static int ck_wt_wgrad_dot_f(const float *z, ptrdiff_t zs, const float *v, ptrdiff_t vs,
                             ptrdiff_t K, ptrdiff_t F, ptrdiff_t C, float *m, ptrdiff_t ldm,
                             int acc)
{
    (void)z; (void)zs; (void)v; (void)vs; (void)K; (void)F; (void)C; (void)m; (void)ldm;
    (void)acc;
    return 0;
}

#endif  /* CK_WT_BUILT */
#endif  /* CONVKIT_WINOTINY_H */
