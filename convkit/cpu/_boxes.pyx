# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Non-maximum suppression and pairwise IoU (torchvision's rules with convkit's two firmer
ones: a stable score order, and a union of 0 gives IoU 0 -- see convkit/reference/boxes.py).

NMS goes down the score order in blocks of boxes: inside a block the boxes are decided one by
one (each kept box suppresses the rest of its block); then the block's kept boxes suppress
every later box, the later boxes split across OpenMP threads.  Suppression only ever sets a
flag, so the result does not depend on the split.  The IoU row (csrc/boxes.h) is SSE2 for
finite float32 boxes (four pairs at a time), plain C otherwise (NaN-propagating min/max, as NumPy).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t

from convkit.cpu.csrc.boxes cimport (ck_nms_row_f)


cdef inline floating _npmax(floating a, floating b) noexcept nogil:
    """numpy.maximum: NaN if either is NaN."""
    if a != a:
        return a
    if b != b:
        return b
    return a if a > b else b


cdef inline floating _npmin(floating a, floating b) noexcept nogil:
    if a != a:
        return a
    if b != b:
        return b
    return a if a < b else b


cdef inline floating _iou(floating ax1, floating ay1, floating ax2, floating ay2, floating aa,
                          floating bx1, floating by1, floating bx2, floating by2,
                          floating ba) noexcept nogil:
    cdef floating w = _npmax(_npmin(ax2, bx2) - _npmax(ax1, bx1), <floating>0)
    cdef floating h = _npmax(_npmin(ay2, by2) - _npmax(ay1, by1), <floating>0)
    cdef floating inter = w * h
    cdef floating uni = (aa + ba) - inter
    if uni == 0:
        return 0
    return inter / uni


cdef void _nms_row(const floating* x1, const floating* y1, const floating* x2,
                   const floating* y2, const floating* area, Py_ssize_t i, Py_ssize_t j0,
                   Py_ssize_t j1, double thr, float thr_f, bint fast,
                   unsigned char* sup) noexcept nogil:
    """sup[j] |= IoU(i, j) > thr for j in [j0, j1)."""
    cdef Py_ssize_t j
    if floating is float:
        if fast:
            ck_nms_row_f(x1, y1, x2, y2, area, j0, j1, x1[i], y1[i], x2[i], y2[i], area[i],
                         thr_f, sup)
            return
    for j in range(j0, j1):
        # compared in double, as the reference compares a float IoU with a double threshold
        if <double>_iou(x1[i], y1[i], x2[i], y2[i], area[i],
                        x1[j], y1[j], x2[j], y2[j], area[j]) > thr:
            sup[j] = 1


cdef Py_ssize_t _nms(const floating* x1, const floating* y1, const floating* x2,
                     const floating* y2, const floating* area, Py_ssize_t n, double thr,
                     float thr_f, bint fast, unsigned char* sup, int64_t* keep,
                     int n_threads) noexcept nogil:
    cdef Py_ssize_t B = 256, CH = 512
    cdef Py_ssize_t nk = 0, s, e, i, t, k0, ch, j0, j1, nch, alive
    s = 0
    while s < n:
        e = min(s + B, n)
        k0 = nk
        # decide the block's boxes in order; each kept one suppresses the rest of the block
        for i in range(s, e):
            if sup[i]:
                continue
            keep[nk] = i
            nk += 1
            _nms_row(x1, y1, x2, y2, area, i, i + 1, e, thr, thr_f, fast, sup)
        if e >= n:
            break
        # the block's kept boxes suppress every later box: chunks of later boxes per thread
        nch = (n - e + CH - 1) // CH
        if nk > k0:
            for ch in prange(nch, schedule="dynamic", num_threads=n_threads):
                j0 = e + ch * CH
                j1 = min(j0 + CH, n)
                for t in range(k0, nk):
                    _nms_row(x1, y1, x2, y2, area, keep[t], j0, j1, thr, thr_f, fast, sup)
        # early exit once every later box is decided (suppressed)
        alive = 0
        for i in range(e, n):
            if not sup[i]:
                alive = 1
                break
        if not alive:
            break
        s = e
    return nk


cdef Py_ssize_t nms_sorted(const floating* x1, const floating* y1, const floating* x2,
                           const floating* y2, const floating* area, Py_ssize_t n, double thr,
                           unsigned char* suppressed, int64_t* keep) noexcept nogil:
    """Serial, NaN-exact version of the kernel (see the .pxd)."""
    return _nms(x1, y1, x2, y2, area, n, thr, 0, 0, suppressed, keep, 1)


def nms(const floating[::1] x1, const floating[::1] y1, const floating[::1] x2,
        const floating[::1] y2, const floating[::1] area, double thr, float thr_f, bint fast,
        unsigned char[::1] suppressed, int64_t[::1] keep, int n_threads):
    """Coordinates sorted by decreasing score.  ``fast``: float32 boxes all finite (the SSE2
    row); thr_f: the largest float32 <= thr.  Returns the number of kept positions."""
    cdef Py_ssize_t n = x1.shape[0], nk
    with nogil:
        nk = _nms(&x1[0], &y1[0], &x2[0], &y2[0], &area[0], n, thr, thr_f, fast,
                  &suppressed[0], &keep[0], n_threads)
    return nk


cdef void box_iou_row(const floating* a, const floating* b, Py_ssize_t M,
                      floating* out) noexcept nogil:
    """out[j] = IoU(a, b[j]) for one box a (4,) against b (M, 4)."""
    cdef Py_ssize_t j
    cdef floating aa = (a[2] - a[0]) * (a[3] - a[1])
    for j in range(M):
        out[j] = _iou(a[0], a[1], a[2], a[3], aa, b[4 * j], b[4 * j + 1], b[4 * j + 2],
                      b[4 * j + 3], (b[4 * j + 2] - b[4 * j]) * (b[4 * j + 3] - b[4 * j + 1]))


def box_iou(const floating[:, ::1] boxes1, const floating[:, ::1] boxes2,
            floating[:, ::1] out, int n_threads):
    cdef Py_ssize_t N = boxes1.shape[0], M = boxes2.shape[0], i
    with nogil:
        for i in prange(N, schedule="dynamic", chunksize=16, num_threads=n_threads):
            box_iou_row(&boxes1[i, 0], &boxes2[0, 0], M, &out[i, 0])
