"""Position-sensitive RoI ops (R-FCN): ps_roi_align, ps_roi_pool -- cpu backend.

Python wrappers around ``_psroi`` (torchvision's rules; convkit/reference/psroi.py states
them).  Each call groups the RoIs by image, tabulates their taps (ps_roi_align) or bin edges
(ps_roi_pool) bin-major, and runs kernels with one task per (image, input channel) plane,
forward and backward, so every thread count gives the same bits.  Threads are OpenMP's.
"""
from __future__ import annotations

import numpy as np

from .._config import get_workspace_limit
from . import _psroi
from .roi import _check_batch, _threads


def _workspace(op, nbytes):
    limit = get_workspace_limit()
    if nbytes > limit:
        raise MemoryError(f"{op}: the RoIs' sample tables need {nbytes} bytes, over the "
                          f"workspace limit of {limit} bytes (convkit.set_workspace_limit); "
                          f"check sampling_ratio and the box sizes")


def _by_image(op, rois, N):
    """(order, rois[order], bstart): the RoIs grouped by image, in their own order within an
    image (a stable sort: backward sums keep RoI order); image n's are [bstart[n],
    bstart[n+1]).  Batch indices are checked here, on the boundary's private copy."""
    b = rois[:, 0]
    ok = (b >= 0) & (b < N) & (b == np.floor(b))
    _check_batch(op, int(np.count_nonzero(~ok)), N)
    batch = b.astype(np.intp)
    order = np.argsort(batch, kind="stable")
    bstart = np.searchsorted(batch[order], np.arange(N + 1)).astype(np.intp)
    return order, np.ascontiguousarray(rois[order]), bstart


def _bin_major(first, start):
    """Per-RoI tap tables (RoI k's bin p at start[k] + first[k, p] .. first[k, p+1]) ->
    (offsets s of length pooled*K + 1 with bin p of RoI k at s[p*K + k] .. s[p*K + k + 1],
    the gather index that reorders the taps that way)."""
    K, pooled = first.shape[0], first.shape[1] - 1
    cnt = np.diff(first, axis=1).T.ravel()                  # (pooled, K) flattened
    s = np.zeros(pooled * K + 1, np.intp)
    np.cumsum(cnt, out=s[1:])
    src = (start[:-1, None] + first[:, :-1]).T.ravel()      # where each block sits now
    idx = np.repeat(src - s[:-1], cnt) + np.arange(int(s[-1]), dtype=np.intp)
    return s, idx


def _align_taps(op, rois, H, W, output_size, spatial_scale, sampling_ratio):
    """Every RoI's bilinear taps along y and x, bin-major (see _psroi.ps_roi_align_forward):
    (sy, sx, yl, yh, wyl, wyh, xl, xh, wxl, wxh, count).  Serial: the tables are ~1% of a
    call, not worth a parallel region."""
    K = rois.shape[0]
    ph, pw = output_size
    dt = rois.dtype
    fy = np.empty((K, ph + 1), np.intp)
    fx = np.empty((K, pw + 1), np.intp)
    ny, nx = np.empty(K, np.intp), np.empty(K, np.intp)
    count = np.empty(K, np.float64)
    scale, sr = float(spatial_scale), int(sampling_ratio)
    _psroi.align_tap_counts(rois, scale, sr, H, W, fy, fx, ny, nx, count, 1)
    oy, ox = np.zeros(K + 1, np.intp), np.zeros(K + 1, np.intp)
    np.cumsum(ny, out=oy[1:])
    np.cumsum(nx, out=ox[1:])
    # the tables, then their bin-major copies and gather indices
    _workspace(op, (int(oy[-1]) + int(ox[-1])) * 2 * (3 * 8 + 2 * dt.itemsize)
               + K * (ph + pw + 8) * 8)
    ty = [np.empty(int(oy[-1]) + 1, t) for t in (np.intp, np.intp, dt, dt)]
    tx = [np.empty(int(ox[-1]) + 1, t) for t in (np.intp, np.intp, dt, dt)]
    if _psroi.align_tap_fill(rois, scale, sr, H, W, fy, fx, oy, ox, *ty, *tx, 1):
        raise RuntimeError(f"{op}: rois changed while the call ran")
    sy, iy = _bin_major(fy, oy)
    sx, ix = _bin_major(fx, ox)
    # (+1: a memoryview of an empty table would have no element 0 to point at)
    ty = [np.append(a[iy], a[:1]) for a in ty]
    tx = [np.append(a[ix], a[:1]) for a in tx]
    return (sy, sx, *ty, *tx, count)


