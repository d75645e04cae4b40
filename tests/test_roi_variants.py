"""roi_avg_pool and roi_max_align (the lecture's other two RoI aggregators) on every backend,
against plain scalar-loop oracles written here from the rules (torchvision's roi_pool bins /
roi_align samples, with the other aggregator), plus a cross-check of roi_avg_pool's bins
against the existing roi_pool's, adjoint identities, numerical gradients, error rules, empty
inputs, non-finite RoIs and data, and cpu thread-count bit-identity.
"""
import math

import numpy as np
import pytest

import convkit
from convkit import functional as F
from helpers import (assert_same_bits_at_every_roi_simd_level, check_backward, numeric_grad,
                     run, tol)
from test_roi import SCALES, bilinear_taps, c_round, make_rois, make_x

DTYPES = [np.float32, np.float64]


# --------------------------------------------------------------------------------- oracles
def pool_bins(roi, scale, oh, ow, H, W, dt):
    """roi_pool's bins of one RoI row: lists of (hstart, hend), (wstart, wend)."""
    sw, sh, ew, eh = (c_round(float(dt(roi[i]) * dt(scale))) for i in (1, 2, 3, 4))
    roi_w, roi_h = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
    bin_h, bin_w = dt(roi_h) / dt(oh), dt(roi_w) / dt(ow)
    rows = [(min(max(math.floor(dt(p) * bin_h) + sh, 0), H),
             min(max(math.ceil(dt(p + 1) * bin_h) + sh, 0), H)) for p in range(oh)]
    cols = [(min(max(math.floor(dt(q) * bin_w) + sw, 0), W),
             min(max(math.ceil(dt(q + 1) * bin_w) + sw, 0), W)) for q in range(ow)]
    return rows, cols


def avg_pool_oracle(x, rois, output_size, scale):
    dt = x.dtype.type
    N, C, H, W = x.shape
    oh, ow = output_size
    y = np.zeros((rois.shape[0], C, oh, ow))
    for k in range(rois.shape[0]):
        if not np.isfinite(rois[k, 1:]).all():
            continue
        b = int(rois[k, 0])
        rows, cols = pool_bins(rois[k], scale, oh, ow, H, W, dt)
        for c in range(C):
            for p, (hs, he) in enumerate(rows):
                for q, (ws, we) in enumerate(cols):
                    vals = [float(x[b, c, h, w]) for h in range(hs, he) for w in range(ws, we)]
                    y[k, c, p, q] = sum(vals) / len(vals) if vals else 0.0
    return y


def avg_pool_backward_oracle(g, rois, input_shape, output_size, scale):
    dt = g.dtype.type
    N, C, H, W = input_shape
    oh, ow = output_size
    gx = np.zeros(input_shape)
    for k in range(rois.shape[0]):
        if not np.isfinite(rois[k, 1:]).all():
            continue
        b = int(rois[k, 0])
        rows, cols = pool_bins(rois[k], scale, oh, ow, H, W, dt)
        for c in range(C):
            for p, (hs, he) in enumerate(rows):
                for q, (ws, we) in enumerate(cols):
                    n = (he - hs) * (we - ws)
                    for h in range(hs, he):
                        for w in range(ws, we):
                            gx[b, c, h, w] += float(g[k, c, p, q]) / n
    return gx


def align_grid(roi, scale, oh, ow, sr, aligned, dt):
    """roi_align's geometry of one RoI: start, bin size and grid per axis (y, x)."""
    off = dt(0.5) if aligned else dt(0)
    sw, sh = dt(roi[1]) * dt(scale) - off, dt(roi[2]) * dt(scale) - off
    rw = dt(roi[3]) * dt(scale) - off - sw
    rh = dt(roi[4]) * dt(scale) - off - sh
    if not aligned:
        rw, rh = max(rw, dt(1)), max(rh, dt(1))
    bh, bw = rh / dt(oh), rw / dt(ow)
    gh = sr if sr > 0 else int(math.ceil(rh / dt(oh)))
    gw = sr if sr > 0 else int(math.ceil(rw / dt(ow)))
    return sh, bh, gh, sw, bw, gw


def sample(sh, bh, gh, p, iy, dt):
    return sh + dt(p) * bh + dt(iy + 0.5) * bh / dt(gh)


def max_align_oracle(x, rois, output_size, scale, sr, aligned):
    """One output at a time: every sample of the bin visited in row-major order, out-of-range
    ones skipped, 'greater or NaN' replaces the best (max_pool2d's rule)."""
    dt = x.dtype.type
    N, C, H, W = x.shape
    oh, ow = output_size
    K = rois.shape[0]
    y = np.zeros((K, C, oh, ow), x.dtype)
    am = np.full((K, C, oh, ow), -1, np.int64)
    for k in range(K):
        if not np.isfinite(rois[k, 1:]).all():
            continue
        b = int(rois[k, 0])
        sh, bh, gh, sw, bw, gw = align_grid(rois[k], scale, oh, ow, sr, aligned, dt)
        for c in range(C):
            for p in range(oh):
                for q in range(ow):
                    best, idx = None, -1
                    for iy in range(gh):
                        yy = sample(sh, bh, gh, p, iy, dt)
                        for ix in range(gw):
                            taps = bilinear_taps(yy, sample(sw, bw, gw, q, ix, dt), H, W)
                            if not taps:
                                continue
                            with np.errstate(invalid="ignore"):
                                v = dt(0)
                                for i, (r, s, w) in enumerate(taps):
                                    v = w * x[b, c, r, s] if i == 0 else v + w * x[b, c, r, s]
                            if idx < 0 or v > best or np.isnan(v):
                                best, idx = v, iy * gw + ix
                    if idx >= 0:
                        y[k, c, p, q], am[k, c, p, q] = best, idx
    return y, am


