"""RoI pooling and RoI align on the GPU, torchvision semantics (see ``kernels/roi.cu``).

rois arrive as a C-contiguous (K, 5) array of the input's dtype, rows
[batch_index, x1, y1, x2, y2], unchecked (``CudaBackend.validates_rois``): the kernels skip a
row whose batch index is not an integer in [0, N) and flag it, and give a row with a
non-finite coordinate zeros (argmax -1) and no gradient.  :func:`check` reads the flag once,
after the kernel -- so an RoI call makes no device -> host copy before its kernel runs.
"""
from __future__ import annotations

import cupy
import numpy as np

from convkit._config import get_deterministic
from convkit.functional import _check_batch_indices

from ._kernels import grid_for, launch, on_device, read_flag
from .pool import gather_add, index_error

STEM = "roi"
_I = np.int64


def _sr(sampling_ratio):
    """sampling_ratio as the kernel's long long; <= 0 (adaptive) is kept as 0 and absurdly
    large values are capped (the kernel caps the grid at 2**30 points per axis anyway)."""
    return _I(min(max(int(sampling_ratio), 0), 2**31))


# bits of the kernels' error flag (BAD_INDEX, BAD_BATCH in kernels/roi.cu)
_BAD_INDEX, _BAD_BATCH = 1, 2


def check(bad, op, rois, N, argmax=None, HW=0):
    """Raise the boundary's ValueError when the kernel set the error flag ``bad``: a bad batch
    index first (the boundary checks rois before argmax), then an argmax outside [-1, HW).
    One device -> host read of one word; the culprit is only looked for on the error path."""
    flag = read_flag(bad)
    if flag & _BAD_BATCH:
        _check_batch_indices(op, cupy, rois, N)
    if flag & _BAD_INDEX:
        raise index_error(op, "argmax", argmax, -1, HW)
    if flag:     # a row another thread changed between the kernel and the look-up above
        raise ValueError(f"{op}: rois has a batch index that is not an integer in [0, {N})")


def roi_pool_forward(x, rois, output_size, spatial_scale, out=None):
    """-> (y (K,C,oh,ow), argmax int64 (K,C,oh,ow): flat h*W + w, -1 for an empty bin)."""
    with on_device("roi_pool_forward", x=x, rois=rois, out=out):
        N, C, H, W = x.shape
        K = rois.shape[0]
        oh, ow = output_size
        y = out if out is not None else cupy.empty((K, C, oh, ow), dtype=x.dtype)
        argmax = cupy.empty((K, C, oh, ow), dtype=np.int64)
        bad = cupy.zeros(1, dtype=np.uint64)
        grid, block = grid_for(K * C * oh * ow)
        launch(STEM, "roi_pool_fwd", x.dtype, grid, block,
               (x, rois, _I(K), _I(N), _I(C), _I(H), _I(W), _I(oh), _I(ow),
                x.dtype.type(spatial_scale), y, argmax, bad))
        check(bad, "roi_pool_forward", rois, N)
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
        check(bad, "roi_pool_backward", rois, N, argmax, H * W)
        return gather_add(grad_y.ravel(), keys, N * C * H * W).reshape(input_shape)


def roi_align_forward(x, rois, output_size, spatial_scale, sampling_ratio, aligned, out=None):
    """-> y (K,C,oh,ow): each bin the mean of its bilinear samples (torchvision's roi_align)."""
    with on_device("roi_align_forward", x=x, rois=rois, out=out):
        N, C, H, W = x.shape
        K = rois.shape[0]
        oh, ow = output_size
        y = out if out is not None else cupy.empty((K, C, oh, ow), dtype=x.dtype)
        bad = cupy.zeros(1, dtype=np.uint64)
        grid, block = grid_for(K * C * oh * ow)
        launch(STEM, "roi_align_fwd", x.dtype, grid, block,
               (x, rois, _I(K), _I(N), _I(C), _I(H), _I(W), _I(oh), _I(ow),
                x.dtype.type(spatial_scale), _sr(sampling_ratio), _I(bool(aligned)), y, bad))
        check(bad, "roi_align_forward", rois, N)
        return y


def row_tile(H: int) -> int:
    """Rows per bucket of the deterministic roi_align gather's RoI index: at most 32 tiles per
    image, so the index (<= K * tiles entries) stays small and each input element visits only
    the RoIs near its rows."""
    return max(4, -(-H // 32))


def roi_align_backward(grad_y, rois, input_shape, output_size, spatial_scale, sampling_ratio,
                       aligned):
    """-> grad_x of ``input_shape``.

    By default an ``atomicAdd`` scatter (one thread per bin adds to the four neighbours of
    each sample, as torchvision's CUDA kernel does): fast, but where samples share an input
    element the order of the additions varies, so the result may differ in the last bits from
    run to run.  With ``convkit.set_deterministic(True)`` a gather kernel is used instead:
    one thread per input element visits, in order, the RoIs of its image that can reach its
    rows (an index of RoIs per image and row tile, built on the device first) -- same bits
    every run.
    """
    with on_device("roi_align_backward", grad_y=grad_y, rois=rois):
        N, C, H, W = input_shape
        K = grad_y.shape[0]
        oh, ow = output_size
        dt = grad_y.dtype
        scale = dt.type(spatial_scale)
        bad = cupy.zeros(1, dtype=np.uint64)
        if get_deterministic():
            geom = (_I(oh), _I(ow), scale, _sr(sampling_ratio), _I(bool(aligned)))
            tile = row_tile(H)
            ntiles = -(-H // tile)
            ends = cupy.empty(N * ntiles, dtype=np.int64)
            members = cupy.empty(max(K * ntiles, 1), dtype=np.int64)   # a RoI is in <= ntiles
            grid, block = grid_for(N * ntiles)
            for fill in (0, 1):
                launch(STEM, "roi_align_buckets", dt, grid, block,
                       (rois, _I(K), _I(N), _I(H), *geom, _I(tile), _I(ntiles), _I(fill), ends,
                        members))
                if not fill:
                    ends = cupy.cumsum(ends)
            gx = cupy.empty(input_shape, dtype=dt)
            grid, block = grid_for(N * C * H * W)
            launch(STEM, "roi_align_bwd_gather", dt, grid, block,
                   (grad_y, rois, _I(K), _I(N), _I(C), _I(H), _I(W), *geom, _I(tile),
                    _I(ntiles), ends, members, gx, bad))
        else:
            gx = cupy.zeros(input_shape, dtype=dt)
            grid, block = grid_for(K * C * oh * ow)
            launch(STEM, "roi_align_bwd_atomic", dt, grid, block,
                   (grad_y, rois, _I(K), _I(N), _I(C), _I(H), _I(W), _I(oh), _I(ow), scale,
                    _sr(sampling_ratio), _I(bool(aligned)), gx, bad))
        check(bad, "roi_align_backward", rois, N)
        return gx
