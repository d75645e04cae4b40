# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""RoI max pooling (torchvision's roi_pool rule, restated in convkit/reference/roi.py).

float32 runs on an NHWC copy of the map made inside the call (csrc/roi_pool.h: per RoI each
bin's pixels scanned for all channels at once on SSE2, AVX2 or AVX-512, picked by CPUID, the
same bits on each; results transposed from a (bins, channels) scratch).  float64 (and
roi_pool without SSE2) scans the NCHW map with plain loops.  The backward owns blocks of 32
channels of grad_x: each task zeroes its block and adds the RoIs in order, so the sums are
the same bits on every run and for any thread count.  Tasks are OpenMP loops.  Batch indices
and argmax values are read once into a local and checked before use; bad ones are skipped and
counted (the wrapper raises).
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset
from libc.math cimport ceil, floor, round
from libc.float cimport FLT_MAX

from convkit.cpu.csrc.roi cimport (ck_align_simd, ck_set_simd_cap, ck_roi_scratch_bytes,
                                   ck_malloc64, ck_free64, nhwc_row, batch_index, team)
from convkit.cpu.csrc.roi_pool cimport ck_pool_roi_f


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
    return bool(ck_align_simd())    # as _roi_align.simd_available


def set_simd_level(int cap):
    return ck_set_simd_cap(cap)     # this module's cap (see _roi_align.set_simd_level)


def roi_pool_forward_nhwc(const float[:, :, :, ::1] x, float[:, :, :, ::1] xt,
                          const float[:, ::1] rois, const Py_ssize_t[::1] order,
                          double spatial_scale, float[:, :, ::1] y, int64_t[:, :, ::1] argmax,
                          Py_ssize_t ph, Py_ssize_t pw, int n_threads):
    """float32, x (N, C, H, W) (H*W < 2**31): y, argmax (K, C, ph*pw); xt (N, H, W, C) is
    scratch.  The map goes to NHWC ((n, h) rows as tasks), then one RoI per task, handed out
    in ``order``.  Same bins and results as roi_pool_forward.  Returns the number of RoIs
    whose batch index is not in [0, N) (their outputs are not written)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = rois.shape[0], nbins = ph * pw, nh, i, k, b, bad = 0, failed = 0
    cdef const float* xp = &x[0, 0, 0, 0]
    cdef float* xtp = &xt[0, 0, 0, 0]
    cdef const float* rp = &rois[0, 0]
    cdef void* buf
    cdef Py_ssize_t* e
    with nogil:
        for nh in prange(N * H, schedule="dynamic", chunksize=2,
                         num_threads=team(n_threads, (N * H + 1) // 2)):
            nhwc_row(xp, xtp, C, H, W, nh)
        with parallel(num_threads=team(n_threads, K)):
            buf = ck_malloc64(ck_roi_scratch_bytes(nbins))
            e = <Py_ssize_t*>malloc(2 * (ph + pw) * sizeof(Py_ssize_t))
            for i in prange(K, schedule="dynamic", chunksize=1):
                k = order[i]
                b = batch_index(rp[k * 5], N)
                if buf == NULL or e == NULL:
                    failed += 1
                elif b < 0:
                    bad += 1
                else:
                    roi_pool_bins(rp + k * 5, <float>spatial_scale, ph, pw, H, W, e, e + ph,
                                  e + 2 * ph, e + 2 * ph + pw)
                    ck_pool_roi_f(xtp + b * H * W * C, W, C, ph, pw, e, e + ph, e + 2 * ph,
                                  e + 2 * ph + pw, buf, &y[k, 0, 0], &argmax[k, 0, 0])
            ck_free64(buf)
            free(e)
    if failed:
        raise MemoryError("roi_pool_forward: out of memory for a scratch buffer")
    return bad


def roi_pool_forward(const floating[:, :, :, ::1] x, const floating[:, ::1] rois,
                     double spatial_scale, floating[:, :, :, ::1] y,
                     int64_t[:, :, :, ::1] argmax, int n_threads):
    """y, argmax (K, C, ph, pw).  One RoI per task on the NCHW map (float64, or no SSE2;
    float32 goes by roi_pool_forward_nhwc).  Returns the number of RoIs whose batch index is
    not in [0, N) (their outputs are not written)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = rois.shape[0], ph = y.shape[2], pw = y.shape[3], k, b
    cdef Py_ssize_t bad = 0, failed = 0
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef const floating* rp = &rois[0, 0]
    cdef Py_ssize_t* e
    with nogil, parallel(num_threads=team(n_threads, K)):
        e = <Py_ssize_t*>malloc(2 * (ph + pw) * sizeof(Py_ssize_t))
        for k in prange(K, schedule="dynamic", chunksize=1):
            b = batch_index(rp[k * 5], N)
            if e == NULL:
                failed += 1
            elif b < 0:
                bad += 1
            else:
                roi_pool_bins(rp + k * 5, <floating>spatial_scale, ph, pw, H, W, e, e + ph,
                              e + 2 * ph, e + 2 * ph + pw)
                roi_pool_one(xp + b * C * H * W, C, H, W, ph, pw, e, e + ph, e + 2 * ph,
                             e + 2 * ph + pw, &y[k, 0, 0, 0], &argmax[k, 0, 0, 0])
        free(e)
    if failed:
        raise MemoryError("roi_pool_forward: out of memory for bin tables")
    return bad


