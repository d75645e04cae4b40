# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""RoI max pooling and RoI align (torchvision's rules, restated in convkit/reference/roi.py).

Both work on an NHWC copy of the map (one parallel transpose), so a pixel's channels are
contiguous and the kernels run down the channels eight at a time (SSE2 for float32; plain
loops the compiler vectorises otherwise).  roi_pool: one RoI per OpenMP task (float64, or no
SSE2: the NCHW loop).  roi_align: each RoI's bilinear samples are worked out once (positions
and weights are separable; only samples that land on the map are kept) and laid out as
(corner offset, weight) pairs, then reused for every channel; the per-sample arithmetic and
order are torchvision's.

Backwards are gathers by channel: each OpenMP task owns a block of channels of grad_x and walks
every RoI in order, so the sums are the same bits on every run and for any thread count.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.stdlib cimport free, malloc
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


def roi_pool_forward(const floating[:, :, :, ::1] x, const floating[:, ::1] rois,
                     double spatial_scale, floating[:, :, :, ::1] y,
                     int64_t[:, :, :, ::1] argmax, int n_threads):
    """y, argmax (K, C, ph, pw); rois (K, 5) valid (checked at the boundary)."""
    cdef Py_ssize_t K = rois.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t ph = y.shape[2], pw = y.shape[3], k, b
    cdef floating scale = <floating>spatial_scale
    cdef Py_ssize_t* edges
    cdef int failed_flag = 0
    cdef int* failed = &failed_flag      # written through a pointer: shared by the threads
    with nogil, parallel(num_threads=n_threads):
        edges = <Py_ssize_t*>malloc(2 * (ph + pw) * sizeof(Py_ssize_t))
        for k in prange(K, schedule="dynamic"):
            if edges == NULL:
                failed[0] = 1
            else:
                b = <Py_ssize_t>rois[k, 0]
                roi_pool_bins(&rois[k, 0], scale, ph, pw, H, W, edges, edges + ph,
                              edges + 2 * ph, edges + 2 * ph + pw)
                roi_pool_one(&x[b, 0, 0, 0], C, H, W, ph, pw, edges, edges + ph,
                             edges + 2 * ph, edges + 2 * ph + pw, &y[k, 0, 0, 0],
                             &argmax[k, 0, 0, 0])
        free(edges)
    if failed_flag:
        raise MemoryError("roi_pool_forward: out of memory for bin tables")


def roi_pool_forward_nhwc(const float[:, :, :, ::1] xt, const float[:, ::1] rois,
                          double spatial_scale, float[:, :, ::1] y, int64_t[:, :, ::1] argmax,
                          Py_ssize_t ph, Py_ssize_t pw, int n_threads):
    """float32 on the NHWC map xt (N, H, W, C) (H*W < 2**31): y, argmax (K, C, ph*pw), the
    SIMD kernel, one RoI per task.  Same bins and results as roi_pool_forward."""
    cdef Py_ssize_t K = rois.shape[0], H = xt.shape[1], W = xt.shape[2], C = xt.shape[3], k, b
    cdef float scale = <float>spatial_scale
    cdef Py_ssize_t* edges
    cdef int failed_flag = 0
    cdef int* failed = &failed_flag      # written through a pointer: shared by the threads
    with nogil, parallel(num_threads=n_threads):
        edges = <Py_ssize_t*>malloc(2 * (ph + pw) * sizeof(Py_ssize_t))
        for k in prange(K, schedule="dynamic"):
            if edges == NULL:
                failed[0] = 1
            else:
                b = <Py_ssize_t>rois[k, 0]
                roi_pool_bins(&rois[k, 0], scale, ph, pw, H, W, edges, edges + ph,
                              edges + 2 * ph, edges + 2 * ph + pw)
                ck_roi_pool_f(&xt[b, 0, 0, 0], W, C, ph, pw, edges, edges + ph,
                              edges + 2 * ph, edges + 2 * ph + pw, &y[k, 0, 0], &argmax[k, 0, 0])
        free(edges)
    if failed_flag:
        raise MemoryError("roi_pool_forward: out of memory for bin tables")


def simd_available():
    """True when the SSE2 kernels were compiled in (x86-64)."""
    return bool(ck_align_simd())


def use_avx2(bint on):
    """Allow (default) or forbid the AVX2 kernels; returns whether they are now in use.
    Both paths give the same bits (tests compare them)."""
    return bool(ck_set_avx2(on))


