/* Kernels of adaptive pooling (declared in csrc/adaptive_pool.pxd, used by _adaptive_pool.pyx).

   Run sums (average pooling): the whole plane of a global average, a row of column sums.
   Sixteen float / eight double partial sums in a fixed pattern, combined in a fixed tree, so
   no loop-carried add latency (a plain loop adds one value per 3-4 cycles: it cannot be
   reordered without -ffast-math) and a given length always adds in the same order.  The SSE2
   path (every x86-64 CPU) and the portable loop below it keep the very same partial sums, so
   the result does not depend on the path.  NaN and inf propagate as in any sum.  Where the
   CPU has AVX2, runs of one length are summed 8 at a time (ck_runs_avg_f), each run with its
   own additions: the same bits.  The average backward's fills (bins that tile the plane, 1x1)
   are the stores alone (ck_avg_fill, ck_tile_fill). */
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
#include <immintrin.h>
#define CK_AP_AVX2_TARGET __attribute__((target("avx2")))

/* y[0..8) = the run sums of 8 planes of n floats (plane i at x + i * n) over d, where the CPU
   has AVX2 (else 0: the caller sums plane by plane).  Each plane makes the very additions of
   ck_run_sum_f -- the same 16 partial sums (columns in ascending order), the same tree, the
   tail added last in order, one division -- so the same bits; only the horizontal part is
   shared: two planes' 4-lane trees in one vector, then the last two tree levels of all 8
   planes in three hadds (a global average pool's plane of 49 values took ~60 instructions
   one at a time, the reduction and the call most of them; the transpose of the inputs tried
   before cost more than it saved).

   ck_run_pair_t: [t(p) | t(q)] for planes p, q, t = (a0 + a.hi) + (b.lo + b.hi) -- a (b) the
   partial sums 0..7 (8..15), a0 = a.lo plus the runs of 4 past the 16-column runs */
CK_AP_AVX2_TARGET static inline __attribute__((always_inline)) __m256
ck_run_pair_t(const float* xp, const float* xq, ptrdiff_t n)
{
    __m256 ap = _mm256_setzero_ps(), bp = ap, aq = ap, bq = ap;
    ptrdiff_t i = 0;
    for (; i + 16 <= n; i += 16) {
        ap = _mm256_add_ps(ap, _mm256_loadu_ps(xp + i));
        bp = _mm256_add_ps(bp, _mm256_loadu_ps(xp + i + 8));
        aq = _mm256_add_ps(aq, _mm256_loadu_ps(xq + i));
        bq = _mm256_add_ps(bq, _mm256_loadu_ps(xq + i + 8));
    }
    __m256 lo = _mm256_permute2f128_ps(ap, aq, 0x20), hi = _mm256_permute2f128_ps(ap, aq, 0x31);
    for (; i + 4 <= n; i += 4)
        lo = _mm256_add_ps(lo, _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(xp + i)),
                                                    _mm_loadu_ps(xq + i), 1));
    return _mm256_add_ps(_mm256_add_ps(lo, hi),
                         _mm256_add_ps(_mm256_permute2f128_ps(bp, bq, 0x20),
                                       _mm256_permute2f128_ps(bp, bq, 0x31)));
}

/* the run sums of 8 runs of n floats (run i at x + i * n): hadd(T01, T23) = [t0+t1, t2+t3 of
   runs 0, 2 | of runs 1, 3] (ck_run_sum_f's u), the second hadd (t0+t1) + (t2+t3) in the
   order [0 2 4 6 | 1 3 5 7], permuted back; then the tail columns, each run's in order */
