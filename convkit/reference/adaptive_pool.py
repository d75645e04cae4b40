"""Adaptive average and max pooling (torch's bin rule) -- numpy reference.

Semantics are ``torch.nn.functional.adaptive_avg_pool2d`` and
``adaptive_max_pool2d(..., return_indices=True)``.  Output row ``i`` of ``oh`` pools input rows
``[floor(i*H/oh), ceil((i+1)*H/oh))`` (:func:`adaptive_bins`); columns likewise.  Bins tile the
input when ``oh`` divides ``H``; otherwise neighbouring bins overlap by one row, and with
``oh > H`` several bins repeat the same row.  No padding: every bin holds at least one element.

Normalised arguments the hooks receive (besides :mod:`convkit.backend`'s general rules):

* ``out_hw``: ``(oh, ow)``, Python ints >= 1, ``None`` entries of the user's output_size already
  replaced by the input size;
* ``x`` / ``grad_y``: C-contiguous, non-empty (N*C > 0), with ``H, W >= 1``;
  ``input_shape``: a 4-tuple of ints of that kind; ``oh * H`` and ``ow * W`` below 2**62, so
  ``i * H`` never overflows 64 bits;
* ``indices`` (max backward): int64 C-contiguous, checked to lie in ``[0, H*W)`` unless the
  backend declares ``validates_indices``;

Each op loops over the output bins, one vectorised (N, C) slice per bin.
"""
from __future__ import annotations

import numpy as np

from . import pool as _pool   # (a module: its functions must not bind as this module's hooks)


def adaptive_bins(size: int, out: int):
    """(start, end) int64 arrays of length ``out``: bin i covers [start[i], end[i]) of an axis
    of ``size``; torch's rule start = floor(i*size/out), end = ceil((i+1)*size/out)."""
    i = np.arange(out, dtype=np.int64)
    return (i * size) // out, -((-(i + 1) * size) // out)


def _bins2d(shape, out_hw):
    H, W = shape[2], shape[3]
    return adaptive_bins(H, out_hw[0]), adaptive_bins(W, out_hw[1])


def adaptive_avg_pool2d_forward(x, out_hw):
    """Mean of each bin.

    Args:
        x (array[N, C, H, W]); out_hw (oh, ow).

    Returns:
        y (array[N, C, oh, ow]): the bin's sum divided by its element count.  A NaN or inf in a
        bin reaches that bin's output only (inf - inf gives NaN, as in torch).
    """
    N, C = x.shape[:2]
    (hs, he), (ws, we) = _bins2d(x.shape, out_hw)
    y = np.empty((N, C) + tuple(out_hw), x.dtype)
    with np.errstate(invalid="ignore"):     # inf - inf in a bin: NaN, as torch, no warning
        for i in range(out_hw[0]):
            for j in range(out_hw[1]):
                area = x.dtype.type((he[i] - hs[i]) * (we[j] - ws[j]))
                y[:, :, i, j] = x[:, :, hs[i]:he[i], ws[j]:we[j]].sum(axis=(2, 3)) / area
    return y


def adaptive_avg_pool2d_backward(grad_y, input_shape):
    """Gradient of the adaptive mean: each grad_y / area added to every element of its bin.

    Args:
        grad_y (array[N, C, oh, ow]); input_shape (N, C, H, W).

    Returns:
        grad_x (array[N, C, H, W]) of grad_y's dtype; elements in two overlapping bins get both
        shares, added in bin order (deterministic).
    """
    oh, ow = grad_y.shape[2:]
    (hs, he), (ws, we) = _bins2d(input_shape, (oh, ow))
    gx = np.zeros(input_shape, grad_y.dtype)
    for i in range(oh):
        for j in range(ow):
            area = grad_y.dtype.type((he[i] - hs[i]) * (we[j] - ws[j]))
            gx[:, :, hs[i]:he[i], ws[j]:we[j]] += (grad_y[:, :, i, j] / area)[:, :, None, None]
    return gx


def adaptive_max_pool2d_forward(x, out_hw):
    """Maximum of each bin and where it is.

    Args:
        x (array[N, C, H, W]); out_hw (oh, ow).

    Returns:
        y (array[N, C, oh, ow]) and indices (int64, same shape): the flat ``h*W + w`` of the
        chosen element in the input plane (torch's return_indices).

    Choice rule, torch's: scan the bin in row-major order from maxval = -inf at the bin's first
    element, taking an element when ``val > maxval or isnan(val)``.  So a NaN wins (the last
    NaN of the bin when there are several), ties keep the first maximum, and a bin of -inf
    reports its first element.
    """
    N, C, H, W = x.shape
    (hs, he), (ws, we) = _bins2d(x.shape, out_hw)
    y = np.empty((N, C) + tuple(out_hw), x.dtype)
    idx = np.empty((N, C) + tuple(out_hw), np.int64)
    for i in range(out_hw[0]):
        for j in range(out_hw[1]):
            bw = we[j] - ws[j]
            v = x[:, :, hs[i]:he[i], ws[j]:we[j]].reshape(N, C, -1)     # row-major bin order
            nan = np.isnan(v)
            last_nan = v.shape[2] - 1 - np.argmax(nan[:, :, ::-1], axis=2)
            first_max = np.argmax(np.where(nan, -np.inf, v), axis=2)   # first of equal maxima
            k = np.where(nan.any(axis=2), last_nan, first_max)
            y[:, :, i, j] = np.take_along_axis(v, k[:, :, None], axis=2)[:, :, 0]
            idx[:, :, i, j] = (hs[i] + k // bw) * W + ws[j] + k % bw
    return y, idx


def adaptive_max_pool2d_backward(grad_y, indices, input_shape):
    """grad_y added at ``indices`` into an input-shaped zero array: the max-pool backward
    (:func:`convkit.reference.pool.max_pool2d_backward`), whose indices mean the same."""
    return _pool.max_pool2d_backward(grad_y, indices, input_shape)
