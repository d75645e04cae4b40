# cython: language_level=3
"""C-level RoI align kernels (torchvision's roi_align rule) for other Cython code to
``cimport``.  Geometry is computed in the data type, in torchvision's order of operations."""
from cython cimport floating

cdef Py_ssize_t roi_align_axis_taps(floating start, floating bin_size, floating grid,
                                    Py_ssize_t pooled, Py_ssize_t size, Py_ssize_t cap,
                                    Py_ssize_t* first, Py_ssize_t* low, Py_ssize_t* high,
                                    floating* w_low, floating* w_high) noexcept nogil