def roi_pool_backward(const floating[:, :, ::1] gy, const floating[:, ::1] rois,
                      const int64_t[:, :, ::1] argmax, floating[:, :, ::1] gx, int n_threads):
    """gy, argmax (K, C, ph*pw); gx (N, C, H*W) (written whole).  Each task owns a block of
    32 channels and adds the RoIs in order (the RoI loop outside, so each RoI's slice of
    argmax / grad_y is read contiguously).  Returns the number of argmax entries outside
    [-1, H*W) (skipped; the caller raises and discards gx)."""
    cdef Py_ssize_t K = gy.shape[0], C = gy.shape[1], P = gy.shape[2]
    cdef Py_ssize_t N = gx.shape[0], HW = gx.shape[2], n, k, o, b, c, blk, c0, c1
    cdef Py_ssize_t CB = 32, nblk = (C + 31) // 32
    cdef int64_t a
    cdef Py_ssize_t bad = 0
    with nogil:
        for blk in prange(nblk, schedule="dynamic", num_threads=n_threads):
            c0 = blk * CB
            c1 = min(c0 + CB, C)
            for n in range(N):
                memset(&gx[n, c0, 0], 0, (c1 - c0) * HW * sizeof(floating))
            for k in range(K):
                b = <Py_ssize_t>rois[k, 0]
                for c in range(c0, c1):
                    for o in range(P):
                        a = argmax[k, c, o]
                        if a >= 0 and a < HW:
                            gx[b, c, a] += gy[k, c, o]
                        elif a != -1:
                            bad += 1
    return bad


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
    /* RoI-align forward for float32 on the NHWC map, SSE2: eight channels at a time, all the
       bins of the RoI in turn, the bin's sum kept in registers (two interleaved partial sums).
       off/w: one tap (pixel offset * C, weight) per distinct pixel a bin's samples touch;
       bin b's taps are [first[b], first[b+1]).  y: the RoI's (C, nbins) output. */
    #include <stddef.h>
    #include <stdint.h>
    #include <float.h>
    #if defined(__SSE2__) || defined(_M_X64)
    #include <emmintrin.h>
    #define CK_ROI_SSE2 1
    #endif
    static int ck_align_simd(void) {
    #ifdef CK_ROI_SSE2
        return 1;
    #else
        return 0;
    #endif
    }
    static void ck_align_store_f(float* y, ptrdiff_t stride, const float* v, int n,
                                 float fcount, double count, int exact) {
        for (int l = 0; l < n; l++)
            y[l * stride] = exact ? v[l] / fcount : (float)((double)v[l] / count);
    }

    /* AVX2 twins (GCC/clang on x86, chosen at run time by CPUID): sixteen channels per step,
       lane for lane the same multiplies and adds as the SSE2 code (no FMA, which would round
       differently), so the results do not depend on the path.  Each returns the first
       channel it left for the SSE2 / scalar code. */
    #if defined(CK_ROI_SSE2) && (defined(__GNUC__) || defined(__clang__)) && \
        (defined(__x86_64__) || defined(__i386__))
    #include <immintrin.h>
    #define CK_ROI_AVX2 1
    static int ck_avx2_allowed = 1;     /* tests switch the AVX2 path off to compare */
    static int ck_has_avx2(void) {
        static int known = -1;
        if (known < 0) {
            __builtin_cpu_init();
            known = __builtin_cpu_supports("avx2") ? 1 : 0;
        }
        return known && ck_avx2_allowed;
    }
    __attribute__((target("avx2")))
    static ptrdiff_t ck_align_bins_f_avx2(const float* img, ptrdiff_t c0, ptrdiff_t c1,
                                          ptrdiff_t nbins, const ptrdiff_t* first,
                                          const ptrdiff_t* off, const float* w, float fcount,
                                          double count, int exact, float* y) {
        ptrdiff_t c = c0, b, t;
        float buf[16];
        for (; c + 16 <= c1; c += 16) {
            const float* base = img + c;
            for (b = 0; b < nbins; b++) {
                __m256 a0 = _mm256_setzero_ps(), a1 = a0, e0 = a0, e1 = a0;
                for (t = first[b]; t + 2 <= first[b + 1]; t += 2) {
                    const float *p = base + off[t], *q = base + off[t + 1];
                    __m256 wa = _mm256_set1_ps(w[t]), wb = _mm256_set1_ps(w[t + 1]);
                    a0 = _mm256_add_ps(a0, _mm256_mul_ps(wa, _mm256_loadu_ps(p)));
                    a1 = _mm256_add_ps(a1, _mm256_mul_ps(wa, _mm256_loadu_ps(p + 8)));
                    e0 = _mm256_add_ps(e0, _mm256_mul_ps(wb, _mm256_loadu_ps(q)));
                    e1 = _mm256_add_ps(e1, _mm256_mul_ps(wb, _mm256_loadu_ps(q + 8)));
                }
                if (t < first[b + 1]) {
                    const float* p = base + off[t];
                    __m256 wa = _mm256_set1_ps(w[t]);
                    a0 = _mm256_add_ps(a0, _mm256_mul_ps(wa, _mm256_loadu_ps(p)));
                    a1 = _mm256_add_ps(a1, _mm256_mul_ps(wa, _mm256_loadu_ps(p + 8)));
                }
                a0 = _mm256_add_ps(a0, e0);
                a1 = _mm256_add_ps(a1, e1);
                if (exact) {        /* the same correctly rounded quotient, 8 at a time */
                    __m256 vc = _mm256_set1_ps(fcount);
                    _mm256_storeu_ps(buf, _mm256_div_ps(a0, vc));
                    _mm256_storeu_ps(buf + 8, _mm256_div_ps(a1, vc));
                    for (int l = 0; l < 16; l++) y[(c + l) * nbins + b] = buf[l];
                } else {
                    _mm256_storeu_ps(buf, a0);
                    _mm256_storeu_ps(buf + 8, a1);
                    ck_align_store_f(y + c * nbins + b, nbins, buf, 16, fcount, count, exact);
                }
            }
        }
        return c;
    }
    __attribute__((target("avx2")))
    static ptrdiff_t ck_align_bins_backward_f_avx2(float* gimg, ptrdiff_t c0, ptrdiff_t c1,
                                                   ptrdiff_t nbins, const ptrdiff_t* first,
                                                   const ptrdiff_t* off, const float* w,
                                                   float fcount, double count, int exact,
                                                   const float* gy) {
        ptrdiff_t c = c0, b, t, l;
        float buf[16];
        for (; c + 16 <= c1; c += 16) {
            float* base = gimg + c;
            for (b = 0; b < nbins; b++) {
                __m256 g0, g1;
                if (first[b + 1] == first[b]) continue;
                if (exact) {        /* gather, then one vector division (same quotients) */
                    __m256 vc = _mm256_set1_ps(fcount);
                    for (l = 0; l < 16; l++) buf[l] = gy[(c + l) * nbins + b];
                    g0 = _mm256_div_ps(_mm256_loadu_ps(buf), vc);
                    g1 = _mm256_div_ps(_mm256_loadu_ps(buf + 8), vc);
                } else {
                    for (l = 0; l < 16; l++)
                        buf[l] = (float)((double)gy[(c + l) * nbins + b] / count);
                    g0 = _mm256_loadu_ps(buf);
                    g1 = _mm256_loadu_ps(buf + 8);
                }
                for (t = first[b]; t < first[b + 1]; t++) {
                    float* r = base + off[t];
                    __m256 wt = _mm256_set1_ps(w[t]);
                    _mm256_storeu_ps(r, _mm256_add_ps(_mm256_loadu_ps(r), _mm256_mul_ps(g0, wt)));
                    _mm256_storeu_ps(r + 8, _mm256_add_ps(_mm256_loadu_ps(r + 8),
                                                          _mm256_mul_ps(g1, wt)));
                }
            }
        }
        return c;
    }
    __attribute__((target("avx2")))
    static ptrdiff_t ck_roi_pool_f_avx2(const float* img, ptrdiff_t W, ptrdiff_t C,
                                        ptrdiff_t ph, ptrdiff_t pw, const ptrdiff_t* hs,
                                        const ptrdiff_t* he, const ptrdiff_t* ws,
                                        const ptrdiff_t* we, float* y, int64_t* am) {
        ptrdiff_t nb = ph * pw, c = 0, p, q, h, ww, l;
        float bv[16];
        int bi[16];
        for (; c + 16 <= C; c += 16) {
            for (p = 0; p < ph; p++) {
                for (q = 0; q < pw; q++) {
                    ptrdiff_t b = p * pw + q;
                    __m256 b0 = _mm256_set1_ps(-FLT_MAX), b1 = b0;
                    __m256 i0 = _mm256_castsi256_ps(_mm256_set1_epi32(-1)), i1 = i0;
                    if (he[p] <= hs[p] || we[q] <= ws[q]) {
                        for (l = 0; l < 16; l++) { y[(c + l) * nb + b] = 0; am[(c + l) * nb + b] = -1; }
                        continue;
                    }
                    for (h = hs[p]; h < he[p]; h++) {
                        for (ww = ws[q]; ww < we[q]; ww++) {
                            const float* r = img + (h * W + ww) * C + c;
                            __m256 pix = _mm256_castsi256_ps(_mm256_set1_epi32((int)(h * W + ww)));
                            __m256 v0 = _mm256_loadu_ps(r), v1 = _mm256_loadu_ps(r + 8);
                            __m256 m0 = _mm256_cmp_ps(v0, b0, _CMP_GT_OQ);
                            __m256 m1 = _mm256_cmp_ps(v1, b1, _CMP_GT_OQ);
                            b0 = _mm256_blendv_ps(b0, v0, m0);
                            b1 = _mm256_blendv_ps(b1, v1, m1);
                            i0 = _mm256_blendv_ps(i0, pix, m0);
                            i1 = _mm256_blendv_ps(i1, pix, m1);
                        }
                    }
                    _mm256_storeu_ps(bv, b0); _mm256_storeu_ps(bv + 8, b1);
                    _mm256_storeu_si256((__m256i*)bi, _mm256_castps_si256(i0));
                    _mm256_storeu_si256((__m256i*)(bi + 8), _mm256_castps_si256(i1));
                    for (l = 0; l < 16; l++) {
                        y[(c + l) * nb + b] = bv[l];
                        am[(c + l) * nb + b] = bi[l];
                    }
                }
            }
        }
        return c;
    }
    #endif
    static void ck_align_bins_f(const float* img, ptrdiff_t c0, ptrdiff_t c1, ptrdiff_t nbins,
                                const ptrdiff_t* first, const ptrdiff_t* off, const float* w,
                                float fcount, double count, float* y) {
        int exact = (double)fcount == count;
        ptrdiff_t c = c0, b, t;
        float buf[8];
    #ifdef CK_ROI_AVX2
        if (ck_has_avx2())
            c = ck_align_bins_f_avx2(img, c0, c1, nbins, first, off, w, fcount, count, exact, y);
    #endif
    #ifdef CK_ROI_SSE2
        for (; c + 8 <= c1; c += 8) {
            const float* base = img + c;
            for (b = 0; b < nbins; b++) {
                __m128 a0 = _mm_setzero_ps(), a1 = a0, e0 = a0, e1 = a0;
                for (t = first[b]; t + 2 <= first[b + 1]; t += 2) {
                    const float *p = base + off[t], *q = base + off[t + 1];
                    __m128 wa = _mm_set1_ps(w[t]), wb = _mm_set1_ps(w[t + 1]);
                    a0 = _mm_add_ps(a0, _mm_mul_ps(wa, _mm_loadu_ps(p)));
                    a1 = _mm_add_ps(a1, _mm_mul_ps(wa, _mm_loadu_ps(p + 4)));
                    e0 = _mm_add_ps(e0, _mm_mul_ps(wb, _mm_loadu_ps(q)));
                    e1 = _mm_add_ps(e1, _mm_mul_ps(wb, _mm_loadu_ps(q + 4)));
                }
                if (t < first[b + 1]) {
                    const float* p = base + off[t];
                    __m128 wa = _mm_set1_ps(w[t]);
                    a0 = _mm_add_ps(a0, _mm_mul_ps(wa, _mm_loadu_ps(p)));
                    a1 = _mm_add_ps(a1, _mm_mul_ps(wa, _mm_loadu_ps(p + 4)));
                }
                a0 = _mm_add_ps(a0, e0);
                a1 = _mm_add_ps(a1, e1);
                if (exact) {
                    __m128 vc = _mm_set1_ps(fcount);
                    _mm_storeu_ps(buf, _mm_div_ps(a0, vc));
                    _mm_storeu_ps(buf + 4, _mm_div_ps(a1, vc));
                    for (int l = 0; l < 8; l++) y[(c + l) * nbins + b] = buf[l];
                } else {
                    _mm_storeu_ps(buf, a0);
                    _mm_storeu_ps(buf + 4, a1);
                    ck_align_store_f(y + c * nbins + b, nbins, buf, 8, fcount, count, exact);
                }
            }
        }
    #endif
        for (; c < c1; c++) {       /* the same two interleaved sums as the vector lanes */
            for (b = 0; b < nbins; b++) {
                float a = 0, e = 0;
                for (t = first[b]; t + 2 <= first[b + 1]; t += 2) {
                    a = a + w[t] * img[off[t] + c];
                    e = e + w[t + 1] * img[off[t + 1] + c];
                }
                if (t < first[b + 1]) a = a + w[t] * img[off[t] + c];
                a = a + e;
                ck_align_store_f(y + c * nbins + b, nbins, &a, 1, fcount, count, exact);
            }
        }
    }
    /* Adjoint of ck_align_bins_f: each bin's grad / count (8 channels at a time) times each
       tap weight, added into the NHWC gradient in tap order (the same per channel on every
       path, so the result is the same bits). */
    static void ck_align_bins_backward_f(float* gimg, ptrdiff_t c0, ptrdiff_t c1,
                                         ptrdiff_t nbins, const ptrdiff_t* first,
                                         const ptrdiff_t* off, const float* w, float fcount,
                                         double count, const float* gy) {
        int exact = (double)fcount == count;
        ptrdiff_t c = c0, b, t, l;
        float buf[8];
    #ifdef CK_ROI_AVX2
        if (ck_has_avx2())
            c = ck_align_bins_backward_f_avx2(gimg, c0, c1, nbins, first, off, w, fcount, count,
                                              exact, gy);
    #endif
    #ifdef CK_ROI_SSE2
        for (; c + 8 <= c1; c += 8) {
            float* base = gimg + c;
            for (b = 0; b < nbins; b++) {
                __m128 g0, g1;
                if (first[b + 1] == first[b]) continue;
                if (exact) {
                    __m128 vc = _mm_set1_ps(fcount);
                    for (l = 0; l < 8; l++) buf[l] = gy[(c + l) * nbins + b];
                    g0 = _mm_div_ps(_mm_loadu_ps(buf), vc);
                    g1 = _mm_div_ps(_mm_loadu_ps(buf + 4), vc);
                } else {
                    for (l = 0; l < 8; l++)
                        buf[l] = (float)((double)gy[(c + l) * nbins + b] / count);
                    g0 = _mm_loadu_ps(buf);
                    g1 = _mm_loadu_ps(buf + 4);
                }
                for (t = first[b]; t < first[b + 1]; t++) {
                    float* r = base + off[t];
                    __m128 wt = _mm_set1_ps(w[t]);
                    _mm_storeu_ps(r, _mm_add_ps(_mm_loadu_ps(r), _mm_mul_ps(g0, wt)));
                    _mm_storeu_ps(r + 4, _mm_add_ps(_mm_loadu_ps(r + 4), _mm_mul_ps(g1, wt)));
                }
            }
        }
    #endif
        for (; c < c1; c++) {
            for (b = 0; b < nbins; b++) {
                float g;
                if (first[b + 1] == first[b]) continue;
                g = exact ? gy[c * nbins + b] / fcount : (float)((double)gy[c * nbins + b] / count);
                for (t = first[b]; t < first[b + 1]; t++)
                    gimg[off[t] + c] += g * w[t];
            }
        }
    }
    /* RoI max pool of one RoI on the NHWC map, float32, SSE2: eight channels at a time, each
       bin scanned in row-major order with a strict '>' (first maximum wins, NaN never does;
       the start is -FLT_MAX with argmax -1, as torchvision).  Pixel indices ride in int32
       lanes (the caller checks H*W < 2**31).  y, am: the RoI's (C, nbins) outputs. */
    static void ck_roi_pool_f(const float* img, ptrdiff_t W, ptrdiff_t C, ptrdiff_t ph,
                              ptrdiff_t pw, const ptrdiff_t* hs, const ptrdiff_t* he,
                              const ptrdiff_t* ws, const ptrdiff_t* we, float* y, int64_t* am) {
        ptrdiff_t nb = ph * pw, c = 0, p, q, h, w, l;
        float bv[8];
        int bi[8];
    #ifdef CK_ROI_AVX2
        if (ck_has_avx2())
            c = ck_roi_pool_f_avx2(img, W, C, ph, pw, hs, he, ws, we, y, am);
    #endif
    #ifdef CK_ROI_SSE2
        for (; c + 8 <= C; c += 8) {
            for (p = 0; p < ph; p++) {
                for (q = 0; q < pw; q++) {
                    ptrdiff_t b = p * pw + q;
                    __m128 b0 = _mm_set1_ps(-FLT_MAX), b1 = b0;
                    __m128i i0 = _mm_set1_epi32(-1), i1 = i0;
                    if (he[p] <= hs[p] || we[q] <= ws[q]) {
                        for (l = 0; l < 8; l++) { y[(c + l) * nb + b] = 0; am[(c + l) * nb + b] = -1; }
                        continue;
                    }
                    for (h = hs[p]; h < he[p]; h++) {
                        for (w = ws[q]; w < we[q]; w++) {
                            const float* r = img + (h * W + w) * C + c;
                            __m128i pix = _mm_set1_epi32((int)(h * W + w));
                            __m128 v0 = _mm_loadu_ps(r), v1 = _mm_loadu_ps(r + 4);
                            __m128 m0 = _mm_cmpgt_ps(v0, b0), m1 = _mm_cmpgt_ps(v1, b1);
                            __m128i n0 = _mm_castps_si128(m0), n1 = _mm_castps_si128(m1);
                            b0 = _mm_or_ps(_mm_and_ps(m0, v0), _mm_andnot_ps(m0, b0));
                            b1 = _mm_or_ps(_mm_and_ps(m1, v1), _mm_andnot_ps(m1, b1));
                            i0 = _mm_or_si128(_mm_and_si128(n0, pix), _mm_andnot_si128(n0, i0));
                            i1 = _mm_or_si128(_mm_and_si128(n1, pix), _mm_andnot_si128(n1, i1));
                        }
                    }
                    _mm_storeu_ps(bv, b0); _mm_storeu_ps(bv + 4, b1);
                    _mm_storeu_si128((__m128i*)bi, i0); _mm_storeu_si128((__m128i*)(bi + 4), i1);
                    for (l = 0; l < 8; l++) {
                        y[(c + l) * nb + b] = bv[l];
                        am[(c + l) * nb + b] = bi[l];
                    }
                }
            }
        }
    #endif
        for (; c < C; c++) {
            for (p = 0; p < ph; p++) {
                for (q = 0; q < pw; q++) {
                    ptrdiff_t b = p * pw + q, best_i = -1;
                    float best = -FLT_MAX;
                    if (he[p] <= hs[p] || we[q] <= ws[q]) {
                        y[c * nb + b] = 0; am[c * nb + b] = -1;
                        continue;
                    }
                    for (h = hs[p]; h < he[p]; h++)
                        for (w = ws[q]; w < we[q]; w++)
                            if (img[(h * W + w) * C + c] > best) {
                                best = img[(h * W + w) * C + c];
                                best_i = h * W + w;
                            }
                    y[c * nb + b] = best;
                    am[c * nb + b] = best_i;
                }
            }
        }
    }
    static int ck_set_avx2(int on) {
    #ifdef CK_ROI_AVX2
        ck_avx2_allowed = on;
        return ck_has_avx2();
    #else
        (void)on;
        return 0;
    #endif
    }
    """
    int ck_set_avx2(int on) noexcept nogil
    int ck_align_simd() noexcept nogil
    void ck_roi_pool_f(const float* img, Py_ssize_t W, Py_ssize_t C, Py_ssize_t ph,
                       Py_ssize_t pw, const Py_ssize_t* hs, const Py_ssize_t* he,
                       const Py_ssize_t* ws, const Py_ssize_t* we, float* y,
                       int64_t* am) noexcept nogil
    void ck_align_bins_backward_f(float* gimg, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t nbins,
                                  const Py_ssize_t* first, const Py_ssize_t* off, const float* w,
                                  float fcount, double count, const float* gy) noexcept nogil
    void ck_align_bins_f(const float* img, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t nbins,
                         const Py_ssize_t* first, const Py_ssize_t* off, const float* w,
                         float fcount, double count, float* y) noexcept nogil


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


cdef void _taps_fill(_Merged* my, _Merged* mx, Py_ssize_t W, Py_ssize_t C, Py_ssize_t ph,
                     Py_ssize_t pw, Py_ssize_t k, Py_ssize_t* first, Py_ssize_t* off,
                     floating* w) noexcept nogil:
    """Bin (p, q) reads pixel (r, c) with weight wy[r] * wx[c] for every distinct row r and
    column c its samples touch; taps from index k on, bin b's are [first[b], first[b+1])."""
    cdef Py_ssize_t p, q, a, b
    cdef const floating* wy = <const floating*>my.w
    cdef const floating* wx = <const floating*>mx.w
    first[0] = k
    for p in range(ph):
        for q in range(pw):
            for a in range(my.first[p], my.first[p + 1]):
                for b in range(mx.first[q], mx.first[q + 1]):
                    off[k] = (my.idx[a] * W + mx.idx[b]) * C
                    w[k] = wy[a] * wx[b]
                    k += 1
            first[p * pw + q + 1] = k


