# cython: language_level=3
"""C-level RoI align kernels (torchvision's roi_align rule) for other Cython code to
``cimport``.  Geometry is computed in the data type, in torchvision's order of operations."""
from cython cimport floating

cdef Py_ssize_t roi_align_axis_taps(floating start, floating bin_size, floating grid,
                                    Py_ssize_t pooled, Py_ssize_t size, Py_ssize_t cap,
                                    Py_ssize_t* first, Py_ssize_t* low, Py_ssize_t* high,
                                    floating* w_low, floating* w_high,
                                    Py_ssize_t* index) noexcept nogil

cdef void roi_align_geometry(const floating* roi, floating scale, floating offset, bint aligned,
                             Py_ssize_t sampling_ratio, Py_ssize_t pooled_h,
                             Py_ssize_t pooled_w, floating* geo) noexcept nogil
