# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Max / average pooling kernels (torch semantics), one (H, W) plane at a time.

Each OpenMP thread owns whole (n, c) planes of the output (forward) or of grad_x (backward),
so the backward scatter-adds run in a fixed order: bit-identical results on every run and for
any thread count.  Window bounds come precomputed from ``pool.py`` (no division in the inner
loops; all indices non-negative, so ``cdivision`` is safe here).

Stride-2 kernels of width 2 or 3 (the ResNet / VGG pools) take branch-free SSE2 row kernels
(csrc/pool.h) for the windows that lie inside the image (values, indices, NaN and tie rules
exactly those of the general loop; torch's summation order for average pooling).  Backwards
build each gradient plane in a per-thread scratch that stays in cache and stream it out with
non-temporal stores (no read-for-ownership of grad_x).
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.stdint cimport int64_t
from libc.string cimport memset
from libc.math cimport INFINITY

from convkit.cpu.csrc.pool cimport (ck_max_row_f, ck_max_row_d, ck_avg_row_f, ck_avg_row_d,
    ck_max2x2_plane_f, ck_stream_copy_f, ck_stream_copy_d)


cdef inline void _stream_copy(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    if floating is float:
        ck_stream_copy_f(dst, src, n)
    else:
        ck_stream_copy_d(dst, src, n)


# A plane up to this many bytes is built in a per-thread scratch (L2-resident) and streamed out;
# bigger planes are written in place.
cdef enum:
    _SCRATCH_MAX = 1 << 20
    # ... and only when the whole gradient is too big to stay in cache anyway: streaming stores
    # of small planes flush partial write-combining buffers and an sfence per plane (a
    # (64, 64, 2, 2) avg-pool backward took 1.3 ms that way, 20 us in place).
    _STREAM_MIN_TOTAL = 1 << 22
    # ... and only for planes of a page or more: a plane of a few cache lines pays the same
    # partial-line flush and sfence (524288 planes of 2x2, 8 MB: 134 ms streamed, 18 ms in place)
    _STREAM_MIN_PLANE = 4096


cdef inline bint _use_scratch(Py_ssize_t planes, Py_ssize_t plane_bytes) noexcept nogil:
    return (_STREAM_MIN_PLANE <= plane_bytes <= _SCRATCH_MAX
            and planes * plane_bytes >= _STREAM_MIN_TOTAL)


cdef inline Py_ssize_t _plane_chunk(Py_ssize_t planes, Py_ssize_t plane_elems,
                                    int n_threads) noexcept nogil:
    """Planes per chunk of the static, round-robin schedule (the same thread writes the same
    planes every call): at least 4, and enough for ~16K elements (under the dynamic schedule
    used before, 4096 planes of 2x2 in chunks of 4 spent most of a 130 us avg-pool forward in
    the OpenMP scheduler); capped so each thread still gets several chunks."""
    cdef Py_ssize_t c = 16384 // (plane_elems if plane_elems > 0 else 1)
    cdef Py_ssize_t cap = planes // (4 * n_threads)
    if c > cap:
        c = cap
    if c < 4:
        c = 4
    return c


cdef void max_pool2d_plane(const floating* x, Py_ssize_t W,
                           const Py_ssize_t* hbase, const Py_ssize_t* h0, const Py_ssize_t* h1,
                           const Py_ssize_t* wbase, const Py_ssize_t* w0, const Py_ssize_t* w1,
                           Py_ssize_t dh, Py_ssize_t dw,
                           floating* y, int64_t* idx, Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil:
    cdef Py_ssize_t oh, ow, i, j, r, best_i, col0
    cdef floating v, best
    cdef const floating* row
    for oh in range(Ho):
        for ow in range(Wo):
            # torch: start from -inf at the first in-image tap; NaN always replaces (so a NaN wins)
            best = -INFINITY
            col0 = wbase[ow] + w0[ow] * dw
            best_i = (hbase[oh] + h0[oh] * dh) * W + col0
            for i in range(h0[oh], h1[oh]):
                r = (hbase[oh] + i * dh) * W
                row = x + r
                for j in range(w0[ow], w1[ow]):
                    v = row[wbase[ow] + j * dw]
                    if v > best or v != v:
                        best = v
                        best_i = r + wbase[ow] + j * dw
            y[oh * Wo + ow] = best
            idx[oh * Wo + ow] = best_i


cdef inline void _max_one(const floating* x, Py_ssize_t W, Py_ssize_t hb, Py_ssize_t i0,
                          Py_ssize_t i1, Py_ssize_t wb, Py_ssize_t j0, Py_ssize_t j1,
                          Py_ssize_t dh, Py_ssize_t dw, floating* y, int64_t* idx) noexcept nogil:
    cdef Py_ssize_t i, j, r, best_i
    cdef floating v, best = -INFINITY
    best_i = (hb + i0 * dh) * W + wb + j0 * dw
    for i in range(i0, i1):
        r = (hb + i * dh) * W + wb
        for j in range(j0, j1):
            v = x[r + j * dw]
            if v > best or v != v:
                best = v
                best_i = r + j * dw
    y[0] = best
    idx[0] = best_i



cdef void max_pool2d_s2_plane(const floating* x, Py_ssize_t W, Py_ssize_t K,
                              const Py_ssize_t* hbase, const Py_ssize_t* h0, const Py_ssize_t* h1,
                              const Py_ssize_t* wbase, const Py_ssize_t* w0, const Py_ssize_t* w1,
                              floating* y, int64_t* idx, Py_ssize_t Ho, Py_ssize_t Wo,
                              floating* accv, floating* accr) noexcept nogil:
    """Kernel width K (2 or 3), column stride 2, no dilation: branch-free and vectorised over
    the output columns, one window row at a time.

    Row-major visiting with "replace if greater or NaN" equals taking each window row's
    (max, first position) and merging the rows in order with the same rule, so values and
    indices (NaN and ties included) are exactly max_pool2d_plane's.  The winning tap is kept
    as a small floating offset from the window's first tap (exact: the caller only takes
    this path when K*W < 2**23), so every lane has the width of the data.  accv/accr: Wo
    scratch values owned by the calling thread.
    """
    cdef Py_ssize_t oh, ow, i, c, cb = wbase[0], lo = 0, hi = Wo
    cdef floating rel
    cdef const floating* row
    # interior columns: all K taps inside the image
    while lo < Wo and (w0[lo] != 0 or w1[lo] != K):
        lo += 1
    while hi > lo and (w0[hi - 1] != 0 or w1[hi - 1] != K):
        hi -= 1
    for oh in range(Ho):
        for ow in range(lo, hi):
            accv[ow] = -INFINITY
            accr[ow] = 0
        for i in range(h0[oh], h1[oh]):
            row = x + (hbase[oh] + i) * W
            rel = (i - h0[oh]) * W
            if floating is float:
                ck_max_row_f(row + cb + 2 * lo, hi - lo, <int>K, rel, accv + lo, accr + lo)
            else:
                ck_max_row_d(row + cb + 2 * lo, hi - lo, <int>K, rel, accv + lo, accr + lo)
        c = (hbase[oh] + h0[oh]) * W + cb
        for ow in range(lo, hi):
            y[oh * Wo + ow] = accv[ow]
            idx[oh * Wo + ow] = c + 2 * ow + <Py_ssize_t>accr[ow]
        # edge columns (clipped windows): the general loop
        for ow in range(lo):
            _max_one(x, W, hbase[oh], h0[oh], h1[oh], wbase[ow], w0[ow], w1[ow], 1, 1,
                     &y[oh * Wo + ow], &idx[oh * Wo + ow])
        for ow in range(hi, Wo):
            _max_one(x, W, hbase[oh], h0[oh], h1[oh], wbase[ow], w0[ow], w1[ow], 1, 1,
                     &y[oh * Wo + ow], &idx[oh * Wo + ow])


cdef int max_pool2d_plane_backward(const floating* gy, const int64_t* idx, Py_ssize_t HoWo,
                                   floating* gx, Py_ssize_t HW) noexcept nogil:
    """gx (HW values) = 0, then gx[idx[o]] += gy[o] in output order.  Returns 1 (and writes
    nothing out of range) if an index is outside [0, HW)."""
    cdef Py_ssize_t o
    cdef int64_t k
    cdef int bad = 0
    memset(gx, 0, HW * sizeof(floating))
    for o in range(HoWo):
        k = idx[o]
        if k < 0 or k >= HW:
            bad = 1
        else:
            gx[k] += gy[o]
    return bad


cdef void avg_pool2d_plane(const floating* x, Py_ssize_t W,
                           const Py_ssize_t* hbase, const Py_ssize_t* h0, const Py_ssize_t* h1,
                           const Py_ssize_t* wbase, const Py_ssize_t* w0, const Py_ssize_t* w1,
                           const floating* div, floating* y, Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil:
    cdef Py_ssize_t oh, ow, i, j
    cdef floating s
    cdef const floating* row
    for oh in range(Ho):
        for ow in range(Wo):
            s = 0
            for i in range(h0[oh], h1[oh]):
                row = x + (hbase[oh] + i) * W + wbase[ow]
                for j in range(w0[ow], w1[ow]):
                    s = s + row[j]
            # sum then divide, in the input precision (torch's order)
            y[oh * Wo + ow] = s / div[oh * Wo + ow]


cdef void avg_pool2d_s2_plane(const floating* x, Py_ssize_t W, Py_ssize_t K,
                              const Py_ssize_t* hbase, const Py_ssize_t* h0, const Py_ssize_t* h1,
                              const Py_ssize_t* wbase, const Py_ssize_t* w0, const Py_ssize_t* w1,
                              const floating* div, floating* y, Py_ssize_t Ho, Py_ssize_t Wo,
                              floating* acc) noexcept nogil:
    """Kernel width K (2 or 3), column stride 2: vectorised over the output columns.  Each
    output still sums its taps in row-major order, then divides (avg_pool2d_plane's
    arithmetic, bit for bit).  acc: Wo scratch values owned by the calling thread."""
    cdef Py_ssize_t oh, ow, i, j, cb = wbase[0], lo = 0, hi = Wo
    cdef floating s
    cdef const floating* row
    while lo < Wo and (w0[lo] != 0 or w1[lo] != K):
        lo += 1
    while hi > lo and (w0[hi - 1] != 0 or w1[hi - 1] != K):
        hi -= 1
    for oh in range(Ho):
        for ow in range(lo, hi):
            acc[ow] = 0
        for i in range(h0[oh], h1[oh]):
            row = x + (hbase[oh] + i) * W
            if floating is float:
                ck_avg_row_f(row + cb + 2 * lo, hi - lo, <int>K, acc + lo)
            else:
                ck_avg_row_d(row + cb + 2 * lo, hi - lo, <int>K, acc + lo)
        for ow in range(Wo):
            if lo <= ow < hi:
                s = acc[ow]
            else:
                s = 0
                for i in range(h0[oh], h1[oh]):
                    row = x + (hbase[oh] + i) * W + wbase[ow]
                    for j in range(w0[ow], w1[ow]):
                        s = s + row[j]
            y[oh * Wo + ow] = s / div[oh * Wo + ow]


cdef void avg_pool2d_plane_backward(const floating* gy, Py_ssize_t W, Py_ssize_t HW,
                                    const Py_ssize_t* hbase, const Py_ssize_t* h0, const Py_ssize_t* h1,
                                    const Py_ssize_t* wbase, const Py_ssize_t* w0, const Py_ssize_t* w1,
                                    const floating* div, floating* gx,
                                    Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t fast_k,
                                    floating* e, floating* g) noexcept nogil:
    """gx = 0, then for each output row: g = grad / divisor, e[w] = the sum of g over the
    windows of that row covering column w, and e is added to every input row the windows span
    (a contiguous, vectorised add).  fast_k = 2 or 3 (kernel width, column stride 2): e is
    gathered directly for the full windows (column 2j gets g[j-1] + g[j] for K = 3, 2j+1 gets
    g[j]), the clipped edge windows are added after.  The order of additions is fixed, so
    the result is the same on every run.  e (W) and g (Wo): scratch owned by the thread."""
    cdef Py_ssize_t oh, ow, i, j, lo, hi, clo, chi, n, cb = wbase[0]
    cdef Py_ssize_t flo = 0, fhi = Wo
    cdef floating* row
    cdef floating* base
    memset(gx, 0, HW * sizeof(floating))
    clo = wbase[0] + w0[0]                 # columns any window touches: [clo, chi)
    chi = wbase[Wo - 1] + w1[Wo - 1]
    if fast_k:
        while flo < Wo and (w0[flo] != 0 or w1[flo] != fast_k):
            flo += 1
        while fhi > flo and (w0[fhi - 1] != 0 or w1[fhi - 1] != fast_k):
            fhi -= 1
    n = fhi - flo
    for oh in range(Ho):
        for ow in range(Wo):
            g[ow] = gy[oh * Wo + ow] / div[oh * Wo + ow]
        for j in range(clo, chi):
            e[j] = 0
        if fast_k and n > 0:
            base = e + 2 * flo + cb
            base[0] = g[flo]
            base[1] = g[flo]
            if fast_k == 3:
                for j in range(1, n):
                    base[2 * j] = g[flo + j - 1] + g[flo + j]
                    base[2 * j + 1] = g[flo + j]
                base[2 * n] = g[fhi - 1]
            else:
                for j in range(1, n):
                    base[2 * j] = g[flo + j]
                    base[2 * j + 1] = g[flo + j]
            for ow in range(flo):
                for j in range(wbase[ow] + w0[ow], wbase[ow] + w1[ow]):
                    e[j] += g[ow]
            for ow in range(fhi, Wo):
                for j in range(wbase[ow] + w0[ow], wbase[ow] + w1[ow]):
                    e[j] += g[ow]
        else:
            for ow in range(Wo):
                for j in range(wbase[ow] + w0[ow], wbase[ow] + w1[ow]):
                    e[j] += g[ow]
        for i in range(h0[oh], h1[oh]):
            row = gx + (hbase[oh] + i) * W
            for j in range(clo, chi):
                row[j] += e[j]


# ---------------------------------------------------------------- Python-callable drivers
def max_pool2d_forward(const floating[:, :, ::1] x, Py_ssize_t W,
                       const Py_ssize_t[::1] hbase, const Py_ssize_t[::1] h0, const Py_ssize_t[::1] h1,
                       const Py_ssize_t[::1] wbase, const Py_ssize_t[::1] w0, const Py_ssize_t[::1] w1,
                       Py_ssize_t dh, Py_ssize_t dw, Py_ssize_t fast_k,
                       floating[:, :, ::1] y, int64_t[:, :, ::1] idx, int n_threads):
    """x (P, H, W) planes -> y, idx (P, Ho, Wo).  fast_k = 2 or 3: kernel width fast_k,
    column stride 2, no dilation (the branch-free path); -2: 2x2 windows at stride 2 with no
    padding or clipping (whole planes at a time, float32); 0: the general loop."""
    cdef Py_ssize_t P = x.shape[0], Ho = y.shape[1], Wo = y.shape[2], p, chunk
    cdef floating* accv
    cdef floating* accr
    chunk = _plane_chunk(P, x.shape[1] * x.shape[2], n_threads)
    with nogil, parallel(num_threads=n_threads):
        accv = <floating*>malloc(Wo * sizeof(floating))
        accr = <floating*>malloc(Wo * sizeof(floating))
        for p in prange(P, schedule="static", chunksize=chunk):
            if floating is float and fast_k == -2:
                ck_max2x2_plane_f(&x[p, 0, 0], W, Ho, Wo, &y[p, 0, 0], &idx[p, 0, 0])
            elif fast_k > 0 and accv != NULL and accr != NULL:
                max_pool2d_s2_plane(&x[p, 0, 0], W, fast_k, &hbase[0], &h0[0], &h1[0],
                                    &wbase[0], &w0[0], &w1[0], &y[p, 0, 0], &idx[p, 0, 0],
                                    Ho, Wo, accv, accr)
            else:
                max_pool2d_plane(&x[p, 0, 0], W, &hbase[0], &h0[0], &h1[0],
                                 &wbase[0], &w0[0], &w1[0], dh, dw, &y[p, 0, 0], &idx[p, 0, 0],
                                 Ho, Wo)
        free(accv)
        free(accr)


def max_pool2d_backward(const floating[:, ::1] gy, const int64_t[:, ::1] idx,
                        floating[:, ::1] gx, int n_threads):
    """gy, idx (P, Ho*Wo) -> gx (P, H*W).  Returns the number of planes holding an index
    outside [0, H*W) (those planes hold partial sums; the caller discards gx)."""
    cdef Py_ssize_t P = gy.shape[0], HoWo = gy.shape[1], HW = gx.shape[1], p, chunk
    cdef Py_ssize_t bad = 0
    cdef floating* plane
    cdef bint scratch = _use_scratch(P, HW * <Py_ssize_t>sizeof(floating))
    chunk = _plane_chunk(P, HW, n_threads)
    with nogil, parallel(num_threads=n_threads):
        plane = <floating*>malloc(HW * sizeof(floating)) if scratch else NULL
        for p in prange(P, schedule="static", chunksize=chunk):
            if plane != NULL:
                bad += max_pool2d_plane_backward(&gy[p, 0], &idx[p, 0], HoWo, plane, HW)
                _stream_copy(&gx[p, 0], plane, HW)
            else:
                bad += max_pool2d_plane_backward(&gy[p, 0], &idx[p, 0], HoWo, &gx[p, 0], HW)
        free(plane)
    return bad


def avg_pool2d_forward(const floating[:, :, ::1] x, Py_ssize_t W,
                       const Py_ssize_t[::1] hbase, const Py_ssize_t[::1] h0, const Py_ssize_t[::1] h1,
                       const Py_ssize_t[::1] wbase, const Py_ssize_t[::1] w0, const Py_ssize_t[::1] w1,
                       const floating[:, ::1] div, Py_ssize_t fast_k, floating[:, :, ::1] y,
                       int n_threads):
    """x (P, H, W) -> y (P, Ho, Wo); div (Ho, Wo) divisors.  fast_k = 2 or 3: kernel width,
    column stride 2 (the vectorised path); 0: the general loop."""
    cdef Py_ssize_t P = x.shape[0], Ho = y.shape[1], Wo = y.shape[2], p, chunk
    cdef floating* acc
    chunk = _plane_chunk(P, x.shape[1] * x.shape[2], n_threads)
    with nogil, parallel(num_threads=n_threads):
        acc = <floating*>malloc(Wo * sizeof(floating))
        for p in prange(P, schedule="static", chunksize=chunk):
            if fast_k and acc != NULL:
                avg_pool2d_s2_plane(&x[p, 0, 0], W, fast_k, &hbase[0], &h0[0], &h1[0],
                                    &wbase[0], &w0[0], &w1[0], &div[0, 0], &y[p, 0, 0],
                                    Ho, Wo, acc)
            else:
                avg_pool2d_plane(&x[p, 0, 0], W, &hbase[0], &h0[0], &h1[0], &wbase[0], &w0[0],
                                 &w1[0], &div[0, 0], &y[p, 0, 0], Ho, Wo)
        free(acc)


def avg_pool2d_backward(const floating[:, :, ::1] gy, Py_ssize_t W,
                        const Py_ssize_t[::1] hbase, const Py_ssize_t[::1] h0, const Py_ssize_t[::1] h1,
                        const Py_ssize_t[::1] wbase, const Py_ssize_t[::1] w0, const Py_ssize_t[::1] w1,
                        const floating[:, ::1] div, Py_ssize_t fast_k, floating[:, ::1] gx,
                        int n_threads):
    """gy (P, Ho, Wo) -> gx (P, H*W).  fast_k: 2 or 3 for kernel width fast_k at column
    stride 2, else 0 (adaptive bins that tile the plane take _adaptive_pool's fill)."""
    cdef Py_ssize_t P = gy.shape[0], Ho = gy.shape[1], Wo = gy.shape[2], HW = gx.shape[1], p, chunk
    cdef floating* e
    cdef floating* plane
    cdef Py_ssize_t failed = 0
    cdef bint scratch = _use_scratch(P, HW * <Py_ssize_t>sizeof(floating))
    chunk = _plane_chunk(P, HW, n_threads)
    with nogil, parallel(num_threads=n_threads):
        e = <floating*>malloc((W + Wo) * sizeof(floating))
        plane = <floating*>malloc(HW * sizeof(floating)) if scratch else NULL
        for p in prange(P, schedule="static", chunksize=chunk):
            if e == NULL:
                failed += 1
            elif plane != NULL:
                avg_pool2d_plane_backward(&gy[p, 0, 0], W, HW, &hbase[0], &h0[0], &h1[0],
                                          &wbase[0], &w0[0], &w1[0], &div[0, 0], plane,
                                          Ho, Wo, fast_k, e, e + W)
                _stream_copy(&gx[p, 0], plane, HW)
            else:
                avg_pool2d_plane_backward(&gy[p, 0, 0], W, HW, &hbase[0], &h0[0], &h1[0],
                                          &wbase[0], &w0[0], &w1[0], &div[0, 0], &gx[p, 0],
                                          Ho, Wo, fast_k, e, e + W)
        free(e)
        free(plane)
    if failed:
        raise MemoryError("avg_pool2d_backward: out of memory for a row of scratch")


# ------------------------------------------------------------- a window that is the whole plane
# (the ResNet's final 2x2 average pool: per plane one sum, no window tables).  Same arithmetic as
# avg_pool2d_plane / avg_pool2d_plane_backward for this window, so the same bits.

def global_avg_forward(const floating[:, ::1] x, floating[::1] y, int n_threads):
    """y[p] = (x[p, 0] + x[p, 1] + ... in order) / HW: x (P, HW), y (P,)."""
    cdef Py_ssize_t P = x.shape[0], HW = x.shape[1], p, i
    cdef floating s, d = <floating>HW
    with nogil:
        for p in prange(P, schedule="static", num_threads=n_threads):
            s = 0
            for i in range(HW):
                s = s + x[p, i]
            y[p] = s / d


def global_avg_backward(const floating[::1] gy, floating[:, ::1] gx, int n_threads):
    """gx[p, :] = gy[p] / HW: gy (P,), gx (P, HW)."""
    cdef Py_ssize_t P = gx.shape[0], HW = gx.shape[1], p, i
    cdef floating g, d = <floating>HW
    with nogil:
        for p in prange(P, schedule="static", num_threads=n_threads):
            g = gy[p] / d
            for i in range(HW):
                gx[p, i] = g
