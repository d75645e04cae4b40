# cython: language_level=3
"""The C of csrc/adaptive_pool.h (run sums of adaptive average pooling)."""

cdef extern from "csrc/adaptive_pool.h":
    float ck_run_sum_f(const float* p, Py_ssize_t n) noexcept nogil
    double ck_run_sum_d(const double* p, Py_ssize_t n) noexcept nogil
