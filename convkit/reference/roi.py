"""Reference (NumPy) RoI pooling and RoI align, forward and backward.

Semantics are torchvision's ``roi_pool`` / ``roi_align`` kernels (``csrc/ops/*/roi_pool_kernel``,
``roi_align_kernel``), restated from their documented rules; the arithmetic on box coordinates is
done in the input dtype, in the kernels' order of operations, so float32 bins and sample points
land where torchvision's do.  What the boundary (:mod:`convkit.functional`) guarantees is listed in
:mod:`convkit.backend`: rois are a C-contiguous (K, 5) array of x's dtype with finite coordinates
and integer batch indices in [0, N), and K, N, C, H, W are all > 0.

RoI pool loops over RoIs and bins and vectorises over channels.  RoI align uses that bilinear
interpolation is separable: every sample's weight is (weight along y) * (weight along x), and
the out-of-range rule (-1 <= y <= H and -1 <= x <= W) is a product too, so a RoI's whole output
is ``A_y @ x[b] @ A_x.T / count`` with ``A_y`` (oh, H) and ``A_x`` (ow, W) holding each bin's summed
1-D sample weights.  Where the data under a RoI hold NaN or inf, a product with a zero weight
would spread them to bins torchvision never touches, so those RoIs take a per-sample path that
reads the four corners of every in-range sample exactly as the kernel does.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .._config import get_workspace_limit

# torchvision starts each non-empty roi_pool bin at -FLT_MAX (for float64 too) and keeps a
# value only when it is strictly greater: NaN never wins, and a bin of values <= -FLT_MAX
# keeps -FLT_MAX with argmax -1.
_ROI_POOL_INIT = -float(np.finfo(np.float32).max)


def _c_round(v):
    """C ``round``: halves away from zero (``np.round`` would round them to even)."""
    t = np.trunc(v)
    return np.where(np.abs(v - t) >= 0.5, t + np.sign(v), t)


def _per_sample(a, count):
    """``a / count`` correctly rounded in a's dtype (done in float64, where a count beyond the
    float32 range -- a RoI ~1e30 wide -- is not an overflowing cast; float64 then float32
    rounding of one division equals the float32 division)."""
    return (a.astype(np.float64, copy=False) / count).astype(a.dtype, copy=False)


def _check_workspace(op, nbytes):
    limit = get_workspace_limit()
    if nbytes > limit:
        raise MemoryError(f"{op}: one RoI needs {nbytes} bytes of workspace, over the limit of "
                          f"{limit} bytes (convkit.set_workspace_limit); check sampling_ratio and "
                          f"the box size")


# ------------------------------------------------------------------------------------ roi pool
def _roi_pool_bins(rois, output_size, spatial_scale, H, W, extra_cell=1):
    """Bin edges of every RoI, torchvision's roi_pool rule, computed in rois.dtype.
    (ps_roi_pool's rule is this one with ``extra_cell=0``: a RoI spans round(x2*s) -
    round(x1*s) cells, not one more.)

    Returns int64 arrays hstart, hend (K, oh) and wstart, wend (K, ow), clipped to [0, H] /
    [0, W].  The clip happens in floating point before the cast, so a huge coordinate
    (1e30) becomes an empty or full bin instead of an overflowing integer.
    """
    dt = rois.dtype.type
    oh, ow = output_size
    scale = dt(spatial_scale)
    edges = []
    # torchvision holds the rounded corners and cell counts in C ints; float64 holds those
    # exactly (up to 2**53) without overflowing.  A float32 coordinate near its max times a
    # scale > 1 overflows to inf: such a bin is clipped like any other (NaN -> empty).
    with np.errstate(over="ignore", invalid="ignore"):
        starts = _c_round(rois[:, 1:3] * scale).astype(np.float64)
        ends = _c_round(rois[:, 3:5] * scale).astype(np.float64)
        sizes = np.maximum(ends - starts + extra_cell, 1)      # a RoI is at least 1x1 cell
        for axis, pooled, limit in ((1, oh, H), (0, ow, W)):   # y is column 1 of starts
            bin_size = sizes[:, axis, None].astype(dt) / dt(pooled)
            p = np.arange(pooled, dtype=dt)
            lo = np.floor(p * bin_size) + starts[:, axis, None]
            hi = np.ceil((p + 1) * bin_size) + starts[:, axis, None]
            edges.append(tuple(np.clip(np.nan_to_num(e, nan=0.0), 0, limit).astype(np.int64)
                               for e in (lo, hi)))
    (hstart, hend), (wstart, wend) = edges
    return hstart, hend, wstart, wend


def roi_pool_forward(x, rois, output_size, spatial_scale, out=None):
    """RoI max pooling.

    x (array[N, C, H, W]); rois (array[K, 5]) ``[batch_index, x1, y1, x2, y2]``.
    Corners are scaled by ``spatial_scale`` and rounded half away from zero; the RoI spans
    ``round(x2*s) - round(x1*s) + 1`` cells (at least 1); bin ``p`` covers
    ``[floor(p*bin), ceil((p+1)*bin))`` from the RoI's start, clipped to the map.
    Returns (y (array[K, C, oh, ow]), argmax (int64, same shape)): the first maximum in
    row-major order (strict ``>``, so NaN is skipped) as a flat ``h*W + w`` index; an empty
    bin gives 0 and -1.
    """
    N, C, H, W = x.shape
    K = rois.shape[0]
    oh, ow = output_size
    dt = x.dtype.type
    y = out if out is not None else np.empty((K, C, oh, ow), x.dtype)
    argmax = np.empty((K, C, oh, ow), np.int64)
    hstart, hend, wstart, wend = _roi_pool_bins(rois, output_size, spatial_scale, H, W)
    batch = rois[:, 0].astype(np.int64)
    init = dt(_ROI_POOL_INIT)
    channels = np.arange(C)
    for k in range(K):
        xb = x[batch[k]]
        for i in range(oh):
            h0, h1 = hstart[k, i], hend[k, i]
            for j in range(ow):
                w0, w1 = wstart[k, j], wend[k, j]
                if h1 <= h0 or w1 <= w0:
                    y[k, :, i, j] = 0
                    argmax[k, :, i, j] = -1
                    continue
                win = xb[:, h0:h1, w0:w1].reshape(C, -1)
                win = np.where(np.isnan(win), -np.inf, win)      # NaN never wins a strict '>'
                a = win.argmax(axis=1)                           # first maximum, row-major
                m = win[channels, a]
                won = m > init
                y[k, :, i, j] = np.where(won, m, init)
                bw = w1 - w0
                argmax[k, :, i, j] = np.where(won, (h0 + a // bw) * W + (w0 + a % bw), -1)
    return y, argmax


def roi_pool_backward(grad_y, rois, argmax, input_shape):
    """grad_y (array[K, C, oh, ow]) added at ``argmax`` (entries -1 skipped) into a zero
    array of ``input_shape``, each RoI into its own batch image (``rois[:, 0]``).
    ``np.add.at`` adds in a fixed order, so the result is the same bits every run."""
    N, C, H, W = input_shape
    gx = np.zeros(N * C * H * W, grad_y.dtype)
    batch = rois[:, 0].astype(np.int64)
    plane = (batch[:, None] * C + np.arange(C)[None, :]) * (H * W)      # (K, C)
    hit = argmax >= 0
    flat = plane[:, :, None, None] + argmax
    np.add.at(gx, flat[hit], grad_y[hit])
    return gx.reshape(input_shape)


# ----------------------------------------------------------------------------------- roi align
class _Taps(NamedTuple):
    """Bilinear taps of one RoI along one axis: arrays (pooled, n), sample i of bin p.

    ``low``/``high`` are the two neighbouring pixel rows (or columns), ``w_low``/``w_high``
    their weights, ``valid`` False for samples outside [-1, size] (and for padding): those
    contribute nothing and read nothing.  ``lo`` (float64, (pooled,)): the sample number of
    column 0 in each bin (column j is sample lo + j; roi_max_align's argmax names samples);
    None when there are no columns.
    """
    low: np.ndarray
    high: np.ndarray
    w_low: np.ndarray
    w_high: np.ndarray
    valid: np.ndarray
    lo: np.ndarray = None


def _roi_align_geometry(rois, output_size, spatial_scale, sampling_ratio, aligned):
    """Per-RoI start, bin size and samples per bin along y and x, in rois.dtype, as
    torchvision computes them.  Arrays (K,): start_h, bin_h, grid_h, start_w, bin_w, grid_w."""
    dt = rois.dtype.type
    oh, ow = output_size
    scale = dt(spatial_scale)
    offset = dt(0.5) if aligned else dt(0)
    out = []
    # float32 coordinates near the type's max can overflow to inf here; _taps treats a
    # non-finite geometry as a RoI without samples
    with np.errstate(over="ignore", invalid="ignore"):
        start = rois[:, 1:3] * scale - offset           # (x1, y1)
        size = (rois[:, 3:5] * scale - offset) - start
        if not aligned:
            size = np.maximum(size, dt(1))              # legacy: force malformed RoIs to 1x1
        for axis, pooled in ((1, oh), (0, ow)):
            bin_size = size[:, axis] / dt(pooled)
            if sampling_ratio > 0:
                grid = np.full_like(bin_size, min(sampling_ratio, 2**62))
            else:   # adaptive: ceil(roi / pooled); 0 (no samples) for an empty aligned RoI
                grid = np.ceil(size[:, axis] / dt(pooled))
            out += [start[:, axis], bin_size, grid]
    return out


def _taps(op, start, bin_size, grid, pooled, size):
    """Sample taps along one axis (see :class:`_Taps`).

    Sample i of bin p sits at ``start + p*bin + (i + 0.5)*bin/grid``, in the dtype of the
    scalars and torchvision's order of operations, for i in [0, grid).  Then
    torchvision's ``bilinear_interpolate``: outside [-1, size] -> no contribution; below 0 ->
    0; at or past the last pixel -> the last pixel; weights ``1 - l`` and ``l`` to the two
    neighbours.

    Only samples within [-1, size] matter, so only the index window that can land there
    is enumerated (found in float64, widened by a margin for the rounding of the dtype's
    positions; the exact test is on those positions).  A RoI far larger than the map thus
    costs O(size) samples, not ~1e29 of them.
    """
    dt = type(start)
    g, s64, b64 = float(grid), float(start), float(bin_size)
    empty = _Taps(*(np.zeros((pooled, 0), t) for t in (np.int64, np.int64, dt, dt, bool)))
    if not (g >= 1 and math.isfinite(g) and math.isfinite(s64) and math.isfinite(b64)):
        return empty       # grid <= 0 (empty aligned RoI) or a geometry that overflowed
    step = b64 / g
    base = s64 + np.arange(pooled) * b64
    err = 8 * float(np.finfo(dt).eps) * (abs(s64) + pooled * abs(b64) + size + 2)
    if step == 0:          # degenerate RoI with a fixed sampling_ratio: all at one point
        lo = np.zeros(pooled)
        count = np.where((base >= -1 - err) & (base <= size + err), g, 0.0)
    else:
        margin = 2 + math.ceil(min(err / abs(step), 2.0**40))
        t1, t2 = (-1 - base) / step - 0.5, (size - base) / step - 0.5
        lo = np.clip(np.floor(np.minimum(t1, t2)) - margin, 0, g)
        hi = np.clip(np.ceil(np.maximum(t1, t2)) + margin, -1, g - 1)
        # at most (size + 1)/|step| + 1 samples fit in [-1, size]; the cap only matters when
        # float64 cannot resolve the window (coordinates ~1e30)
        count = np.clip(hi - lo + 1, 0, math.floor(min((size + 1) / abs(step), 2.0**60)) + 6)
    n = int(count.max())
    if n == 0:
        return empty
    _check_workspace(op, 48 * pooled * n)
    i = lo[:, None] + np.arange(n)
    p = np.arange(pooled, dtype=dt)[:, None]
    with np.errstate(over="ignore", invalid="ignore"):     # inf/NaN positions fail `valid`
        pos = (start + p * bin_size) + ((i.astype(dt) + dt(0.5)) * bin_size) / grid
    valid = (np.arange(n) < count[:, None]) & (pos >= -1) & (pos <= size)
    pos = np.where(valid, np.maximum(pos, dt(0)), dt(0))
    low = np.floor(pos).astype(np.int64)
    last = low >= size - 1
    low = np.where(last, size - 1, low)
    high = np.where(last, size - 1, low + 1)
    pos = np.where(last, low.astype(dt), pos)
    frac = pos - low.astype(dt)
    return _Taps(low, high, np.where(valid, 1 - frac, dt(0)), np.where(valid, frac, dt(0)), valid,
                 lo)


def _span(t: _Taps):
    """[first, last + 1) of the pixels the valid taps touch, or None."""
    if not t.valid.any():
        return None
    return int(t.low[t.valid].min()), int(t.high[t.valid].max()) + 1


def _weight_matrix(t: _Taps, lo, hi):
    """(pooled, hi - lo) matrix: row p = the summed weights of bin p's samples on pixels
    lo..hi-1 (what the bin average multiplies the data by, before / count)."""
    pooled = t.low.shape[0]
    A = np.zeros((pooled, hi - lo), t.w_low.dtype)
    rows = np.broadcast_to(np.arange(pooled)[:, None], t.low.shape)[t.valid]
    np.add.at(A, (rows, t.low[t.valid] - lo), t.w_low[t.valid])
    np.add.at(A, (rows, t.high[t.valid] - lo), t.w_high[t.valid])
    return A


def _corners(ty: _Taps, tx: _Taps, p: int):
    """The four (y-index, x-index, weight) corners of bin row p's samples, in torchvision's
    order (low-low, low-high, high-low, high-high); weights are (ny, ow * nx)."""
    ly, hy, wly, why = ty.low[p], ty.high[p], ty.w_low[p], ty.w_high[p]
    lx, hx = tx.low.reshape(-1), tx.high.reshape(-1)
    wlx, whx = tx.w_low.reshape(-1), tx.w_high.reshape(-1)
    return [(ly, lx, wly[:, None] * wlx), (ly, hx, wly[:, None] * whx),
            (hy, lx, why[:, None] * wlx), (hy, hx, why[:, None] * whx)]


def _align_bins_exact(op, xb, ty: _Taps, tx: _Taps):
    """Sum of the samples of every bin, (C, oh, ow), reading all four corners of each
    in-range sample like the kernel (a NaN on a zero-weight corner still propagates) and
    nothing for out-of-range samples."""
    C = xb.shape[0]
    oh, ny = ty.low.shape
    ow, nx = tx.low.shape
    _check_workspace(op, 3 * C * ny * ow * nx * xb.itemsize)
    res = np.zeros((C, oh, ow), xb.dtype)
    for p in range(oh):
        inside = ty.valid[p][:, None] & tx.valid.reshape(-1)[None, :]
        with np.errstate(invalid="ignore"):     # 0 * inf is NaN here exactly as in the kernel
            val = sum(w * xb[:, iy[:, None], ix[None, :]] for iy, ix, w in _corners(ty, tx, p))
        val = np.where(inside, val, 0)
        res[:, p, :] = val.reshape(C, ny, ow, nx).sum(axis=(1, 3))
    return res


def _align_bins_exact_backward(op, gxb, g, ty: _Taps, tx: _Taps):
    """Adjoint of :func:`_align_bins_exact`: add g (C, oh, ow) times each in-range sample's
    corner weights into gxb (C, H, W), touching nothing for out-of-range samples."""
    C = gxb.shape[0]
    oh, ny = ty.low.shape
    ow, nx = tx.low.shape
    _check_workspace(op, 3 * C * ny * ow * nx * gxb.itemsize)
    for p in range(oh):
        inside = ty.valid[p][:, None] & tx.valid.reshape(-1)[None, :]
        gp = np.repeat(g[:, p, :], nx, axis=1)[:, None, :]               # (C, 1, ow*nx)
        for iy, ix, w in _corners(ty, tx, p):
            with np.errstate(invalid="ignore"):
                contrib = np.where(inside, gp * w, 0)
            np.add.at(gxb, (slice(None), iy[:, None], ix[None, :]), contrib)


def _align_rois(op, rois, output_size, spatial_scale, sampling_ratio, aligned, H, W):
    """Yield (k, batch index, y taps, x taps, count) for every RoI."""
    oh, ow = output_size
    sh, bh, gh, sw, bw, gw = _roi_align_geometry(rois, output_size, spatial_scale,
                                                 sampling_ratio, aligned)
    batch = rois[:, 0].astype(np.int64)
    for k in range(rois.shape[0]):
        ty = _taps(op, sh[k], bh[k], gh[k], oh, H)
        tx = _taps(op, sw[k], bw[k], gw[k], ow, W)
        # count as torchvision: max(grid_h * grid_w, 1), here in float64 so it cannot overflow
        count = max(float(gh[k]) * float(gw[k]), 1.0)
        yield k, batch[k], ty, tx, count


def roi_align_forward(x, rois, output_size, spatial_scale, sampling_ratio, aligned, out=None):
    """RoI align.

    x (array[N, C, H, W]); rois (array[K, 5]) ``[batch_index, x1, y1, x2, y2]``.
    ``aligned``: shift the scaled box by -0.5 pixel (pixel centres) and allow sub-pixel RoIs;
    without it a RoI is at least 1x1.  Each of the oh x ow bins averages bilinear samples on
    a grid of ``sampling_ratio`` (> 0) or ``ceil(roi_size / pooled)`` (<= 0) points per axis
    (``count = max(grid_h * grid_w, 1)``; a grid of 0 gives 0).  Returns array[K, C, oh, ow].
    """
    op = "roi_align_forward"
    N, C, H, W = x.shape
    oh, ow = output_size
    y = out if out is not None else np.empty((rois.shape[0], C, oh, ow), x.dtype)
    image_finite = [bool(np.isfinite(x[b]).all()) for b in range(N)]
    for k, b, ty, tx, count in _align_rois(op, rois, output_size, spatial_scale, sampling_ratio,
                                           aligned, H, W):
        rs, cs = _span(ty), _span(tx)
        if rs is None or cs is None:
            y[k] = 0
            continue
        crop = x[b, :, rs[0]:rs[1], cs[0]:cs[1]]
        if image_finite[b] or np.isfinite(crop).all():
            Ay, Ax = _weight_matrix(ty, *rs), _weight_matrix(tx, *cs)
            y[k] = _per_sample(Ay @ crop @ Ax.T, count)    # (oh,h)@(C,h,w)@(w,ow) -> (C,oh,ow)
        else:
            y[k] = _per_sample(_align_bins_exact(op, x[b], ty, tx), count)
    return y


def roi_align_backward(grad_y, rois, input_shape, output_size, spatial_scale, sampling_ratio,
                       aligned):
    """Gradient of :func:`roi_align_forward`: each bin's grad / count goes to the four
    neighbours of every in-range sample with its bilinear weights (out-of-range samples get
    nothing), summed into array ``input_shape``.  Deterministic (fixed summation order)."""
    op = "roi_align_backward"
    N, C, H, W = input_shape
    gx = np.zeros(input_shape, grad_y.dtype)
    for k, b, ty, tx, count in _align_rois(op, rois, output_size, spatial_scale, sampling_ratio,
                                           aligned, H, W):
        rs, cs = _span(ty), _span(tx)
        if rs is None or cs is None:
            continue
        g = _per_sample(grad_y[k], count)
        if np.isfinite(g).all():
            Ay, Ax = _weight_matrix(ty, *rs), _weight_matrix(tx, *cs)
            gx[b, :, rs[0]:rs[1], cs[0]:cs[1]] += Ay.T @ g @ Ax   # (h,oh)@(C,oh,ow)@(ow,w)
        else:
            _align_bins_exact_backward(op, gx[b], g, ty, tx)
    return gx
