"""CPU RoI pooling and RoI align: Python wrappers around ``_roi`` (torchvision's rules; see
convkit/reference/roi.py for the statement of each rule).

roi_align (and float32 roi_pool) forwards run on an NHWC copy of the map (made by a parallel
transpose), so a pixel's channels are contiguous; roi_align's backward accumulates each block
of 64 channels of one image in a private pixel-major scratch and transposes it into grad_x's
planes.
Threads come from _roi's own task runner (joined by sleeping, not spinning).
"""
from __future__ import annotations

import numpy as np

from .._config import get_num_threads
from . import _roi

# Below this many output values (K*C*ph*pw) a call runs on one thread (a thread start ~10 us).
_PARALLEL_MIN = 1 << 12


def _threads(work):
    return 1 if work < _PARALLEL_MIN else get_num_threads()


def _empty64(shape, dtype):
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary (the
    kernels' whole-vector loads of a pixel's channels then never straddle cache lines)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = np.empty(n * dtype.itemsize + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + n * dtype.itemsize].view(dtype).reshape(shape)


def roi_pool_forward(x, rois, output_size, spatial_scale, out=None):
    K, C = rois.shape[0], x.shape[1]
    shape = (K, C) + tuple(output_size)
    y = out if out is not None else np.empty(shape, x.dtype)
    argmax = np.empty(shape, np.int64)
    N, _, H, W = x.shape
    nt = _threads(y.size * 4)
    if x.dtype == np.float32 and H * W < 2**31 and _roi.simd_available():
        # float32: channel-vectorised on an NHWC copy
        _roi.roi_pool_forward_nhwc(x, _empty64((N, H, W, C), x.dtype), rois, float(spatial_scale),
                                   y.reshape(K, C, -1), argmax.reshape(K, C, -1), shape[2],
                                   shape[3], nt)
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
    _roi.roi_align_forward(x, _empty64((N, H, W, C), x.dtype), rois, float(spatial_scale),
                           int(sampling_ratio), bool(aligned), y, np.empty(N * H, np.uint8), nt)
    return y


def roi_align_backward(grad_y, rois, input_shape, output_size, spatial_scale, sampling_ratio,
                       aligned):
    N, C, H, W = input_shape
    gx = np.empty(input_shape, grad_y.dtype)
    _roi.roi_align_backward(grad_y, rois, float(spatial_scale), int(sampling_ratio),
                            bool(aligned), gx, _threads(grad_y.size + N * C * H * W))
    return gx


def _use_openmp(on):
    """bench/bench_threading.py's A/B switch: the RoI tasks on OpenMP regions (True) or on
    the pthread task runner (False)."""
    _roi._use_openmp(on)
