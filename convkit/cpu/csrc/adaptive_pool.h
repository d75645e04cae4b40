/* Kernels of adaptive pooling (declared in csrc/adaptive_pool.pxd, used by _adaptive_pool.pyx).

   Run sums (average pooling): the whole plane of a global average, a row of column sums.
   Sixteen float / eight double partial sums in a fixed pattern, combined in a fixed tree, so
   no loop-carried add latency (a plain loop adds one value per 3-4 cycles: it cannot be
   reordered without -ffast-math) and a given length always adds in the same order.  The SSE2
   path (every x86-64 CPU) and the portable loop below it keep the very same partial sums, so
   the result does not depend on the path.  NaN and inf propagate as in any sum. */
#ifndef CK_ADAPTIVE_POOL_H
#define CK_ADAPTIVE_POOL_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#include "cpufeat.h"
#define CK_AP_SSE2 1
#endif

/* partial sum m (m < 16) holds p[16j + m]; the four 4-lane groups are then added pairwise,
   the lanes too; a tail of < 4 values is added last, in order */
static float ck_run_sum_f_base(const float* p, ptrdiff_t n) {
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

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
#include "tr8.h"
#define CK_AP_AVX2_TARGET __attribute__((target("avx2")))

/* y[0..8) = the run sums of 8 planes of n floats (plane i at x + i * n) over d, where the CPU
   has AVX2 (else 0: the caller sums plane by plane).  Lane i makes plane i's very additions of
   ck_run_sum_f -- the same 16 partial sums (columns in ascending order), the same tree, the
   tail added last in order, one division -- so the same bits; the planes are read 8 columns at
   a time and transposed in registers: a global average pool's planes of 49 values took ~80
   instructions each one at a time, the scalar tail and the tree most of them. */
/* ck_run_sum_f's tree over the 16 partial sums: t[m] = (a[m] + a[4+m]) + (a[8+m] + a[12+m]),
   then (t[0] + t[1]) + (t[2] + t[3]) */
CK_AP_AVX2_TARGET static inline __m256 ck_run_tree8(__m256* a)
{
    __m256 t[4];
    for (int m = 0; m < 4; m++)
        t[m] = _mm256_add_ps(_mm256_add_ps(a[m], a[4 + m]), _mm256_add_ps(a[8 + m], a[12 + m]));
    return _mm256_add_ps(_mm256_add_ps(t[0], t[1]), _mm256_add_ps(t[2], t[3]));
}

/* columns c0 .. c0 + w - 1 (w <= 8; columns past n not read) of the 8 planes, transposed:
   r[q] = column c0 + q, lanes past w's columns 0 */
CK_AP_AVX2_TARGET static inline __attribute__((always_inline)) void
ck_run_cols8(const float* x, ptrdiff_t n, ptrdiff_t c0, ptrdiff_t w, __m256* r)
{
    if (w >= 8) {
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            r[i] = _mm256_loadu_ps(x + i * n + c0);
    } else {
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)w),
                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++)
            r[i] = _mm256_maskload_ps(x + i * n + c0, mask);
    }
    ck_fg_tr8(r);
}

CK_AP_AVX2_TARGET static void ck_run_sum8_f_avx2(const float* x, ptrdiff_t n, float d, float* y)
{
    ptrdiff_t n16 = n / 16 * 16, rem = n - n16, groups = rem / 4;
    __m256 a[16], r[8], c[16], s;
#pragma GCC unroll 16
    for (int m = 0; m < 16; m++)
        a[m] = _mm256_setzero_ps();
    for (ptrdiff_t c0 = 0; c0 < n16; c0 += 16) {  /* the 16-column runs: partial sum m */
        ck_run_cols8(x, n, c0, 8, r);
#pragma GCC unroll 8
        for (int q = 0; q < 8; q++)
            a[q] = _mm256_add_ps(a[q], r[q]);
        ck_run_cols8(x, n, c0 + 8, 8, r);
#pragma GCC unroll 8
        for (int q = 0; q < 8; q++)
            a[8 + q] = _mm256_add_ps(a[8 + q], r[q]);
    }
    if (rem > 0)        /* the last < 16 columns: runs of 4 into partial sums 0..3, a tail */
        ck_run_cols8(x, n, n16, rem, c);
    if (rem > 8)
        ck_run_cols8(x, n, n16 + 8, rem - 8, c + 8);
    for (ptrdiff_t g = 0; g < groups; g++)
#pragma GCC unroll 4
        for (int m = 0; m < 4; m++)
            a[m] = _mm256_add_ps(a[m], c[4 * g + m]);
    s = ck_run_tree8(a);
    for (ptrdiff_t j = 4 * groups; j < rem; j++)
        s = _mm256_add_ps(s, c[j]);
    _mm256_storeu_ps(y, _mm256_div_ps(s, _mm256_set1_ps(d)));
}