cdef Py_ssize_t _backward_block(const floating* gy, const floating* rois, const int64_t* argmax,
                                floating* gx, Py_ssize_t N, Py_ssize_t C, Py_ssize_t HW,
                                Py_ssize_t K, Py_ssize_t P, Py_ssize_t c0, Py_ssize_t c1,
                                Py_ssize_t* bad_rois) noexcept nogil:
    """Channels [c0, c1) of grad_x (zeroed, then every RoI's grad added at its argmax, RoIs in
    order: the same sums on every run and for any thread count).  Returns the number of
    argmax values outside [-1, HW); RoIs with a bad batch index are counted in bad_rois."""
    cdef Py_ssize_t n, k, o, b, c, bad = 0
    cdef const floating* g
    cdef const int64_t* am
    cdef floating* plane
    cdef int64_t a
    for n in range(N):
        memset(gx + (n * C + c0) * HW, 0, (c1 - c0) * HW * sizeof(floating))
    for k in range(K):
        b = batch_index(rois[k * 5], N)
        if b < 0:
            bad_rois[0] += 1
            continue
        for c in range(c0, c1):
            g = gy + (k * C + c) * P
            am = argmax + (k * C + c) * P
            plane = gx + (b * C + c) * HW
            for o in range(P):
                a = am[o]
                if a >= 0 and a < HW:
                    plane[a] += g[o]
                elif a != -1:
                    bad += 1
    return bad


def roi_pool_backward(const floating[:, :, ::1] gy, const floating[:, ::1] rois,
                      const int64_t[:, :, ::1] argmax, floating[:, :, ::1] gx, int n_threads):
    """gy, argmax (K, C, ph*pw); gx (N, C, H*W) (written whole).  Each task owns a block of
    32 channels and adds the RoIs in order (the RoI loop outside, so each RoI's slice of
    argmax / grad_y is read contiguously).  Returns (argmax entries outside [-1, H*W), RoIs
    whose batch index is not in [0, N)); both are skipped, and the caller raises and discards
    gx when either is not 0."""
    cdef Py_ssize_t N = gx.shape[0], C = gy.shape[1], HW = gx.shape[2], K = gy.shape[0]
    cdef Py_ssize_t P = gy.shape[2], nblk = (C + 31) // 32, blk, r, bad = 0, bad_rois = 0
    cdef const floating* gyp = &gy[0, 0, 0]
    cdef const floating* rp = &rois[0, 0]
    cdef const int64_t* amp = &argmax[0, 0, 0]
    cdef floating* gxp = &gx[0, 0, 0]
    with nogil:
        for blk in prange(nblk, schedule="dynamic", chunksize=1,
                          num_threads=team(n_threads, nblk)):
            r = 0
            bad += _backward_block(gyp, rp, amp, gxp, N, C, HW, K, P, blk * 32,
                                   min(blk * 32 + 32, C), &r)
            bad_rois += r
    return bad, bad_rois