def max_align_backward_oracle(g, am, rois, input_shape, output_size, scale, sr, aligned):
    dt = g.dtype.type
    N, C, H, W = input_shape
    oh, ow = output_size
    gx = np.zeros(input_shape, g.dtype)
    for k in range(rois.shape[0]):
        if not np.isfinite(rois[k, 1:]).all():
            continue
        b = int(rois[k, 0])
        sh, bh, gh, sw, bw, gw = align_grid(rois[k], scale, oh, ow, sr, aligned, dt)
        for c in range(C):
            for p in range(oh):
                for q in range(ow):
                    a = int(am[k, c, p, q])
                    if a < 0:
                        continue
                    yy, xx = sample(sh, bh, gh, p, a // gw, dt), sample(sw, bw, gw, q, a % gw, dt)
                    for r, s, w in bilinear_taps(yy, xx, H, W):
                        gx[b, c, r, s] += g[k, c, p, q] * w
    return gx


def _rand(shape, seed, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


X_SHAPE = (2, 3, 9, 11)


# ---------------------------------------------------------------------------- roi_avg_pool
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("output_size", [(3, 2), (2, 2), (4, 5)])
def test_roi_avg_pool_forward_matches_oracle(backend, dtype, scale, output_size):
    x = _rand(X_SHAPE, 0, dtype)
    rois = make_rois(dtype, scale)
    y = run(backend, F.roi_avg_pool_forward, x, rois, output_size, scale)
    assert y.dtype == dtype and y.shape == (rois.shape[0], 3) + output_size
    np.testing.assert_allclose(y, avg_pool_oracle(x, rois, output_size, scale), **tol(dtype))


@pytest.mark.parametrize("scale", SCALES)
def test_roi_avg_pool_uses_roi_pools_bins(backend, scale):
    """The bins roi_pool picks, read off its argmax on maps whose maximum is a bin's first /
    last pixel, averaged: that is roi_avg_pool's output."""
    N, C, H, W = X_SHAPE
    rois = make_rois(np.float64, scale)
    idx = np.broadcast_to(np.arange(H * W, dtype=np.float64).reshape(H, W), X_SHAPE).copy()
    _, last = run(backend, F.roi_pool_forward, idx, rois, (3, 4), scale)
    _, first = run(backend, F.roi_pool_forward, -idx, rois, (3, 4), scale)
    x = _rand(X_SHAPE, 4)
    want = np.zeros((rois.shape[0], C, 3, 4))
    for k, c, p, q in np.ndindex(*want.shape):
        if first[k, c, p, q] >= 0:
            (h0, w0), (h1, w1) = divmod(first[k, c, p, q], W), divmod(last[k, c, p, q], W)
            want[k, c, p, q] = x[int(rois[k, 0]), c, h0:h1 + 1, w0:w1 + 1].mean()
    y = run(backend, F.roi_avg_pool_forward, x, rois, (3, 4), scale)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
def test_roi_avg_pool_backward_matches_oracle(backend, dtype, scale):
    rois = make_rois(dtype, scale)
    g = _rand((rois.shape[0], 3, 3, 2), 1, dtype)
    gx = run(backend, F.roi_avg_pool_backward, g, rois, X_SHAPE, (3, 2), scale)
    assert gx.dtype == dtype and gx.shape == X_SHAPE
    np.testing.assert_allclose(gx, avg_pool_backward_oracle(g, rois, X_SHAPE, (3, 2), scale),
                               **tol(dtype))


@pytest.mark.parametrize("scale", SCALES)
def test_roi_avg_pool_backward_is_the_adjoint(backend, scale):
    x = _rand(X_SHAPE, 0)
    rois = make_rois(np.float64, scale)
    y = run(backend, F.roi_avg_pool_forward, x, rois, (3, 2), scale)
    g = _rand(y.shape, 1)
    gx = run(backend, F.roi_avg_pool_backward, g, rois, x.shape, (3, 2), scale)
    np.testing.assert_allclose(np.vdot(y, g), np.vdot(x, gx), rtol=1e-12)


def test_roi_avg_pool_numerical_gradient(backend):
    x = _rand((1, 2, 6, 7), 2)
    rois = np.array([[0, 0.4, 1.2, 4.6, 5.3], [0, -2.0, 2.0, 3.0, 9.0]])
    g = _rand((2, 2, 2, 3), 3)
    gx = run(backend, F.roi_avg_pool_backward, g, rois, x.shape, (2, 3), 1.0)
    num = numeric_grad(lambda v: np.vdot(run(backend, F.roi_avg_pool_forward, v, rois, (2, 3),
                                                 1.0), g), x.copy())
    np.testing.assert_allclose(gx, num, rtol=1e-6, atol=1e-8)


def test_roi_avg_pool_nan_and_inf_propagate_only_to_their_bins(backend):
    x = _rand(X_SHAPE, 0)
    x[0, 1, 2, 3] = np.nan
    x[1, 2, 5, 5] = np.inf
    rois = make_rois(np.float64, 1.0)
    y = run(backend, F.roi_avg_pool_forward, x, rois, (3, 2), 1.0)
    want = avg_pool_oracle(x, rois, (3, 2), 1.0)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(want))
    assert np.isnan(y).any() and np.isposinf(y).any()
    fin = np.isfinite(want)
    np.testing.assert_allclose(y[fin], want[fin], rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- roi_max_align
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("sampling_ratio", [-1, 2, 3])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_max_align_forward_matches_oracle(backend, dtype, scale, sampling_ratio, aligned):
    x = make_x(dtype)
    rois = make_rois(dtype, scale)
    y, am = run(backend, F.roi_max_align_forward, x, rois, (3, 2), scale, sampling_ratio,
                aligned)
    y0, am0 = max_align_oracle(x, rois, (3, 2), scale, sampling_ratio, aligned)
    assert y.dtype == dtype and am.dtype == {-1: np.int32, 2: np.int8, 3: np.int8}[sampling_ratio]
    np.testing.assert_array_equal(am, am0)
    np.testing.assert_allclose(y, y0, **tol(dtype))
    assert (am == -1).any() and (am >= 0).any()       # the box set has empty and full bins


def test_roi_max_align_known_values(backend):
    """A 1x1 bin over a 2x2 grid of samples at quarter pixels of a ramp: max is the last one."""
    x = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)     # x[h, w] = 4h + w
    rois = np.array([[0, 0.0, 0.0, 2.0, 2.0]])
    y, am = run(backend, F.roi_max_align_forward, x, rois, 1, 1.0, 2, False)
    # samples at 0.5 and 1.5 on each axis; value 4*1.5 + 1.5 = 7.5 at (iy, ix) = (1, 1)
    assert y[0, 0, 0, 0] == 7.5 and am[0, 0, 0, 0] == 3
    gx = run(backend, F.roi_max_align_backward, np.ones_like(y), am, rois, x.shape, 1, 1.0, 2,
             False)
    want = np.zeros((4, 4))
    want[1:3, 1:3] = 0.25
    np.testing.assert_array_equal(gx[0, 0], want)


def test_roi_max_align_skips_out_of_range_samples(backend):
    """A bin partly beyond y = H + 1 and x < -1: a negative map's max is taken over the
    in-range samples only (an out-of-range sample counted as 0 would win)."""
    x = -1.0 - _rand((1, 1, 5, 5), 0) ** 2
    rois = np.array([[0, -4.0, 2.0, 3.0, 9.0]])
    y, am = run(backend, F.roi_max_align_forward, x, rois, 1, 1.0, 4, False)
    y0, am0 = max_align_oracle(x, rois, (1, 1), 1.0, 4, False)
    assert y[0, 0, 0, 0] < -1 and am[0, 0, 0, 0] == am0[0, 0, 0, 0]
    np.testing.assert_allclose(y, y0, rtol=1e-12)
    # a box entirely beyond the map: no valid sample, 0 and -1
    y, am = run(backend, F.roi_max_align_forward, x, np.array([[0, 9.0, 9.0, 12.0, 12.0]]), 2,
                1.0, 2, False)
    assert not y.any() and (am == -1).all()


def test_roi_max_align_ties_take_the_first_sample(backend):
    """Samples past the last row snap onto it: equal values, the first in row-major order
    wins; a constant map gives sample 0 everywhere."""
    x = np.ones((1, 2, 4, 4))
    y, am = run(backend, F.roi_max_align_forward, x, np.array([[0, 0.3, 0.2, 3.9, 3.9]]), 2,
                1.0, 3, False)
    assert (am == 0).all() and (y == 1).all()
    x = _rand((1, 1, 4, 4), 5)
    rois = np.array([[0, 0.0, 3.1, 3.0, 4.0]])       # all y samples at or past row 3 (snap)
    y, am = run(backend, F.roi_max_align_forward, x, rois, 1, 1.0, 3, True)
    y0, am0 = max_align_oracle(x, rois, (1, 1), 1.0, 3, True)
    assert am[0, 0, 0, 0] == am0[0, 0, 0, 0] < 3       # iy = 0 wins among equal rows
    np.testing.assert_allclose(y, y0, rtol=1e-12)


def test_roi_max_align_nan_wins_like_max_pool(backend):
    """NaN propagates (max_pool2d's 'greater or NaN'): the bin holding it is NaN, with the
    last NaN sample as argmax; other bins are untouched; -inf is a value like any other."""
    x = make_x(np.float64)
    x[0, 1, 2, 3] = np.nan
    x[0, 1, 6, 6] = np.nan
    x[1, 0] = -np.inf
    rois = make_rois(np.float64, 1.0)
    y, am = run(backend, F.roi_max_align_forward, x, rois, (3, 2), 1.0, 2, False)
    y0, am0 = max_align_oracle(x, rois, (3, 2), 1.0, 2, False)
    np.testing.assert_array_equal(am, am0)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(y0))
    assert np.isnan(y).any() and np.isneginf(y).any()
    np.testing.assert_allclose(y, y0, rtol=1e-12)      # assert_allclose treats NaN == NaN


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_max_align_backward_matches_oracle(backend, dtype, scale, sampling_ratio, aligned):
    x = make_x(dtype)
    rois = make_rois(dtype, scale)
    _, am = max_align_oracle(x, rois, (3, 2), scale, sampling_ratio, aligned)
    g = _rand(am.shape, 1, dtype)
    gx = run(backend, F.roi_max_align_backward, g, am, rois, x.shape, (3, 2), scale,
             sampling_ratio, aligned)
    assert gx.dtype == dtype and gx.shape == x.shape
    np.testing.assert_allclose(
        gx, max_align_backward_oracle(g, am, rois, x.shape, (3, 2), scale, sampling_ratio,
                                      aligned), **tol(dtype))