/* 1 where ck_run_sum8_f runs (the CPU has AVX2), else 0 */
static int ck_run_sum8_ok(void)
{
    return ck_cpu_has_avx2();
}

static int ck_run_sum8_f(const float* x, ptrdiff_t n, float d, float* y)
{
    if (!ck_run_sum8_ok())
        return 0;
    ck_run_sum8_f_avx2(x, n, d, y);
    return 1;
}

/* ck_run_sum_f_base's very additions with 8-lane vectors: partial sums 0..7 in the lanes of
   a, 8..15 in b (each still one chain over its columns from +0), the 4-runs into a's low half,
   the same tree -- (a[m] + a[4+m]) + (a[8+m] + a[12+m]), then (t0 + t1) + (t2 + t3) -- and
   the tail last, in order: the same bits, about 25 instructions for a 49-value plane where
   the SSE2 loop took ~60 (global average pooling's classifier head) */
CK_AP_AVX2_TARGET static float ck_run_sum_f_avx2(const float* p, ptrdiff_t n)
{
    ptrdiff_t i = 0;
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
    for (; i + 16 <= n; i += 16) {
        a = _mm256_add_ps(a, _mm256_loadu_ps(p + i));
        b = _mm256_add_ps(b, _mm256_loadu_ps(p + i + 8));
    }
    __m128 a0 = _mm256_castps256_ps128(a);
    for (; i + 4 <= n; i += 4)
        a0 = _mm_add_ps(a0, _mm_loadu_ps(p + i));
    __m128 t = _mm_add_ps(_mm_add_ps(a0, _mm256_extractf128_ps(a, 1)),
                          _mm_add_ps(_mm256_castps256_ps128(b), _mm256_extractf128_ps(b, 1)));
    __m128 u = _mm_add_ps(t, _mm_shuffle_ps(t, t, _MM_SHUFFLE(2, 3, 0, 1)));   /* t0+t1, t2+t3 */
    float s = _mm_cvtss_f32(_mm_add_ss(u, _mm_movehl_ps(u, u)));
    for (; i < n; i++)
        s += p[i];
    return s;
}

static float ck_run_sum_f(const float* p, ptrdiff_t n)
{
    return ck_run_sum8_ok() ? ck_run_sum_f_avx2(p, n) : ck_run_sum_f_base(p, n);
}
#define CK_AP_AVX2 1
#else
static float ck_run_sum_f(const float* p, ptrdiff_t n) { return ck_run_sum_f_base(p, n); }
static int ck_run_sum8_ok(void) { return 0; }

static int ck_run_sum8_f(const float* x, ptrdiff_t n, float d, float* y)
{
    (void)x; (void)n; (void)d; (void)y;
    return 0;
}
#endif

