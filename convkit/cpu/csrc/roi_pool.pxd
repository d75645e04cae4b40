# cython: language_level=3
"""The C of csrc/roi_pool.h (RoI max pool's float32 kernel on the NHWC map)."""
from libc.stdint cimport int64_t

cdef extern from "csrc/roi_pool.h":
    void ck_pool_roi_f(const float* img, Py_ssize_t W, Py_ssize_t C, Py_ssize_t ph,
                       Py_ssize_t pw, const Py_ssize_t* hs, const Py_ssize_t* he,
                       const Py_ssize_t* ws, const Py_ssize_t* we, void* scratch,
                       float* y, int64_t* am) noexcept nogil
