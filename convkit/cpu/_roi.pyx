# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""RoI max pooling and RoI align (torchvision's rules, restated in convkit/reference/roi.py).

The forwards work on an NHWC copy of the map (made inside the call), so a pixel's channels are
contiguous.  float32 kernels (roi_align forward/backward, roi_pool forward) are written once
(the CK_*_BODY macros) and built for SSE2, AVX2 and AVX-512 (picked by CPUID; every path does
the same multiplies and adds per lane, no FMA, so the bits never depend on it).  Per RoI:
each bin is summed (or maxed) over its taps for all channels at once, so each tapped pixel's
channels are read as one contiguous run; results go through an L1-sized (bins, channels)
scratch and are transposed into the (C, bins) output.  roi_align's taps: each RoI's bilinear
samples are worked out once (positions and weights are separable; only samples that land on
the map are kept), corners on one pixel merged where the data is finite, laid out as
(pixel, weight) pairs and reused for every channel.  float64 (and roi_pool without SSE2) use
plain loops.

Backwards own blocks of grad_x (roi_align: 64 channels of one image, accumulated pixel-major
in L2 and transposed out; roi_pool: 32 channels): each task zeroes its block and adds the
RoIs in order, so the sums are the same bits on every run and for any thread count.

Threads: every driver runs its tasks on ck_parallel_for (helper threads started per call,
tasks handed out by an atomic counter, the caller sleeping until the handed-out tasks are
done), not on OpenMP regions, whose spin-waits made two threads 2-3x slower than one while
other processes kept both CPUs of this machine busy.
"""
from cython cimport floating
from libc.stdint cimport int32_t, int64_t
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset
from libc.math cimport ceil, fabs, floor, fmax, fmin, isfinite, round
from libc.float cimport DBL_EPSILON, FLT_EPSILON, FLT_MAX

import numpy as np


# ------------------------------------------------------------------------------ roi pool
cdef inline Py_ssize_t _edge(double e, Py_ssize_t limit) noexcept nogil:
    """A bin edge clipped to [0, limit] in floating point, then cast (NaN -> 0)."""
    if e != e:
        return 0
    if e < 0:
        return 0
    if e > limit:
        return limit
    return <Py_ssize_t>e


cdef void roi_pool_bins(const floating* roi, floating scale, Py_ssize_t pooled_h,
                        Py_ssize_t pooled_w, Py_ssize_t H, Py_ssize_t W,
                        Py_ssize_t* hs, Py_ssize_t* he, Py_ssize_t* ws,
                        Py_ssize_t* we) noexcept nogil:
    """Bin edges of one RoI (row [batch, x1, y1, x2, y2]): corners scaled in the data type and
    rounded half away from zero, the RoI at least 1x1 cell, bin p = [floor(p*bin),
    ceil((p+1)*bin)) from the start, clipped to the map."""
    cdef double sw = round(roi[1] * scale), sh = round(roi[2] * scale)
    cdef double ew = round(roi[3] * scale), eh = round(roi[4] * scale)
    cdef double rw = ew - sw + 1, rh = eh - sh + 1
    cdef floating bw, bh
    cdef Py_ssize_t p
    # max(size, 1) as NumPy does it: NaN (inf - inf) stays NaN and empties the bins
    if rw < 1:
        rw = 1
    if rh < 1:
        rh = 1
    bh = <floating>rh / <floating>pooled_h
    bw = <floating>rw / <floating>pooled_w
    for p in range(pooled_h):
        hs[p] = _edge(floor(<floating>p * bh) + sh, H)
        he[p] = _edge(ceil(<floating>(p + 1) * bh) + sh, H)
    for p in range(pooled_w):
        ws[p] = _edge(floor(<floating>p * bw) + sw, W)
        we[p] = _edge(ceil(<floating>(p + 1) * bw) + sw, W)


cdef void roi_pool_one(const floating* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t pooled_h, Py_ssize_t pooled_w,
                       const Py_ssize_t* hs, const Py_ssize_t* he,
                       const Py_ssize_t* ws, const Py_ssize_t* we,
                       floating* y, int64_t* argmax) noexcept nogil:
    """One RoI, all channels: x is the RoI's image (C, H, W); y, argmax (C, ph, pw)."""
    cdef Py_ssize_t c, p, q, h, w, best_i, o = 0
    cdef floating best, v
    cdef const floating* plane
    cdef const floating* row
    for c in range(C):
        plane = x + c * H * W
        for p in range(pooled_h):
            for q in range(pooled_w):
                if he[p] <= hs[p] or we[q] <= ws[q]:
                    y[o] = 0
                    argmax[o] = -1
                else:
                    # torchvision starts at -FLT_MAX (for double too) and needs a strict '>':
                    # the first maximum wins and NaN never does
                    best = -FLT_MAX
                    best_i = -1
                    for h in range(hs[p], he[p]):
                        row = plane + h * W
                        for w in range(ws[q], we[q]):
                            v = row[w]
                            if v > best:
                                best = v
                                best_i = h * W + w
                    y[o] = best
                    argmax[o] = best_i
                o += 1


def simd_available():
    """True when the SSE2 kernels were compiled in (x86-64)."""
    return bool(ck_align_simd())


def set_simd_level(int cap):
    """Cap the float32 kernels' vector width (2: AVX-512, 1: AVX2, 0: SSE2; default 2) and
    return the level now in use (also limited by the CPU).  Every level gives the same bits
    (tests compare them)."""
    return ck_set_simd_cap(cap)


def _use_openmp(bint on):
    """A/B switch for bench/bench_threading.py: run the tasks on OpenMP regions."""
    global ck_force_omp
    ck_force_omp = on


def use_avx2(bint on):
    """Allow (default) or forbid the AVX2 and AVX-512 kernels; returns whether AVX2 or wider
    is now in use.  All paths give the same bits (tests compare them)."""
    return ck_set_simd_cap(2 if on else 0) >= 1


# ----------------------------------------------------------------------------- roi align
cdef Py_ssize_t roi_align_axis_taps(floating start, floating bin_size, floating grid,
                                    Py_ssize_t pooled, Py_ssize_t size, Py_ssize_t cap,
                                    Py_ssize_t* first, Py_ssize_t* low, Py_ssize_t* high,
                                    floating* w_low, floating* w_high) noexcept nogil:
    """Bilinear taps along one axis of one RoI.

    Sample i of bin p sits at ``(start + p*bin) + ((i + 0.5)*bin)/grid`` (data type,
    torchvision's order), i in [0, grid).  Samples outside [-1, size] are dropped (they add
    nothing); the rest become (low, high, w_low, w_high) after torchvision's clamp-at-0 and
    snap-to-last-pixel rules.  Only the index window that can land in [-1, size] is visited
    (found in double with a safety margin, then tested exactly), so a 1e30-wide RoI costs
    O(size) samples.  Bin p's taps are [first[p], first[p+1]).  Writes at most ``cap`` taps
    and returns how many there are (the caller retries with more room if that is > cap).
    With a zero bin (an empty aligned RoI and a fixed grid) all ``grid`` samples coincide:
    they are one tap whose weights carry the multiplicity.
    """
    cdef double g = grid, s64 = start, b64 = bin_size, step, base, err, t1, t2, lo, hi, cnt, lim
    cdef double eps = FLT_EPSILON if floating is float else DBL_EPSILON
    cdef Py_ssize_t p, n = 0, i, i0, i1, lw
    cdef floating pos, mult
    first[0] = 0
    if not (g >= 1 and isfinite(g) and isfinite(s64) and isfinite(b64)):
        for p in range(pooled):
            first[p + 1] = 0
        return 0           # grid 0 (an empty aligned RoI) or a geometry that overflowed
    step = b64 / g
    err = 8 * eps * (fabs(s64) + pooled * fabs(b64) + size + 2)
    for p in range(pooled):
        base = s64 + p * b64
        mult = 1
        if step == 0:
            lo = 0
            cnt = 1 if (base >= -1 - err and base <= size + err) else 0
            mult = <floating>g
        elif g <= 64:       # a small grid: every sample is tried (the test below filters)
            lo = 0
            cnt = g
        else:
            t1 = (-1 - base) / step - 0.5
            t2 = (size - base) / step - 0.5
            lim = 2 + ceil(fmin(err / fabs(step), 1099511627776.0))   # margin, at most 2**40
            lo = fmin(fmax(floor(fmin(t1, t2)) - lim, 0), g)
            hi = fmin(fmax(ceil(fmax(t1, t2)) + lim, -1), g - 1)
            # at most (size + 1)/|step| + 1 samples fit in [-1, size]
            cnt = fmin(fmax(hi - lo + 1, 0),
                       floor(fmin((size + 1) / fabs(step), 1152921504606846976.0)) + 6)
        i0 = <Py_ssize_t>lo
        i1 = i0 + <Py_ssize_t>cnt
        for i in range(i0, i1):
            pos = (start + <floating>p * bin_size) + ((<floating>i + <floating>0.5) * bin_size) / grid
            if not (pos >= -1 and pos <= size):
                continue
            if n < cap:
                if pos < 0:
                    pos = 0
                lw = <Py_ssize_t>pos
                if lw >= size - 1:
                    lw = size - 1
                    low[n] = lw
                    high[n] = lw
                    pos = <floating>lw
                else:
                    low[n] = lw
                    high[n] = lw + 1
                w_high[n] = (pos - <floating>lw) * mult
                w_low[n] = (1 - (pos - <floating>lw)) * mult
            n += 1
        first[p + 1] = n
    return n


cdef struct _Taps:
    Py_ssize_t cap
    Py_ssize_t* first
    Py_ssize_t* low
    Py_ssize_t* high
    void* w_low
    void* w_high


cdef int _taps_reserve(_Taps* t, Py_ssize_t n, Py_ssize_t itemsize) noexcept nogil:
    """Room for n taps (keeps the old buffers when they are big enough).  0 on failure."""
    if n <= t.cap and t.low != NULL:
        return 1
    free(t.low)
    free(t.high)
    free(t.w_low)
    free(t.w_high)
    t.low = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t) + 1)
    t.high = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t) + 1)
    t.w_low = malloc(n * itemsize + 1)
    t.w_high = malloc(n * itemsize + 1)
    t.cap = n
    if t.low == NULL or t.high == NULL or t.w_low == NULL or t.w_high == NULL:
        t.cap = 0
        return 0
    return 1


cdef void _taps_free(_Taps* t) noexcept nogil:
    if t == NULL:
        return
    free(t.first)
    free(t.low)
    free(t.high)
    free(t.w_low)
    free(t.w_high)
    free(t)


