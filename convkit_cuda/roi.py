"""RoI pooling and RoI align on the GPU, torchvision semantics (see ``kernels/roi.cu``).

rois arrive as a C-contiguous (K, 5) array of the input's dtype, rows
[batch_index, x1, y1, x2, y2] with finite coordinates and valid batch indices (the boundary
in ``convkit.functional`` guarantees it and zeroes the rows it had to sanitise).
"""
from __future__ import annotations

import cupy
import numpy as np

from convkit._config import get_deterministic

from ._kernels import grid_for, launch, on_device
from .pool import check_flag, gather_add

STEM = "roi"
_I = np.int64


def _sr(sampling_ratio):
    """sampling_ratio as the kernel's long long; <= 0 (adaptive) is kept as 0 and absurdly
    large values are capped (the kernel caps the grid at 2**30 points per axis anyway)."""
    return _I(min(max(int(sampling_ratio), 0), 2**31))


def roi_pool_forward(x, rois, output_size, spatial_scale, out=None):
    """-> (y (K,C,oh,ow), argmax int64 (K,C,oh,ow): flat h*W + w, -1 for an empty bin)."""
    with on_device("roi_pool_forward", x=x, rois=rois, out=out):
        N, C, H, W = x.shape
        K = rois.shape[0]
        oh, ow = output_size
        y = out if out is not None else cupy.empty((K, C, oh, ow), dtype=x.dtype)
        argmax = cupy.empty((K, C, oh, ow), dtype=np.int64)
        grid, block = grid_for(K * C * oh * ow)
        launch(STEM, "roi_pool_fwd", x.dtype, grid, block,
               (x, rois, _I(K), _I(C), _I(H), _I(W), _I(oh), _I(ow), x.dtype.type(spatial_scale),
                y, argmax))
        return y, argmax


def roi_pool_backward(grad_y, rois, argmax, input_shape):
    """grad_y added at argmax (in the plane of each RoI's image and channel) into a zero array
    of ``input_shape``.  Deterministic always: one thread per input element adds the bins that
    chose it in order (:func:`convkit_cuda.pool.gather_add`)."""
    with on_device("roi_pool_backward", grad_y=grad_y, rois=rois, argmax=argmax):
        N, C, H, W = input_shape
        K, _, oh, ow = grad_y.shape
        keys = cupy.empty(grad_y.size, dtype=np.int64)
        bad = cupy.zeros(1, dtype=np.uint64)
        grid, block = grid_for(grad_y.size)
        launch(STEM, "roi_pool_keys", grad_y.dtype, grid, block,
               (argmax, rois, _I(K), _I(N), _I(C), _I(oh * ow), _I(H * W), keys, bad))
        check_flag(bad, "roi_pool_backward", "argmax", argmax, -1, H * W)
        return gather_add(grad_y.ravel(), keys, N * C * H * W).reshape(input_shape)


def roi_align_forward(x, rois, output_size, spatial_scale, sampling_ratio, aligned, out=None):
    """-> y (K,C,oh,ow): each bin the mean of its bilinear samples (torchvision's roi_align)."""
    with on_device("roi_align_forward", x=x, rois=rois, out=out):
        N, C, H, W = x.shape
        K = rois.shape[0]
        oh, ow = output_size
        y = out if out is not None else cupy.empty((K, C, oh, ow), dtype=x.dtype)
        grid, block = grid_for(K * C * oh * ow)
        launch(STEM, "roi_align_fwd", x.dtype, grid, block,
               (x, rois, _I(K), _I(C), _I(H), _I(W), _I(oh), _I(ow), x.dtype.type(spatial_scale),
                _sr(sampling_ratio), _I(bool(aligned)), y))
        return y


def roi_align_backward(grad_y, rois, input_shape, output_size, spatial_scale, sampling_ratio,
                       aligned):
    """-> grad_x of ``input_shape``.

    By default an ``atomicAdd`` scatter (one thread per bin adds to the four neighbours of
    each sample, as torchvision's CUDA kernel does): fast, but where samples share an input
    element the order of the additions varies, so the result may differ in the last bits from
    run to run.  With ``convkit.set_deterministic(True)`` a gather kernel is used instead:
    one thread per input element visits the RoIs of its image in order -- same bits every run,
    slower when there are many RoIs.
    """
    with on_device("roi_align_backward", grad_y=grad_y, rois=rois):
        N, C, H, W = input_shape
        K = grad_y.shape[0]
        oh, ow = output_size
        dt = grad_y.dtype
        scale = dt.type(spatial_scale)
        if get_deterministic():
            gx = cupy.empty(input_shape, dtype=dt)
            grid, block = grid_for(N * C * H * W)
            launch(STEM, "roi_align_bwd_gather", dt, grid, block,
                   (grad_y, rois, _I(K), _I(N), _I(C), _I(H), _I(W), _I(oh), _I(ow), scale,
                    _sr(sampling_ratio), _I(bool(aligned)), gx))
            return gx
        gx = cupy.zeros(input_shape, dtype=dt)
        grid, block = grid_for(K * C * oh * ow)
        launch(STEM, "roi_align_bwd_atomic", dt, grid, block,
               (grad_y, rois, _I(K), _I(C), _I(H), _I(W), _I(oh), _I(ow), scale,
                _sr(sampling_ratio), _I(bool(aligned)), gx))
        return gx
