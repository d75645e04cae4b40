# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""roi_avg_pool and roi_max_align (rules in convkit/reference/roi_variants.py).

The bins are roi_pool's (_roi_pool.roi_pool_bins), the samples roi_align's
(_roi_align.roi_align_geometry and roi_align_axis_taps, asked for each tap's sample number);
the inner loops are in csrc/roi_variants.h.  Forwards: the map goes to NHWC ((n, h) rows as
tasks), then one RoI per task; float32 roi_max_align scans each RoI on a sample table built
once (corner offsets, weights, sample numbers), channels in vector lanes.  Backwards: one
(image, block of channels) of grad_x per task (float32: accumulated pixel-major in scratch,
channels in vector lanes, then transposed out), zeroed, then the image's RoIs added in
order, so the sums are the same bits on every run and for any thread count (no atomics).  A RoI's batch index and coordinates are read once; a bad
batch index is skipped and flagged in ``status`` (1), as is a RoI whose adaptive grid is too
large to number its samples (2); the wrapper raises.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

from convkit.cpu.csrc.roi cimport (nhwc_row, batch_index, team, ck_transpose_f, ck_malloc64,
                                   ck_free64, ck_roi_scratch_bytes, ck_set_simd_cap,
                                   ck_simd_level)
from convkit.cpu.csrc.roi_variants cimport (ck_avg_roi_f, ck_avg_roi_d, ck_avg_bwd_blk_f,
                                            ck_avg_bwd_blk_d, ck_max_align_bin_f,
                                            ck_max_align_bin_fl, ck_max_align_bin_d,
                                            ck_max_align_bwd_f, ck_max_align_bwd_d,
                                            ck_max_align_bwd_tab_f, ck_max_align_bwd_tab_d,
                                            ck_max_align_pairs_f, ck_max_align_pairs_d,
                                            ck_max_align_table_f, ck_max_align_roi_f,
                                            ck_max_align_bwd_blk_f, ck_ma_groups)
from convkit.cpu._roi_pool cimport roi_pool_bins
from convkit.cpu._roi_align cimport roi_align_axis_taps, roi_align_geometry

def set_simd_level(int cap):
    """Cap this module's float32 kernels' vector width (1: AVX2, 0: SSE2; 2, the default,
    allows AVX-512 elsewhere and AVX2 here) and return the level in use (also limited by the
    CPU); convkit.cpu.roi.set_simd_level sets it with the other RoI modules'."""
    return ck_set_simd_cap(cap)


# the most sample points of an adaptive grid per axis and per bin (argmax numbers a bin's
# samples in int32; reference.roi_variants.MAX_GRID, MAX_SAMPLES)
cdef double MAX_GRID = 1073741824.0
cdef double MAX_SAMPLES = 2147483648.0


# -------------------------------------------------------------------------------- roi_avg_pool
def roi_avg_pool_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] xt,
                         const floating[:, ::1] rois, const Py_ssize_t[::1] order,
                         double spatial_scale, floating[:, :, :, ::1] y,
                         unsigned char[::1] status, int n_threads):
    """x (N, C, H, W) -> y (K, C, ph, pw); xt (N, H, W, C) scratch; RoIs handed out in
    ``order``.  Returns the number of RoIs whose batch index is not in [0, N) (flagged in
    status, outputs not written)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = rois.shape[0], ph = y.shape[2], pw = y.shape[3], nb = ph * pw
    cdef Py_ssize_t nh, i, k, b, bad = 0, failed = 0
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* xtp = &xt[0, 0, 0, 0]
    cdef const floating* rp = &rois[0, 0]
    cdef floating* yp = &y[0, 0, 0, 0]
    cdef Py_ssize_t* e
    cdef floating* acc
    with nogil:
        for nh in prange(N * H, schedule="dynamic", chunksize=2,
                         num_threads=team(n_threads, (N * H + 1) // 2)):
            nhwc_row(xp, xtp, C, H, W, nh)
        with parallel(num_threads=team(n_threads, K)):
            e = <Py_ssize_t*>malloc(2 * (ph + pw) * sizeof(Py_ssize_t))
            acc = <floating*>malloc(C * sizeof(floating) + 1)
            for i in prange(K, schedule="dynamic", chunksize=1):
                k = order[i]
                b = batch_index(rp[k * 5], N)
                if e == NULL or acc == NULL:
                    failed += 1
                elif b < 0:
                    status[k] = 1
                    bad += 1
                else:
                    roi_pool_bins(rp + k * 5, <floating>spatial_scale, ph, pw, H, W, e, e + ph,
                                  e + 2 * ph, e + 2 * ph + pw)
                    if floating is float:
                        ck_avg_roi_f(xtp + b * H * W * C, W, C, ph, pw, e, e + ph, e + 2 * ph,
                                     e + 2 * ph + pw, acc, yp + k * C * nb)
                    else:
                        ck_avg_roi_d(xtp + b * H * W * C, W, C, ph, pw, e, e + ph, e + 2 * ph,
                                     e + 2 * ph + pw, acc, yp + k * C * nb)
            free(e)
            free(acc)
    if failed:
        raise MemoryError("roi_avg_pool_forward: out of memory for bin tables")
    return bad


def roi_avg_pool_backward(const floating[:, :, :, ::1] gy, const floating[:, ::1] rois,
                          double spatial_scale, floating[:, :, :, ::1] gx,
                          unsigned char[::1] status, int n_threads):
    """gy (K, C, ph, pw) -> gx (N, C, H, W) (written whole): every RoI's bins once, then one
    (image, block of 64 channels) per task, accumulated pixel-major in a private (H*W, 64)
    scratch (each pixel's channels added as one vector run) and transposed into gx's planes.
    Returns the number of RoIs with a bad batch index."""
    cdef Py_ssize_t N = gx.shape[0], C = gx.shape[1], H = gx.shape[2], W = gx.shape[3]
    cdef Py_ssize_t K = gy.shape[0], ph = gy.shape[2], pw = gy.shape[3], nb = ph * pw
    cdef Py_ssize_t ne = 2 * (ph + pw), CB = 64, nblk = (C + CB - 1) // CB, HW = H * W
    cdef Py_ssize_t k, t, n, c0, nc, i, q, r, bad = 0, failed = 0
    cdef const floating* gyp = &gy[0, 0, 0, 0]
    cdef const floating* rp = &rois[0, 0]
    cdef floating* gxp = &gx[0, 0, 0, 0]
    cdef floating* gb
    cdef floating* v
    cdef floating* dst
    cdef Py_ssize_t* e
    cdef Py_ssize_t* bins = <Py_ssize_t*>malloc(K * ne * sizeof(Py_ssize_t) + 1)
    cdef Py_ssize_t* batch = <Py_ssize_t*>malloc(K * sizeof(Py_ssize_t) + 1)
    if bins == NULL or batch == NULL:
        free(bins)
        free(batch)
        raise MemoryError("roi_avg_pool_backward: out of memory for bin tables")
    with nogil:
        for k in prange(K, schedule="static", num_threads=team(n_threads, K // 64 + 1)):
            batch[k] = batch_index(rp[k * 5], N)      # read once; tasks use this copy
            if batch[k] < 0:
                status[k] = 1
                bad += 1
            else:
                e = bins + k * ne
                roi_pool_bins(rp + k * 5, <floating>spatial_scale, ph, pw, H, W, e, e + ph,
                              e + 2 * ph, e + 2 * ph + pw)
        with parallel(num_threads=team(n_threads, N * nblk)):
            gb = <floating*>ck_malloc64(HW * CB * sizeof(floating) + 1)
            v = <floating*>malloc(CB * sizeof(floating) + 1)
            for t in prange(N * nblk, schedule="dynamic", chunksize=1):
                if gb == NULL or v == NULL:
                    failed += 1
                    continue
                n = t // nblk
                c0 = t % nblk * CB
                nc = min(CB, C - c0)
                memset(gb, 0, HW * nc * sizeof(floating))
                for k in range(K):      # fixed RoI order: the same sums on every run
                    if batch[k] != n:
                        continue
                    e = bins + k * ne
                    if floating is float:
                        ck_avg_bwd_blk_f(gb, nc, W, ph, pw, e, e + ph, e + 2 * ph,
                                         e + 2 * ph + pw, gyp + (k * C + c0) * nb, nb, v)
                    else:
                        ck_avg_bwd_blk_d(gb, nc, W, ph, pw, e, e + ph, e + 2 * ph,
                                         e + 2 * ph + pw, gyp + (k * C + c0) * nb, nb, v)
                dst = gxp + (n * C + c0) * HW    # (H*W, nc) block -> the nc planes of gx
                for i in range(0, HW, 64):
                    if floating is float:
                        ck_transpose_f(gb + i * nc, nc, min(64, HW - i), nc, dst + i, HW)
                    else:
                        for q in range(nc):
                            for r in range(i, min(i + 64, HW)):
                                dst[q * HW + r] = gb[r * nc + q]
            ck_free64(gb)
            free(v)
    free(bins)
    free(batch)
    if failed:
        raise MemoryError("roi_avg_pool_backward: out of memory for a scratch buffer")
    return bad


# ------------------------------------------------------------------------------- roi_max_align
cdef struct _Axis:
    # one axis of one RoI: bin p's valid samples are taps [first[p], first[p+1]), each with
    # its sample number idx, pixel neighbours low/high and weights wl/wh (of the data type)
    Py_ssize_t cap
    Py_ssize_t* first
    Py_ssize_t* idx
    Py_ssize_t* low
    Py_ssize_t* high
    void* wl
    void* wh


cdef int _axis_alloc(_Axis* t, Py_ssize_t pooled) noexcept nogil:
    t.cap = 0
    t.idx = NULL
    t.low = NULL
    t.high = NULL
    t.wl = NULL
    t.wh = NULL
    t.first = <Py_ssize_t*>malloc((pooled + 1) * sizeof(Py_ssize_t))
    return t.first != NULL


cdef void _axis_free(_Axis* t) noexcept nogil:
    free(t.first)
    free(t.idx)         # low, high, wl, wh live in idx's block
    t.first = NULL
    t.idx = NULL
    t.low = NULL
    t.high = NULL
    t.wl = NULL
    t.wh = NULL
    t.cap = 0


cdef int _axis_taps(_Axis* t, floating start, floating bin_size, floating grid,
                    Py_ssize_t pooled, Py_ssize_t size) noexcept nogil:
    """roi_align's valid samples along one axis, with their numbers (grown as needed).
    0 when memory ran out."""
    cdef Py_ssize_t n = roi_align_axis_taps(start, bin_size, grid, pooled, size, t.cap, t.first,
                                            t.low, t.high, <floating*>t.wl, <floating*>t.wh,
                                            t.idx)
    if n <= t.cap and t.low != NULL:
        return 1
    # one block for the five arrays (idx, low, high, then the weights): a RoI's taps cost one
    # malloc and one free, not five
    free(t.idx)
    t.idx = <Py_ssize_t*>malloc(3 * n * sizeof(Py_ssize_t) + 2 * n * sizeof(floating) + 1)
    t.low = NULL
    t.high = NULL
    t.wl = NULL
    t.wh = NULL
    t.cap = 0
    if t.idx == NULL:
        return 0
    t.low = t.idx + n
    t.high = t.idx + 2 * n
    t.wl = <void*>(t.idx + 3 * n)
    t.wh = <void*>(<floating*>t.wl + n)
    t.cap = n
    roi_align_axis_taps(start, bin_size, grid, pooled, size, t.cap, t.first, t.low, t.high,
                        <floating*>t.wl, <floating*>t.wh, t.idx)
    return 1


cdef int _roi_axes(const floating* roi, floating scale, bint aligned, Py_ssize_t sr,
                   Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t H, Py_ssize_t W, _Axis* ty,
                   _Axis* tx, int64_t* gw) noexcept nogil:
    """One RoI's y and x taps.  1 done, 0 out of memory, -2 adaptive grid over MAX_GRID per
    axis or MAX_SAMPLES per bin."""
    cdef floating geo[6]
    roi_align_geometry(roi, scale, <floating>0.5 if aligned else <floating>0, aligned, sr, ph,
                       pw, geo)
    if sr <= 0 and not (geo[2] <= MAX_GRID and geo[5] <= MAX_GRID
                        and <double>geo[2] * <double>geo[5] <= MAX_SAMPLES):
        return -2
    gw[0] = <int64_t>geo[5] if geo[5] >= 1 else 0
    if not (_axis_taps(ty, geo[0], geo[1], geo[2], ph, H)
            and _axis_taps(tx, geo[3], geo[4], geo[5], pw, W)):
        return 0
    return 1


cdef struct _Table:
    # one RoI's float sample table (csrc/roi_variants.h, ck_max_align_table_f), room for cap
    # samples, and the scan's bin-major scratch (scratch: tb then ti)
    Py_ssize_t cap
    Py_ssize_t* sf
    int32_t* base
    Py_ssize_t* so
    float* sw
    int32_t* rel
    void* scratch
    # the backward's pixel groups (ck_ma_groups; gf NULL: none, the masked path)
    Py_ssize_t* gf
    Py_ssize_t* goff
    float* gwt
    int32_t* gdm
    int32_t* sx
    int ws
    void* gmem      # the block gf .. sx live in (kept when gf is set back to NULL)


# the most samples a RoI's table holds per bin on average (beyond: the per-bin path)
cdef Py_ssize_t TABLE_PER_BIN = 256


cdef void _table_free(_Table* t) noexcept nogil:
    free(t.sf)
    free(t.base)
    free(t.so)
    free(t.sw)
    free(t.rel)
    ck_free64(t.scratch)
    free(t.gmem)
    t.gmem = NULL
    t.gf = NULL


cdef int _table_alloc(_Table* t, Py_ssize_t nb, bint scratch) noexcept nogil:
    """Room for nb bins (samples come with _table_build), and the forward's scratch if asked
    for.  0 when memory ran out."""
    t.cap = 0
    t.so = NULL
    t.sw = NULL
    t.rel = NULL
    t.scratch = NULL
    t.gf = NULL
    t.goff = NULL
    t.gwt = NULL
    t.gdm = NULL
    t.sx = NULL
    t.gmem = NULL
    t.sf = <Py_ssize_t*>malloc((nb + 1) * sizeof(Py_ssize_t))
    # base: nb int32, then nb bytes of the table's 2 x 2 flags (ck_max_align_table_f)
    t.base = <int32_t*>malloc(nb * sizeof(int32_t) + nb + 1)
    if scratch:
        t.scratch = ck_malloc64(ck_roi_scratch_bytes(nb))
    return t.sf != NULL and t.base != NULL and (t.scratch != NULL or not scratch)


cdef int _table_build(_Table* t, _Axis* ty, _Axis* tx, Py_ssize_t W, Py_ssize_t C,
                      Py_ssize_t ph, Py_ssize_t pw, int64_t gw, bint full) noexcept nogil:
    """The RoI's float sample table (so: pixel offsets times C; C = 1 gives pixel numbers);
    ``full`` False leaves out the offsets and weights (so, sw NULL: the merged backward needs
    only sf, base and rel).  0 when it does not fit (too many samples, no memory, or sample
    numbers beyond int32): the caller takes the per-bin path."""
    cdef Py_ssize_t n, i
    cdef Py_ssize_t ny = ty.first[ph] - ty.first[0], nx = tx.first[pw] - tx.first[0]
    if full and t.so == NULL:
        t.cap = 0       # built without offsets before: room for them too
    # the table holds ny * nx samples (each bin pairs its y taps with its x taps): room made
    # first, so ck_max_align_table_f's counting pass runs once
    if ny > 0 and nx > TABLE_PER_BIN * ph * pw // ny:
        return 0
    if ny * nx > t.cap and not _table_room(t, ny * nx, full):
        return 0
    for i in range(2):
        n = ck_max_align_table_f(W, C, ph, pw, ty.first, ty.low, ty.high, <float*>ty.wl,
                                 <float*>ty.wh, ty.idx, tx.first, tx.low, tx.high,
                                 <float*>tx.wl, <float*>tx.wh, tx.idx, gw, t.cap, t.sf,
                                 t.so if full else NULL, t.sw if full else NULL, t.rel, t.base)
        if n < 0 or n > TABLE_PER_BIN * ph * pw:
            return 0
        if n <= t.cap:
            return 1
        if not _table_room(t, n, full):
            return 0
    return 0


cdef int _table_room(_Table* t, Py_ssize_t n, bint full) noexcept nogil:
    """Room for n samples (offsets and weights too when ``full``).  0 when memory ran out."""
    free(t.so)
    free(t.sw)
    free(t.rel)
    t.so = NULL
    t.sw = NULL
    if full:
        t.so = <Py_ssize_t*>malloc(4 * n * sizeof(Py_ssize_t))
        t.sw = <float*>malloc(4 * n * sizeof(float))
    t.rel = <int32_t*>malloc(n * sizeof(int32_t))
    t.cap = n
    if t.rel == NULL or (full and (t.so == NULL or t.sw == NULL)):
        t.cap = 0
        return 0
    return 1


cdef int _groups_build(_Table* t, _Axis* ty, _Axis* tx, Py_ssize_t W, Py_ssize_t ph,
                       Py_ssize_t pw) noexcept nogil:
    """The backward's pixel groups of a built table (C = 1), from the RoI's axis taps, when
    the RoI can be merged (else gf stays NULL).  0 when memory ran out."""
    cdef Py_ssize_t nb = ph * pw, n = t.sf[nb]
    # one block: gf (nb + 1), goff (4n), gwt (32n floats), gdm, sx (nb int32 each)
    t.gmem = malloc((nb + 1 + 4 * n) * sizeof(Py_ssize_t) + (32 * n + 2 * nb) * sizeof(float)
                    + 1)
    if t.gmem == NULL:
        return 0
    t.gf = <Py_ssize_t*>t.gmem
    t.goff = t.gf + nb + 1
    t.gwt = <float*>(t.goff + 4 * n)
    t.gdm = <int32_t*>(t.gwt + 32 * n)
    t.sx = t.gdm + nb
    if ck_ma_groups(W, ph, pw, ty.first, ty.low, ty.high, <float*>ty.wl, <float*>ty.wh,
                    tx.first, tx.low, tx.high, <float*>tx.wl, <float*>tx.wh, t.sf, t.rel, t.gf,
                    t.goff, t.gwt, t.gdm, t.sx, &t.ws) < 0:
        t.gf = NULL
    return 1


def roi_max_align_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] xt,
                          const floating[:, ::1] rois, const Py_ssize_t[::1] order,
                          double spatial_scale, Py_ssize_t sampling_ratio, bint aligned,
                          floating[:, :, :, ::1] y, unsigned char[::1] argmax, int aw,
                          unsigned char[::1] status, int n_threads):
    """x (N, C, H, W) -> y, argmax (K, C, ph, pw); argmax's bytes, aw (1: int8, 4: int32) per
    entry; xt (N, H, W, C) scratch; one RoI per task,
    handed out in ``order``; float RoIs go through a sample table (ck_max_align_roi_f) when it
    fits, the rest bin by bin.  Returns the number of RoIs flagged in status (outputs not
    written)."""
    cdef Py_ssize_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3]
    cdef Py_ssize_t K = rois.shape[0], ph = y.shape[2], pw = y.shape[3], nb = ph * pw
    cdef Py_ssize_t nh, i, k, b, p, q, a0, a1, b0, b1, o, bad = 0, failed = 0
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* xtp = &xt[0, 0, 0, 0]
    cdef const floating* rp = &rois[0, 0]
    cdef floating* yp = &y[0, 0, 0, 0]
    cdef unsigned char* amp = &argmax[0]
    cdef const floating* img
    cdef floating* best
    cdef int64_t* bi
    cdef _Axis* ax
    cdef _Table* tab
    cdef int64_t gw
    cdef int r
    # per (image, row) from N on, then per image (first N): 1 when the NHWC copy holds no
    # NaN/inf
    cdef unsigned char* fin = <unsigned char*>calloc(N + N * H, 1)
    if fin == NULL:
        raise MemoryError("roi_max_align_forward: out of memory for the finiteness flags")
    with nogil:
        for nh in prange(N * H, schedule="dynamic", chunksize=2,
                         num_threads=team(n_threads, (N * H + 1) // 2)):
            fin[N + nh] = nhwc_row(xp, xtp, C, H, W, nh)
        for i in range(N):
            fin[i] = 1
        for nh in range(N * H):
            fin[nh // H] = fin[nh // H] & fin[N + nh]
        with parallel(num_threads=team(n_threads, K)):
            best = <floating*>malloc(C * sizeof(floating) + 1)
            bi = <int64_t*>malloc(C * sizeof(int64_t) + 1)
            ax = <_Axis*>calloc(2, sizeof(_Axis))
            if ax != NULL and not (_axis_alloc(&ax[0], ph) and _axis_alloc(&ax[1], pw)):
                _axis_free(&ax[0])
                _axis_free(&ax[1])
                free(ax)
                ax = NULL
            tab = NULL
            if floating is float:
                tab = <_Table*>calloc(1, sizeof(_Table))
                if tab != NULL and not _table_alloc(tab, nb, True):
                    _table_free(tab)
                    free(tab)
                    tab = NULL
            for i in prange(K, schedule="dynamic", chunksize=1):
                k = order[i]
                b = batch_index(rp[k * 5], N)
                gw = 0          # assigned here, so each thread has its own (written via &gw)
                if best == NULL or bi == NULL or ax == NULL:
                    failed += 1
                    continue
                if b < 0:
                    status[k] = 1
                    bad += 1
                    continue
                r = _roi_axes(rp + k * 5, <floating>spatial_scale, aligned, sampling_ratio, ph,
                              pw, H, W, &ax[0], &ax[1], &gw)
                if r == 0:
                    failed += 1
                    continue
                if r < 0:
                    status[k] = 2
                    bad += 1
                    continue
                img = xtp + b * H * W * C
                if floating is float:
                    if tab != NULL and _table_build(tab, &ax[0], &ax[1], W, C, ph, pw, gw, True):
                        ck_max_align_roi_f(img, C, nb, tab.sf, tab.so, tab.sw, tab.rel,
                                           tab.base, fin[b], tab.scratch, yp + k * C * nb,
                                           amp + k * C * nb * aw, aw)
                        continue
                for p in range(ph):
                    a0 = ax[0].first[p]
                    a1 = ax[0].first[p + 1]
                    for q in range(pw):
                        b0 = ax[1].first[q]
                        b1 = ax[1].first[q + 1]
                        o = k * C * nb + p * pw + q
                        if floating is float:
                            if (a1 - a0) * (b1 - b0) < 2147483647:
                                ck_max_align_bin_f(img, W, C, a0, a1, ax[0].low, ax[0].high,
                                                   <float*>ax[0].wl, <float*>ax[0].wh,
                                                   ax[0].idx, b0, b1, ax[1].low, ax[1].high,
                                                   <float*>ax[1].wl, <float*>ax[1].wh,
                                                   ax[1].idx, gw, best, <int32_t*>bi, nb,
                                                   yp + o, amp + o * aw, aw)
                            else:
                                ck_max_align_bin_fl(img, W, C, a0, a1, ax[0].low, ax[0].high,
                                                    <float*>ax[0].wl, <float*>ax[0].wh,
                                                    ax[0].idx, b0, b1, ax[1].low, ax[1].high,
                                                    <float*>ax[1].wl, <float*>ax[1].wh,
                                                    ax[1].idx, gw, best, bi, nb, yp + o,
                                                    amp + o * aw, aw, 0)
                        else:
                            ck_max_align_bin_d(img, W, C, a0, a1, ax[0].low, ax[0].high,
                                               <double*>ax[0].wl, <double*>ax[0].wh, ax[0].idx,
                                               b0, b1, ax[1].low, ax[1].high,
                                               <double*>ax[1].wl, <double*>ax[1].wh, ax[1].idx,
                                               gw, best, bi, nb, yp + o, amp + o * aw, aw, 0)
            free(best)
            free(bi)
            if tab != NULL:
                _table_free(tab)
                free(tab)
            if ax != NULL:
                _axis_free(&ax[0])
                _axis_free(&ax[1])
                free(ax)
    free(fin)
    if failed:
        raise MemoryError("roi_max_align_forward: out of memory for the sample tables")
    return bad


cdef struct _Pairs:
    # one RoI's pair table (csrc/roi_variants.h, CK_MAX_ALIGN_BWD_TAB); pf NULL: not built
    int64_t* base
    Py_ssize_t* nx
    Py_ssize_t* pf
    Py_ssize_t* off
    void* wt


cdef void _pairs_free(_Pairs* t) noexcept nogil:
    free(t.base)
    free(t.nx)
    free(t.pf)
    free(t.off)
    free(t.wt)
    t.pf = NULL


cdef int _pairs_build(_Pairs* t, _Axis* ty, _Axis* tx, Py_ssize_t W, Py_ssize_t ph,
                      Py_ssize_t pw, int64_t gw, size_t itemsize) noexcept nogil:
    """The RoI's pair table, unless it would hold over 64 samples per bin (then pf stays NULL
    and the backward decodes on the axis taps).  0 when memory ran out."""
    cdef Py_ssize_t p, q, n = 0, nb = ph * pw
    for p in range(ph):
        for q in range(pw):
            n += (ty.first[p + 1] - ty.first[p]) * (tx.first[q + 1] - tx.first[q])
    if n > 64 * nb:
        return 1
    t.base = <int64_t*>malloc(nb * sizeof(int64_t) + 1)
    t.nx = <Py_ssize_t*>malloc(nb * sizeof(Py_ssize_t) + 1)
    t.pf = <Py_ssize_t*>malloc((nb + 1) * sizeof(Py_ssize_t))
    t.off = <Py_ssize_t*>malloc(4 * n * sizeof(Py_ssize_t) + 1)
    t.wt = malloc(4 * n * itemsize + 1)
    if t.base == NULL or t.nx == NULL or t.pf == NULL or t.off == NULL or t.wt == NULL:
        _pairs_free(t)
        return 0
    return 1


cdef int _roi_pairs(_Pairs* pt, _Axis* ty, _Axis* tx, Py_ssize_t W, Py_ssize_t ph,
                    Py_ssize_t pw, int64_t gw, floating kind) noexcept nogil:
    """One RoI's pair table for the plane-by-plane backward (none when it would be too big;
    ``kind`` picks the data type).  0 when memory ran out."""
    if not _pairs_build(pt, ty, tx, W, ph, pw, gw, sizeof(floating)):
        return 0
    if pt.pf == NULL:
        return 1
    if floating is float:
        ck_max_align_pairs_f(W, ph, pw, ty.first, ty.low, ty.high, <float*>ty.wl,
                             <float*>ty.wh, ty.idx, tx.first, tx.low, tx.high, <float*>tx.wl,
                             <float*>tx.wh, tx.idx, gw, pt.base, pt.nx, pt.pf, pt.off,
                             <float*>pt.wt)
    else:
        ck_max_align_pairs_d(W, ph, pw, ty.first, ty.low, ty.high, <double*>ty.wl,
                             <double*>ty.wh, ty.idx, tx.first, tx.low, tx.high,
                             <double*>tx.wl, <double*>tx.wh, tx.idx, gw, pt.base, pt.nx, pt.pf,
                             pt.off, <double*>pt.wt)
    return 1


def roi_max_align_backward(const floating[:, :, :, ::1] gy, const unsigned char[::1] argmax,
                           int aw, const floating[:, ::1] rois, double spatial_scale,
                           Py_ssize_t sampling_ratio, bint aligned, floating[:, :, :, ::1] gx,
                           unsigned char[::1] status, int n_threads):
    """gy, argmax (K, C, ph, pw) -> gx (N, C, H, W) (written whole): every RoI's taps and
    sample table (float) or pair table once (read from rois once), then one (image, block of
    channels) per task, the image's RoIs added in order.  float, when every RoI has its sample
    table: blocks of 64 channels accumulated pixel-major in a private (H*W, 64) scratch, the
    channels vectorised (ck_max_align_bwd_blk_f: one add per pixel a bin's samples touch, by
    the RoI's pixel groups, where the grad block is finite), then transposed into gx's planes;
    else blocks of 16 channels, one plane at a time.  argmax: its bytes, aw (1: int8, 4:
    int32) per entry (the boundary casts other integer dtypes).  Each argmax entry is read
    once and checked against its bin's samples.  Returns (bad argmax entries, RoIs flagged
    in status); both are skipped, the caller raises."""
    cdef Py_ssize_t N = gx.shape[0], C = gx.shape[1], H = gx.shape[2], W = gx.shape[3]
    cdef Py_ssize_t K = gy.shape[0], ph = gy.shape[2], pw = gy.shape[3], nb = ph * pw
    cdef Py_ssize_t CB = 16, nblk = (C + CB - 1) // CB, HW = H * W
    cdef Py_ssize_t VB = 64, nvblk = (C + VB - 1) // VB
    cdef Py_ssize_t k, t, n, c, c0, c1, o, i, nc, bad = 0, bad_rois = 0, failed = 0, notab = 0
    cdef float* gb
    cdef float* gt
    cdef int32_t* rt
    cdef int32_t* wd
    cdef _Table* tb
    cdef _Table* lt
    cdef Py_ssize_t r2
    cdef const floating* gyp = &gy[0, 0, 0, 0]
    cdef const unsigned char* amp = &argmax[0]
    cdef const floating* rp = &rois[0, 0]
    cdef floating* gxp = &gx[0, 0, 0, 0]
    cdef floating* plane
    cdef _Axis* ty
    cdef _Axis* tx
    cdef _Pairs* pt
    cdef int r
    cdef _Axis* axes = <_Axis*>calloc(2 * K + 1, sizeof(_Axis))
    cdef _Pairs* pairs = <_Pairs*>calloc(K + 1, sizeof(_Pairs))
    cdef Py_ssize_t* batch = <Py_ssize_t*>malloc(K * sizeof(Py_ssize_t) + 1)
    cdef int64_t* gws = <int64_t*>malloc(K * sizeof(int64_t) + 1)
    cdef _Table* tabs = <_Table*>calloc(K + 1, sizeof(_Table))
    cdef Py_ssize_t* first = <Py_ssize_t*>malloc(N * sizeof(Py_ssize_t) + 1)
    cdef Py_ssize_t* nxt = <Py_ssize_t*>malloc(K * sizeof(Py_ssize_t) + 1)
    if (axes == NULL or pairs == NULL or batch == NULL or gws == NULL or tabs == NULL
            or first == NULL or nxt == NULL):
        free(axes)
        free(pairs)
        free(batch)
        free(gws)
        free(tabs)
        free(first)
        free(nxt)
        raise MemoryError("roi_max_align_backward: out of memory for the sample tables")
    with nogil:
        # static: each thread builds (and mallocs in its own arena) the same RoIs' tables on
        # every call, so the arenas reach their size once instead of growing call after call
        # (a dynamic split faulted fresh pages in for the first ten calls or so)
        for k in prange(K, schedule="static",
                        num_threads=team(n_threads, K // 16 + 1)):
            batch[k] = batch_index(rp[k * 5], N)      # read once; tasks use this copy
            if batch[k] < 0:
                status[k] = 1
                bad_rois += 1
            elif not (_axis_alloc(&axes[2 * k], ph) and _axis_alloc(&axes[2 * k + 1], pw)):
                failed += 1
                batch[k] = -1
            else:
                r = _roi_axes(rp + k * 5, <floating>spatial_scale, aligned, sampling_ratio, ph,
                              pw, H, W, &axes[2 * k], &axes[2 * k + 1], &gws[k])
                if r == 0:
                    failed += 1
                    batch[k] = -1
                elif r < 0:
                    status[k] = 2
                    bad_rois += 1
                    batch[k] = -1
                elif floating is float:
                    # without offsets and weights where the merged path can run (AVX2): they
                    # were half the tables' bytes, written here and read by every task; a
                    # block that needs them (a grad that is not finite) builds them itself
                    if not (_table_alloc(&tabs[k], nb, False)
                            and _table_build(&tabs[k], &axes[2 * k], &axes[2 * k + 1], W, 1,
                                             ph, pw, gws[k], ck_simd_level() < 1)):
                        notab += 1
                    elif not _groups_build(&tabs[k], &axes[2 * k], &axes[2 * k + 1], W, ph,
                                           pw):
                        failed += 1
                        batch[k] = -1
                    elif tabs[k].gf == NULL and tabs[k].so == NULL and not _table_build(
                            &tabs[k], &axes[2 * k], &axes[2 * k + 1], W, 1, ph, pw, gws[k],
                            True):          # no groups: the masked path's table (it fit)
                        failed += 1
                        batch[k] = -1
                elif not _roi_pairs(&pairs[k], &axes[2 * k], &axes[2 * k + 1], W, ph, pw,
                                    gws[k], <floating>0):
                    failed += 1
                    batch[k] = -1
        if floating is float:
            if notab and failed == 0:   # some RoI has no sample table: all go plane by plane
                for k in prange(K, schedule="static",
                                num_threads=team(n_threads, K // 16 + 1)):
                    if batch[k] >= 0 and not _roi_pairs(&pairs[k], &axes[2 * k],
                                                         &axes[2 * k + 1], W, ph, pw, gws[k],
                                                         <floating>0):
                        failed += 1
                        batch[k] = -1
        if floating is float and notab == 0 and failed == 0:
            for n in range(N):      # each image's RoIs as a list, in order: first, nxt
                first[n] = K
            for k in range(K - 1, -1, -1):
                if batch[k] >= 0:
                    nxt[k] = first[batch[k]]
                    first[batch[k]] = k
            with parallel(num_threads=team(n_threads, N * nvblk)):
                gb = <float*>ck_malloc64(HW * VB * sizeof(float) + 1)
                gt = <float*>malloc(nb * VB * sizeof(float) + 1)
                rt = <int32_t*>malloc(nb * VB * sizeof(int32_t) + 1)
                wd = <int32_t*>malloc(nb * VB * sizeof(int32_t) + 1)   # an int8 block widened
                lt = <_Table*>calloc(1, sizeof(_Table))     # a full table, built on demand
                if lt != NULL and not _table_alloc(lt, nb, False):
                    _table_free(lt)
                    free(lt)
                    lt = NULL
                for t in prange(N * nvblk, schedule="dynamic", chunksize=1):
                    if gb == NULL or gt == NULL or rt == NULL or wd == NULL:
                        failed += 1
                        continue
                    n = t // nvblk
                    c0 = t % nvblk * VB
                    nc = min(VB, C - c0)
                    memset(gb, 0, HW * nc * sizeof(float))
                    k = first[n]
                    while k < K:            # fixed RoI order: the same sums on every run
                        tb = &tabs[k]
                        o = (k * C + c0) * nb
                        i = nxt[k]          # the next RoI of this image (K: none)
                        r2 = ck_max_align_bwd_blk_f(
                            gb, nc, nb, tb.sf, tb.so, tb.sw, tb.rel, tb.base,
                            <const float*>gyp + o, amp + o * aw, aw, wd,
                            gt, rt, <const float*>gyp + (i * C + c0) * nb if i < K else NULL,
                            amp + (i * C + c0) * nb * aw if i < K else NULL,
                            tb.gf, tb.goff, tb.gwt, tb.gdm, tb.sx, tb.ws)
                        if r2 < 0:      # the masked path, on this RoI's full table
                            if lt == NULL or not _table_build(lt, &axes[2 * k],
                                                              &axes[2 * k + 1], W, 1, ph, pw,
                                                              gws[k], True):
                                failed += 1
                                r2 = 0
                            else:
                                r2 = ck_max_align_bwd_blk_f(
                                    gb, nc, nb, lt.sf, lt.so, lt.sw, lt.rel, lt.base,
                                    <const float*>gyp + o, amp + o * aw, aw, wd, gt, rt, NULL,
                                    NULL, NULL, NULL, NULL, NULL, NULL, 0)
                        bad += r2
                        k = i
                    for i in range(0, HW, 64):  # (H*W, nc) block -> the nc planes of gx
                        ck_transpose_f(gb + i * nc, nc, min(64, HW - i), nc,
                                       <float*>gxp + (n * C + c0) * HW + i, HW)
                ck_free64(gb)
                free(gt)
                free(rt)
                free(wd)
                if lt != NULL:
                    _table_free(lt)
                    free(lt)
        elif failed == 0:
            for t in prange(N * nblk, schedule="dynamic", chunksize=1,
                            num_threads=team(n_threads, N * nblk)):
                n = t // nblk
                c0 = t % nblk * CB
                c1 = min(c0 + CB, C)
                memset(gxp + (n * C + c0) * H * W, 0, (c1 - c0) * H * W * sizeof(floating))
                for k in range(K):      # fixed RoI order: the same sums on every run
                    if batch[k] != n:
                        continue
                    ty = &axes[2 * k]
                    tx = &axes[2 * k + 1]
                    pt = &pairs[k]
                    for c in range(c0, c1):
                        plane = gxp + (n * C + c) * H * W
                        o = (k * C + c) * nb
                        if pt.pf != NULL:
                            if floating is float:
                                bad += ck_max_align_bwd_tab_f(plane, nb, pt.base, pt.nx, pt.pf,
                                                              pt.off, <float*>pt.wt, gws[k],
                                                              gyp + o, amp + o * aw, aw)
                            else:
                                bad += ck_max_align_bwd_tab_d(plane, nb, pt.base, pt.nx, pt.pf,
                                                              pt.off, <double*>pt.wt, gws[k],
                                                              gyp + o, amp + o * aw, aw)
                        elif floating is float:
                            bad += ck_max_align_bwd_f(plane, W, ph, pw, ty.first, ty.low,
                                                      ty.high, <float*>ty.wl, <float*>ty.wh,
                                                      ty.idx, tx.first, tx.low, tx.high,
                                                      <float*>tx.wl, <float*>tx.wh, tx.idx,
                                                      gws[k], gyp + o, amp + o * aw, aw)
                        else:
                            bad += ck_max_align_bwd_d(plane, W, ph, pw, ty.first, ty.low,
                                                      ty.high, <double*>ty.wl, <double*>ty.wh,
                                                      ty.idx, tx.first, tx.low, tx.high,
                                                      <double*>tx.wl, <double*>tx.wh, tx.idx,
                                                      gws[k], gyp + o, amp + o * aw, aw)
        # freed by the thread that built them (the same static split): back into its own
        # arena, in parallel, instead of one thread taking every arena's lock in turn
        for k in prange(K, schedule="static", num_threads=team(n_threads, K // 16 + 1)):
            _axis_free(&axes[2 * k])
            _axis_free(&axes[2 * k + 1])
            _pairs_free(&pairs[k])
            _table_free(&tabs[k])
    free(axes)
    free(pairs)
    free(batch)
    free(gws)
    free(tabs)
    free(first)
    free(nxt)
    if failed:
        raise MemoryError("roi_max_align_backward: out of memory for the sample tables")
    return bad, bad_rois
