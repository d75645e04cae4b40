"""The lecture's other RoI aggregators, numpy reference: roi_avg_pool (roi_pool's quantised
bins, mean) and roi_max_align (roi_align's bilinear samples, max).  Chainer ships them as
roi_average_pooling_2d / roi_max_align_2d; torchvision has neither, so the rules are those of
torchvision's roi_pool / roi_align for the grid (reused from :mod:`convkit.reference.roi`) with
the other aggregator.

Hooks get what the boundary guarantees for every RoI op (:mod:`convkit.backend`): x (N, C, H,
W) and grad_y C-contiguous of one float dtype; rois a private C-contiguous (K, 5) array of that
dtype with finite coordinates and integer batch indices in [0, N) (rows that had a non-finite
coordinate arrive zeroed, and the boundary zeroes their outputs and gradients);
``output_size`` a pair of ints >= 1; ``spatial_scale`` a float > 0; ``sampling_ratio`` an int,
-1 for the adaptive grid (any value <= 0 at the boundary) or 1..46340 (its square, a bin's
samples, at most 2**31); ``aligned`` a bool; ``input_shape`` a 4-tuple; argmax a
C-contiguous array of grad_y's shape and :func:`argmax_dtype` (a private copy on backends
without ``validates_indices``; its range is checked here, per bin); K, N, C, H, W all > 0.

roi_avg_pool: bin (i, j) of a RoI is roi_pool's ``[hstart, hend) x [wstart, wend)`` (corners
scaled and rounded half away from zero, RoI at least 1x1 cell, floor/ceil split, clipped to the
map); y is the sum of its pixels divided by their number, in x's dtype; an empty bin gives 0.
NaN/inf propagate as in any sum.  The backward adds grad / count to every pixel of the bin.

roi_max_align: bin (i, j) has roi_align's gh x gw sample grid (``sampling_ratio`` points per
axis, or ceil(bin size) when adaptive; ``aligned`` as in roi_align); sample (iy, ix) is
``((y0 + i*bin_h) + ((iy + 0.5)*bin_h)/gh, (x0 + j*bin_w) + ((ix + 0.5)*bin_w)/gw)`` and its
value roi_align's bilinear interpolation ``((w1*v1 + w2*v2) + w3*v3) + w4*v4``.  A sample with
y < -1, y > H, x < -1 or x > W is skipped (it neither wins nor counts as 0).  The max over the
remaining samples follows max_pool2d's (torch's) rule: scanned in row-major order, a sample
replaces the best when it is greater or NaN, so ties keep the first sample, a NaN wins over
numbers (the last NaN when there are several) and a bin of -inf reports its first sample.
argmax = iy*gw + ix of the winner; a bin without a valid sample gives 0 and -1.  The backward
adds grad times the winner's four bilinear weights to its four neighbours (as roi_align does
for each sample), nothing for argmax -1.  argmax's dtype follows from the arguments alone
(:func:`argmax_dtype`): int8 when ``sampling_ratio`` is 1..11 (the numbers are then at most
11*11 - 1 = 120), else int32 -- the adaptive grid's size depends on the boxes, and a fixed
grid over 11 points a side needs the width.  int8 is a quarter of int32's bytes: for the
suite's 512 RoIs x 256 channels x 7x7 bins, 6.4 MB written instead of 25.7 MB.  A RoI whose
adaptive grid exceeds 2**30 points on an axis or 2**31 samples per bin (a box over ~46000 x
46000 pixels per output bin) is a ValueError.
"""
from __future__ import annotations

import numpy as np

from .roi import _roi_align_geometry, _roi_pool_bins, _taps

# the most sample points per axis of an adaptive grid, and per bin (gh*gw: the numbers
# iy*gw + ix then fit argmax's int32)
MAX_GRID = 2**30
MAX_SAMPLES = 2**31
# the largest sampling_ratio whose argmax is int8 (its numbers iy*gw + ix reach sr*sr - 1)
INT8_MAX_RATIO = 11


def argmax_dtype(sampling_ratio):
    """roi_max_align's argmax dtype for ``sampling_ratio`` (the rule every backend follows):
    int8 for 1..11, int32 otherwise (the adaptive grid, any value <= 0, or larger grids)."""
    return np.dtype(np.int8 if 1 <= sampling_ratio <= INT8_MAX_RATIO else np.int32)


