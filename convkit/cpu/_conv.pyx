# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# cython: language_level=3
"""conv2d kernels for the ``cpu`` backend: im2col + BLAS GEMM (per image, or batch-wide for small
output maps), a no-copy 1x1 path, Winograd F(2x2, 3x3), and a direct kernel for depthwise convs
(groups == C).  With convkit's float32 GEMM (AVX-512F) also: forwards that read the taps in place
(wide rows for stride 1, stride-phase planes for strided convs) and, for filters of <= 320 taps,
weight gradients as dot products along the output positions (_sdot.h).

Every loop runs without the GIL.  Each parallel region is a set of independent tasks (an image's
block of output rows, a block of grad_weight columns, an image's block of channels) taken by the
OpenMP team with dynamic scheduling and no barrier inside: a thread slowed down by other load on
the machine simply takes fewer tasks.  A task writes a part of the output no other task writes,
and every sum runs in an order fixed by the task, never by the thread that ran it, so results --
backward included -- are the same bits every run.  The GEMMs call BLAS from inside the team; the
Python wrapper (convkit/cpu/conv.py) pins BLAS to one thread around the call so the two thread
pools do not oversubscribe the cores.

cdivision is on: every ``//`` and ``%`` below has non-negative operands (see _wo_range), except
the one stride-phase remainder in _im2col_taps, which corrects C's truncation explicitly.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memcpy, memset

from ._blas cimport gemm, gemm_pk, ck_sgemm_apacked_rows


cdef extern from "_vsum.h" nogil:
    int ck_sum_f(const float* p, Py_ssize_t n, double* out)
    int ck_short_copy_f(float* dst, const float* src, Py_ssize_t n)
    int ck_im2col_taps_f(const float* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh,
                         Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                         Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Wo,
                         Py_ssize_t h0, Py_ssize_t nrows, float* cols, Py_ssize_t ldc,
                         float* xs)
    void ck_phases_f(const float* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t sh,
                     Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t h0, Py_ssize_t Rq,
                     Py_ssize_t Wq, Py_ssize_t plane, float* Q)


cdef extern from "_sdot.h" nogil:
    void ck_sdot_accum(Py_ssize_t m, Py_ssize_t n, Py_ssize_t R, Py_ssize_t wn, const float* a,
                       Py_ssize_t lda, Py_ssize_t ars, const float* b, const Py_ssize_t* boff,
                       Py_ssize_t brs, float* part, const float* pf, Py_ssize_t pf_rows,
                       Py_ssize_t pf_len, Py_ssize_t pf_ld)
    void ck_sdot_copy(Py_ssize_t m, Py_ssize_t R, Py_ssize_t wn, const float* a, Py_ssize_t lda,
                      Py_ssize_t ars, float* dst, Py_ssize_t ds, float* sums)


cdef inline float* _align64(float* p) noexcept nogil:
    """p rounded up to a 64-byte boundary (at most 15 floats on)."""
    return <float*>((<size_t>p + 63) & ~(<size_t>63))


cdef inline void _row_copy(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    """memcpy of a row (memset to 0 when src is NULL); rows of up to 64 float32 values by masked
    vector moves where the CPU has AVX-512, not a library call each."""
    if floating is float:
        if ck_short_copy_f(dst, src, n):
            return
    if src == NULL:
        memset(dst, 0, n * sizeof(floating))
    else:
        memcpy(dst, src, n * sizeof(floating))


cdef extern from "_wino.h" nogil:
    int ck_wino_input_row_f(const float* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t r0,
                            Py_ssize_t pl, Py_ssize_t tw, float* v, Py_ssize_t vs,
                            float* scratch)
    int ck_wino_output_row_f(const float* m, Py_ssize_t ms, Py_ssize_t tw, float bias, float* y,
                             Py_ssize_t Wo, int two_rows)
    int ck_wino_filters_f(const float* g, Py_ssize_t ls, Py_ssize_t nl, int flip, float* u,
                          Py_ssize_t us)


cdef inline Py_ssize_t _min(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef inline void _wo_range(Py_ssize_t off, Py_ssize_t sw, Py_ssize_t W, Py_ssize_t Wo,
                           Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the output columns wo whose input column wo*sw + off lies in [0, W)."""
    cdef Py_ssize_t a = 0, b = 0
    if off < 0:
        a = (-off + sw - 1) // sw
    if W - 1 - off >= 0:
        b = (W - 1 - off) // sw + 1
    if b > Wo:
        b = Wo
    if a > b:
        a = b
    lo[0] = a
    hi[0] = b


# ---------------------------------------------------------------------------- plane kernels
cdef void _im2col_taps(const floating* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t kh,
                      Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                      Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Wo, Py_ssize_t h0,
                      Py_ssize_t nrows, floating* cols, Py_ssize_t ldc,
                      floating* xs) noexcept nogil:
    """The KW rows of tap row kh (row kw of cols, stride ldc): see im2col_plane.

    xs: NULL, or scratch of W + sw elements.  With a stride sw > 1 each input row is first split
    into its sw phases (x[p::sw], each Wq long) so that every tap row becomes one memcpy instead
    of a strided gather: KW strided copies of Wo values per row become one of W values.
    """
    cdef Py_ssize_t kw, r, wo, hi, off, lo = 0, up = 0, p, q, j
    cdef Py_ssize_t Wq = (W + sw - 1) // sw
    cdef floating* dst
    cdef const floating* src
    cdef const floating* xrow
    if floating is float:   # the same loop in C with the row copies inlined (_vsum.h)
        if ck_im2col_taps_f(x, H, W, kh, KW, sh, sw, pt, pl, dh, dw, Wo, h0, nrows, cols, ldc,
                            xs):
            return
    for r in range(nrows):
        hi = (h0 + r) * sh - pt + kh * dh
        if hi < 0 or hi >= H:
            for kw in range(KW):
                _row_copy(cols + kw * ldc + r * Wo, NULL, Wo)
            continue
        xrow = x + hi * W
        if sw > 1 and xs != NULL:
            for p in range(sw):
                j = 0
                while p + j * sw < W:
                    xs[p * Wq + j] = xrow[p + j * sw]
                    j = j + 1
        for kw in range(KW):
            dst = cols + kw * ldc + r * Wo
            off = kw * dw - pl
            _wo_range(off, sw, W, Wo, &lo, &up)
            if lo == up:
                _row_copy(dst, NULL, Wo)
                continue
            if lo > 0:
                _row_copy(dst, NULL, lo)
            if sw == 1:
                _row_copy(dst + lo, xrow + off + lo, up - lo)
            elif xs != NULL:
                # column wo*sw + off = (wo + q)*sw + p with p = off mod sw (floor), q exact
                p = ((off % sw) + sw) % sw
                q = (off - p) // sw
                _row_copy(dst + lo, xs + p * Wq + q + lo, up - lo)
            else:
                src = xrow + off
                for wo in range(lo, up):
                    dst[wo] = src[wo * sw]
            if up < Wo:
                _row_copy(dst + up, NULL, Wo - up)


cdef void im2col_plane(const floating* x, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                       Py_ssize_t Wo, Py_ssize_t h0, Py_ssize_t nrows,
                       floating* cols, Py_ssize_t ldc) noexcept nogil:
    cdef Py_ssize_t kh
    for kh in range(KH):
        _im2col_taps(x, H, W, kh, KW, sh, sw, pt, pl, dh, dw, Wo, h0, nrows,
                     cols + kh * KW * ldc, ldc, NULL)


cdef void col2im_plane(const floating* cols, Py_ssize_t ldc, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                       Py_ssize_t Wo, Py_ssize_t h0, Py_ssize_t nrows,
                       floating* gx) noexcept nogil:
    cdef Py_ssize_t kh, kw, r, wo, hi, off, lo = 0, up = 0
    cdef const floating* src
    cdef floating* dst
    for kh in range(KH):
        for kw in range(KW):
            off = kw * dw - pl
            _wo_range(off, sw, W, Wo, &lo, &up)
            if lo == up:
                continue
            for r in range(nrows):
                hi = (h0 + r) * sh - pt + kh * dh
                if hi < 0 or hi >= H:
                    continue
                src = cols + (kh * KW + kw) * ldc + r * Wo
                dst = gx + hi * W + off
                if sw == 1:
                    for wo in range(lo, up):
                        dst[wo] += src[wo]
                else:
                    for wo in range(lo, up):
                        dst[wo * sw] += src[wo]


cdef void depthwise_forward_plane(const floating* x, Py_ssize_t H, Py_ssize_t W,
                                  const floating* w, Py_ssize_t KH, Py_ssize_t KW,
                                  Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                  Py_ssize_t dh, Py_ssize_t dw, floating bias,
                                  floating* y, Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil:
    cdef Py_ssize_t ho, wo, kh, kw, hi, off, lo = 0, up = 0
    cdef floating wv
    cdef floating* yrow
    cdef const floating* xrow
    for ho in range(Ho):
        yrow = y + ho * Wo
        for wo in range(Wo):
            yrow[wo] = bias
        for kh in range(KH):
            hi = ho * sh - pt + kh * dh
            if hi < 0 or hi >= H:
                continue
            for kw in range(KW):
                off = kw * dw - pl
                _wo_range(off, sw, W, Wo, &lo, &up)
                wv = w[kh * KW + kw]
                xrow = x + hi * W + off
                if sw == 1:
                    for wo in range(lo, up):
                        yrow[wo] += wv * xrow[wo]
                else:
                    for wo in range(lo, up):
                        yrow[wo] += wv * xrow[wo * sw]


cdef void depthwise_backward_input_plane(const floating* gy, Py_ssize_t Ho, Py_ssize_t Wo,
                                         const floating* w, Py_ssize_t KH, Py_ssize_t KW,
                                         Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                                         Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                                         floating* gx, Py_ssize_t H, Py_ssize_t W) noexcept nogil:
    cdef Py_ssize_t ho, wo, kh, kw, hi, off, lo = 0, up = 0
    cdef floating wv
    cdef floating* gxrow
    cdef const floating* gyrow
    for ho in range(Ho):
        gyrow = gy + ho * Wo
        for kh in range(KH):
            hi = ho * sh - pt + kh * dh
            if hi < 0 or hi >= H:
                continue
            for kw in range(KW):
                off = kw * dw - pl
                _wo_range(off, sw, W, Wo, &lo, &up)
                wv = w[kh * KW + kw]
                gxrow = gx + hi * W + off
                if sw == 1:
                    for wo in range(lo, up):
                        gxrow[wo] += wv * gyrow[wo]
                else:
                    for wo in range(lo, up):
                        gxrow[wo * sw] += wv * gyrow[wo]


cdef void depthwise_backward_weight_plane(const floating* gy, Py_ssize_t Ho, Py_ssize_t Wo,
                                          const floating* x, Py_ssize_t H, Py_ssize_t W,
                                          Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh,
                                          Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                          Py_ssize_t dh, Py_ssize_t dw,
                                          floating* tmp, double* acc) noexcept nogil:
    # Products are summed per output column into tmp (a vectorisable elementwise loop; a plain
    # dot-product reduction would stay scalar without -ffast-math), then each tap's Wo partial
    # sums go into acc in double.
    cdef Py_ssize_t ho, wo, kh, kw, hi, off, k, lo = 0, up = 0
    cdef floating* t
    cdef const floating* gyrow
    cdef const floating* xrow
    memset(tmp, 0, KH * KW * Wo * sizeof(floating))
    for ho in range(Ho):
        gyrow = gy + ho * Wo
        for kh in range(KH):
            hi = ho * sh - pt + kh * dh
            if hi < 0 or hi >= H:
                continue
            for kw in range(KW):
                off = kw * dw - pl
                _wo_range(off, sw, W, Wo, &lo, &up)
                t = tmp + (kh * KW + kw) * Wo
                xrow = x + hi * W + off
                if sw == 1:
                    for wo in range(lo, up):
                        t[wo] += gyrow[wo] * xrow[wo]
                else:
                    for wo in range(lo, up):
                        t[wo] += gyrow[wo] * xrow[wo * sw]
    for k in range(KH * KW):
        acc[k] += plane_sum(tmp + k * Wo, Wo)


cdef double plane_sum(const floating* p, Py_ssize_t n) noexcept nogil:
    # eight independent accumulators: no loop-carried add latency, and a fixed order
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0
    cdef Py_ssize_t i = 0
    if floating is float:                   # AVX-512 where the CPU has it (_vsum.h)
        if ck_sum_f(p, n, &s0):
            return s0
    while i + 8 <= n:
        s0 += p[i]
        s1 += p[i + 1]
        s2 += p[i + 2]
        s3 += p[i + 3]
        s4 += p[i + 4]
        s5 += p[i + 5]
        s6 += p[i + 6]
        s7 += p[i + 7]
        i += 8
    while i < n:
        s0 += p[i]
        i += 1
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))


