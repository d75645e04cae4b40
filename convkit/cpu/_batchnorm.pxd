# cython: language_level=3
"""C-level spatial batch-norm kernels, one channel per call, for other Cython code to ``cimport``.

A channel of an (N, C, H, W) array is N runs of HW contiguous values ``stride`` apart
(``stride = C*HW``); pass a pointer to element (0, c, 0, 0).  Sums are accumulated in double
whatever the data type.
"""
from cython cimport floating

cdef void bn_channel_stats(const floating* x, Py_ssize_t N, Py_ssize_t stride, Py_ssize_t HW,
                           double* mean, double* var) noexcept nogil

cdef void bn_channel_apply(const floating* x, floating* y, Py_ssize_t N, Py_ssize_t stride,
                           Py_ssize_t HW, floating mean, floating scale, floating shift) noexcept nogil

cdef void bn_channel_grad_sums(const floating* gy, const floating* x, Py_ssize_t N,
                               Py_ssize_t stride, Py_ssize_t HW, double mean,
                               double* sum_gy, double* sum_gy_xmu) noexcept nogil

cdef void bn_channel_grad_apply(const floating* gy, const floating* x, floating* gx,
                                Py_ssize_t N, Py_ssize_t stride, Py_ssize_t HW,
                                floating k_gy, floating mean, floating k_xmu,
                                floating shift) noexcept nogil