/* out[w] = x[w] + x[W + w] + ... (rows rows of W, added in row order): the column sums of an
   average bin's rows.  Elementwise, so the vector width changes no bits; GCC builds it for
   AVX2 and the baseline and picks one at load time (the Cython loop ran on SSE2). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define CK_AP_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CK_AP_CLONES
#endif
#define CK_COLSUM(T, S)                                                                   \
CK_AP_CLONES static void ck_colsum_##S(const T* __restrict x, ptrdiff_t W, ptrdiff_t rows, \
                                       T* __restrict out) {                               \
    for (ptrdiff_t w = 0; w < W; w++) out[w] = x[w];                                      \
    for (ptrdiff_t i = 1; i < rows; i++)                                                  \
        for (ptrdiff_t w = 0; w < W; w++) out[w] = out[w] + x[i * W + w];                 \
}
CK_COLSUM(float, f)
CK_COLSUM(double, d)

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

/* Maximum of one bin -- `rows` runs of `cols` values, `W` apart -- by torch's rule: visit in
   row-major order from best = -inf, take v when v > best or v is NaN.  So the last NaN wins,
   else the first maximum, and a bin of -inf reports its first element.  Done in two passes:
   a branch-free maximum and NaN test over the bin, then a search for the position (the last
   NaN from the end, or the first element equal to the maximum -- its own value is reported,
   so a -0 before a +0 keeps its sign, as in the one-pass rule).  *val = the element,
   *pos = its offset r*W + c from x. */
#define CK_BIN_MAX_FIND(T)                                                                \
    if (nan) {                                                                            \
        for (r = rows - 1; r >= 0; r--)                                                   \
            for (c = cols - 1; c >= 0; c--)                                               \
                if (x[r * W + c] != x[r * W + c]) {                                       \
                    *val = x[r * W + c]; *pos = r * W + c; return;                        \
                }                                                                         \
    }

#ifdef CK_AP_SSE2
#define CK_BIN_MAX(T, S, V, L, LOADU, MAXV, UNORD, ORV, EQ, SET1, MASK, ZERO, STORE)         \
static void ck_bin_max_##S(const T* x, ptrdiff_t W, ptrdiff_t rows, ptrdiff_t cols,       \
                           T* val, ptrdiff_t* pos) {                                      \
    T m = -INFINITY, t[L];                                                                \
    int nan = 0, l, k, b;                                                                 \
    ptrdiff_t r, c;                                                                       \
    V vm = SET1(-INFINITY), vn = ZERO(), vt;                                              \
    for (r = 0; r < rows; r++) {                                                          \
        const T* p = x + r * W;                                                           \
        for (c = 0; c + L <= cols; c += L) {                                              \
            V v = LOADU(p + c);                                                           \
            vm = MAXV(vm, v);                                                             \
            vn = ORV(vn, UNORD(v, v));                                                    \
        }                                                                                 \
        for (; c < cols; c++) {                                                           \
            if (p[c] != p[c]) nan = 1;                                                    \
            else if (p[c] > m) m = p[c];                                                  \
        }                                                                                 \
    }                                                                                     \
    nan |= MASK(vn) != 0;                                                                 \
    CK_BIN_MAX_FIND(T)                                                                    \
    STORE(t, vm);   /* no NaN in the bin: the lanes hold plain maxima */                  \
    for (l = 0; l < L; l++) if (t[l] > m) m = t[l];                                       \
    vt = SET1(m);                                                                         \
    for (r = 0; r < rows; r++) {                                                          \
        const T* p = x + r * W;                                                           \
        for (c = 0; c + L <= cols; c += L)                                                \
            if ((k = MASK(EQ(LOADU(p + c), vt))) != 0) {                                  \
                for (b = 0; !((k >> b) & 1); b++) {}                                      \
                *val = p[c + b]; *pos = r * W + c + b; return;                            \
            }                                                                             \
        for (; c < cols; c++)                                                             \
            if (p[c] == m) { *val = p[c]; *pos = r * W + c; return; }                     \
    }                                                                                     \
    *val = x[0]; *pos = 0;    /* not reached: m is an element of the bin */               \
}
CK_BIN_MAX(float, f_sse, __m128, 4, _mm_loadu_ps, _mm_max_ps, _mm_cmpunord_ps, _mm_or_ps,
           _mm_cmpeq_ps, _mm_set1_ps, _mm_movemask_ps, _mm_setzero_ps, _mm_storeu_ps)