# ------------------------------------------------------------------------------- roi_avg_pool
def roi_avg_pool_forward(x, rois, output_size, spatial_scale):
    """Mean of x over each of roi_pool's bins -> y (K, C, oh, ow); an empty bin gives 0."""
    N, C, H, W = x.shape
    K = rois.shape[0]
    oh, ow = output_size
    y = np.zeros((K, C, oh, ow), x.dtype)
    hstart, hend, wstart, wend = _roi_pool_bins(rois, output_size, spatial_scale, H, W)
    batch = rois[:, 0].astype(np.int64)
    for k in range(K):
        for i in range(oh):
            h0, h1 = hstart[k, i], hend[k, i]
            for j in range(ow):
                w0, w1 = wstart[k, j], wend[k, j]
                if h1 > h0 and w1 > w0:
                    win = x[batch[k], :, h0:h1, w0:w1]
                    y[k, :, i, j] = win.sum(axis=(1, 2)) / x.dtype.type((h1 - h0) * (w1 - w0))
    return y


def roi_avg_pool_backward(grad_y, rois, input_shape, output_size, spatial_scale):
    """grad / count added to every pixel of each bin, RoIs and bins in order (deterministic)."""
    N, C, H, W = input_shape
    gx = np.zeros(input_shape, grad_y.dtype)
    oh, ow = output_size
    hstart, hend, wstart, wend = _roi_pool_bins(rois, output_size, spatial_scale, H, W)
    batch = rois[:, 0].astype(np.int64)
    for k in range(rois.shape[0]):
        for i in range(oh):
            h0, h1 = hstart[k, i], hend[k, i]
            for j in range(ow):
                w0, w1 = wstart[k, j], wend[k, j]
                if h1 > h0 and w1 > w0:
                    g = grad_y[k, :, i, j] / grad_y.dtype.type((h1 - h0) * (w1 - w0))
                    gx[batch[k], :, h0:h1, w0:w1] += g[:, None, None]
    return gx


# ------------------------------------------------------------------------------ roi_max_align
def _max_align_rois(op, rois, output_size, spatial_scale, sampling_ratio, aligned, H, W):
    """Yield (k, batch index, y taps, x taps, gw) per RoI (taps: reference.roi._taps, whose
    ``lo`` numbers the samples); ValueError for a grid too large to number."""
    oh, ow = output_size
    sh, bh, gh, sw, bw, gw = _roi_align_geometry(rois, output_size, spatial_scale,
                                                 sampling_ratio, aligned)
    batch = rois[:, 0].astype(np.int64)
    for k in range(rois.shape[0]):
        g1, g2 = float(gh[k]), float(gw[k])
        if not (g1 <= MAX_GRID and g2 <= MAX_GRID and g1 * g2 <= MAX_SAMPLES):
            raise ValueError(
                f"{op}: rois[{k}] gets an adaptive sampling grid of {g1:.4g} x {g2:.4g} "
                f"points per bin, over {MAX_GRID} per axis or {MAX_SAMPLES} in all (argmax "
                f"numbers the samples in int32); pass sampling_ratio > 0 or a smaller box")
        yield (k, batch[k], _taps(op, sh[k], bh[k], gh[k], oh, H),
               _taps(op, sw[k], bw[k], gw[k], ow, W), max(int(gw[k]), 0))


def _bin_samples(xb, ty, tx, p, q):
    """The valid samples of bin (p, q) in row-major order: values (C, S) as roi_align's
    bilinear interpolation, the samples' (iy, ix) numbers, and their taps' column indices."""
    jy = np.flatnonzero(ty.valid[p])
    jx = np.flatnonzero(tx.valid[q])
    JY, JX = np.repeat(jy, jx.size), np.tile(jx, jy.size)
    yl, yh, hy, ly = ty.low[p, JY], ty.high[p, JY], ty.w_low[p, JY], ty.w_high[p, JY]
    xl, xh, hx, lx = tx.low[q, JX], tx.high[q, JX], tx.w_low[q, JX], tx.w_high[q, JX]
    with np.errstate(invalid="ignore"):      # 0 * inf is NaN here, as in roi_align
        v = (((hy * hx) * xb[:, yl, xl] + (hy * lx) * xb[:, yl, xh])
             + (ly * hx) * xb[:, yh, xl]) + (ly * lx) * xb[:, yh, xh]
    return v, JY, JX


