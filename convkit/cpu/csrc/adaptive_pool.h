/* Sums of contiguous runs for adaptive average pooling (declared in csrc/adaptive_pool.pxd,
   used by _adaptive_pool.pyx): the whole plane of a global average, a row of column sums.
   Sixteen float / eight double partial sums in a fixed pattern, combined in a fixed tree, so
   no loop-carried add latency (a plain loop adds one value per 3-4 cycles: it cannot be
   reordered without -ffast-math) and a given length always adds in the same order.  The SSE2
   path (every x86-64 CPU) and the portable loop below it keep the very same partial sums, so
   the result does not depend on the path.  NaN and inf propagate as in any sum. */
#ifndef CK_ADAPTIVE_POOL_H
#define CK_ADAPTIVE_POOL_H
#include <stddef.h>
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define CK_AP_SSE2 1
#endif

/* partial sum m (m < 16) holds p[16j + m]; the four 4-lane groups are then added pairwise,
   the lanes too; a tail of < 4 values is added last, in order */
static float ck_run_sum_f(const float* p, ptrdiff_t n) {
    ptrdiff_t i = 0;
    float t[4], s;
#ifdef CK_AP_SSE2
    __m128 a0 = _mm_setzero_ps(), a1 = _mm_setzero_ps(), a2 = _mm_setzero_ps(),
           a3 = _mm_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        a0 = _mm_add_ps(a0, _mm_loadu_ps(p + i));
        a1 = _mm_add_ps(a1, _mm_loadu_ps(p + i + 4));
        a2 = _mm_add_ps(a2, _mm_loadu_ps(p + i + 8));
        a3 = _mm_add_ps(a3, _mm_loadu_ps(p + i + 12));
    }
    for (; i + 4 <= n; i += 4)
        a0 = _mm_add_ps(a0, _mm_loadu_ps(p + i));
    _mm_storeu_ps(t, _mm_add_ps(_mm_add_ps(a0, a1), _mm_add_ps(a2, a3)));
#else
    float a[16] = {0};
    for (; i + 16 <= n; i += 16)
        for (int m = 0; m < 16; m++) a[m] += p[i + m];
    for (; i + 4 <= n; i += 4)
        for (int m = 0; m < 4; m++) a[m] += p[i + m];
    for (int m = 0; m < 4; m++) t[m] = (a[m] + a[4 + m]) + (a[8 + m] + a[12 + m]);
#endif
    s = (t[0] + t[1]) + (t[2] + t[3]);
    for (; i < n; i++) s += p[i];
    return s;
}

/* the same pattern for doubles: eight partial sums in four 2-lane groups */
static double ck_run_sum_d(const double* p, ptrdiff_t n) {
    ptrdiff_t i = 0;
    double t[2], s;
#ifdef CK_AP_SSE2
    __m128d a0 = _mm_setzero_pd(), a1 = _mm_setzero_pd(), a2 = _mm_setzero_pd(),
            a3 = _mm_setzero_pd();
    for (; i + 8 <= n; i += 8) {
        a0 = _mm_add_pd(a0, _mm_loadu_pd(p + i));
        a1 = _mm_add_pd(a1, _mm_loadu_pd(p + i + 2));
        a2 = _mm_add_pd(a2, _mm_loadu_pd(p + i + 4));
        a3 = _mm_add_pd(a3, _mm_loadu_pd(p + i + 6));
    }
    for (; i + 2 <= n; i += 2)
        a0 = _mm_add_pd(a0, _mm_loadu_pd(p + i));
    _mm_storeu_pd(t, _mm_add_pd(_mm_add_pd(a0, a1), _mm_add_pd(a2, a3)));
#else
    double a[8] = {0};
    for (; i + 8 <= n; i += 8)
        for (int m = 0; m < 8; m++) a[m] += p[i + m];
    for (; i + 2 <= n; i += 2)
        for (int m = 0; m < 2; m++) a[m] += p[i + m];
    for (int m = 0; m < 2; m++) t[m] = (a[m] + a[2 + m]) + (a[4 + m] + a[6 + m]);
#endif
    s = t[0] + t[1];
    for (; i < n; i++) s += p[i];
    return s;
}
#endif