# ---------------------------------------------------------------------------- depthwise, stride 1
# The plane kernels above update a whole output row once per tap (a load and a store of y per
# multiply-add).  For stride 1 the drivers below first copy the plane into a zero-padded scratch
# plane, then keep 16 outputs in registers across all taps (one store per 16 * KH * KW
# multiply-adds) -- the common depthwise case, measured 2-3x faster.
cdef extern from *:
    """
    /* Depthwise stride-1 inner blocks with GCC/clang vector extensions (SSE2 at the x86-64
       baseline; the loop vectorizer left these register blocks scalar).  Other compilers get
       plain loops.  ck_block<WD> keeps WD outputs in registers across all taps; ck_dot<WD>
       keeps WD partial sums (lane j takes elements j, j + WD, ...). */
    #include <string.h>
    #if defined(__GNUC__) || defined(__clang__)
    typedef float ck_vf __attribute__((vector_size(16)));
    typedef double ck_vd __attribute__((vector_size(16)));
    #define CK_HELPERS(T, V, SUF)                                                             \\
    static inline V ck_ld_##SUF(const T* p) { V v; memcpy(&v, p, sizeof(V)); return v; }      \\
    static inline void ck_st_##SUF(T* p, V v) { memcpy(p, &v, sizeof(V)); }
    #define CK_DEFINE(T, V, SUF, WD)                                                          \\
    static void ck_block##WD##_##SUF(const T* xp, Py_ssize_t Wp, const T* w, Py_ssize_t KH,   \\
                                     Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw, T* y,       \\
                                     T init, int accumulate) {                                \\
        enum { L = sizeof(V) / sizeof(T), NV = WD / (sizeof(V) / sizeof(T)) };               \\
        V acc[NV]; Py_ssize_t kh, kw; int v;                                                  \\
        for (v = 0; v < NV; v++) {                                                            \\
            if (accumulate) acc[v] = ck_ld_##SUF(y + v * L);                                  \\
            else { V b = {0}; acc[v] = b + init; }                                            \\
        }                                                                                     \\
        for (kh = 0; kh < KH; kh++)                                                           \\
            for (kw = 0; kw < KW; kw++) {                                                     \\
                const T* xk = xp + kh * dh * Wp + kw * dw;                                    \\
                V wv = {0}; wv = wv + w[kh * KW + kw];                                        \\
                for (v = 0; v < NV; v++) acc[v] += wv * ck_ld_##SUF(xk + v * L);              \\
            }                                                                                 \\
        for (v = 0; v < NV; v++) ck_st_##SUF(y + v * L, acc[v]);                              \\
    }                                                                                         \\
    static void ck_dot##WD##_##SUF(const T* a, const T* b, Py_ssize_t n, T* out) {           \\
        enum { L = sizeof(V) / sizeof(T), NV = WD / (sizeof(V) / sizeof(T)) };               \\
        V acc[NV]; Py_ssize_t i; int v;                                                       \\
        for (v = 0; v < NV; v++) acc[v] = ck_ld_##SUF(out + v * L);                           \\
        for (i = 0; i < n; i += WD)                                                         \\
            for (v = 0; v < NV; v++)                                                          \\
                acc[v] += ck_ld_##SUF(a + i + v * L) * ck_ld_##SUF(b + i + v * L);            \\
        for (v = 0; v < NV; v++) ck_st_##SUF(out + v * L, acc[v]);                            \\
    }
    #else
    #define CK_HELPERS(T, V, SUF)
    #define CK_DEFINE(T, V, SUF, WD)                                                          \\
    static void ck_block##WD##_##SUF(const T* xp, Py_ssize_t Wp, const T* w, Py_ssize_t KH,   \\
                                     Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw, T* y,       \\
                                     T init, int accumulate) {                                \\
        T acc[WD]; Py_ssize_t kh, kw; int j;                                                  \\
        for (j = 0; j < WD; j++) acc[j] = accumulate ? y[j] : init;                           \\
        for (kh = 0; kh < KH; kh++)                                                           \\
            for (kw = 0; kw < KW; kw++) {                                                     \\
                const T* xk = xp + kh * dh * Wp + kw * dw; T wv = w[kh * KW + kw];            \\
                for (j = 0; j < WD; j++) acc[j] += wv * xk[j];                                \\
            }                                                                                 \\
        for (j = 0; j < WD; j++) y[j] = acc[j];                                               \\
    }                                                                                         \\
    static void ck_dot##WD##_##SUF(const T* a, const T* b, Py_ssize_t n, T* out) {           \\
        Py_ssize_t i; int j;                                                                  \\
        for (i = 0; i < n; i += WD)                                                           \\
            for (j = 0; j < WD; j++) out[j] += a[i + j] * b[i + j];                           \\
    }
    #endif
    CK_HELPERS(float, ck_vf, f)
    CK_HELPERS(double, ck_vd, d)
    CK_DEFINE(float, ck_vf, f, 16)
    CK_DEFINE(double, ck_vd, d, 16)
    CK_DEFINE(float, ck_vf, f, 8)
    CK_DEFINE(double, ck_vd, d, 8)
    """
    void ck_block16_f(const float* xp, Py_ssize_t Wp, const float* w, Py_ssize_t KH,
                      Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw, float* y, float init,
                      int accumulate) noexcept nogil
    void ck_block16_d(const double* xp, Py_ssize_t Wp, const double* w, Py_ssize_t KH,
                      Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw, double* y, double init,
                      int accumulate) noexcept nogil
    void ck_dot16_f(const float* a, const float* b, Py_ssize_t n, float* out) noexcept nogil
    void ck_dot16_d(const double* a, const double* b, Py_ssize_t n, double* out) noexcept nogil
    void ck_block8_f(const float* xp, Py_ssize_t Wp, const float* w, Py_ssize_t KH,
                     Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw, float* y, float init,
                     int accumulate) noexcept nogil
    void ck_block8_d(const double* xp, Py_ssize_t Wp, const double* w, Py_ssize_t KH,
                     Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw, double* y, double init,
                     int accumulate) noexcept nogil
    void ck_dot8_f(const float* a, const float* b, Py_ssize_t n, float* out) noexcept nogil
    void ck_dot8_d(const double* a, const double* b, Py_ssize_t n, double* out) noexcept nogil


cdef void _pad_plane(const floating* x, Py_ssize_t H, Py_ssize_t W, Py_ssize_t top,
                     Py_ssize_t left, floating* xp, Py_ssize_t Hp, Py_ssize_t Wp) noexcept nogil:
    """xp (Hp, Wp)[r, s] = x[r - top, s - left], 0 outside x (top/left may be negative)."""
    cdef Py_ssize_t r, src, lo, up
    lo = left if left > 0 else 0
    up = _min(Wp, left + W)
    for r in range(Hp):
        src = r - top
        if src < 0 or src >= H or lo >= up:
            memset(xp + r * Wp, 0, Wp * sizeof(floating))
            continue
        if lo > 0:
            memset(xp + r * Wp, 0, lo * sizeof(floating))
        memcpy(xp + r * Wp + lo, x + src * W + lo - left, (up - lo) * sizeof(floating))
        if up < Wp:
            memset(xp + r * Wp + up, 0, (Wp - up) * sizeof(floating))


cdef void _correlate_padded(const floating* xp, Py_ssize_t Wp, const floating* w,
                            Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw,
                            floating* y, Py_ssize_t Ho, Py_ssize_t Wo, floating init,
                            bint accumulate) noexcept nogil:
    """y[ho, wo] = (y[ho, wo] if accumulate else init)
                   + sum_{kh,kw} w[kh, kw] * xp[ho + kh*dh, wo + kw*dw]   (stride 1)."""
    cdef floating acc[16]
    cdef Py_ssize_t ho, wo, kh, kw, j, nb
    cdef floating wv
    cdef floating* yrow
    cdef const floating* xk
    for ho in range(Ho):
        yrow = y + ho * Wo
        wo = 0
        while wo < Wo:
            nb = _min(16, Wo - wo)
            if nb == 16:
                if floating is float:
                    ck_block16_f(xp + ho * Wp + wo, Wp, w, KH, KW, dh, dw, yrow + wo, init,
                                 accumulate)
                else:
                    ck_block16_d(xp + ho * Wp + wo, Wp, w, KH, KW, dh, dw, yrow + wo, init,
                                 accumulate)
            elif nb >= 8:
                nb = 8
                if floating is float:
                    ck_block8_f(xp + ho * Wp + wo, Wp, w, KH, KW, dh, dw, yrow + wo, init,
                                accumulate)
                else:
                    ck_block8_d(xp + ho * Wp + wo, Wp, w, KH, KW, dh, dw, yrow + wo, init,
                                accumulate)
            else:
                for j in range(nb):
                    acc[j] = yrow[wo + j] if accumulate else init
                for kh in range(KH):
                    for kw in range(KW):
                        wv = w[kh * KW + kw]
                        xk = xp + (ho + kh * dh) * Wp + wo + kw * dw
                        for j in range(nb):
                            acc[j] += wv * xk[j]
                for j in range(nb):
                    yrow[wo + j] = acc[j]
            wo = wo + nb


