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
  whole rows is one contiguous run.  float32 bins of <= 64 values (a run, or <= 8 rows of
  <= 8) are loaded once where the CPU has AVX2 (ck_bin_max_chunks8_f); the max backward is
  adaptive_max_backward below (blocks of planes, plain stores) up to 16 MB of gradient.

Each task owns whole planes of the output: the same bits on every run and for any thread count.
"""
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from convkit.cpu.csrc.adaptive_pool cimport (ck_run_sum_f, ck_run_sum_d, ck_run_sum8_f,
                                             ck_run_sum8_ok, ck_colsum_f, ck_colsum_d,
                                             ck_bin_max_d, ck_adaptive_max_plane_f,
                                             ck_adaptive_max_tiles_f,
                                             ck_global_max_f)


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


cdef void adaptive_max_plane(const floating* x, Py_ssize_t W,
                             const Py_ssize_t* hs, const Py_ssize_t* hl,
                             const Py_ssize_t* ws, const Py_ssize_t* wl,
                             floating* y, int64_t* idx, Py_ssize_t oh, Py_ssize_t ow) noexcept nogil:
    """y, idx (oh x ow) = each bin's maximum of plane x and its flat position h*W + w.
    float32 runs the loop in C (ck_adaptive_max_plane_f: one load of a bin of <= 64 values)."""
    _max_plane(x, W, hs, hl, ws, wl, y, idx, oh, ow, ck_run_sum8_ok())


cdef inline void _max_plane(const floating* x, Py_ssize_t W,
                            const Py_ssize_t* hs, const Py_ssize_t* hl,
                            const Py_ssize_t* ws, const Py_ssize_t* wl,
                            floating* y, int64_t* idx, Py_ssize_t oh, Py_ssize_t ow,
                            int fast) noexcept nogil:
    cdef Py_ssize_t o, q, rows, cols, pos
    if floating is float:
        ck_adaptive_max_plane_f(x, W, hs, hl, ws, wl, y, idx, oh, ow, fast)
    else:
        for o in range(oh):
            for q in range(ow):
                rows, cols = hl[o], wl[q]
                if cols == W:                   # whole rows: one contiguous run
                    rows, cols = 1, rows * W
                ck_bin_max_d(x + hs[o] * W + ws[q], W, rows, cols, &y[o * ow + q], &pos)
                idx[o * ow + q] = hs[o] * W + ws[q] + pos


def adaptive_max_forward(const floating[:, :, ::1] x,
                         const Py_ssize_t[::1] hs, const Py_ssize_t[::1] hl,
                         const Py_ssize_t[::1] ws, const Py_ssize_t[::1] wl,
                         floating[:, :, ::1] y, int64_t[:, :, ::1] idx, int n_threads,
                         bint chunks=True):
    """x (P, H, W) -> y, idx (P, oh, ow): bin starts hs/ws and lengths hl/wl.  chunks=False
    (for the tests): float32 bins through ck_bin_max_f only, not ck_bin_max_chunks8_f."""
    cdef Py_ssize_t P = x.shape[0], H = x.shape[1], W = x.shape[2], oh = y.shape[1]
    cdef Py_ssize_t ow = y.shape[2], p
    cdef int fast = ck_run_sum8_ok() and chunks
    # bins of r x c tiling the plane (H, W multiples of oh, ow): float32 takes
    # ck_adaptive_max_tiles_f where it applies (AVX2, r and c <= 8); bins of whole rows
    # (ow == 1) stay contiguous runs, fewer chunks
    cdef bint tiles = (floating is float and fast and H % oh == 0 and W % ow == 0
                       and H // oh <= 8 and W // ow <= 8 and W // ow != W)
    with nogil:
        for p in prange(P, schedule="static", num_threads=n_threads):
            if floating is float:
                if tiles and ck_adaptive_max_tiles_f(&x[p, 0, 0], W, H // oh, W // ow,
                                                     &y[p, 0, 0], &idx[p, 0, 0], oh, ow):
                    continue
            _max_plane(&x[p, 0, 0], W, &hs[0], &hl[0], &ws[0], &wl[0], &y[p, 0, 0],
                       &idx[p, 0, 0], oh, ow, fast)


def global_max_forward(const float[:, ::1] x, float[::1] y, int64_t[::1] idx, int n_threads,
                       bint chunks=True):
    """y[p], idx[p] = the maximum of x[p, :] and its position (a 1x1 adaptive max, float32):
    x (P, HW).  64 planes a task (ck_global_max_f loops over them in C: a plane of 49 values
    on AVX2 ~65 instructions, a call per plane cost ~90 more); whole planes per task, so the
    same bits for any thread count.  chunks=False (for the tests): ck_bin_max_f plane by
    plane."""
    cdef Py_ssize_t P = x.shape[0], n = x.shape[1], B = (P + 63) // 64, b, p0
    cdef int fast = ck_run_sum8_ok() and chunks
    with nogil:
        for b in prange(B, schedule="static", num_threads=n_threads):
            p0 = b * 64
            ck_global_max_f(&x[p0, 0], 64 if P - p0 > 64 else P - p0, n, &y[p0], &idx[p0],
                            fast)


def adaptive_max_backward(const floating[:, ::1] gy, const int64_t[:, ::1] idx,
                          floating[:, ::1] gx, int n_threads):
    """gy, idx (P, oh*ow) -> gx (P, H*W): gx = 0, then gx[p, idx[p, o]] += gy[p, o] in output
    order (_pool.max_pool2d_backward's sums, so its bits).  Returns the number of indices
    outside [0, H*W) (nothing is written out of range; the caller raises).

    Blocks of whole planes (~16 KB, 64 planes of a 7 x 7 head) per task, static: one memset
    a block, then the scatter while the block is in L1, and plain stores -- a gradient that
    fits the L3 (the suite's 6.4 MB) stays there for its reader, where _pool's kernel streams
    it to memory past 4 MB (231 -> ~120 us at one thread for (8, 64, 56, 56) -> 7) and a
    1x1 head's kernel paid a memset call per plane of 49 values."""
    cdef Py_ssize_t P = gy.shape[0], HoWo = gy.shape[1], HW = gx.shape[1], p, o, b, p0, p1
    cdef Py_ssize_t B, nb, bad = 0
    cdef int64_t k
    cdef floating* g
    B = 16384 // (HW * <Py_ssize_t>sizeof(floating)) if HW > 0 else 1
    if B > P // (4 * n_threads):
        B = P // (4 * n_threads)
    if B < 1:
        B = 1
    nb = (P + B - 1) // B
    with nogil:
        for b in prange(nb, schedule="static", num_threads=n_threads):
            p0 = b * B
            p1 = p0 + B if p0 + B < P else P
            memset(&gx[p0, 0], 0, (p1 - p0) * HW * sizeof(floating))
            for p in range(p0, p1):
                g = &gx[p, 0]
                for o in range(HoWo):
                    k = idx[p, o]
                    if k < 0 or k >= HW:
                        bad += 1
                    else:
                        g[k] += gy[p, o]
    return bad
