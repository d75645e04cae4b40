# cython: language_level=3
"""The C of csrc/pool.h (row kernels of the stride-2 pooling paths, streaming copies)."""

from libc.stdint cimport int64_t

cdef extern from "csrc/pool.h":
    void ck_max_row_f(const float* row, Py_ssize_t n, int K, float rel, float* accv, float* accr) noexcept nogil
    void ck_max_row_d(const double* row, Py_ssize_t n, int K, double rel, double* accv, double* accr) noexcept nogil
    void ck_avg_row_f(const float* row, Py_ssize_t n, int K, float* acc) noexcept nogil
    void ck_avg_row_d(const double* row, Py_ssize_t n, int K, double* acc) noexcept nogil
    void ck_max2x2_plane_f(const float* x, Py_ssize_t W, Py_ssize_t Ho, Py_ssize_t Wo, float* y, int64_t* idx) noexcept nogil
    void ck_stream_copy_f(float* dst, const float* src, Py_ssize_t n) noexcept nogil
    void ck_stream_copy_d(double* dst, const double* src, Py_ssize_t n) noexcept nogil