CK_AP_AVX2_TARGET static inline __attribute__((always_inline)) __m256
ck_run_sums8(const float* x, ptrdiff_t n)
{
    const __m256 h0 = _mm256_hadd_ps(ck_run_pair_t(x, x + n, n),
                                     ck_run_pair_t(x + 2 * n, x + 3 * n, n));
    const __m256 h1 = _mm256_hadd_ps(ck_run_pair_t(x + 4 * n, x + 5 * n, n),
                                     ck_run_pair_t(x + 6 * n, x + 7 * n, n));
    __m256 s = _mm256_permutevar8x32_ps(_mm256_hadd_ps(h0, h1),
                                        _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    for (ptrdiff_t j = n / 4 * 4; j < n; j++)
        s = _mm256_add_ps(s, _mm256_setr_ps(x[j], x[n + j], x[2 * n + j], x[3 * n + j],
                                            x[4 * n + j], x[5 * n + j], x[6 * n + j],
                                            x[7 * n + j]));
    return s;
}

/* 1 where the AVX2 run sums run (the CPU has AVX2), else 0 */
static int ck_run_sum8_ok(void)
{
    return ck_cpu_has_avx2();
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

/* ck_runs_avg_f where the CPU has AVX2: 8 runs at a time, the last < 8 one by one.  The
   common lengths -- 8 (56 -> 7 bins), 49 (a 7x7 global average) -- get the loops unrolled
   for their constant n (a third of the instructions of an 8-run block) */
CK_AP_AVX2_TARGET static inline __attribute__((always_inline)) ptrdiff_t
ck_runs_avg8_n(const float* x, ptrdiff_t K, ptrdiff_t n, const float* div, int one_div,
               float* y)
{
    ptrdiff_t k = 0;
    for (; k + 8 <= K; k += 8)
        _mm256_storeu_ps(y + k, _mm256_div_ps(ck_run_sums8(x + k * n, n),
                                              one_div ? _mm256_set1_ps(div[0])
                                                      : _mm256_loadu_ps(div + k)));
    return k;
}

CK_AP_AVX2_TARGET static void ck_runs_avg_f_avx2(const float* x, ptrdiff_t K, ptrdiff_t n,
                                                 const float* div, int one_div, float* y)
{
    ptrdiff_t k;
    if (n == 8)
        k = ck_runs_avg8_n(x, K, 8, div, one_div, y);
    else if (n == 49)
        k = ck_runs_avg8_n(x, K, 49, div, one_div, y);
    else
        k = ck_runs_avg8_n(x, K, n, div, one_div, y);
    for (; k < K; k++)
        y[k] = ck_run_sum_f_avx2(x + k * n, n) / div[one_div ? 0 : k];
}

/* out[w] = x[w] + x[W + w] + ... (ck_colsum_f's order) for nv (constant after inlining) runs of
   8 columns, their sums in registers over all rows: the baseline loop stored and reloaded
   out[] for every row */
CK_AP_AVX2_TARGET static inline __attribute__((always_inline)) void
ck_colsum_nv(const float* x, ptrdiff_t W, ptrdiff_t rows, float* out, const int nv)
{
    __m256 a[8];
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++)
        a[v] = _mm256_loadu_ps(x + 8 * v);
    for (ptrdiff_t i = 1; i < rows; i++) {
        x += W;
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++)
            a[v] = _mm256_add_ps(a[v], _mm256_loadu_ps(x + 8 * v));
    }
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++)
        _mm256_storeu_ps(out + 8 * v, a[v]);
}

/* column blocks of 64 in one pass over the rows, the last < 64 (56 -> 7: all 56) in one more,
   the last < 8 columns one by one */
CK_AP_AVX2_TARGET static void ck_colsum_f_avx2(const float* x, ptrdiff_t W, ptrdiff_t rows,
                                               float* out)
{
    ptrdiff_t w = 0, i;
    for (; w + 64 <= W; w += 64)
        ck_colsum_nv(x + w, W, rows, out + w, 8);
    switch ((W - w) / 8) {
    case 7: ck_colsum_nv(x + w, W, rows, out + w, 7); break;
    case 6: ck_colsum_nv(x + w, W, rows, out + w, 6); break;
    case 5: ck_colsum_nv(x + w, W, rows, out + w, 5); break;
    case 4: ck_colsum_nv(x + w, W, rows, out + w, 4); break;
    case 3: ck_colsum_nv(x + w, W, rows, out + w, 3); break;
    case 2: ck_colsum_nv(x + w, W, rows, out + w, 2); break;
    case 1: ck_colsum_nv(x + w, W, rows, out + w, 1); break;
    default: break;
    }
    for (w += (W - w) / 8 * 8; w < W; w++) {
        float s = x[w];
        for (i = 1; i < rows; i++)
            s = s + x[i * W + w];
        out[w] = s;
    }
}