@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_max_align_gradient_and_adjoint(backend, sampling_ratio, aligned):
    """With the winners fixed, y is linear in x: the directional derivative <g, J v> equals
    <J^T g, v>, and the per-element central differences equal grad_x (distinct data, so no
    winner changes under a 1e-6 step)."""
    x = make_x(np.float64, shape=(2, 2, 7, 8))
    rois = make_rois(np.float64, 1.0, H=7, W=8)

    def fwd(v):
        return run(backend, F.roi_max_align_forward, v, rois, (2, 3), 1.0, sampling_ratio,
                   aligned)[0]

    def bwd(g, v):
        am = run(backend, F.roi_max_align_forward, v, rois, (2, 3), 1.0, sampling_ratio,
                 aligned)[1]
        return (run(backend, F.roi_max_align_backward, g, am, rois, v.shape, (2, 3), 1.0,
                    sampling_ratio, aligned),)

    check_backward(fwd, bwd, [x], rtol=1e-6, atol=1e-9)
    g = _rand((rois.shape[0], 2, 2, 3), 7)
    (gx,) = bwd(g, x)
    num = numeric_grad(lambda v: np.vdot(fwd(v), g), x.copy())
    np.testing.assert_allclose(gx, num, rtol=1e-6, atol=1e-8)


