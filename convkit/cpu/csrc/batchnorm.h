/* Batch-norm sums and slab loops (declared in csrc/batchnorm.pxd, used by _batchnorm.pyx). */
#ifndef CK_BATCHNORM_H
#define CK_BATCHNORM_H
/* Double-precision sums over one contiguous run, SSE2 (every x86-64 CPU) with several
   independent accumulators (a plain C loop would be one serial add chain: C forbids the
   compiler to reorder floating-point additions).  Plain C elsewhere. */
#include <stddef.h>
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define CK_BN_SSE2 1
#endif

#ifdef CK_BN_SSE2
/* two values of x widened to double (exact for float) */
static inline __m128d ck_bn_ld2_f(const float* x) {
    return _mm_cvtps_pd(_mm_castsi128_ps(_mm_loadl_epi64((const __m128i*)x)));
}
static inline __m128d ck_bn_ld2_d(const double* x) { return _mm_loadu_pd(x); }
/* the vector part of ck_bn_sums: four pairs of accumulators, eight values a step */
#define CK_BN_SUMS_SSE2(S)                                                                    \
    __m128d vm = _mm_set1_pd(m), s0 = _mm_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;            \
    __m128d q0 = s0, q1 = s0, q2 = s0, q3 = s0, d0, d1, d2, d3;                               \
    double buf[2];                                                                            \
    for (; i + 8 <= n; i += 8) {                                                              \
        d0 = _mm_sub_pd(ck_bn_ld2_##S(x + i), vm);                                            \
        d1 = _mm_sub_pd(ck_bn_ld2_##S(x + i + 2), vm);                                        \
        d2 = _mm_sub_pd(ck_bn_ld2_##S(x + i + 4), vm);                                        \
        d3 = _mm_sub_pd(ck_bn_ld2_##S(x + i + 6), vm);                                        \
        s0 = _mm_add_pd(s0, d0); s1 = _mm_add_pd(s1, d1);                                     \
        s2 = _mm_add_pd(s2, d2); s3 = _mm_add_pd(s3, d3);                                     \
        q0 = _mm_add_pd(q0, _mm_mul_pd(d0, d0)); q1 = _mm_add_pd(q1, _mm_mul_pd(d1, d1));     \
        q2 = _mm_add_pd(q2, _mm_mul_pd(d2, d2)); q3 = _mm_add_pd(q3, _mm_mul_pd(d3, d3));     \
    }                                                                                         \
    _mm_storeu_pd(buf, _mm_add_pd(_mm_add_pd(s0, s1), _mm_add_pd(s2, s3)));                   \
    ts = buf[0] + buf[1];                                                                     \
    _mm_storeu_pd(buf, _mm_add_pd(_mm_add_pd(q0, q1), _mm_add_pd(q2, q3)));                   \
    tq = buf[0] + buf[1];
#else
#define CK_BN_SUMS_SSE2(S)
#endif

/* s += sum(x - m), q += sum((x - m)^2) */
#define CK_BN_SUMS(T, S)                                                                      \
static void ck_bn_sums_##S(const T* x, ptrdiff_t n, double m, double* s, double* q) {        \
    ptrdiff_t i = 0;                                                                          \
    double ts = 0, tq = 0;                                                                    \
    CK_BN_SUMS_SSE2(S)                                                                        \
    for (; i < n; i++) { double d = (double)x[i] - m; ts += d; tq += d * d; }                 \
    *s += ts; *q += tq;                                                                       \
}
CK_BN_SUMS(float, f)
CK_BN_SUMS(double, d)

/* sg += sum(g), sd += sum(g * (x - m)) */
static void ck_bn_dot_f(const float* g, const float* x, ptrdiff_t n, double m,
                        double* sg, double* sd) {
    ptrdiff_t i = 0;
    double tg = 0, td = 0;
#ifdef CK_BN_SSE2
    __m128d vm = _mm_set1_pd(m), s0 = _mm_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
    __m128d q0 = s0, q1 = s0, q2 = s0, q3 = s0, g0, g1, g2, g3;
    double buf[2];
    for (; i + 8 <= n; i += 8) {
        __m128 a = _mm_loadu_ps(x + i), b = _mm_loadu_ps(x + i + 4);
        __m128 ga = _mm_loadu_ps(g + i), gb = _mm_loadu_ps(g + i + 4);
        g0 = _mm_cvtps_pd(ga); g1 = _mm_cvtps_pd(_mm_movehl_ps(ga, ga));
        g2 = _mm_cvtps_pd(gb); g3 = _mm_cvtps_pd(_mm_movehl_ps(gb, gb));
        s0 = _mm_add_pd(s0, g0); s1 = _mm_add_pd(s1, g1);
        s2 = _mm_add_pd(s2, g2); s3 = _mm_add_pd(s3, g3);
        q0 = _mm_add_pd(q0, _mm_mul_pd(g0, _mm_sub_pd(_mm_cvtps_pd(a), vm)));
        q1 = _mm_add_pd(q1, _mm_mul_pd(g1, _mm_sub_pd(_mm_cvtps_pd(_mm_movehl_ps(a, a)), vm)));
        q2 = _mm_add_pd(q2, _mm_mul_pd(g2, _mm_sub_pd(_mm_cvtps_pd(b), vm)));
        q3 = _mm_add_pd(q3, _mm_mul_pd(g3, _mm_sub_pd(_mm_cvtps_pd(_mm_movehl_ps(b, b)), vm)));
    }
    _mm_storeu_pd(buf, _mm_add_pd(_mm_add_pd(s0, s1), _mm_add_pd(s2, s3)));
    tg = buf[0] + buf[1];
    _mm_storeu_pd(buf, _mm_add_pd(_mm_add_pd(q0, q1), _mm_add_pd(q2, q3)));
    td = buf[0] + buf[1];
#endif
    for (; i < n; i++) { tg += (double)g[i]; td += (double)g[i] * ((double)x[i] - m); }
    *sg += tg; *sd += td;
}

static void ck_bn_dot_d(const double* g, const double* x, ptrdiff_t n, double m,
                        double* sg, double* sd) {
    ptrdiff_t i = 0;
    double tg = 0, td = 0;
#ifdef CK_BN_SSE2
    __m128d vm = _mm_set1_pd(m), s0 = _mm_setzero_pd(), s1 = s0;
    __m128d q0 = s0, q1 = s0, g0, g1;
    double buf[2];
    for (; i + 4 <= n; i += 4) {
        g0 = _mm_loadu_pd(g + i); g1 = _mm_loadu_pd(g + i + 2);
        s0 = _mm_add_pd(s0, g0); s1 = _mm_add_pd(s1, g1);
        q0 = _mm_add_pd(q0, _mm_mul_pd(g0, _mm_sub_pd(_mm_loadu_pd(x + i), vm)));
        q1 = _mm_add_pd(q1, _mm_mul_pd(g1, _mm_sub_pd(_mm_loadu_pd(x + i + 2), vm)));
    }
    _mm_storeu_pd(buf, _mm_add_pd(s0, s1));
    tg = buf[0] + buf[1];
    _mm_storeu_pd(buf, _mm_add_pd(q0, q1));
    td = buf[0] + buf[1];
#endif
    for (; i < n; i++) { tg += g[i]; td += g[i] * (x[i] - m); }
    *sg += tg; *sd += td;
}

/* Slab loops of the small-plane batch norm.  GCC builds each three times (AVX-512F, AVX2 and
   the x86-64 baseline) and picks one at load time; fp-contract=off keeps the arithmetic
   (no fused multiply-adds) the same bits in every build: each output l is its own chain, so
   the vector width does not reorder anything.  (The AVX2 build: CPUs without AVX-512 ran the
   SSE2 one, two doubles a vector, on the training step's 8x8 / 4x4 batch norms.) */
#include <stddef.h>
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#include "isa.h"
#if CK_AVX512_EMULATED
#define CK_BNV CK_AVX512_CLONES __attribute__((optimize("fp-contract=off")))
#else
#define CK_BNV __attribute__((target_clones("avx512f", "avx2", "default"))) \
    __attribute__((optimize("fp-contract=off")))
#endif
#else
#define CK_BNV
#endif
#define CK_BNV_DEFINE(T, SUF)                                                               \
/* s[l] += x[l] */                                                                        \
CK_BNV static void ck_bnv_sum_##SUF(const T* __restrict x, ptrdiff_t L,                   \
                                    double* __restrict s) {                               \
    for (ptrdiff_t l = 0; l < L; l++) s[l] += (double)x[l];                               \
}                                                                                         \
/* d = x[l] - m[l]: s[l] += d, q[l] += d * d */                                           \
CK_BNV static void ck_bnv_dev_##SUF(const T* __restrict x, ptrdiff_t L,                   \
                                    const double* __restrict m, double* __restrict s,     \
                                    double* __restrict q) {                               \
    for (ptrdiff_t l = 0; l < L; l++) {                                                   \
        double d = (double)x[l] - m[l];                                                   \
        s[l] += d; q[l] += d * d;                                                         \
    }                                                                                     \
}                                                                                         \
/* sg[l] += g[l], sd[l] += g[l] * (x[l] - m[l]) */                                        \
CK_BNV static void ck_bnv_dot_##SUF(const T* __restrict g, const T* __restrict x,         \
                                    ptrdiff_t L, const double* __restrict m,              \
                                    double* __restrict sg, double* __restrict sd) {       \
    for (ptrdiff_t l = 0; l < L; l++) {                                                   \
        double gv = (double)g[l];                                                         \
        sg[l] += gv; sd[l] += gv * ((double)x[l] - m[l]);                                 \
    }                                                                                     \
}                                                                                         \
/* y[l] = (x[l] - m[l]) * a[l] + b[l] */                                                  \
CK_BNV static void ck_bnv_affine_##SUF(const T* __restrict x, T* __restrict y,            \
                                       ptrdiff_t L, const T* __restrict m,                \
                                       const T* __restrict a, const T* __restrict b) {    \
    for (ptrdiff_t l = 0; l < L; l++) y[l] = (x[l] - m[l]) * a[l] + b[l];                 \
}                                                                                         \
/* o[l] = g[l] * kg[l] + (x[l] - m[l]) * kx[l] + b[l] */                                  \
CK_BNV static void ck_bnv_grad_##SUF(const T* __restrict g, const T* __restrict x,        \
                                     T* __restrict o, ptrdiff_t L,                        \
                                     const T* __restrict kg, const T* __restrict m,       \
                                     const T* __restrict kx, const T* __restrict b) {     \
    for (ptrdiff_t l = 0; l < L; l++) o[l] = g[l] * kg[l] + (x[l] - m[l]) * kx[l] + b[l]; \
}
CK_BNV_DEFINE(float, f)
CK_BNV_DEFINE(double, d)

