"""Adaptive average and max pooling (torch's bin rule) -- cpu backend.

An adaptive bin is a pooling window of its own size: output o pools input positions
[start[o], end[o]) with start = floor(o*size/out), end = ceil((o+1)*size/out).  Written as
``_pool``'s window tables (base = start, first tap 0, stop = end - start, dilation 1) the
backward plane kernels of ``_pool.pyx`` compute it unchanged, one OpenMP task per (n, c) plane
with additions in a fixed order (bit-identical for any thread count, though neighbouring bins
overlap when out does not divide size).  Where the bins tile the plane (and for a 1x1 output)
the average's backward is a fill written in place (``_adaptive_pool.adaptive_avg_backward_tiled``,
``global_avg_backward``): the same bits at store bandwidth.  The max backward up to 16 MB of
gradient is ``_adaptive_pool.adaptive_max_backward`` (the same sums, written in blocks of planes
with plain stores).  The forwards are ``_adaptive_pool.pyx``'s bin reductions (vectorised sums;
a one-load or two-pass maximum with torch's NaN and tie rules).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .._config import get_workspace_limit
from . import _adaptive_pool, _pool
from .pool import _threads


# adaptive_max_pool2d_backward: gradients up to this size are written with plain stores (an
# L3 holds them: 32 MB on the Zen 4 here, 6.4 MB is the suite's 56 -> 7 and took 91 us at one
# thread that way, 230 us streamed), bigger ones streamed to memory by _pool's kernel
_STREAM_ABOVE = 16 << 20


@lru_cache(maxsize=256)
def _bin_table(size, out):
    """(base, first, stop) of ``_pool``'s window tables for the adaptive bins of one axis:
    base = the bin's start, first = 0, stop = its length (the kernels of _adaptive_pool.pyx
    take base and stop as bin starts and lengths); read-only, cached per geometry."""
    o = np.arange(out, dtype=np.intp)
    base = (o * size) // out
    length = -((-(o + 1) * size) // out) - base
    first = np.zeros(out, np.intp)
    for a in (base, first, length):
        a.flags.writeable = False
    return base, first, length


def _tables(op, H, W, oh, ow, dtype):
    """The window tables of both axes and the (oh, ow) bin areas -- scratch that counts
    against the workspace limit (an output_size of 2**31-1 would ask for gigabytes)."""
    need, limit = (oh + ow) * 3 * 8 + oh * ow * np.dtype(dtype).itemsize, get_workspace_limit()
    if need > limit:
        raise MemoryError(f"{op}: output_size ({oh}, {ow}) needs bin tables of {need} bytes, "
                          f"over the workspace limit of {limit} bytes "
                          f"(convkit.set_workspace_limit)")
    return _cached_tables(H, W, oh, ow, dtype)


@lru_cache(maxsize=256)
def _cached_tables(H, W, oh, ow, dtype):
    hb, h0, hl = _bin_table(H, oh)
    wb, w0, wl = _bin_table(W, ow)
    div = np.multiply.outer(hl, wl).astype(dtype)
    div.flags.writeable = False
    return hb, h0, hl, wb, w0, wl, div


@lru_cache(maxsize=256)
def _tiles(H, W, oh, ow):
    """True when the bins tile the plane (each element in exactly one bin: out divides size
    on both axes, or an axis of one bin): the backward then writes each element once."""
    for size, out in ((H, oh), (W, ow)):
        base, _, length = _bin_table(size, out)
        if not (base[1:] == base[:-1] + length[:-1]).all() or base[-1] + length[-1] != size:
            return False
    return True


@lru_cache(maxsize=256)
def _work(H, W, oh, ow):
    """Bin elements read per plane (more than H*W where bins overlap); cached per geometry (two
    NumPy sums were ~3 us of a 1x1 head's call)."""
    return int(_bin_table(H, oh)[2].sum()) * int(_bin_table(W, ow)[2].sum())


def adaptive_avg_pool2d_forward(x, out_hw):
    N, C, H, W = x.shape
    oh, ow = out_hw
    P = N * C
    if (oh, ow) == (1, 1):
        y = np.empty((N, C, 1, 1), x.dtype)
        _adaptive_pool.global_avg_forward(x, y, _threads(P, P * H * W))
        return y
    hb, _, hl, wb, _, wl, div = _tables("adaptive_avg_pool2d_forward", H, W, oh, ow,
                                        np.dtype(x.dtype))
    y = np.empty((N, C, oh, ow), x.dtype)
    _adaptive_pool.adaptive_avg_forward(x.reshape(P, H, W), hb, hl, wb, wl, div,
                                        y.reshape(P, oh, ow), _threads(P, P * _work(H, W, oh, ow)))
    return y


def adaptive_avg_pool2d_backward(grad_y, input_shape):
    N, C, H, W = input_shape
    oh, ow = grad_y.shape[2:]
    P = N * C
    if (oh, ow) == (1, 1):
        gx = np.empty(input_shape, grad_y.dtype)
        _adaptive_pool.global_avg_backward(grad_y, gx, _threads(P, P * H * W))
        return gx
    hb, h0, h1, wb, w0, w1, div = _tables("adaptive_avg_pool2d_backward", H, W, oh, ow,
                                          np.dtype(grad_y.dtype))
    gx = np.empty(input_shape, grad_y.dtype)
    if _tiles(H, W, oh, ow):
        # each element in one bin: a fill of broadcast rows, in place
        _adaptive_pool.adaptive_avg_backward_tiled(grad_y.reshape(P, oh, ow), hb, h1, wb, w1,
                                                   div, gx.reshape(P, H, W),
                                                   _threads(P, P * H * W))
        return gx
    # each thread owns whole planes of gx and adds the bins of a plane in order: overlapping
    # bins cannot race, and the sums come out the same for any thread count
    _pool.avg_pool2d_backward(grad_y.reshape(P, oh, ow), W, hb, h0, h1, wb, w0, w1, div,
                              0, gx.reshape(P, H * W),
                              _threads(P, P * _work(H, W, oh, ow)))
    return gx


def adaptive_max_pool2d_forward(x, out_hw):
    N, C, H, W = x.shape
    oh, ow = out_hw
    P = N * C
    if (oh, ow) == (1, 1) and x.dtype == np.float32:
        y = np.empty((N, C, 1, 1), x.dtype)
        idx = np.empty((N, C, 1, 1), np.int64)
        _adaptive_pool.global_max_forward(x.reshape(P, H * W), y.reshape(P), idx.reshape(P),
                                          _threads(P, P * H * W))
        return y, idx
    hb, _, hl, wb, _, wl, _ = _tables("adaptive_max_pool2d_forward", H, W, oh, ow,
                                      np.dtype(x.dtype))
    y = np.empty((N, C, oh, ow), x.dtype)
    idx = np.empty((N, C, oh, ow), np.int64)
    _adaptive_pool.adaptive_max_forward(x.reshape(P, H, W), hb, hl, wb, wl,
                                        y.reshape(P, oh, ow), idx.reshape(P, oh, ow),
                                        _threads(P, P * _work(H, W, oh, ow)))
    return y, idx


def adaptive_max_pool2d_backward(grad_y, indices, input_shape):
    """The max-pool backward kernel: it reads each index once and range-checks it before use
    (this backend declares ``validates_indices``), so ``indices`` may be the caller's array."""
    N, C, H, W = input_shape
    P, HW = N * C, H * W
    HoWo = grad_y.shape[2] * grad_y.shape[3]
    gx = np.empty(input_shape, grad_y.dtype)
    # a gradient that fits the L3 is written with plain stores in blocks of planes (the reader
    # finds it there); past _STREAM_ABOVE _pool's kernel streams planes to memory
    kernel = (_pool.max_pool2d_backward if P * HW * gx.itemsize > _STREAM_ABOVE
              else _adaptive_pool.adaptive_max_backward)
    bad = kernel(grad_y.reshape(P, HoWo), indices.reshape(P, HoWo), gx.reshape(P, HW),
                 _threads(P, P * (HoWo + HW)))
    if bad:
        mn, mx = int(indices.min()), int(indices.max())
        raise ValueError(f"adaptive_max_pool2d_backward: indices must lie in [0, {HW}) for this "
                         f"input_shape, got values in [{mn}, {mx}]")
    return gx
