# cython: language_level=3
"""C-level conv2d kernels others may ``cimport`` (all ``noexcept nogil``, float32/float64 fused).

A "plane" is one (H, W) channel image, C-contiguous.  Geometry arguments follow the Backend
contract: stride (sh, sw), the top/left padding (pt, pl) -- bottom/right padding only shows in the
output size -- and dilation (dh, dw).  ``h0``/``nrows`` select output rows [h0, h0 + nrows).

    from convkit.cpu._conv cimport im2col_plane
"""
from cython cimport floating


# The kernels live in the modules of their algorithm (_conv_im2col.pyx, _conv_depthwise.pyx);
# this file keeps the names users cimport from ``convkit.cpu._conv``:
from convkit.cpu._conv_im2col cimport im2col_plane, col2im_plane, plane_sum
from convkit.cpu._conv_depthwise cimport (depthwise_forward_plane, depthwise_backward_input_plane,
                                          depthwise_backward_weight_plane)

# cdef void im2col_plane(const floating* x, Py_ssize_t H, Py_ssize_t W,
#                        Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
#                        Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
#                        Py_ssize_t Wo, Py_ssize_t h0, Py_ssize_t nrows,
#                        floating* cols, Py_ssize_t ldc) noexcept nogil
# Write KH*KW rows of ``cols`` (row kh*KW + kw, row stride ldc), each nrows*Wo long: the input
# value each output position (ho, wo) sees through tap (kh, kw), 0 where that lands in padding.

# cdef void col2im_plane(const floating* cols, Py_ssize_t ldc, Py_ssize_t H, Py_ssize_t W,
#                        Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh, Py_ssize_t sw,
#                        Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
#                        Py_ssize_t Wo, Py_ssize_t h0, Py_ssize_t nrows,
#                        floating* gx) noexcept nogil
# The adjoint of im2col_plane: add each entry of the KH*KW rows back into the plane gx
# (entries that came from padding are dropped).  Fixed order: the same bits every run.

# cdef void depthwise_forward_plane(const floating* x, Py_ssize_t H, Py_ssize_t W,
#                                   const floating* w, Py_ssize_t KH, Py_ssize_t KW,
#                                   Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
#                                   Py_ssize_t dh, Py_ssize_t dw, floating bias,
#                                   floating* y, Py_ssize_t Ho, Py_ssize_t Wo) noexcept nogil
# y (Ho, Wo) = bias + cross-correlation of one input plane with one KH x KW filter w.

# cdef void depthwise_backward_input_plane(const floating* gy, Py_ssize_t Ho, Py_ssize_t Wo,
#                                          const floating* w, Py_ssize_t KH, Py_ssize_t KW,
#                                          Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
#                                          Py_ssize_t pl, Py_ssize_t dh, Py_ssize_t dw,
#                                          floating* gx, Py_ssize_t H, Py_ssize_t W) noexcept nogil
# gx (H, W) += the gradient of depthwise_forward_plane's input for output gradient gy.

# cdef void depthwise_backward_weight_plane(const floating* gy, Py_ssize_t Ho, Py_ssize_t Wo,
#                                           const floating* x, Py_ssize_t H, Py_ssize_t W,
#                                           Py_ssize_t KH, Py_ssize_t KW, Py_ssize_t sh,
#                                           Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
#                                           Py_ssize_t dh, Py_ssize_t dw,
#                                           floating* tmp, double* acc) noexcept nogil
# acc[kh*KW + kw] += sum over (ho, wo) of gy[ho, wo] * x[ho*sh - pt + kh*dh, wo*sw - pl + kw*dw].
# tmp: scratch of KH*KW*Wo elements.

# cdef double plane_sum(const floating* p, Py_ssize_t n) noexcept nogil
# Sum of n values, accumulated in double in a fixed order.
