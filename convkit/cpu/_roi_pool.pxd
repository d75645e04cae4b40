# cython: language_level=3
"""C-level RoI max-pool kernels (torchvision's roi_pool rule) for other Cython code to
``cimport``.  Geometry is computed in the data type, in torchvision's order of operations, and
clamped in floating point before any integer cast (a 1e30 corner is safe)."""
from cython cimport floating
from libc.stdint cimport int64_t

cdef void roi_pool_bins(const floating* roi, floating scale, Py_ssize_t pooled_h,
                        Py_ssize_t pooled_w, Py_ssize_t H, Py_ssize_t W,
                        Py_ssize_t* hs, Py_ssize_t* he, Py_ssize_t* ws,
                        Py_ssize_t* we) noexcept nogil

cdef void roi_pool_one(const floating* x, Py_ssize_t C, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t pooled_h, Py_ssize_t pooled_w,
                       const Py_ssize_t* hs, const Py_ssize_t* he,
                       const Py_ssize_t* ws, const Py_ssize_t* we,
                       floating* y, int64_t* argmax) noexcept nogil