/* The training forward's slab sums over all N images at once (image n's slab at x + n *
   stride): the same sums as N calls of ck_bnv_sum / _dev (s[l] from 0, the images in order:
   the same bits), in strips of 32 positions whose sums stay in registers through the images
   -- the per-image calls loaded and stored s (and q) for every value.  (128, 16, 8, 8)
   float32, one thread: the forward 75 -> 54 us.  The backward's ck_bnv_dot the same way
   measured slower (60 -> 72 us: two strided streams), so it keeps the per-image calls. */
#define CK_BNV_STRIP 32
#define CK_BNVN_DEFINE(T, SUF)                                                              \
CK_BNV static void ck_bnvn_sum_##SUF(const T* __restrict x, ptrdiff_t stride, ptrdiff_t N,  \
                                     ptrdiff_t L, double* __restrict s) {                 \
    ptrdiff_t l0 = 0;                                                                     \
    for (; l0 + CK_BNV_STRIP <= L; l0 += CK_BNV_STRIP) {                                  \
        double a[CK_BNV_STRIP] = {0};                                                     \
        for (ptrdiff_t n = 0; n < N; n++)                                                 \
            for (int j = 0; j < CK_BNV_STRIP; j++) a[j] += (double)x[n * stride + l0 + j]; \
        for (int j = 0; j < CK_BNV_STRIP; j++) s[l0 + j] = a[j];                          \
    }                                                                                     \
    for (ptrdiff_t l = l0; l < L; l++) {                                                  \
        double a = 0;                                                                     \
        for (ptrdiff_t n = 0; n < N; n++) a += (double)x[n * stride + l];                 \
        s[l] = a;                                                                         \
    }                                                                                     \
}                                                                                         \
CK_BNV static void ck_bnvn_dev_##SUF(const T* __restrict x, ptrdiff_t stride, ptrdiff_t N,  \
                                     ptrdiff_t L, const double* __restrict m,             \
                                     double* __restrict s, double* __restrict q) {        \
    ptrdiff_t l0 = 0;                                                                     \
    for (; l0 + CK_BNV_STRIP <= L; l0 += CK_BNV_STRIP) {                                  \
        double a[CK_BNV_STRIP] = {0}, b[CK_BNV_STRIP] = {0}, mm[CK_BNV_STRIP];            \
        for (int j = 0; j < CK_BNV_STRIP; j++) mm[j] = m[l0 + j];                         \
        for (ptrdiff_t n = 0; n < N; n++)                                                 \
            for (int j = 0; j < CK_BNV_STRIP; j++) {                                      \
                double d = (double)x[n * stride + l0 + j] - mm[j];                        \
                a[j] += d; b[j] += d * d;                                                 \
            }                                                                             \
        for (int j = 0; j < CK_BNV_STRIP; j++) { s[l0 + j] = a[j]; q[l0 + j] = b[j]; }    \
    }                                                                                     \
    for (ptrdiff_t l = l0; l < L; l++) {                                                  \
        double a = 0, b = 0;                                                              \
        for (ptrdiff_t n = 0; n < N; n++) {                                               \
            double d = (double)x[n * stride + l] - m[l];                                  \
            a += d; b += d * d;                                                           \
        }                                                                                 \
        s[l] = a; q[l] = b;                                                               \
    }                                                                                     \
}
CK_BNVN_DEFINE(float, f)
CK_BNVN_DEFINE(double, d)