static float ck_run_sum_f(const float* p, ptrdiff_t n)
{
    return ck_run_sum8_ok() ? ck_run_sum_f_avx2(p, n) : ck_run_sum_f_base(p, n);
}
#define CK_AP_AVX2 1
#else
static float ck_run_sum_f(const float* p, ptrdiff_t n) { return ck_run_sum_f_base(p, n); }
static int ck_run_sum8_ok(void) { return 0; }
#endif

/* y[k] = the run sum of x[k*n, k*n + n) / div[k] (div[0] for every k where one_div) for K runs
   of n floats one after another -- a global average's planes, or the bins of one width of
   consecutive rows of column sums -- 8 at a time where the CPU has AVX2 (unless by_eight is
   0: the tests' reference), the rest one by one: the same bits either way */
static void ck_runs_avg_f(const float* x, ptrdiff_t K, ptrdiff_t n, const float* div,
                          int one_div, float* y, int by_eight)
{
#ifdef CK_AP_AVX2
    if (by_eight && n > 0 && ck_run_sum8_ok()) {
        ck_runs_avg_f_avx2(x, K, n, div, one_div, y);
        return;
    }
#endif
    for (ptrdiff_t k = 0; k < K; k++)
        y[k] = ck_run_sum_f(x + k * n, n) / div[one_div ? 0 : k];
}

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
CK_COLSUM(float, f_base)
CK_COLSUM(double, d)

static void ck_colsum_f(const float* x, ptrdiff_t W, ptrdiff_t rows, float* out)
{
#ifdef CK_AP_AVX2
    if (ck_run_sum8_ok()) {
        ck_colsum_f_avx2(x, W, rows, out);
        return;
    }
#endif
    ck_colsum_f_base(x, W, rows, out);
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

static void ck_global_avg_d(const double* x, ptrdiff_t P, ptrdiff_t n, double d, double* y)
{
    for (ptrdiff_t p = 0; p < P; p++)
        y[p] = ck_run_sum_d(x + p * n, n) / d;
}

/* Backward fills of an average whose bins tile the plane (each element in exactly one bin)
   -- a gradient plane is a few broadcast values, so these are stores at cache bandwidth,
   written in place (the gradient of a suite-sized layer stays in L2 / L3 for its consumer;
   streaming it to memory cost 3x the fill).  Plain loops: GCC's AVX2 clone vectorises
   the broadcasts and row copies, the same values on every path.

   ck_avg_fill: a 1x1 output (global average): gx[p, :] = gy[p] / d for P planes of n. */
#define CK_AVG_FILL(T, S)                                                                 \
CK_AP_CLONES static void ck_avg_fill_##S(const T* __restrict gy, ptrdiff_t P, ptrdiff_t n, \
                                         T d, T* __restrict gx) {                         \
    for (ptrdiff_t p = 0; p < P; p++) {                                                   \
        const T v = gy[p] / d;                                                            \
        for (ptrdiff_t i = 0; i < n; i++) gx[p * n + i] = v;                              \
    }                                                                                     \
}
CK_AVG_FILL(float, f)
CK_AVG_FILL(double, d)

/* ck_tile_fill: one plane of tiling bins (rows of W; bin (o, q) covers rows [hs[o], +hl[o])
   and columns [ws[q], +wl[q]), area div[o*ow + q]): each output row's gradient row e (W
   scratch values of the caller) is built once -- 0 + gy / area, as the general backward
   kernel sums it (a -0 gradient gives +0) -- and copied to the bin rows. */
