# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Adaptive pooling forwards (torch's bins), one (n, c) plane per OpenMP task.

The backwards run ``_pool.pyx``'s plane kernels on adaptive window tables (see
adaptive_pool.py).  The forwards are here because a bin can be reduced faster than window by
window:

* average: per output row, the column sums of the bin's input rows (an element-wise,
  vectorised add), then each bin's run of column sums (csrc/adaptive_pool.h, 8-lane vectors
  where the CPU has AVX2, the same bits); a 1x1 output -- global average pooling, the
  classifier head -- is one run sum per plane.  Sums run in the
  input precision in a fixed order;
* max: a branch-free maximum and NaN test per bin, then the position (ck_bin_max: torch's
  NaN and tie rules exactly; float32 on 8-lane vectors where the CPU has AVX2); a bin of
  whole rows is one contiguous run.

Each task owns whole planes of the output: the same bits on every run and for any thread count.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

from convkit.cpu.csrc.adaptive_pool cimport (ck_run_sum_f, ck_run_sum_d, ck_run_sum8_f,
                                             ck_run_sum8_ok, ck_colsum_f, ck_colsum_d,
                                             ck_avg_fill_f, ck_avg_fill_d,
                                             ck_tile_fill_f, ck_tile_fill_d,
                                             ck_bin_max_f, ck_bin_max_d)


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


def adaptive_avg_forward(const floating[:, :, ::1] x,
                         const Py_ssize_t[::1] hs, const Py_ssize_t[::1] hl,
                         const Py_ssize_t[::1] ws, const Py_ssize_t[::1] wl,
                         const floating[:, ::1] div, floating[:, :, ::1] y, int n_threads):
    """x (P, H, W) -> y (P, oh, ow): bin starts hs/ws and lengths hl/wl, areas div (oh, ow)."""
    cdef Py_ssize_t P = x.shape[0], W = x.shape[2], oh = y.shape[1], ow = y.shape[2], p
    cdef Py_ssize_t failed = 0
    cdef floating* colsum
    with nogil, parallel(num_threads=n_threads):
        colsum = <floating*>malloc(W * sizeof(floating))
        for p in prange(P, schedule="static"):
            if colsum == NULL:
                failed += 1
            else:
                adaptive_avg_plane(&x[p, 0, 0], W, &hs[0], &hl[0], &ws[0], &wl[0], &div[0, 0],
                                   &y[p, 0, 0], oh, ow, colsum)
        free(colsum)
    if failed:
        raise MemoryError("adaptive_avg_pool2d_forward: out of memory for a row of scratch")


def global_avg_forward(const floating[:, ::1] x, floating[::1] y, int n_threads,
                       bint by_eight=False):
    """y[p] = sum(x[p, :]) / HW: x (P, HW), y (P,), plane by plane (float32 on AVX2:
    ck_run_sum_f_avx2, ~25 instructions for a plane of 49 values).  by_eight=True (for the
    tests): float32 8 planes at a time where the CPU has AVX2 (ck_run_sum8_f, transposed in
    registers: ~60 instructions a plane of 49), the planes past the last 8 one by one -- the
    same bits."""
    cdef Py_ssize_t P = x.shape[0], HW = x.shape[1], p, P8 = 0, b
    cdef floating d = <floating>HW
    if floating is float:
        if by_eight and P >= 8 and HW > 0 and ck_run_sum8_ok():
            P8 = P // 8 * 8
    with nogil:
        if P8:
            for b in prange(P8 // 8, schedule="static", num_threads=n_threads):
                ck_run_sum8_f(<const float*>&x[8 * b, 0], HW, <float>d, <float*>&y[8 * b])
        for p in prange(P8, P, schedule="static", num_threads=n_threads):
            y[p] = _run_sum(&x[p, 0], HW) / d


def global_avg_backward(const floating[::1] gy, floating[:, ::1] gx, int n_threads):
    """gx[p, :] = gy[p] / HW: gy (P,), gx (P, HW) (csrc/adaptive_pool.h ck_avg_fill: the
    vectorised fill, in place).  n_threads contiguous runs of planes, run t on thread t (a
    static schedule: the same thread writes the same planes every call)."""
    cdef Py_ssize_t P = gx.shape[0], HW = gx.shape[1], t, lo, hi
    if P == 0 or HW == 0:
        return
    if n_threads > P:
        n_threads = <int>P
    with nogil:
        for t in prange(n_threads, schedule="static", num_threads=n_threads):
            lo = P * t // n_threads
            hi = P * (t + 1) // n_threads
            if floating is float:
                ck_avg_fill_f(&gy[lo], hi - lo, HW, <float>HW, &gx[lo, 0])
            else:
                ck_avg_fill_d(&gy[lo], hi - lo, HW, <double>HW, &gx[lo, 0])


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