/* The large-plane path's elementwise passes (one channel's run of n values), built like the
   slab loops (one chain per output: the vector width reorders nothing, no fused
   multiply-adds): y = (x - mean) * scale + shift; o = g * kg + (x - m) * kx + b, each in the
   order the Cython loops they replace wrote them.  (The baseline build ran them on SSE.) */
#define CK_BN_RUN_DEFINE(T, SUF)                                                            \
CK_BNV static void ck_bn_apply_##SUF(const T* __restrict x, T* __restrict y, ptrdiff_t n,   \
                                     T mean, T scale, T shift) {                          \
    for (ptrdiff_t i = 0; i < n; i++) y[i] = (x[i] - mean) * scale + shift;               \
}                                                                                         \
CK_BNV static void ck_bn_grad_apply_##SUF(const T* __restrict g, const T* __restrict x,    \
                                          T* __restrict o, ptrdiff_t n, T kg, T m, T kx,  \
                                          T b) {                                          \
    for (ptrdiff_t i = 0; i < n; i++) o[i] = g[i] * kg + (x[i] - m) * kx + b;             \
}
CK_BN_RUN_DEFINE(float, f)
CK_BN_RUN_DEFINE(double, d)

/* ck_bn_sums_f and ck_bn_dot_f on AVX2 (4-double vectors): the SSE2 loop's accumulator pairs
   s0, s1 are the low and high lanes of one vector (values i..i+3), s2, s3 of the other
   (i+4..i+7), combined as (s0 + s1) + (s2 + s3) then lane 0 + lane 1, the tail in order: the
   same sums, the same bits, half the instructions.  (No "fma" in the target: no contraction.)
   ck_bn_sum_f: the sum alone -- the first pass of the statistics, whose squares (about m = 0)
   were computed and dropped; x - 0 is x, so the sum has the same bits. */
