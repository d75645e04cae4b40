/* AVX-512 sum of a float32 run in double precision (bias gradients: one sum per output plane).
 * Four 8-double accumulators over 32 floats per step, combined in a fixed order, so a given
 * length always adds in the same order; it differs from the portable 8-accumulator loop of
 * _conv.pyx (plane_sum), which runs where the CPU has no AVX-512F.  The SSE2-compiled loop
 * converted and added one float at a time: 13% of a stem_224 weight gradient. */
#ifndef CONVKIT_VSUM_H
#define CONVKIT_VSUM_H

#include "_sgemm.h"

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

/* 1 with *out = the sum, or 0 (no AVX-512F: the caller sums) */
static int ck_sum_f(const float *p, ptrdiff_t n, double *out)
{
    if (!ck_sgemm_available())
        return 0;
    *out = ck_sum_f_avx512(p, n);
    return 1;
}

#else

static int ck_sum_f(const float *p, ptrdiff_t n, double *out)
{
    (void)p; (void)n; (void)out;
    return 0;
}

#endif
#endif