#ifdef CK_AP_AVX2
/* The same two passes on 8-lane vectors, a row's last < 8 values in one masked vector (lanes
   past the row hold -inf in the first pass and do not count in the second): an 8 x 8 bin is a
   vector a row, a 1x1 head's plane of 49 values 7 vectors (the SSE2 pass took a scalar tail
   and twice the vectors).  The result is the element the rule picks, so the bits are those of
   every other path. */
/* the horizontal maximum of 8 lanes (no NaN among them) */
CK_AP_AVX2_TARGET static inline float ck_hmax8(__m256 vm)
{
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)));
}

/* A bin of at most 8 columns (adaptive_max_56to7's 8 x 8 bins): one vector a row, full or
   masked (masked lanes -inf, not read), no inner loop -- the general loop spent ~300
   instructions on an 8 x 8 bin, mostly loop control around one vector */
CK_AP_AVX2_TARGET static void ck_bin_max_f_narrow(const float* x, ptrdiff_t W, ptrdiff_t rows,
                                                  ptrdiff_t cols, float* val, ptrdiff_t* pos)
{
    const __m256i lanes = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)cols),
                                             _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 ninf = _mm256_set1_ps(-INFINITY), keep = _mm256_castsi256_ps(lanes);
    const int colbits = (1 << cols) - 1;
    __m256 vm = ninf, vn = _mm256_setzero_ps(), vt;
    int nan, k;
    ptrdiff_t r, c;
    if (cols == 8)
        for (r = 0; r < rows; r++) {
            __m256 v = _mm256_loadu_ps(x + r * W);
            vm = _mm256_max_ps(vm, v);
            vn = _mm256_or_ps(vn, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        }
    else
        for (r = 0; r < rows; r++) {
            __m256 v = _mm256_blendv_ps(ninf, _mm256_maskload_ps(x + r * W, lanes), keep);
            vm = _mm256_max_ps(vm, v);
            vn = _mm256_or_ps(vn, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        }
    nan = _mm256_movemask_ps(vn) != 0;
    CK_BIN_MAX_FIND(float)
    vt = _mm256_set1_ps(ck_hmax8(vm));
    for (r = 0; r < rows; r++) {
        __m256 v = cols == 8 ? _mm256_loadu_ps(x + r * W) : _mm256_maskload_ps(x + r * W, lanes);
        if ((k = _mm256_movemask_ps(_mm256_cmp_ps(v, vt, _CMP_EQ_OQ)) & colbits) != 0) {
            k = __builtin_ctz((unsigned)k);
            *val = x[r * W + k]; *pos = r * W + k; return;
        }
    }
    *val = x[0]; *pos = 0;    /* not reached: the maximum is an element of the bin */
}

CK_AP_AVX2_TARGET static void ck_bin_max_f_avx2(const float* x, ptrdiff_t W, ptrdiff_t rows,
                                                ptrdiff_t cols, float* val, ptrdiff_t* pos)
{
    const ptrdiff_t c8 = cols / 8 * 8, rem = cols - c8;
    const __m256i tail = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)rem),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const int tailbits = (1 << rem) - 1;
    __m256 vm = ninf, vn = _mm256_setzero_ps(), vt;
    float m;
    int nan, k;
    ptrdiff_t r, c;
    for (r = 0; r < rows; r++) {
        const float* p = x + r * W;
        for (c = 0; c < c8; c += 8) {
            __m256 v = _mm256_loadu_ps(p + c);
            vm = _mm256_max_ps(vm, v);
            vn = _mm256_or_ps(vn, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        }
        if (rem) {
            __m256 v = _mm256_blendv_ps(ninf, _mm256_maskload_ps(p + c8, tail),
                                        _mm256_castsi256_ps(tail));
            vm = _mm256_max_ps(vm, v);
            vn = _mm256_or_ps(vn, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        }
    }
    nan = _mm256_movemask_ps(vn) != 0;
    CK_BIN_MAX_FIND(float)
    m = ck_hmax8(vm);     /* no NaN in the bin: the lanes hold plain maxima */
    vt = _mm256_set1_ps(m);
    for (r = 0; r < rows; r++) {
        const float* p = x + r * W;
        for (c = 0; c < c8; c += 8)
            if ((k = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + c), vt,
                                                      _CMP_EQ_OQ))) != 0) {
                k = __builtin_ctz((unsigned)k);
                *val = p[c + k]; *pos = r * W + c + k; return;
            }
        if (rem && (k = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_maskload_ps(p + c8, tail), vt,
                                                         _CMP_EQ_OQ)) & tailbits) != 0) {
            k = __builtin_ctz((unsigned)k);
            *val = p[c8 + k]; *pos = r * W + c8 + k; return;
        }
    }
    *val = x[0]; *pos = 0;    /* not reached: m is an element of the bin */
}

