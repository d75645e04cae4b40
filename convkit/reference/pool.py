"""Reference (NumPy) max and average pooling, forward and backward.

Semantics are ``torch.nn.functional.max_pool2d(..., return_indices=True)`` and
``torch.nn.functional.avg_pool2d`` (no divisor_override).  Output row ``oh`` reads input rows
``oh*sh - ph + i*dh`` for ``i`` in ``[0, KH)``; columns likewise.  The output size ``out_hw``
comes from :func:`convkit._shapes.pool_out_size` (ceil_mode is folded into it), so with
ceil_mode the last window may run past the bottom/right padding: those positions simply do not
exist (they never win a max and, for the average, torch's divisor rules below decide whether
they count).

Every op pads the plane once, then loops over the KH*KW window offsets; each offset is one
strided slice covering every output pixel at once, so nothing loops per pixel.
"""
from __future__ import annotations

import numpy as np

from .._config import get_workspace_limit


def _padded_extent(size, k, s, p, d, out):
    """Length of the padded axis that windows [0, out) read: from -p to the last window's last
    tap.  Can exceed size + 2p with ceil_mode (the last window overhangs the padding)."""
    return max(size + 2 * p, (out - 1) * s + (k - 1) * d + 1)


def _padded_plane(op, shape, dtype, kernel_size, stride, padding, dilation, out_hw, fill):
    """The (N, C, Hp, Wp) padded copy this reference works on, filled with ``fill``.  It counts
    against the workspace limit like every scratch buffer (a kernel of 2**31-1 asked numpy for
    an array it called "too big", naming no argument; its KH*KW window loop would not end)."""
    N, C, H, W = shape
    Hp = _padded_extent(H, kernel_size[0], stride[0], padding[0], dilation[0], out_hw[0])
    Wp = _padded_extent(W, kernel_size[1], stride[1], padding[1], dilation[1], out_hw[1])
    need, limit = N * C * Hp * Wp * np.dtype(dtype).itemsize, get_workspace_limit()
    if need > limit:
        raise MemoryError(f"{op}: kernel_size={tuple(kernel_size)} with padding="
                          f"{tuple(padding)} needs a padded copy of {need} bytes in the numpy "
                          f"reference, over the workspace limit of {limit} bytes "
                          f"(convkit.set_workspace_limit)")
    return np.full((N, C, Hp, Wp), fill, dtype=dtype)


def _pad(op, x, kernel_size, stride, padding, dilation, out_hw, fill):
    """x (N, C, H, W) -> (N, C, Hp, Wp) filled with ``fill``, x at offset (ph, pw)."""
    N, C, H, W = x.shape
    xpad = _padded_plane(op, x.shape, x.dtype, kernel_size, stride, padding, dilation, out_hw,
                         fill)
    xpad[:, :, padding[0]:padding[0] + H, padding[1]:padding[1] + W] = x
    return xpad


def _tap(i, j, stride, dilation, out_hw):
    """Slices of the padded plane that window offset (i, j) reads for every output pixel."""
    (sh, sw), (dh, dw), (Ho, Wo) = stride, dilation, out_hw
    return (slice(i * dh, i * dh + sh * (Ho - 1) + 1, sh),
            slice(j * dw, j * dw + sw * (Wo - 1) + 1, sw))


