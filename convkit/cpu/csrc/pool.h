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
#include <stdint.h>
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

/* A whole plane of 2x2 windows at stride 2 with no padding, dilation or clipping (LeNet's and
   most CNNs' pools): window (oh, ow) reads rows 2oh, 2oh+1 and columns 2ow, 2ow+1.  On small
   planes (8x8, 4x4) the row kernels above spend more on their per-row set-up than on the
   taps; this one takes four outputs per step straight to y and idx.  Taps in row-major order
   with the "replace if greater or NaN" rule, so values and indices are those of the general
   loop; the winner's offset (0, 1, W, W + 1) is a small exact float (W < 2**23). */
static void ck_max2x2_plane_f(const float* x, ptrdiff_t W, ptrdiff_t Ho, ptrdiff_t Wo,
                              float* y, int64_t* idx) {
    ptrdiff_t oh = 0;
#ifdef CK_SSE2
    if (Wo == 2) {
        /* two outputs a row (4x4 planes): two output rows per step, lanes (oh, 0), (oh, 1),
           (oh + 1, 0), (oh + 1, 1) -- y's order */
        const __m128 one = _mm_set1_ps(1.0f), fw = _mm_set1_ps((float)W),
                     fw1 = _mm_set1_ps((float)(W + 1));
        for (; oh + 2 <= Ho; oh += 2) {
            const float* a = x + 2 * oh * W;
            const __m128 r0 = _mm_loadu_ps(a), r1 = _mm_loadu_ps(a + W),
                         r2 = _mm_loadu_ps(a + 2 * W), r3 = _mm_loadu_ps(a + 3 * W);
            const __m128 ae = _mm_shuffle_ps(r0, r2, _MM_SHUFFLE(2, 0, 2, 0)),
                         ao = _mm_shuffle_ps(r0, r2, _MM_SHUFFLE(3, 1, 3, 1)),
                         be = _mm_shuffle_ps(r1, r3, _MM_SHUFFLE(2, 0, 2, 0)),
                         bo = _mm_shuffle_ps(r1, r3, _MM_SHUFFLE(3, 1, 3, 1));
            __m128 m = ae, r, u;
            int rel[4];
            const int64_t base = (int64_t)(2 * oh * W);
            u = ck_upd_ps(ao, m); m = ck_sel_ps(u, ao, m); r = _mm_and_ps(u, one);
            u = ck_upd_ps(be, m); m = ck_sel_ps(u, be, m); r = ck_sel_ps(u, fw, r);
            u = ck_upd_ps(bo, m); m = ck_sel_ps(u, bo, m); r = ck_sel_ps(u, fw1, r);
            _mm_storeu_ps(y + oh * 2, m);
            _mm_storeu_si128((__m128i*)rel, _mm_cvttps_epi32(r));
            idx[oh * 2] = base + rel[0];
            idx[oh * 2 + 1] = base + 2 + rel[1];
            idx[oh * 2 + 2] = base + 2 * W + rel[2];
            idx[oh * 2 + 3] = base + 2 * W + 2 + rel[3];
        }
    }
#endif
    for (; oh < Ho; oh++) {
        const float *a = x + 2 * oh * W, *b = a + W;
        const int64_t base = (int64_t)(2 * oh * W);
        float* yo = y + oh * Wo;
        int64_t* io = idx + oh * Wo;
        ptrdiff_t o = 0;
#ifdef CK_SSE2
        const __m128 one = _mm_set1_ps(1.0f), fw = _mm_set1_ps((float)W),
                     fw1 = _mm_set1_ps((float)(W + 1));
        for (; o + 4 <= Wo; o += 4) {
            __m128 ae, ao, be, bo, m, r, u, unused;
            int rel[4];
            ck_taps_ps(a + 2 * o, 2, &ae, &ao, &unused);
            ck_taps_ps(b + 2 * o, 2, &be, &bo, &unused);
            m = ae;
            u = ck_upd_ps(ao, m); m = ck_sel_ps(u, ao, m); r = _mm_and_ps(u, one);
            u = ck_upd_ps(be, m); m = ck_sel_ps(u, be, m); r = ck_sel_ps(u, fw, r);
            u = ck_upd_ps(bo, m); m = ck_sel_ps(u, bo, m); r = ck_sel_ps(u, fw1, r);
            _mm_storeu_ps(yo + o, m);
            _mm_storeu_si128((__m128i*)rel, _mm_cvttps_epi32(r));
            for (int k = 0; k < 4; k++) io[o + k] = base + 2 * (o + k) + rel[k];
        }
#endif
        for (; o < Wo; o++) {
            const float* t = a + 2 * o;
            float m = t[0], v;
            ptrdiff_t r = 0;
            v = t[1];     if (CK_UPD(v, m)) { m = v; r = 1; }
            v = t[W];     if (CK_UPD(v, m)) { m = v; r = W; }
            v = t[W + 1]; if (CK_UPD(v, m)) { m = v; r = W + 1; }
            yo[o] = m;
            io[o] = base + 2 * o + r;
        }
    }
}

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