#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#include "cpufeat.h"
#define CK_BN_AVX2 __attribute__((target("avx2")))
static int ck_bn_avx2_ok(void)
{
    return ck_cpu_has_avx2();
}

CK_BN_AVX2 static inline double ck_bn_tree4(__m256d a, __m256d b)
{
    double buf[2];
    _mm_storeu_pd(buf, _mm_add_pd(_mm_add_pd(_mm256_castpd256_pd128(a),
                                             _mm256_extractf128_pd(a, 1)),
                                  _mm_add_pd(_mm256_castpd256_pd128(b),
                                             _mm256_extractf128_pd(b, 1))));
    return buf[0] + buf[1];
}

CK_BN_AVX2 static void ck_bn_sums_f_avx2(const float* x, ptrdiff_t n, double m, double* s,
                                         double* q, int squares)
{
    ptrdiff_t i = 0;
    double ts, tq = 0;
    __m256d vm = _mm256_set1_pd(m), a = _mm256_setzero_pd(), b = a, qa = a, qb = a;
    if (squares)
        for (; i + 8 <= n; i += 8) {
            __m256d d0 = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + i)), vm);
            __m256d d1 = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(x + i + 4)), vm);
            a = _mm256_add_pd(a, d0);
            b = _mm256_add_pd(b, d1);
            qa = _mm256_add_pd(qa, _mm256_mul_pd(d0, d0));
            qb = _mm256_add_pd(qb, _mm256_mul_pd(d1, d1));
        }
    else    /* m == 0 */
        for (; i + 8 <= n; i += 8) {
            a = _mm256_add_pd(a, _mm256_cvtps_pd(_mm_loadu_ps(x + i)));
            b = _mm256_add_pd(b, _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4)));
        }
    ts = ck_bn_tree4(a, b);
    if (squares)
        tq = ck_bn_tree4(qa, qb);
    for (; i < n; i++) {
        double d = (double)x[i] - m;
        ts += d;
        tq += d * d;
    }
    *s += ts;
    if (squares)
        *q += tq;
}

