"""Adaptive average and max pooling on the GPU (torch's bin rule; see
``kernels/adaptive_pool.cu``).  The max backward is the max-pool index scatter of
``convkit_cuda.pool`` (same indices: flat positions in the input plane), range-checked on the
device (this backend declares ``validates_indices``)."""
from __future__ import annotations

import cupy
import numpy as np

from ._kernels import MAX_BLOCKS, grid_for, launch, on_device
from .pool import plane_index_backward

STEM = "adaptive_pool"
_I = np.int64
_GLOBAL_BLOCK = 256     # GLOBAL_BLOCK in the .cu: the block of adaptive_avg_pool2d_global_fwd
# From this many elements per plane a 1x1 output takes a block per plane (a parallel sum)
# instead of one thread per plane summing alone.
_GLOBAL_MIN_HW = 256


def adaptive_avg_pool2d_forward(x, out_hw):
    """-> y: each bin's sum divided by its area; a 1x1 output of large planes sums each plane
    with a block (fixed reduction tree: the same bits every run)."""
    with on_device("adaptive_avg_pool2d_forward", x=x):
        N, C, H, W = x.shape
        oh, ow = out_hw
        y = cupy.empty((N, C, oh, ow), dtype=x.dtype)
        if (oh, ow) == (1, 1) and H * W >= _GLOBAL_MIN_HW:
            launch(STEM, "adaptive_avg_pool2d_global_fwd", x.dtype,
                   (min(N * C, MAX_BLOCKS),), (_GLOBAL_BLOCK,), (x, _I(N * C), _I(H * W), y))
            return y
        grid, block = grid_for(N * C * oh * ow)
        launch(STEM, "adaptive_avg_pool2d_fwd", x.dtype, grid, block,
               (x, _I(N * C), _I(H), _I(W), _I(oh), _I(ow), y))
        return y


def adaptive_avg_pool2d_backward(grad_y, input_shape):
    """-> grad_x by gather over the bins holding each element (no atomics: deterministic)."""
    with on_device("adaptive_avg_pool2d_backward", grad_y=grad_y):
        N, C, H, W = input_shape
        oh, ow = grad_y.shape[2:]
        gx = cupy.empty(input_shape, dtype=grad_y.dtype)
        grid, block = grid_for(N * C * H * W)
        launch(STEM, "adaptive_avg_pool2d_bwd", grad_y.dtype, grid, block,
               (grad_y, _I(N * C), _I(H), _I(W), _I(oh), _I(ow), gx))
        return gx


def adaptive_max_pool2d_forward(x, out_hw):
    """-> (y, indices int64): torch's NaN and tie rules (see the kernel)."""
    with on_device("adaptive_max_pool2d_forward", x=x):
        N, C, H, W = x.shape
        oh, ow = out_hw
        y = cupy.empty((N, C, oh, ow), dtype=x.dtype)
        idx = cupy.empty((N, C, oh, ow), dtype=np.int64)
        grid, block = grid_for(N * C * oh * ow)
        launch(STEM, "adaptive_max_pool2d_fwd", x.dtype, grid, block,
               (x, _I(N * C), _I(H), _I(W), _I(oh), _I(ow), y, idx))
        return y, idx


def adaptive_max_pool2d_backward(grad_y, indices, input_shape):
    """grad_y added at ``indices`` into a zero array of ``input_shape``.

    By default an ``atomicAdd`` scatter: where bins overlap and pick the same element, the
    order of the additions into it varies, so results may differ in the last bits from run to
    run.  With ``convkit.set_deterministic(True)`` a gather over an inverse index is used
    instead (same bits every run).  An index outside [0, H*W) raises ValueError."""
    return plane_index_backward("adaptive_max_pool2d_backward", grad_y, indices, input_shape)