def roi_max_align_forward(x, rois, output_size, spatial_scale, sampling_ratio, aligned):
    """Max over roi_align's valid bilinear samples -> (y (K, C, oh, ow), argmax of
    :func:`argmax_dtype`)."""
    op = "roi_max_align_forward"
    N, C, H, W = x.shape
    oh, ow = output_size
    K = rois.shape[0]
    y = np.zeros((K, C, oh, ow), x.dtype)
    argmax = np.full((K, C, oh, ow), -1, argmax_dtype(sampling_ratio))
    chans = np.arange(C)
    for k, b, ty, tx, gw in _max_align_rois(op, rois, output_size, spatial_scale,
                                            sampling_ratio, aligned, H, W):
        for p in range(oh):
            for q in range(ow):
                v, JY, JX = _bin_samples(x[b], ty, tx, p, q)
                if v.shape[1] == 0:
                    continue
                nan = np.isnan(v)
                # max_pool2d's scan: the last NaN if any, else the first maximum
                last_nan = v.shape[1] - 1 - np.argmax(nan[:, ::-1], axis=1)
                s = np.where(nan.any(axis=1), last_nan, np.argmax(np.where(nan, 0, v), axis=1))
                y[k, :, p, q] = v[chans, s]
                iy = ty.lo[p].astype(np.int64) + JY[s]
                ix = tx.lo[q].astype(np.int64) + JX[s]
                argmax[k, :, p, q] = iy * gw + ix
    return y, argmax


def roi_max_align_backward(grad_y, argmax, rois, input_shape, output_size, spatial_scale,
                           sampling_ratio, aligned):
    """grad_y times the winning sample's bilinear weights, added to its four neighbours (RoIs,
    bins and channels in order: deterministic).  An argmax that is neither -1 nor a valid
    sample of its bin is a ValueError."""
    op = "roi_max_align_backward"
    N, C, H, W = input_shape
    oh, ow = output_size
    gx = np.zeros(input_shape, grad_y.dtype)
    bad = 0
    for k, b, ty, tx, gw in _max_align_rois(op, rois, output_size, spatial_scale,
                                            sampling_ratio, aligned, H, W):
        for p in range(oh):
            for q in range(ow):
                a = argmax[k, :, p, q]
                c = np.flatnonzero(a != -1)
                if c.size == 0:
                    continue
                a = a[c].astype(np.int64)
                # the tap columns of the samples argmax names; any that is not a valid one is bad
                jy = a // max(gw, 1) - (ty.lo[p].astype(np.int64) if ty.lo is not None else 0)
                jx = a % max(gw, 1) - (tx.lo[q].astype(np.int64) if tx.lo is not None else 0)
                ok = ((a >= 0) & (jy >= 0) & (jy < ty.valid.shape[1])
                      & (jx >= 0) & (jx < tx.valid.shape[1]))
                ok[ok] &= ty.valid[p, jy[ok]] & tx.valid[q, jx[ok]]
                bad += int((~ok).sum())
                c, jy, jx = c[ok], jy[ok], jx[ok]
                g = grad_y[k, c, p, q]
                yl, yh, hy, ly = ty.low[p, jy], ty.high[p, jy], ty.w_low[p, jy], ty.w_high[p, jy]
                xl, xh, hx, lx = tx.low[q, jx], tx.high[q, jx], tx.w_low[q, jx], tx.w_high[q, jx]
                for iy, ix, w in ((yl, xl, hy * hx), (yl, xh, hy * lx), (yh, xl, ly * hx),
                                  (yh, xh, ly * lx)):
                    np.add.at(gx, (b, c, iy, ix), g * w)
    if bad:
        raise ValueError(f"{op}: argmax must be -1 or the number iy*gw + ix of an in-range "
                         f"sample of its bin (as roi_max_align_forward returns for these rois "
                         f"and arguments); {bad} entries are not")
    return gx
