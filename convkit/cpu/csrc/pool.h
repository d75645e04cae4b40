/* Row kernels of the stride-2 max / average pooling fast paths and the streaming copy of
   the pooling backwards (declared in csrc/pool.pxd, used by _pool.pyx). */
#ifndef CK_POOL_H
#define CK_POOL_H
/* Row kernels of the stride-2 pooling fast paths: output column o reads row[2o .. 2o+K-1].
   SSE2 (every x86-64 CPU) four floats / two doubles at a time, plain C elsewhere and for
   the tail.  Each lane does exactly what the scalar code does (same compares, same
   additions in the same order), so results do not depend on the path taken.
   Max: "replace if greater or NaN" over the K taps from the left, then merged into
   (accv, accr) by the same rule; accr keeps the winner as rel + tap (small exact floats).
   Avg: acc += tap, taps in order. */
#include <stddef.h>
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define CK_SSE2 1
#endif

#define CK_UPD(b, m) ((b) > (m) || (b) != (b))
#define CK_SCALAR_ROWS(T, S)                                                              \
static void ck_max_row_tail_##S(const T* row, ptrdiff_t o, ptrdiff_t n, int K, T rel,     \
                                T* accv, T* accr) {                                       \
    for (; o < n; o++) {                                                                  \
        T m = row[2 * o], j = 0, b;                                                       \
        b = row[2 * o + 1];                                                               \
        if (CK_UPD(b, m)) { m = b; j = 1; }                                               \
        if (K == 3) { b = row[2 * o + 2]; if (CK_UPD(b, m)) { m = b; j = 2; } }           \
        if (CK_UPD(m, accv[o])) { accv[o] = m; accr[o] = rel + j; }                       \
    }                                                                                     \
}                                                                                         \
static void ck_avg_row_tail_##S(const T* row, ptrdiff_t o, ptrdiff_t n, int K, T* acc) {  \
    for (; o < n; o++) {                                                                  \
        T s = acc[o];                                                                     \
        s = s + row[2 * o];                                                               \
        s = s + row[2 * o + 1];                                                           \
        if (K == 3) s = s + row[2 * o + 2];                                               \
        acc[o] = s;                                                                       \
    }                                                                                     \
}
CK_SCALAR_ROWS(float, f)
CK_SCALAR_ROWS(double, d)

#ifdef CK_SSE2
static inline __m128 ck_sel_ps(__m128 u, __m128 a, __m128 b) {
    return _mm_or_ps(_mm_and_ps(u, a), _mm_andnot_ps(u, b));
}
static inline __m128 ck_upd_ps(__m128 b, __m128 m) {
    return _mm_or_ps(_mm_cmpgt_ps(b, m), _mm_cmpunord_ps(b, b));
}
static inline __m128d ck_sel_pd(__m128d u, __m128d a, __m128d b) {
    return _mm_or_pd(_mm_and_pd(u, a), _mm_andnot_pd(u, b));
}
static inline __m128d ck_upd_pd(__m128d b, __m128d m) {
    return _mm_or_pd(_mm_cmpgt_pd(b, m), _mm_cmpunord_pd(b, b));
}
/* taps of outputs o..o+3: a = row[2o+0,2,4,6], b = row[2o+1,3,5,7] and, for K = 3,
   c = row[2o+2,4,6,8]; reads nothing past the last tap of output o+3 */
static inline void ck_taps_ps(const float* r, int K, __m128* a, __m128* b, __m128* c) {
    __m128 p0 = _mm_loadu_ps(r), p1 = _mm_loadu_ps(r + 4), t;
    *a = _mm_shuffle_ps(p0, p1, _MM_SHUFFLE(2, 0, 2, 0));
    *b = _mm_shuffle_ps(p0, p1, _MM_SHUFFLE(3, 1, 3, 1));
    if (K == 3) {
        t = _mm_shuffle_ps(*a, _mm_load_ss(r + 8), _MM_SHUFFLE(0, 0, 3, 3));  /* a3 a3 r8 r8 */
        *c = _mm_shuffle_ps(*a, t, _MM_SHUFFLE(2, 0, 2, 1));                 /* a1 a2 a3 r8 */
    }
}
#endif

/* dst[0:n] = src[0:n] with non-temporal stores where the destination is 16-byte
   aligned: a gradient plane built in cache goes to memory without the read-for-ownership
   a normal store costs (a third less memory traffic for a pool backward). */