cdef int _roi_taps(const floating* roi, floating scale, floating offset, bint aligned,
                   Py_ssize_t sampling_ratio, Py_ssize_t pooled_h, Py_ssize_t pooled_w,
                   Py_ssize_t H, Py_ssize_t W, _Taps* ty, _Taps* tx, double* count) noexcept nogil:
    """Geometry of one RoI (torchvision's, in the data type) and its taps on both axes.
    Returns 0 when memory ran out."""
    cdef floating sw = roi[1] * scale - offset, sh = roi[2] * scale - offset
    cdef floating rw = (roi[3] * scale - offset) - sw, rh = (roi[4] * scale - offset) - sh
    cdef floating bw, bh, gw, gh
    cdef Py_ssize_t n
    if not aligned:     # legacy mode: a malformed RoI is forced to 1x1 (NaN stays NaN)
        if rw < 1:
            rw = 1
        if rh < 1:
            rh = 1
    bh = rh / <floating>pooled_h
    bw = rw / <floating>pooled_w
    if sampling_ratio > 0:
        gh = <floating>sampling_ratio
        gw = <floating>sampling_ratio
    else:               # adaptive: ceil(roi / pooled), 0 for an empty aligned RoI
        gh = ceil(rh / <floating>pooled_h)
        gw = ceil(rw / <floating>pooled_w)
    # torchvision: count = max(grid_h * grid_w, 1); in double, so it cannot overflow
    count[0] = fmax(<double>gh * <double>gw, 1.0)
    if not (count[0] == count[0]):
        count[0] = 1
    n = roi_align_axis_taps(sh, bh, gh, pooled_h, H, ty.cap, ty.first, ty.low, ty.high,
                            <floating*>ty.w_low, <floating*>ty.w_high)
    if n > ty.cap:
        if not _taps_reserve(ty, n, sizeof(floating)):
            return 0
        roi_align_axis_taps(sh, bh, gh, pooled_h, H, ty.cap, ty.first, ty.low, ty.high,
                            <floating*>ty.w_low, <floating*>ty.w_high)
    n = roi_align_axis_taps(sw, bw, gw, pooled_w, W, tx.cap, tx.first, tx.low, tx.high,
                            <floating*>tx.w_low, <floating*>tx.w_high)
    if n > tx.cap:
        if not _taps_reserve(tx, n, sizeof(floating)):
            return 0
        roi_align_axis_taps(sw, bw, gw, pooled_w, W, tx.cap, tx.first, tx.low, tx.high,
                            <floating*>tx.w_low, <floating*>tx.w_high)
    return 1


cdef _Taps* _taps_new(Py_ssize_t pooled, Py_ssize_t itemsize) noexcept nogil:
    """Tap tables for one axis with room for 16 samples per bin (grown on demand)."""
    cdef _Taps* t = <_Taps*>malloc(sizeof(_Taps))
    if t == NULL:
        return NULL
    t.cap = 0
    t.low = NULL
    t.high = NULL
    t.w_low = NULL
    t.w_high = NULL
    t.first = <Py_ssize_t*>malloc((pooled + 1) * sizeof(Py_ssize_t))
    if t.first == NULL or not _taps_reserve(t, 16 * pooled, itemsize):
        _taps_free(t)
        return NULL
    return t


