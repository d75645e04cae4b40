# cython: language_level=3
"""C-level box kernels for other Cython code to ``cimport``.

nms_sorted: greedy NMS over boxes already sorted by decreasing score, given as separate
coordinate arrays (x1, y1, x2, y2) and their areas.  IoU > thr suppresses; a union of 0 is
IoU 0; min/max propagate NaN like NumPy's.  ``suppressed`` (n bytes, zeroed by the caller) is
the suppressed-bitmap; the kept positions go to ``keep`` and their number is returned.
"""
from cython cimport floating
from libc.stdint cimport int64_t

cdef Py_ssize_t nms_sorted(const floating* x1, const floating* y1, const floating* x2,
                           const floating* y2, const floating* area, Py_ssize_t n, double thr,
                           unsigned char* suppressed, int64_t* keep) noexcept nogil

cdef void box_iou_row(const floating* a, const floating* b, Py_ssize_t M,
                      floating* out) noexcept nogil