cdef void _bins_forward(const floating* img, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t nbins,
                        const Py_ssize_t* first, const Py_ssize_t* off, const floating* w,
                        double count, floating* acc, floating* y) noexcept nogil:
    """One RoI, channels [c0, c1): img is its image in HWC, y its (C, nbins) output; the
    bin's taps summed, then divided by count once.  (ck_align_bins_f is the SSE2/AVX2
    float32 kernel.)"""
    cdef Py_ssize_t b, t, c
    cdef floating wt, fcount = <floating>count
    cdef const floating* r
    for b in range(nbins):
        for c in range(c0, c1):
            acc[c] = 0
        for t in range(first[b], first[b + 1]):
            wt = w[t]
            r = img + off[t]
            for c in range(c0, c1):
                acc[c] = acc[c] + wt * r[c]
        if fcount == count:
            # count is exact in the data type: one division there is the same correctly
            # rounded quotient as dividing in double and rounding (the reference's way)
            for c in range(c0, c1):
                y[c * nbins + b] = acc[c] / fcount
        else:
            for c in range(c0, c1):
                y[c * nbins + b] = <floating>(<double>acc[c] / count)


cdef void _bins_backward(floating* gimg, Py_ssize_t c0, Py_ssize_t c1, Py_ssize_t nbins,
                         const Py_ssize_t* first, const Py_ssize_t* off, const floating* w,
                         double count, const floating* gy, floating* g) noexcept nogil:
    """Adjoint of _bins_forward: gy the RoI's (C, nbins) grad, gimg its image's HWC grad."""
    cdef Py_ssize_t b, t, c
    cdef floating wt, fcount = <floating>count
    cdef floating* r
    for b in range(nbins):
        if first[b + 1] == first[b]:
            continue
        for c in range(c0, c1):
            if fcount == count:
                g[c] = gy[c * nbins + b] / fcount
            else:
                g[c] = <floating>(<double>gy[c * nbins + b] / count)
        for t in range(first[b], first[b + 1]):
            wt = w[t]
            r = gimg + off[t]
            for c in range(c0, c1):
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


