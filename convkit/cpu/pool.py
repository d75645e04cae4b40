"""CPU max / average pooling: Python wrappers around ``_pool`` (torch semantics).

The wrappers turn (kernel, stride, padding, dilation) into per-output window tables once per
call (a few hundred integers), allocate the outputs and pick the thread count; the kernels in
``_pool.pyx`` loop over whole (n, c) planes, one plane per OpenMP task.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from .._config import get_num_threads
from . import _pool

# Below this many window taps (N*C*Ho*Wo*kh*kw) a call runs on one thread.  Measured (2-core
# Xeon, 3x3/s2/p1 max-pool forward on (1, 16, hw, hw), 1 vs 2 threads): 9216 taps 11.8 vs
# 13.0 us, 20736 taps 16.9 vs 17.3 us, 36864 taps 37 vs 18.5 us.
_PARALLEL_MIN_TAPS = 1 << 15


def _threads(planes, work):
    if work < _PARALLEL_MIN_TAPS:
        return 1
    return max(1, min(get_num_threads(), planes))


@lru_cache(maxsize=256)
def _window_table(size, out, k, s, p, d):
    """(base, first, stop) int arrays of length ``out``: window of output o starts at input
    position base[o] = o*s - p; taps first[o] <= i < stop[o] fall inside [0, size).
    Cached per layer geometry (read-only arrays)."""
    base = np.arange(out, dtype=np.intp) * s - p
    first = np.maximum(0, -(base // d))          # ceil(-base / d) for base < 0, else 0
    stop = np.minimum(k, -((base - size) // d))  # ceil((size - base) / d)
    stop = np.maximum(stop, first)
    for a in (base, first, stop):
        a.flags.writeable = False
    return base, first, stop


def max_pool2d_forward(x, kernel_size, stride, padding, dilation, out_hw, out=None):
    N, C, H, W = x.shape
    Ho, Wo = out_hw
    hb, h0, h1 = _window_table(H, Ho, kernel_size[0], stride[0], padding[0], dilation[0])
    wb, w0, w1 = _window_table(W, Wo, kernel_size[1], stride[1], padding[1], dilation[1])
    y = out if out is not None else np.empty((N, C, Ho, Wo), x.dtype)
    idx = np.empty((N, C, Ho, Wo), np.int64)
    P = N * C
    nt = _threads(P, P * Ho * Wo * kernel_size[0] * kernel_size[1])
    kh, kw = kernel_size
    # branch-free path: kernel width 2 or 3, column stride 2, no dilation (the ResNet / VGG
    # pools); it gives exactly the general loop's values and indices
    fast_k = kw if (kw in (2, 3) and stride[1] == 2 and dilation == (1, 1)
                    and kh * W < 2**22) else 0   # tap offsets stay exact in float32
    if (fast_k == 2 and kh == 2 and stride[0] == 2 and padding == (0, 0) and 2 * Ho <= H
            and 2 * Wo <= W and x.dtype == np.float32):
        fast_k = -2     # every window whole: the plane kernel (4x fewer instructions on 8x8)
    _pool.max_pool2d_forward(x.reshape(P, H, W), W, hb, h0, h1, wb, w0, w1,
                             dilation[0], dilation[1], fast_k,
                             y.reshape(P, Ho, Wo), idx.reshape(P, Ho, Wo), nt)
    return y, idx


def max_pool2d_backward(grad_y, indices, input_shape):
    N, C, H, W = input_shape
    P = N * C
    gx = np.empty(input_shape, grad_y.dtype)
    HoWo = grad_y.shape[2] * grad_y.shape[3]
    nt = _threads(P, P * (HoWo + H * W))
    bad = _pool.max_pool2d_backward(grad_y.reshape(P, HoWo), indices.reshape(P, HoWo),
                                    gx.reshape(P, H * W), nt)
    if bad:
        mn, mx = int(indices.min()), int(indices.max())
        raise ValueError(f"max_pool2d_backward: indices must lie in [0, {H * W}) for this "
                         f"input_shape, got values in [{mn}, {mx}]")
    return gx


@lru_cache(maxsize=256)
def _avg_tables(H, W, Ho, Wo, k, s, p, count_include_pad, dtype):
    hb, h0, h1 = _window_table(H, Ho, k[0], s[0], p[0], 1)
    wb, w0, w1 = _window_table(W, Wo, k[1], s[1], p[1], 1)
    if count_include_pad:
        # torch: the window clipped to the padded extent [-p, size + p)
        dh = np.minimum(hb + k[0], H + p[0]) - hb
        dw = np.minimum(wb + k[1], W + p[1]) - wb
    else:
        dh, dw = h1 - h0, w1 - w0
    div = np.multiply.outer(dh, dw).astype(dtype)
    div.flags.writeable = False
    return hb, h0, h1, wb, w0, w1, div


def _whole_plane(H, W, Ho, Wo, kernel_size, padding):
    """The one window is the whole plane (a global average): no tables, one sum per plane."""
    return (Ho, Wo) == (1, 1) and tuple(kernel_size) == (H, W) and tuple(padding) == (0, 0)


def avg_pool2d_forward(x, kernel_size, stride, padding, out_hw, count_include_pad, out=None):
    N, C, H, W = x.shape
    Ho, Wo = out_hw
    if _whole_plane(H, W, Ho, Wo, kernel_size, padding):
        y = out if out is not None else np.empty((N, C, 1, 1), x.dtype)
        P = N * C
        _pool.global_avg_forward(x.reshape(P, H * W), y.reshape(P), _threads(P, P * H * W))
        return y
    hb, h0, h1, wb, w0, w1, div = _avg_tables(H, W, Ho, Wo, kernel_size, stride, padding,
                                              count_include_pad, np.dtype(x.dtype))
    y = out if out is not None else np.empty((N, C, Ho, Wo), x.dtype)
    P = N * C
    nt = _threads(P, P * Ho * Wo * kernel_size[0] * kernel_size[1])
    kw = kernel_size[1]
    fast_k = kw if (kw in (2, 3) and stride[1] == 2) else 0
    _pool.avg_pool2d_forward(x.reshape(P, H, W), W, hb, h0, h1, wb, w0, w1, div, fast_k,
                             y.reshape(P, Ho, Wo), nt)
    return y


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride, padding, count_include_pad):
    N, C, H, W = input_shape
    Ho, Wo = grad_y.shape[2:]
    if _whole_plane(H, W, Ho, Wo, kernel_size, padding):
        gx = np.empty(input_shape, grad_y.dtype)
        P = N * C
        _pool.global_avg_backward(grad_y.reshape(P), gx.reshape(P, H * W), _threads(P, P * H * W))
        return gx
    hb, h0, h1, wb, w0, w1, div = _avg_tables(H, W, Ho, Wo, kernel_size, stride, padding,
                                              count_include_pad, np.dtype(grad_y.dtype))
    gx = np.empty(input_shape, grad_y.dtype)
    P = N * C
    nt = _threads(P, P * Ho * Wo * kernel_size[0] * kernel_size[1])
    kw = kernel_size[1]
    fast_k = kw if (kw in (2, 3) and stride[1] == 2) else 0
    _pool.avg_pool2d_backward(grad_y.reshape(P, Ho, Wo), W, hb, h0, h1, wb, w0, w1, div, fast_k,
                              gx.reshape(P, H * W), nt)
    return gx
