/* Small AVX-512 helpers of _conv.pyx: short row copies, and the sum of a float32 run in double
 * precision (bias gradients: one sum per output plane).
 * Four 8-double accumulators over 32 floats per step, combined in a fixed order, so a given
 * length always adds in the same order; it differs from the portable 8-accumulator loop of
 * _conv.pyx (plane_sum), which runs where the CPU has no AVX-512F.  The SSE2-compiled loop
 * converted and added one float at a time: 13% of a stem_224 weight gradient. */
#ifndef CONVKIT_VSUM_H
#define CONVKIT_VSUM_H

#include "sgemm.h"

#if CK_SGEMM_BUILT

CK_TARGET static double ck_sum_f_avx512(const float *p, ptrdiff_t n)
{
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    __m512d s2 = _mm512_setzero_pd(), s3 = _mm512_setzero_pd();
    ptrdiff_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm256_loadu_ps(p + i)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_loadu_ps(p + i + 8)));
        s2 = _mm512_add_pd(s2, _mm512_cvtps_pd(_mm256_loadu_ps(p + i + 16)));
        s3 = _mm512_add_pd(s3, _mm512_cvtps_pd(_mm256_loadu_ps(p + i + 24)));
    }
    for (; i + 8 <= n; i += 8)
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm256_loadu_ps(p + i)));
    if (i < n) {
        __m256 t = _mm512_castps512_ps256(_mm512_maskz_loadu_ps(ck_mask(n - i), p + i));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(t));
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(_mm512_add_pd(s0, s1), _mm512_add_pd(s2, s3)));
}

/* dst[:n] = src[:n] (or 0 when src is NULL) for n <= 64 by masked vector moves: the rows of
 * small-map im2col (28 floats for lenet_c1) were memcpy/memset calls, half its forward. */
CK_TARGET static void ck_short_copy_avx512(float *dst, const float *src, ptrdiff_t n)
{
    for (ptrdiff_t i = 0; i < n; i += 16) {
        __mmask16 m = ck_mask(n - i);
        __m512 v = src != NULL ? _mm512_maskz_loadu_ps(m, src + i) : _mm512_setzero_ps();
        _mm512_mask_storeu_ps(dst + i, m, v);
    }
}

/* 1 when done (n <= 64 and AVX-512F), else 0: the caller copies */
static inline int ck_short_copy_f(float *dst, const float *src, ptrdiff_t n)
{
    if (n > 64 || !ck_sgemm_available())
        return 0;
    ck_short_copy_avx512(dst, src, n);
    return 1;
}

/* _conv.pyx's _im2col_taps (same arguments, same values) with the row copies inlined: a
 * library call or an out-of-line copy per row of 28 values cost more than the copy. */
static inline void ck_wo_range(ptrdiff_t off, ptrdiff_t sw, ptrdiff_t W, ptrdiff_t Wo,
                               ptrdiff_t *lo, ptrdiff_t *hi)
{
    ptrdiff_t a = 0, b = 0;
    if (off < 0)
        a = (-off + sw - 1) / sw;
    if (W - 1 - off >= 0)
        b = (W - 1 - off) / sw + 1;
    if (b > Wo)
        b = Wo;
    if (a > b)
        a = b;
    *lo = a;
    *hi = b;
}

CK_TARGET static inline __attribute__((always_inline)) void
ck_row_copy(float *dst, const float *src, ptrdiff_t n)
{
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dst + i, src != NULL ? _mm512_loadu_ps(src + i) : _mm512_setzero_ps());
    if (i < n) {
        __mmask16 m = ck_mask(n - i);
        _mm512_mask_storeu_ps(dst + i, m, src != NULL ? _mm512_maskz_loadu_ps(m, src + i)
                                                      : _mm512_setzero_ps());
    }
}

/* dst[j] = src[j*2 + o] for j < n (src[q] for q in [0, W) only: the caller keeps the range):
 * the even or odd values of a row, 16 at a time from two loads and one two-source permute. */
