/* AVX2 builds of two scalar scans of _conv_im2col.pyx, picked by CPUID on machines without
 * AVX-512 (where csrc/vsum.h's ck_sum_f does not run): plane_sum, the grad_bias sums, and
 * all_moderate's exponent scan.  Both give exactly the scalar loops' results: the sum keeps
 * its eight double accumulators, lane j adding p[i + j] in the same order, the tail into
 * lane 0 and the same final tree; the scan is an integer max.  Scalar, they were ~4 and ~2.5
 * instructions per float -- about 3% of a LeNet5 training step's instructions. */
#ifndef CK_SCAN8_H
#define CK_SCAN8_H

#include <stddef.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

static int ck_scan8_avx2(void)
{
    static int known = -1;
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2");
    }
    return known;
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

/* 1 when some u[i] has an exponent field (u[i] & 0x7f800000) of at least big */
__attribute__((target("avx2"))) static int ck_any_big32_avx2(const unsigned int *u, ptrdiff_t n,
                                                             unsigned int big)
{
    const __m256i e = _mm256_set1_epi32(0x7f800000);
    __m256i m0 = _mm256_setzero_si256(), m1 = _mm256_setzero_si256();
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        m0 = _mm256_max_epu32(m0, _mm256_and_si256(
            _mm256_loadu_si256((const __m256i *)(u + i)), e));
        m1 = _mm256_max_epu32(m1, _mm256_and_si256(
            _mm256_loadu_si256((const __m256i *)(u + i + 8)), e));
    }
    unsigned int t[8], mx = 0;
    _mm256_storeu_si256((__m256i *)t, _mm256_max_epu32(m0, m1));
    for (int j = 0; j < 8; ++j)
        mx = t[j] > mx ? t[j] : mx;
    for (; i < n; ++i)
        mx = (u[i] & 0x7f800000u) > mx ? (u[i] & 0x7f800000u) : mx;
    return mx >= big;
}

/* 1 with *out = plane_sum's result, or 0 (no AVX2: the caller sums) */
static int ck_sum8_f(const float *p, ptrdiff_t n, double *out)
{
    if (!ck_scan8_avx2())
        return 0;
    *out = ck_sum8_f_avx2(p, n);
    return 1;
}

/* 1 with *bad set, or 0 (no AVX2: the caller scans) */
static int ck_any_big32(const unsigned int *u, ptrdiff_t n, unsigned int big, int *bad)
{
    if (!ck_scan8_avx2())
        return 0;
    *bad = ck_any_big32_avx2(u, n, big);
    return 1;
}

#else

static int ck_sum8_f(const float *p, ptrdiff_t n, double *out)
{
    (void)p; (void)n; (void)out;
    return 0;
}

static int ck_any_big32(const unsigned int *u, ptrdiff_t n, unsigned int big, int *bad)
{
    (void)u; (void)n; (void)big; (void)bad;
    return 0;
}

#endif
#endif
