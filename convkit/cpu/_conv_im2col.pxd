# cython: language_level=3
"""The im2col plane kernels of _conv_im2col.pyx (re-exported by _conv.pxd, where they are
documented for users)."""
from cython cimport floating


cdef void im2col_plane(const floating* x, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                       Py_ssize_t Wo, Py_ssize_t h0, Py_ssize_t nrows,
                       floating* cols, Py_ssize_t ldc) noexcept nogil
# Write KH*KW rows of ``cols`` (row kh*KW + kw, row stride ldc), each nrows*Wo long: the input
# value each output position (ho, wo) sees through tap (kh, kw), 0 where that lands in padding.

cdef void col2im_plane(const floating* cols, Py_ssize_t ldc, Py_ssize_t H, Py_ssize_t W,
                       Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                       Py_ssize_t Wo, Py_ssize_t h0, Py_ssize_t nrows,
                       floating* gx) noexcept nogil
# The adjoint of im2col_plane: add each entry of the KH*KW rows back into the plane gx
# (entries that came from padding are dropped).  Fixed order: the same bits every run.

cdef double plane_sum(const floating* p, Py_ssize_t n) noexcept nogil
# Sum of n values, accumulated in double in a fixed order.