def nchw_to_nhwc(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] xt,
                 unsigned char[::1] row_finite, int n_threads):
    """xt (N, H, W, C) = x (N, C, H, W) transposed; (n, h) rows split across threads.
    row_finite[n*H + h]: 1 when that row of every channel holds no NaN/inf."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t nh, n, h, w, blk, c0, cc
    cdef floating v, z
    with nogil:
        for nh in prange(N * H, schedule="dynamic", chunksize=2, num_threads=n_threads):
            n = nh // H
            h = nh % H
            z = 0
            for blk in range((C + 15) // 16):   # 16-channel blocks keep the writes in cache
                c0 = blk * 16
                for w in range(W):
                    for cc in range(c0, min(c0 + 16, C)):
                        v = x[n, cc, h, w]
                        xt[n, h, w, cc] = v
                        z = z + (v - v)         # stays 0 unless a NaN or inf passes
            row_finite[nh] = z == 0


def nhwc_to_nchw(const floating[:, :, :, ::1] xt, floating[:, :, :, ::1] x, int n_threads):
    """x (N, C, H, W) = xt (N, H, W, C) transposed; (n, h) rows split across threads, 16
    channels at a time (reads of 16 contiguous values, writes to 16 contiguous rows)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t nh, n, h, w, blk, c0, cc
    with nogil:
        for nh in prange(N * H, schedule="dynamic", chunksize=2, num_threads=n_threads):
            n = nh // H
            h = nh % H
            for blk in range((C + 15) // 16):
                c0 = blk * 16
                for w in range(W):
                    for cc in range(c0, min(c0 + 16, C)):
                        x[n, cc, h, w] = xt[n, h, w, cc]


def roi_align_forward(const floating[:, :, :, ::1] xt, const floating[:, ::1] rois,
                      double spatial_scale, Py_ssize_t sampling_ratio, bint aligned,
                      floating[:, :, :, ::1] y, const unsigned char[::1] merge, int n_threads):
    """xt: the map in NHWC; y (K, C, ph, pw).  One RoI per task (dynamic schedule).
    merge[k]: RoI k's image holds no NaN/inf, so its taps on one pixel may be merged."""
    _roi_align(xt, rois, spatial_scale, sampling_ratio, aligned, y, merge, n_threads, 0)


def roi_align_backward(const floating[:, :, :, ::1] gy, const floating[:, ::1] rois,
                       double spatial_scale, Py_ssize_t sampling_ratio, bint aligned,
                       floating[:, :, :, ::1] gxt, const unsigned char[::1] merge,
                       int n_threads):
    """gy (K, C, ph, pw) -> gxt (N, H, W, C), zero-filled by the caller.  One block of channels
    per task; each walks the RoIs in order: the same sums on every run, for any thread count.
    merge[k]: RoI k's grad is finite, so its taps on one pixel may be merged (an inf grad
    must meet each corner weight separately: inf * 0 is NaN where inf * (0 + w) is not)."""
    _roi_align(gxt, rois, spatial_scale, sampling_ratio, aligned, gy, merge, n_threads, 1)


cdef _roi_align(const floating[:, :, :, ::1] img, const floating[:, ::1] rois,
                double spatial_scale, Py_ssize_t sampling_ratio, bint aligned,
                const floating[:, :, :, ::1] per_roi, const unsigned char[::1] merge,
                int n_threads, bint backward):
    """Shared driver.  Forward: img = x in NHWC (read), per_roi = y (written).  Backward:
    per_roi = grad_y (read), img = grad_x in NHWC (written).

    1. every RoI's samples (more than 64 (y, x) pairs per bin: "dense", done by separability
       in step 3, with no table); per bin and axis the distinct pixels touched, with summed
       weights;
    2. for all other RoIs, every bin's (pixel, weight) taps laid out once in one table;
    3. the channel work (the only parallel region): forward one RoI per task, backward one
    channel block per task.  Dynamic tasks keep a busy machine from stalling on one late
    thread.
    """
    cdef Py_ssize_t H = img.shape[1], W = img.shape[2], C = img.shape[3]
    cdef Py_ssize_t K = rois.shape[0], ph = per_roi.shape[2], pw = per_roi.shape[3]
    # backward: channel blocks of 64 (8 vectors per corner update), at least 2 per thread
    cdef Py_ssize_t cb = max(8, min(64, (C // (2 * n_threads)) // 8 * 8))
    cdef Py_ssize_t nbins = ph * pw, k, b, blk, c0, c1, nblk = (C + cb - 1) // cb
    cdef floating scale = <floating>spatial_scale
    cdef floating offset = <floating>0.5 if aligned else <floating>0
    cdef _Taps* ty
    cdef _Taps* tx
    cdef _Merged* my
    cdef _Merged* mx
    cdef floating* buf
    cdef double cnt
    cdef int failed_flag = 0
    cdef int* failed = &failed_flag      # written through a pointer: shared by the threads
    cdef bint simd = (floating is float) and ck_align_simd()
    dt = np.float32 if floating is float else np.float64
    cdef Py_ssize_t[::1] npairs = np.zeros(K, np.intp)
    cdef double[::1] count = np.ones(K)
    # a RoI with more than 64 sample pairs per bin (grid > 8 x 8) takes the separable route
    cdef unsigned char[::1] dense = np.zeros(K, np.uint8)
    # the geometry is ~1% of the work: serial, so the call has a single parallel region
    with nogil:
        ty = _taps_new(ph, sizeof(floating))
        tx = _taps_new(pw, sizeof(floating))
        my = _merged_new(ph)
        mx = _merged_new(pw)
        if ty == NULL or tx == NULL or my == NULL or mx == NULL:
            failed[0] = 1
        for k in range(K):
            if failed[0]:
                break
            b = <Py_ssize_t>rois[k, 0]
            if not _roi_taps(&rois[k, 0], scale, offset, aligned, sampling_ratio, ph, pw, H, W,
                             ty, tx, &count[k]):
                failed[0] = 1
            elif ty.first[ph] * tx.first[pw] > 64 * nbins:
                dense[k] = 1
            elif _merge_axis(ty, ph, my, merge[k], <floating>0) and _merge_axis(tx, pw, mx, merge[k], <floating>0):
                npairs[k] = my.first[ph] * mx.first[pw]
            else:
                failed[0] = 1
        _taps_free(ty)
        _taps_free(tx)
        _merged_free(my)
        _merged_free(mx)
    if failed_flag:
        raise MemoryError("roi_align: out of memory for the sample tables")
    cdef Py_ssize_t[::1] start = np.concatenate([[0], np.cumsum(npairs)]).astype(np.intp)
    cdef Py_ssize_t total = start[K]
    cdef Py_ssize_t[:, ::1] first = np.empty((K, nbins + 1), np.intp)
    cdef Py_ssize_t[::1] off = np.empty(total + 1, np.intp)
    cdef floating[::1] w = np.empty(total + 1, dt)
    with nogil:
        ty = _taps_new(ph, sizeof(floating))
        tx = _taps_new(pw, sizeof(floating))
        my = _merged_new(ph)
        mx = _merged_new(pw)
        if ty == NULL or tx == NULL or my == NULL or mx == NULL:
            failed[0] = 1
        for k in range(K):
            if failed[0]:
                break
            b = <Py_ssize_t>rois[k, 0]
            if dense[k]:
                first[k, :] = start[k]
            elif (_roi_taps(&rois[k, 0], scale, offset, aligned, sampling_ratio, ph, pw, H, W,
                            ty, tx, &count[k])
                  and _merge_axis(ty, ph, my, merge[k], <floating>0) and _merge_axis(tx, pw, mx, merge[k], <floating>0)):
                _taps_fill(my, mx, W, C, ph, pw, start[k], &first[k, 0], &off[0], &w[0])
            else:
                failed[0] = 1
        _taps_free(ty)
        _taps_free(tx)
        _merged_free(my)
        _merged_free(mx)
    if failed_flag:
        raise MemoryError("roi_align: out of memory for the sample tables")
    with nogil, parallel(num_threads=n_threads):
        buf = <floating*>malloc(C * sizeof(floating) + 1)
        ty = _taps_new(ph, sizeof(floating))
        tx = _taps_new(pw, sizeof(floating))
        if buf == NULL or ty == NULL or tx == NULL:
            failed[0] = 1
        if backward:
            for blk in prange(nblk, schedule="dynamic"):
                if buf == NULL or ty == NULL or tx == NULL:
                    continue
                c0 = blk * cb
                c1 = min(c0 + cb, C)
                for k in range(K):      # fixed RoI order: the same sums on every run
                    b = <Py_ssize_t>rois[k, 0]
                    if dense[k]:
                        cnt = 1         # thread-private (count[k] is already known)
                        if not (_roi_taps(&rois[k, 0], scale, offset, aligned, sampling_ratio,
                                          ph, pw, H, W, ty, tx, &cnt)
                                and _separable(&img[b, 0, 0, 0], <floating*>&img[b, 0, 0, 0],
                                               W, C, c0, c1, ty, tx, ph, pw, count[k], NULL,
                                               &per_roi[k, 0, 0, 0], 1)):
                            failed[0] = 1
                    elif simd:
                        if floating is float:
                            ck_align_bins_backward_f(<float*>&img[b, 0, 0, 0], c0, c1, nbins,
                                                     &first[k, 0], &off[0], &w[0],
                                                     <float>count[k], count[k],
                                                     &per_roi[k, 0, 0, 0])
                    else:
                        _bins_backward(<floating*>&img[b, 0, 0, 0], c0, c1, nbins, &first[k, 0],
                                       &off[0], &w[0], count[k], &per_roi[k, 0, 0, 0], buf)
        else:
            for k in prange(K, schedule="dynamic"):
                if buf == NULL or ty == NULL or tx == NULL:
                    continue
                b = <Py_ssize_t>rois[k, 0]
                if dense[k]:
                    cnt = 1
                    if not (_roi_taps(&rois[k, 0], scale, offset, aligned, sampling_ratio,
                                      ph, pw, H, W, ty, tx, &cnt)
                            and _separable(&img[b, 0, 0, 0], NULL, W, C, 0, C, ty, tx, ph, pw,
                                           count[k], <floating*>&per_roi[k, 0, 0, 0], NULL, 0)):
                        failed[0] = 1
                elif simd:
                    if floating is float:
                        ck_align_bins_f(&img[b, 0, 0, 0], 0, C, nbins, &first[k, 0], &off[0],
                                        &w[0], <float>count[k], count[k],
                                        <float*>&per_roi[k, 0, 0, 0])
                else:
                    _bins_forward(&img[b, 0, 0, 0], 0, C, nbins, &first[k, 0], &off[0], &w[0],
                                  count[k], buf, <floating*>&per_roi[k, 0, 0, 0])
        free(buf)
        _taps_free(ty)
        _taps_free(tx)
    if failed_flag:
        raise MemoryError("roi_align: out of memory for a channel buffer or the separable rows")
