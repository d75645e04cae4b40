# cython: language_level=3
"""Row-major GEMM callable without the GIL: float32 on convkit's own AVX-512 kernel (csrc/sgemm.h)
where the CPU has AVX-512F, everything else on scipy's BLAS (scipy.linalg.cython_blas).

BLAS is column-major; a row-major C = op(A) @ op(B) is the column-major C^T = op(B)^T @ op(A)^T,
so the operands (and their flags) are swapped: no copies, no cblas.h, no link flags.
Dimensions go to BLAS as 32-bit ints; callers keep every dimension and leading dimension
below 2**31 (the conv wrapper chunks its work so that they are).
"""
from cython cimport floating
from scipy.linalg.cython_blas cimport sgemm, dgemm


cdef extern from "csrc/sgemm.h" nogil:
    int ck_sgemm_available()
    int ck_sgemm(int ta, int tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                 const float* a, Py_ssize_t lda, const float* b, Py_ssize_t ldb, float beta,
                 float* c, Py_ssize_t ldc)
    Py_ssize_t ck_sgemm_packed_a_floats(Py_ssize_t m, Py_ssize_t k)
    int ck_sgemm_pack_a(int ta, Py_ssize_t m, Py_ssize_t k, const float* a, Py_ssize_t lda,
                        float* out)
    int ck_sgemm_apacked(int tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* apk,
                         const float* b, Py_ssize_t ldb, float beta, float* c, Py_ssize_t ldc,
                         const float* rowbias)
    int ck_sgemm_apacked_rows(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float* apk,
                              const float* b, const Py_ssize_t* boff, float beta, float* c,
                              Py_ssize_t ldc, const float* rowbias)


cdef extern from "csrc/fgemm.h" nogil:
    int ck_fgemm(int ta, int tb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                 const float* a, Py_ssize_t lda, const float* b, Py_ssize_t ldb, float beta,
                 float* c, Py_ssize_t ldc)


cdef inline void gemm(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      floating alpha, const floating* a, Py_ssize_t lda,
                      const floating* b, Py_ssize_t ldb, floating beta,
                      floating* c, Py_ssize_t ldc) noexcept nogil:
    """c (m x n, row stride ldc) = alpha * op(a) @ op(b) + beta * c, all row-major.

    op(a) is m x k (a stored k x m when trans_a), op(b) is k x n (b stored n x k when trans_b).
    """
    cdef char ta = b'T' if trans_a else b'N'
    cdef char tb = b'T' if trans_b else b'N'
    cdef int im = <int>m, in_ = <int>n, ik = <int>k
    cdef int ilda = <int>lda, ildb = <int>ldb, ildc = <int>ldc
    if floating is float:
        if ck_sgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
            return
        sgemm(&tb, &ta, &in_, &im, &ik, &alpha, <float*>b, &ildb, <float*>a, &ilda,
              &beta, c, &ildc)
    else:
        dgemm(&tb, &ta, &in_, &im, &ik, &alpha, <double*>b, &ildb, <double*>a, &ilda,
              &beta, c, &ildc)


cdef inline void gemm_fixed(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n,
                            Py_ssize_t k, floating alpha, const floating* a, Py_ssize_t lda,
                            const floating* b, Py_ssize_t ldb, floating beta,
                            floating* c, Py_ssize_t ldc) noexcept nogil:
    """gemm, where float32 is summed in a fixed order (each output one FMA chain over k
    ascending: csrc/fgemm.h on AVX2 + FMA, csrc/sgemm.h on AVX-512) -- the GEMMs of a conv's
    forward and grad_x, whose outputs must not depend on the other images of the GEMM (batch
    invariance, conv_plan.py).  Without either kernel (or float64) it is BLAS's gemm."""
    if floating is float:
        if not ck_sgemm_available() and \
                ck_fgemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc):
            return
    gemm(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)


cdef inline void gemm_pk(bint trans_a, bint trans_b, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                         const floating* a, Py_ssize_t lda, const float* apk,
                         const floating* b, Py_ssize_t ldb, floating beta,
                         floating* c, Py_ssize_t ldc, const floating* rowbias) noexcept nogil:
    """c = op(a) @ op(b) + beta * c, or (rowbias not NULL, beta 0) + rowbias[i] on row i; on
    op(a) prepacked by ck_sgemm_pack_a when apk is not NULL (float32 on the own kernel: a conv's
    weights are packed once per call, not once per task, and its bias is added as the products
    are stored, not written into c first)."""
    cdef Py_ssize_t i, j
    if floating is float:
        if apk != NULL and ck_sgemm_apacked(trans_b, m, n, k, apk, b, ldb, beta, c, ldc,
                                            rowbias):
            return
    if rowbias != NULL:
        for i in range(m):
            for j in range(n):
                c[i * ldc + j] = rowbias[i]
        beta = 1
    gemm_fixed(trans_a, trans_b, m, n, k, <floating>1, a, lda, b, ldb, beta, c, ldc)