static void ck_bin_max_f(const float* x, ptrdiff_t W, ptrdiff_t rows, ptrdiff_t cols,
                         float* val, ptrdiff_t* pos)
{
    if (ck_run_sum8_ok() && cols <= 8)
        ck_bin_max_f_narrow(x, W, rows, cols, val, pos);
    else if (ck_run_sum8_ok())
        ck_bin_max_f_avx2(x, W, rows, cols, val, pos);
    else
        ck_bin_max_f_sse(x, W, rows, cols, val, pos);
}

/* One load of a bin of at most 64 values held as nch <= 8 chunks of 8 lanes -- chunk j at
   x + j * stride, its first `lanes` values (the last chunk: `last`) -- so the search for the
   position needs no second read: a maximum tree and a NaN test over the chunks, then every
   chunk compared with the maximum, the compares packed to one bit per value in row-major
   order (bit 8j + l: chunk j, lane l), the first set bit.  A 7 x 7 plane (the 1x1 head) is 7
   chunks of a contiguous run, an 8 x 8 bin (56 -> 7) one chunk a row: ~60 instructions where
   the two passes of ck_bin_max_f_narrow / _avx2 took ~160 plus ~45 in the Cython loop.  Lanes
   past a chunk hold -inf (masked loads); a bin with a NaN takes a scalar
   search for the last NaN (CK_BIN_MAX's rule).  The result is the element the rule picks:
   the same bits as every other path.  nch is a constant at each call (ck_chunks8_switch), so
   the chunk loops unroll. */
CK_AP_AVX2_TARGET static inline __attribute__((always_inline)) __m256
ck_max_chunk8(const float* p, int lanes, __m256i mask, __m256 ninf)
{
    if (lanes == 8)
        return _mm256_loadu_ps(p);
    return _mm256_blendv_ps(ninf, _mm256_maskload_ps(p, mask), _mm256_castsi256_ps(mask));
}

/* the 32 compare bits of chunks c[0..3] (lane l of chunk j at bit 8j + l): two packs and a
   permute put the bytes in order for one movemask */
CK_AP_AVX2_TARGET static inline __attribute__((always_inline)) unsigned
ck_bits4x8(__m256i c0, __m256i c1, __m256i c2, __m256i c3)
{
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(c0, c1), _mm256_packs_epi32(c2, c3));
    return (unsigned)_mm256_movemask_epi8(_mm256_permutevar8x32_epi32(b, order));
}

CK_AP_AVX2_TARGET static inline __attribute__((always_inline)) void
ck_bin_max_chunks8_f(const float* x, ptrdiff_t stride, const int nch, int lanes, int last,
                     float* val, ptrdiff_t* pos)
{
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i lm = _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), iota),
                  tm = _mm256_cmpgt_epi32(_mm256_set1_epi32(last), iota);
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    __m256 v[8], m, vt, nan;
    __m256i c[8];
    unsigned long long k;
    int j, b;
