"""Max and average pooling on the GPU (torch's window, index and divisor rules; see
``kernels/pool.cu``), plus the deterministic gather-add that the max-pool and RoI-pool
backwards share."""
from __future__ import annotations

import cupy
import numpy as np

from convkit._config import get_deterministic

from ._kernels import grid_for, launch, on_device, read_flag

STEM = "pool"
_I = np.int64


def index_error(op, name, idx, lo, hi) -> ValueError:
    """The boundary's ValueError for ``idx`` having values outside [lo, hi) (error path only:
    it reads the range of idx back to the host)."""
    mn, mx = int(idx.min()), int(idx.max())
    return ValueError(f"{op}: {name} must lie in [{lo}, {hi}) for this input_shape, got "
                      f"values in [{mn}, {mx}]")


def check_flag(bad, op, name, idx, lo, hi):
    """Raise :func:`index_error` when a kernel set the error flag ``bad`` for an index outside
    [lo, hi): one device -> host read of one word."""
    if read_flag(bad):
        raise index_error(op, name, idx, lo, hi)


def gather_add(values, keys, size):
    """Deterministic ``out[keys[j]] += values[j]`` into a zero ``out`` of ``size`` elements.

    values (array[L] float), keys (array[L] int64, -1 = skip).  An inverse index (per output
    element, the j pointing at it: counted, prefix-summed, filled) lets one thread per output
    element sort its few j and add them in increasing j -- same bits every run, the order of a
    serial loop -- without sorting all L keys.
    """
    L = values.size
    if L == 0:
        return cupy.zeros(size, dtype=values.dtype)
    counts = cupy.zeros(size, dtype=np.uint64)
    grid, block = grid_for(L)
    launch(STEM, "csr_count", values.dtype, grid, block, (keys, _I(L), counts))
    ends = cupy.cumsum(counts, dtype=np.uint64)
    cursor = cupy.zeros(size, dtype=np.uint64)
    lst = cupy.empty(L, dtype=np.int64)
    launch(STEM, "csr_fill", values.dtype, grid, block, (keys, _I(L), counts, ends, cursor, lst))
    out = cupy.empty(size, dtype=values.dtype)
    grid, block = grid_for(size)
    launch(STEM, "csr_gather", values.dtype, grid, block,
           (values, counts, ends, _I(size), lst, out))
    return out


def max_pool2d_forward(x, kernel_size, stride, padding, dilation, out_hw, out=None):
    """-> (y, indices int64): flat h*W + w of each maximum in the unpadded plane; padding is
    -inf, a NaN wins, ties keep the first maximum (row-major window order)."""
    with on_device("max_pool2d_forward", x=x, out=out):
        N, C, H, W = x.shape
        Ho, Wo = out_hw
        y = out if out is not None else cupy.empty((N, C, Ho, Wo), dtype=x.dtype)
        idx = cupy.empty((N, C, Ho, Wo), dtype=np.int64)
        grid, block = grid_for(N * C * Ho * Wo)
        launch(STEM, "max_pool2d_fwd", x.dtype, grid, block,
               (x, _I(N * C), _I(H), _I(W), _I(Ho), _I(Wo), _I(kernel_size[0]),
                _I(kernel_size[1]), _I(stride[0]), _I(stride[1]), _I(padding[0]), _I(padding[1]),
                _I(dilation[0]), _I(dilation[1]), y, idx))
        return y, idx


def max_pool2d_backward(grad_y, indices, input_shape):
    """grad_y added at ``indices`` into a zero array of ``input_shape``.

    By default an ``atomicAdd`` scatter: where pooling windows overlap, the order of the
    additions into one input element varies, so results may differ in the last bits from run
    to run.  With ``convkit.set_deterministic(True)`` a gather over an inverse index is used
    instead (same bits every run, the order of a serial loop)."""
    return plane_index_backward("max_pool2d_backward", grad_y, indices, input_shape)


def plane_index_backward(op, grad_y, indices, input_shape):
    """:func:`max_pool2d_backward` for op ``op`` (its errors name it): any backward whose
    ``indices`` are flat positions in the (H, W) input plane, as adaptive max pooling's."""
    with on_device(op, grad_y=grad_y, indices=indices):
        N, C, H, W = input_shape
        NC, HoWo, HW = N * C, grad_y.shape[2] * grad_y.shape[3], H * W
        bad = cupy.zeros(1, dtype=np.uint64)
        grid, block = grid_for(NC * HoWo)
        if get_deterministic():
            keys = cupy.empty(NC * HoWo, dtype=np.int64)
            launch(STEM, "max_pool2d_keys", grad_y.dtype, grid, block,
                   (indices, _I(NC), _I(HoWo), _I(HW), keys, bad))
            check_flag(bad, op, "indices", indices, 0, HW)
            return gather_add(grad_y.ravel(), keys, NC * HW).reshape(input_shape)
        gx = cupy.zeros(input_shape, dtype=grad_y.dtype)
        launch(STEM, "max_pool2d_bwd_atomic", grad_y.dtype, grid, block,
               (grad_y, indices, _I(NC), _I(HoWo), _I(HW), gx, bad))
        check_flag(bad, op, "indices", indices, 0, HW)
        return gx


def avg_pool2d_forward(x, kernel_size, stride, padding, out_hw, count_include_pad, out=None):
    """-> y; divisor as torch (see ``kernels/pool.cu``)."""
    with on_device("avg_pool2d_forward", x=x, out=out):
        N, C, H, W = x.shape
        Ho, Wo = out_hw
        y = out if out is not None else cupy.empty((N, C, Ho, Wo), dtype=x.dtype)
        grid, block = grid_for(N * C * Ho * Wo)
        launch(STEM, "avg_pool2d_fwd", x.dtype, grid, block,
               (x, _I(N * C), _I(H), _I(W), _I(Ho), _I(Wo), _I(kernel_size[0]),
                _I(kernel_size[1]), _I(stride[0]), _I(stride[1]), _I(padding[0]), _I(padding[1]),
                _I(bool(count_include_pad)), y))
        return y


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride, padding, count_include_pad):
    """-> grad_x, by gather over the windows containing each element (deterministic)."""
    with on_device("avg_pool2d_backward", grad_y=grad_y):
        N, C, H, W = input_shape
        Ho, Wo = grad_y.shape[2:]
        gx = cupy.empty(input_shape, dtype=grad_y.dtype)
        grid, block = grid_for(N * C * H * W)
        launch(STEM, "avg_pool2d_bwd", grad_y.dtype, grid, block,
               (grad_y, _I(N * C), _I(H), _I(W), _I(Ho), _I(Wo), _I(kernel_size[0]),
                _I(kernel_size[1]), _I(stride[0]), _I(stride[1]), _I(padding[0]), _I(padding[1]),
                _I(bool(count_include_pad)), gx))
        return gx
