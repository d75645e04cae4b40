# cython: language_level=3
"""The C of csrc/batchnorm.h (SSE2 double sums; the small-plane slab loops)."""

cdef extern from "csrc/batchnorm.h":
    void ck_bn_sums_f(const float* x, Py_ssize_t n, double m, double* s, double* q) noexcept nogil
    void ck_bn_sums_d(const double* x, Py_ssize_t n, double m, double* s, double* q) noexcept nogil
    void ck_bn_dot_f(const float* g, const float* x, Py_ssize_t n, double m,
                     double* sg, double* sd) noexcept nogil
    void ck_bn_dot_d(const double* g, const double* x, Py_ssize_t n, double m,
                     double* sg, double* sd) noexcept nogil
    void ck_bn_sum_f(const float* x, Py_ssize_t n, double* s) noexcept nogil
    void ck_bn_sums2_f(const float* x, Py_ssize_t n, double m, double* s,
                       double* q) noexcept nogil
    void ck_bn_dot2_f(const float* g, const float* x, Py_ssize_t n, double m,
                      double* sg, double* sd) noexcept nogil
    void ck_bn_apply_f(const float* x, float* y, Py_ssize_t n, float mean, float scale,
                       float shift) noexcept nogil
    void ck_bn_apply_d(const double* x, double* y, Py_ssize_t n, double mean, double scale,
                       double shift) noexcept nogil
    void ck_bn_grad_apply_f(const float* g, const float* x, float* o, Py_ssize_t n, float kg,
                            float m, float kx, float b) noexcept nogil
    void ck_bn_grad_apply_d(const double* g, const double* x, double* o, Py_ssize_t n,
                            double kg, double m, double kx, double b) noexcept nogil
    void ck_bnv_sum_f(const float* x, Py_ssize_t L, double* s) noexcept nogil
    void ck_bnv_sum_d(const double* x, Py_ssize_t L, double* s) noexcept nogil
    void ck_bnv_dev_f(const float* x, Py_ssize_t L, const double* m, double* s,
                      double* q) noexcept nogil
    void ck_bnv_dev_d(const double* x, Py_ssize_t L, const double* m, double* s,
                      double* q) noexcept nogil
    void ck_bnv_dot_f(const float* g, const float* x, Py_ssize_t L, const double* m,
                      double* sg, double* sd) noexcept nogil
    void ck_bnv_dot_d(const double* g, const double* x, Py_ssize_t L, const double* m,
                      double* sg, double* sd) noexcept nogil
    void ck_bnv_affine_f(const float* x, float* y, Py_ssize_t L, const float* m,
                         const float* a, const float* b) noexcept nogil
    void ck_bnv_affine_d(const double* x, double* y, Py_ssize_t L, const double* m,
                         const double* a, const double* b) noexcept nogil
    void ck_bnv_grad_f(const float* g, const float* x, float* o, Py_ssize_t L, const float* kg,
                       const float* m, const float* kx, const float* b) noexcept nogil
    void ck_bnv_grad_d(const double* g, const double* x, double* o, Py_ssize_t L,
                       const double* kg, const double* m, const double* kx,
                       const double* b) noexcept nogil
    void ck_bnvn_sum_f(const float* x, Py_ssize_t stride, Py_ssize_t N, Py_ssize_t L,
                       double* s) noexcept nogil
    void ck_bnvn_sum_d(const double* x, Py_ssize_t stride, Py_ssize_t N, Py_ssize_t L,
                       double* s) noexcept nogil
    void ck_bnvn_dev_f(const float* x, Py_ssize_t stride, Py_ssize_t N, Py_ssize_t L,
                       const double* m, double* s, double* q) noexcept nogil
    void ck_bnvn_dev_d(const double* x, Py_ssize_t stride, Py_ssize_t N, Py_ssize_t L,
                       const double* m, double* s, double* q) noexcept nogil