cdef extern from *:
    """
    /* float32 kernels on the NHWC map, written once (the CK_*_BODY macros) and instantiated for
       SSE2 (4 lanes), AVX2 (8) and AVX-512 (16; both picked at run time by CPUID).  Every path
       does lane for lane the same multiplies and adds in the same order as the scalar tail
       (no FMA: contraction is switched off below), so the bits never depend on the path.
       Work per RoI is bin-major: for each bin, all channels (register blocks of 4 vectors) over
       the bin's taps, so each tapped pixel's channels are read as one contiguous run; results
       go to a bin-major scratch row and are transposed into the (C, bins) output once. */
    #include <stddef.h>
    #include <stdint.h>
    #include <float.h>
    #include <math.h>
    #include <string.h>
    #include <stdlib.h>
    #if defined(__SSE2__) || defined(_M_X64)
    #include <emmintrin.h>
    #define CK_ROI_SSE2 1
    #endif
    #if defined(CK_ROI_SSE2) && (defined(__GNUC__) || defined(__clang__)) && \\
        (defined(__x86_64__) || defined(__i386__))
    #include <immintrin.h>
    #define CK_ROI_WIDE 1
    #endif
    #if defined(__clang__)
    #pragma clang fp contract(off)
    #elif defined(__GNUC__)
    #pragma GCC push_options
    #pragma GCC optimize("fp-contract=off")
    #endif

    static int ck_align_simd(void) {
    #ifdef CK_ROI_SSE2
        return 1;
    #else
        return 0;
    #endif
    }
    /* widest vector path in use: 2 AVX-512, 1 AVX2, 0 SSE2 (or none); tests lower the cap */
    static int ck_simd_cap = 2;
    static int ck_simd_level(void) {
    #ifdef CK_ROI_WIDE
        static int hw = -1;
        if (hw < 0) {
            __builtin_cpu_init();
            hw = __builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("avx2") ? 1 : 0;
        }
        return hw < ck_simd_cap ? hw : ck_simd_cap;
    #else
        return 0;
    #endif
    }
    static int ck_set_simd_cap(int cap) {
        ck_simd_cap = cap;
        return ck_simd_level();
    }

    /* How a bin's sum becomes the mean: 1 multiply by 1/count (count a power of two, so the
       product is the same correctly rounded quotient), 2 divide in float (count exact in
       float), 0 divide in double afterwards (the caller). */
    static int ck_scale_kind(float fcount, double count) {
        int e;
        if ((double)fcount != count) return 0;
        return frexp(count, &e) == 0.5 ? 1 : 2;
    }

    /* ---- per-ISA operations used by the bodies ---- */
    #define CK_X_L 4
    #define CK_X_R 4         /* vectors of channels per register block */
    #define CK_X_V __m128
    #define CK_X_LD(p) _mm_loadu_ps(p)
    #define CK_X_ST(p, v) _mm_storeu_ps(p, v)
    #define CK_X_ADD(a, b) _mm_add_ps(a, b)
    #define CK_X_MUL(a, b) _mm_mul_ps(a, b)
    #define CK_X_DIV(a, b) _mm_div_ps(a, b)
    #define CK_X_SET1(s) _mm_set1_ps(s)
    #define CK_X_M __m128
    #define CK_X_GT(a, b) _mm_cmpgt_ps(a, b)
    #define CK_X_SEL(m, a, b) _mm_or_ps(_mm_and_ps(m, a), _mm_andnot_ps(m, b))
    #define CK_X_IV __m128i
    #define CK_X_ISET1(s) _mm_set1_epi32(s)
    #define CK_X_ISEL(m, a, b) _mm_or_si128(_mm_and_si128(_mm_castps_si128(m), a), \\
                                            _mm_andnot_si128(_mm_castps_si128(m), b))
    #define CK_X_IST(p, v) _mm_storeu_si128((__m128i*)(p), v)

    #define CK_Y_L 8
    #define CK_Y_R 4
    #define CK_Y_V __m256
    #define CK_Y_LD(p) _mm256_loadu_ps(p)
    #define CK_Y_ST(p, v) _mm256_storeu_ps(p, v)
    #define CK_Y_ADD(a, b) _mm256_add_ps(a, b)
    #define CK_Y_MUL(a, b) _mm256_mul_ps(a, b)
    #define CK_Y_DIV(a, b) _mm256_div_ps(a, b)
    #define CK_Y_SET1(s) _mm256_set1_ps(s)
    #define CK_Y_M __m256
    #define CK_Y_GT(a, b) _mm256_cmp_ps(a, b, _CMP_GT_OQ)
    #define CK_Y_SEL(m, a, b) _mm256_blendv_ps(b, a, m)
    #define CK_Y_IV __m256i
    #define CK_Y_ISET1(s) _mm256_set1_epi32(s)
    #define CK_Y_ISEL(m, a, b) _mm256_castps_si256(_mm256_blendv_ps( \\
        _mm256_castsi256_ps(b), _mm256_castsi256_ps(a), m))
    #define CK_Y_IST(p, v) _mm256_storeu_si256((__m256i*)(p), v)

    #define CK_Z_L 16
    #define CK_Z_R 8         /* 32 registers: 8 x 2 partial sums fit */
    #define CK_Z_V __m512
    #define CK_Z_LD(p) _mm512_loadu_ps(p)
    #define CK_Z_ST(p, v) _mm512_storeu_ps(p, v)
    #define CK_Z_ADD(a, b) _mm512_add_ps(a, b)
    #define CK_Z_MUL(a, b) _mm512_mul_ps(a, b)
    #define CK_Z_DIV(a, b) _mm512_div_ps(a, b)
    #define CK_Z_SET1(s) _mm512_set1_ps(s)
    #define CK_Z_M __mmask16
    #define CK_Z_GT(a, b) _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ)
    #define CK_Z_SEL(m, a, b) _mm512_mask_blend_ps(m, b, a)
    #define CK_Z_IV __m512i
    #define CK_Z_ISET1(s) _mm512_set1_epi32(s)
    #define CK_Z_ISEL(m, a, b) _mm512_mask_blend_epi32(m, b, a)
    #define CK_Z_IST(p, v) _mm512_storeu_si512((void*)(p), v)

    /* RoI-align forward, one RoI: bin b's sum over its taps t in [first[b], first[b+1])
       (pixel off[t], weight w[t]) as two interleaved partial sums (even and odd taps), added,
       then scaled (kind, as ck_scale_kind); into tb[b*C + c].  Returns the channels done. */
    #define CK_ALIGN_FWD_STEP(X, R)                                                         \\
        {                                                                                   \\
            X##_V a[R], e[R];                                                               \\
            int j;                                                                          \\
            for (j = 0; j < R; j++) { a[j] = X##_SET1(0.0f); e[j] = a[j]; }                 \\
            for (t = first[b]; t + 2 <= first[b + 1]; t += 2) {                             \\
                const float *p = img + off[t] * C + c, *q = img + off[t + 1] * C + c;       \\
                X##_V wa = X##_SET1(w[t]), wb = X##_SET1(w[t + 1]);                         \\
                for (j = 0; j < R; j++) {                                                   \\
                    a[j] = X##_ADD(a[j], X##_MUL(wa, X##_LD(p + j * X##_L)));               \\
                    e[j] = X##_ADD(e[j], X##_MUL(wb, X##_LD(q + j * X##_L)));               \\
                }                                                                           \\
            }                                                                               \\
            if (t < first[b + 1]) {                                                         \\
                const float* p = img + off[t] * C + c;                                      \\
                X##_V wa = X##_SET1(w[t]);                                                  \\
                for (j = 0; j < R; j++)                                                     \\
                    a[j] = X##_ADD(a[j], X##_MUL(wa, X##_LD(p + j * X##_L)));               \\
            }                                                                               \\
            for (j = 0; j < R; j++) {                                                       \\
                a[j] = X##_ADD(a[j], e[j]);                                                 \\
                if (kind == 1) a[j] = X##_MUL(a[j], X##_SET1(inv));                         \\
                else if (kind == 2) a[j] = X##_DIV(a[j], X##_SET1(fcount));                 \\
                X##_ST(tb + b * ld + (c - c0) + j * X##_L, a[j]);                            \\
            }                                                                               \\
        }
    #define CK_ALIGN_FWD_BODY(X)                                                            \\
        {                                                                                   \\
            ptrdiff_t b, t, c;                                                              \\
            for (b = 0; b < nbins; b++) {                                                   \\
                for (c = c0; c + X##_R * X##_L <= c1; c += X##_R * X##_L)                  \\
                    CK_ALIGN_FWD_STEP(X, X##_R)                                             \\
                for (; c + X##_L <= c1; c += X##_L) CK_ALIGN_FWD_STEP(X, 1)                 \\
            }                                                                               \\
            return c1 - (c1 - c0) % X##_L;                                                  \\
        }
    #define CK_ALIGN_FWD_ARGS const float* img, ptrdiff_t C, ptrdiff_t nbins,                \\
        const ptrdiff_t* first, const ptrdiff_t* off, const float* w, int kind, float inv,  \\
        float fcount, ptrdiff_t c0, ptrdiff_t c1, float* tb, ptrdiff_t ld

    /* Adjoint, one RoI, cb channels: gb (the image's (H*W, cb) gradient block) +=
       w[t] * g[b] for every tap of every bin, in tap order; g = gt + b*cb (scaled grads). */
    #define CK_ALIGN_BWD_STEP(X, R)                                                         \\
        {                                                                                   \\
            int j;                                                                          \\
            for (j = 0; j < R; j++)                                                         \\
                X##_ST(r + c + j * X##_L, X##_ADD(X##_LD(r + c + j * X##_L),                \\
                                                  X##_MUL(X##_LD(g + c + j * X##_L), wt))); \\
        }
    #define CK_ALIGN_BWD_BODY(X)                                                            \\
        {                                                                                   \\
            ptrdiff_t b, t, c;                                                              \\
            for (b = 0; b < nbins; b++) {                                                   \\
                const float* g = gt + b * cb;                                               \\
                for (t = first[b]; t < first[b + 1]; t++) {                                 \\
                    float* r = gb + off[t] * cb;                                            \\
                    X##_V wt = X##_SET1(w[t]);                                              \\
                    for (c = 0; c + 4 * X##_L <= cb; c += 4 * X##_L) CK_ALIGN_BWD_STEP(X, 4) \\
                    for (; c + X##_L <= cb; c += X##_L) CK_ALIGN_BWD_STEP(X, 1)             \\
                }                                                                           \\
            }                                                                               \\
            return cb - cb % X##_L;                                                         \\
        }
    #define CK_ALIGN_BWD_ARGS float* gb, ptrdiff_t cb, ptrdiff_t nbins,                      \\
        const ptrdiff_t* first, const ptrdiff_t* off, const float* w, const float* gt

    /* RoI max pool, one RoI: each non-empty bin scanned in row-major order with a strict '>'
       from -FLT_MAX / index -1 (first maximum wins, NaN never does), R vectors of channels at
       a time; pixel indices ride in int32 lanes (the caller checks H*W < 2**31). */
    #define CK_POOL_STEP(X, R)                                                              \\
        {                                                                                   \\
            X##_V v[R];                                                                     \\
            X##_IV ix[R];                                                                   \\
            int j;                                                                          \\
            for (j = 0; j < R; j++) { v[j] = X##_SET1(-FLT_MAX); ix[j] = X##_ISET1(-1); }   \\
            for (h = hs[p]; h < he[p]; h++) {                                               \\
                for (x = ws[q]; x < we[q]; x++) {                                           \\
                    const float* s = img + (h * W + x) * C + c;                             \\
                    X##_IV pix = X##_ISET1((int)(h * W + x));                               \\
                    for (j = 0; j < R; j++) {                                               \\
                        X##_V u = X##_LD(s + j * X##_L);                                    \\
                        X##_M m = X##_GT(u, v[j]);                                          \\
                        v[j] = X##_SEL(m, u, v[j]);                                         \\
                        ix[j] = X##_ISEL(m, pix, ix[j]);                                    \\
                    }                                                                       \\
                }                                                                           \\
            }                                                                               \\
            for (j = 0; j < R; j++) {                                                       \\
                X##_ST(tb + b * ld + (c - c0) + j * X##_L, v[j]);                           \\
                X##_IST(ti + b * ld + (c - c0) + j * X##_L, ix[j]);                         \\
            }                                                                               \\
        }
    #define CK_POOL_BODY(X)                                                                 \\
        {                                                                                   \\
            ptrdiff_t p, q, h, x, c, b;                                                     \\
            for (p = 0; p < ph; p++) {                                                      \\
                for (q = 0; q < pw; q++) {                                                  \\
                    b = p * pw + q;                                                         \\
                    if (he[p] <= hs[p] || we[q] <= ws[q]) continue;                         \\
                    for (c = c0; c + X##_R * X##_L <= c1; c += X##_R * X##_L)              \\
                        CK_POOL_STEP(X, X##_R)                                              \\
                    for (; c + X##_L <= c1; c += X##_L) CK_POOL_STEP(X, 1)                  \\
                }                                                                           \\
            }                                                                               \\
            return c1 - (c1 - c0) % X##_L;                                                  \\
        }
    #define CK_POOL_ARGS const float* img, ptrdiff_t W, ptrdiff_t C, ptrdiff_t ph,           \\
        ptrdiff_t pw, const ptrdiff_t* hs, const ptrdiff_t* he, const ptrdiff_t* ws,        \\
        const ptrdiff_t* we, ptrdiff_t c0, ptrdiff_t c1, float* tb, int32_t* ti, ptrdiff_t ld

    #ifdef CK_ROI_SSE2
    static ptrdiff_t ck_align_fwd_x(CK_ALIGN_FWD_ARGS) CK_ALIGN_FWD_BODY(CK_X)
    static ptrdiff_t ck_align_bwd_x(CK_ALIGN_BWD_ARGS) CK_ALIGN_BWD_BODY(CK_X)
    static ptrdiff_t ck_pool_x(CK_POOL_ARGS) CK_POOL_BODY(CK_X)
    #endif
    #ifdef CK_ROI_WIDE
    __attribute__((target("avx2")))
    static ptrdiff_t ck_align_fwd_y(CK_ALIGN_FWD_ARGS) CK_ALIGN_FWD_BODY(CK_Y)
    __attribute__((target("avx2")))
    static ptrdiff_t ck_align_bwd_y(CK_ALIGN_BWD_ARGS) CK_ALIGN_BWD_BODY(CK_Y)
    __attribute__((target("avx2")))
    static ptrdiff_t ck_pool_y(CK_POOL_ARGS) CK_POOL_BODY(CK_Y)
    __attribute__((target("avx512f")))
    static ptrdiff_t ck_align_fwd_z(CK_ALIGN_FWD_ARGS) CK_ALIGN_FWD_BODY(CK_Z)
    __attribute__((target("avx512f")))
    static ptrdiff_t ck_align_bwd_z(CK_ALIGN_BWD_ARGS) CK_ALIGN_BWD_BODY(CK_Z)
    __attribute__((target("avx512f")))
    static ptrdiff_t ck_pool_z(CK_POOL_ARGS) CK_POOL_BODY(CK_Z)
    #endif

    /* dst[c*ldd + r] = op(src[r*lds + c]) for r < rows, c < cols, op: x * inv (kind 1),
       x / fcount (kind 2), x (else) -- a RoI's grad block is transposed to bin-major and
       divided by the sample count in one pass.  8x8 register blocks (AVX2), then 4x4 (SSE2),
       then single values; columns outer (each block of dst rows is written as one run). */
    #define CK_TR_OP(v) (kind == 1 ? (v) * inv : kind == 2 ? (v) / fcount : (v))
    #ifdef CK_ROI_WIDE
    __attribute__((target("avx2")))
    static ptrdiff_t ck_transpose8(const float* src, ptrdiff_t lds, ptrdiff_t rows,
                                   ptrdiff_t cols, float* dst, ptrdiff_t ldd, int kind,
                                   float inv, float fcount) {
        ptrdiff_t c = 0, r, i;
        __m256 m = _mm256_set1_ps(kind == 1 ? inv : fcount);
        for (; c + 8 <= cols; c += 8) {
            for (r = 0; r + 8 <= rows; r += 8) {
                __m256 a[8], t[8], u[8];
                for (i = 0; i < 8; i++) a[i] = _mm256_loadu_ps(src + (r + i) * lds + c);
                for (i = 0; i < 8; i += 2) {
                    t[i] = _mm256_unpacklo_ps(a[i], a[i + 1]);
                    t[i + 1] = _mm256_unpackhi_ps(a[i], a[i + 1]);
                }
                for (i = 0; i < 8; i += 4) {
                    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
                    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
                    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
                    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
                }
                for (i = 0; i < 4; i++) {
                    a[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
                    a[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
                }
                for (i = 0; i < 8; i++) {
                    if (kind == 1) a[i] = _mm256_mul_ps(a[i], m);
                    else if (kind == 2) a[i] = _mm256_div_ps(a[i], m);
                    _mm256_storeu_ps(dst + (c + i) * ldd + r, a[i]);
                }
            }
            for (; r < rows; r++)
                for (i = 0; i < 8; i++) dst[(c + i) * ldd + r] = CK_TR_OP(src[r * lds + c + i]);
        }
        return c;
    }
    #endif
    static void ck_transpose_sf(const float* src, ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t cols,
                                float* dst, ptrdiff_t ldd, int kind, float inv, float fcount) {
        ptrdiff_t r, c = 0, i;
    #ifdef CK_ROI_WIDE
        if (ck_simd_level() >= 1) c = ck_transpose8(src, lds, rows, cols, dst, ldd, kind, inv, fcount);
    #endif
    #ifdef CK_ROI_SSE2
        {
            __m128 m = _mm_set1_ps(kind == 1 ? inv : fcount);
            for (; c + 4 <= cols; c += 4) {
                for (r = 0; r + 4 <= rows; r += 4) {
                    __m128 v[4];
                    for (i = 0; i < 4; i++) v[i] = _mm_loadu_ps(src + (r + i) * lds + c);
                    _MM_TRANSPOSE4_PS(v[0], v[1], v[2], v[3]);
                    for (i = 0; i < 4; i++) {
                        if (kind == 1) v[i] = _mm_mul_ps(v[i], m);
                        else if (kind == 2) v[i] = _mm_div_ps(v[i], m);
                        _mm_storeu_ps(dst + (c + i) * ldd + r, v[i]);
                    }
                }
                for (; r < rows; r++)
                    for (i = 0; i < 4; i++) dst[(c + i) * ldd + r] = CK_TR_OP(src[r * lds + c + i]);
            }
        }
    #endif
        for (; c < cols; c++)
            for (r = 0; r < rows; r++)
                dst[c * ldd + r] = CK_TR_OP(src[r * lds + c]);
    }
    static void ck_transpose_f(const float* src, ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t cols,
                               float* dst, ptrdiff_t ldd) {
        ck_transpose_sf(src, lds, rows, cols, dst, ldd, 0, 1.0f, 1.0f);
    }
    /* The same for int32 -> int64 (pool argmax). */
    static void ck_transpose_i(const int32_t* src, ptrdiff_t lds, ptrdiff_t rows, ptrdiff_t cols,
                               int64_t* dst, ptrdiff_t ldd) {
        ptrdiff_t r, c = 0, i;
    #ifdef CK_ROI_SSE2
        for (; c + 4 <= cols; c += 4) {
            for (r = 0; r + 4 <= rows; r += 4) {
                __m128 v[4];
                for (i = 0; i < 4; i++) v[i] = _mm_loadu_ps((const float*)(src + (r + i) * lds + c));
                _MM_TRANSPOSE4_PS(v[0], v[1], v[2], v[3]);
                for (i = 0; i < 4; i++) {   /* sign-extend four int32 lanes to int64 */
                    __m128i x = _mm_castps_si128(v[i]), sgn = _mm_srai_epi32(x, 31);
                    _mm_storeu_si128((__m128i*)(dst + (c + i) * ldd + r), _mm_unpacklo_epi32(x, sgn));
                    _mm_storeu_si128((__m128i*)(dst + (c + i) * ldd + r + 2), _mm_unpackhi_epi32(x, sgn));
                }
            }
            for (; r < rows; r++)
                for (i = 0; i < 4; i++) dst[(c + i) * ldd + r] = src[r * lds + c + i];
        }
    #endif
        for (; c < cols; c++)
            for (r = 0; r < rows; r++)
                dst[c * ldd + r] = src[r * lds + c];
    }
    /* 1 when none of n floats is NaN/inf: an OR of (exponent bits + 1 ulp of exponent), whose
       top bit is set only by an all-ones exponent (integer ops, so it vectorises). */
    static int ck_all_finite_f(const float* a, ptrdiff_t n) {
        const uint32_t* u = (const uint32_t*)a;
        uint32_t m = 0;
        ptrdiff_t i;
        for (i = 0; i < n; i++) m |= (u[i] & 0x7f800000u) + 0x00800000u;
        return (m & 0x80000000u) == 0;
    }
    static int ck_all_finite_d(const double* a, ptrdiff_t n) {
        const uint64_t* u = (const uint64_t*)a;
        uint64_t m = 0;
        ptrdiff_t i;
        for (i = 0; i < n; i++) m |= (u[i] & 0x7ff0000000000000ull) + 0x0010000000000000ull;
        return (m & 0x8000000000000000ull) == 0;
    }
    /* dst = src (bytes), with non-temporal stores where dst is 16-byte aligned: a RoI's output
       block is written once and not read back here, so it need not be fetched into cache first
       (halves the memory traffic of the output).  Ends with a store fence. */
    static void ck_stream_copy(void* dst, const void* src, size_t bytes) {
    #ifdef CK_ROI_SSE2
        char* d = (char*)dst;
        const char* s = (const char*)src;
        size_t head = (16 - ((uintptr_t)d & 15)) & 15, i;
        if (head > bytes) head = bytes;
        memcpy(d, s, head);
        d += head; s += head; bytes -= head;
        for (i = 0; i + 16 <= bytes; i += 16)
            _mm_stream_si128((__m128i*)(d + i), _mm_loadu_si128((const __m128i*)(s + i)));
        memcpy(d + i, s + i, bytes - i);
        _mm_sfence();
    #else
        memcpy(dst, src, bytes);
    #endif
    }
    /* 64-byte aligned scratch (whole vectors never straddle a cache line); free with
       ck_free64 */
    static void* ck_malloc64(size_t n) {
        char* raw = (char*)malloc(n + 64 + sizeof(void*));
        char* p;
        if (raw == NULL) return NULL;
        p = (char*)(((uintptr_t)(raw + sizeof(void*)) + 63) & ~(uintptr_t)63);
        ((void**)p)[-1] = raw;
        return p;
    }
    static void ck_free64(void* p) {
        if (p != NULL) free(((void**)p)[-1]);
    }
    /* ---- the task runner the RoI drivers use instead of OpenMP regions ----
       fn(ctx, i, tid) for every i in [0, n), handed out `chunk` at a time (an atomic counter)
       to up to nthreads threads, tid in [0, nthreads) (0 is the caller).  Helper threads are
       started per call, detached; the caller works too, then sleeps (condition variable)
       until every task that was handed out is done -- it never waits for a helper that has
       not taken a task yet (on a busy machine one may not be scheduled before the work is
       over; it then finds nothing left and ends).  Nothing spins: libgomp spins at its
       barriers, and on a machine whose CPUs are all taken that burns the very share a
       descheduled partner needs (measured: 2 threads 2-3x slower than 1 there).  Without
       pthreads (Windows) OpenMP runs the same loop; without either, the caller runs it. */
    #if (defined(__unix__) || defined(__APPLE__)) && (defined(__GNUC__) || defined(__clang__))
    #include <pthread.h>
    #define CK_PTHREADS 1
    #endif
    #if defined(_OPENMP)
    #include <omp.h>
    #endif
    static int ck_force_omp = 0;
    #if defined(_MSC_VER)
    #include <intrin.h>
    #endif
    #define CK_MAX_THREADS 256
    typedef void (*ck_task_fn)(void* ctx, ptrdiff_t i, int tid);
    typedef struct {
        ck_task_fn fn;
        void* ctx;
        ptrdiff_t n, chunk;
        volatile ptrdiff_t next;    /* next task to hand out */
        volatile ptrdiff_t done;    /* tasks finished */
        volatile int refs;          /* the caller and the helpers still to end */
        int tid_next;               /* helpers' tids */
    #ifdef CK_PTHREADS
        pthread_mutex_t mu;
        pthread_cond_t cv;
    #endif
    } ck_loop_t;
    static ptrdiff_t ck_fetch_add(volatile ptrdiff_t* p, ptrdiff_t v) {
    #if defined(_MSC_VER)
        return (ptrdiff_t)_InterlockedExchangeAdd64((volatile long long*)p, v);
    #else
        return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);
    #endif
    }
    static void ck_loop_run(ck_loop_t* L, int tid) {
        for (;;) {
            ptrdiff_t i = ck_fetch_add(&L->next, L->chunk), e, k;
            if (i >= L->n) return;
            e = L->n - i > L->chunk ? i + L->chunk : L->n;
            for (k = i; k < e; k++) L->fn(L->ctx, k, tid);
    #ifdef CK_PTHREADS
            if (ck_fetch_add(&L->done, e - i) + (e - i) == L->n) {
                pthread_mutex_lock(&L->mu);     /* the last task: wake the caller */
                pthread_cond_signal(&L->cv);
                pthread_mutex_unlock(&L->mu);
            }
    #endif
        }
    }
    #ifdef CK_PTHREADS
    static void ck_loop_release(ck_loop_t* L) {
        if (__atomic_sub_fetch(&L->refs, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_destroy(&L->mu);
            pthread_cond_destroy(&L->cv);
            free(L);
        }
    }
    static void* ck_worker_main(void* arg) {
        ck_loop_t* L = (ck_loop_t*)arg;
        ck_loop_run(L, __atomic_add_fetch(&L->tid_next, 1, __ATOMIC_RELAXED));
        ck_loop_release(L);
        return NULL;
    }
    #endif
    static void ck_parallel_for(ptrdiff_t n, ptrdiff_t chunk, int nthreads, ck_task_fn fn,
                                void* ctx) {
        ptrdiff_t tasks;
        if (chunk < 1) chunk = 1;
        tasks = (n + chunk - 1) / chunk;
        if (nthreads > CK_MAX_THREADS) nthreads = CK_MAX_THREADS;
        if ((ptrdiff_t)nthreads > tasks) nthreads = (int)tasks;
    #if defined(CK_PTHREADS) && defined(_OPENMP)
        if (ck_force_omp && nthreads > 1) {
            ck_loop_t L1;
            L1.fn = fn; L1.ctx = ctx; L1.n = n; L1.chunk = chunk; L1.next = 0; L1.done = 0;
            pthread_mutex_init(&L1.mu, NULL);
            pthread_cond_init(&L1.cv, NULL);
            #pragma omp parallel num_threads(nthreads)
            ck_loop_run(&L1, omp_get_thread_num());
            pthread_mutex_destroy(&L1.mu);
            pthread_cond_destroy(&L1.cv);
            return;
        }
    #endif
    #if defined(CK_PTHREADS)
        if (nthreads > 1) {
            ck_loop_t* L = (ck_loop_t*)malloc(sizeof(ck_loop_t));
            pthread_attr_t attr;
            int i;
            if (L != NULL && pthread_attr_init(&attr) == 0) {
                L->fn = fn; L->ctx = ctx; L->n = n; L->chunk = chunk;
                L->next = 0; L->done = 0; L->refs = 1; L->tid_next = 0;
                pthread_mutex_init(&L->mu, NULL);
                pthread_cond_init(&L->cv, NULL);
                pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
                for (i = 1; i < nthreads; i++) {   /* a helper that cannot start is not needed */
                    pthread_t th;
                    __atomic_add_fetch(&L->refs, 1, __ATOMIC_ACQ_REL);
                    if (pthread_create(&th, &attr, ck_worker_main, L) != 0) {
                        __atomic_sub_fetch(&L->refs, 1, __ATOMIC_ACQ_REL);
                        break;
                    }
                }
                pthread_attr_destroy(&attr);
                ck_loop_run(L, 0);
                pthread_mutex_lock(&L->mu);
                while (__atomic_load_n(&L->done, __ATOMIC_ACQUIRE) < n)
                    pthread_cond_wait(&L->cv, &L->mu);
                pthread_mutex_unlock(&L->mu);
                ck_loop_release(L);
                return;
            }
            free(L);
        }
        {
            ck_loop_t L1;
            L1.fn = fn; L1.ctx = ctx; L1.n = n; L1.chunk = chunk; L1.next = 0; L1.done = 0;
            pthread_mutex_init(&L1.mu, NULL);
            pthread_cond_init(&L1.cv, NULL);
            ck_loop_run(&L1, 0);
            pthread_mutex_destroy(&L1.mu);
            pthread_cond_destroy(&L1.cv);
        }
    #else
        {
            ck_loop_t L;
            L.fn = fn; L.ctx = ctx; L.n = n; L.chunk = chunk; L.next = 0; L.done = 0;
    #if defined(_OPENMP)
            if (nthreads < 1) nthreads = 1;
            #pragma omp parallel num_threads(nthreads)
            ck_loop_run(&L, omp_get_thread_num());
    #else
            ck_loop_run(&L, 0);
    #endif
        }
    #endif
    }


    /* The forward kernels work on blocks of CK_CHUNK channels: a block's (bins, channels)
       results sit in an L1-sized scratch, are transposed into a second one and streamed out to
       the (C, bins) output, whose rows of that block are one contiguous run. */
    #define CK_CHUNK 128
    #define CK_LD 144       /* CK_CHUNK rounded up to an odd multiple of 16 floats (no L1 set
                               conflicts when read down a column) */
    /* bytes of scratch a thread needs for ck_align_roi_f / ck_pool_roi_f */
    static size_t ck_roi_scratch_bytes(ptrdiff_t nbins) {
        return (size_t)nbins * (CK_LD * (sizeof(float) + sizeof(int32_t))
                                + CK_CHUNK * (sizeof(float) + sizeof(int64_t))) + 64;
    }

    /* One RoI's align forward: taps as in CK_ALIGN_FWD_BODY, y the RoI's (C, nbins) output. */
    static void ck_align_roi_f(const float* img, ptrdiff_t C, ptrdiff_t nbins,
                               const ptrdiff_t* first, const ptrdiff_t* off, const float* w,
                               float fcount, double count, void* scratch, float* y) {
        int kind = ck_scale_kind(fcount, count), lv = ck_simd_level();
        float inv = 1.0f / fcount;
        float* tb = (float*)scratch;
        float* tr = tb + nbins * CK_LD;
        ptrdiff_t c0, c1, c, b, t;
        (void)lv;
        for (c0 = 0; c0 < C; c0 = c1) {
            c1 = C - c0 > CK_CHUNK ? c0 + CK_CHUNK : C;
            c = c0;
    #ifdef CK_ROI_WIDE
            if (lv == 2) c = ck_align_fwd_z(img, C, nbins, first, off, w, kind, inv, fcount, c0, c1, tb, CK_LD);
            else if (lv == 1) c = ck_align_fwd_y(img, C, nbins, first, off, w, kind, inv, fcount, c0, c1, tb, CK_LD);
            else
    #endif
    #ifdef CK_ROI_SSE2
            c = ck_align_fwd_x(img, C, nbins, first, off, w, kind, inv, fcount, c0, c1, tb, CK_LD);
    #endif
            for (; c < c1; c++) {       /* the lanes' arithmetic, one channel at a time */
                for (b = 0; b < nbins; b++) {
                    float a = 0, e = 0;
                    for (t = first[b]; t + 2 <= first[b + 1]; t += 2) {
                        a = a + w[t] * img[off[t] * C + c];
                        e = e + w[t + 1] * img[off[t + 1] * C + c];
                    }
                    if (t < first[b + 1]) a = a + w[t] * img[off[t] * C + c];
                    a = a + e;
                    tb[b * CK_LD + c - c0] = kind == 1 ? a * inv : kind == 2 ? a / fcount : a;
                }
            }
            if (kind == 0)
                for (b = 0; b < nbins; b++)
                    for (c = 0; c < c1 - c0; c++)
                        tb[b * CK_LD + c] = (float)((double)tb[b * CK_LD + c] / count);
            ck_transpose_f(tb, CK_LD, nbins, c1 - c0, tr, nbins);
            ck_stream_copy(y + c0 * nbins, tr, (size_t)(nbins * (c1 - c0)) * sizeof(float));
        }
    }

    /* One RoI's align backward for a block of cb channels: gyk is the RoI's grad at the
       block's first channel ((cb, nbins), rows of nbins), gt a (nbins, cb) scratch, gb the
       image's (H*W, cb) gradient block. */
    static void ck_align_roi_bwd_f(float* gb, ptrdiff_t cb, ptrdiff_t nbins,
                                   const ptrdiff_t* first, const ptrdiff_t* off, const float* w,
                                   float fcount, double count, const float* gyk, float* gt,
                                   const float* next) {
        int kind = ck_scale_kind(fcount, count), lv = ck_simd_level();
        float inv = 1.0f / fcount;
        ptrdiff_t c = 0, b, t, n = nbins * cb, b0, b1, pf = 0;
        (void)lv;
        ck_transpose_sf(gyk, nbins, cb, nbins, gt, cb, kind, inv, fcount);
        if (kind == 0)
            for (t = 0; t < n; t++) gt[t] = (float)((double)gt[t] / count);
        /* bins in 8 slices; between them an eighth of the next RoI's grad block is asked for,
           so its memory reads overlap this RoI's arithmetic */
        for (b0 = 0; b0 < nbins; b0 = b1) {
            b1 = b0 + (nbins + 7) / 8 < nbins ? b0 + (nbins + 7) / 8 : nbins;
    #if defined(__GNUC__) || defined(__clang__)
            if (next != NULL)
                for (; pf < n * (ptrdiff_t)sizeof(float) * b1 / nbins; pf += 64)
                    __builtin_prefetch((const char*)next + pf, 0, 3);
    #endif
            c = 0;
    #ifdef CK_ROI_WIDE
            if (lv == 2) c = ck_align_bwd_z(gb, cb, b1 - b0, first + b0, off, w, gt + b0 * cb);
            else if (lv == 1) c = ck_align_bwd_y(gb, cb, b1 - b0, first + b0, off, w, gt + b0 * cb);
            else
    #endif
    #ifdef CK_ROI_SSE2
            c = ck_align_bwd_x(gb, cb, b1 - b0, first + b0, off, w, gt + b0 * cb);
    #endif
        }
        for (; c < cb; c++)
            for (b = 0; b < nbins; b++)
                for (t = first[b]; t < first[b + 1]; t++)
                    gb[off[t] * cb + c] += gt[b * cb + c] * w[t];
    }

    /* One RoI's max pool on the NHWC map: y/am the RoI's (C, nbins) outputs (an empty bin
       gives 0 and -1); blocks of CK_CHUNK channels as in ck_align_roi_f. */
    static void ck_pool_roi_f(const float* img, ptrdiff_t W, ptrdiff_t C, ptrdiff_t ph,
                              ptrdiff_t pw, const ptrdiff_t* hs, const ptrdiff_t* he,
                              const ptrdiff_t* ws, const ptrdiff_t* we, void* scratch,
                              float* y, int64_t* am) {
        ptrdiff_t nb = ph * pw, c0, c1, c, p, q, x, b;
        float* tb = (float*)scratch;
        int32_t* ti = (int32_t*)(tb + nb * CK_LD);
        float* tr = (float*)(ti + nb * CK_LD);
        int64_t* tri = (int64_t*)(((uintptr_t)(tr + nb * CK_CHUNK) + 15) & ~(uintptr_t)15);
        int lv = ck_simd_level();
        (void)lv;
        for (c0 = 0; c0 < C; c0 = c1) {
            c1 = C - c0 > CK_CHUNK ? c0 + CK_CHUNK : C;
            c = c0;
    #ifdef CK_ROI_WIDE
            if (lv == 2) c = ck_pool_z(img, W, C, ph, pw, hs, he, ws, we, c0, c1, tb, ti, CK_LD);
            else if (lv == 1) c = ck_pool_y(img, W, C, ph, pw, hs, he, ws, we, c0, c1, tb, ti, CK_LD);
            else
    #endif
    #ifdef CK_ROI_SSE2
            c = ck_pool_x(img, W, C, ph, pw, hs, he, ws, we, c0, c1, tb, ti, CK_LD);
    #endif
            for (p = 0; p < ph; p++) {
                for (q = 0; q < pw; q++) {
                    b = p * pw + q;
                    if (he[p] <= hs[p] || we[q] <= ws[q]) {
                        for (x = 0; x < c1 - c0; x++) { tb[b * CK_LD + x] = 0; ti[b * CK_LD + x] = -1; }
                        continue;
                    }
                    for (x = c; x < c1; x++) {
                        float best = -FLT_MAX;
                        int32_t bi = -1;
                        ptrdiff_t hh, ww;
                        for (hh = hs[p]; hh < he[p]; hh++)
                            for (ww = ws[q]; ww < we[q]; ww++)
                                if (img[(hh * W + ww) * C + x] > best) {
                                    best = img[(hh * W + ww) * C + x];
                                    bi = (int32_t)(hh * W + ww);
                                }
                        tb[b * CK_LD + x - c0] = best;
                        ti[b * CK_LD + x - c0] = bi;
                    }
                }
            }
            ck_transpose_f(tb, CK_LD, nb, c1 - c0, tr, nb);
            ck_stream_copy(y + c0 * nb, tr, (size_t)(nb * (c1 - c0)) * sizeof(float));
            ck_transpose_i(ti, CK_LD, nb, c1 - c0, tri, nb);
            ck_stream_copy(am + c0 * nb, tri, (size_t)(nb * (c1 - c0)) * sizeof(int64_t));
        }
    }
    #if defined(__GNUC__) && !defined(__clang__)
    #pragma GCC pop_options
    #endif
    """
    int ck_set_simd_cap(int cap) noexcept nogil
    int ck_force_omp
    int ck_all_finite_f(const float* a, Py_ssize_t n) noexcept nogil
    int ck_all_finite_d(const double* a, Py_ssize_t n) noexcept nogil
    void ck_transpose_f(const float* src, Py_ssize_t lds, Py_ssize_t rows, Py_ssize_t cols,
                        float* dst, Py_ssize_t ldd) noexcept nogil
    int ck_simd_level() noexcept nogil
    int ck_align_simd() noexcept nogil
    size_t ck_roi_scratch_bytes(Py_ssize_t nbins) noexcept nogil
    void* ck_malloc64(size_t n) noexcept nogil
    ctypedef void (*ck_task_fn)(void* ctx, Py_ssize_t i, int tid) noexcept nogil
    void ck_parallel_for(Py_ssize_t n, Py_ssize_t chunk, int nthreads, ck_task_fn fn,
                         void* ctx) noexcept nogil
    void ck_free64(void* p) noexcept nogil
    void ck_pool_roi_f(const float* img, Py_ssize_t W, Py_ssize_t C, Py_ssize_t ph,
                       Py_ssize_t pw, const Py_ssize_t* hs, const Py_ssize_t* he,
                       const Py_ssize_t* ws, const Py_ssize_t* we, void* scratch,
                       float* y, int64_t* am) noexcept nogil
    void ck_align_roi_f(const float* img, Py_ssize_t C, Py_ssize_t nbins, const Py_ssize_t* first,
                        const Py_ssize_t* off, const float* w, float fcount, double count,
                        void* scratch, float* y) noexcept nogil
    void ck_align_roi_bwd_f(float* gb, Py_ssize_t cb, Py_ssize_t nbins, const Py_ssize_t* first,
                            const Py_ssize_t* off, const float* w, float fcount, double count,
                            const float* gyk, float* gt, const float* next) noexcept nogil