cdef void _weight_grad_padded(const floating* gy, Py_ssize_t Ho, Py_ssize_t Wo,
                              const floating* xp, Py_ssize_t Wp, Py_ssize_t KH, Py_ssize_t KW,
                              Py_ssize_t dh, Py_ssize_t dw, double* out) noexcept nogil:
    """out[kh*KW + kw] += sum_{ho,wo} gy[ho, wo] * xp[ho + kh*dh, wo + kw*dw]   (stride 1).

    16 partial sums per tap (lane j takes the columns wo = j mod 16), added in a fixed order."""
    cdef floating acc[16]
    cdef Py_ssize_t ho, wo, kh, kw, j
    cdef const floating* g
    cdef const floating* xk
    cdef double s
    for kh in range(KH):
        for kw in range(KW):
            for j in range(16):
                acc[j] = 0
            for ho in range(Ho):
                g = gy + ho * Wo
                xk = xp + (ho + kh * dh) * Wp + kw * dw
                wo = (Wo // 16) * 16
                if floating is float:
                    ck_dot16_f(g, xk, wo, acc)
                else:
                    ck_dot16_d(g, xk, wo, acc)
                if Wo - wo >= 8:
                    if floating is float:
                        ck_dot8_f(g + wo, xk + wo, 8, acc)
                    else:
                        ck_dot8_d(g + wo, xk + wo, 8, acc)
                    wo = wo + 8
                for j in range(Wo - wo):
                    acc[j] += g[wo + j] * xk[wo + j]
            s = 0
            for j in range(16):
                s += acc[j]
            out[kh * KW + kw] += s


# ---------------------------------------------------------------------------- depthwise 3x3, stride 1
# The shape of nearly every depthwise layer (MobileNet-style 3x3, stride 1, dilation 1, one filter
# per channel) gets its own kernels: nine weights held in vector registers, up to four blocks of
# a row in flight while walking down the rows (each input row loaded once for the three rows it
# meets), the widest vectors the CPU has (AVX2 / AVX-512 picked at run time; the build itself
# targets the x86-64 baseline), and no padded copy for padding 1.  The backward runs as one
# task per plane: grad_x, the nine weight-gradient sums and the bias-gradient sum from one read
# of grad_y and x.  Measured on (8,128,56,56) float32, 2 threads, against torch 2.13 in the same
# process: forward 0.91 vs 1.96 ms, forward + backward 2.85 vs 6.43 ms (the general depthwise
# kernel below: 2.12 and 9.18 ms).
cdef extern from *:
    """
    /* Depthwise 3x3, stride 1, dilation 1, one filter per channel: the kernels of
       conv2d_forward_depthwise3x3 / conv2d_backward_depthwise3x3, one plane per call.
       ck_dw3_fwd / ck_dw3_wgrad read the input from a zero-padded copy xp ((Ho + 2) rows of
       Wp >= Wo + 2; any padding); ck_dw3_fwd1 / ck_dw3_wgrad1 (padding 1 all round, the common
       case) read the planes as they are.
       A row of outputs is cut into blocks of L lanes; when L does not divide it the last block is
       moved left to end with the row (it overlaps the one before: the forward rewrites the same
       values, the weight gradient drops the lanes already counted).  So every load stays inside
       the row, and a level needs rows of at least L outputs (W - 2 >= L for the unpadded kernels,
       which sum columns 0 and W-1 one by one).
       Levels: 1 = 16-byte vectors (the x86-64 baseline, SSE2; NEON elsewhere), 2 = AVX2 + FMA,
       3 = AVX-512F, the widest the CPU has, picked once by CPUID.  A level fixes the order of every
       sum (lanes, then blocks, then rows), so results do not depend on the thread count; levels
       differ from one another in the last bits (FMA, lane count). */
    #include <stdlib.h>
    #include <string.h>
    #if defined(__GNUC__) || defined(__clang__)
    #define CK_DW3 1
    #define CK_DW3_LD(V, p) ({ V v_; memcpy(&v_, (p), sizeof(V)); v_; })
    #define CK_DW3_ST(p, v) do { __typeof__(v) t_ = (v); memcpy((p), &t_, sizeof(t_)); } while (0)

    /* Both kernels walk down the rows of a group of NB blocks of a row (NB = 4, 2 or 1, unrolled
       by the compiler), loading each padded input row once: its three shifted vectors serve the
       three output rows (forward) or three grad_y rows (weight gradient) that it touches. */
    #define CK_DW3_DEFINE(T, IT, SUF, VB, ATTR)                                              \\
    typedef T ck_dw3v_##SUF##VB __attribute__((vector_size(VB)));                           \\
    typedef IT ck_dw3m_##SUF##VB __attribute__((vector_size(VB)));                          \\
    /* rows h of y, blocks s[0..NB): y[h, s + j] = bias + sum_{a,b} k[3a + b] * xp[h + a, s + j + b]: \\
       input row r finishes output row r - 2, continues r - 1 and starts r (the sums run in the    \\
       order bias, tap 0, 1, ..., 8) */                                                      \\
    ATTR static inline __attribute__((always_inline)) void                                  \\
    ck_dw3_fwd_group_##SUF##VB(const T* xp, Py_ssize_t Wp, const ck_dw3v_##SUF##VB* k,       \\
                               ck_dw3v_##SUF##VB b0, T* y, Py_ssize_t Ho, Py_ssize_t Wo,     \\
                               const Py_ssize_t* s, const int NB) {                          \\
        typedef ck_dw3v_##SUF##VB V;                                                         \\
        V p0[4], p1[4];                                                                      \\
        Py_ssize_t r;                                                                        \\
        int b;                                                                               \\
        for (b = 0; b < NB; b++) { p0[b] = b0; p1[b] = b0; }                                 \\
        for (r = 0; r < Ho + 2; r++) {                                                       \\
            const T* xr = xp + r * Wp;                                                       \\
            for (b = 0; b < NB; b++) {                                                       \\
                V v0 = CK_DW3_LD(V, xr + s[b]);                                              \\
                V v1 = CK_DW3_LD(V, xr + s[b] + 1);                                          \\
                V v2 = CK_DW3_LD(V, xr + s[b] + 2);                                          \\
                V o = p0[b] + k[6] * v0 + k[7] * v1 + k[8] * v2;                             \\
                p0[b] = p1[b] + k[3] * v0 + k[4] * v1 + k[5] * v2;                           \\
                p1[b] = b0 + k[0] * v0 + k[1] * v1 + k[2] * v2;                              \\
                if (r >= 2) CK_DW3_ST(y + (r - 2) * Wo + s[b], o);                           \\
            }                                                                                \\
        }                                                                                    \\
    }                                                                                        \\
    /* y[h, j] = bias + sum_{a,b} w'[a, b] * xp[h + a, j + b]; w' = w, or w flipped in both   \\
       axes (grad_x as the correlation of the padded grad_y) */                              \\
    ATTR static void ck_dw3_fwd_##SUF##VB(const T* xp, Py_ssize_t Wp, const T* w, int flip,  \\
                                          T bias, T* y, Py_ssize_t Ho, Py_ssize_t Wo) {      \\
        typedef ck_dw3v_##SUF##VB V;                                                         \\
        enum { L = VB / sizeof(T) };                                                         \\
        V k[9], b0, z = {0};                                                                 \\
        Py_ssize_t j, i, nb = (Wo + L - 1) / L, s[4];                                        \\
        for (i = 0; i < 9; i++) k[i] = z + w[flip ? 8 - i : i];                              \\
        b0 = z + bias;                                                                       \\
        for (j = 0; j < nb; ) {                                                              \\
            int NB = nb - j >= 4 ? 4 : nb - j >= 2 ? 2 : 1;                                  \\
            for (i = 0; i < NB; i++)    /* the last block ends at Wo */                      \\
                s[i] = (j + i) * L < Wo - L ? (j + i) * L : Wo - L;                          \\
            if (NB == 4) ck_dw3_fwd_group_##SUF##VB(xp, Wp, k, b0, y, Ho, Wo, s, 4);         \\
            else if (NB == 2) ck_dw3_fwd_group_##SUF##VB(xp, Wp, k, b0, y, Ho, Wo, s, 2);    \\
            else ck_dw3_fwd_group_##SUF##VB(xp, Wp, k, b0, y, Ho, Wo, s, 1);                 \\
            j += NB;                                                                         \\
        }                                                                                    \\
    }                                                                                        \\
    /* a[3a + b] += sum over rows h, lanes of the blocks s[0..NB) of gy[h, s + j] *             \\
       xp[h + a, s + j + b], a[9] += the same sums of gy: input row r meets grad_y rows r, r-1, r-2 */ \\
    ATTR static inline __attribute__((always_inline)) void                                  \\
    ck_dw3_wgrad_group_##SUF##VB(const T* gy, Py_ssize_t Ho, Py_ssize_t Wo, const T* xp,    \\
                                 Py_ssize_t Wp, const Py_ssize_t* s, const int NB,           \\
                                 ck_dw3v_##SUF##VB* acc) {                                   \\
        typedef ck_dw3v_##SUF##VB V;                                                         \\
        V a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3], a4 = acc[4];                   \\
        V a5 = acc[5], a6 = acc[6], a7 = acc[7], a8 = acc[8], a9 = acc[9];                   \\
        Py_ssize_t r;                                                                        \\
        int b;                                                                               \\
        for (r = 0; r < Ho + 2; r++) {                                                       \\
            const T* xr = xp + r * Wp;                                                       \\
            const T* g0 = gy + r * Wo;                                                       \\
            const T* g1 = g0 - Wo;                                                           \\
            const T* g2 = g1 - Wo;                                                           \\
            int u0 = r < Ho, u1 = r >= 1 && r <= Ho, u2 = r >= 2;                            \\
            for (b = 0; b < NB; b++) {                                                       \\
                V v0 = CK_DW3_LD(V, xr + s[b]);                                              \\
                V v1 = CK_DW3_LD(V, xr + s[b] + 1);                                          \\
                V v2 = CK_DW3_LD(V, xr + s[b] + 2);                                          \\
                if (u0) {                                                                    \\
                    V g = CK_DW3_LD(V, g0 + s[b]);                                           \\
                    a9 += g; a0 += g * v0; a1 += g * v1; a2 += g * v2;                       \\
                }                                                                            \\
                if (u1) {                                                                    \\
                    V g = CK_DW3_LD(V, g1 + s[b]);                                           \\
                    a3 += g * v0; a4 += g * v1; a5 += g * v2;                                \\
                }                                                                            \\
                if (u2) {                                                                    \\
                    V g = CK_DW3_LD(V, g2 + s[b]);                                           \\
                    a6 += g * v0; a7 += g * v1; a8 += g * v2;                                \\
                }                                                                            \\
            }                                                                                \\
        }                                                                                    \\
        acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3; acc[4] = a4;                     \\
        acc[5] = a5; acc[6] = a6; acc[7] = a7; acc[8] = a8; acc[9] = a9;                     \\
    }                                                                                        \\
    /* out[a*3 + b] = sum_{h,j} gy[h, j] * xp[h + a, j + b] (the weight gradient of the plane), \\
       out[9] = sum_{h,j} gy[h, j] (the bias gradient): L float partial sums per tap, added in  \\
       lane order in double at the end.  A last block that overlaps the one before sums into   \\
       its own partial sums, whose lanes already counted are dropped (bitwise, so an inf or a   \\
       NaN there drops too) */                                                               \\
    ATTR static void ck_dw3_wgrad_##SUF##VB(const T* gy, Py_ssize_t Ho, Py_ssize_t Wo,       \\
                                            const T* xp, Py_ssize_t Wp, double* out) {       \\
        typedef ck_dw3v_##SUF##VB V;                                                         \\
        typedef ck_dw3m_##SUF##VB M;                                                         \\
        enum { L = VB / sizeof(T) };                                                         \\
        V a[10], t[10], z = {0};                                                             \\
        M keep;                                                                              \\
        IT lanes[L];                                                                         \\
        T part[L];                                                                           \\
        Py_ssize_t j, i, nfull = Wo / L, s[4];                                               \\
        for (i = 0; i < 10; i++) a[i] = z;                                                   \\
        for (j = 0; j < nfull; ) {                                                           \\
            int NB = nfull - j >= 4 ? 4 : nfull - j >= 2 ? 2 : 1;                            \\
            for (i = 0; i < NB; i++) s[i] = (j + i) * L;                                     \\
            if (NB == 4) ck_dw3_wgrad_group_##SUF##VB(gy, Ho, Wo, xp, Wp, s, 4, a);          \\
            else if (NB == 2) ck_dw3_wgrad_group_##SUF##VB(gy, Ho, Wo, xp, Wp, s, 2, a);     \\
            else ck_dw3_wgrad_group_##SUF##VB(gy, Ho, Wo, xp, Wp, s, 1, a);                  \\
            j += NB;                                                                         \\
        }                                                                                    \\
        if (nfull * L < Wo) {                                                                \\
            for (i = 0; i < 10; i++) t[i] = z;                                               \\
            s[0] = Wo - L;                                                                   \\
            ck_dw3_wgrad_group_##SUF##VB(gy, Ho, Wo, xp, Wp, s, 1, t);                       \\
            for (i = 0; i < L; i++) lanes[i] = i < nfull * L - s[0] ? 0 : -1;                \\
            memcpy(&keep, lanes, sizeof keep);                                               \\
            for (i = 0; i < 10; i++) a[i] += (V)((M)t[i] & keep);                            \\
        }                                                                                    \\
        for (i = 0; i < 10; i++) {                                                           \\
            double sum = 0;                                                                  \\
            int l;                                                                           \\
            memcpy(part, &a[i], sizeof part);                                                \\
            for (l = 0; l < L; l++) sum += (double)part[l];                                  \\
            out[i] = sum;                                                                    \\
        }                                                                                    \\
    }

    /* The same convolutions with padding 1 on every side ("same": Ho = H, Wo = W), straight from
       the unpadded planes: the blocks cover the output columns 1 .. W-2 (their loads, columns
       s-1 .. s+L, stay inside the row; W - 2 >= L), columns 0 and W-1 are summed one by one, and
       the rows above and below the plane are skipped.  The sums run in the order of the padded
       kernels (bias, tap 0, ..., tap 8, a tap on padding adding nothing), so both give the same
       bits. */
    #define CK_DW3_DEFINE_SAME(T, IT, SUF, VB, ATTR)                                         \\
    /* input row r finishes output row r - 1, continues r and starts r + 1 */               \\
    ATTR static inline __attribute__((always_inline)) void                                  \\
    ck_dw3_fwd1_group_##SUF##VB(const T* x, Py_ssize_t H, Py_ssize_t W,                      \\
                                const ck_dw3v_##SUF##VB* k, ck_dw3v_##SUF##VB b0, T* y,      \\
                                const Py_ssize_t* s, const int NB) {                         \\
        typedef ck_dw3v_##SUF##VB V;                                                         \\
        V p0[4], p1[4];                                                                      \\
        Py_ssize_t r;                                                                        \\
        int b;                                                                               \\
        for (b = 0; b < NB; b++) { p0[b] = b0; p1[b] = b0; }                                 \\
        for (r = 0; r < H; r++) {                                                            \\
            const T* xr = x + r * W;                                                         \\
            for (b = 0; b < NB; b++) {                                                       \\
                V v0 = CK_DW3_LD(V, xr + s[b] - 1);                                          \\
                V v1 = CK_DW3_LD(V, xr + s[b]);                                              \\
                V v2 = CK_DW3_LD(V, xr + s[b] + 1);                                          \\
                V o = p0[b] + k[6] * v0 + k[7] * v1 + k[8] * v2;                             \\
                p0[b] = p1[b] + k[3] * v0 + k[4] * v1 + k[5] * v2;                           \\
                p1[b] = b0 + k[0] * v0 + k[1] * v1 + k[2] * v2;                              \\
                if (r >= 1) CK_DW3_ST(y + (r - 1) * W + s[b], o);                            \\
            }                                                                                \\
        }                                                                                    \\
        for (b = 0; b < NB; b++) CK_DW3_ST(y + (H - 1) * W + s[b], p0[b]);                   \\
    }                                                                                        \\
    /* y[h, j] = bias + sum_{a,b} w'[a, b] * x[h + a - 1, j + b - 1] (0 outside x) */          \\
    ATTR static void ck_dw3_fwd1_##SUF##VB(const T* x, const T* w, int flip, T bias, T* y,   \\
                                           Py_ssize_t H, Py_ssize_t W) {                     \\
        typedef ck_dw3v_##SUF##VB V;                                                         \\
        enum { L = VB / sizeof(T) };                                                         \\
        V k[9], b0, z = {0};                                                                 \\
        T c[9], e0, e1, f0, f1, o;                                                           \\
        Py_ssize_t j, i, r, nb = (W - 2 + L - 1) / L, s[4];                                  \\
        for (i = 0; i < 9; i++) { c[i] = w[flip ? 8 - i : i]; k[i] = z + c[i]; }             \\
        b0 = z + bias;                                                                       \\
        for (j = 0; j < nb; ) {                                                              \\
            int NB = nb - j >= 4 ? 4 : nb - j >= 2 ? 2 : 1;                                  \\
            for (i = 0; i < NB; i++)    /* the last block ends at W - 1 */                   \\
                s[i] = 1 + (j + i) * L < W - 1 - L ? 1 + (j + i) * L : W - 1 - L;            \\
            if (NB == 4) ck_dw3_fwd1_group_##SUF##VB(x, H, W, k, b0, y, s, 4);               \\
            else if (NB == 2) ck_dw3_fwd1_group_##SUF##VB(x, H, W, k, b0, y, s, 2);          \\
            else ck_dw3_fwd1_group_##SUF##VB(x, H, W, k, b0, y, s, 1);                       \\
            j += NB;                                                                         \\
        }                                                                                    \\
        /* columns 0 (taps b = 1, 2) and W-1 (taps b = 0, 1), rolling down the rows */        \\
        e0 = f0 = e1 = f1 = bias;                                                            \\
        for (r = 0; r < H; r++) {                                                            \\
            const T* xr = x + r * W;                                                         \\
            o = e0 + c[7] * xr[0] + c[8] * xr[1];                                            \\
            e0 = f0 + c[4] * xr[0] + c[5] * xr[1];                                           \\
            f0 = bias + c[1] * xr[0] + c[2] * xr[1];                                         \\
            if (r >= 1) y[(r - 1) * W] = o;                                                  \\
            o = e1 + c[6] * xr[W - 2] + c[7] * xr[W - 1];                                    \\
            e1 = f1 + c[3] * xr[W - 2] + c[4] * xr[W - 1];                                   \\
            f1 = bias + c[0] * xr[W - 2] + c[1] * xr[W - 1];                                 \\
            if (r >= 1) y[(r - 1) * W + W - 1] = o;                                          \\
        }                                                                                    \\
        y[(H - 1) * W] = e0;                                                                 \\
        y[(H - 1) * W + W - 1] = e1;                                                         \\
    }                                                                                        \\
    /* x row r meets grad_y rows r + 1 (taps 0-2), r (taps 3-5) and r - 1 (taps 6-8) */      \\
    ATTR static inline __attribute__((always_inline)) void                                  \\
    ck_dw3_wgrad1_group_##SUF##VB(const T* gy, const T* x, Py_ssize_t H, Py_ssize_t W,       \\
                                  const Py_ssize_t* s, const int NB, ck_dw3v_##SUF##VB* acc) { \\
        typedef ck_dw3v_##SUF##VB V;                                                         \\
        V a0 = acc[0], a1 = acc[1], a2 = acc[2], a3 = acc[3], a4 = acc[4];                   \\
        V a5 = acc[5], a6 = acc[6], a7 = acc[7], a8 = acc[8], a9 = acc[9];                   \\
        Py_ssize_t r;                                                                        \\
        int b;                                                                               \\
        for (r = 0; r < H; r++) {                                                            \\
            const T* xr = x + r * W;                                                         \\
            const T* g = gy + r * W;                                                         \\
            int up = r + 1 < H, down = r >= 1;                                               \\
            for (b = 0; b < NB; b++) {                                                       \\
                V v0 = CK_DW3_LD(V, xr + s[b] - 1);                                          \\
                V v1 = CK_DW3_LD(V, xr + s[b]);                                              \\
                V v2 = CK_DW3_LD(V, xr + s[b] + 1);                                          \\
                V gv;                                                                        \\
                if (up) {                                                                    \\
                    gv = CK_DW3_LD(V, g + W + s[b]);                                         \\
                    a0 += gv * v0; a1 += gv * v1; a2 += gv * v2;                             \\
                }                                                                            \\
                gv = CK_DW3_LD(V, g + s[b]);                                                 \\
                a9 += gv; a3 += gv * v0; a4 += gv * v1; a5 += gv * v2;                       \\
                if (down) {                                                                  \\
                    gv = CK_DW3_LD(V, g - W + s[b]);                                         \\
                    a6 += gv * v0; a7 += gv * v1; a8 += gv * v2;                             \\
                }                                                                            \\
            }                                                                                \\
        }                                                                                    \\
        acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3; acc[4] = a4;                     \\
        acc[5] = a5; acc[6] = a6; acc[7] = a7; acc[8] = a8; acc[9] = a9;                     \\
    }                                                                                        \\
    /* out as ck_dw3_wgrad for padding 1: out[3a + b] = sum_{h,j} gy[h, j] *                   \\
       x[h + a - 1, j + b - 1] (0 outside x), out[9] = sum gy */                              \\
    ATTR static void ck_dw3_wgrad1_##SUF##VB(const T* gy, const T* x, Py_ssize_t H,          \\
                                             Py_ssize_t W, double* out) {                    \\
        typedef ck_dw3v_##SUF##VB V;                                                         \\
        typedef ck_dw3m_##SUF##VB M;                                                         \\
        enum { L = VB / sizeof(T) };                                                         \\
        V a[10], t[10], z = {0};                                                             \\
        M keep;                                                                              \\
        IT lanes[L];                                                                         \\
        T part[L];                                                                           \\
        double e[10], e1 = 0, e4 = 0, e7 = 0, e9 = 0;                                        \\
        Py_ssize_t j, i, r, nfull = (W - 2) / L, s[4];                                       \\
        for (i = 0; i < 10; i++) { a[i] = z; e[i] = 0; }                                     \\
        for (j = 0; j < nfull; ) {                                                           \\
            int NB = nfull - j >= 4 ? 4 : nfull - j >= 2 ? 2 : 1;                            \\
            for (i = 0; i < NB; i++) s[i] = 1 + (j + i) * L;                                 \\
            if (NB == 4) ck_dw3_wgrad1_group_##SUF##VB(gy, x, H, W, s, 4, a);                \\
            else if (NB == 2) ck_dw3_wgrad1_group_##SUF##VB(gy, x, H, W, s, 2, a);           \\
            else ck_dw3_wgrad1_group_##SUF##VB(gy, x, H, W, s, 1, a);                        \\
            j += NB;                                                                         \\
        }                                                                                    \\
        if (nfull * L < W - 2) {                                                             \\
            for (i = 0; i < 10; i++) t[i] = z;                                               \\
            s[0] = W - 1 - L;                                                                \\
            ck_dw3_wgrad1_group_##SUF##VB(gy, x, H, W, s, 1, t);                             \\
            for (i = 0; i < L; i++) lanes[i] = i < 1 + nfull * L - s[0] ? 0 : -1;            \\
            memcpy(&keep, lanes, sizeof keep);                                               \\
            for (i = 0; i < 10; i++) a[i] += (V)((M)t[i] & keep);                            \\
        }                                                                                    \\
        /* grad_y columns 0 (taps b = 1, 2) and W-1 (taps b = 0, 1), in double, one sum per  \\
           (tap, column) so that no sum waits on another */                                  \\
        for (r = 0; r < H; r++) {                                                            \\
            const T* xr = x + r * W;                                                         \\
            const T* g = gy + r * W;                                                         \\
            double xa = xr[0], xb = xr[1], xc = xr[W - 2], xd = xr[W - 1], g0, g1;           \\
            g0 = g[0]; g1 = g[W - 1];                                                        \\
            e[9] += g0; e9 += g1;                                                            \\
            e[3] += g1 * xc; e[4] += g0 * xa; e4 += g1 * xd; e[5] += g0 * xb;                \\
            if (r + 1 < H) {                                                                 \\
                g0 = g[W]; g1 = g[2 * W - 1];                                                \\
                e[0] += g1 * xc; e[1] += g0 * xa; e1 += g1 * xd; e[2] += g0 * xb;            \\
            }                                                                                \\
            if (r >= 1) {                                                                    \\
                g0 = g[-W]; g1 = g[-1];                                                      \\
                e[6] += g1 * xc; e[7] += g0 * xa; e7 += g1 * xd; e[8] += g0 * xb;            \\
            }                                                                                \\
        }                                                                                    \\
        e[1] += e1; e[4] += e4; e[7] += e7; e[9] += e9;                                      \\
        for (i = 0; i < 10; i++) {                                                           \\
            double sum = 0;                                                                  \\
            int l;                                                                           \\
            memcpy(part, &a[i], sizeof part);                                                \\
            for (l = 0; l < L; l++) sum += (double)part[l];                                  \\
            out[i] = sum + e[i];                                                             \\
        }                                                                                    \\
    }

    #if defined(__x86_64__) || defined(__i386__)
    #define CK_DW3_X86 1
    #endif

    CK_DW3_DEFINE(float, int, f, 16, )
    CK_DW3_DEFINE_SAME(float, int, f, 16, )
    CK_DW3_DEFINE(double, long long, d, 16, )
    CK_DW3_DEFINE_SAME(double, long long, d, 16, )
    #ifdef CK_DW3_X86
    CK_DW3_DEFINE(float, int, f, 32, __attribute__((target("avx2,fma"))))
    CK_DW3_DEFINE_SAME(float, int, f, 32, __attribute__((target("avx2,fma"))))
    CK_DW3_DEFINE(double, long long, d, 32, __attribute__((target("avx2,fma"))))
    CK_DW3_DEFINE_SAME(double, long long, d, 32, __attribute__((target("avx2,fma"))))
    CK_DW3_DEFINE(float, int, f, 64, __attribute__((target("avx512f,avx2,fma"))))
    CK_DW3_DEFINE_SAME(float, int, f, 64, __attribute__((target("avx512f,avx2,fma"))))
    CK_DW3_DEFINE(double, long long, d, 64, __attribute__((target("avx512f,avx2,fma"))))
    CK_DW3_DEFINE_SAME(double, long long, d, 64, __attribute__((target("avx512f,avx2,fma"))))
    #endif

    static int ck_dw3_cap = 3;      /* the widest level allowed; tests lower it to run the others */

    static int ck_dw3_isa(void) {
        static int known = 0;
        if (!known) {
    #ifdef CK_DW3_X86
            __builtin_cpu_init();
            known = __builtin_cpu_supports("avx512f") ? 3
                    : (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 2 : 1;
            {   /* CONVKIT_DISABLE_AVX512=1: no AVX-512 anywhere in the cpu backend */
                const char *off = getenv("CONVKIT_DISABLE_AVX512");
                if (known == 3 && off != NULL && off[0] != '\0' && off[0] != '0')
                    known = 2;
            }
    #else
            known = 1;
    #endif
        }
        return known < ck_dw3_cap ? known : ck_dw3_cap;
    }
    #else
    static int ck_dw3_cap = 0;
    static int ck_dw3_isa(void) { return 0; }
    #endif

    /* the widest level (<= the CPU's, <= the cap) whose vectors of itemsize-byte elements fit in
       a row of n; 0: none (the general depthwise kernels run) */
    static int ck_dw3_level(int itemsize, Py_ssize_t n) {
        int lvl = ck_dw3_isa();
        while (lvl > 0 && (Py_ssize_t)((8 << lvl) / itemsize) > n) lvl--;
        return lvl;
    }
    static int ck_dw3_set_cap(int cap) { int old = ck_dw3_cap; ck_dw3_cap = cap; return old; }

    #define CK_DW3_DISPATCH(T, SUF)                                                          \\
    static void ck_dw3_fwd_##SUF(int lvl, const T* xp, Py_ssize_t Wp, const T* w, int flip,  \\
                                 T bias, T* y, Py_ssize_t Ho, Py_ssize_t Wo) {               \\
        CK_DW3_SWITCH(lvl, ck_dw3_fwd_##SUF, (xp, Wp, w, flip, bias, y, Ho, Wo))             \\
    }                                                                                        \\
    static void ck_dw3_wgrad_##SUF(int lvl, const T* gy, Py_ssize_t Ho, Py_ssize_t Wo,       \\
                                   const T* xp, Py_ssize_t Wp, double* out) {                \\
        CK_DW3_SWITCH(lvl, ck_dw3_wgrad_##SUF, (gy, Ho, Wo, xp, Wp, out))                    \\
    }                                                                                        \\
    static void ck_dw3_fwd1_##SUF(int lvl, const T* x, const T* w, int flip, T bias, T* y,   \\
                                  Py_ssize_t H, Py_ssize_t W) {                              \\
        CK_DW3_SWITCH(lvl, ck_dw3_fwd1_##SUF, (x, w, flip, bias, y, H, W))                   \\
    }                                                                                        \\
    static void ck_dw3_wgrad1_##SUF(int lvl, const T* gy, const T* x, Py_ssize_t H,          \\
                                    Py_ssize_t W, double* out) {                             \\
        CK_DW3_SWITCH(lvl, ck_dw3_wgrad1_##SUF, (gy, x, H, W, out))                          \\
    }
    #if defined(CK_DW3_X86)
    #define CK_DW3_SWITCH(lvl, f, args)                                                      \\
        if (lvl >= 3) f##64 args; else if (lvl == 2) f##32 args; else f##16 args;
    #elif defined(CK_DW3)
    #define CK_DW3_SWITCH(lvl, f, args) f##16 args;
    #else
    #define CK_DW3_SWITCH(lvl, f, args)
    #endif
    CK_DW3_DISPATCH(float, f)
    CK_DW3_DISPATCH(double, d)
    """
    int ck_dw3_level(int itemsize, Py_ssize_t n) noexcept nogil
    int ck_dw3_set_cap(int cap) noexcept nogil
    void ck_dw3_fwd_f(int lvl, const float* xp, Py_ssize_t Wp, const float* w, int flip,
                      float bias, float* y, Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil
    void ck_dw3_fwd_d(int lvl, const double* xp, Py_ssize_t Wp, const double* w, int flip,
                      double bias, double* y, Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil
    void ck_dw3_wgrad_f(int lvl, const float* gy, Py_ssize_t Ho, Py_ssize_t Wo,
                        const float* xp, Py_ssize_t Wp, double* out) noexcept nogil
    void ck_dw3_wgrad_d(int lvl, const double* gy, Py_ssize_t Ho, Py_ssize_t Wo,
                        const double* xp, Py_ssize_t Wp, double* out) noexcept nogil
    void ck_dw3_fwd1_f(int lvl, const float* x, const float* w, int flip, float bias,
                       float* y, Py_ssize_t H, Py_ssize_t W) noexcept nogil
    void ck_dw3_fwd1_d(int lvl, const double* x, const double* w, int flip, double bias,
                       double* y, Py_ssize_t H, Py_ssize_t W) noexcept nogil
    void ck_dw3_wgrad1_f(int lvl, const float* gy, const float* x, Py_ssize_t H, Py_ssize_t W,
                         double* out) noexcept nogil
    void ck_dw3_wgrad1_d(int lvl, const double* gy, const double* x, Py_ssize_t H,
                         Py_ssize_t W, double* out) noexcept nogil


def depthwise3x3_level(Py_ssize_t itemsize, Py_ssize_t n):
    """The vector level of the 3x3 stride-1 depthwise kernels for rows of n elements of
    itemsize bytes: 3 AVX-512, 2 AVX2, 1 16-byte vectors, 0 none (the rows are too short, or
    the compiler has no vector extensions): the general depthwise kernels run."""
    return ck_dw3_level(<int>itemsize, n)


def depthwise3x3_cap(int cap):
    """Allow levels up to cap only (tests run the narrower paths with it); returns the old cap."""
    return ck_dw3_set_cap(cap)


cdef inline void _dw3_fwd(int lvl, const floating* xp, Py_ssize_t Wp, const floating* w,
                          int flip, floating bias, floating* y, Py_ssize_t Ho,
                          Py_ssize_t Wo) noexcept nogil:
    if floating is float:
        ck_dw3_fwd_f(lvl, xp, Wp, w, flip, bias, y, Ho, Wo)
    else:
        ck_dw3_fwd_d(lvl, xp, Wp, w, flip, bias, y, Ho, Wo)


cdef inline void _dw3_wgrad(int lvl, const floating* gy, Py_ssize_t Ho, Py_ssize_t Wo,
                            const floating* xp, Py_ssize_t Wp, double* out) noexcept nogil:
    if floating is float:
        ck_dw3_wgrad_f(lvl, gy, Ho, Wo, xp, Wp, out)
    else:
        ck_dw3_wgrad_d(lvl, gy, Ho, Wo, xp, Wp, out)


cdef inline void _dw3_fwd1(int lvl, const floating* x, const floating* w, int flip,
                           floating bias, floating* y, Py_ssize_t H, Py_ssize_t W) noexcept nogil:
    if floating is float:
        ck_dw3_fwd1_f(lvl, x, w, flip, bias, y, H, W)
    else:
        ck_dw3_fwd1_d(lvl, x, w, flip, bias, y, H, W)


cdef inline void _dw3_wgrad1(int lvl, const floating* gy, const floating* x, Py_ssize_t H,
                             Py_ssize_t W, double* out) noexcept nogil:
    if floating is float:
        ck_dw3_wgrad1_f(lvl, gy, x, H, W, out)
    else:
        ck_dw3_wgrad1_d(lvl, gy, x, H, W, out)


# ---------------------------------------------------------------------------- drivers
def conv2d_forward_gemm(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                        const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y,
                        floating[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t rows,
                        Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                        Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t groups, bint pointwise,
                        int n_threads, const float[:, ::1] apk):
    """y = conv(x, w) + bias by im2col + GEMM (IN: x, w, bias; OUT: y; scratch: ws).
    apk: group g's weights prepacked for the own float32 GEMM in row g (no rows: none).

    Tasks are (image, block of ``rows`` output rows), independent of each other: one parallel
    region, no barrier inside, dynamic scheduling (a thread slowed by other load takes fewer
    tasks; the results do not depend on who ran what).  A task writes its columns into its
    thread's slice of ws (ws_per_thread elements: the columns, then W + sw for _im2col_taps),
    then one GEMM per group writes y.
    pointwise (1x1 kernel, stride 1, no padding): the GEMMs read x in place; ws is unused.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], Cg = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Ho = y.shape[2], Wo = y.shape[3], HoWo = Ho * Wo
    cdef Py_ssize_t G = groups, Fg = F // groups, KK = KH * KW, CgKK = Cg * KK
    cdef Py_ssize_t nrb = (Ho + rows - 1) // rows
    cdef Py_ssize_t t, n, rb, h0, hr, L, ld, c, g, kh
    cdef const floating* cols
    cdef floating* buf
    cdef floating* yp
    with nogil:
        for t in prange(N * nrb, schedule="dynamic", num_threads=n_threads):
            n = t // nrb
            rb = t - n * nrb
            h0 = rb * rows
            hr = _min(rows, Ho - h0)
            L = hr * Wo
            if pointwise:
                cols = &x[n, 0, 0, 0] + h0 * Wo
                ld = H * W
            else:
                buf = &ws[0] + threadid() * ws_per_thread
                for c in range(C):
                    for kh in range(KH):
                        _im2col_taps(&x[n, c, 0, 0], H, W, kh, KW, sh, sw, pt, pl, dh, dw,
                                     Wo, h0, hr, buf + (c * KK + kh * KW) * L, L,
                                     buf + C * KK * L)
                cols = buf
                ld = L
            for g in range(G):
                yp = &y[n, g * Fg, 0, 0] + h0 * Wo
                gemm_pk(False, False, Fg, L, CgKK, &w[g * Fg, 0, 0, 0], CgKK,
                        &apk[g, 0] if apk.shape[0] > g else <const float*>NULL,
                        cols + g * CgKK * ld, ld, <floating>0, yp, HoWo,
                        &bias[g * Fg] if has_bias else <const floating*>NULL)
    return y


# ---------------------------------------------------------------------------- strided, polyphase
def conv2d_forward_phases(const float[:, :, :, ::1] x, const float[::1] bias, bint has_bias,
                          float[:, :, :, ::1] y, float[::1] ws, Py_ssize_t ws_per_thread,
                          Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                          Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                          Py_ssize_t rows, int n_threads, const float[:, ::1] apk,
                          const Py_ssize_t[::1] boff):
    """groups 1, float32 on the own GEMM (apk: the weights prepacked): y = conv(x, w) + bias
    with no im2col.  The zero-padded image P (P[r, q] = x[r - pt, q - pl]) is split into its
    sh x sw phases Q[ph, pw][i, j] = P[i*sh + ph, j*sw + pw], each Wq = Wo + ((KW-1)*dw)//sw
    wide: tap (c, kh, kw) reads, for output row ho, the Wo contiguous values of phase
    (kh*dh % sh, kw*dw % sw) from row ho + kh*dh//sh, column kw*dw//sw -- so each output row is
    one GEMM (F x Wo) whose B rows sit at fixed offsets (boff, CKK of them) in the phase planes,
    written straight into y.  Each input value is copied once (into its phase), not KH*KW/(sh*sw)
    times as in im2col.  Tasks: (image, block of ``rows`` output rows), each building the phase
    rows it reads: Rq = rows + (KH-1)*dh//sh of them per phase, so ws_per_thread >=
    C*sh*sw*Rq*Wq + (KW-1)*dw//sw (slack read past the last row).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = y.shape[1], Ho = y.shape[2], Wo = y.shape[3], HoWo = Ho * Wo
    cdef Py_ssize_t CKK = C * KH * KW
    cdef Py_ssize_t Wq = Wo + ((KW - 1) * dw) // sw, Rq = rows + ((KH - 1) * dh) // sh
    cdef Py_ssize_t plane = Rq * Wq, nrb = (Ho + rows - 1) // rows
    cdef Py_ssize_t t, n, h0, hr, ho
    cdef Py_ssize_t failed = 0
    cdef float* Q
    with nogil:
        for t in prange(N * nrb, schedule="dynamic", num_threads=n_threads):
            n = t // nrb
            h0 = (t - n * nrb) * rows
            hr = _min(rows, Ho - h0)
            Q = &ws[0] + threadid() * ws_per_thread
            ck_phases_f(&x[n, 0, 0, 0], C, H, W, sh, sw, pt, pl, h0, Rq, Wq, plane, Q)
            memset(Q + C * sh * sw * plane, 0, (((KW - 1) * dw) // sw) * sizeof(float))
            for ho in range(h0, h0 + hr):
                if not ck_sgemm_apacked_rows(F, Wo, CKK, &apk[0, 0], Q + (ho - h0) * Wq,
                                             &boff[0], 0, &y[n, 0, ho, 0], HoWo,
                                             &bias[0] if has_bias else <const float*>NULL):
                    failed += 1     # its packing buffers could not be allocated
    if failed:
        raise MemoryError("conv2d_forward: out of memory for a thread's GEMM packing buffers")
    return y


def conv2d_backward_weight_dot(const float[:, :, :, ::1] gy, const float[:, :, :, ::1] x,
                               float[:, ::1] gw, float[::1] gb, bint has_bias, float[::1] ws,
                               Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                               Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                               Py_ssize_t rows, Py_ssize_t kr, Py_ssize_t fchunk,
                               Py_ssize_t groups_n, const Py_ssize_t[::1] boff, int n_threads,
                               Py_ssize_t groups=1):
    """float32 with AVX-512F: gw (F x C/groups*KH*KW, OUT) = grad_weight and, when has_bias,
    gb (OUT) = grad_bias, as dot products along the output positions (_sdot.h): no im2col and
    no packing.  The taps are read in the phase planes of conv2d_forward_phases (built per
    image and block of ``rows`` output rows; boff: _phase_offsets(..., rows, Wo)); grad_y is
    copied ``kr`` output rows at a time into an aligned buffer (its bias sums taken on the way)
    and each such pass runs the 8 x 3 tiles over every tap.

    Tasks: (conv group) x (``fchunk`` of its filters, a multiple of 8) x (one of ``groups_n``
    groups of images), each summing its images in order into its own 16-lane partial sums (and
    building the phase planes of its conv group's channels only); then each value of gw is the
    sum over image groups in order, lanes in order.  The grouping of the images is set by the
    caller from the batch alone, so every value is summed in the same order whatever the
    thread count.  ws: weight_dot_floats(...) = (per thread, per task) floats, n_threads of
    the first then one of the second per task.
    """
    cdef Py_ssize_t N = x.shape[0], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = gy.shape[1], Ho = gy.shape[2], Wo = gy.shape[3], HoWo = Ho * Wo
    cdef Py_ssize_t CG = groups, C = x.shape[1] // groups, Fg = F // groups
    cdef Py_ssize_t CKK = C * KH * KW, ntf = (Fg + fchunk - 1) // fchunk
    cdef Py_ssize_t G = groups_n, per_group = (N + G - 1) // G
    cdef Py_ssize_t Wq = Wo + ((KW - 1) * dw) // sw, Rx = ((KH - 1) * dh) // sh
    cdef Py_ssize_t plane = (rows + Rx) * Wq, planes = C * sh * sw * plane
    cdef Py_ssize_t ds = (Wo + 15) // 16 * 16, cols = CKK + (1 if has_bias else 0)
    cdef Py_ssize_t t, g, n, n1, f0, fc, h0, hr, r0, rr, i, j, l, e, pfr, cg, fi
    cdef Py_ssize_t per_thread, per_task
    cdef const float* pf
    cdef float* Q
    cdef float* part
    cdef float* parts
    cdef float* A
    cdef const float* p
    cdef double s
    per_thread, per_task = weight_dot_floats(C, KH, KW, sh, sw, dh, dw, Wo, rows, kr, fchunk)
    if ws.shape[0] < n_threads * per_thread + CG * ntf * G * per_task + 16:
        raise ValueError("conv2d_backward_weight_dot: workspace too small")
    parts = _align64(&ws[0] + n_threads * per_thread)
    with nogil:
        for t in prange(CG * ntf * G, schedule="dynamic", num_threads=n_threads):
            cg = t // (ntf * G)                     # the conv group
            fi = (t // G) % ntf                     # its filter chunk
            f0 = cg * Fg + fi * fchunk
            fc = _min(fchunk, Fg - fi * fchunk)
            g = t % G
            Q = _align64(&ws[0] + threadid() * per_thread)
            A = _align64(Q + planes)
            part = parts + t * per_task         # (fc*CKK + fc) * 16 floats, aligned
            memset(part, 0, (fc * CKK + fc) * 16 * sizeof(float))
            n1 = _min(N, (g + 1) * per_group)
            for n in range(g * per_group, n1):
                h0 = 0
                while h0 < Ho:
                    hr = _min(rows, Ho - h0)
                    ck_phases_f(&x[n, cg * C, 0, 0], C, H, W, sh, sw, pt, pl, h0, hr + Rx, Wq,
                                plane, Q)
                    r0 = h0
                    while r0 < h0 + hr:
                        rr = _min(kr, h0 + hr - r0)
                        ck_sdot_copy(fc, rr, Wo, &gy[n, f0, r0, 0], HoWo, Wo, A, ds,
                                     part + fc * CKK * 16 if has_bias else <float*>NULL)
                        # the next pass's grad_y rows: this image's next ones, else the
                        # next image's first (prefetched while this pass computes)
                        if r0 + rr < Ho:
                            pf = &gy[n, f0, r0 + rr, 0]
                            pfr = _min(kr, Ho - r0 - rr)
                        elif n + 1 < n1:
                            pf = &gy[n + 1, f0, 0, 0]
                            pfr = _min(kr, Ho)
                        else:
                            pf = NULL
                            pfr = 0
                        ck_sdot_accum(fc, CKK, rr, Wo, A, rr * ds, ds, Q + (r0 - h0) * Wq,
                                      &boff[0], Wq, part, pf, fc, pfr * Wo, HoWo)
                        r0 = r0 + rr
                    h0 = h0 + hr
        # the sums over groups and lanes, one filter per task
        for i in prange(F, schedule="static", num_threads=n_threads):
            fi = (i % Fg) // fchunk                 # filter i: conv group i // Fg, this chunk
            t = ((i // Fg) * ntf + fi) * G
            fc = _min(fchunk, Fg - fi * fchunk)
            l = (i % Fg) % fchunk                   # its row in the chunk
            for j in range(cols):
                s = 0
                for g in range(G):
                    # filter i's row in its chunk's partials: taps first, then the biases
                    p = (parts + (t + g) * per_task
                         + (l * CKK + j if j < CKK else fc * CKK + l) * 16)
                    for e in range(16):
                        s = s + p[e]
                if j < CKK:
                    gw[i, j] = <float>s
                else:
                    gb[i] = <float>s
    return gw


def weight_dot_floats(Py_ssize_t C, Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                      Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t Wo, Py_ssize_t rows,
                      Py_ssize_t kr, Py_ssize_t fchunk):
    """Workspace floats of conv2d_backward_weight_dot: (per thread: the phase planes and the
    aligned grad_y block; per task: the 16-lane partial sums of fchunk filters' taps and
    biases), with room to align each to 64 bytes."""
    cdef Py_ssize_t Wq = Wo + ((KW - 1) * dw) // sw, Rx = ((KH - 1) * dh) // sh
    return (C * sh * sw * (rows + Rx) * Wq + fchunk * kr * ((Wo + 15) // 16 * 16) + 2 * 16,
            (fchunk * C * KH * KW + fchunk) * 16)


# ---------------------------------------------------------------------------- stride 1, wide rows
def conv2d_forward_wide(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                        const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y,
                        floating[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t pt, Py_ssize_t pl,
                        Py_ssize_t dh, Py_ssize_t dw, int n_threads, const float[:, ::1] apk,
                        const Py_ssize_t[::1] boff):
    """Stride 1, groups 1: y = conv(x, w) + bias with output rows computed Wp = Wo + (KW-1)*dw
    wide, one image per task.

    An image is zero-padded once into xp (C, Hp, Wp); then the column of tap (c, kh, kw) for
    all output positions is ONE contiguous run of xp, Ho*Wp long, from c*Hp*Wp + kh*dh*Wp +
    kw*dw: a memcpy per tap instead of a copy per tap and output row (small maps, lenet_c1's
    28-wide rows: the per-row copies were half of the forward).  The GEMM computes the Wp - Wo
    extra columns of each row too (they read past the row's end into the next: discarded), then
    the Wo real ones are copied into y.  ws_per_thread >= C*Hp*Wp + (KW-1)*dw (xp and its
    slack) + C*KH*KW*Ho*Wp (columns) + F*Ho*Wp (the wide result).
    With the own float32 GEMM (apk given) the columns are not even copied: the GEMM reads row
    (c, kh, kw) of B at xp + boff[(c*KH + kh)*KW + kw] (boff: those CKK offsets).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Ho = y.shape[2], Wo = y.shape[3], KK = KH * KW, CKK = C * KK
    cdef Py_ssize_t Hp = Ho + (KH - 1) * dh, Wp = Wo + (KW - 1) * dw, HpWp = Hp * Wp
    cdef Py_ssize_t Lw = Ho * Wp, slack = (KW - 1) * dw
    cdef Py_ssize_t n, c, kh, kw, f, h
    cdef floating* xp
    cdef floating* cols
    cdef floating* out
    with nogil:
        for n in prange(N, schedule="dynamic", num_threads=n_threads):
            xp = &ws[0] + threadid() * ws_per_thread
            cols = xp + C * HpWp + slack
            out = cols + CKK * Lw
            _batch_pad(&x[0, 0, 0, 0], C * H * W, n, 1, 0, C, H, W, pt, pl, Hp, Wp, xp)
            memset(xp + C * HpWp, 0, slack * sizeof(floating))
            if floating is float:
                if apk.shape[0] > 0 and ck_sgemm_apacked_rows(
                        F, Lw, CKK, &apk[0, 0], xp, &boff[0], 0, out, Lw,
                        &bias[0] if has_bias else <const float*>NULL):
                    for f in range(F):
                        for h in range(Ho):
                            _row_copy(&y[n, f, h, 0], out + f * Lw + h * Wp, Wo)
                    continue
            for c in range(C):
                for kh in range(KH):
                    for kw in range(KW):
                        memcpy(cols + ((c * KH + kh) * KW + kw) * Lw,
                               xp + c * HpWp + kh * dh * Wp + kw * dw, Lw * sizeof(floating))
            gemm_pk(False, False, F, Lw, CKK, &w[0, 0, 0, 0], CKK,
                    &apk[0, 0] if apk.shape[0] > 0 else <const float*>NULL, cols, Lw,
                    <floating>0, out, Lw, &bias[0] if has_bias else <const floating*>NULL)
            for f in range(F):
                for h in range(Ho):
                    _row_copy(&y[n, f, h, 0], out + f * Lw + h * Wp, Wo)
    return y


# ---------------------------------------------------------------------------- Winograd F(2x2, 3x3)
# 3x3 stride-1 forwards as 16 GEMMs of (F x C) @ (C x tiles) instead of one (F x 9C) @ (9C x
# outputs): 2.25x fewer multiplications (Lavin & Gray, "Fast Algorithms for Convolutional Neural
# Networks", 2016).  With 2x2 output tiles every transform coefficient is 0, +-1 or 1/2, so the
# rounding error stays that of a few extra additions.
#   V = B^T d B (4x4 input tile d), U = G g G^T (the wrapper computes it), Y = A^T (U . V) A
#   B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]],  A^T = [[1,1,1,0],[0,1,-1,-1]]
cdef inline void _wino_filter(const floating* g, floating* u, Py_ssize_t us) noexcept nogil:
    """u[e * us] = (G g G^T)[e // 4, e % 4] for one 3x3 filter g (row-major)."""
    cdef floating t[12]
    cdef floating h = 0.5
    cdef Py_ssize_t k
    for k in range(3):                                  # t (4x3) = G g
        t[k] = g[k]
        t[3 + k] = h * (g[k] + g[3 + k] + g[6 + k])
        t[6 + k] = h * (g[k] - g[3 + k] + g[6 + k])
        t[9 + k] = g[6 + k]
    for k in range(4):                                  # row k of t G^T
        u[(k * 4) * us] = t[k * 3]
        u[(k * 4 + 1) * us] = h * (t[k * 3] + t[k * 3 + 1] + t[k * 3 + 2])
        u[(k * 4 + 2) * us] = h * (t[k * 3] - t[k * 3 + 1] + t[k * 3 + 2])
        u[(k * 4 + 3) * us] = t[k * 3 + 2]


def winograd_filters(const floating[:, :, :, ::1] w, floating[:, :, ::1] U, int n_threads,
                     bint transpose_flip=False):
    """U[(a*4 + b), f, c] = (G w[f, c] G^T)[a, b] (OUT: U (16, F, C)) for 3x3 filters w,
    G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]].
    transpose_flip: the filters of grad_x instead, w'[f, c] = w[c, f] turned by 180 degrees
    (U (16, C, F) for w (F, C, 3, 3)), without making w' first.

    A task transforms 16 channels of one filter into a small buffer and writes 16 runs of 16:
    one filter at a time would store its 16 values F*C elements apart, all in one cache set."""
    cdef Py_ssize_t F = U.shape[1], C = U.shape[2]
    cdef Py_ssize_t nb = (C + 15) // 16
    cdef Py_ssize_t it
    with nogil:
        for it in prange(F * nb, schedule="static", num_threads=n_threads):
            _wino_filter_block(w, U, it // nb, (it % nb) * 16, transpose_flip)


cdef void _wino_filter_block(const floating[:, :, :, ::1] w, floating[:, :, ::1] U, Py_ssize_t f,
                             Py_ssize_t c0, bint transpose_flip) noexcept nogil:
    """Channels c0 .. c0+15 (or to C) of filter f into U, through a buffer on this thread's stack."""
    cdef floating buf[256]
    cdef floating g[9]
    cdef Py_ssize_t c1 = _min(c0 + 16, U.shape[2])
    cdef Py_ssize_t c, e, i
    cdef const floating* src
    if floating is float:       # 16 filters per step, stored straight into U (_wino.h)
        if transpose_flip:
            if ck_wino_filters_f(&w[c0, f, 0, 0], w.shape[1] * 9, c1 - c0, 1, &U[0, f, c0],
                                 U.shape[1] * U.shape[2]):
                return
        elif ck_wino_filters_f(&w[f, c0, 0, 0], 9, c1 - c0, 0, &U[0, f, c0],
                               U.shape[1] * U.shape[2]):
            return
    for c in range(c0, c1):
        if transpose_flip:
            src = &w[c, f, 0, 0]
            for i in range(9):          # flipping both axes of a 3x3 reverses its 9 values
                g[i] = src[8 - i]
            _wino_filter(g, &buf[c - c0], 16)
        else:
            _wino_filter(&w[f, c, 0, 0], &buf[c - c0], 16)
    for e in range(16):
        for c in range(c0, c1):
            U[e, f, c] = buf[e * 16 + c - c0]


cdef inline void _wino_input_row(const floating* x, Py_ssize_t H, Py_ssize_t W,
                                 Py_ssize_t r0, Py_ssize_t pl, Py_ssize_t tw, floating* v,
                                 Py_ssize_t vs, floating* scratch) noexcept nogil:
    """One row of tiles: v[e * vs + j] = (B^T d_j B)[e // 4, e % 4] for the tiles
    d_j = x[r0:r0+4, 2j-pl : 2j-pl+4] (0 outside x), j < tw.  scratch: 8 * (2*tw + 2).

    Row-wise so the loops run over whole rows (vectorisable): first B^T down the 4 input rows,
    then B across each tile's 4 columns."""
    cdef Py_ssize_t Wb = 2 * tw + 2, k, col, lo, up, j
    cdef floating* R = scratch              # 4 zero-padded input rows, columns -pl .. Wb-1-pl
    if floating is float:                   # the same additions, 16 tiles at a time (_wino.h)
        if ck_wino_input_row_f(x, H, W, r0, pl, tw, v, vs, scratch):
            return
    cdef floating* T = scratch + 4 * Wb     # B^T applied down the rows
    cdef floating* t
    lo = pl if pl > 0 else 0
    up = _min(Wb, pl + W)
    for k in range(4):
        if r0 + k < 0 or r0 + k >= H or lo >= up:
            memset(R + k * Wb, 0, Wb * sizeof(floating))
            continue
        if lo > 0:
            memset(R + k * Wb, 0, lo * sizeof(floating))
        memcpy(R + k * Wb + lo, x + (r0 + k) * W + lo - pl, (up - lo) * sizeof(floating))
        if up < Wb:
            memset(R + k * Wb + up, 0, (Wb - up) * sizeof(floating))
    for col in range(Wb):
        T[col] = R[col] - R[2 * Wb + col]
        T[Wb + col] = R[Wb + col] + R[2 * Wb + col]
        T[2 * Wb + col] = R[2 * Wb + col] - R[Wb + col]
        T[3 * Wb + col] = R[Wb + col] - R[3 * Wb + col]
    for k in range(4):
        t = T + k * Wb
        for j in range(tw):
            v[(k * 4) * vs + j] = t[2 * j] - t[2 * j + 2]
            v[(k * 4 + 1) * vs + j] = t[2 * j + 1] + t[2 * j + 2]
            v[(k * 4 + 2) * vs + j] = t[2 * j + 2] - t[2 * j + 1]
            v[(k * 4 + 3) * vs + j] = t[2 * j + 1] - t[2 * j + 3]


cdef inline void _wino_output_row(const floating* m, Py_ssize_t ms, Py_ssize_t tw,
                                  floating bias, floating* y, Py_ssize_t Wo,
                                  bint two_rows) noexcept nogil:
    """One row of tiles: y[r, 2j + q] = (A^T m_j A)[r, q] + bias (m_j element e at
    m[e * ms + j]); writes rows 0 and (if two_rows) 1 of y, Wo columns."""
    cdef Py_ssize_t j, jf = Wo // 2
    cdef floating s0, s1, s2, s3, s4, s5, s6, s7
    if floating is float:                   # the same additions, 16 tiles at a time (_wino.h)
        if ck_wino_output_row_f(m, ms, tw, bias, y, Wo, two_rows):
            return
    for j in range(jf):
        s0 = m[j] + m[4 * ms + j] + m[8 * ms + j]
        s1 = m[ms + j] + m[5 * ms + j] + m[9 * ms + j]
        s2 = m[2 * ms + j] + m[6 * ms + j] + m[10 * ms + j]
        s3 = m[3 * ms + j] + m[7 * ms + j] + m[11 * ms + j]
        y[2 * j] = s0 + s1 + s2 + bias
        y[2 * j + 1] = s1 - s2 - s3 + bias
    if jf < tw:     # odd Wo: the last tile has one column
        j = jf
        y[2 * j] = (m[j] + m[4 * ms + j] + m[8 * ms + j]) + (m[ms + j] + m[5 * ms + j]
                    + m[9 * ms + j]) + (m[2 * ms + j] + m[6 * ms + j] + m[10 * ms + j]) + bias
    if not two_rows:
        return
    y = y + Wo
    for j in range(jf):
        s4 = m[4 * ms + j] - m[8 * ms + j] - m[12 * ms + j]
        s5 = m[5 * ms + j] - m[9 * ms + j] - m[13 * ms + j]
        s6 = m[6 * ms + j] - m[10 * ms + j] - m[14 * ms + j]
        s7 = m[7 * ms + j] - m[11 * ms + j] - m[15 * ms + j]
        y[2 * j] = s4 + s5 + s6 + bias
        y[2 * j + 1] = s5 - s6 - s7 + bias
    if jf < tw:
        j = jf
        y[2 * j] = (m[4 * ms + j] - m[8 * ms + j] - m[12 * ms + j]) + (m[5 * ms + j]
                    - m[9 * ms + j] - m[13 * ms + j]) + (m[6 * ms + j] - m[10 * ms + j]
                    - m[14 * ms + j]) + bias


cdef void _wino_input_rows(const floating* x, Py_ssize_t img_stride, Py_ssize_t H,
                           Py_ssize_t W, Py_ssize_t th, Py_ssize_t g0, Py_ssize_t nt,
                           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t tw, floating* v,
                           Py_ssize_t vs, floating* scratch) noexcept nogil:
    """_wino_input_row for the batch's tile rows g0 .. g0+nt-1 of one channel (x: image 0's
    plane of that channel; rows are numbered image after image, th per image)."""
    cdef Py_ssize_t k, n, i
    for k in range(nt):
        n = (g0 + k) // th
        i = g0 + k - n * th
        _wino_input_row(x + n * img_stride, H, W, 2 * i - pt, pl, tw, v + k * tw, vs, scratch)


cdef void _wino_output_rows(const floating* m, Py_ssize_t ms, Py_ssize_t th, Py_ssize_t g0,
                            Py_ssize_t nt, Py_ssize_t tw, floating bias, floating* y,
                            Py_ssize_t img_stride, Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil:
    """_wino_output_row for tile rows g0 .. g0+nt-1 of one filter (y: image 0's plane)."""
    cdef Py_ssize_t k, n, i
    for k in range(nt):
        n = (g0 + k) // th
        i = g0 + k - n * th
        _wino_output_row(m + k * tw, ms, tw, bias, y + n * img_stride + 2 * i * Wo, Wo,
                         2 * i + 1 < Ho)


def conv2d_forward_winograd(const floating[:, :, :, ::1] x, const floating[:, :, ::1] U,
                            const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y,
                            floating[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t trows,
                            Py_ssize_t pt, Py_ssize_t pl, int n_threads,
                            const float[:, ::1] apk):
    """3x3, stride 1, dilation 1, groups 1: y = conv(x, w) + bias by Winograd F(2x2, 3x3).
    apk: U[e] prepacked for the own float32 GEMM in row e (no rows: none).

    U (16, F, C): the transformed filters G w G^T.  The batch's rows of 2x2 output tiles
    (N * ceil(Ho/2) of them, numbered image after image) go in blocks of ``trows`` -- a block
    may span images, so small images still make wide GEMMs.  Blocks are independent tasks
    (dynamic schedule, no barrier).  A task's slice of ws holds V (16, C, tiles), M (16, F,
    tiles) and the row scratch: ws_per_thread >= 16*(C + F)*trows*tw + 8*(2*tw + 2).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = U.shape[1], Ho = y.shape[2], Wo = y.shape[3]
    cdef Py_ssize_t th = (Ho + 1) // 2, tw = (Wo + 1) // 2
    cdef Py_ssize_t nrb = (N * th + trows - 1) // trows
    cdef Py_ssize_t t, g0, nt, P, c, e, f
    cdef floating* V
    cdef floating* M
    with nogil:
        for t in prange(nrb, schedule="dynamic", num_threads=n_threads):
            g0 = t * trows
            nt = _min(trows, N * th - g0)
            P = nt * tw
            V = &ws[0] + threadid() * ws_per_thread
            M = V + 16 * C * P
            for c in range(C):
                _wino_input_rows(&x[0, c, 0, 0], C * H * W, H, W, th, g0, nt, pt, pl, tw,
                                 V + c * P, C * P, M + 16 * F * P)
            for e in range(16):
                gemm_pk(False, False, F, P, C, &U[e, 0, 0], C,
                        &apk[e, 0] if apk.shape[0] > e else <const float*>NULL,
                        V + e * C * P, P, <floating>0, M + e * F * P, P, <const floating*>NULL)
            for f in range(F):
                _wino_output_rows(M + f * P, F * P, th, g0, nt, tw,
                                  bias[f] if has_bias else <floating>0, &y[0, f, 0, 0],
                                  F * Ho * Wo, Ho, Wo)
    return y


def conv2d_backward_gemm(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] x,
                         const floating[:, :, :, ::1] w, floating[:, :, :, ::1] gx,
                         floating[:, :, :, ::1] gw, floating[::1] ws, Py_ssize_t ws_per_thread,
                         Py_ssize_t units_w, Py_ssize_t rows_w, Py_ssize_t chans_x,
                         Py_ssize_t rows_x, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                         Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t groups,
                         bint pointwise, bint needs_input_grad, bint needs_weight_grad,
                         int n_threads):
    """grad_weight into gw (OUT, zero-filled by the caller; when needs_weight_grad) and, when
    needs_input_grad, grad_x into gx (OUT, any contents) of conv2d_forward_gemm.

    grad_weight: a task owns a block of ``units_w`` (channel, kh) tap rows -- a column block
    of gw[g] -- and adds gy[n, g] @ cols^T for n = 0, 1, ... in order, ``rows_w`` output rows
    at a time: the sum runs in the same order whatever the thread count (deterministic).
    grad_x: a task owns ``chans_x`` channels of one image: cols_grad = w^T @ gy, ``rows_x``
    output rows at a time, then col2im into those gx planes.
    """
    cdef Py_ssize_t N = x.shape[0], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], Cg = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Ho = gy.shape[2], Wo = gy.shape[3], HoWo = Ho * Wo
    cdef Py_ssize_t G = groups, Fg = F // groups, KK = KH * KW, CgKK = Cg * KK
    cdef Py_ssize_t Ug = Cg * KH, ntw = (Ug + units_w - 1) // units_w
    cdef Py_ssize_t ntx = (Cg + chans_x - 1) // chans_x
    cdef Py_ssize_t t, n, g, u0, u1, u, h0, hr, L, c, c0, nc
    cdef floating* buf
    with nogil:
        for t in prange(G * ntw if needs_weight_grad else 0, schedule="dynamic",
                        num_threads=n_threads):
            g = t // ntw
            u0 = (t - g * ntw) * units_w
            u1 = _min(Ug, u0 + units_w)
            buf = &ws[0] + threadid() * ws_per_thread
            for n in range(N):
                if pointwise:   # units are channels; x is its own column matrix
                    gemm(False, True, Fg, u1 - u0, HoWo, <floating>1, &gy[n, g * Fg, 0, 0], HoWo,
                         &x[n, g * Cg + u0, 0, 0], HoWo, <floating>1,
                         &gw[g * Fg, 0, 0, 0] + u0, CgKK)
                    continue
                h0 = 0
                while h0 < Ho:
                    hr = _min(rows_w, Ho - h0)
                    L = hr * Wo
                    for u in range(u0, u1):
                        _im2col_taps(&x[n, g * Cg + u // KH, 0, 0], H, W, u % KH, KW, sh, sw,
                                     pt, pl, dh, dw, Wo, h0, hr, buf + (u - u0) * KW * L, L,
                                     buf + (u1 - u0) * KW * L)
                    gemm(False, True, Fg, (u1 - u0) * KW, L, <floating>1,
                         &gy[n, g * Fg, 0, 0] + h0 * Wo, HoWo, buf, L, <floating>1,
                         &gw[g * Fg, 0, 0, 0] + u0 * KW, CgKK)
                    h0 = h0 + hr
        if needs_input_grad:
            for t in prange(N * G * ntx, schedule="dynamic", num_threads=n_threads):
                n = t // (G * ntx)
                g = (t - n * G * ntx) // ntx
                c0 = (t - n * G * ntx - g * ntx) * chans_x
                nc = _min(Cg - c0, chans_x)
                if pointwise:
                    gemm(True, False, nc, HoWo, Fg, <floating>1, &w[g * Fg, c0, 0, 0], CgKK,
                         &gy[n, g * Fg, 0, 0], HoWo, <floating>0, &gx[n, g * Cg + c0, 0, 0], HoWo)
                    continue
                buf = &ws[0] + threadid() * ws_per_thread
                for c in range(nc):
                    memset(&gx[n, g * Cg + c0 + c, 0, 0], 0, H * W * sizeof(floating))
                h0 = 0
                while h0 < Ho:
                    hr = _min(rows_x, Ho - h0)
                    L = hr * Wo
                    gemm(True, False, nc * KK, L, Fg, <floating>1, &w[g * Fg, c0, 0, 0], CgKK,
                         &gy[n, g * Fg, 0, 0] + h0 * Wo, HoWo, <floating>0, buf, L)
                    for c in range(nc):
                        col2im_plane(buf + c * KK * L, L, H, W, KH, KW, sh, sw, pt, pl, dh, dw,
                                     Wo, h0, hr, &gx[n, g * Cg + c0 + c, 0, 0])
                    h0 = h0 + hr


def conv2d_forward_depthwise(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                             const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y,
                             floating[::1] scratch, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                             Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, int n_threads):
    """groups == C: output channel f reads input channel c = f // m only (m = F // C); a direct
    kernel, one task per (image, input channel) writing its m output planes.

    scratch: n_threads * Hp*Wp elements (Hp = Ho + (KH-1)*dh, Wp = Wo + (KW-1)*dw) for the
    padded plane of the stride-1 kernel (unused at other strides).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Ho = y.shape[2], Wo = y.shape[3], m = F // C
    cdef Py_ssize_t Hp = Ho + (KH - 1) * dh, Wp = Wo + (KW - 1) * dw
    cdef bint fast = sh == 1 and sw == 1
    cdef Py_ssize_t it, n, c, f, j
    cdef floating* xp
    with nogil:
        for it in prange(N * C, schedule="dynamic", num_threads=n_threads):
            n = it // C
            c = it - n * C
            xp = &scratch[0] + threadid() * Hp * Wp
            if fast:
                _pad_plane(&x[n, c, 0, 0], H, W, pt, pl, xp, Hp, Wp)
            for j in range(m):
                f = c * m + j
                if fast:
                    _correlate_padded(xp, Wp, &w[f, 0, 0, 0], KH, KW, dh, dw, &y[n, f, 0, 0],
                                      Ho, Wo, bias[f] if has_bias else <floating>0, False)
                else:
                    depthwise_forward_plane(&x[n, c, 0, 0], H, W, &w[f, 0, 0, 0], KH, KW,
                                            sh, sw, pt, pl, dh, dw,
                                            bias[f] if has_bias else <floating>0,
                                            &y[n, f, 0, 0], Ho, Wo)
    return y


def conv2d_backward_depthwise(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] x,
                              const floating[:, :, :, ::1] w, floating[:, :, :, ::1] gx,
                              floating[:, :, :, ::1] gw, floating[::1] scratch, double[::1] accs,
                              Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                              Py_ssize_t dh, Py_ssize_t dw, bint needs_input_grad, int n_threads):
    """grad_weight into gw (OUT) and, when needs_input_grad, grad_x into gx (OUT).

    scratch: n_threads * S elements with S >= max(KH*KW*Wo, Hp*Wp, (H + (KH-1)*dh) *
    (W + (KW-1)*dw) + KH*KW); accs: n_threads * KH*KW doubles.
    Gather by what is written: a thread owns whole gx planes (all m filters of that channel, in
    order) and whole filters of gw (images in order): deterministic.
    At stride 1, grad_x is the correlation of gy, padded by (KH-1)*dh - pt on top (and so on),
    with the flipped filter -- the forward's fast kernel.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], KH = w.shape[2], KW = w.shape[3], KK = KH * KW
    cdef Py_ssize_t Ho = gy.shape[2], Wo = gy.shape[3], m = F // C
    cdef Py_ssize_t S = scratch.shape[0] // n_threads
    cdef Py_ssize_t Hp = Ho + (KH - 1) * dh, Wp = Wo + (KW - 1) * dw
    cdef Py_ssize_t Hq = H + (KH - 1) * dh, Wq = W + (KW - 1) * dw
    cdef bint fast = sh == 1 and sw == 1
    cdef Py_ssize_t it, n, c, f, j, k
    cdef floating* tmp
    cdef floating* wf
    cdef double* acc
    with nogil:
        if needs_input_grad:
            for it in prange(N * C, schedule="dynamic", num_threads=n_threads):
                n = it // C
                c = it - n * C
                tmp = &scratch[0] + threadid() * S
                if not fast:
                    memset(&gx[n, c, 0, 0], 0, H * W * sizeof(floating))
                for j in range(m):
                    f = c * m + j
                    if fast:
                        wf = tmp + Hq * Wq
                        for k in range(KK):
                            wf[k] = w[f, 0, (KK - 1 - k) // KW, (KK - 1 - k) % KW]
                        _pad_plane(&gy[n, f, 0, 0], Ho, Wo, (KH - 1) * dh - pt,
                                   (KW - 1) * dw - pl, tmp, Hq, Wq)
                        _correlate_padded(tmp, Wq, wf, KH, KW, dh, dw, &gx[n, c, 0, 0], H, W,
                                          <floating>0, j > 0)
                    else:
                        depthwise_backward_input_plane(&gy[n, f, 0, 0], Ho, Wo, &w[f, 0, 0, 0],
                                                       KH, KW, sh, sw, pt, pl, dh, dw,
                                                       &gx[n, c, 0, 0], H, W)
        for f in prange(F, schedule="dynamic", num_threads=n_threads):
            tmp = &scratch[0] + threadid() * S
            acc = &accs[0] + threadid() * KK
            for k in range(KK):
                acc[k] = 0
            for n in range(N):
                if fast:
                    _pad_plane(&x[n, f // m, 0, 0], H, W, pt, pl, tmp, Hp, Wp)
                    _weight_grad_padded(&gy[n, f, 0, 0], Ho, Wo, tmp, Wp, KH, KW, dh, dw, acc)
                else:
                    depthwise_backward_weight_plane(&gy[n, f, 0, 0], Ho, Wo, &x[n, f // m, 0, 0],
                                                    H, W, KH, KW, sh, sw, pt, pl, dh, dw,
                                                    tmp, acc)
            for k in range(KK):
                gw[f, 0, k // KW, k % KW] = <floating>acc[k]


def conv2d_forward_depthwise3x3(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                                const floating[::1] bias, bint has_bias,
                                floating[:, :, :, ::1] y, floating[::1] scratch, Py_ssize_t pt,
                                Py_ssize_t pl, int level, bint same, int n_threads):
    """groups == C == F, 3x3, stride 1, dilation 1; one task per (image, channel) plane.
    same (padding 1 all round): the kernel reads the plane as it is, level from
    depthwise3x3_level(itemsize, W - 2).  Otherwise (any padding) the plane is first copied
    into a zero-padded scratch plane, level from depthwise3x3_level(itemsize, min(W, Wo)).

    scratch: n_threads * (Ho + 2) * (Wo + 2) elements (unused when same).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Ho = y.shape[2], Wo = y.shape[3], Wp = Wo + 2, P = (Ho + 2) * (Wo + 2)
    cdef Py_ssize_t it, n, c
    cdef floating* xp
    with nogil:
        for it in prange(N * C, schedule="dynamic", num_threads=n_threads):
            n = it // C
            c = it - n * C
            if same:
                _dw3_fwd1(level, &x[n, c, 0, 0], &w[c, 0, 0, 0], 0,
                          bias[c] if has_bias else <floating>0, &y[n, c, 0, 0], H, W)
                continue
            xp = &scratch[0] + threadid() * P
            _pad_plane(&x[n, c, 0, 0], H, W, pt, pl, xp, Ho + 2, Wp)
            _dw3_fwd(level, xp, Wp, &w[c, 0, 0, 0], 0, bias[c] if has_bias else <floating>0,
                     &y[n, c, 0, 0], Ho, Wo)
    return y


def conv2d_backward_depthwise3x3(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] x,
                                 const floating[:, :, :, ::1] w, floating[:, :, :, ::1] gx,
                                 floating[:, :, :, ::1] gw, floating[::1] gb, bint has_bias,
                                 bint needs_input_grad, floating[::1] scratch,
                                 double[::1] parts, Py_ssize_t pt, Py_ssize_t pl, int level,
                                 bint same, int n_threads):
    """The backward of conv2d_forward_depthwise3x3 (same, level: as there): grad_weight into
    gw, grad_bias into gb when has_bias, grad_x into gx when needs_input_grad (all OUT).

    One task per (image, channel) plane reads grad_y and x once: grad_x is the correlation of
    grad_y, zero-padded by 2 - pt on top and 2 - pl on the left (negative: cropped; 1 when
    same), with the flipped filter; the plane's nine weight-gradient sums and its grad_y sum
    go to parts[(n*C + c)*10 : +10] (double), which are then added over the images in image
    order -- the same bits for any thread count.

    scratch: n_threads * ((Ho + 2) * (Wo + 2) + (H + 2) * (W + 2)) elements (unused when
    same); parts: N*C*10.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t Ho = gy.shape[2], Wo = gy.shape[3]
    cdef Py_ssize_t Px = (Ho + 2) * (Wo + 2), Pg = (H + 2) * (W + 2)
    cdef Py_ssize_t it, n, c, k
    cdef floating* buf
    cdef double s
    with nogil:
        for it in prange(N * C, schedule="dynamic", num_threads=n_threads):
            n = it // C
            c = it - n * C
            if same:
                if needs_input_grad:
                    _dw3_fwd1(level, &gy[n, c, 0, 0], &w[c, 0, 0, 0], 1, <floating>0,
                              &gx[n, c, 0, 0], H, W)
                _dw3_wgrad1(level, &gy[n, c, 0, 0], &x[n, c, 0, 0], H, W, &parts[it * 10])
                continue
            buf = &scratch[0] + threadid() * (Px + Pg)
            if needs_input_grad:
                _pad_plane(&gy[n, c, 0, 0], Ho, Wo, 2 - pt, 2 - pl, buf + Px, H + 2, W + 2)
                _dw3_fwd(level, buf + Px, W + 2, &w[c, 0, 0, 0], 1, <floating>0,
                         &gx[n, c, 0, 0], H, W)
            _pad_plane(&x[n, c, 0, 0], H, W, pt, pl, buf, Ho + 2, Wo + 2)
            _dw3_wgrad(level, &gy[n, c, 0, 0], Ho, Wo, buf, Wo + 2, &parts[it * 10])
        for c in range(C):
            for k in range(10):
                s = 0
                for n in range(N):
                    s = s + parts[(n * C + c) * 10 + k]
                if k < 9:
                    gw[c, 0, k // 3, k % 3] = <floating>s
                elif has_bias:
                    gb[c] = <floating>s


def bias_grad(const floating[:, :, :, ::1] gy, floating[::1] gb, int n_threads):
    """gb[f] = sum over n, ho, wo of gy[n, f] (double accumulation, images in order)."""
    cdef Py_ssize_t N = gy.shape[0], F = gy.shape[1], HW = gy.shape[2] * gy.shape[3]
    cdef Py_ssize_t f, n
    cdef double s
    with nogil:
        for f in prange(F, schedule="static", num_threads=n_threads):
            s = 0
            for n in range(N):
                s = s + plane_sum(&gy[n, f, 0, 0], HW)
            gb[f] = <floating>s


# ---------------------------------------------------------------------------- batch-wide GEMMs
# For small output maps a per-image GEMM is (F x C*KK) @ (C*KK x Ho*Wo) with Ho*Wo = 4..64
# columns: BLAS spends more on packing the weight and on call overhead than on the multiplies.
# The drivers below put several images side by side in one column matrix (C*KK, nb*HoWo) and
# issue one GEMM per block of nb images (the whole batch on one thread).

cdef inline void _copy_short(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    """memcpy of n values; the widths and planes of small maps (2, 4, 8, 16, 64) as fixed-size
    copies the compiler turns into a few vector moves instead of a library call."""
    if n == 4:
        memcpy(dst, src, 4 * sizeof(floating))
    elif n == 8:
        memcpy(dst, src, 8 * sizeof(floating))
    elif n == 16:
        memcpy(dst, src, 16 * sizeof(floating))
    elif n == 64:
        memcpy(dst, src, 64 * sizeof(floating))
    elif n == 2:
        memcpy(dst, src, 2 * sizeof(floating))
    else:
        memcpy(dst, src, n * sizeof(floating))


cdef inline void _add_short(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    """dst[:n] += src[:n], with the small-map widths as fixed trip counts (unrolled, vector)."""
    cdef Py_ssize_t i
    if n == 4:
        for i in range(4):
            dst[i] += src[i]
    elif n == 8:
        for i in range(8):
            dst[i] += src[i]
    elif n == 2:
        for i in range(2):
            dst[i] += src[i]
    else:
        for i in range(n):
            dst[i] += src[i]


cdef inline void _gather_row(floating* dst, const floating* src, Py_ssize_t n,
                             Py_ssize_t cs) noexcept nogil:
    """dst[i] = src[i * cs], i < n: one output row's columns at column stride cs; the
    stride-2 rows of small maps (2, 4, 8 wide) with fixed trip counts (unrolled)."""
    cdef Py_ssize_t i
    if cs == 2 and n == 4:
        for i in range(4):
            dst[i] = src[2 * i]
    elif cs == 2 and n == 2:
        for i in range(2):
            dst[i] = src[2 * i]
    elif cs == 2 and n == 8:
        for i in range(8):
            dst[i] = src[2 * i]
    else:
        for i in range(n):
            dst[i] = src[i * cs]


cdef inline void _scatter_add_row(floating* dst, const floating* src, Py_ssize_t n,
                                  Py_ssize_t cs) noexcept nogil:
    """dst[i * cs] += src[i], i < n (the adjoint of _gather_row)."""
    cdef Py_ssize_t i
    if cs == 2 and n == 4:
        for i in range(4):
            dst[2 * i] += src[i]
    elif cs == 2 and n == 2:
        for i in range(2):
            dst[2 * i] += src[i]
    elif cs == 2 and n == 8:
        for i in range(8):
            dst[2 * i] += src[i]
    else:
        for i in range(n):
            dst[i * cs] += src[i]


cdef void _batch_pad(const floating* x, Py_ssize_t img, Py_ssize_t n0, Py_ssize_t nb,
                     Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t H, Py_ssize_t W, Py_ssize_t pt,
                     Py_ssize_t pl, Py_ssize_t Hp, Py_ssize_t Wp, floating* xp) noexcept nogil:
    """xp ((c1-c0), nb*Hp*Wp): channels [c0, c1) of images n0..n0+nb-1, each plane zero-padded
    to Hp x Wp (padded row r, column s hold x[r - pt, s - pl]): one memset, then the rows."""
    cdef Py_ssize_t HpWp = Hp * Wp, lx = nb * HpWp, j, c, h, r0, r1, lo, up
    cdef floating* dst
    cdef const floating* src
    memset(xp, 0, (c1 - c0) * lx * sizeof(floating))
    r0 = pt if pt > 0 else 0                    # padded rows [r0, r1) come from x
    r1 = _min(Hp, pt + H)
    lo = pl if pl > 0 else 0                    # padded columns [lo, up) come from x
    up = _min(Wp, pl + W)
    if r0 >= r1 or lo >= up:
        return
    for c in range(c0, c1):
        for j in range(nb):
            src = x + (n0 + j) * img + c * H * W
            dst = xp + (c - c0) * lx + j * HpWp
            for h in range(r0, r1):
                _copy_short(dst + h * Wp + lo, src + (h - pt) * W + lo - pl, up - lo)


cdef extern from *:
    """
    /* Masked shifted copies for the small-map im2col (AVX-512F, chosen at run time): lane i of
       vector v of an image's columns is x[16v + i + off] where its mask bit is set, else 0.
       Masked-off lanes are never read (AVX-512 masked loads do not touch them), so shifts that
       point before or after a plane read nothing outside it. */
    #include <stddef.h>
    #if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    #include <immintrin.h>
    #define CK_SHIFT_BUILT 1
    __attribute__((target("avx512f")))
    static void ck_shift_f(const float* x, ptrdiff_t img, ptrdiff_t nb, ptrdiff_t off,
                           const unsigned short* masks, ptrdiff_t nv, float* dst) {
        for (ptrdiff_t j = 0; j < nb; j++) {
            const float* src = x + j * img;
            float* d = dst + j * nv * 16;
            for (ptrdiff_t v = 0; v < nv; v++)
                _mm512_storeu_ps(d + 16 * v,
                                 _mm512_maskz_loadu_ps((__mmask16)masks[v], src + off + 16 * v));
        }
    }
    __attribute__((target("avx512f")))
    static void ck_shift_d(const double* x, ptrdiff_t img, ptrdiff_t nb, ptrdiff_t off,
                           const unsigned short* masks, ptrdiff_t nv, double* dst) {
        for (ptrdiff_t j = 0; j < nb; j++) {
            const double* src = x + j * img;
            double* d = dst + j * nv * 8;
            for (ptrdiff_t v = 0; v < nv; v++)
                _mm512_storeu_pd(d + 8 * v,
                                 _mm512_maskz_loadu_pd((__mmask8)masks[v], src + off + 8 * v));
        }
    }
    static int ck_shift_available(void) {
        static int state = -1;
        if (state < 0) { __builtin_cpu_init(); state = __builtin_cpu_supports("avx512f") ? 1 : 0; }
        return state;
    }
    #else
    #define CK_SHIFT_BUILT 0
    static void ck_shift_f(const float* x, ptrdiff_t img, ptrdiff_t nb, ptrdiff_t off,
                           const unsigned short* masks, ptrdiff_t nv, float* dst) {}
    static void ck_shift_d(const double* x, ptrdiff_t img, ptrdiff_t nb, ptrdiff_t off,
                           const unsigned short* masks, ptrdiff_t nv, double* dst) {}
    static int ck_shift_available(void) { return 0; }
    #endif
    """
    void ck_shift_f(const float* x, Py_ssize_t img, Py_ssize_t nb, Py_ssize_t off,
                    const unsigned short* masks, Py_ssize_t nv, float* dst) noexcept nogil
    void ck_shift_d(const double* x, Py_ssize_t img, Py_ssize_t nb, Py_ssize_t off,
                    const unsigned short* masks, Py_ssize_t nv, double* dst) noexcept nogil
    int ck_shift_available() noexcept nogil


def shift_available():
    """True when the small-map im2col can use masked AVX-512 loads (_batch_im2col)."""
    return ck_shift_available() != 0


cdef void _batch_im2col(const floating* x, Py_ssize_t img, Py_ssize_t n0, Py_ssize_t nb,
                        Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t H, Py_ssize_t W, Py_ssize_t KH,
                        Py_ssize_t KW, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh,
                        Py_ssize_t dw, Py_ssize_t Hp, Py_ssize_t Wp, const Py_ssize_t* idx,
                        Py_ssize_t L, Py_ssize_t Wo, bint unit_stride,
                        const unsigned short* masks, floating* cols, floating* xp) noexcept nogil:
    """cols ((c1-c0)*KH*KW, L): the columns of channels [c0, c1) of images n0..n0+nb-1 (x: image
    0, channel 0; img: elements per image), image j in columns [j*HoWo, (j+1)*HoWo).

    The planes are first copied into xp ((c1-c0), nb*Hp*Wp), each zero-padded to exactly the
    rows and columns the taps read; idx[q] (q < L = nb*HoWo) is the offset in xp's row of the
    top-left tap of column q.  Row (c, kh, kw) of cols is then one flat gather
    xp[c, kh*dh*Wp + kw*dw + idx[q]] -- with unit column stride, Wo contiguous values per
    output row: no bounds checks and no per-row library calls, which for rows of 2-8 outputs
    cost more than the copying itself.

    masks (not NULL: stride 1, Wo == W, HoWo a multiple of the vector width, an AVX-512 CPU):
    output position p of an image reads input p + a*W + b through tap (kh, kw)
    (a = kh*dh - pt, b = kw*dw - pl) or padding, so each tap's columns of an image are masked
    vector loads straight from x (masks[tap * nv + v]: which lanes of vector v read x) -- no
    padded planes, no index table."""
    cdef bint shifted = masks != NULL
    cdef Py_ssize_t lx = nb * Hp * Wp, c, kh, kw, q, j, HoWo = L // nb, cs
    cdef floating* dst
    cdef const floating* src
    cdef Py_ssize_t nv, t
    if shifted:
        nv = HoWo // (16 if floating is float else 8)
        for c in range(c0, c1):
            for t in range(KH * KW):
                kh = t // KW
                kw = t - kh * KW
                dst = cols + ((c - c0) * KH * KW + t) * L
                if floating is float:
                    ck_shift_f(x + n0 * img + c * H * W, img, nb,
                               (kh * dh - pt) * W + kw * dw - pl, masks + t * nv, nv, dst)
                else:
                    ck_shift_d(x + n0 * img + c * H * W, img, nb,
                               (kh * dh - pt) * W + kw * dw - pl, masks + t * nv, nv, dst)
        return
    _batch_pad(x, img, n0, nb, c0, c1, H, W, pt, pl, Hp, Wp, xp)
    for c in range(c0, c1):
        for kh in range(KH):
            for kw in range(KW):
                dst = cols + ((c - c0) * KH * KW + kh * KW + kw) * L
                src = xp + (c - c0) * lx + kh * dh * Wp + kw * dw
                if unit_stride:
                    q = 0
                    while q < L:
                        _copy_short(dst + q, src + idx[q], Wo)
                        q = q + Wo
                else:       # output rows of Wo columns, cs apart in the padded plane
                    cs = idx[1] - idx[0] if Wo > 1 else 1
                    q = 0
                    while q < L:
                        _gather_row(dst + q, src + idx[q], Wo, cs)
                        q = q + Wo


cdef void _batch_col2im(const floating* cols, Py_ssize_t L, Py_ssize_t nb, Py_ssize_t C,
                        Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t dh, Py_ssize_t dw,
                        Py_ssize_t Hp, Py_ssize_t Wp, const Py_ssize_t* idx, Py_ssize_t Wo,
                        bint unit_stride, floating* xp, floating* gx, Py_ssize_t img,
                        Py_ssize_t H, Py_ssize_t W, Py_ssize_t pt, Py_ssize_t pl) noexcept nogil:
    """The adjoint of _batch_im2col for C channels of nb images: every row (c, kh, kw) of cols
    is added into padded planes xp (C, nb*Hp*Wp) through the same index table, taps in order,
    then each image's planes are cropped into gx (image j at gx + j*img, channel c at c*H*W;
    input pixels no tap reads get 0).  Fixed order: the same bits every run."""
    cdef Py_ssize_t HpWp = Hp * Wp, lx = nb * HpWp, c, kh, kw, q, j, h, r, lo, up, cs
    cdef floating* dst
    cdef const floating* src
    cdef floating* g
    memset(xp, 0, C * lx * sizeof(floating))
    for c in range(C):
        for kh in range(KH):
            for kw in range(KW):
                src = cols + (c * KH * KW + kh * KW + kw) * L
                dst = xp + c * lx + kh * dh * Wp + kw * dw
                if unit_stride:
                    q = 0
                    while q < L:
                        _add_short(dst + idx[q], src + q, Wo)
                        q = q + Wo
                else:
                    cs = idx[1] - idx[0] if Wo > 1 else 1
                    q = 0
                    while q < L:
                        _scatter_add_row(dst + idx[q], src + q, Wo, cs)
                        q = q + Wo
    # input column w sits at padded column w + pl; only [lo, up) of them exist in xp
    lo = _min(W, -pl) if pl < 0 else 0
    up = _min(W, Wp - pl)
    if up < lo:
        up = lo
    for j in range(nb):
        for c in range(C):
            for h in range(H):
                g = gx + j * img + c * H * W + h * W
                r = h + pt
                if r < 0 or r >= Hp:
                    memset(g, 0, W * sizeof(floating))
                    continue
                if lo > 0:
                    memset(g, 0, lo * sizeof(floating))
                memcpy(g + lo, xp + c * lx + j * HpWp + r * Wp + lo + pl,
                       (up - lo) * sizeof(floating))
                if up < W:
                    memset(g + up, 0, (W - up) * sizeof(floating))


def conv2d_forward_batch(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] w,
                         const floating[::1] bias, bint has_bias, floating[:, :, :, ::1] y,
                         floating[::1] ws, Py_ssize_t ws_per_thread, Py_ssize_t imgs,
                         const Py_ssize_t[::1] idx, Py_ssize_t Hp, Py_ssize_t Wp,
                         Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                         Py_ssize_t groups, const unsigned short[::1] masks, int n_threads):
    """y = conv(x, w) + bias, one GEMM per group for each block of ``imgs`` images.
    masks: empty, or the shifted gather's lane masks (see _batch_im2col).

    A task (block of images) writes cols (C*KK, L), L = nb*HoWo, and the GEMM result (F, L) into
    its thread's slice of ws (ws_per_thread >= ((C*KK + F)*HoWo + C*Hp*Wp)*imgs: columns, GEMM
    result, padded planes), then copies each
    image's (F, HoWo) into y.  Every output is one GEMM's dot product over C*KK in BLAS's order,
    whatever the block: the same bits for any imgs and thread count.
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], Cg = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Ho = y.shape[2], Wo = y.shape[3], HoWo = Ho * Wo
    cdef Py_ssize_t G = groups, Fg = F // groups, KK = KH * KW, CgKK = Cg * KK
    cdef Py_ssize_t nblk = (N + imgs - 1) // imgs
    cdef Py_ssize_t t, n0, nb, L, g, f, j, p
    cdef bint unit_stride = Wo == 1 or idx[1] - idx[0] == 1     # column stride 1
    cdef const unsigned short* mp = &masks[0] if masks.shape[0] > 0 else NULL
    cdef floating* cols
    cdef floating* ybuf
    cdef floating* src
    cdef floating* dst
    cdef floating bv
    with nogil:
        for t in prange(nblk, schedule="dynamic", num_threads=n_threads):
            n0 = t * imgs
            nb = _min(imgs, N - n0)
            L = nb * HoWo
            cols = &ws[0] + threadid() * ws_per_thread
            ybuf = cols + C * KK * L
            _batch_im2col(&x[0, 0, 0, 0], C * H * W, n0, nb, 0, C, H, W, KH, KW, pt, pl, dh, dw,
                          Hp, Wp, &idx[0], L, Wo, unit_stride, mp, cols, ybuf + F * L)
            for g in range(G):
                gemm(False, False, Fg, L, CgKK, <floating>1, &w[g * Fg, 0, 0, 0], CgKK,
                     cols + g * CgKK * L, L, <floating>0, ybuf + g * Fg * L, L)
            for j in range(nb):
                for f in range(F):
                    src = ybuf + f * L + j * HoWo
                    dst = &y[n0 + j, f, 0, 0]
                    if has_bias:
                        bv = bias[f]
                        for p in range(HoWo):
                            dst[p] = src[p] + bv
                    else:
                        _copy_short(dst, src, HoWo)
    return y


def conv2d_backward_batch(const floating[:, :, :, ::1] gy, const floating[:, :, :, ::1] x,
                          const floating[:, :, :, ::1] w, floating[:, :, :, ::1] gx,
                          floating[:, :, :, ::1] gw, floating[::1] gyt, floating[::1] ws,
                          Py_ssize_t ws_per_thread, Py_ssize_t chans_w, Py_ssize_t kimgs,
                          Py_ssize_t imgs, const Py_ssize_t[::1] idx, Py_ssize_t Hp, Py_ssize_t Wp,
                          Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                          Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t groups,
                          bint needs_input_grad, const unsigned short[::1] masks,
                          Py_ssize_t nsplit, floating[::1] gwp, int n_threads):
    """grad_weight into gw (OUT, any contents) and, when needs_input_grad, grad_x into gx (OUT,
    any contents) with batch-wide GEMMs.

    nsplit: grad_weight tasks also split the batch into nsplit fixed parts (images
    [s*N/nsplit, (s+1)*N/nsplit)); part 0 sums into gw, part s > 0 into gwp[(s-1)*F*Cg*KK:]
    (laid out as gw), and the parts are added into gw in order after: the same bits for any
    thread count.

    gyt (F, N*HoWo): gy with the images side by side (filled here).
    grad_weight: a task owns ``chans_w`` input channels of one group -- a column block of gw[g]
    -- as GEMMs gyt[g] @ cols^T over blocks of ``kimgs`` images (columns that stay in cache),
    added in image order: every entry is the same sum whatever the thread count.
    grad_x: a task owns a block of ``imgs`` images: cols_grad = w^T @ gyt[:, block], then
    col2im into their gx planes.
    ws_per_thread >= max(chans_w*(KK*HoWo + Hp*Wp)*kimgs, Cg*(KK*HoWo + Hp*Wp)*imgs).
    """
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t F = w.shape[0], Cg = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t Ho = gy.shape[2], Wo = gy.shape[3], HoWo = Ho * Wo, LN = N * HoWo
    cdef Py_ssize_t G = groups, Fg = F // groups, KK = KH * KW, CgKK = Cg * KK
    cdef Py_ssize_t ntw = (Cg + chans_w - 1) // chans_w, nblk = (N + imgs - 1) // imgs
    cdef Py_ssize_t t, n, f, g, c0, c1, n0, nb, L, j, c, sp, tw, na, nz, i
    cdef Py_ssize_t gwn = F * CgKK
    cdef const unsigned short* mp = &masks[0] if masks.shape[0] > 0 else NULL
    cdef floating* buf
    cdef floating* dst
    cdef floating* gwf = &gw[0, 0, 0, 0]
    with nogil:
        # (a plain copy, serial: one parallel region less, whose end barrier costs a time
        # slice whenever the other core is busy with another process)
        for n in range(N):
            for f in range(F):
                _copy_short(&gyt[0] + f * LN + n * HoWo, &gy[n, f, 0, 0], HoWo)
        for t in prange(G * ntw * nsplit, schedule="dynamic", num_threads=n_threads):
            sp = t % nsplit
            tw = t // nsplit
            g = tw // ntw
            c0 = (tw - g * ntw) * chans_w
            c1 = _min(Cg, c0 + chans_w)
            na = sp * N // nsplit
            nz = (sp + 1) * N // nsplit
            dst = (gwf if sp == 0 else &gwp[0] + (sp - 1) * gwn) + g * Fg * CgKK + c0 * KK
            buf = &ws[0] + threadid() * ws_per_thread
            n0 = na
            while n0 < nz:      # images in blocks of kimgs, summed in order
                nb = _min(kimgs, nz - n0)
                L = nb * HoWo
                _batch_im2col(&x[0, 0, 0, 0], C * H * W, n0, nb, g * Cg + c0, g * Cg + c1, H, W,
                              KH, KW, pt, pl, dh, dw, Hp, Wp, &idx[0], L, Wo, sw == 1, mp,
                              buf, buf + (c1 - c0) * KK * L)
                gemm(False, True, Fg, (c1 - c0) * KK, L, <floating>1,
                     &gyt[0] + g * Fg * LN + n0 * HoWo, LN, buf, L,
                     <floating>(1 if n0 > na else 0), dst, CgKK)
                n0 = n0 + nb
        for sp in range(1, nsplit):     # the parts, in order
            for i in range(gwn):
                gwf[i] = gwf[i] + gwp[(sp - 1) * gwn + i]
        if needs_input_grad:
            for t in prange(nblk * G, schedule="dynamic", num_threads=n_threads):
                g = t // nblk
                n0 = (t - g * nblk) * imgs
                nb = _min(imgs, N - n0)
                L = nb * HoWo
                buf = &ws[0] + threadid() * ws_per_thread
                gemm(True, False, CgKK, L, Fg, <floating>1, &w[g * Fg, 0, 0, 0], CgKK,
                     &gyt[0] + g * Fg * LN + n0 * HoWo, LN, <floating>0, buf, L)
                _batch_col2im(buf, L, nb, Cg, KH, KW, dh, dw, Hp, Wp, &idx[0], Wo, sw == 1,
                              buf + CgKK * L,
                              &gx[n0, g * Cg, 0, 0], C * H * W, H, W, pt, pl)


# ---------------------------------------------------------------------------- dense maps
# For tiny planes (2x2 with a 3x3 kernel) the conv is a small dense linear map from an image's
# C*H*W inputs to its F*Ho*Wo outputs, Wd[(c, hi, wi), (f, ho, wo)] = w[f, c, kh, kw] (0 where no
# tap connects them).  With x as the (N, C*H*W) matrix it already is, y = x @ Wd is one GEMM
# straight into y's layout -- no im2col, no copies -- and grad_x = gy @ Wd^T,
# grad_Wd = x^T @ gy; grad_weight folds grad_Wd back onto the taps.  It does H*W / (KH*KW) times
# the multiplies of im2col (4/9 for 2x2 under a 3x3 kernel: the taps that read padding are
# skipped).

def dense_weight(const floating[:, :, :, ::1] w, floating[:, ::1] wd, Py_ssize_t H, Py_ssize_t W,
                 Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                 Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, int n_threads):
    """wd (C*H*W, F*Ho*Wo) = the dense map of the (groups = 1) conv w: zeroed, then each tap's
    weights written at (c, hi, wi), (f, ho, wo); a task per input channel (its rows)."""
    cdef Py_ssize_t F = w.shape[0], C = w.shape[1], KH = w.shape[2], KW = w.shape[3]
    cdef Py_ssize_t HW = H * W, HoWo = Ho * Wo, c, f, kh, kw, ho, wo, hi, wi, o
    cdef floating* row
    with nogil:
        for c in prange(C, schedule="dynamic", num_threads=n_threads):
            memset(&wd[c * HW, 0], 0, HW * wd.shape[1] * sizeof(floating))
            for kh in range(KH):
                for kw in range(KW):
                    for ho in range(Ho):
                        hi = ho * sh + kh * dh - pt
                        if hi < 0 or hi >= H:
                            continue
                        for wo in range(Wo):
                            wi = wo * sw + kw * dw - pl
                            if wi < 0 or wi >= W:
                                continue
                            row = &wd[c * HW + hi * W + wi, 0]
                            o = ho * Wo + wo
                            for f in range(F):
                                row[f * HoWo + o] = w[f, c, kh, kw]


def dense_fold(const floating[:, ::1] gwd, floating[:, :, :, ::1] gw, Py_ssize_t H,
               Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t sh, Py_ssize_t sw,
               Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw, int n_threads):
    """gw (OUT, any contents)[f, c, kh, kw] = the sum of gwd over the (input, output) pairs tap
    (kh, kw) connects, in (ho, wo) order: the adjoint of dense_weight (a task per channel)."""
    cdef Py_ssize_t F = gw.shape[0], C = gw.shape[1], KH = gw.shape[2], KW = gw.shape[3]
    cdef Py_ssize_t HW = H * W, HoWo = Ho * Wo, c, f, kh, kw, ho, wo, hi, wi, o
    cdef bint first
    cdef const floating* row
    with nogil:
        for c in prange(C, schedule="dynamic", num_threads=n_threads):
            first = True        # (assigned in the loop body: thread-private)
            for kh in range(KH):
                for kw in range(KW):
                    first = True
                    for ho in range(Ho):
                        hi = ho * sh + kh * dh - pt
                        if hi < 0 or hi >= H:
                            continue
                        for wo in range(Wo):
                            wi = wo * sw + kw * dw - pl
                            if wi < 0 or wi >= W:
                                continue
                            row = &gwd[c * HW + hi * W + wi, 0]
                            o = ho * Wo + wo
                            if first:
                                for f in range(F):
                                    gw[f, c, kh, kw] = row[f * HoWo + o]
                                first = False
                            else:
                                for f in range(F):
                                    gw[f, c, kh, kw] += row[f * HoWo + o]
                    if first:           # a tap that only ever reads padding
                        for f in range(F):
                            gw[f, c, kh, kw] = 0


def gemm_rows(bint trans_a, bint trans_b, const floating[:, ::1] a, const floating[:, ::1] b,
              floating[:, ::1] c, Py_ssize_t k, int n_threads, int n_blocks=0):
    """c (m x n) = op(a) @ op(b) (op(a) m x k), its rows split into ``n_blocks`` blocks (one per
    thread when 0), a multiple of 8 rows each.  The own GEMM sums each row in a fixed k order
    whatever the split; BLAS may not (OpenBLAS picks other kernels for other row counts), so
    BLAS callers pass a block count set by the layer alone."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1], lda = a.shape[1], ldb = b.shape[1]
    cdef Py_ssize_t split = n_blocks if n_blocks > 0 else n_threads
    cdef Py_ssize_t rows = (((m + split - 1) // split) + 7) // 8 * 8
    cdef Py_ssize_t nblk = (m + rows - 1) // rows, t, i0, mb
    with nogil:
        if nblk <= 1:
            gemm(trans_a, trans_b, m, n, k, <floating>1, &a[0, 0], lda, &b[0, 0], ldb,
                 <floating>0, &c[0, 0], n)
        else:
            for t in prange(nblk, schedule="dynamic", num_threads=n_threads):
                i0 = t * rows
                mb = _min(rows, m - i0)
                gemm(trans_a, trans_b, mb, n, k, <floating>1,
                     (&a[0, 0] + i0) if trans_a else (&a[0, 0] + i0 * lda), lda, &b[0, 0], ldb,
                     <floating>0, &c[0, 0] + i0 * n, n)
