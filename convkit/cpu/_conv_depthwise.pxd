# cython: language_level=3
"""The depthwise plane kernels of _conv_depthwise.pyx (re-exported by _conv.pxd, where they are
documented for users)."""
from cython cimport floating


cdef void depthwise_forward_plane(const floating* x, Py_ssize_t H, Py_ssize_t W,
                                  const floating* w, Py_ssize_t KH, Py_ssize_t KW,
                                  Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                  Py_ssize_t dh, Py_ssize_t dw, floating bias,
                                  floating* y, Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil
# y (Ho, Wo) = bias + cross-correlation of one input plane with one KH x KW filter w.

cdef void depthwise_backward_input_plane(const floating* gy, Py_ssize_t Ho, Py_ssize_t Wo,
                                         const floating* w, Py_ssize_t KH, Py_ssize_t KW,
                                         Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                                         Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
                                         floating* gx, Py_ssize_t H, Py_ssize_t W) noexcept nogil
# gx (H, W) += the gradient of depthwise_forward_plane's input for output gradient gy.

cdef void depthwise_backward_weight_plane(const floating* gy, Py_ssize_t Ho, Py_ssize_t Wo,
                                          const floating* x, Py_ssize_t H, Py_ssize_t W,
                                          Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh,
                                          Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                                          Py_ssize_t dh, Py_ssize_t dw,
                                          floating* tmp, double* acc) noexcept nogil
# acc[kh*KW + kw] += sum over (ho, wo) of gy[ho, wo] * x[ho*sh - pt + kh*dh, wo*sw - pl + kw*dw].
# tmp: scratch of KH*KW*Wo elements.