CK_TARGET static inline void ck_deinterleave2(float *dst, const float *src, ptrdiff_t n)
{
    const __m512i idx = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4,
                                         2, 0);
    ptrdiff_t j = 0;
    for (; j + 16 <= n && 2 * j + 32 <= 2 * n - 1; j += 16)
        _mm512_storeu_ps(dst + j, _mm512_permutex2var_ps(_mm512_loadu_ps(src + 2 * j), idx,
                                                         _mm512_loadu_ps(src + 2 * j + 16)));
    for (; j < n; ++j)
        dst[j] = src[2 * j];
}

CK_TARGET static void ck_im2col_taps_avx512(const float *x, ptrdiff_t H, ptrdiff_t W,
                                            ptrdiff_t kh, ptrdiff_t KW, ptrdiff_t sh,
                                            ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl,
                                            ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Wo,
                                            ptrdiff_t h0, ptrdiff_t nrows, float *cols,
                                            ptrdiff_t ldc, float *xs)
{
    ptrdiff_t Wq = (W + sw - 1) / sw;
    for (ptrdiff_t r = 0; r < nrows; ++r) {
        ptrdiff_t hi = (h0 + r) * sh - pt + kh * dh;
        if (hi < 0 || hi >= H) {
            for (ptrdiff_t kw = 0; kw < KW; ++kw)
                ck_row_copy(cols + kw * ldc + r * Wo, NULL, Wo);
            continue;
        }
        const float *xrow = x + hi * W;
        if (sw > 1 && xs != NULL)
            for (ptrdiff_t p = 0; p < sw; ++p)
                for (ptrdiff_t j = 0; p + j * sw < W; ++j)
                    xs[p * Wq + j] = xrow[p + j * sw];
        for (ptrdiff_t kw = 0; kw < KW; ++kw) {
            float *dst = cols + kw * ldc + r * Wo;
            ptrdiff_t off = kw * dw - pl, lo, up;
            ck_wo_range(off, sw, W, Wo, &lo, &up);
            if (lo == up) {
                ck_row_copy(dst, NULL, Wo);
                continue;
            }
            if (lo > 0)
                ck_row_copy(dst, NULL, lo);
            if (sw == 1) {
                ck_row_copy(dst + lo, xrow + off + lo, up - lo);
            } else if (xs != NULL) {
                ptrdiff_t p = ((off % sw) + sw) % sw, q = (off - p) / sw;
                ck_row_copy(dst + lo, xs + p * Wq + q + lo, up - lo);
            } else {
                for (ptrdiff_t wo = lo; wo < up; ++wo)
                    dst[wo] = xrow[off + wo * sw];
            }
            if (up < Wo)
                ck_row_copy(dst + up, NULL, Wo - up);
        }
    }
}

static int ck_im2col_taps_f(const float *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                            ptrdiff_t KW, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl,
                            ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Wo, ptrdiff_t h0,
                            ptrdiff_t nrows, float *cols, ptrdiff_t ldc, float *xs)
{
    if (!ck_sgemm_available())
        return 0;
    ck_im2col_taps_avx512(x, H, W, kh, KW, sh, sw, pt, pl, dh, dw, Wo, h0, nrows, cols, ldc, xs);
    return 1;
}

/* 1 with *out = the sum, or 0 (no AVX-512F: the caller sums) */
static int ck_sum_f(const float *p, ptrdiff_t n, double *out)
{
    if (!ck_sgemm_available())
        return 0;
    *out = ck_sum_f_avx512(p, n);
    return 1;
}

#else

static int ck_im2col_taps_f(const float *x, ptrdiff_t H, ptrdiff_t W, ptrdiff_t kh,
                            ptrdiff_t KW, ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl,
                            ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t Wo, ptrdiff_t h0,
                            ptrdiff_t nrows, float *cols, ptrdiff_t ldc, float *xs)
{
    (void)x; (void)H; (void)W; (void)kh; (void)KW; (void)sh; (void)sw; (void)pt; (void)pl;
    (void)dh; (void)dw; (void)Wo; (void)h0; (void)nrows; (void)cols; (void)ldc; (void)xs;
    return 0;
}

static inline int ck_short_copy_f(float *dst, const float *src, ptrdiff_t n)
{
    (void)dst; (void)src; (void)n;
    return 0;
}

static int ck_sum_f(const float *p, ptrdiff_t n, double *out)
{
    (void)p; (void)n; (void)out;
    return 0;
}