#define CK_TILE_FILL(T, S)                                                                \
CK_AP_CLONES static void ck_tile_fill_##S(const T* __restrict gy, ptrdiff_t W,            \
        const ptrdiff_t* hs, const ptrdiff_t* hl, const ptrdiff_t* ws, const ptrdiff_t* wl, \
        const T* div, ptrdiff_t oh, ptrdiff_t ow, T* __restrict gx, T* __restrict e) {    \
    for (ptrdiff_t o = 0; o < oh; o++) {                                                  \
        for (ptrdiff_t q = 0; q < ow; q++) {                                              \
            T v = 0;                                                                      \
            v = v + gy[o * ow + q] / div[o * ow + q];                                     \
            for (ptrdiff_t w = ws[q]; w < ws[q] + wl[q]; w++) e[w] = v;                   \
        }                                                                                 \
        for (ptrdiff_t r = hs[o]; r < hs[o] + hl[o]; r++)                                 \
            for (ptrdiff_t w = 0; w < W; w++) gx[r * W + w] = e[w];                       \
    }                                                                                     \
}
CK_TILE_FILL(float, f_base)
CK_TILE_FILL(double, d)

#ifdef CK_AP_AVX2
/* rows rows of W = 8*nv (nv <= 8, constant after inlining) = e, e held in registers */
CK_AP_AVX2_TARGET static inline __attribute__((always_inline)) void
ck_tile_rows_nv(float* gx, ptrdiff_t W, ptrdiff_t rows, const float* e, const int nv)
{
    __m256 a[8];
#pragma GCC unroll 8
    for (int v = 0; v < nv; v++)
        a[v] = _mm256_loadu_ps(e + 8 * v);
    for (ptrdiff_t r = 0; r < rows; r++, gx += W)
#pragma GCC unroll 8
        for (int v = 0; v < nv; v++)
            _mm256_storeu_ps(gx + 8 * v, a[v]);
}

/* ck_tile_fill_f_base's values for W = 8..64, a multiple of 8 (56 -> 7): e's bins by
   broadcast stores, the rows from registers (the plain loops took ~5 instructions a value) */
CK_AP_AVX2_TARGET static void ck_tile_fill_f_avx2(const float* gy, ptrdiff_t W,
        const ptrdiff_t* hs, const ptrdiff_t* hl, const ptrdiff_t* ws, const ptrdiff_t* wl,
        const float* div, ptrdiff_t oh, ptrdiff_t ow, float* gx, float* e)
{
    for (ptrdiff_t o = 0; o < oh; o++) {
        float* row = gx + hs[o] * W;
        for (ptrdiff_t q = 0; q < ow; q++) {
            float v = 0;
            v = v + gy[o * ow + q] / div[o * ow + q];
            const __m256 b = _mm256_set1_ps(v);
            ptrdiff_t w = ws[q];
            for (; w + 8 <= ws[q] + wl[q]; w += 8)
                _mm256_storeu_ps(e + w, b);
            for (; w < ws[q] + wl[q]; w++)
                e[w] = v;
        }
        switch (W / 8) {
        case 8: ck_tile_rows_nv(row, W, hl[o], e, 8); break;
        case 7: ck_tile_rows_nv(row, W, hl[o], e, 7); break;
        case 6: ck_tile_rows_nv(row, W, hl[o], e, 6); break;
        case 5: ck_tile_rows_nv(row, W, hl[o], e, 5); break;
        case 4: ck_tile_rows_nv(row, W, hl[o], e, 4); break;
        case 3: ck_tile_rows_nv(row, W, hl[o], e, 3); break;
        case 2: ck_tile_rows_nv(row, W, hl[o], e, 2); break;
        default: ck_tile_rows_nv(row, W, hl[o], e, 1); break;
        }
    }
}
#endif

static void ck_tile_fill_f(const float* gy, ptrdiff_t W, const ptrdiff_t* hs,
                           const ptrdiff_t* hl, const ptrdiff_t* ws, const ptrdiff_t* wl,
                           const float* div, ptrdiff_t oh, ptrdiff_t ow, float* gx, float* e)
{
#ifdef CK_AP_AVX2
    if (W % 8 == 0 && W >= 8 && W <= 64 && ck_run_sum8_ok()) {
        ck_tile_fill_f_avx2(gy, W, hs, hl, ws, wl, div, oh, ow, gx, e);
        return;
    }
#endif
    ck_tile_fill_f_base(gy, W, hs, hl, ws, wl, div, oh, ow, gx, e);
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