CK_BN_AVX2 static void ck_bn_dot_f_avx2(const float* g, const float* x, ptrdiff_t n, double m,
                                        double* sg, double* sd)
{
    ptrdiff_t i = 0;
    double tg, td;
    __m256d vm = _mm256_set1_pd(m), a = _mm256_setzero_pd(), b = a, qa = a, qb = a;
    for (; i + 8 <= n; i += 8) {
        __m256d g0 = _mm256_cvtps_pd(_mm_loadu_ps(g + i));
        __m256d g1 = _mm256_cvtps_pd(_mm_loadu_ps(g + i + 4));
        a = _mm256_add_pd(a, g0);
        b = _mm256_add_pd(b, g1);
        qa = _mm256_add_pd(qa, _mm256_mul_pd(g0, _mm256_sub_pd(
                 _mm256_cvtps_pd(_mm_loadu_ps(x + i)), vm)));
        qb = _mm256_add_pd(qb, _mm256_mul_pd(g1, _mm256_sub_pd(
                 _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4)), vm)));
    }
    tg = ck_bn_tree4(a, b);
    td = ck_bn_tree4(qa, qb);
    for (; i < n; i++) { tg += (double)g[i]; td += (double)g[i] * ((double)x[i] - m); }
    *sg += tg;
    *sd += td;
}
#define CK_BN_HAVE_AVX2 1
#else
#define CK_BN_HAVE_AVX2 0
#endif

/* s += sum(x) (ck_bn_sums_f's s about m = 0) */
static void ck_bn_sum_f(const float* x, ptrdiff_t n, double* s)
{
    double q = 0;
#if CK_BN_HAVE_AVX2
    if (ck_bn_avx2_ok()) {
        ck_bn_sums_f_avx2(x, n, 0.0, s, &q, 0);
        return;
    }
#endif
    ck_bn_sums_f(x, n, 0.0, s, &q);
}

/* ck_bn_sums_f / ck_bn_dot_f, on AVX2 where the CPU has it (the same bits) */
static void ck_bn_sums2_f(const float* x, ptrdiff_t n, double m, double* s, double* q)
{
#if CK_BN_HAVE_AVX2
    if (ck_bn_avx2_ok()) {
        ck_bn_sums_f_avx2(x, n, m, s, q, 1);
        return;
    }
#endif
    ck_bn_sums_f(x, n, m, s, q);
}

static void ck_bn_dot2_f(const float* g, const float* x, ptrdiff_t n, double m, double* sg,
                         double* sd)
{
#if CK_BN_HAVE_AVX2
    if (ck_bn_avx2_ok()) {
        ck_bn_dot_f_avx2(g, x, n, m, sg, sd);
        return;
    }
#endif
    ck_bn_dot_f(g, x, n, m, sg, sd);
}
#endif