#pragma GCC unroll 8
    for (j = 0; j < 8; j++)
        v[j] = j < nch - 1 ? ck_max_chunk8(x + j * stride, lanes, lm, ninf)
             : j == nch - 1 ? ck_max_chunk8(x + j * stride, last, tm, ninf) : ninf;
    m = _mm256_max_ps(_mm256_max_ps(_mm256_max_ps(v[0], v[1]), _mm256_max_ps(v[2], v[3])),
                      _mm256_max_ps(_mm256_max_ps(v[4], v[5]), _mm256_max_ps(v[6], v[7])));
    /* unordered where either operand is NaN: four compares test the eight chunks */
    nan = _mm256_or_ps(_mm256_or_ps(_mm256_cmp_ps(v[0], v[1], _CMP_UNORD_Q),
                                    _mm256_cmp_ps(v[2], v[3], _CMP_UNORD_Q)),
                       _mm256_or_ps(_mm256_cmp_ps(v[4], v[5], _CMP_UNORD_Q),
                                    _mm256_cmp_ps(v[6], v[7], _CMP_UNORD_Q)));
    if (__builtin_expect(_mm256_movemask_ps(nan) != 0, 0)) {
        for (j = nch - 1; j >= 0; j--)          /* the last NaN in row-major order */
            for (b = (j == nch - 1 ? last : lanes) - 1; b >= 0; b--)
                if (x[j * stride + b] != x[j * stride + b]) {
                    *val = x[j * stride + b]; *pos = j * stride + b; return;
                }
    }
    vt = _mm256_set1_ps(ck_hmax8(m));     /* no NaN: the lanes hold plain maxima */
    /* the -inf lanes past a chunk need no mask: they equal the maximum only when it is -inf,
       and then so does the bin's first element, bit 0 */
#pragma GCC unroll 8
    for (j = 0; j < 8; j++)
        c[j] = j < nch ? _mm256_castps_si256(_mm256_cmp_ps(v[j], vt, _CMP_EQ_OQ))
                       : _mm256_setzero_si256();
    k = ck_bits4x8(c[0], c[1], c[2], c[3]);
    if (nch > 4)
        k |= (unsigned long long)ck_bits4x8(c[4], c[5], c[6], c[7]) << 32;
    b = __builtin_ctzll(k);     /* k != 0: the maximum is an element of the bin */
    *pos = (b >> 3) * stride + (b & 7);
    *val = x[*pos];
}

/* CALL(n) with n the constant nch (1..8) */
#define CK_CHUNKS8_SWITCH(nch, CALL)                                                          \
    switch (nch) {                                                                            \
    case 1: CALL(1); break; case 2: CALL(2); break; case 3: CALL(3); break;                  \
    case 4: CALL(4); break; case 5: CALL(5); break; case 6: CALL(6); break;                  \
    case 7: CALL(7); break; default: CALL(8); break;                                         \
    }
#define CK_AP_CHUNKS8 1
#else
#define ck_bin_max_f ck_bin_max_f_sse
#endif
CK_BIN_MAX(double, d, __m128d, 2, _mm_loadu_pd, _mm_max_pd, _mm_cmpunord_pd, _mm_or_pd,
           _mm_cmpeq_pd, _mm_set1_pd, _mm_movemask_pd, _mm_setzero_pd, _mm_storeu_pd)
#else
/* portable: the one-pass rule itself */
#define CK_BIN_MAX_PLAIN(T, S)                                                            \
static void ck_bin_max_##S(const T* x, ptrdiff_t W, ptrdiff_t rows, ptrdiff_t cols,       \
                           T* val, ptrdiff_t* pos) {                                      \
    T best = -INFINITY;                                                                   \
    ptrdiff_t r, c, at = 0;                                                               \
    for (r = 0; r < rows; r++)                                                            \
        for (c = 0; c < cols; c++)                                                        \
            if (x[r * W + c] > best || x[r * W + c] != x[r * W + c]) {                    \
                best = x[r * W + c]; at = r * W + c;                                      \
            }                                                                             \
    *val = best; *pos = at;                                                               \
}
CK_BIN_MAX_PLAIN(float, f)
CK_BIN_MAX_PLAIN(double, d)
#endif