#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include "cpufeat.h"
/* ck_deinterleave2 on AVX2 (BLAS machines without AVX-512: rowphases' and the stem's planes):
 * 8 values from two loads, a shuffle and a lane permute; the stride-2 scalar loop took a fifth
 * of convt_28's grad_x.  Reads src[q] for q < 2n - 1 only, as ck_deinterleave2. */
__attribute__((target("avx2"))) static void ck_deinterleave2_avx2(float *dst, const float *src,
                                                                  ptrdiff_t n)
{
    ptrdiff_t j = 0;
    for (; j + 8 <= n && 2 * j + 16 <= 2 * n - 1; j += 8) {
        const __m256 e = _mm256_shuffle_ps(_mm256_loadu_ps(src + 2 * j),
                                           _mm256_loadu_ps(src + 2 * j + 8), 0x88);
        _mm256_storeu_ps(dst + j, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e),
                                                                         0xD8)));
    }
    for (; j < n; ++j)
        dst[j] = src[2 * j];
}

static int ck_avx2_available(void)
{
    return ck_cpu_has_avx2();
}
#define CK_DEINTERLEAVE2_AVX2 1
#else
#define CK_DEINTERLEAVE2_AVX2 0
#endif

/* One image's zero-padded input P (P[c, r, q] = x[c, r - pt, q - pl], 0 outside x) split into
 * its sh x sw stride phases, for the Rq phase rows from h0 on: phase (ph, pw) of channel c is
 * the plane Q + ((c*sh + ph)*sw + pw)*plane, whose row i, column j holds
 * P[c, (h0 + i)*sh + ph, j*sw + pw] for j < Wq.  Shared by the strided forward and the
 * weight gradient (conv2d_forward_phases, conv2d_backward_weight_dot). */
static void ck_phases_f(const float *x, ptrdiff_t C, ptrdiff_t H, ptrdiff_t W, ptrdiff_t sh,
                        ptrdiff_t sw, ptrdiff_t pt, ptrdiff_t pl, ptrdiff_t h0, ptrdiff_t Rq,
                        ptrdiff_t Wq, ptrdiff_t plane, float *Q)
{
#if CK_SGEMM_BUILT
    const int vec = sw == 2 && ck_sgemm_available();
#else
    const int vec = 0;
#endif
#if CK_DEINTERLEAVE2_AVX2
    const int vec2 = !vec && sw == 2 && ck_avx2_available();
#endif
    for (ptrdiff_t c = 0; c < C; ++c)
        for (ptrdiff_t ph = 0; ph < sh; ++ph)
            for (ptrdiff_t pw = 0; pw < sw; ++pw) {
                float *dst = Q + ((c * sh + ph) * sw + pw) * plane;
                /* columns j with 0 <= j*sw + pw - pl < W: [lo, up) */
                const ptrdiff_t off = pw - pl;
                ptrdiff_t lo = off < 0 ? (-off + sw - 1) / sw : 0;
                ptrdiff_t up = W - 1 - off >= 0 ? (W - 1 - off) / sw + 1 : 0;
                if (up > Wq)
                    up = Wq;
                if (lo > up)
                    lo = up;
                for (ptrdiff_t i = 0; i < Rq; ++i, dst += Wq) {
                    const ptrdiff_t r = (h0 + i) * sh + ph - pt;
                    if (r < 0 || r >= H || lo == up) {
                        memset(dst, 0, Wq * sizeof(float));
                        continue;
                    }
                    const float *src = x + (c * H + r) * W + off;
                    if (lo > 0)
                        memset(dst, 0, lo * sizeof(float));
                    if (sw == 1)
                        memcpy(dst + lo, src + lo, (up - lo) * sizeof(float));
#if CK_SGEMM_BUILT
                    else if (vec)
                        ck_deinterleave2(dst + lo, src + lo * 2, up - lo);
#endif
#if CK_DEINTERLEAVE2_AVX2
                    else if (vec2)
                        ck_deinterleave2_avx2(dst + lo, src + lo * 2, up - lo);
#endif
                    else
                        for (ptrdiff_t j = lo; j < up; ++j)
                            dst[j] = src[j * sw];
                    if (up < Wq)
                        memset(dst + up, 0, (Wq - up) * sizeof(float));
                }
            }
}

#endif