cdef struct _Merged:
    # one axis of one RoI: per bin, the distinct pixels its samples touch and their summed
    # bilinear weights (bin p: entries [first[p], first[p+1]))
    Py_ssize_t cap
    Py_ssize_t* first
    Py_ssize_t* idx
    void* w


cdef _Merged* _merged_new(Py_ssize_t pooled) noexcept nogil:
    cdef _Merged* m = <_Merged*>malloc(sizeof(_Merged))
    if m == NULL:
        return NULL
    m.cap = 0
    m.idx = NULL
    m.w = NULL
    m.first = <Py_ssize_t*>malloc((pooled + 1) * sizeof(Py_ssize_t))
    if m.first == NULL:
        free(m)
        return NULL
    return m


cdef void _merged_free(_Merged* m) noexcept nogil:
    if m != NULL:
        free(m.first)
        free(m.idx)
        free(m.w)
        free(m)


cdef int _merge_axis(_Taps* t, Py_ssize_t pooled, _Merged* m, bint merge,
                     floating kind) noexcept nogil:
    """Per bin, the pixels its samples' corners touch, with weights.  ``merge``: sum the
    weights of corners that land on the same pixel (both corners of a snapped sample,
    neighbouring samples in one cell) -- only for finite data, since torchvision multiplies
    every corner separately and 0 * inf is NaN where (0 + w) * inf is not.  Without merging,
    the product of the two axes' lists is exactly torchvision's four corners of every sample,
    with its weight products.  ``kind`` only selects the data type.  0: no memory."""
    cdef Py_ssize_t need = 2 * t.first[pooled] + 1, n = 0, p, a, j, e, px
    cdef floating wt
    cdef floating* mw
    if need > m.cap:
        free(m.idx)
        free(m.w)
        m.idx = <Py_ssize_t*>malloc(need * sizeof(Py_ssize_t))
        m.w = malloc(need * sizeof(floating))
        m.cap = need
        if m.idx == NULL or m.w == NULL:
            m.cap = 0
            return 0
    mw = <floating*>m.w
    for p in range(pooled):
        m.first[p] = n
        for a in range(t.first[p], t.first[p + 1]):
            for e in range(2):
                px = t.low[a] if e == 0 else t.high[a]
                wt = (<floating*>t.w_low)[a] if e == 0 else (<floating*>t.w_high)[a]
                if merge:
                    for j in range(m.first[p], n):
                        if m.idx[j] == px:
                            mw[j] += wt
                            break
                    else:
                        m.idx[n] = px
                        mw[n] = wt
                        n += 1
                else:
                    m.idx[n] = px
                    mw[n] = wt
                    n += 1
    m.first[pooled] = n
    return 1