/* y, idx (oh x ow) = each bin's maximum of plane x (rows of W) and its flat position h*W + w;
   bin (o, q) covers rows [hs[o], hs[o] + hl[o]) and columns [ws[q], ws[q] + wl[q]).  A bin of
   whole rows is one contiguous run.  With fast (ck_run_sum8_ok()): runs of <= 64 values and
   bins of <= 8 x 8 take ck_bin_max_chunks8_f, other bins ck_bin_max_f.  The loop is here, not
   in Cython, for the ~45 instructions a bin it cost there. */
#define CK_AMAX_PLANE(NAME, ATTR, CHUNKS)                                                     \
ATTR static void NAME(const float* x, ptrdiff_t W, const ptrdiff_t* hs, const ptrdiff_t* hl,  \
                      const ptrdiff_t* ws, const ptrdiff_t* wl, float* y, int64_t* idx,      \
                      ptrdiff_t oh, ptrdiff_t ow)                                             \
{                                                                                             \
    ptrdiff_t o, q, rows, cols, pos;                                                          \
    const float* corner;                                                                      \
    for (o = 0; o < oh; o++)                                                                  \
        for (q = 0; q < ow; q++) {                                                            \
            corner = x + hs[o] * W + ws[q];                                                   \
            rows = hl[o]; cols = wl[q];                                                       \
            if (cols == W) {                                                                  \
                cols = rows * W; rows = 1;                                                    \
            }                                                                                 \
            if (!CHUNKS(corner, W, rows, cols, &y[o * ow + q], &pos))                         \
                ck_bin_max_f(corner, W, rows, cols, &y[o * ow + q], &pos);                    \
            idx[o * ow + q] = hs[o] * W + ws[q] + pos;                                        \
        }                                                                                     \
}
#define CK_AMAX_NO_CHUNKS(corner, W, rows, cols, val, pos) 0
CK_AMAX_PLANE(ck_adaptive_max_plane_f_base, , CK_AMAX_NO_CHUNKS)
#ifdef CK_AP_CHUNKS8
/* 1 where the bin went through ck_bin_max_chunks8_f */
CK_AP_AVX2_TARGET static inline __attribute__((always_inline)) int
ck_amax_chunks(const float* corner, ptrdiff_t W, ptrdiff_t rows, ptrdiff_t cols, float* val,
               ptrdiff_t* pos)
{
    int nch, last;
    if (rows == 1 && cols >= 1 && cols <= 64) {         /* a contiguous run */
        nch = (int)((cols + 7) / 8);
        last = (int)cols - 8 * (nch - 1);
#define CK_AMAX_RUN(n) ck_bin_max_chunks8_f(corner, 8, n, 8, last, val, pos)
        CK_CHUNKS8_SWITCH(nch, CK_AMAX_RUN)
        return 1;
    }
    if (rows >= 1 && rows <= 8 && cols >= 1 && cols <= 8) {     /* a chunk a row */
        nch = (int)rows;
        last = (int)cols;
#define CK_AMAX_ROWS8(n) ck_bin_max_chunks8_f(corner, W, n, 8, 8, val, pos)
#define CK_AMAX_ROWS(n) ck_bin_max_chunks8_f(corner, W, n, last, last, val, pos)
        if (cols == 8)
            CK_CHUNKS8_SWITCH(nch, CK_AMAX_ROWS8)
        else
            CK_CHUNKS8_SWITCH(nch, CK_AMAX_ROWS)
        return 1;
    }
    return 0;
}
CK_AMAX_PLANE(ck_adaptive_max_plane_f_avx2, CK_AP_AVX2_TARGET, ck_amax_chunks)
#endif

/* ck_adaptive_max_plane_f for bins that tile the plane in r x c blocks (H = oh * r,
   W = ow * c, 1 <= r, c <= 8: the suite's 56 -> 7), where the CPU has AVX2 (ck_run_sum8_ok):
   the chunk count and width are constants of the loop, no tables, no switch a bin (~110 ->
   ~70 instructions a bin).  Returns 0 (nothing done) where it does not apply. */
