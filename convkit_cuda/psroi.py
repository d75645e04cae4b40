"""Position-sensitive RoI ops (R-FCN): ps_roi_align, ps_roi_pool -- cuda backend
(``kernels/psroi.cu``; torchvision's rules, stated in convkit/reference/psroi.py).

rois arrive unchecked (``CudaBackend.validates_rois``): a per-RoI geometry kernel runs first,
flags a row whose batch index is not an integer in [0, N) and marks it, and a row with a
non-finite coordinate, as skipped (zeros, no gradient); :func:`convkit_cuda.roi.check` reads
the flag once, after the op's kernels.
"""
from __future__ import annotations

import cupy
import numpy as np

from convkit._config import get_deterministic

from ._kernels import grid_for, launch, on_device
from .roi import _sr, check

STEM = "psroi"
_I = np.int64


def _align_geom(rois, N, output_size, spatial_scale, sampling_ratio, dt, bad):
    K = rois.shape[0]
    oh, ow = output_size
    geo = cupy.empty(4 * K, dtype=dt)
    igeo = cupy.empty(3 * K, dtype=np.int64)
    grid, block = grid_for(K)
    launch(STEM, "ps_align_geom", dt, grid, block,
           (rois, _I(K), _I(N), _I(oh), _I(ow), dt.type(spatial_scale), _sr(sampling_ratio),
            geo, igeo, bad))
    return geo, igeo


def ps_roi_align_forward(x, rois, output_size, spatial_scale, sampling_ratio):
    """-> y (K, C_out, oh, ow): each bin the mean of its bilinear samples on its own plane."""
    op = "ps_roi_align_forward"
    with on_device(op, x=x, rois=rois):
        N, C, H, W = x.shape
        K = rois.shape[0]
        oh, ow = output_size
        bad = cupy.zeros(1, dtype=np.uint64)
        geo, igeo = _align_geom(rois, N, output_size, spatial_scale, sampling_ratio, x.dtype,
                                bad)
        y = cupy.empty((K, C // (oh * ow), oh, ow), dtype=x.dtype)
        grid, block = grid_for(y.size)
        launch(STEM, "ps_align_fwd", x.dtype, grid, block,
               (x, geo, igeo, _I(K), _I(C), _I(H), _I(W), _I(oh), _I(ow), y))
        check(bad, op, rois, N)
        return y


def ps_roi_align_backward(grad_y, rois, input_shape, output_size, spatial_scale,
                          sampling_ratio):
    """-> grad_x of ``input_shape``.

    By default an ``atomicAdd`` scatter (one thread per bin, as torchvision's CUDA kernel):
    where samples of several RoIs share an input element the order of the additions varies,
    so the result may differ in the last bits from run to run.  With
    ``convkit.set_deterministic(True)`` a gather kernel is used instead (one thread per input
    element visits the image's RoIs in order): the same bits every run.
    """
    op = "ps_roi_align_backward"
    with on_device(op, grad_y=grad_y, rois=rois):
        N, C, H, W = input_shape
        K = grad_y.shape[0]
        oh, ow = output_size
        dt = grad_y.dtype
        bad = cupy.zeros(1, dtype=np.uint64)
        geo, igeo = _align_geom(rois, N, output_size, spatial_scale, sampling_ratio, dt, bad)
        if get_deterministic():
            gx = cupy.empty(input_shape, dtype=dt)
            grid, block = grid_for(gx.size)
            launch(STEM, "ps_align_bwd_gather", dt, grid, block,
                   (grad_y, geo, igeo, _I(K), _I(N), _I(C), _I(H), _I(W), _I(oh), _I(ow), gx))
        else:
            gx = cupy.zeros(input_shape, dtype=dt)
            grid, block = grid_for(grad_y.size)
            launch(STEM, "ps_align_bwd_atomic", dt, grid, block,
                   (grad_y, geo, igeo, _I(K), _I(C), _I(H), _I(W), _I(oh), _I(ow), gx))
        check(bad, op, rois, N)
        return gx


def _pool_edges(rois, N, H, W, output_size, spatial_scale, dt, bad):
    K = rois.shape[0]
    oh, ow = output_size
    edges = cupy.empty(K * (1 + 2 * (oh + ow)), dtype=np.int64)
    grid, block = grid_for(K)
    launch(STEM, "ps_pool_edges", dt, grid, block,
           (rois, _I(K), _I(N), _I(H), _I(W), _I(oh), _I(ow), dt.type(spatial_scale), edges,
            bad))
    return edges


def ps_roi_pool_forward(x, rois, output_size, spatial_scale):
    """-> y (K, C_out, oh, ow): each bin the mean of its cells on its own plane."""
    op = "ps_roi_pool_forward"
    with on_device(op, x=x, rois=rois):
        N, C, H, W = x.shape
        K = rois.shape[0]
        oh, ow = output_size
        bad = cupy.zeros(1, dtype=np.uint64)
        edges = _pool_edges(rois, N, H, W, output_size, spatial_scale, x.dtype, bad)
        y = cupy.empty((K, C // (oh * ow), oh, ow), dtype=x.dtype)
        grid, block = grid_for(y.size)
        launch(STEM, "ps_pool_fwd", x.dtype, grid, block,
               (x, edges, _I(K), _I(C), _I(H), _I(W), _I(oh), _I(ow), y))
        check(bad, op, rois, N)
        return y


def ps_roi_pool_backward(grad_y, rois, input_shape, output_size, spatial_scale):
    """-> grad_x of ``input_shape``; deterministic always (a gather: one thread per input
    element adds, in RoI order, the bins of its image's RoIs that cover it)."""
    op = "ps_roi_pool_backward"
    with on_device(op, grad_y=grad_y, rois=rois):
        N, C, H, W = input_shape
        K = grad_y.shape[0]
        oh, ow = output_size
        dt = grad_y.dtype
        bad = cupy.zeros(1, dtype=np.uint64)
        edges = _pool_edges(rois, N, H, W, output_size, spatial_scale, dt, bad)
        gx = cupy.empty(input_shape, dtype=dt)
        grid, block = grid_for(gx.size)
        launch(STEM, "ps_pool_bwd", dt, grid, block,
               (grad_y, edges, _I(K), _I(N), _I(C), _I(H), _I(W), _I(oh), _I(ow), gx))
        check(bad, op, rois, N)
        return gx
