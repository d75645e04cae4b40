# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
# cython: language_level=3
"""Small nogil helpers shared by the conv kernel modules (inline: compiled into each)."""
from cython cimport floating
from libc.string cimport memcpy, memset

from ._conv_csrc cimport ck_short_copy_f


cdef inline float* _align64(float* p) noexcept nogil:
    """p rounded up to a 64-byte boundary (at most 15 floats on)."""
    return <float*>((<size_t>p + 63) & ~(<size_t>63))


cdef inline void _row_copy(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    """memcpy of a row (memset to 0 when src is NULL); rows of up to 64 float32 values by masked
    vector moves where the CPU has AVX-512, not a library call each."""
    if floating is float:
        if ck_short_copy_f(dst, src, n):
            return
    if src == NULL:
        memset(dst, 0, n * sizeof(floating))
    else:
        memcpy(dst, src, n * sizeof(floating))


cdef inline Py_ssize_t _min(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef inline void _wo_range(Py_ssize_t off, Py_ssize_t sw, Py_ssize_t W, Py_ssize_t Wo,
                           Py_ssize_t* lo, Py_ssize_t* hi) noexcept nogil:
    """[lo, hi): the output columns wo whose input column wo*sw + off lies in [0, W)."""
    cdef Py_ssize_t a = 0, b = 0
    if off < 0:
        a = (-off + sw - 1) // sw
    if W - 1 - off >= 0:
        b = (W - 1 - off) // sw + 1
    if b > Wo:
        b = Wo
    if a > b:
        a = b
    lo[0] = a
    hi[0] = b
