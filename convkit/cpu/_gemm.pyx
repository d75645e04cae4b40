# cython: language_level=3
"""The GEMM every cpu conv kernel calls (``_blas.pxd``), exposed to Python for the tests and for
``convkit info``: float32 goes to convkit's own AVX-512 kernel (``_sgemm.h``) where the CPU has
AVX-512F, float64 (and float32 elsewhere) to scipy's BLAS."""
from cython cimport floating
from ._blas cimport gemm


cdef extern from "_sgemm.h" nogil:
    int ck_sgemm_available()
    int CK_SGEMM_BUILT


def own_sgemm_active():
    """True when float32 GEMMs run on convkit's AVX-512 kernel (built in and the CPU has it)."""
    return bool(CK_SGEMM_BUILT and ck_sgemm_available())


def gemm_into(bint trans_a, bint trans_b, double alpha, const floating[:, ::1] a,
              const floating[:, ::1] b, double beta, floating[:, ::1] c):
    """c = alpha * op(a) @ op(b) + beta * c in place (row-major; shapes checked by the caller)."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1]
    cdef Py_ssize_t k = a.shape[0] if trans_a else a.shape[1]
    with nogil:
        gemm(trans_a, trans_b, m, n, k, <floating>alpha, &a[0, 0], a.shape[1], &b[0, 0],
             b.shape[1], <floating>beta, &c[0, 0], c.shape[1])
