# cython: boundscheck=False, wraparound=False, initializedcheck=False
# cython: language_level=3
"""The activation layers' passes (csrc/relu.h): ReLU's forward and backward in one pass each
(numpy's backward takes four).  CpuBackend._relu_forward / _relu_backward call them and run
the Backend defaults when they decline."""
cimport numpy as cnp
import numpy as np
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

cnp.import_array()

cdef extern from "relu.h" nogil:
    void ck_relu_grad32(const uint32_t* y, const uint32_t* g, uint32_t* out, Py_ssize_t n)
    void ck_relu_grad64(const uint64_t* y, const uint64_t* g, uint64_t* out, Py_ssize_t n)
    void ck_relu32(const int32_t* x, int32_t* y, Py_ssize_t n)
    void ck_relu64(const int64_t* x, int64_t* y, Py_ssize_t n)

# Elements per task: whole 4 KiB pages of float32, enough work to pay a thread's start.
DEF CHUNK = 1 << 15


def relu_backward(y, g, int n_threads):
    """out = +0 where y's bits are +-0, else g's bits (csrc/relu.h), or None (declined: not two
    C-contiguous float32 / float64 numpy arrays of one shape and dtype; the caller then runs
    the Backend default).  Tasks of CHUNK elements, at most n_threads threads; any split gives
    the same bits (elementwise)."""
    if (type(y) is not np.ndarray or type(g) is not np.ndarray or y.dtype != g.dtype
            or y.shape != g.shape or y.dtype.kind != "f" or y.dtype.itemsize not in (4, 8)
            or not y.flags.c_contiguous or not g.flags.c_contiguous):
        return None
    out = np.empty(y.shape, y.dtype)
    cdef Py_ssize_t n = y.size, nt = (n + CHUNK - 1) // CHUNK, t, lo, hi
    cdef int th = n_threads if n_threads < nt else <int>nt
    if n == 0:
        return out
    if th < 1:
        th = 1
    cdef char* py = <char*>cnp.PyArray_DATA(<cnp.ndarray>y)
    cdef char* pg = <char*>cnp.PyArray_DATA(<cnp.ndarray>g)
    cdef char* po = <char*>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef bint f32 = y.dtype.itemsize == 4
    with nogil:
        for t in prange(nt, schedule="static", num_threads=th):
            lo = t * CHUNK
            hi = lo + CHUNK if lo + CHUNK < n else n
            if f32:
                ck_relu_grad32(<uint32_t*>py + lo, <uint32_t*>pg + lo, <uint32_t*>po + lo,
                               hi - lo)
            else:
                ck_relu_grad64(<uint64_t*>py + lo, <uint64_t*>pg + lo, <uint64_t*>po + lo,
                               hi - lo)
    return out


def relu_forward(x, int n_threads):
    """max(x, 0) with np.maximum's bits (csrc/relu.h ck_relu32 / 64), or None (declined: not a
    C-contiguous float32 / float64 numpy array).  Tasks as relu_backward's."""
    if (type(x) is not np.ndarray or x.dtype.kind != "f" or x.dtype.itemsize not in (4, 8)
            or not x.flags.c_contiguous):
        return None
    out = np.empty(x.shape, x.dtype)
    cdef Py_ssize_t n = x.size, nt = (n + CHUNK - 1) // CHUNK, t, lo, hi
    cdef int th = n_threads if n_threads < nt else <int>nt
    if n == 0:
        return out
    if th < 1:
        th = 1
    cdef char* px = <char*>cnp.PyArray_DATA(<cnp.ndarray>x)
    cdef char* po = <char*>cnp.PyArray_DATA(<cnp.ndarray>out)
    cdef bint f32 = x.dtype.itemsize == 4
    with nogil:
        for t in prange(nt, schedule="static", num_threads=th):
            lo = t * CHUNK
            hi = lo + CHUNK if lo + CHUNK < n else n
            if f32:
                ck_relu32(<int32_t*>px + lo, <int32_t*>po + lo, hi - lo)
            else:
                ck_relu64(<int64_t*>px + lo, <int64_t*>po + lo, hi - lo)
    return out
