# cython: language_level=3
"""The C of csrc/adaptive_pool.h (run sums of average pooling, the bin maximum)."""

from libc.stdint cimport int64_t

cdef extern from "csrc/adaptive_pool.h":
    float ck_run_sum_f(const float* p, Py_ssize_t n) noexcept nogil
    double ck_run_sum_d(const double* p, Py_ssize_t n) noexcept nogil
    int ck_run_sum8_ok() noexcept nogil
    void ck_colsum_f(const float* x, Py_ssize_t W, Py_ssize_t rows, float* out) noexcept nogil
    void ck_colsum_d(const double* x, Py_ssize_t W, Py_ssize_t rows, double* out) noexcept nogil
    void ck_runs_avg_f(const float* x, Py_ssize_t K, Py_ssize_t n, const float* div,
                       int one_div, float* y, int by_eight) noexcept nogil
    void ck_global_avg_d(const double* x, Py_ssize_t P, Py_ssize_t n, double d,
                         double* y) noexcept nogil
    void ck_avg_fill_f(const float* gy, Py_ssize_t P, Py_ssize_t n, float d,
                       float* gx) noexcept nogil
    void ck_avg_fill_d(const double* gy, Py_ssize_t P, Py_ssize_t n, double d,
                       double* gx) noexcept nogil
    void ck_tile_fill_f(const float* gy, Py_ssize_t W, const Py_ssize_t* hs,
                        const Py_ssize_t* hl, const Py_ssize_t* ws, const Py_ssize_t* wl,
                        const float* div, Py_ssize_t oh, Py_ssize_t ow, float* gx,
                        float* e) noexcept nogil
    void ck_tile_fill_d(const double* gy, Py_ssize_t W, const Py_ssize_t* hs,
                        const Py_ssize_t* hl, const Py_ssize_t* ws, const Py_ssize_t* wl,
                        const double* div, Py_ssize_t oh, Py_ssize_t ow, double* gx,
                        double* e) noexcept nogil
    void ck_bin_max_f(const float* x, Py_ssize_t W, Py_ssize_t rows, Py_ssize_t cols,
                      float* val, Py_ssize_t* pos) noexcept nogil
    void ck_bin_max_d(const double* x, Py_ssize_t W, Py_ssize_t rows, Py_ssize_t cols,
                      double* val, Py_ssize_t* pos) noexcept nogil
    void ck_adaptive_max_plane_f(const float* x, Py_ssize_t W, const Py_ssize_t* hs,
                                 const Py_ssize_t* hl, const Py_ssize_t* ws,
                                 const Py_ssize_t* wl, float* y, int64_t* idx,
                                 Py_ssize_t oh, Py_ssize_t ow, int fast) noexcept nogil
    void ck_global_max_f(const float* x, Py_ssize_t P, Py_ssize_t n, float* y, int64_t* idx,
                         int fast) noexcept nogil
    int ck_adaptive_max_tiles_f(const float* x, Py_ssize_t W, Py_ssize_t r, Py_ssize_t c,
                                float* y, int64_t* idx, Py_ssize_t oh, Py_ssize_t ow) noexcept nogil