cdef void _taps_fill(_Merged* my, _Merged* mx, Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw,
                     Py_ssize_t k, Py_ssize_t* first, Py_ssize_t* off, floating* w) noexcept nogil:
    """Bin (p, q) reads pixel (r, c) (off = r*W + c) with weight wy[r] * wx[c] for every
    distinct row r and column c its samples touch; taps from index k on, bin b's are
    [first[b], first[b+1])."""
    cdef Py_ssize_t p, q, a, b, a0, a1, b0, b1, row
    cdef const floating* wy = <const floating*>my.w
    cdef const floating* wx = <const floating*>mx.w
    cdef const Py_ssize_t* iy = my.idx
    cdef const Py_ssize_t* ix = mx.idx
    cdef const Py_ssize_t* fy = my.first
    cdef const Py_ssize_t* fx = mx.first
    cdef floating v
    first[0] = k
    for p in range(ph):
        a0 = fy[p]
        a1 = fy[p + 1]
        for q in range(pw):
            b0 = fx[q]
            b1 = fx[q + 1]
            for a in range(a0, a1):
                row = iy[a] * W
                v = wy[a]
                for b in range(b0, b1):
                    off[k + b - b0] = row + ix[b]
                    w[k + b - b0] = v * wx[b]
                k += b1 - b0
            first[p * pw + q + 1] = k


