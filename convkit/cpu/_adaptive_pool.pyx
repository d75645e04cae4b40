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
  whole rows is one contiguous run.  float32 bins of <= 64 values (a run, or <= 8 rows of
  <= 8) are loaded once where the CPU has AVX2 (ck_bin_max_chunks8_f); the max backward is
  adaptive_max_backward below (blocks of planes, plain stores) up to 16 MB of gradient.

Each task owns whole planes of the output: the same bits on every run and for any thread count.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset

from convkit.cpu.csrc.adaptive_pool cimport (ck_run_sum_f, ck_run_sum_d, ck_colsum_f,
                                             ck_colsum_d, ck_runs_avg_f, ck_global_avg_d,
                                             ck_avg_fill_f, ck_avg_fill_d,
                                             ck_tile_fill_f, ck_tile_fill_d,
                                             ck_bin_max_f, ck_bin_max_d,
                                             ck_adaptive_max_plane_f,
                                             ck_adaptive_max_tiles_f, ck_global_max_f,
                                             ck_run_sum8_ok)

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


cdef bint _planes_and_values(cnp.ndarray a, cnp.ndarray v, Py_ssize_t* P, Py_ssize_t* n):
    """The global pools' arguments: a of P planes of n values, (P, n) or (N, C, H, W), and v of
    P values, both C-contiguous float32 or float64 of one dtype (False else); sets P and n."""
    cdef int tx = cnp.PyArray_TYPE(a), nd = cnp.PyArray_NDIM(a)
    if nd == 2:
        P[0], n[0] = cnp.PyArray_DIM(a, 0), cnp.PyArray_DIM(a, 1)
    elif nd == 4:
        P[0] = cnp.PyArray_DIM(a, 0) * cnp.PyArray_DIM(a, 1)
        n[0] = cnp.PyArray_DIM(a, 2) * cnp.PyArray_DIM(a, 3)
    else:
        return False
    return ((tx == cnp.NPY_FLOAT32 or tx == cnp.NPY_FLOAT64) and cnp.PyArray_TYPE(v) == tx
            and cnp.PyArray_SIZE(v) == P[0] and cnp.PyArray_IS_C_CONTIGUOUS(a)
            and cnp.PyArray_IS_C_CONTIGUOUS(v))


def global_avg_forward(cnp.ndarray x, cnp.ndarray y, int n_threads, bint by_eight=True):
    """y[p] = sum(x[p, :]) / HW: x (P, HW) and y (P,), or x (N, C, H, W) and y of N*C values
    (P = N*C planes: no reshape views), C-contiguous, both float32 or both float64 (ValueError
    else).  float32 8 planes at a time where the CPU has AVX2 (ck_runs_avg_f: each plane's
    additions of the one-plane sum, the horizontal part shared, ~28 instructions a plane of 49
    against ~60 one by one), the rest plane by plane -- the same bits; by_eight=False (for the
    tests) sums every plane alone.  n_threads runs of whole 8-plane blocks, run t on thread t.
    Plain ndarrays, not typed memoryviews: the fused-type dispatch and two buffer acquisitions
    were ~1.5 us of a 10 us call."""
    cdef int tx = cnp.PyArray_TYPE(x)
    cdef Py_ssize_t P = 0, n = 0, B, t, lo, hi
    if not _planes_and_values(x, y, &P, &n):
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
    cdef int tx = cnp.PyArray_TYPE(gx)
    cdef Py_ssize_t P = 0, HW = 0, t, lo, hi
    if not _planes_and_values(gx, gy, &P, &HW):
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
