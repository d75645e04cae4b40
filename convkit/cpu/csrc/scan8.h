/* An AVX2 build of _conv_im2col.pyx's plane_sum (the grad_bias sums), picked by CPUID on
 * machines without AVX-512 (where csrc/vsum.h's ck_sum_f does not run).  It gives exactly the
 * scalar loop's result: eight double accumulators, lane j adding p[i + j] in the same order,
 * the tail into lane 0 and the same final tree.  Scalar it was ~4 instructions per float.
 * (all_moderate's exponent scan is csrc/moderate.h.) */
#ifndef CK_SCAN8_H
#define CK_SCAN8_H

#include <stddef.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#include "cpufeat.h"

static int ck_scan8_avx2(void)
{
    return ck_cpu_has_avx2();
}

__attribute__((target("avx2"))) static double ck_sum8_f_avx2(const float *p, ptrdiff_t n)
{
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();    /* s0..s3, s4..s7 */
    ptrdiff_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(p + i);
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    }
    double s[8];
    _mm256_storeu_pd(s, lo);
    _mm256_storeu_pd(s + 4, hi);
    for (; i < n; ++i)
        s[0] += p[i];
    return ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
}

/* 1 with *out = plane_sum's result, or 0 (no AVX2: the caller sums) */
static int ck_sum8_f(const float *p, ptrdiff_t n, double *out)
{
    if (!ck_scan8_avx2())
        return 0;
    *out = ck_sum8_f_avx2(p, n);
    return 1;
}

#else

static int ck_sum8_f(const float *p, ptrdiff_t n, double *out)
{
    (void)p; (void)n; (void)out;
    return 0;
}

#endif
#endif