def ps_roi_align_forward(x, rois, output_size, spatial_scale, sampling_ratio):
    N, C, H, W = x.shape
    K = rois.shape[0]
    ph, pw = output_size
    order, r, bstart = _by_image("ps_roi_align_forward", rois, N)
    yt = np.empty((C, K), x.dtype)        # the kernel's layout: one contiguous row per plane
    nt = _threads(yt.size * 4 + x.size)
    taps = _align_taps("ps_roi_align_forward", r, H, W, output_size, spatial_scale,
                       sampling_ratio)
    _psroi.ps_roi_align_forward(x, bstart, *taps, ph, pw, yt, nt)
    y = np.empty((K, C), x.dtype)
    y[order] = yt.T
    return y.reshape(K, C // (ph * pw), ph, pw)


def ps_roi_align_backward(grad_y, rois, input_shape, output_size, spatial_scale,
                          sampling_ratio):
    N, C, H, W = input_shape
    K = grad_y.shape[0]
    ph, pw = output_size
    order, r, bstart = _by_image("ps_roi_align_backward", rois, N)
    gx = np.empty(input_shape, grad_y.dtype)
    nt = _threads(grad_y.size * 4 + gx.size)
    taps = _align_taps("ps_roi_align_backward", r, H, W, output_size, spatial_scale,
                       sampling_ratio)
    gyt = np.ascontiguousarray(grad_y.reshape(K, C)[order].T)
    _psroi.ps_roi_align_backward(gyt, bstart, *taps, ph, pw, gx, nt)
    return gx


def _pool_edges(rois, H, W, output_size, spatial_scale):
    """Every RoI's bin edges, bin-major: hs, he (ph, K); ws, we (pw, K).  Serial (small)."""
    K = rois.shape[0]
    ph, pw = output_size
    edges = [np.empty((K, n), np.intp) for n in (ph, ph, pw, pw)]
    _psroi.ps_pool_edges(rois, float(spatial_scale), H, W, *edges, 1)
    return [np.ascontiguousarray(e.T) for e in edges]


def ps_roi_pool_forward(x, rois, output_size, spatial_scale):
    N, C, H, W = x.shape
    K = rois.shape[0]
    ph, pw = output_size
    order, r, bstart = _by_image("ps_roi_pool_forward", rois, N)
    yt = np.empty((C, K), x.dtype)
    nt = _threads(yt.size * 4 + x.size)
    edges = _pool_edges(r, H, W, output_size, spatial_scale)
    _psroi.ps_roi_pool_forward(x, bstart, *edges, yt, nt)
    y = np.empty((K, C), x.dtype)
    y[order] = yt.T
    return y.reshape(K, C // (ph * pw), ph, pw)


def ps_roi_pool_backward(grad_y, rois, input_shape, output_size, spatial_scale):
    N, C, H, W = input_shape
    K = grad_y.shape[0]
    order, r, bstart = _by_image("ps_roi_pool_backward", rois, N)
    gx = np.empty(input_shape, grad_y.dtype)
    nt = _threads(grad_y.size * 4 + gx.size)
    gyt = np.ascontiguousarray(grad_y.reshape(K, C)[order].T)
    edges = _pool_edges(r, H, W, output_size, spatial_scale)
    _psroi.ps_roi_pool_backward(gyt, bstart, *edges, gx, nt)
    return gx