static void ck_stream_copy_f(float* dst, const float* src, ptrdiff_t n) {
    ptrdiff_t i = 0;
#ifdef CK_SSE2
    for (; i < n && ((size_t)(dst + i) & 15); i++) dst[i] = src[i];
    for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
    _mm_sfence();
#endif
    for (; i < n; i++) dst[i] = src[i];
}
static void ck_stream_copy_d(double* dst, const double* src, ptrdiff_t n) {
    ptrdiff_t i = 0;
#ifdef CK_SSE2
    for (; i < n && ((size_t)(dst + i) & 15); i++) dst[i] = src[i];
    for (; i + 2 <= n; i += 2) _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
    _mm_sfence();
#endif
    for (; i < n; i++) dst[i] = src[i];
}

static void ck_max_row_f(const float* row, ptrdiff_t n, int K, float rel,
                         float* accv, float* accr) {
    ptrdiff_t o = 0;
#ifdef CK_SSE2
    const __m128 one = _mm_set1_ps(1.0f), two = _mm_set1_ps(2.0f), vr = _mm_set1_ps(rel);
    for (; o + 4 <= n; o += 4) {
        __m128 a, b, c, m, j, u, best, r;
        ck_taps_ps(row + 2 * o, K, &a, &b, &c);
        m = a;
        u = ck_upd_ps(b, m); m = ck_sel_ps(u, b, m); j = _mm_and_ps(u, one);
        if (K == 3) { u = ck_upd_ps(c, m); m = ck_sel_ps(u, c, m); j = ck_sel_ps(u, two, j); }
        best = _mm_loadu_ps(accv + o); r = _mm_loadu_ps(accr + o);
        u = ck_upd_ps(m, best);
        _mm_storeu_ps(accv + o, ck_sel_ps(u, m, best));
        _mm_storeu_ps(accr + o, ck_sel_ps(u, _mm_add_ps(vr, j), r));
    }
#endif
    ck_max_row_tail_f(row, o, n, K, rel, accv, accr);
}

static void ck_max_row_d(const double* row, ptrdiff_t n, int K, double rel,
                         double* accv, double* accr) {
    ptrdiff_t o = 0;
#ifdef CK_SSE2
    const __m128d one = _mm_set1_pd(1.0), two = _mm_set1_pd(2.0), vr = _mm_set1_pd(rel);
    for (; o + 2 <= n; o += 2) {
        const double* q = row + 2 * o;
        __m128d p0 = _mm_loadu_pd(q), p1 = _mm_loadu_pd(q + 2), m, j, u, best, r, b, c;
        m = _mm_unpacklo_pd(p0, p1);                          /* q0 q2 */
        b = _mm_unpackhi_pd(p0, p1);                          /* q1 q3 */
        u = ck_upd_pd(b, m); m = ck_sel_pd(u, b, m); j = _mm_and_pd(u, one);
        if (K == 3) {
            c = _mm_unpacklo_pd(p1, _mm_load_sd(q + 4));      /* q2 q4 */
            u = ck_upd_pd(c, m); m = ck_sel_pd(u, c, m); j = ck_sel_pd(u, two, j);
        }
        best = _mm_loadu_pd(accv + o); r = _mm_loadu_pd(accr + o);
        u = ck_upd_pd(m, best);
        _mm_storeu_pd(accv + o, ck_sel_pd(u, m, best));
        _mm_storeu_pd(accr + o, ck_sel_pd(u, _mm_add_pd(vr, j), r));
    }
#endif
    ck_max_row_tail_d(row, o, n, K, rel, accv, accr);
}

static void ck_avg_row_f(const float* row, ptrdiff_t n, int K, float* acc) {
    ptrdiff_t o = 0;
#ifdef CK_SSE2
    for (; o + 4 <= n; o += 4) {
        __m128 a, b, c, s;
        ck_taps_ps(row + 2 * o, K, &a, &b, &c);
        s = _mm_add_ps(_mm_add_ps(_mm_loadu_ps(acc + o), a), b);
        if (K == 3) s = _mm_add_ps(s, c);
        _mm_storeu_ps(acc + o, s);
    }
#endif
    ck_avg_row_tail_f(row, o, n, K, acc);
}

static void ck_avg_row_d(const double* row, ptrdiff_t n, int K, double* acc) {
    ptrdiff_t o = 0;
#ifdef CK_SSE2
    for (; o + 2 <= n; o += 2) {
        const double* q = row + 2 * o;
        __m128d p0 = _mm_loadu_pd(q), p1 = _mm_loadu_pd(q + 2), s;
        s = _mm_add_pd(_mm_add_pd(_mm_loadu_pd(acc + o), _mm_unpacklo_pd(p0, p1)),
                       _mm_unpackhi_pd(p0, p1));
        if (K == 3) s = _mm_add_pd(s, _mm_unpacklo_pd(p1, _mm_load_sd(q + 4)));
        _mm_storeu_pd(acc + o, s);
    }
#endif
    ck_avg_row_tail_d(row, o, n, K, acc);
}
#endif
