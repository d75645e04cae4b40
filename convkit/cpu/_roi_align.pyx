# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""RoI align (torchvision's roi_align rule, restated in convkit/reference/roi.py).

The forward works on an NHWC copy of the map (made inside the call), so a pixel's channels are
contiguous.  Per RoI, its bilinear samples are worked out once (positions and weights are
separable; only samples that land on the map are kept), corners on one pixel merged where the
data is finite, laid out as (pixel, weight) taps and reused for every channel; each bin is
summed over its taps for all channels at once.  float32 does that in csrc/roi_align.h (SSE2,
AVX2 and AVX-512 paths picked by CPUID, lane for lane the same arithmetic, so the same bits),
float64 in the plain loops here; both come from the same fused-type Cython.  A RoI with a
dense sampling grid goes by separability instead.

The backward owns blocks of grad_x (64 channels of one image, accumulated pixel-major in L2
and transposed out): each task zeroes its block and adds the image's RoIs in order, so the
sums are the same bits on every run and for any thread count.  Tasks are OpenMP loops.  A
RoI's batch index and coordinates are read once into locals; an index outside [0, N) is
skipped and counted (the wrapper raises), and every pixel index is clamped from the locals.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from cpython.pyport cimport PY_SSIZE_T_MAX
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset
from libc.math cimport ceil, fabs, floor, fmax, fmin, isfinite
from libc.float cimport DBL_EPSILON, FLT_EPSILON

from convkit.cpu.csrc.roi cimport (ck_align_simd, ck_set_simd_cap, ck_all_finite_f,
                                   ck_all_finite_d, ck_transpose_f, ck_roi_scratch_bytes,
                                   ck_malloc64, ck_free64, nhwc_row, batch_index, team)
from convkit.cpu.csrc.roi_align cimport ck_align_roi_f, ck_align_roi_bwd_f


def simd_available():
    """True when the SSE2 kernels were compiled in (x86-64)."""
    return bool(ck_align_simd())


def set_simd_level(int cap):
    """Cap this module's float32 kernels' vector width (2: AVX-512, 1: AVX2, 0: SSE2; default
    2) and return the level now in use (also limited by the CPU); convkit.cpu.roi sets it for
    both RoI modules.  Every level gives the same bits (tests compare them)."""
    return ck_set_simd_cap(cap)


