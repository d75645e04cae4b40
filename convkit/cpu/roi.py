"""CPU RoI pooling and RoI align: Python wrappers around ``_roi_pool`` and ``_roi_align``
(torchvision's rules; see convkit/reference/roi.py for the statement of each rule).

roi_align (and float32 roi_pool) forwards run on an NHWC copy of the map (made by a parallel
transpose), so a pixel's channels are contiguous; roi_align's backward accumulates each block
of 64 channels of one image in a private pixel-major scratch and transposes it into grad_x's
planes.  Threads are OpenMP's, as for every other cpu op.
"""
from __future__ import annotations

import numpy as np

from .._config import get_num_threads
from . import _roi_align, _roi_pool, _roi_variants

# Below this many output values (K*C*ph*pw) a call runs on one thread (waking a thread costs
# microseconds).
_PARALLEL_MIN = 1 << 12


def _threads(work):
    return 1 if work < _PARALLEL_MIN else get_num_threads()


def simd_available():
    """True when the SSE2 float32 kernels were compiled in (x86-64)."""
    return _roi_pool.simd_available()


def set_simd_level(cap):
    """Cap the float32 RoI kernels' vector width (2: AVX-512, 1: AVX2, 0: SSE2; default 2) in
    the RoI modules (roi_align, roi_pool, roi_max_align) and return the level now in use
    (also limited by the CPU).  Every level gives the same bits (tests compare them)."""
    _roi_align.set_simd_level(int(cap))
    _roi_variants.set_simd_level(int(cap))
    return _roi_pool.set_simd_level(int(cap))


def use_avx2(on):
    """Allow (default) or forbid the AVX2 and AVX-512 kernels; returns whether AVX2 or wider
    is now in use.  All paths give the same bits (tests compare them)."""
    return set_simd_level(2 if on else 0) >= 1


def _empty64(shape, dtype):
    """An uninitialised C-contiguous array whose data starts on a 64-byte boundary (the
    kernels' whole-vector loads of a pixel's channels then never straddle cache lines)."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape))
    raw = np.empty(n * dtype.itemsize + 64, np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + n * dtype.itemsize].view(dtype).reshape(shape)


def _local_order(rois):
    """RoIs by image, then by the row of their centre: handed out in this order, RoIs that
    follow each other read mostly the same pixels, which are then still in cache (~10% of a
    forward on one thread).  Outputs do not depend on it (each RoI is written alone)."""
    r = np.asarray(rois)
    return np.lexsort((r[:, 1] + r[:, 3], r[:, 2] + r[:, 4], r[:, 0])).astype(np.intp)


def _check_batch(op, bad, N):
    # the kernels check every batch index they read (the boundary checked them too, but a
    # backend object's ops are unchecked, and another thread may change rois during a call)
    if bad:
        raise ValueError(f"{op}: rois[:, 0] must be batch indices in [0, {N}); the kernel read "
                         f"a value outside (unchecked rois, or rois changed during the call)")


def roi_pool_forward(x, rois, output_size, spatial_scale, out=None):
    K, C = rois.shape[0], x.shape[1]
    shape = (K, C) + tuple(output_size)
    y = out if out is not None else np.empty(shape, x.dtype)
    argmax = np.empty(shape, np.int64)
    N, _, H, W = x.shape
    nt = _threads(y.size * 4)
    if x.dtype == np.float32 and H * W < 2**31 and simd_available():
        # float32: channel-vectorised on an NHWC copy
        bad = _roi_pool.roi_pool_forward_nhwc(x, _empty64((N, H, W, C), x.dtype), rois,
                                              _local_order(rois), float(spatial_scale),
                                              y.reshape(K, C, -1), argmax.reshape(K, C, -1),
                                              shape[2], shape[3], nt)
    else:
        bad = _roi_pool.roi_pool_forward(x, rois, float(spatial_scale), y, argmax, nt)
    _check_batch("roi_pool_forward", bad, N)
    return y, argmax


def roi_pool_backward(grad_y, rois, argmax, input_shape):
    N, C, H, W = input_shape
    K = grad_y.shape[0]
    gx = np.empty(input_shape, grad_y.dtype)
    bad, bad_rois = _roi_pool.roi_pool_backward(grad_y.reshape(K, C, -1), rois,
                                                argmax.reshape(K, C, -1), gx.reshape(N, C, H * W),
                                                _threads(grad_y.size + gx.size))
    if bad:
        raise ValueError(f"roi_pool_backward: argmax must lie in [-1, {H * W}) for this "
                         f"input_shape, got values in [{int(argmax.min())}, {int(argmax.max())}]")
    _check_batch("roi_pool_backward", bad_rois, N)
    return gx


def roi_align_forward(x, rois, output_size, spatial_scale, sampling_ratio, aligned, out=None):
    N, C, H, W = x.shape
    K = rois.shape[0]
    shape = (K, C) + tuple(output_size)
    y = out if out is not None else np.empty(shape, x.dtype)
    nt = _threads(K * C * shape[2] * shape[3] + x.size)
    bad = _roi_align.roi_align_forward(x, _empty64((N, H, W, C), x.dtype), rois,
                                       _local_order(rois), float(spatial_scale),
                                       int(sampling_ratio), bool(aligned), y,
                                       np.empty(N * H, np.uint8), nt)
    _check_batch("roi_align_forward", bad, N)
    return y


def roi_align_backward(grad_y, rois, input_shape, output_size, spatial_scale, sampling_ratio,
                       aligned):
    N, C, H, W = input_shape
    gx = np.empty(input_shape, grad_y.dtype)
    bad = _roi_align.roi_align_backward(grad_y, rois, float(spatial_scale), int(sampling_ratio),
                                        bool(aligned), gx, _threads(grad_y.size + N * C * H * W))
    _check_batch("roi_align_backward", bad, N)
    return gx