cdef void _bins_forward(const floating* img, Py_ssize_t C, Py_ssize_t nbins,
                        const Py_ssize_t* first, const Py_ssize_t* off, const floating* w,
                        double count, floating* acc, floating* y) noexcept nogil:
    """One RoI, all channels: img is its image in HWC, y its (C, nbins) output; the bin's
    taps summed, then divided by count once.  (ck_align_roi_f is the float32 kernel.)"""
    cdef Py_ssize_t b, t, c
    cdef floating wt, fcount = <floating>count
    cdef const floating* r
    for b in range(nbins):
        for c in range(C):
            acc[c] = 0
        for t in range(first[b], first[b + 1]):
            wt = w[t]
            r = img + off[t] * C
            for c in range(C):
                acc[c] = acc[c] + wt * r[c]
        if fcount == count:
            # count is exact in the data type: one division there is the same correctly
            # rounded quotient as dividing in double and rounding (the reference's way)
            for c in range(C):
                y[c * nbins + b] = acc[c] / fcount
        else:
            for c in range(C):
                y[c * nbins + b] = <floating>(<double>acc[c] / count)


cdef void _bins_backward(floating* gb, Py_ssize_t cb, Py_ssize_t nbins,
                         const Py_ssize_t* first, const Py_ssize_t* off, const floating* w,
                         double count, const floating* gyk, floating* g) noexcept nogil:
    """Adjoint of _bins_forward for cb channels: gyk the RoI's grad at the block's first
    channel ((cb, nbins)), gb its image's (H*W, cb) gradient block."""
    cdef Py_ssize_t b, t, c
    cdef floating wt, fcount = <floating>count
    cdef floating* r
    for b in range(nbins):
        if first[b + 1] == first[b]:
            continue
        for c in range(cb):
            if fcount == count:
                g[c] = gyk[c * nbins + b] / fcount
            else:
                g[c] = <floating>(<double>gyk[c * nbins + b] / count)
        for t in range(first[b], first[b + 1]):
            wt = w[t]
            r = gb + off[t] * cb
            for c in range(cb):
                r[c] += g[c] * wt


cdef int _separable(const floating* img, floating* gimg, Py_ssize_t W, Py_ssize_t C,
                    Py_ssize_t c0, Py_ssize_t c1, _Taps* ty, _Taps* tx, Py_ssize_t ph,
                    Py_ssize_t pw, double count, floating* y, const floating* gy,
                    bint backward) noexcept nogil:
    """RoI align of one RoI with a dense sampling grid (many samples per bin), channels
    [c0, c1), by separability: interpolate along x first, R[r, q] = sum over bin q's x-samples
    of (w_low * X[r, low] + w_high * X[r, high]) for every row r the y-samples touch, then along
    y.  O(rows * x-samples + y-samples) per channel instead of O(y-samples * x-samples).
    A NaN/inf under a zero weight still spreads as in torchvision (0 * NaN is NaN either way).
    Backward (gimg, gy): the adjoint, in a fixed order.  Returns 0 when memory ran out."""
    cdef Py_ssize_t r0 = PY_SSIZE_T_MAX, r1 = 0, nr, nc = c1 - c0, a, b, p, q, r, c, ny = ty.first[ph]
    cdef const floating* wly = <const floating*>ty.w_low
    cdef const floating* why = <const floating*>ty.w_high
    cdef const floating* wlx = <const floating*>tx.w_low
    cdef const floating* whx = <const floating*>tx.w_high
    cdef floating* R
    cdef floating* acc
    cdef floating* Rl
    cdef floating* Rh
    cdef floating* x1
    cdef floating* x2
    cdef const floating* s1
    cdef const floating* s2
    cdef floating wl, wh, fcount = <floating>count
    for a in range(ny):
        r0 = min(r0, ty.low[a])
        r1 = max(r1, ty.high[a] + 1)
    if r1 <= r0 or nc <= 0:
        if not backward:
            for c in range(c0, c1):
                for p in range(ph * pw):
                    y[c * ph * pw + p] = 0
        return 1
    nr = r1 - r0
    R = <floating*>malloc((nr * pw + 1) * nc * sizeof(floating))
    if R == NULL:
        return 0
    acc = R + nr * pw * nc
    memset(R, 0, nr * pw * nc * sizeof(floating))
    if not backward:
        for r in range(r0, r1):
            for q in range(pw):
                Rl = R + ((r - r0) * pw + q) * nc
                for b in range(tx.first[q], tx.first[q + 1]):
                    s1 = img + (r * W + tx.low[b]) * C + c0
                    s2 = img + (r * W + tx.high[b]) * C + c0
                    wl = wlx[b]
                    wh = whx[b]
                    for c in range(nc):
                        Rl[c] = Rl[c] + (wl * s1[c] + wh * s2[c])
        for p in range(ph):
            for q in range(pw):
                for c in range(nc):
                    acc[c] = 0
                for a in range(ty.first[p], ty.first[p + 1]):
                    Rl = R + ((ty.low[a] - r0) * pw + q) * nc
                    Rh = R + ((ty.high[a] - r0) * pw + q) * nc
                    wl = wly[a]
                    wh = why[a]
                    for c in range(nc):
                        acc[c] = acc[c] + (wl * Rl[c] + wh * Rh[c])
                for c in range(nc):
                    if fcount == count:
                        y[(c0 + c) * ph * pw + p * pw + q] = acc[c] / fcount
                    else:
                        y[(c0 + c) * ph * pw + p * pw + q] = <floating>(<double>acc[c] / count)
    else:
        for p in range(ph):
            for q in range(pw):
                if ty.first[p + 1] == ty.first[p] or tx.first[q + 1] == tx.first[q]:
                    continue
                for c in range(nc):
                    if fcount == count:
                        acc[c] = gy[(c0 + c) * ph * pw + p * pw + q] / fcount
                    else:
                        acc[c] = <floating>(<double>gy[(c0 + c) * ph * pw + p * pw + q] / count)
                for a in range(ty.first[p], ty.first[p + 1]):
                    Rl = R + ((ty.low[a] - r0) * pw + q) * nc
                    Rh = R + ((ty.high[a] - r0) * pw + q) * nc
                    wl = wly[a]
                    wh = why[a]
                    for c in range(nc):
                        Rl[c] += wl * acc[c]
                    for c in range(nc):
                        Rh[c] += wh * acc[c]
        for r in range(r0, r1):
            for q in range(pw):
                Rl = R + ((r - r0) * pw + q) * nc
                for b in range(tx.first[q], tx.first[q + 1]):
                    x1 = gimg + (r * W + tx.low[b]) * C + c0
                    x2 = gimg + (r * W + tx.high[b]) * C + c0
                    wl = wlx[b]
                    wh = whx[b]
                    for c in range(nc):
                        x1[c] += wl * Rl[c]
                    for c in range(nc):
                        x2[c] += wh * Rl[c]
    free(R)
    return 1


cdef struct _Geo:
    # one thread's scratch for the geometry of one RoI
    _Taps* ty
    _Taps* tx
    _Merged* my
    _Merged* mx


cdef _Geo* _geo_new(Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t itemsize) noexcept nogil:
    """A thread's geometry scratch (NULL when memory ran out)."""
    cdef _Geo* g = <_Geo*>malloc(sizeof(_Geo))
    if g == NULL:
        return NULL
    g.ty = _taps_new(ph, itemsize)
    g.tx = _taps_new(pw, itemsize)
    g.my = _merged_new(ph)
    g.mx = _merged_new(pw)
    if g.ty == NULL or g.tx == NULL or g.my == NULL or g.mx == NULL:
        _geo_free(g)
        return NULL
    return g


cdef void _geo_free(_Geo* g) noexcept nogil:
    if g != NULL:
        _taps_free(g.ty)
        _taps_free(g.tx)
        _merged_free(g.my)
        _merged_free(g.mx)
        free(g)


cdef struct _RoiTab:
    # one RoI's bilinear taps: bin b reads pixel off[t] (h*W + w) with weight w[t] for t in
    # [first[b], first[b+1]); a dense RoI (grid above 8 x 8) has none and goes by
    # separability; count is its bins' sample count
    Py_ssize_t* first
    Py_ssize_t* off
    void* w
    Py_ssize_t cap
    double count
    bint dense


cdef _RoiTab* _tab_new(Py_ssize_t nbins) noexcept nogil:
    """A thread's table for one RoI at a time (NULL when memory ran out)."""
    cdef _RoiTab* t = <_RoiTab*>calloc(1, sizeof(_RoiTab))
    if t == NULL:
        return NULL
    t.first = <Py_ssize_t*>malloc((nbins + 1) * sizeof(Py_ssize_t))
    if t.first == NULL:
        free(t)
        return NULL
    return t


cdef void _tab_free(_RoiTab* t) noexcept nogil:
    if t != NULL:
        free(t.first)
        free(t.off)
        free(t.w)
        free(t)


cdef int _roi_table(const floating* roi, floating scale, floating offset, bint aligned,
                    Py_ssize_t sampling_ratio, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t H,
                    Py_ssize_t W, bint merge, _Geo* g, _RoiTab* t) noexcept nogil:
    """One RoI's samples, per bin and axis the distinct pixels touched (with summed weights
    when ``merge``), laid out as taps in t (grown as needed; g.ty/g.tx keep the per-axis
    samples, which the separable route of a dense RoI uses).  0 when memory ran out."""
    cdef Py_ssize_t n, b, nbins = ph * pw
    if not _roi_taps(roi, scale, offset, aligned, sampling_ratio, ph, pw, H, W, g.ty, g.tx,
                     &t.count):
        return 0
    t.dense = g.ty.first[ph] * g.tx.first[pw] > 64 * nbins
    if t.dense:
        for b in range(nbins + 1):
            t.first[b] = 0
        return 1
    if not (_merge_axis(g.ty, ph, g.my, merge, <floating>0)
            and _merge_axis(g.tx, pw, g.mx, merge, <floating>0)):
        return 0
    n = g.my.first[ph] * g.mx.first[pw]
    if n > t.cap or t.off == NULL:
        free(t.off)
        free(t.w)
        t.off = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t) + 1)
        t.w = malloc(n * sizeof(floating) + 1)
        t.cap = n
        if t.off == NULL or t.w == NULL:
            t.cap = 0
            return 0
    _taps_fill(g.my, g.mx, W, ph, pw, 0, t.first, t.off, <floating*>t.w)
    return 1


