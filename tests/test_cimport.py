"""Other Cython code can ``cimport`` the cpu conv kernels (convkit/cpu/_conv.pxd, _blas.pxd):
build a tiny extension against them in a temporary directory and check what it computes."""
import numpy as np
import pytest
from helpers import build_cimporting_extension

import convkit

ok, why = convkit.backend_status("cpu")
pytestmark = pytest.mark.skipif(not ok, reason=why[:300])

USER_PYX = """
# cython: language_level=3, boundscheck=False, wraparound=False
import numpy as np
from convkit.cpu._conv cimport im2col_plane, depthwise_forward_plane, plane_sum
from convkit.cpu._blas cimport gemm

def conv_one_plane(const double[:, ::1] x, const double[:, ::1] w, Py_ssize_t pad):
    '''single-channel conv (stride 1) two ways: im2col + gemm and the direct kernel'''
    cdef Py_ssize_t H = x.shape[0], W = x.shape[1], KH = w.shape[0], KW = w.shape[1]
    cdef Py_ssize_t Ho = H + 2 * pad - KH + 1, Wo = W + 2 * pad - KW + 1
    cdef double[:, ::1] cols = np.empty((KH * KW, Ho * Wo))
    cdef double[::1] y1 = np.empty(Ho * Wo)
    cdef double[::1] y2 = np.empty(Ho * Wo)
    cdef double total
    with nogil:
        im2col_plane(&x[0, 0], H, W, KH, KW, 1, 1, pad, pad, 1, 1, Wo, 0, Ho,
                     &cols[0, 0], Ho * Wo)
        gemm(False, False, 1, Ho * Wo, KH * KW, 1.0, &w[0, 0], KH * KW, &cols[0, 0], Ho * Wo,
             0.0, &y1[0], Ho * Wo)
        depthwise_forward_plane(&x[0, 0], H, W, &w[0, 0], KH, KW, 1, 1, pad, pad, 1, 1, 0.0,
                                &y2[0], Ho, Wo)
        total = plane_sum(&y2[0], Ho * Wo)
    return np.asarray(y1).reshape(Ho, Wo), np.asarray(y2).reshape(Ho, Wo), total
"""

def test_cimport_conv_kernels(tmp_path):
    user_conv = build_cimporting_extension(tmp_path, "user_conv", USER_PYX)

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 7))
    w = rng.standard_normal((3, 2))
    y1, y2, total = user_conv.conv_one_plane(x, w, 1)
    xp = np.pad(x, 1)
    want = np.array([[np.sum(xp[i:i + 3, j:j + 2] * w) for j in range(xp.shape[1] - 1)]
                     for i in range(xp.shape[0] - 2)])
    np.testing.assert_allclose(y1, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y2, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(total, want.sum(), rtol=1e-12)
