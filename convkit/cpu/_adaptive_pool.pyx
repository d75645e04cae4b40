# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Adaptive pooling forwards (torch's bins), one (n, c) plane per OpenMP task, and the average
backwards whose bins tile the plane.

The other backwards run ``_pool.pyx``'s plane kernels on adaptive window tables (see
adaptive_pool.py).  The forwards are here because a bin can be reduced faster than window by
window:

* average: per output row, the column sums of the bin's input rows (an element-wise,
  vectorised add), then each bin's run of column sums (csrc/adaptive_pool.h, 8-lane vectors
  where the CPU has AVX2, the same bits); a 1x1 output -- global average pooling, the
  classifier head -- is one run sum per plane.  Runs of one length (the planes of a global
  average, float32 bins where ow divides W) are summed 8 at a time, each with its own
  additions: the same bits.  Sums run in the input precision in a fixed order;
* average backward where each element lies in one bin (and 1x1): a fill of broadcast values
  written once, in place (ck_tile_fill, ck_avg_fill);
* max: a branch-free maximum and NaN test per bin, then the position (ck_bin_max: torch's
  NaN and tie rules exactly; float32 on 8-lane vectors where the CPU has AVX2); a bin of
  whole rows is one contiguous run.

Each task owns whole planes of the output: the same bits on every run and for any thread count.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

from convkit.cpu.csrc.adaptive_pool cimport (ck_run_sum_f, ck_run_sum_d, ck_colsum_f,
                                             ck_colsum_d, ck_runs_avg_f, ck_global_avg_d,
                                             ck_avg_fill_f, ck_avg_fill_d,
                                             ck_tile_fill_f, ck_tile_fill_d,
                                             ck_bin_max_f, ck_bin_max_d)

cnp.import_array()


cdef inline floating _run_sum(const floating* p, Py_ssize_t n) noexcept nogil:
    if floating is float:
        return ck_run_sum_f(p, n)
    else:
        return ck_run_sum_d(p, n)


cdef void adaptive_avg_plane(const floating* x, Py_ssize_t W,
                             const Py_ssize_t* hs, const Py_ssize_t* hl,
                             const Py_ssize_t* ws, const Py_ssize_t* wl,
                             const floating* div, floating* y, Py_ssize_t oh, Py_ssize_t ow,
                             floating* colsum) noexcept nogil:
    """y (oh x ow) = the bin means of plane x (rows of W); bin (o, q) covers rows
    [hs[o], hs[o] + hl[o]) and columns [ws[q], ws[q] + wl[q]); div[o*ow + q] = its area.
    colsum: W scratch values owned by the calling thread."""
    cdef Py_ssize_t o, q
    for o in range(oh):
        if floating is float:
            ck_colsum_f(x + hs[o] * W, W, hl[o], colsum)
        else:
            ck_colsum_d(x + hs[o] * W, W, hl[o], colsum)
        for q in range(ow):
            y[o * ow + q] = _run_sum(colsum + ws[q], wl[q]) / div[o * ow + q]


cdef void _avg_plane_runs_f(const float* x, Py_ssize_t W, const Py_ssize_t* hs,
                            const Py_ssize_t* hl, const float* div, float* y, Py_ssize_t oh,
                            Py_ssize_t ow, Py_ssize_t L, float* colsum) noexcept nogil:
    """adaptive_avg_plane for float32 column bins that are ow runs of L (W = ow*L): the column
    sums of all output rows one after another (oh*W scratch values), then their oh*ow runs of
    L, 8 at a time (ck_runs_avg_f: each bin's additions of the run-by-run path, the same
    bits; an 8x8 bin was ~40 instructions alone)."""
    cdef Py_ssize_t o
    for o in range(oh):
        ck_colsum_f(x + hs[o] * W, W, hl[o], colsum + o * W)
    ck_runs_avg_f(colsum, oh * ow, L, div, 0, y, 1)


def adaptive_avg_forward(const floating[:, :, ::1] x,
                         const Py_ssize_t[::1] hs, const Py_ssize_t[::1] hl,
                         const Py_ssize_t[::1] ws, const Py_ssize_t[::1] wl,
                         const floating[:, ::1] div, floating[:, :, ::1] y, int n_threads,
                         bint by_rows=True):
    """x (P, H, W) -> y (P, oh, ow): bin starts hs/ws and lengths hl/wl, areas div (oh, ow).
    float32 where ow divides W (bins of one width): a plane's bins 8 at a time
    (_avg_plane_runs_f; by_rows=False, for the tests: bin by bin) -- the same bits."""
    cdef Py_ssize_t P = x.shape[0], W = x.shape[2], oh = y.shape[1], ow = y.shape[2], p
    cdef Py_ssize_t failed = 0, L = 0, scratch = W
    cdef floating* colsum
    if floating is float:
        if by_rows and ow > 0 and W % ow == 0:
            L, scratch = W // ow, oh * W
    with nogil, parallel(num_threads=n_threads):
        colsum = <floating*>malloc(scratch * sizeof(floating))
        for p in prange(P, schedule="static"):
            if colsum == NULL:
                failed += 1
            else:
                if floating is float:
                    if L > 0:
                        _avg_plane_runs_f(&x[p, 0, 0], W, &hs[0], &hl[0], &div[0, 0],
                                          &y[p, 0, 0], oh, ow, L, colsum)
                        continue
                adaptive_avg_plane(&x[p, 0, 0], W, &hs[0], &hl[0], &ws[0], &wl[0], &div[0, 0],
                                   &y[p, 0, 0], oh, ow, colsum)
        free(colsum)
    if failed:
        raise MemoryError("adaptive_avg_pool2d_forward: out of memory for a row of scratch")


