"""The lecture's other RoI aggregators on the GPU: roi_avg_pool (quantised bins, mean) and
roi_max_align (bilinear samples, max), see ``kernels/roi_variants.cu``.

rois arrive unchecked, as for :mod:`convkit_cuda.roi` (``CudaBackend.validates_rois``): the
kernels flag a bad batch index, a bad argmax entry or a grid too large to number, and one read
of the flag after the kernel raises the boundary's error.  Backwards are gathers (no atomics):
the same bits every run.
"""
from __future__ import annotations

import cupy
import numpy as np

from convkit.functional import _check_batch_indices
from convkit.reference.roi_variants import argmax_dtype

from ._kernels import grid_for, launch, on_device, read_flag
from .pool import gather_add
from .roi import _BAD_BATCH, _BAD_INDEX, _sr

STEM = "roi_variants"
_I = np.int64
_BAD_GRID = 4       # BAD_GRID in kernels/roi_variants.cu
# the kernel for argmax's width: int8 (argmax_dtype for sampling_ratio 1..11) or int32
_AM_KERNEL = {1: "roi_max_align_%s_i8", 4: "roi_max_align_%s"}


def _check(bad, op, rois, N, sampling_ratio=-1, aligned=False, output_size=(1, 1),
           spatial_scale=1.0):
    """Raise the boundary's error for the flag bits the kernels set (one read of the flag)."""
    flag = read_flag(bad)
    if flag & _BAD_BATCH:
        _check_batch_indices(op, cupy, rois, N)
    if flag & _BAD_GRID:
        from convkit.reference.roi_variants import _max_align_rois

        r = cupy.asnumpy(rois).copy()     # error path: the reference names the row
        r[~np.isfinite(r[:, 1:]).all(axis=1), 1:] = 0     # those give zeros, not an error
        r[:, 0] = 0
        for _ in _max_align_rois(op, r, output_size, spatial_scale, sampling_ratio, aligned,
                                 1, 1):
            pass
        raise ValueError(f"{op}: a RoI gets an adaptive sampling grid of over 2**30 points per "
                         f"axis or 2**31 per bin (argmax numbers the samples in int32); pass "
                         f"sampling_ratio > 0 or a smaller box")
    if flag & _BAD_INDEX:
        raise ValueError(f"{op}: argmax must be -1 or the number iy*gw + ix of an in-range "
                         f"sample of its bin (as roi_max_align_forward returns for these rois "
                         f"and arguments)")
    if flag:
        raise ValueError(f"{op}: rois has a batch index that is not an integer in [0, {N})")


def roi_avg_pool_forward(x, rois, output_size, spatial_scale):
    with on_device("roi_avg_pool_forward", x=x, rois=rois):
        N, C, H, W = x.shape
        K = rois.shape[0]
        oh, ow = output_size
        y = cupy.empty((K, C, oh, ow), dtype=x.dtype)
        bad = cupy.zeros(1, dtype=np.uint64)
        grid, block = grid_for(K * C * oh * ow)
        launch(STEM, "roi_avg_pool_fwd", x.dtype, grid, block,
               (x, rois, _I(K), _I(N), _I(C), _I(H), _I(W), _I(oh), _I(ow),
                x.dtype.type(spatial_scale), y, bad))
        _check(bad, "roi_avg_pool_forward", rois, N)
        return y


def roi_avg_pool_backward(grad_y, rois, input_shape, output_size, spatial_scale):
    """One thread per element of grad_x adds, in order, grad / count of every bin holding it."""
    with on_device("roi_avg_pool_backward", grad_y=grad_y, rois=rois):
        N, C, H, W = input_shape
        K = rois.shape[0]
        oh, ow = output_size
        dt = grad_y.dtype
        bins = cupy.empty((K, 2 * (oh + ow)), dtype=np.int64)
        batch = cupy.empty(K, dtype=np.int64)
        bad = cupy.zeros(1, dtype=np.uint64)
        grid, block = grid_for(K)
        launch(STEM, "roi_avg_pool_bins", dt, grid, block,
               (rois, _I(K), _I(N), _I(H), _I(W), _I(oh), _I(ow), dt.type(spatial_scale), bins,
                batch, bad))
        _check(bad, "roi_avg_pool_backward", rois, N)
        gx = cupy.empty(input_shape, dtype=dt)
        grid, block = grid_for(gx.size)
        launch(STEM, "roi_avg_pool_bwd_gather", dt, grid, block,
               (grad_y, bins, batch, _I(K), _I(N), _I(C), _I(H), _I(W), _I(oh), _I(ow), gx))
        return gx


def roi_max_align_forward(x, rois, output_size, spatial_scale, sampling_ratio, aligned):
    with on_device("roi_max_align_forward", x=x, rois=rois):
        N, C, H, W = x.shape
        K = rois.shape[0]
        oh, ow = output_size
        y = cupy.empty((K, C, oh, ow), dtype=x.dtype)
        argmax = cupy.empty((K, C, oh, ow), dtype=argmax_dtype(sampling_ratio))
        bad = cupy.zeros(1, dtype=np.uint64)
        grid, block = grid_for(K * C * oh * ow)
        launch(STEM, _AM_KERNEL[argmax.dtype.itemsize] % "fwd", x.dtype, grid, block,
               (x, rois, _I(K), _I(N), _I(C), _I(H), _I(W), _I(oh), _I(ow),
                x.dtype.type(spatial_scale), _sr(sampling_ratio), _I(bool(aligned)), y, argmax,
                bad))
        _check(bad, "roi_max_align_forward", rois, N, sampling_ratio, aligned, output_size,
               spatial_scale)
        return y, argmax


def roi_max_align_backward(grad_y, argmax, rois, input_shape, output_size, spatial_scale,
                           sampling_ratio, aligned):
    """The winning sample's four neighbours and weights as keys and values, then the
    deterministic gather of :func:`convkit_cuda.pool.gather_add` (entries in order: RoIs,
    channels, bins, corners)."""
    with on_device("roi_max_align_backward", grad_y=grad_y, argmax=argmax, rois=rois):
        N, C, H, W = input_shape
        K = rois.shape[0]
        oh, ow = output_size
        dt = grad_y.dtype
        keys = cupy.empty(4 * grad_y.size, dtype=np.int64)
        vals = cupy.empty(4 * grad_y.size, dtype=dt)
        bad = cupy.zeros(1, dtype=np.uint64)
        grid, block = grid_for(grad_y.size)
        launch(STEM, _AM_KERNEL[argmax.dtype.itemsize] % "keys", dt, grid, block,
               (grad_y, argmax, rois, _I(K), _I(N), _I(C), _I(H), _I(W), _I(oh), _I(ow),
                dt.type(spatial_scale), _sr(sampling_ratio), _I(bool(aligned)), keys, vals, bad))
        _check(bad, "roi_max_align_backward", rois, N, sampling_ratio, aligned, output_size,
               spatial_scale)
        return gather_add(vals, keys, N * C * H * W).reshape(input_shape)