#ifdef CK_AP_CHUNKS8
CK_AP_AVX2_TARGET static int ck_adaptive_max_tiles_f(const float* x, ptrdiff_t W, ptrdiff_t r,
                                                     ptrdiff_t c, float* y, int64_t* idx,
                                                     ptrdiff_t oh, ptrdiff_t ow)
{
    ptrdiff_t o, q, pos;
    const int cols = (int)c;
    if (r < 1 || r > 8 || c < 1 || c > 8)
        return 0;
#define CK_AMAX_TILES(n, LANES)                                                               \
    for (o = 0; o < oh; o++)                                                                  \
        for (q = 0; q < ow; q++) {                                                            \
            ck_bin_max_chunks8_f(x + o * n * W + q * c, W, n, LANES, LANES, &y[o * ow + q],   \
                                 &pos);                                                       \
            idx[o * ow + q] = o * n * W + q * c + pos;                                        \
        }
#define CK_AMAX_TILES8(n) CK_AMAX_TILES(n, 8)
#define CK_AMAX_TILESC(n) CK_AMAX_TILES(n, cols)
    if (c == 8)
        CK_CHUNKS8_SWITCH(r, CK_AMAX_TILES8)
    else
        CK_CHUNKS8_SWITCH(r, CK_AMAX_TILESC)
    return 1;
}
#else
static int ck_adaptive_max_tiles_f(const float* x, ptrdiff_t W, ptrdiff_t r, ptrdiff_t c,
                                   float* y, int64_t* idx, ptrdiff_t oh, ptrdiff_t ow)
{
    (void)x; (void)W; (void)r; (void)c; (void)y; (void)idx; (void)oh; (void)ow;
    return 0;
}
#endif

/* y[p], idx[p] = the maximum of plane p (n values at x + p * n) and its position, planes
   [0, P): the 1x1 output (the classifier head) without a call per plane.  fast as below. */
#ifdef CK_AP_CHUNKS8
CK_AP_AVX2_TARGET static void ck_global_max_f_avx2(const float* x, ptrdiff_t P, ptrdiff_t n,
                                                   float* y, int64_t* idx)
{
    const int nch = (int)((n + 7) / 8), last = (int)n - 8 * (nch - 1);
    ptrdiff_t p, pos;
#define CK_AMAX_PLANES(c)                                                                     \
    for (p = 0; p < P; p++) {                                                                 \
        ck_bin_max_chunks8_f(x + p * n, 8, c, 8, last, &y[p], &pos);                          \
        idx[p] = pos;                                                                         \
    }
    CK_CHUNKS8_SWITCH(nch, CK_AMAX_PLANES)
}
#endif

static void ck_global_max_f(const float* x, ptrdiff_t P, ptrdiff_t n, float* y, int64_t* idx,
                            int fast)
{
    ptrdiff_t p, pos;
#ifdef CK_AP_CHUNKS8
    if (fast && n >= 1 && n <= 64) {
        ck_global_max_f_avx2(x, P, n, y, idx);
        return;
    }
#endif
    (void)fast;
    for (p = 0; p < P; p++) {
        ck_bin_max_f(x + p * n, n, 1, n, &y[p], &pos);
        idx[p] = pos;
    }
}

static void ck_adaptive_max_plane_f(const float* x, ptrdiff_t W, const ptrdiff_t* hs,
                                    const ptrdiff_t* hl, const ptrdiff_t* ws,
                                    const ptrdiff_t* wl, float* y, int64_t* idx,
                                    ptrdiff_t oh, ptrdiff_t ow, int fast)
{
#ifdef CK_AP_CHUNKS8
    if (fast) {
        ck_adaptive_max_plane_f_avx2(x, W, hs, hl, ws, wl, y, idx, oh, ow);
        return;
    }
#endif
    (void)fast;
    ck_adaptive_max_plane_f_base(x, W, hs, hl, ws, wl, y, idx, oh, ow);
}
#endif
