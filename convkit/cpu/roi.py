"""CPU RoI pooling and RoI align: Python wrappers around ``_roi`` (torchvision's rules; see
convkit/reference/roi.py for the statement of each rule).

roi_align (and float32 roi_pool) forwards run on an NHWC copy of the map (made by a parallel
transpose), so a pixel's channels are contiguous; roi_align's backward accumulates each block
of 32 channels in a private pixel-major scratch and transposes it into grad_x's planes.
"""
from __future__ import annotations

import numpy as np

from .._config import get_num_threads
from . import _roi

# Below this many output values (K*C*ph*pw) a call runs on one thread (OpenMP fork ~10 us).
_PARALLEL_MIN = 1 << 12


def _threads(work):
    return 1 if work < _PARALLEL_MIN else get_num_threads()


def roi_pool_forward(x, rois, output_size, spatial_scale, out=None):
    K, C = rois.shape[0], x.shape[1]
    shape = (K, C) + tuple(output_size)
    y = out if out is not None else np.empty(shape, x.dtype)
    argmax = np.empty(shape, np.int64)
    N, _, H, W = x.shape
    nt = _threads(y.size * 4)
    if x.dtype == np.float32 and H * W < 2**31 and _roi.simd_available():
        # float32: channel-vectorised on an NHWC copy (eight channels per compare)
        xt = np.empty((N, H, W, C), x.dtype)
        _roi.nchw_to_nhwc(x, xt, np.empty(N * H, np.uint8), nt)
        _roi.roi_pool_forward_nhwc(xt, rois, float(spatial_scale), y.reshape(K, C, -1),
                                   argmax.reshape(K, C, -1), shape[2], shape[3], nt)
    else:
        _roi.roi_pool_forward(x, rois, float(spatial_scale), y, argmax, nt)
    return y, argmax


def roi_pool_backward(grad_y, rois, argmax, input_shape):
    N, C, H, W = input_shape
    K = grad_y.shape[0]
    gx = np.empty(input_shape, grad_y.dtype)
    bad = _roi.roi_pool_backward(grad_y.reshape(K, C, -1), rois, argmax.reshape(K, C, -1),
                                 gx.reshape(N, C, H * W), _threads(grad_y.size + gx.size))
    if bad:
        raise ValueError(f"roi_pool_backward: argmax must lie in [-1, {H * W}) for this "
                         f"input_shape, got values in [{int(argmax.min())}, {int(argmax.max())}]")
    return gx


def roi_align_forward(x, rois, output_size, spatial_scale, sampling_ratio, aligned, out=None):
    N, C, H, W = x.shape
    K = rois.shape[0]
    shape = (K, C) + tuple(output_size)
    y = out if out is not None else np.empty(shape, x.dtype)
    nt = _threads(K * C * shape[2] * shape[3] + x.size)
    xt = np.empty((N, H, W, C), x.dtype)
    rows_ok = np.empty(N * H, np.uint8)
    _roi.nchw_to_nhwc(x, xt, rows_ok, nt)
    # a RoI may merge the taps that fall on one pixel only where its image is finite
    merge = rows_ok.reshape(N, H).all(axis=1)[rois[:, 0].astype(np.intp)].astype(np.uint8)
    _roi.roi_align_forward(xt, rois, float(spatial_scale), int(sampling_ratio), bool(aligned),
                           y, merge, nt)
    return y


def roi_align_backward(grad_y, rois, input_shape, output_size, spatial_scale, sampling_ratio,
                       aligned):
    N, C, H, W = input_shape
    K = grad_y.shape[0]
    nt = _threads(grad_y.size + N * C * H * W)
    # merged taps only for RoIs whose grad is finite (one parallel pass over grad_y)
    merge = np.empty(K, np.uint8)
    _roi.rows_finite(grad_y.reshape(K, -1), merge, nt)
    gx = np.empty(input_shape, grad_y.dtype)
    _roi.roi_align_backward(grad_y, rois, float(spatial_scale), int(sampling_ratio),
                            bool(aligned), gx, merge, nt)
    return gx