cdef Py_ssize_t roi_align_axis_taps(floating start, floating bin_size, floating grid,
                                    Py_ssize_t pooled, Py_ssize_t size, Py_ssize_t cap,
                                    Py_ssize_t* first, Py_ssize_t* low, Py_ssize_t* high,
                                    floating* w_low, floating* w_high,
                                    Py_ssize_t* index) noexcept nogil:
    """Bilinear taps along one axis of one RoI.

    Sample i of bin p sits at ``(start + p*bin) + ((i + 0.5)*bin)/grid`` (data type,
    torchvision's order), i in [0, grid).  Samples outside [-1, size] are dropped (they add
    nothing); the rest become (low, high, w_low, w_high) after torchvision's clamp-at-0 and
    snap-to-last-pixel rules.  Only the index window that can land in [-1, size] is visited
    (found in double with a safety margin, then tested exactly), so a 1e30-wide RoI costs
    O(size) samples.  Bin p's taps are [first[p], first[p+1]).  Writes at most ``cap`` taps
    and returns how many there are (the caller retries with more room if that is > cap).
    With a zero bin (an empty aligned RoI and a fixed grid) all ``grid`` samples coincide:
    they are one tap whose weights carry the multiplicity.  ``index`` (NULL: not wanted)
    receives each tap's sample number i, for a max over samples (roi_max_align): taps then
    have weight 1, and coinciding samples (equal values: the first one wins a max) are the
    one tap of sample 0.
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
            if index == NULL:
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
                if index != NULL:
                    index[n] = i
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


cdef void roi_align_geometry(const floating* roi, floating scale, floating offset, bint aligned,
                             Py_ssize_t sampling_ratio, Py_ssize_t pooled_h,
                             Py_ssize_t pooled_w, floating* geo) noexcept nogil:
    """One RoI's geometry, torchvision's, in the data type: geo = [start_h, bin_h, grid_h,
    start_w, bin_w, grid_w] (offset 0.5 when aligned, else 0)."""
    cdef floating sw = roi[1] * scale - offset, sh = roi[2] * scale - offset
    cdef floating rw = (roi[3] * scale - offset) - sw, rh = (roi[4] * scale - offset) - sh
    if not aligned:     # legacy mode: a malformed RoI is forced to 1x1 (NaN stays NaN)
        if rw < 1:
            rw = 1
        if rh < 1:
            rh = 1
    geo[0] = sh
    geo[1] = rh / <floating>pooled_h
    geo[3] = sw
    geo[4] = rw / <floating>pooled_w
    if sampling_ratio > 0:
        geo[2] = <floating>sampling_ratio
        geo[5] = <floating>sampling_ratio
    else:               # adaptive: ceil(roi / pooled), 0 for an empty aligned RoI
        geo[2] = ceil(rh / <floating>pooled_h)
        geo[5] = ceil(rw / <floating>pooled_w)


cdef int _roi_taps(const floating* roi, floating scale, floating offset, bint aligned,
                   Py_ssize_t sampling_ratio, Py_ssize_t pooled_h, Py_ssize_t pooled_w,
                   Py_ssize_t H, Py_ssize_t W, _Taps* ty, _Taps* tx, double* count) noexcept nogil:
    """Geometry of one RoI (torchvision's, in the data type) and its taps on both axes.
    Returns 0 when memory ran out."""
    cdef floating geo[6]
    cdef floating sw, sh, bw, bh, gw, gh
    cdef Py_ssize_t n
    roi_align_geometry(roi, scale, offset, aligned, sampling_ratio, pooled_h, pooled_w, geo)
    sh, bh, gh, sw, bw, gw = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    # torchvision: count = max(grid_h * grid_w, 1); in double, so it cannot overflow
    count[0] = fmax(<double>gh * <double>gw, 1.0)
    if not (count[0] == count[0]):
        count[0] = 1
    n = roi_align_axis_taps(sh, bh, gh, pooled_h, H, ty.cap, ty.first, ty.low, ty.high,
                            <floating*>ty.w_low, <floating*>ty.w_high, NULL)
    if n > ty.cap:
        if not _taps_reserve(ty, n, sizeof(floating)):
            return 0
        roi_align_axis_taps(sh, bh, gh, pooled_h, H, ty.cap, ty.first, ty.low, ty.high,
                            <floating*>ty.w_low, <floating*>ty.w_high, NULL)
    n = roi_align_axis_taps(sw, bw, gw, pooled_w, W, tx.cap, tx.first, tx.low, tx.high,
                            <floating*>tx.w_low, <floating*>tx.w_high, NULL)
    if n > tx.cap:
        if not _taps_reserve(tx, n, sizeof(floating)):
            return 0
        roi_align_axis_taps(sw, bw, gw, pooled_w, W, tx.cap, tx.first, tx.low, tx.high,
                            <floating*>tx.w_low, <floating*>tx.w_high, NULL)
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



cdef struct _Lists:
    # per bin b, entries [first[b], first[b+1]) of (index, weight): one axis's merged corners
    # (idx: the row or column each touches, with its summed bilinear weight), or one RoI's
    # taps (idx: the pixel h*W + w read with weight w; count: the bins' sample count; a dense
    # RoI, grid above 8 x 8, has no taps and goes by separability)
    Py_ssize_t* first
    Py_ssize_t* idx
    void* w
    Py_ssize_t cap
    double count
    bint dense


cdef _Lists* _lists_new(Py_ssize_t nbins) noexcept nogil:
    """Empty lists for nbins bins (NULL when memory ran out); entries come with _lists_reserve."""
    cdef _Lists* t = <_Lists*>calloc(1, sizeof(_Lists))
    if t == NULL:
        return NULL
    t.first = <Py_ssize_t*>malloc((nbins + 1) * sizeof(Py_ssize_t))
    if t.first == NULL:
        free(t)
        return NULL
    return t


cdef int _lists_reserve(_Lists* t, Py_ssize_t n, size_t itemsize) noexcept nogil:
    """Room for n entries (the old arrays kept when big enough).  0 when memory ran out."""
    if n <= t.cap and t.idx != NULL:
        return 1
    free(t.idx)
    free(t.w)
    t.idx = <Py_ssize_t*>malloc(n * sizeof(Py_ssize_t) + 1)
    t.w = malloc(n * itemsize + 1)
    t.cap = n
    if t.idx == NULL or t.w == NULL:
        t.cap = 0
        return 0
    return 1


cdef void _lists_free(_Lists* t) noexcept nogil:
    if t != NULL:
        free(t.first)
        free(t.idx)
        free(t.w)
        free(t)


cdef int _merge_axis(_Taps* t, const floating* w_low, const floating* w_high,
                     Py_ssize_t pooled, _Lists* m, bint merge) noexcept nogil:
    """Per bin, the pixels its samples' corners touch, with weights.  ``merge``: sum the
    weights of corners that land on the same pixel (both corners of a snapped sample,
    neighbouring samples in one cell) -- only for finite data, since torchvision multiplies
    every corner separately and 0 * inf is NaN where (0 + w) * inf is not.  Without merging,
    the product of the two axes' lists is exactly torchvision's four corners of every sample,
    with its weight products.  w_low/w_high: t's weights.  0: no memory."""
    cdef Py_ssize_t need = 2 * t.first[pooled] + 1, n = 0, p, a, j, e, px
    cdef floating wt
    cdef floating* mw
    if not _lists_reserve(m, need, sizeof(floating)):
        return 0
    mw = <floating*>m.w
    for p in range(pooled):
        m.first[p] = n
        for a in range(t.first[p], t.first[p + 1]):
            for e in range(2):
                px = t.low[a] if e == 0 else t.high[a]
                wt = w_low[a] if e == 0 else w_high[a]
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


cdef void _taps_fill(_Lists* my, _Lists* mx, Py_ssize_t W, Py_ssize_t ph, Py_ssize_t pw,
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
    _Lists* my
    _Lists* mx


cdef _Geo* _geo_new(Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t itemsize) noexcept nogil:
    """A thread's geometry scratch (NULL when memory ran out)."""
    cdef _Geo* g = <_Geo*>malloc(sizeof(_Geo))
    if g == NULL:
        return NULL
    g.ty = _taps_new(ph, itemsize)
    g.tx = _taps_new(pw, itemsize)
    g.my = _lists_new(ph)
    g.mx = _lists_new(pw)
    if g.ty == NULL or g.tx == NULL or g.my == NULL or g.mx == NULL:
        _geo_free(g)
        return NULL
    return g


cdef void _geo_free(_Geo* g) noexcept nogil:
    if g != NULL:
        _taps_free(g.ty)
        _taps_free(g.tx)
        _lists_free(g.my)
        _lists_free(g.mx)
        free(g)


cdef int _roi_table(const floating* roi, floating scale, floating offset, bint aligned,
                    Py_ssize_t sampling_ratio, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t H,
                    Py_ssize_t W, bint merge, _Geo* g, _Lists* t) noexcept nogil:
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
    if not (_merge_axis(g.ty, <const floating*>g.ty.w_low, <const floating*>g.ty.w_high, ph,
                        g.my, merge)
            and _merge_axis(g.tx, <const floating*>g.tx.w_low, <const floating*>g.tx.w_high, pw,
                            g.mx, merge)):
        return 0
    n = g.my.first[ph] * g.mx.first[pw]
    if not _lists_reserve(t, n, sizeof(floating)):
        return 0
    _taps_fill(g.my, g.mx, W, ph, pw, 0, t.first, t.idx, <floating*>t.w)
    return 1




cdef int _forward_roi(const floating* xt, const unsigned char* row_finite, const floating* roi,
                      Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t ph,
                      Py_ssize_t pw, floating scale, bint aligned, Py_ssize_t sr, void* buf,
                      _Geo* geo, _Lists* tab, floating* y) noexcept nogil:
    """One RoI of the forward: its taps, then each bin summed over them for all channels into
    y, the RoI's (C, ph*pw) output.  1: done, 0: out of memory, -1: bad batch index."""
    cdef Py_ssize_t b = batch_index(roi[0], N), h, nbins = ph * pw
    cdef const floating* img
    cdef bint merge = 1
    if b < 0:
        return -1
    img = xt + b * H * W * C
    for h in range(H):      # taps on one pixel merge only where the image is finite
        merge = merge and row_finite[b * H + h]
    if not _roi_table(roi, scale, <floating>0.5 if aligned else <floating>0, aligned, sr, ph,
                      pw, H, W, merge, geo, tab):
        return 0
    if tab.dense:
        return _separable(img, NULL, W, C, 0, C, geo.ty, geo.tx, ph, pw, tab.count, y, NULL, 0)
    if floating is float:
        ck_align_roi_f(img, C, nbins, tab.first, tab.idx, <const float*>tab.w,
                       <float>tab.count, tab.count, buf, y)
    else:
        _bins_forward(img, C, nbins, tab.first, tab.idx, <const floating*>tab.w, tab.count,
                      <floating*>buf, y)
    return 1


def roi_align_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] xt,
                      const floating[:, ::1] rois, const Py_ssize_t[::1] order,
                      double spatial_scale, Py_ssize_t sampling_ratio, bint aligned,
                      floating[:, :, :, ::1] y, unsigned char[::1] row_finite, int n_threads):
    """x (N, C, H, W) -> y (K, C, ph, pw); xt (N, H, W, C) and row_finite (N*H) are scratch.
    The map goes to NHWC ((n, h) rows as tasks), then one RoI per task, handed out in
    ``order``: its taps found, each bin summed over them for all channels, results transposed
    into y.  A RoI's taps on one pixel are merged only when its image holds no NaN/inf
    (0 * inf must stay NaN).  Returns the number of RoIs whose batch index is not in [0, N)
    (their outputs are not written)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = rois.shape[0], ph = y.shape[2], pw = y.shape[3], nbins = ph * pw
    cdef Py_ssize_t nh, i, k, bad = 0, failed = 0
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* xtp = &xt[0, 0, 0, 0]
    cdef const floating* rp = &rois[0, 0]
    cdef floating* yp = &y[0, 0, 0, 0]
    cdef unsigned char* rf = &row_finite[0]
    cdef void* buf
    cdef _Geo* geo
    cdef _Lists* tab
    cdef int r
    with nogil:
        for nh in prange(N * H, schedule="dynamic", chunksize=2,
                         num_threads=team(n_threads, (N * H + 1) // 2)):
            rf[nh] = nhwc_row(xp, xtp, C, H, W, nh)
        with parallel(num_threads=team(n_threads, K)):
            buf = ck_malloc64(max(ck_roi_scratch_bytes(nbins), C * sizeof(floating) + 1))
            geo = _geo_new(ph, pw, sizeof(floating))
            tab = _lists_new(nbins)
            for i in prange(K, schedule="dynamic", chunksize=1):
                k = order[i]
                if buf == NULL or geo == NULL or tab == NULL:
                    failed += 1
                else:
                    r = _forward_roi(xtp, rf, rp + k * 5, N, C, H, W, ph, pw,
                                     <floating>spatial_scale, aligned, sampling_ratio, buf, geo,
                                     tab, yp + k * C * nbins)
                    if r == 0:
                        failed += 1
                    elif r < 0:
                        bad += 1
            ck_free64(buf)
            _geo_free(geo)
            _lists_free(tab)
    if failed:
        raise MemoryError("roi_align: out of memory for the sample tables or a scratch buffer")
    return bad


cdef int _backward_block(const floating* gy, const floating* rois, _Lists* tabs,
                         Py_ssize_t N, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W, Py_ssize_t K,
                         Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t CB, Py_ssize_t task,
                         floating scale, bint aligned, Py_ssize_t sr, floating* gb,
                         floating* gt, _Geo* geo, _Lists* tab, floating* gx) noexcept nogil:
    """Image n, channels [c0, c0 + nc) of grad_x (task = n * blocks + block), accumulated in a
    private (H*W, nc) block gb over the image's RoIs in order, then transposed into grad_x's
    planes.  tabs: every RoI's merged taps.  1: done, 0: out of memory, 2: done, but a RoI's
    batch index was not in [0, N) (skipped)."""
    cdef Py_ssize_t HW = H * W, nbins = ph * pw, nblk = (C + CB - 1) // CB
    cdef Py_ssize_t n = task // nblk, c0 = task % nblk * CB, nc = min(CB, C - c0)
    cdef Py_ssize_t k, i, r, q, b, knext
    cdef const floating* gyk
    cdef floating* dst
    cdef _Lists* use
    cdef bint finite
    cdef int ret = 1
    memset(gb, 0, HW * nc * sizeof(floating))
    knext = 0
    for k in range(K):      # fixed RoI order: the same sums on every run
        b = batch_index(rois[k * 5], N)
        if b < 0:
            ret = 2
        if b != n:
            continue
        gyk = gy + (k * C + c0) * nbins
        if knext <= k:      # the image's next RoI, whose grad block is prefetched meanwhile
            knext = k + 1
            while knext < K and batch_index(rois[knext * 5], N) != n:
                knext += 1
        if floating is float:
            finite = ck_all_finite_f(gyk, nc * nbins)
        else:
            finite = ck_all_finite_d(gyk, nc * nbins)
        use = &tabs[k]
        if not finite or use.dense:     # per-corner taps, or the samples of a dense RoI
            if not _roi_table(rois + k * 5, scale, <floating>0.5 if aligned else <floating>0,
                              aligned, sr, ph, pw, H, W, 0, geo, tab):
                return 0
            use = tab
        if use.dense:
            if not _separable(NULL, gb, W, nc, 0, nc, geo.ty, geo.tx, ph, pw, use.count, NULL,
                              gyk, 1):
                return 0
        elif floating is float:
            ck_align_roi_bwd_f(gb, nc, nbins, use.first, use.idx, <const float*>use.w,
                               <float>use.count, use.count, gyk, gt,
                               gy + (knext * C + c0) * nbins if knext < K else NULL)
        else:
            _bins_backward(gb, nc, nbins, use.first, use.idx, <const floating*>use.w,
                           use.count, gyk, gt)
    dst = gx + (n * C + c0) * HW    # (H*W, nc) block -> the nc planes of gx, 64 pixels a step
    for i in range(0, HW, 64):
        if floating is float:
            ck_transpose_f(gb + i * nc, nc, min(64, HW - i), nc, dst + i, HW)
        else:
            for q in range(nc):
                for r in range(i, min(i + 64, HW)):
                    dst[q * HW + r] = gb[r * nc + q]
    return ret


def roi_align_backward(const floating[:, :, :, ::1] gy, const floating[:, ::1] rois,
                       double spatial_scale, Py_ssize_t sampling_ratio, bint aligned,
                       floating[:, :, :, ::1] gx, int n_threads):
    """gy (K, C, ph, pw) -> gx (N, C, H, W) (written whole).  Every RoI's taps (a task per
    4 RoIs), then one (image, block of 64 channels) per task: its gradient accumulated in a
    private (H*W, 64) scratch (zeroed, then the image's RoIs added in order: the same sums on
    every run and for any thread count), then transposed into gx's planes of those channels.
    Taps on one pixel are merged, except for a RoI whose grad in the block holds a NaN/inf:
    that one gets torchvision's separate corners (inf * 0 must give NaN, inf * (0 + w) does
    not).  Returns the number of tasks that met a RoI whose batch index is not in [0, N)
    (those RoIs are skipped; the caller raises)."""
    cdef Py_ssize_t N = gx.shape[0], C = gx.shape[1], H = gx.shape[2], W = gx.shape[3]
    cdef Py_ssize_t K = rois.shape[0], ph = gy.shape[2], pw = gy.shape[3], nbins = ph * pw
    cdef Py_ssize_t CB = 64, ntasks = N * ((C + CB - 1) // CB), k, task, bad = 0, failed = 0
    cdef const floating* gyp = &gy[0, 0, 0, 0]
    cdef const floating* rp = &rois[0, 0]
    cdef floating* gxp = &gx[0, 0, 0, 0]
    cdef floating off = <floating>0.5 if aligned else <floating>0
    cdef _Lists* tabs = <_Lists*>calloc(K, sizeof(_Lists))
    cdef Py_ssize_t* firsts = <Py_ssize_t*>malloc(K * (nbins + 1) * sizeof(Py_ssize_t))
    cdef floating* gb
    cdef floating* gt
    cdef _Geo* geo
    cdef _Lists* tab
    cdef int r
    if tabs == NULL or firsts == NULL:
        free(tabs)
        free(firsts)
        raise MemoryError("roi_align: out of memory for the sample tables")
    for k in range(K):
        tabs[k].first = firsts + k * (nbins + 1)
    with nogil:
        with parallel(num_threads=team(n_threads, (K + 3) // 4)):
            geo = _geo_new(ph, pw, sizeof(floating))
            for k in prange(K, schedule="dynamic", chunksize=4):
                if geo == NULL or not _roi_table(rp + k * 5, <floating>spatial_scale, off,
                                                 aligned, sampling_ratio, ph, pw, H, W, 1, geo,
                                                 &tabs[k]):
                    failed += 1
            _geo_free(geo)
        if failed == 0:
            with parallel(num_threads=team(n_threads, ntasks)):
                gb = <floating*>ck_malloc64(H * W * CB * sizeof(floating) + 1)
                gt = <floating*>ck_malloc64(nbins * CB * sizeof(floating) + 1)
                geo = _geo_new(ph, pw, sizeof(floating))
                tab = _lists_new(nbins)
                for task in prange(ntasks, schedule="dynamic", chunksize=1):
                    if gb == NULL or gt == NULL or geo == NULL or tab == NULL:
                        failed += 1
                    else:
                        r = _backward_block(gyp, rp, tabs, N, C, H, W, K, ph, pw, CB, task,
                                            <floating>spatial_scale, aligned, sampling_ratio,
                                            gb, gt, geo, tab, gxp)
                        if r == 0:
                            failed += 1
                        elif r == 2:
                            bad += 1
                ck_free64(gb)
                ck_free64(gt)
                _geo_free(geo)
                _lists_free(tab)
        for k in range(K):
            free(tabs[k].idx)
            free(tabs[k].w)
        free(tabs)
        free(firsts)
    if failed:
        raise MemoryError("roi_align: out of memory for the sample tables or a scratch buffer")
    return bad