def test_roi_max_align_bad_argmax_is_an_error(backend):
    x = make_x(np.float64)
    rois = make_rois(np.float64, 1.0)
    y, am = run(backend, F.roi_max_align_forward, x, rois, 2, 1.0, 2, False)
    assert am.dtype == np.int8
    # a 2x2 grid numbers its samples 0..3: the int8 values the kernels check bin by bin, and
    # wider ones the boundary rejects before narrowing
    for bad in (4, -2, 127, -128, 2**31 - 1, -2**31, 2**62):
        a = am.astype(np.int8 if -128 <= bad < 128 else np.int32 if bad < 2**31 else np.int64)
        a[1, 2, 1, 0] = bad
        with pytest.raises(ValueError, match="argmax"):
            run(backend, F.roi_max_align_backward, y, a, rois, x.shape, 2, 1.0, 2, False)
    # a sample that exists in the grid but lies off the map (the box [20, 25] is outside)
    a = am.copy()
    assert (a[8] == -1).all()
    a[8, 0, 0, 0] = 0
    with pytest.raises(ValueError, match="argmax"):
        run(backend, F.roi_max_align_backward, y, a, rois, x.shape, 2, 1.0, 2, False)


def test_roi_max_align_grid_too_large_to_number(backend):
    x = make_x(np.float64)
    huge = np.array([[0, -1e12, -1e12, 1e12, 1e12]])
    with pytest.raises(ValueError, match=r"rois\[0\].*sampling grid"):
        run(backend, F.roi_max_align_forward, x, huge, 2, 1.0, -1, False)
    with pytest.raises(ValueError, match="sampling_ratio"):
        run(backend, F.roi_max_align_forward, x, huge, 2, 1.0, 2**30 + 1, False)
    # a fixed grid numbers fine: the samples are 1e12 apart, all but none off the map
    y, am = run(backend, F.roi_max_align_forward, x, huge, 2, 1.0, 2, False)
    assert not y.any() and (am == -1).all()
    # argmax is int32: a bin may hold at most 2**31 samples (46341**2 is over, each axis
    # well under 2**30), and sampling_ratio at most 46340
    over = np.array([[0, 0.0, 0.0, 46341.0, 46341.0]])
    with pytest.raises(ValueError, match=r"rois\[0\].*sampling grid"):
        run(backend, F.roi_max_align_forward, x, over, 1, 1.0, -1, False)
    with pytest.raises(ValueError, match="sampling_ratio"):
        run(backend, F.roi_max_align_forward, x, huge, 2, 1.0, 46341, False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_max_align_numbers_near_int32s_limit(backend, dtype):
    # a 46000 x 46000 grid in one bin whose only valid samples are its last rows (RoI 0:
    # numbers near 2**31 - 1) or columns (RoI 1), matching the numpy reference, and taken back
    # by the backward
    x = make_x(dtype)
    rois = np.array([[0, -45990.0, -45990.0, 10.0, 10.0],
                     [1, -45992.0, 2.0, 8.0, 46002.0]], dtype)
    y, am = run(backend, F.roi_max_align_forward, x, rois, 1, 1.0, -1, False)
    y0, am0 = run("numpy", F.roi_max_align_forward, x, rois, 1, 1.0, -1, False)
    assert am.dtype == np.int32
    assert am[0].min() > 2_100_000_000                  # iy near 46000: iy * gw + ix
    assert (am[1] % 46000 >= 45990).all()               # ix near 46000, iy small
    np.testing.assert_array_equal(am, am0)
    np.testing.assert_array_equal(y, y0)
    g = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    gx = run(backend, F.roi_max_align_backward, g, am, rois, x.shape, 1, 1.0, -1, False)
    gx0 = run("numpy", F.roi_max_align_backward, g, am, rois, x.shape, 1, 1.0, -1, False)
    np.testing.assert_allclose(gx, gx0, **tol(dtype))
    assert gx.any()


def test_roi_max_align_backward_takes_other_integer_argmax(backend):
    x = make_x(np.float32)
    rois = make_rois(np.float32, 0.5)
    y, am = run(backend, F.roi_max_align_forward, x, rois, (3, 2), 0.5, 2, False)
    g = np.random.default_rng(2).standard_normal(y.shape).astype(np.float32)
    gx = run(backend, F.roi_max_align_backward, g, am, rois, x.shape, (3, 2), 0.5, 2, False)
    assert am.dtype == np.int8
    for dt in (np.int64, np.int32, np.int16, np.uint64, np.uint8):
        if dt in (np.uint64, np.uint8):   # -1 has no unsigned spelling: bins without a sample
            keep = (am != -1).all(axis=(1, 2, 3))
            a, gg, r = am[keep].astype(dt), g[keep], rois[keep]
            want = run(backend, F.roi_max_align_backward, gg, am[keep], r, x.shape, (3, 2),
                       0.5, 2, False)
        else:
            a, gg, r, want = am.astype(dt), g, rois, gx
        got = run(backend, F.roi_max_align_backward, gg, a, r, x.shape, (3, 2), 0.5, 2, False)
        np.testing.assert_array_equal(got, want)
    # a wider value that would wrap to a valid int8 or int32 number is an error, not that
    # number; so is one past the grid's last sample (3 for 2x2), caught before any kernel
    for bad in (2**32 + int(am.max()), 2**8 + int(am.max()), -2**32 + 1, -2**8 + 1, -2, 4):
        a = am.astype(np.int64)
        a[0, 0, 0, 0] = bad
        with pytest.raises(ValueError, match="argmax"):
            run(backend, F.roi_max_align_backward, g, a, rois, x.shape, (3, 2), 0.5, 2, False)
    a = am.astype(np.uint64)
    a[am == -1] = 0
    a[0, 0, 0, 0] = 2**64 - 1
    with pytest.raises(ValueError, match="argmax"):
        run(backend, F.roi_max_align_backward, g, a, rois, x.shape, (3, 2), 0.5, 2, False)


# argmax's dtype is the arguments' alone: int8 while sampling_ratio**2 - 1 fits it (1..11)
ARGMAX_DTYPES = [(1, np.int8), (2, np.int8), (11, np.int8), (12, np.int32), (0, np.int32),
                 (-1, np.int32)]


@pytest.mark.parametrize("sampling_ratio, want", ARGMAX_DTYPES)
def test_roi_max_align_argmax_dtype_rule(backend, sampling_ratio, want):
    x = make_x(np.float32)
    rois = make_rois(np.float32, 1.0)
    y, am = run(backend, F.roi_max_align_forward, x, rois, (2, 2), 1.0, sampling_ratio, False)
    y0, am0 = max_align_oracle(x, rois, (2, 2), 1.0, sampling_ratio, False)
    assert am.dtype == want
    np.testing.assert_array_equal(am, am0)
    np.testing.assert_allclose(y, y0, **tol(np.float32))
    if sampling_ratio in (11, 12):      # the grid's last sample wins somewhere: 120, 143
        assert am.max() == sampling_ratio**2 - 1
    # no RoI: an empty argmax of the same dtype
    _, am_e = run(backend, F.roi_max_align_forward, x, rois[:0], (2, 2), 1.0, sampling_ratio)
    assert am_e.dtype == want and am_e.shape == (0, 3, 2, 2)
    # the backward takes it back; the same values as int32 give the same bits
    g = _rand(y.shape, 5, np.float32)
    gx = run(backend, F.roi_max_align_backward, g, am, rois, x.shape, (2, 2), 1.0,
             sampling_ratio, False)
    gx32 = run(backend, F.roi_max_align_backward, g, am.astype(np.int32), rois, x.shape,
               (2, 2), 1.0, sampling_ratio, False)
    assert gx.tobytes() == gx32.tobytes()
    gx0 = max_align_backward_oracle(g, am0, rois, x.shape, (2, 2), 1.0, sampling_ratio, False)
    np.testing.assert_allclose(gx, gx0, **tol(np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_max_align_int8_and_int32_argmax_same_bits(backend, dtype):
    """The cpu's table paths (float32), its per-bin paths (float64) and every other backend:
    an int8 argmax and the same values in int32 or int64 give identical gradients, and the
    forward agrees with the numpy reference's dtype and values."""
    x = make_x(dtype, (2, 24, 9, 11), seed=3)
    rois = np.concatenate([make_rois(dtype, 0.5)] * 3)
    y, am = run(backend, F.roi_max_align_forward, x, rois, (3, 4), 0.5, 2, True)
    y0, am0 = run("numpy", F.roi_max_align_forward, x, rois, (3, 4), 0.5, 2, True)
    assert am.dtype == am0.dtype == np.int8
    np.testing.assert_array_equal(am, am0)
    np.testing.assert_array_equal(y, y0)
    g = _rand(y.shape, 9, dtype)
    gx = run(backend, F.roi_max_align_backward, g, am, rois, x.shape, (3, 4), 0.5, 2, True)
    for wide in (np.int32, np.int64):
        gw = run(backend, F.roi_max_align_backward, g, am.astype(wide), rois, x.shape, (3, 4),
                 0.5, 2, True)
        assert gw.tobytes() == gx.tobytes()
    gx0 = max_align_backward_oracle(g, am0, rois, x.shape, (3, 4), 0.5, 2, True)
    np.testing.assert_allclose(gx, gx0, **tol(dtype))
    assert gx.any()


def test_roi_max_align_float_argmax_is_a_type_error(backend):
    x = make_x(np.float32)
    rois = make_rois(np.float32, 1.0)
    y, am = run(backend, F.roi_max_align_forward, x, rois, 2, 1.0, 2, False)
    for bad in (am.astype(np.float32), am.astype(np.float64), am >= 0):
        with pytest.raises(TypeError, match="argmax must be an integer array"):
            run(backend, F.roi_max_align_backward, y, bad, rois, x.shape, 2, 1.0, 2, False)


# ------------------------------------------------------------------------ shared boundary
OPS = {
    "avg": (lambda x, r, **kw: F.roi_avg_pool_forward(x, r, (3, 2), 0.5, **kw),
            lambda g, am, r, shape, **kw: F.roi_avg_pool_backward(g, r, shape, (3, 2), 0.5, **kw)),
    "max_align": (lambda x, r, **kw: F.roi_max_align_forward(x, r, (3, 2), 0.5, -1, True, **kw),
                  lambda g, am, r, shape, **kw: F.roi_max_align_backward(
                      g, am, r, shape, (3, 2), 0.5, -1, True, **kw)),
}


def _outs(y):
    return y if isinstance(y, tuple) else (y, None)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_roi_gives_zeros_and_zero_grad(backend, op, bad):
    fwd, bwd = OPS[op]
    x = make_x(np.float64)
    rois = make_rois(np.float64, 0.5)[:4].copy()
    rois[2, 3] = bad
    y, am = _outs(run(backend, fwd, x, rois))
    assert not y[2].any()
    if am is not None:
        assert (am[2] == -1).all()
    ref, _ = _outs(run("numpy", fwd, x, rois[[0, 1, 3]]))
    np.testing.assert_allclose(y[[0, 1, 3]], ref, rtol=1e-12)
    g = np.zeros_like(y)
    g[2] = 1.0
    if am is not None:
        am = am.copy()
        am[2] = 0            # whatever argmax says, a non-finite RoI gets no gradient
    gx = run(backend, bwd, g, am, rois, x.shape)
    assert not gx.any()


@pytest.mark.parametrize("op", OPS)
def test_empty_rois_and_images(backend, op):
    fwd, bwd = OPS[op]
    x = make_x(np.float32)
    r0 = np.zeros((0, 5), np.float32)
    y, am = _outs(run(backend, fwd, x, r0))
    assert y.shape == (0, 3, 3, 2) and y.dtype == np.float32
    if am is not None:
        assert am.shape == y.shape and am.dtype == np.int32
    gx = run(backend, bwd, y, am, r0, x.shape)
    assert gx.shape == x.shape and not gx.any() and gx.dtype == np.float32
    # channels = 0 with RoIs
    xe = np.zeros((2, 0, 9, 11), np.float32)
    rois = make_rois(np.float32, 0.5)
    y, am = _outs(run(backend, fwd, xe, rois))
    assert y.shape == (rois.shape[0], 0, 3, 2)
    gx = run(backend, bwd, y, am, rois, xe.shape)
    assert gx.shape == xe.shape


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("value", [1.5, -1.0, 2.0, np.nan])
def test_bad_batch_index_names_the_row(backend, op, value):
    fwd, bwd = OPS[op]
    x = make_x(np.float32)
    rois = make_rois(np.float32, 0.5)[:5].copy()
    rois[3, 0] = value
    with pytest.raises(ValueError, match=r"rois\[3, 0\]"):
        run(backend, fwd, x, rois)
    g = np.zeros((5, 3, 3, 2), np.float32)
    with pytest.raises(ValueError, match=r"rois\[3, 0\]"):
        run(backend, bwd, g, np.full(g.shape, -1, np.int64), rois, x.shape)


@pytest.mark.parametrize("op", OPS)
def test_argument_errors(backend, op):
    fwd, bwd = OPS[op]
    x = make_x(np.float32)
    rois = make_rois(np.float32, 0.5)
    with pytest.raises(TypeError, match="rois"):
        run(backend, fwd, x, rois.astype(np.float64))          # mixed dtypes
    with pytest.raises(TypeError, match="x"):
        run(backend, fwd, x.astype(np.int32), rois)
    with pytest.raises(ValueError, match="x must be 4-D"):
        run(backend, fwd, x[0], rois)
    with pytest.raises(ValueError, match=r"rois must have shape \(K, 5\)"):
        run(backend, fwd, x, rois[:, :3])
    g = np.zeros((rois.shape[0], 3, 3, 2), np.float32)
    am = np.full(g.shape, -1, np.int64)
    with pytest.raises(ValueError, match="grad_y must have shape"):
        run(backend, bwd, g[:, :, :2], am[:, :, :2], rois, x.shape)
    with pytest.raises(ValueError, match="grad_y must have shape"):
        run(backend, bwd, g[:-1], am[:-1], rois, x.shape)
    with pytest.raises(TypeError, match="grad_y"):
        run(backend, bwd, g.astype(np.int64), am, rois, x.shape)
    with pytest.raises(ValueError, match="output_size"):
        run(backend, F.roi_avg_pool_forward, x, rois, 0)
    with pytest.raises(ValueError, match="spatial_scale"):
        run(backend, F.roi_max_align_forward, x, rois, 2, -1.0)
    with pytest.raises(TypeError, match="argmax"):
        run(backend, F.roi_max_align_backward, g, am.astype(np.float32), rois, x.shape, (3, 2))
    with pytest.raises(ValueError, match="argmax must have shape"):
        run(backend, F.roi_max_align_backward, g, am[:, :1], rois, x.shape, (3, 2))


def test_rois_as_list_and_k4(backend):
    x = make_x(np.float64)
    rois = make_rois(np.float64, 1.0)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    stacked = np.concatenate([np.c_[np.full(len(b), i), b] for i, b in enumerate(per_image)])
    for fwd in (lambda r, xx: F.roi_avg_pool_forward(xx, r, 2),
                lambda r, xx: F.roi_max_align_forward(xx, r, 2)[0]):
        np.testing.assert_array_equal(run(backend, fwd, per_image, x),
                                      run(backend, fwd, stacked, x))
        np.testing.assert_array_equal(run(backend, fwd, rois[:3, 1:], x[:1]),
                                      run(backend, fwd, np.c_[np.zeros(3), rois[:3, 1:]], x[:1]))


def test_huge_finite_coordinates_are_safe(backend):
    x = make_x(np.float32)
    rois = np.array([[0, 1.0, 1.0, 5.0, 6.0],
                     [1, -1e30, -1e30, 1e30, 1e30],
                     [0, 1e30, 1e30, 2e30, 2e30],
                     [1, -1e30, 2.0, 5.0, 1e30]], np.float32)
    y = run(backend, F.roi_avg_pool_forward, x, rois, 2, 0.5)
    np.testing.assert_allclose(y, avg_pool_oracle(x, rois, (2, 2), 0.5), **tol(np.float32))
    gx = run(backend, F.roi_avg_pool_backward, np.ones_like(y), rois, x.shape, 2, 0.5)
    assert np.isfinite(gx).all()
    for aligned in (False, True):
        y, am = run(backend, F.roi_max_align_forward, x, rois, 2, 0.5, 2, aligned)
        y0, am0 = max_align_oracle(x, rois[:1], (2, 2), 0.5, 2, aligned)
        np.testing.assert_array_equal(am[:1], am0)
        assert np.isfinite(y).all()
        gx = run(backend, F.roi_max_align_backward, np.ones_like(y), am, rois, x.shape, 2, 0.5,
                 2, aligned)
        assert np.isfinite(gx).all()


# ------------------------------------------------------------------------------ cpu threads
@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_thread_count_gives_the_same_bits(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 70, 23, 29)).astype(dtype)
    K = 150
    xy = rng.uniform(-20, 460, (K, 2))
    wh = rng.uniform(8, 300, (K, 2))
    rois = np.c_[rng.integers(0, 3, K), xy, xy + wh].astype(dtype)
    outs = []
    for nt in (1, 2, 3):
        convkit.set_num_threads(nt)
        y = run("cpu", F.roi_avg_pool_forward, x, rois, 7, 1 / 16)
        g = rng.standard_normal(y.shape).astype(dtype) if not outs else outs[0][-1]
        gx = run("cpu", F.roi_avg_pool_backward, g, rois, x.shape, 7, 1 / 16)
        ym, am = run("cpu", F.roi_max_align_forward, x, rois, 7, 1 / 16, 2, False)
        gm = run("cpu", F.roi_max_align_backward, g, am, rois, x.shape, 7, 1 / 16, 2, False)
        # adaptive grids: each RoI numbers its samples with its own grid width
        ya, aa = run("cpu", F.roi_max_align_forward, x, rois, 7, 1 / 16, -1, True)
        ga = run("cpu", F.roi_max_align_backward, g, aa, rois, x.shape, 7, 1 / 16, -1, True)
        outs.append((y, gx, ym, am, gm, ya, aa, ga, g))
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            np.testing.assert_array_equal(a, b)
    want = run("numpy", F.roi_max_align_forward, x, rois, 7, 1 / 16, 2, False)
    np.testing.assert_array_equal(outs[0][3], want[1])
    np.testing.assert_allclose(outs[0][2], want[0], **tol(dtype))


def _max_align_all(x, rois, sr, aligned, gy):
    y, am = run("cpu", F.roi_max_align_forward, x, rois, 7, 1 / 16, sr, aligned)
    gx = run("cpu", F.roi_max_align_backward, gy, am, rois, x.shape, 7, 1 / 16, sr, aligned)
    return [y, am, gx]


def test_cpu_max_align_every_simd_level_gives_the_same_bits():
    """float32 roi_max_align's AVX2 and SSE2 scans and backward lanes (whatever the CPU
    offers) do the scalar arithmetic lane for lane: channel counts below one vector, across
    the forward's 128-channel blocks and with scalar tails, +-inf in the map (so NaN sample
    values, all of one payload) and boxes past the edges agree bit for bit."""
    def outputs():
        res = []
        for C in (3, 37, 150):
            rng = np.random.default_rng(C)
            x = rng.standard_normal((2, C, 13, 17)).astype(np.float32)
            m = rng.random(x.shape)
            x[m < 0.02] = np.inf
            x[m > 0.98] = -np.inf
            x[:, : C // 2] = np.round(x[:, : C // 2])          # ties
            xy = rng.uniform(-60, 250, (24, 2))
            wh = rng.uniform(4, 200, (24, 2))
            rois = np.c_[rng.integers(0, 2, 24), xy, xy + wh].astype(np.float32)
            gy = rng.standard_normal((24, C, 7, 7)).astype(np.float32)
            for sr, aligned in ((2, False), (-1, True), (3, False)):
                res += _max_align_all(x, rois, sr, aligned, gy)
        return res
    assert_same_bits_at_every_roi_simd_level(outputs)


def test_cpu_max_align_nan_map_matches_the_oracle():
    """NaN in the map: the cpu kernels' winners (argmax), gradients and NaN positions are
    the oracle's."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 21, 11, 14)).astype(np.float32)
    x[rng.random(x.shape) < 0.03] = np.nan
    xy = rng.uniform(-40, 200, (20, 2))
    wh = rng.uniform(4, 150, (20, 2))
    rois = np.c_[rng.integers(0, 2, 20), xy, xy + wh].astype(np.float32)
    gy = rng.standard_normal((20, 21, 7, 7)).astype(np.float32)
    for sr, aligned in ((2, False), (-1, True)):
        y, am, gx = _max_align_all(x, rois, sr, aligned, gy)
        y0, am0 = run("numpy", F.roi_max_align_forward, x, rois, 7, 1 / 16, sr, aligned)
        gx0 = run("numpy", F.roi_max_align_backward, gy, am0, rois, x.shape, 7, 1 / 16, sr,
                  aligned)
        np.testing.assert_array_equal(am, am0)
        np.testing.assert_array_equal(y, y0)        # same products and sums; NaN where NaN
        np.testing.assert_allclose(gx, gx0, rtol=1e-5, atol=1e-5)


def test_cpu_max_align_tables_of_every_tap_count_match_the_oracle():
    """The float sample table's fills: 2 x 2 taps a bin unrolled (the forward then scans
    with row and column terms, ck_ma_fwd4pb_*: 198 channels, a 128-channel block in runs
    of such bins, then 70: two 32-channel blocks and a tail), other counts (3 x 3, bins
    cut by the image's edge) bin by bin, and RoIs of over 64 taps on an axis (output 36 x 9
    at sampling_ratio 2: 72 x taps) on the scalar fill; forward and backward give the oracle's argmax and values."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, 198, 23, 29)).astype(np.float32)
    xy = rng.uniform(-80, 400, (16, 2))
    wh = rng.uniform(8, 400, (16, 2))
    rois = np.c_[rng.integers(0, 2, 16), xy, xy + wh].astype(np.float32)
    for out, sr in (((36, 9), 2), ((9, 36), 2), ((7, 7), 2), ((5, 6), 3)):
        gy = rng.standard_normal((16, 198) + out).astype(np.float32)
        y, am = run("cpu", F.roi_max_align_forward, x, rois, out, 1 / 16, sr, False)
        gx = run("cpu", F.roi_max_align_backward, gy, am, rois, x.shape, out, 1 / 16, sr, False)
        y0, am0 = run("numpy", F.roi_max_align_forward, x, rois, out, 1 / 16, sr, False)
        gx0 = run("numpy", F.roi_max_align_backward, gy, am0, rois, x.shape, out, 1 / 16, sr,
                  False)
        np.testing.assert_array_equal(am, am0)
        np.testing.assert_array_equal(y, y0)
        np.testing.assert_allclose(gx, gx0, rtol=1e-5, atol=1e-5)


def test_cpu_max_align_dense_grid_takes_the_per_bin_path():
    """A RoI with more samples than the cpu's per-RoI sample table holds (over 256 per bin
    on average) goes bin by bin in the forward and sends the backward plane by plane; both
    still give the oracle's argmax and values, beside RoIs that use the tables."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((1, 10, 12, 15)).astype(np.float32)
    rois = np.array([[0, 10, 8, 200, 180], [0, 30, 20, 120, 90]], np.float32)
    gy = rng.standard_normal((2, 10, 7, 7)).astype(np.float32)
    y, am, gx = _max_align_all(x, rois, 17, False, gy)       # 289 samples per bin
    y0, am0 = run("numpy", F.roi_max_align_forward, x, rois, 7, 1 / 16, 17, False)
    gx0 = run("numpy", F.roi_max_align_backward, gy, am0, rois, x.shape, 7, 1 / 16, 17, False)
    np.testing.assert_array_equal(am, am0)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_allclose(gx, gx0, rtol=1e-5, atol=1e-5)


def test_cpu_max_align_finite_and_inf_scans_match_the_oracle_bits():
    """The forward's vector scans start at a bin's first sample and keep the finite map's
    best with max (v > b ? v : b): on a finite map of many ties and signed zeros (the max
    scan) and on one with -inf planes (the NaN-aware scan: bins whose samples are all -inf,
    or -inf first), every SIMD level gives the oracle's winners and its values bit for bit
    (-0 and +0 told apart), channels in whole vectors and in the scalar tail."""
    rng = np.random.default_rng(11)
    x = np.round(rng.standard_normal((2, 45, 12, 15)) * 1.5).astype(np.float32)
    x[:, :9] = np.where(rng.random((2, 9, 12, 15)) < 0.5, np.float32(-0.0), np.float32(0.0))
    x[1, 20:30] = -np.inf                       # image 1 not finite: the NaN-aware scan
    x[1, 30:33, :6] = -np.inf                   # bins with -inf first samples, finite later
    xy = rng.uniform(-30, 200, (30, 2))
    wh = rng.uniform(4, 160, (30, 2))
    rois = np.c_[rng.integers(0, 2, 30), xy, xy + wh].astype(np.float32)
    for sr, aligned in ((2, False), (-1, True), (3, False)):
        y0, am0 = run("numpy", F.roi_max_align_forward, x, rois, 7, 1 / 16, sr, aligned)

        def outputs():
            return list(run("cpu", F.roi_max_align_forward, x, rois, 7, 1 / 16, sr, aligned))
        assert_same_bits_at_every_roi_simd_level(outputs)
        y, am = outputs()
        np.testing.assert_array_equal(am, am0)
        assert y.tobytes() == y0.tobytes()
        assert (np.signbit(y) & (y == 0)).any() and np.isneginf(y).any()


def test_cpu_max_align_avx512_runs_of_2x2_bins_match_avx2_and_the_oracle():
    """The forward's runs of 2 x 2 bins (sampling_ratio 2) on AVX-512: the zmm scan for a
    128-channel block, the AVX-512VL ymm scan for the 96-channel block after it (a multiple
    of 32, not of 64); on a finite map (the max scan) and one with +-inf (the NaN-aware scan,
    NaN sample values): the same bits as the AVX2 and SSE2 scans (CONVKIT_DISABLE_AVX512=1
    and set_simd_level(1) turn both off) and the oracle's winners and values."""
    rng = np.random.default_rng(23)
    x = np.round(rng.standard_normal((2, 224, 19, 23)) * 2).astype(np.float32)   # ties
    m = rng.random((224, 19, 23))
    x[1][m < 0.03] = np.inf
    x[1][m > 0.97] = -np.inf
    xy = rng.uniform(-20, 300, (20, 2))
    wh = rng.uniform(20, 200, (20, 2))
    rois = np.c_[rng.integers(0, 2, 20), xy, xy + wh].astype(np.float32)

    def outputs():
        return list(run("cpu", F.roi_max_align_forward, x, rois, 7, 1 / 16, 2, False))
    assert_same_bits_at_every_roi_simd_level(outputs)
    y, am = outputs()
    y0, am0 = run("numpy", F.roi_max_align_forward, x, rois, 7, 1 / 16, 2, False)
    np.testing.assert_array_equal(am, am0)
    assert y.tobytes() == y0.tobytes()
    assert np.isnan(y).any() and np.isposinf(y).any()


def test_cpu_max_align_backward_nonfinite_grad_builds_its_table():
    """The backward's shared tables hold no offsets and weights where the merged (AVX2) path
    runs; a block whose grad is not finite takes the masked path on a table its task builds
    then.  Those blocks, the finite ones beside them and a RoI whose bins cannot be merged
    (sampling_ratio 3: 9 samples a bin) match the oracle's NaN/inf positions and values, and
    agree bit for bit across SIMD levels and thread counts."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 70, 14, 18)).astype(np.float32)
    xy = rng.uniform(-30, 220, (16, 2))
    wh = rng.uniform(4, 180, (16, 2))
    rois = np.c_[rng.integers(0, 2, 16), xy, xy + wh].astype(np.float32)
    gy = rng.standard_normal((16, 70, 7, 7)).astype(np.float32)
    gy[3, 5, 2, 2] = np.inf             # blocks of channels 0-63 and 64-69, two RoIs
    gy[9, 66, 0, 4] = np.nan
    gy[9, 10, 6, 6] = -np.inf
    for sr in (2, 3):
        _, am = run("cpu", F.roi_max_align_forward, x, rois, 7, 1 / 16, sr, False)

        def outputs():
            return [run("cpu", F.roi_max_align_backward, gy, am, rois, x.shape, 7, 1 / 16, sr,
                        False)]
        assert_same_bits_at_every_roi_simd_level(outputs)
        gx = outputs()[0]
        for nt in (1, 3):
            convkit.set_num_threads(nt)
            try:
                assert gx.tobytes() == outputs()[0].tobytes()
            finally:
                convkit.set_num_threads(None)
        gx0 = run("numpy", F.roi_max_align_backward, gy, am, rois, x.shape, 7, 1 / 16, sr,
                  False)
        np.testing.assert_array_equal(np.isnan(gx), np.isnan(gx0))
        np.testing.assert_array_equal(np.isposinf(gx), np.isposinf(gx0))
        assert np.isnan(gx).any() and np.isinf(gx).any()
        fin = np.isfinite(gx0)
        np.testing.assert_allclose(gx[fin], gx0[fin], rtol=1e-5, atol=1e-5)