cdef inline bint _nhwc_row(const floating* x, floating* xt, Py_ssize_t C, Py_ssize_t H,
                           Py_ssize_t W, Py_ssize_t nh) noexcept nogil:
    """Row h of image n (nh = n*H + h) to NHWC: xt[n, h] (W, C) = x[n, :, h] (C, W).
    Returns 1 when it holds no NaN/inf."""
    cdef Py_ssize_t n = nh // H, h = nh % H, w, blk, c0, cc
    cdef const floating* src = x + n * C * H * W + h * W
    cdef floating* dst = xt + nh * W * C
    if floating is float:
        ck_transpose_f(src, H * W, C, W, dst, C)
        return ck_all_finite_f(dst, W * C)
    else:
        for blk in range((C + 15) // 16):   # 16-channel blocks keep the writes in cache
            c0 = blk * 16
            for w in range(W):
                for cc in range(c0, min(c0 + 16, C)):
                    dst[w * C + cc] = src[cc * H * W + w]
        return ck_all_finite_d(dst, W * C)


cdef struct _Job:
    # one roi_align / roi_pool call as seen by its tasks (arrays as raw pointers; the data
    # type is float64 when dbl, else float32)
    bint dbl
    const void* x           # forward: the map (N, C, H, W); backward: grad_y (K, C, ph, pw)
    void* xt                # forward: the NHWC copy (N, H, W, C)
    const void* rois        # (K, 5)
    void* y                 # forward: y (K, C, ph, pw); backward: grad_x (N, C, H, W)
    int64_t* am             # roi_pool: argmax (K, C, ph, pw)
    unsigned char* row_finite
    Py_ssize_t N, C, H, W, K, ph, pw, sr, CB
    double scale
    bint aligned
    _RoiTab* tabs           # roi_align backward: every RoI's taps
    # per thread (index tid), made on first use
    void** buf
    void** buf2
    _Geo** geo
    _RoiTab** tab
    Py_ssize_t* bad
    const Py_ssize_t* order     # forwards: the order the RoIs are handed out in
    int failed


def _local_order(rois):
    """RoIs by image, then by the row of their centre: handed out in this order, RoIs that
    follow each other read mostly the same pixels, which are then still in cache (~10% of a
    forward on one thread).  Outputs do not depend on it (each RoI is written alone)."""
    r = np.asarray(rois)
    return np.lexsort((r[:, 1] + r[:, 3], r[:, 2] + r[:, 4], r[:, 0])).astype(np.intp)


cdef int _job_init(_Job* j, int nt) except -1:
    j.buf = <void**>calloc(nt, sizeof(void*))
    j.buf2 = <void**>calloc(nt, sizeof(void*))
    j.geo = <_Geo**>calloc(nt, sizeof(_Geo*))
    j.tab = <_RoiTab**>calloc(nt, sizeof(_RoiTab*))
    j.bad = <Py_ssize_t*>calloc(nt, sizeof(Py_ssize_t))
    j.tabs = NULL
    j.order = NULL
    j.failed = 0
    if j.buf == NULL or j.buf2 == NULL or j.geo == NULL or j.tab == NULL or j.bad == NULL:
        _job_free(j, nt)
        raise MemoryError("roi: out of memory for thread scratch")
    return 0


cdef void _job_free(_Job* j, int nt) noexcept nogil:
    cdef int t
    for t in range(nt):
        if j.buf != NULL:
            ck_free64(j.buf[t])
        if j.buf2 != NULL:
            ck_free64(j.buf2[t])
        if j.geo != NULL:
            _geo_free(j.geo[t])
        if j.tab != NULL:
            _tab_free(j.tab[t])
    free(j.buf)
    free(j.buf2)
    free(j.geo)
    free(j.tab)
    free(j.bad)


cdef void _rows_task(void* p, Py_ssize_t nh, int tid) noexcept nogil:
    """Forward phase 1: one (n, h) row of the map to NHWC."""
    cdef _Job* j = <_Job*>p
    if j.dbl:
        j.row_finite[nh] = _nhwc_row(<const double*>j.x, <double*>j.xt, j.C, j.H, j.W, nh)
    else:
        j.row_finite[nh] = _nhwc_row(<const float*>j.x, <float*>j.xt, j.C, j.H, j.W, nh)


cdef void _align_fwd_task(void* p, Py_ssize_t i, int tid) noexcept nogil:
    cdef _Job* j = <_Job*>p
    cdef Py_ssize_t k = j.order[i]
    if j.dbl:
        _align_fwd_one(j, k, tid, <double>0)
    else:
        _align_fwd_one(j, k, tid, <float>0)


cdef void _align_fwd_one(_Job* j, Py_ssize_t k, int tid, floating kind) noexcept nogil:
    """Forward phase 2: RoI k's taps, then each bin summed over them for all channels."""
    cdef Py_ssize_t C = j.C, H = j.H, W = j.W, ph = j.ph, pw = j.pw, nbins = ph * pw, b, h
    cdef const floating* roi = <const floating*>j.rois + k * 5
    cdef const floating* img
    cdef floating* y = <floating*>j.y + k * C * nbins
    cdef bint merge = 1
    if j.failed:
        return
    if j.buf[tid] == NULL:
        j.buf[tid] = ck_malloc64(max(ck_roi_scratch_bytes(nbins), C * sizeof(floating) + 1))
        j.geo[tid] = _geo_new(ph, pw, sizeof(floating))
        j.tab[tid] = _tab_new(nbins)
    if j.buf[tid] == NULL or j.geo[tid] == NULL or j.tab[tid] == NULL:
        j.failed = 1
        return
    b = <Py_ssize_t>roi[0]
    img = <const floating*>j.xt + b * H * W * C
    for h in range(H):      # taps on one pixel merge only where the image is finite
        merge = merge and j.row_finite[b * H + h]
    if not _roi_table(roi, <floating>j.scale, <floating>0.5 if j.aligned else <floating>0,
                      j.aligned, j.sr, ph, pw, H, W, merge, j.geo[tid], j.tab[tid]):
        j.failed = 1
    elif j.tab[tid].dense:
        if not _separable(img, NULL, W, C, 0, C, j.geo[tid].ty, j.geo[tid].tx, ph, pw,
                          j.tab[tid].count, y, NULL, 0):
            j.failed = 1
    elif floating is float:
        ck_align_roi_f(img, C, nbins, j.tab[tid].first, j.tab[tid].off,
                       <const float*>j.tab[tid].w, <float>j.tab[tid].count, j.tab[tid].count,
                       j.buf[tid], y)
    else:
        _bins_forward(img, C, nbins, j.tab[tid].first, j.tab[tid].off,
                      <const floating*>j.tab[tid].w, j.tab[tid].count, <floating*>j.buf[tid], y)


def roi_align_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] xt,
                      const floating[:, ::1] rois, double spatial_scale,
                      Py_ssize_t sampling_ratio, bint aligned, floating[:, :, :, ::1] y,
                      unsigned char[::1] row_finite, int n_threads):
    """x (N, C, H, W) -> y (K, C, ph, pw); xt (N, H, W, C) and row_finite (N*H) are scratch.
    The map goes to NHWC ((n, h) rows as tasks), then one RoI per task: its taps found, each
    bin summed over them for all channels, results transposed into y.  A RoI's taps on one
    pixel are merged only when its image holds no NaN/inf (0 * inf must stay NaN)."""
    cdef _Job j
    cdef int nt = max(1, n_threads)
    cdef Py_ssize_t[::1] order = _local_order(rois)
    _job_init(&j, nt)
    j.dbl = floating is double
    j.x, j.xt, j.rois, j.y, j.row_finite = &x[0, 0, 0, 0], &xt[0, 0, 0, 0], &rois[0, 0], \
        &y[0, 0, 0, 0], &row_finite[0]
    j.order = &order[0]
    j.N, j.C, j.H, j.W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    j.K, j.ph, j.pw = rois.shape[0], y.shape[2], y.shape[3]
    j.scale, j.sr, j.aligned = spatial_scale, sampling_ratio, aligned
    with nogil:
        ck_parallel_for(j.N * j.H, 2, nt, _rows_task, &j)
        ck_parallel_for(j.K, 1, nt, _align_fwd_task, &j)
        _job_free(&j, nt)
    if j.failed:
        raise MemoryError("roi_align: out of memory for the sample tables or a scratch buffer")


cdef void _align_tab_task(void* p, Py_ssize_t k, int tid) noexcept nogil:
    cdef _Job* j = <_Job*>p
    if j.dbl:
        _align_tab_one(j, k, tid, <double>0)
    else:
        _align_tab_one(j, k, tid, <float>0)


cdef void _align_tab_one(_Job* j, Py_ssize_t k, int tid, floating kind) noexcept nogil:
    """Backward phase 1: RoI k's merged taps."""
    if j.failed:
        return
    if j.geo[tid] == NULL:
        j.geo[tid] = _geo_new(j.ph, j.pw, sizeof(floating))
        if j.geo[tid] == NULL:
            j.failed = 1
            return
    if not _roi_table(<const floating*>j.rois + k * 5, <floating>j.scale,
                      <floating>0.5 if j.aligned else <floating>0, j.aligned, j.sr, j.ph, j.pw,
                      j.H, j.W, 1, j.geo[tid], &j.tabs[k]):
        j.failed = 1


cdef void _align_bwd_task(void* p, Py_ssize_t blk, int tid) noexcept nogil:
    cdef _Job* j = <_Job*>p
    if j.dbl:
        _align_bwd_one(j, blk, tid, <double>0)
    else:
        _align_bwd_one(j, blk, tid, <float>0)


cdef void _align_bwd_one(_Job* j, Py_ssize_t task, int tid, floating kind) noexcept nogil:
    """Backward phase 2: image n, channels [c0, c0 + nc) of grad_x, accumulated in a private
    (H*W, nc) block over the image's RoIs in order, then transposed into grad_x's planes."""
    cdef Py_ssize_t C = j.C, H = j.H, W = j.W, HW = j.H * j.W, K = j.K
    cdef Py_ssize_t ph = j.ph, pw = j.pw, nbins = ph * pw, nblk = (C + j.CB - 1) // j.CB
    cdef Py_ssize_t n = task // nblk, c0 = task % nblk * j.CB, nc = min(j.CB, C - c0)
    cdef Py_ssize_t k, i, r, q, knext
    cdef const floating* gy = <const floating*>j.x
    cdef const floating* rois = <const floating*>j.rois
    cdef const floating* gyk
    cdef floating* gx = <floating*>j.y
    cdef floating* gb
    cdef floating* gt
    cdef floating* dst
    cdef _RoiTab* use
    cdef _Geo* geo
    cdef bint finite
    if j.failed:
        return
    if j.buf[tid] == NULL:
        j.buf[tid] = ck_malloc64(HW * j.CB * sizeof(floating) + 1)
        j.buf2[tid] = ck_malloc64(nbins * j.CB * sizeof(floating) + 1)
        if j.geo[tid] == NULL:
            j.geo[tid] = _geo_new(ph, pw, sizeof(floating))
        j.tab[tid] = _tab_new(nbins)
    if j.buf[tid] == NULL or j.buf2[tid] == NULL or j.geo[tid] == NULL or j.tab[tid] == NULL:
        j.failed = 1
        return
    gb = <floating*>j.buf[tid]
    gt = <floating*>j.buf2[tid]
    geo = j.geo[tid]
    memset(gb, 0, HW * nc * sizeof(floating))
    knext = 0
    for k in range(K):      # fixed RoI order: the same sums on every run
        if <Py_ssize_t>rois[k * 5] != n:
            continue
        gyk = gy + (k * C + c0) * nbins
        if knext <= k:      # the image's next RoI, whose grad block is prefetched meanwhile
            knext = k + 1
            while knext < K and <Py_ssize_t>rois[knext * 5] != n:
                knext += 1
        if floating is float:
            finite = ck_all_finite_f(gyk, nc * nbins)
        else:
            finite = ck_all_finite_d(gyk, nc * nbins)
        use = &j.tabs[k]
        if not finite or use.dense:     # per-corner taps, or the samples of a dense RoI
            if not _roi_table(rois + k * 5, <floating>j.scale,
                              <floating>0.5 if j.aligned else <floating>0, j.aligned, j.sr,
                              ph, pw, H, W, 0, geo, j.tab[tid]):
                j.failed = 1
                return
            use = j.tab[tid]
        if use.dense:
            if not _separable(NULL, gb, W, nc, 0, nc, geo.ty, geo.tx, ph, pw, use.count, NULL,
                              gyk, 1):
                j.failed = 1
                return
        elif floating is float:
            ck_align_roi_bwd_f(gb, nc, nbins, use.first, use.off, <const float*>use.w,
                               <float>use.count, use.count, gyk, gt,
                               gy + (knext * C + c0) * nbins if knext < K else NULL)
        else:
            _bins_backward(gb, nc, nbins, use.first, use.off, <const floating*>use.w,
                           use.count, gyk, gt)
    dst = gx + (n * C + c0) * HW    # (H*W, nc) block -> the nc planes of gx, 64 pixels a step
    for i in range(0, HW, 64):
        if floating is float:
            ck_transpose_f(gb + i * nc, nc, min(64, HW - i), nc, dst + i, HW)
        else:
            for q in range(nc):
                for r in range(i, min(i + 64, HW)):
                    dst[q * HW + r] = gb[r * nc + q]