def global_avg_forward(cnp.ndarray x, cnp.ndarray y, int n_threads, bint by_eight=True):
    """y[p] = sum(x[p, :]) / HW: x (P, HW) and y (P,), or x (N, C, H, W) and y of N*C values
    (P = N*C planes: no reshape views), C-contiguous, both float32 or both float64 (ValueError
    else).  float32 8 planes at a time where the CPU has AVX2 (ck_run_sum8_f: each plane's
    additions of the one-plane sum, the horizontal part shared, ~28 instructions a plane of 49
    against ~60 one by one), the rest plane by plane -- the same bits; by_eight=False (for the
    tests) sums every plane alone.  n_threads runs of whole 8-plane blocks, run t on thread t.
    Plain ndarrays, not typed memoryviews: the fused-type dispatch and two buffer acquisitions
    were ~1.5 us of a 10 us call."""
    cdef int tx = cnp.PyArray_TYPE(x), nd = cnp.PyArray_NDIM(x)
    cdef Py_ssize_t P = 0, n = 0, B, t, lo, hi
    if nd == 2:
        P, n = cnp.PyArray_DIM(x, 0), cnp.PyArray_DIM(x, 1)
    elif nd == 4:
        P = cnp.PyArray_DIM(x, 0) * cnp.PyArray_DIM(x, 1)
        n = cnp.PyArray_DIM(x, 2) * cnp.PyArray_DIM(x, 3)
    if ((nd != 2 and nd != 4) or (tx != cnp.NPY_FLOAT32 and tx != cnp.NPY_FLOAT64)
            or cnp.PyArray_TYPE(y) != tx or cnp.PyArray_SIZE(y) != P
            or not cnp.PyArray_IS_C_CONTIGUOUS(x) or not cnp.PyArray_IS_C_CONTIGUOUS(y)):
        raise ValueError("global_avg_forward: x (P, HW) or (N, C, H, W) and y of P values must "
                         "be C-contiguous float32 or float64 arrays of one dtype")
    B = P // 8
    cdef char* px = <char*>cnp.PyArray_DATA(x)
    cdef char* py = <char*>cnp.PyArray_DATA(y)
    cdef bint f32 = tx == cnp.NPY_FLOAT32
    cdef int eight = by_eight
    cdef float d = <float>n
    if P == 0:
        return
    if n_threads > B:
        n_threads = <int>B if B > 0 else 1
    with nogil:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            lo = 8 * (B * t // n_threads)
            hi = 8 * (B * (t + 1) // n_threads) if t + 1 < n_threads else P
            if f32:
                ck_runs_avg_f(<const float*>px + lo * n, hi - lo, n, &d, 1, <float*>py + lo,
                              eight)
            else:
                ck_global_avg_d(<const double*>px + lo * n, hi - lo, n, <double>n,
                                <double*>py + lo)


def global_avg_backward(cnp.ndarray gy, cnp.ndarray gx, int n_threads):
    """gx[p, :] = gy[p] / HW: gy of P values, gx (P, HW) or (N, C, H, W) with P = N*C (the
    arrays' checks as global_avg_forward's), csrc/adaptive_pool.h ck_avg_fill: the vectorised
    fill, in place.  n_threads contiguous runs of planes, run t on thread t (a static
    schedule: the same thread writes the same planes every call)."""
    cdef int tx = cnp.PyArray_TYPE(gx), nd = cnp.PyArray_NDIM(gx)
    cdef Py_ssize_t P = 0, HW = 0, t, lo, hi
    if nd == 2:
        P, HW = cnp.PyArray_DIM(gx, 0), cnp.PyArray_DIM(gx, 1)
    elif nd == 4:
        P = cnp.PyArray_DIM(gx, 0) * cnp.PyArray_DIM(gx, 1)
        HW = cnp.PyArray_DIM(gx, 2) * cnp.PyArray_DIM(gx, 3)
    if ((nd != 2 and nd != 4) or (tx != cnp.NPY_FLOAT32 and tx != cnp.NPY_FLOAT64)
            or cnp.PyArray_TYPE(gy) != tx or cnp.PyArray_SIZE(gy) != P
            or not cnp.PyArray_IS_C_CONTIGUOUS(gx) or not cnp.PyArray_IS_C_CONTIGUOUS(gy)):
        raise ValueError("global_avg_backward: gy of P values and gx (P, HW) or (N, C, H, W) "
                         "must be C-contiguous float32 or float64 arrays of one dtype")
    cdef char* pg = <char*>cnp.PyArray_DATA(gy)
    cdef char* px = <char*>cnp.PyArray_DATA(gx)
    cdef bint f32 = tx == cnp.NPY_FLOAT32
    if P == 0 or HW == 0:
        return
    if n_threads > P:
        n_threads = <int>P
    with nogil:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            lo = P * t // n_threads
            hi = P * (t + 1) // n_threads
            if f32:
                ck_avg_fill_f(<const float*>pg + lo, hi - lo, HW, <float>HW,
                              <float*>px + lo * HW)
            else:
                ck_avg_fill_d(<const double*>pg + lo, hi - lo, HW, <double>HW,
                              <double*>px + lo * HW)


def adaptive_avg_backward_tiled(const floating[:, :, ::1] gy,
                                const Py_ssize_t[::1] hs, const Py_ssize_t[::1] hl,
                                const Py_ssize_t[::1] ws, const Py_ssize_t[::1] wl,
                                const floating[:, ::1] div, floating[:, :, ::1] gx,
                                int n_threads):
    """gy (P, oh, ow) -> gx (P, H, W) for bins that tile the plane (adaptive_pool._tiles):
    each element = 0 + its bin's gradient / area, written once in place (ck_tile_fill).
    Runs of planes as global_avg_backward's."""
    cdef Py_ssize_t P = gx.shape[0], W = gx.shape[2], oh = gy.shape[1], ow = gy.shape[2]
    cdef Py_ssize_t t, lo, hi, p, failed = 0
    cdef floating* e
    if P == 0 or W == 0 or gx.shape[1] == 0:
        return
    if n_threads > P:
        n_threads = <int>P
    with nogil:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            lo = P * t // n_threads
            hi = P * (t + 1) // n_threads
            e = <floating*>malloc(W * sizeof(floating))
            if e == NULL:
                failed += 1
            else:
                for p in range(lo, hi):
                    if floating is float:
                        ck_tile_fill_f(&gy[p, 0, 0], W, &hs[0], &hl[0], &ws[0], &wl[0],
                                       &div[0, 0], oh, ow, &gx[p, 0, 0], e)
                    else:
                        ck_tile_fill_d(&gy[p, 0, 0], W, &hs[0], &hl[0], &ws[0], &wl[0],
                                       &div[0, 0], oh, ow, &gx[p, 0, 0], e)
                free(e)
    if failed:
        raise MemoryError("adaptive_avg_pool2d_backward: out of memory for a row of scratch")


cdef void adaptive_max_plane(const floating* x, Py_ssize_t W,
                             const Py_ssize_t* hs, const Py_ssize_t* hl,
                             const Py_ssize_t* ws, const Py_ssize_t* wl,
                             floating* y, int64_t* idx, Py_ssize_t oh, Py_ssize_t ow) noexcept nogil:
    """y, idx (oh x ow) = each bin's maximum of plane x and its flat position h*W + w."""
    cdef Py_ssize_t o, q, rows, cols, pos
    cdef const floating* corner
    cdef floating v
    for o in range(oh):
        for q in range(ow):
            corner = x + hs[o] * W + ws[q]
            rows, cols = hl[o], wl[q]
            if cols == W:                   # whole rows: one contiguous run
                rows, cols = 1, rows * W
            if floating is float:
                ck_bin_max_f(corner, W, rows, cols, &v, &pos)
            else:
                ck_bin_max_d(corner, W, rows, cols, &v, &pos)
            y[o * ow + q] = v
            idx[o * ow + q] = hs[o] * W + ws[q] + pos


def adaptive_max_forward(const floating[:, :, ::1] x,
                         const Py_ssize_t[::1] hs, const Py_ssize_t[::1] hl,
                         const Py_ssize_t[::1] ws, const Py_ssize_t[::1] wl,
                         floating[:, :, ::1] y, int64_t[:, :, ::1] idx, int n_threads):
    """x (P, H, W) -> y, idx (P, oh, ow): bin starts hs/ws and lengths hl/wl."""
    cdef Py_ssize_t P = x.shape[0], W = x.shape[2], oh = y.shape[1], ow = y.shape[2], p
    with nogil:
        for p in prange(P, schedule="static", num_threads=n_threads):
            adaptive_max_plane(&x[p, 0, 0], W, &hs[0], &hl[0], &ws[0], &wl[0], &y[p, 0, 0],
                               &idx[p, 0, 0], oh, ow)
