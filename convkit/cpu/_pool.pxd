# cython: language_level=3
"""C-level pooling kernels, one (H, W) plane per call, for other Cython code to ``cimport``.

Window tables (computed once per call by the Python wrapper, see ``pool.py``):
``r0[o]`` is the first window tap (0..k) that lands inside the image for output row/column
``o`` and ``r1[o]`` one past the last; ``base[o] = o*stride - pad`` is the window start in
input coordinates (may be negative).  For avg pooling ``div`` holds the divisor per output.
"""
from cython cimport floating
from libc.stdint cimport int64_t

cdef void max_pool2d_plane(const floating* x, Py_ssize_t W,
                           const Py_ssize_t* hbase, const Py_ssize_t* h0, const Py_ssize_t* h1,
                           const Py_ssize_t* wbase, const Py_ssize_t* w0, const Py_ssize_t* w1,
                           Py_ssize_t dh, Py_ssize_t dw,
                           floating* y, int64_t* idx, Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil

cdef int max_pool2d_plane_backward(const floating* gy, const int64_t* idx, Py_ssize_t HoWo,
                                   floating* gx, Py_ssize_t HW) noexcept nogil

cdef void avg_pool2d_plane(const floating* x, Py_ssize_t W,
                           const Py_ssize_t* hbase, const Py_ssize_t* h0, const Py_ssize_t* h1,
                           const Py_ssize_t* wbase, const Py_ssize_t* w0, const Py_ssize_t* w1,
                           const floating* div, floating* y, Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil

cdef void avg_pool2d_plane_backward(const floating* gy, Py_ssize_t W, Py_ssize_t HW,
                                    const Py_ssize_t* hbase, const Py_ssize_t* h0, const Py_ssize_t* h1,
                                    const Py_ssize_t* wbase, const Py_ssize_t* w0, const Py_ssize_t* w1,
                                    const floating* div, floating* gx,
                                    Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t fast_k,
                                    floating* e, floating* g) noexcept nogil
