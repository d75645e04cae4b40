# cython: boundscheck=False, wraparound=False, initializedcheck=False
# cython: language_level=3
"""The optimisers' fused updates (csrc/sgd.h): one pass per parameter instead of numpy's four
ufunc calls and two temporaries, with the same roundings.  CpuBackend._sgd_update calls it and
runs the Backend default when it declines."""
cimport numpy as cnp
import numpy as np
from libc.math cimport isinf
from libc.stdint cimport uintptr_t

cnp.import_array()

cdef extern from "sgd.h" nogil:
    void ck_sgd_f(float *p, const float *g, float *buf, Py_ssize_t n, float lr, int has_mu,
                  float mu, int damp, float one_m_damp, int has_wd, float wd, int nesterov,
                  int fresh)
    void ck_sgd_d(double *p, const double *g, double *buf, Py_ssize_t n, double lr,
                  int has_mu, double mu, int damp, double one_m_damp, int has_wd, double wd,
                  int nesterov, int fresh)


cdef bint _plain(object o, int t, cnp.ndarray like, bint write):
    """o is a C-contiguous numpy array of type t and like's shape (writeable if asked)."""
    if not isinstance(o, cnp.ndarray):
        return False
    cdef cnp.ndarray a = <cnp.ndarray>o
    if cnp.PyArray_TYPE(a) != t or not cnp.PyArray_IS_C_CONTIGUOUS(a):
        return False
    if write and not cnp.PyArray_ISWRITEABLE(a):
        return False
    cdef int nd = cnp.PyArray_NDIM(a)
    if nd != cnp.PyArray_NDIM(like):
        return False
    cdef cnp.npy_intp* da = cnp.PyArray_DIMS(a)
    cdef cnp.npy_intp* dl = cnp.PyArray_DIMS(like)
    for k in range(nd):
        if da[k] != dl[k]:
            return False
    return True


cdef bint _apart(cnp.ndarray a, cnp.ndarray b):
    """a's and b's bytes do not overlap."""
    cdef uintptr_t pa = <uintptr_t>cnp.PyArray_DATA(a), pb = <uintptr_t>cnp.PyArray_DATA(b)
    return pa + <uintptr_t>cnp.PyArray_NBYTES(a) <= pb or pb + <uintptr_t>cnp.PyArray_NBYTES(b) <= pa


cdef bint _f32_ok(double v):
    """v converts to float32 without overflowing to inf where it was finite (numpy would
    warn there; the default path keeps that)."""
    return not isinf(<float>v) or isinf(v)


def sgd_step(list params, list grads, list bufs, double lr, double momentum, double dampening,
             double weight_decay, bint nesterov):
    """Backend._sgd_update on host arrays, or False having changed nothing: every param, grad
    and (non-None) buffer must be a C-contiguous numpy float32 or float64 array of its
    parameter's shape and type, the parameter and buffer writeable; a grad is the parameter's
    memory or apart from it; a buffer apart from both; and float32 must hold the
    hyper-parameters without overflow.  ``bufs`` (with momentum): None entries get a new
    array, in place.  Returns True when done."""
    cdef Py_ssize_t i, m = len(params)
    cdef bint has_mu = momentum != 0, has_wd = weight_decay != 0, damp = dampening != 0
    cdef double omd = 1.0 - dampening
    cdef cnp.ndarray p, g, b
    cdef int t
    if len(grads) != m or (has_mu and len(bufs) != m):
        return False
    for i in range(m):
        o = params[i]
        if not isinstance(o, cnp.ndarray):
            return False
        p = <cnp.ndarray>o
        t = cnp.PyArray_TYPE(p)
        if t != cnp.NPY_FLOAT32 and t != cnp.NPY_FLOAT64:
            return False
        if not _plain(p, t, p, True) or not _plain(grads[i], t, p, False):
            return False
        g = <cnp.ndarray>grads[i]
        # (the same memory, same shape and type: each element is read before it is written,
        # as numpy's temporaries do; a partial overlap is left to numpy)
        if cnp.PyArray_DATA(g) != cnp.PyArray_DATA(p) and not _apart(p, g):
            return False
        if has_mu and bufs[i] is not None:
            if not _plain(bufs[i], t, p, True):
                return False
            b = <cnp.ndarray>bufs[i]
            if not _apart(b, p) or not _apart(b, g):
                return False
        if t == cnp.NPY_FLOAT32 and not (_f32_ok(lr) and _f32_ok(momentum) and _f32_ok(omd)
                                         and _f32_ok(weight_decay)):
            return False
    cdef float *bf
    cdef double *bd
    cdef bint fresh
    cdef Py_ssize_t n
    for i in range(m):
        p = <cnp.ndarray>params[i]
        g = <cnp.ndarray>grads[i]
        fresh = False
        bf, bd = NULL, NULL
        if has_mu:
            if bufs[i] is None:
                bufs[i] = np.empty_like(p)
                fresh = True
            b = <cnp.ndarray>bufs[i]
            bf, bd = <float*>cnp.PyArray_DATA(b), <double*>cnp.PyArray_DATA(b)
        n = cnp.PyArray_SIZE(p)
        if cnp.PyArray_TYPE(p) == cnp.NPY_FLOAT32:
            with nogil:
                ck_sgd_f(<float*>cnp.PyArray_DATA(p), <const float*>cnp.PyArray_DATA(g), bf, n,
                         <float>lr, has_mu, <float>momentum, damp, <float>omd, has_wd,
                         <float>weight_decay, nesterov, fresh)
        else:
            with nogil:
                ck_sgd_d(<double*>cnp.PyArray_DATA(p), <const double*>cnp.PyArray_DATA(g), bd,
                         n, lr, has_mu, momentum, damp, omd, has_wd, weight_decay, nesterov,
                         fresh)
    return True