def roi_align_backward(const floating[:, :, :, ::1] gy, const floating[:, ::1] rois,
                       double spatial_scale, Py_ssize_t sampling_ratio, bint aligned,
                       floating[:, :, :, ::1] gx, int n_threads):
    """gy (K, C, ph, pw) -> gx (N, C, H, W) (written whole).  Every RoI's taps (a task per
    RoI), then one (image, block of 64 channels) per task: its gradient accumulated in a
    private (H*W, 64) scratch (zeroed, then the image's RoIs added in order: the same sums on
    every run and for any thread count), then transposed into gx's planes of those channels.  Taps on
    one pixel are merged, except for a RoI whose grad in the block holds a NaN/inf: that one
    gets torchvision's separate corners (inf * 0 must give NaN, inf * (0 + w) does not)."""
    cdef _Job j
    cdef int nt = max(1, n_threads)
    cdef Py_ssize_t k, K = rois.shape[0], nbins = gy.shape[2] * gy.shape[3]
    cdef Py_ssize_t* firsts
    _job_init(&j, nt)
    j.tabs = <_RoiTab*>calloc(K, sizeof(_RoiTab))
    firsts = <Py_ssize_t*>malloc(K * (nbins + 1) * sizeof(Py_ssize_t))
    if j.tabs == NULL or firsts == NULL:
        free(j.tabs)
        free(firsts)
        _job_free(&j, nt)
        raise MemoryError("roi_align: out of memory for the sample tables")
    for k in range(K):
        j.tabs[k].first = firsts + k * (nbins + 1)
    j.dbl = floating is double
    j.x, j.rois, j.y = &gy[0, 0, 0, 0], &rois[0, 0], &gx[0, 0, 0, 0]
    j.N, j.C, j.H, j.W = gx.shape[0], gx.shape[1], gx.shape[2], gx.shape[3]
    j.K, j.ph, j.pw, j.CB = K, gy.shape[2], gy.shape[3], 64
    j.scale, j.sr, j.aligned = spatial_scale, sampling_ratio, aligned
    with nogil:
        ck_parallel_for(K, 4, nt, _align_tab_task, &j)
        ck_parallel_for(j.N * ((j.C + j.CB - 1) // j.CB), 1, nt, _align_bwd_task, &j)
        for k in range(K):
            free(j.tabs[k].off)
            free(j.tabs[k].w)
        free(j.tabs)
        free(firsts)
        _job_free(&j, nt)
    if j.failed:
        raise MemoryError("roi_align: out of memory for the sample tables or a scratch buffer")


# ------------------------------------------------------------------ roi pool on the task runner
cdef void _pool_fwd_task(void* p, Py_ssize_t i, int tid) noexcept nogil:
    """One RoI of the float32 NHWC max pool: bins found once, each bin's pixels scanned for
    all channels, results transposed from a (bins, channels) scratch."""
    cdef _Job* j = <_Job*>p
    cdef Py_ssize_t ph = j.ph, pw = j.pw, C = j.C, b, k = j.order[i]
    cdef const float* roi = <const float*>j.rois + k * 5
    cdef Py_ssize_t* e
    if j.failed:
        return
    if j.buf[tid] == NULL:
        j.buf[tid] = ck_malloc64(ck_roi_scratch_bytes(ph * pw))
        j.buf2[tid] = ck_malloc64(2 * (ph + pw) * sizeof(Py_ssize_t))
    if j.buf[tid] == NULL or j.buf2[tid] == NULL:
        j.failed = 1
        return
    e = <Py_ssize_t*>j.buf2[tid]
    b = <Py_ssize_t>roi[0]
    roi_pool_bins(roi, <float>j.scale, ph, pw, j.H, j.W, e, e + ph, e + 2 * ph,
                  e + 2 * ph + pw)
    ck_pool_roi_f(<const float*>j.xt + b * j.H * j.W * C, j.W, C, ph, pw, e, e + ph,
                  e + 2 * ph, e + 2 * ph + pw, j.buf[tid], <float*>j.y + k * C * ph * pw,
                  j.am + k * C * ph * pw)


def roi_pool_forward_nhwc(const float[:, :, :, ::1] x, float[:, :, :, ::1] xt,
                          const float[:, ::1] rois, double spatial_scale, float[:, :, ::1] y,
                          int64_t[:, :, ::1] argmax, Py_ssize_t ph, Py_ssize_t pw,
                          int n_threads):
    """float32, x (N, C, H, W) (H*W < 2**31): y, argmax (K, C, ph*pw); xt (N, H, W, C) is
    scratch.  The map goes to NHWC ((n, h) rows as tasks), then one RoI per task.  Same bins
    and results as roi_pool_forward."""
    cdef _Job j
    cdef int nt = max(1, n_threads)
    cdef unsigned char[::1] rows = np.empty(x.shape[0] * x.shape[2], np.uint8)
    cdef Py_ssize_t[::1] order = _local_order(rois)
    _job_init(&j, nt)
    j.order = &order[0]
    j.dbl = 0
    j.x, j.xt, j.rois, j.y, j.am, j.row_finite = &x[0, 0, 0, 0], &xt[0, 0, 0, 0], \
        &rois[0, 0], &y[0, 0, 0], &argmax[0, 0, 0], &rows[0]
    j.N, j.C, j.H, j.W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    j.K, j.ph, j.pw, j.scale = rois.shape[0], ph, pw, spatial_scale
    with nogil:
        ck_parallel_for(j.N * j.H, 2, nt, _rows_task, &j)
        ck_parallel_for(j.K, 1, nt, _pool_fwd_task, &j)
        _job_free(&j, nt)
    if j.failed:
        raise MemoryError("roi_pool_forward: out of memory for a scratch buffer")


cdef void _pool_bwd_task(void* p, Py_ssize_t blk, int tid) noexcept nogil:
    cdef _Job* j = <_Job*>p
    if j.dbl:
        _pool_bwd_one(j, blk, tid, <double>0)
    else:
        _pool_bwd_one(j, blk, tid, <float>0)


cdef void _pool_bwd_one(_Job* j, Py_ssize_t blk, int tid, floating kind) noexcept nogil:
    """Channels [c0, c0 + 32) of grad_x (zeroed, then every RoI's grad added at its argmax,
    RoIs in order: the same sums on every run and for any thread count)."""
    cdef Py_ssize_t C = j.C, HW = j.H * j.W, P = j.ph * j.pw, n, k, o, b, c
    cdef Py_ssize_t c0 = blk * j.CB, c1 = min(c0 + j.CB, C)
    cdef const floating* gy = <const floating*>j.x
    cdef const floating* rois = <const floating*>j.rois
    cdef floating* gx = <floating*>j.y
    cdef const floating* g
    cdef const int64_t* am
    cdef floating* plane
    cdef int64_t a
    for n in range(j.N):
        memset(gx + (n * C + c0) * HW, 0, (c1 - c0) * HW * sizeof(floating))
    for k in range(j.K):
        b = <Py_ssize_t>rois[k * 5]
        for c in range(c0, c1):
            g = gy + (k * C + c) * P
            am = j.am + (k * C + c) * P
            plane = gx + (b * C + c) * HW
            for o in range(P):
                a = am[o]
                if a >= 0 and a < HW:
                    plane[a] += g[o]
                elif a != -1:
                    j.bad[tid] += 1


def roi_pool_backward(const floating[:, :, ::1] gy, const floating[:, ::1] rois,
                      const int64_t[:, :, ::1] argmax, floating[:, :, ::1] gx, int n_threads):
    """gy, argmax (K, C, ph*pw); gx (N, C, H*W) (written whole).  Each task owns a block of
    32 channels and adds the RoIs in order (the RoI loop outside, so each RoI's slice of
    argmax / grad_y is read contiguously).  Returns the number of argmax entries outside
    [-1, H*W) (skipped; the caller raises and discards gx)."""
    cdef _Job j
    cdef int nt = max(1, n_threads), t
    cdef Py_ssize_t bad = 0
    _job_init(&j, nt)
    j.dbl = floating is double
    j.x, j.rois, j.y, j.am = &gy[0, 0, 0], &rois[0, 0], &gx[0, 0, 0], <int64_t*>&argmax[0, 0, 0]
    j.N, j.C, j.H, j.W = gx.shape[0], gy.shape[1], 1, gx.shape[2]
    j.K, j.ph, j.pw, j.CB = gy.shape[0], 1, gy.shape[2], 32
    with nogil:
        ck_parallel_for((j.C + 31) // 32, 1, nt, _pool_bwd_task, &j)
        for t in range(nt):
            bad += j.bad[t]
        _job_free(&j, nt)
    return bad


cdef void _pool_nchw_task(void* p, Py_ssize_t k, int tid) noexcept nogil:
    cdef _Job* j = <_Job*>p
    if j.dbl:
        _pool_nchw_one(j, k, tid, <double>0)
    else:
        _pool_nchw_one(j, k, tid, <float>0)


cdef void _pool_nchw_one(_Job* j, Py_ssize_t k, int tid, floating kind) noexcept nogil:
    """One RoI of the plain max pool on the NCHW map (float64, or no SSE2)."""
    cdef Py_ssize_t C = j.C, H = j.H, W = j.W, ph = j.ph, pw = j.pw, b
    cdef const floating* roi = <const floating*>j.rois + k * 5
    cdef Py_ssize_t* e
    if j.failed:
        return
    if j.buf[tid] == NULL:
        j.buf[tid] = ck_malloc64(2 * (ph + pw) * sizeof(Py_ssize_t))
        if j.buf[tid] == NULL:
            j.failed = 1
            return
    e = <Py_ssize_t*>j.buf[tid]
    b = <Py_ssize_t>roi[0]
    roi_pool_bins(roi, <floating>j.scale, ph, pw, H, W, e, e + ph, e + 2 * ph, e + 2 * ph + pw)
    roi_pool_one(<const floating*>j.x + b * C * H * W, C, H, W, ph, pw, e, e + ph, e + 2 * ph,
                 e + 2 * ph + pw, <floating*>j.y + k * C * ph * pw, j.am + k * C * ph * pw)


def roi_pool_forward(const floating[:, :, :, ::1] x, const floating[:, ::1] rois,
                     double spatial_scale, floating[:, :, :, ::1] y,
                     int64_t[:, :, :, ::1] argmax, int n_threads):
    """y, argmax (K, C, ph, pw); rois (K, 5) valid (checked at the boundary).  One RoI per
    task on the NCHW map (float64, or no SSE2; float32 goes by roi_pool_forward_nhwc)."""
    cdef _Job j
    cdef int nt = max(1, n_threads)
    _job_init(&j, nt)
    j.dbl = floating is double
    j.x, j.rois, j.y, j.am = &x[0, 0, 0, 0], &rois[0, 0], &y[0, 0, 0, 0], &argmax[0, 0, 0, 0]
    j.N, j.C, j.H, j.W = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    j.K, j.ph, j.pw, j.scale = rois.shape[0], y.shape[2], y.shape[3], spatial_scale
    with nogil:
        ck_parallel_for(j.K, 1, nt, _pool_nchw_task, &j)
        _job_free(&j, nt)
    if j.failed:
        raise MemoryError("roi_pool_forward: out of memory for bin tables")