# ------------------------------------------------------------------------------------ max pool
def max_pool2d_forward(x, kernel_size, stride, padding, dilation, out_hw, out=None):
    """Max pooling with the position of each maximum.

    Args:
        x (array[N, C, H, W]) float32/float64, C-contiguous.
        kernel_size, stride, padding (ph, pw), dilation: pairs.  out_hw: (Ho, Wo).
        out: optional C-contiguous array[N, C, Ho, Wo] to write y into.

    Returns:
        y (array[N, C, Ho, Wo]) and indices (int64 array[N, C, Ho, Wo]): the flat ``h*W + w``
        of the chosen element in the unpadded plane.

    Choice rule, exactly torch's CPU/CUDA kernels: scan the window's in-image taps in row-major
    order starting from maxval = -inf and index = the first in-image tap; take a tap when
    ``val > maxval or isnan(val)``.  So the first maximum wins on ties, any NaN wins over
    numbers (the last NaN when there are several), and a window of -inf reports its first
    in-image element.  Padding is -inf and therefore never taken (``-inf > -inf`` is false).
    """
    N, C, H, W = x.shape
    Ho, Wo = out_hw
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xpad = _pad("max_pool2d_forward", x, kernel_size, stride, padding, dilation, out_hw,
                -np.inf)

    # window starts in unpadded coordinates, and the first in-image tap of each window
    # (start rounded up to >= 0 in steps of the dilation): the index reported when no tap
    # beats -inf, as torch does
    hs = np.arange(Ho) * sh - ph
    ws = np.arange(Wo) * sw - pw
    h0 = hs + dh * ((np.maximum(-hs, 0) + dh - 1) // dh)
    w0 = ws + dw * ((np.maximum(-ws, 0) + dw - 1) // dw)
    best = np.full((N, C, Ho, Wo), -np.inf, dtype=x.dtype)
    idx = np.empty((N, C, Ho, Wo), dtype=np.int64)
    idx[...] = h0[:, None] * W + w0[None, :]

    for i in range(kernel_size[0]):
        for j in range(kernel_size[1]):
            v = xpad[(slice(None), slice(None)) + _tap(i, j, stride, dilation, out_hw)]
            take = (v > best) | np.isnan(v)
            best = np.where(take, v, best)
            # a padding tap is never taken, so its (out-of-plane) index is never stored
            tap_idx = (hs + i * dh)[:, None] * W + (ws + j * dw)[None, :]
            idx = np.where(take, tap_idx, idx)

    y = out if out is not None else np.empty((N, C, Ho, Wo), dtype=x.dtype)
    y[...] = best
    return y, idx


def max_pool2d_backward(grad_y, indices, input_shape):
    """Gradient of max pooling: grad_y added at ``indices`` into an input-shaped zero array.

    Args:
        grad_y (array[N, C, Ho, Wo]); indices (int64 array[N, C, Ho, Wo]) from the forward,
        each in [0, H*W); input_shape (N, C, H, W).

    Returns:
        grad_x (array[N, C, H, W]) of grad_y's dtype.  Overlapping windows that picked the
        same element add up.  The sums run in float64 (``np.bincount``) in a fixed order, so
        the result is deterministic and, for float32, correctly rounded.
    """
    N, C, H, W = input_shape
    HW = H * W
    # one flat index per output pixel into the whole (N*C*H*W) input, then a histogram sum
    planes = np.arange(N * C, dtype=np.int64).reshape(N, C, 1, 1) * HW
    flat = (indices + planes).ravel()
    gx = np.bincount(flat, weights=grad_y.ravel(), minlength=N * C * HW)
    return gx.astype(grad_y.dtype, copy=False).reshape(input_shape)


# ------------------------------------------------------------------------------------ avg pool
def _avg_divisor(size, k, s, p, out, count_include_pad):
    """Per-axis divisor of each window, torch's rule.

    The window [start, start + k) is first clipped to the padded extent [-p, size + p)
    (with ceil_mode it may overhang that); with count_include_pad that clipped length is the
    divisor, otherwise the window is clipped further to the image [0, size).  The 2-D divisor
    is the product of the two axes' lengths.
    """
    start = np.arange(out) * s - p
    end = np.minimum(start + k, size + p)
    if count_include_pad:
        return end - start
    return np.minimum(end, size) - np.maximum(start, 0)


def avg_pool2d_forward(x, kernel_size, stride, padding, out_hw, count_include_pad, out=None):
    """Average pooling.

    Args:
        x (array[N, C, H, W]); kernel_size, stride, padding (ph, pw): pairs; out_hw (Ho, Wo).
        count_include_pad: whether padding elements count in the divisor (see
        :func:`_avg_divisor`).  out: optional C-contiguous array[N, C, Ho, Wo].

    Returns:
        y (array[N, C, Ho, Wo]): window sum / divisor.  The sum runs in x's dtype, offset by
        offset; padding contributes zeros.
    """
    N, C, H, W = x.shape
    Ho, Wo = out_hw
    xpad = _pad("avg_pool2d_forward", x, kernel_size, stride, padding, (1, 1), out_hw, 0)
    acc = np.zeros((N, C, Ho, Wo), dtype=x.dtype)
    for i in range(kernel_size[0]):
        for j in range(kernel_size[1]):
            acc += xpad[(slice(None), slice(None)) + _tap(i, j, stride, (1, 1), out_hw)]
    div = np.outer(_avg_divisor(H, kernel_size[0], stride[0], padding[0], Ho, count_include_pad),
                   _avg_divisor(W, kernel_size[1], stride[1], padding[1], Wo, count_include_pad))
    y = out if out is not None else np.empty((N, C, Ho, Wo), dtype=x.dtype)
    np.divide(acc, div.astype(x.dtype), out=y)
    return y


def avg_pool2d_backward(grad_y, input_shape, kernel_size, stride, padding, count_include_pad):
    """Gradient of :func:`avg_pool2d_forward`.

    Args:
        grad_y (array[N, C, Ho, Wo]) (its spatial shape is the forward's out_hw);
        input_shape (N, C, H, W); the remaining arguments as in the forward.

    Returns:
        grad_x (array[N, C, H, W]): each output's grad_y / divisor added to every in-image
        element of its window (the share that fell on padding is dropped).
    """
    N, C, H, W = input_shape
    Ho, Wo = grad_y.shape[2:]
    div = np.outer(_avg_divisor(H, kernel_size[0], stride[0], padding[0], Ho, count_include_pad),
                   _avg_divisor(W, kernel_size[1], stride[1], padding[1], Wo, count_include_pad))
    g = grad_y / div.astype(grad_y.dtype)
    gxpad = _padded_plane("avg_pool2d_backward", input_shape, grad_y.dtype, kernel_size, stride,
                          padding, (1, 1), (Ho, Wo), 0)
    for i in range(kernel_size[0]):
        for j in range(kernel_size[1]):
            # positions within one strided slice are distinct, so += is a correct scatter-add
            gxpad[(slice(None), slice(None)) + _tap(i, j, stride, (1, 1), (Ho, Wo))] += g
    ph, pw = padding
    return np.ascontiguousarray(gxpad[:, :, ph:ph + H, pw:pw + W])
