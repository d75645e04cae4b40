"""Position-sensitive RoI align / RoI pool (R-FCN) on every backend against plain scalar-loop
oracles written here from torchvision's kernel rules (csrc/ops/*/ps_roi_{align,pool}_kernel),
plus adjoint identities, numerical gradients, the error rules, empty and non-finite inputs and
thread-count bit-identity on cpu.

The rules, as torchvision's kernels state them:

* channel mapping: bin (ph, pw) of output channel c reads input channel (c*oh + ph)*ow + pw;
* ps_roi_align: start = x1*s - 0.5, end = x2*s - 0.5, size = end - start (no minimum), bin =
  size / pooled, grid = sampling_ratio or ceil(size / pooled), sample iy of bin ph at
  ph*bin + start + (iy + 0.5)*bin/grid, roi_align's bilinear rule, sum / (grid_h*grid_w);
  where a grid is empty torchvision divides 0 by 0 -- convkit gives 0 (documented);
* ps_roi_pool: start = round(x1*s) (half away from zero), size = max(round(x2*s) - start, 1),
  bin edges floor(p*bin) + start / ceil((p+1)*bin) + start clipped to [0, H-1] in the
  forward (torchvision's), empty bin 0, else the mean; the backward here is the gradient of
  that forward.
"""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import convkit
from convkit import functional as F
from helpers import check_backward, run, tol
from test_roi import bilinear, bilinear_taps, c_round, make_rois

DTYPES = [np.float32, np.float64]
SCALES = [1.0, 1 / 16, 0.5]


# --------------------------------------------------------------------------------- oracles
def _align_geometry(roi, scale, oh, ow, sampling_ratio, dt):
    """(start_h, start_w, bin_h, bin_w, grid_h, grid_w) of one RoI, in dtype dt."""
    sw, sh = dt(roi[1]) * dt(scale) - dt(0.5), dt(roi[2]) * dt(scale) - dt(0.5)
    ew, eh = dt(roi[3]) * dt(scale) - dt(0.5), dt(roi[4]) * dt(scale) - dt(0.5)
    rw, rh = ew - sw, eh - sh
    gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rh / dt(oh)))
    gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rw / dt(ow)))
    return sh, sw, rh / dt(oh), rw / dt(ow), gh, gw


def _align_samples(rois, x_shape, output_size, scale, sampling_ratio, dt):
    """(k, image, c, c_in, ph, pw, y, x, count) of every sample of every bin, in
    torchvision's loop order; a RoI with a non-finite coordinate or an empty grid has none."""
    N, C, H, W = x_shape
    oh, ow = output_size
    for k in range(rois.shape[0]):
        if not np.isfinite(rois[k, 1:]).all():
            continue
        b = int(rois[k, 0])
        sh, sw, bh, bw, gh, gw = _align_geometry(rois[k], scale, oh, ow, sampling_ratio, dt)
        for c in range(C // (oh * ow)):
            for ph in range(oh):
                for pw in range(ow):
                    for iy in range(gh):
                        yy = dt(ph) * bh + sh + dt(iy + 0.5) * bh / dt(gh)
                        for ix in range(gw):
                            xx = dt(pw) * bw + sw + dt(ix + 0.5) * bw / dt(gw)
                            yield k, b, c, (c * oh + ph) * ow + pw, ph, pw, yy, xx, dt(gh * gw)


def ps_roi_align_oracle(x, rois, output_size, scale, sampling_ratio):
    """Each bin's samples summed in order, then divided by grid_h * grid_w once; a bin
    without samples stays 0 (torchvision: 0/0)."""
    dt = x.dtype.type
    oh, ow = output_size
    sums = np.zeros((rois.shape[0], x.shape[1] // (oh * ow), oh, ow), x.dtype)
    count = np.ones(rois.shape[0], x.dtype)
    for k, b, c, c_in, ph, pw, yy, xx, n in _align_samples(rois, x.shape, output_size, scale,
                                                           sampling_ratio, dt):
        sums[k, c, ph, pw] = sums[k, c, ph, pw] + bilinear(x[b, c_in], yy, xx)
        count[k] = n
    return sums / count[:, None, None, None]


def ps_roi_align_backward_oracle(g, rois, input_shape, output_size, scale, sampling_ratio):
    dt = g.dtype.type
    N, C, H, W = input_shape
    gx = np.zeros(input_shape, g.dtype)
    for k, b, c, c_in, ph, pw, yy, xx, n in _align_samples(rois, input_shape, output_size,
                                                           scale, sampling_ratio, dt):
        for r, q, w in bilinear_taps(yy, xx, H, W):
            with np.errstate(invalid="ignore"):
                gx[b, c_in, r, q] += g[k, c, ph, pw] * w / n
    return gx


def _pool_bin(p, bin_size, start, limit, dt):
    """[lo, hi) of bin p along one axis, clipped to [0, limit - 1] (torchvision's forward)."""
    lo = min(max(math.floor(dt(p) * bin_size) + start, 0), limit - 1)
    hi = min(max(math.ceil(dt(p + 1) * bin_size) + start, 0), limit - 1)
    return lo, hi


def _pool_geometry(roi, scale, oh, ow, dt):
    sw, sh, ew, eh = (c_round(float(dt(roi[i]) * dt(scale))) for i in (1, 2, 3, 4))
    roi_w, roi_h = max(ew - sw, 1), max(eh - sh, 1)
    return sh, sw, dt(roi_h) / dt(oh), dt(roi_w) / dt(ow)


def _pool_bins(rois, x_shape, output_size, scale, dt):
    """(k, image, c, c_in, ph, pw, hs, he, ws, we) of every non-empty bin."""
    N, C, H, W = x_shape
    oh, ow = output_size
    for k in range(rois.shape[0]):
        if not np.isfinite(rois[k, 1:]).all():
            continue
        sh, sw, bh, bw = _pool_geometry(rois[k], scale, oh, ow, dt)
        for c in range(C // (oh * ow)):
            for ph in range(oh):
                hs, he = _pool_bin(ph, bh, sh, H, dt)
                for pw in range(ow):
                    ws, we = _pool_bin(pw, bw, sw, W, dt)
                    if he > hs and we > ws:
                        c_in = (c * oh + ph) * ow + pw
                        yield k, int(rois[k, 0]), c, c_in, ph, pw, hs, he, ws, we


def ps_roi_pool_oracle(x, rois, output_size, scale):
    dt = x.dtype.type
    oh, ow = output_size
    y = np.zeros((rois.shape[0], x.shape[1] // (oh * ow), oh, ow), x.dtype)
    for k, b, c, c_in, ph, pw, hs, he, ws, we in _pool_bins(rois, x.shape, output_size, scale,
                                                            dt):
        acc = dt(0)
        for h in range(hs, he):
            for w in range(ws, we):
                acc = acc + x[b, c_in, h, w]
        y[k, c, ph, pw] = acc / dt((he - hs) * (we - ws))
    return y


def ps_roi_pool_backward_oracle(g, rois, input_shape, output_size, scale):
    dt = g.dtype.type
    gx = np.zeros(input_shape, g.dtype)
    for k, b, c, c_in, ph, pw, hs, he, ws, we in _pool_bins(rois, input_shape, output_size,
                                                            scale, dt):
        diff = g[k, c, ph, pw] / dt((he - hs) * (we - ws))
        for h in range(hs, he):
            for w in range(ws, we):
                gx[b, c_in, h, w] += diff
    return gx


# ------------------------------------------------------------------------------------ data
def make_x(dtype, co, output_size, N=2, H=9, W=11, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, co * output_size[0] * output_size[1], H, W)).astype(dtype)


def _rand(shape, seed, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def random_rois(dtype, K, N=2, H=9, W=11, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-2, [W, H], (K, 2))
    wh = rng.uniform(0.3, 9, (K, 2))
    return np.concatenate([rng.integers(0, N, (K, 1)), xy, xy + wh], axis=1).astype(dtype)


OUTPUT_SIZES = [(2, 2), (3, 2), (1, 4)]


# ---------------------------------------------------------------------- forward vs oracle
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("output_size", OUTPUT_SIZES)
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_ps_roi_align_forward_matches_oracle(backend, dtype, scale, output_size, sampling_ratio):
    x = make_x(dtype, 2, output_size)
    rois = make_rois(dtype, scale)
    y = run(backend, F.ps_roi_align_forward, x, rois, output_size, scale, sampling_ratio)
    want = ps_roi_align_oracle(x, rois, output_size, scale, sampling_ratio)
    assert y.shape == (len(rois), 2) + output_size and y.dtype == dtype
    np.testing.assert_allclose(y, want, **tol(dtype))
    assert np.abs(y).sum() > 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("output_size", OUTPUT_SIZES)
def test_ps_roi_pool_forward_matches_oracle(backend, dtype, scale, output_size):
    x = make_x(dtype, 2, output_size)
    rois = make_rois(dtype, scale)
    y = run(backend, F.ps_roi_pool_forward, x, rois, output_size, scale)
    want = ps_roi_pool_oracle(x, rois, output_size, scale)
    assert y.shape == (len(rois), 2) + output_size and y.dtype == dtype
    np.testing.assert_allclose(y, want, **tol(dtype))
    assert np.abs(y).sum() > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_rois_match_the_oracles(backend, dtype):
    x = make_x(dtype, 3, (3, 3), H=10, W=12, seed=4)
    rois = random_rois(dtype, 20, H=10, W=12, seed=5)
    for sr in (-1, 1, 3):
        np.testing.assert_allclose(run(backend, F.ps_roi_align_forward, x, rois, 3, 1.0, sr),
                                   ps_roi_align_oracle(x, rois, (3, 3), 1.0, sr), **tol(dtype))
    np.testing.assert_allclose(run(backend, F.ps_roi_pool_forward, x, rois, 3, 1.0),
                               ps_roi_pool_oracle(x, rois, (3, 3), 1.0), **tol(dtype))


def test_channel_mapping(backend):
    """Input channel c_in constant = c_in: bin (i, j) of output channel c reads exactly
    channel c*oh*ow + i*ow + j (a mean of a constant is the constant)."""
    oh, ow, co = 2, 3, 4
    x = np.broadcast_to(np.arange(co * oh * ow, dtype=np.float64)[None, :, None, None],
                        (1, co * oh * ow, 8, 9)).copy()
    rois = np.array([[0, 1.0, 1.0, 7.0, 6.0], [0, 2.5, 0.5, 5.5, 4.0]])
    want = np.arange(co * oh * ow, dtype=np.float64).reshape(co, oh, ow)
    for y in (run(backend, F.ps_roi_align_forward, x, rois, (oh, ow), 1.0, 2),
              run(backend, F.ps_roi_pool_forward, x, rois, (oh, ow), 1.0)):
        np.testing.assert_allclose(y, np.broadcast_to(want, y.shape), rtol=1e-13)


def test_ps_roi_align_known_value(backend):
    """One bin, one sample at the box centre: x[1.5 - 0.5, 2.5 - 0.5] = x[1, 2] exactly."""
    x = np.arange(1 * 1 * 4 * 5, dtype=np.float64).reshape(1, 1, 4, 5)
    y = run(backend, F.ps_roi_align_forward, x, np.array([[0, 2.0, 1.0, 3.0, 2.0]]), 1, 1.0, 1)
    assert y[0, 0, 0, 0] == x[0, 0, 1, 2]


def test_ps_roi_pool_never_reads_the_last_row_and_column(backend):
    """torchvision's forward clips the bin ends to H-1 / W-1: a box over the whole map pools
    rows 0..H-2 and columns 0..W-2, and a box on the last row alone is empty (0)."""
    x = _rand((1, 1, 5, 6), 0)
    rois = np.array([[0, 0.0, 0.0, 6.0, 5.0], [0, 0.0, 4.0, 6.0, 5.0]])
    y = run(backend, F.ps_roi_pool_forward, x, rois, 1, 1.0)
    np.testing.assert_allclose(y[0, 0, 0, 0], x[0, 0, :4, :5].mean(), rtol=1e-13)
    assert y[1, 0, 0, 0] == 0
    gx = run(backend, F.ps_roi_pool_backward, np.ones_like(y), rois, x.shape, 1, 1.0)
    assert not gx[0, 0, 4].any() and not gx[0, 0, :, 5].any()
    np.testing.assert_allclose(gx[0, 0, :4, :5], 1 / 20, rtol=1e-13)


def test_ps_roi_align_empty_grid_is_zero(backend):
    """x1 == x2 (adaptive grid of 0 columns) and an inverted box: no samples, 0 (torchvision's
    0/0), and no gradient; a fixed grid still samples the degenerate box."""
    x = _rand((1, 4, 6, 6), 1)
    rois = np.array([[0, 2.0, 1.0, 2.0, 5.0], [0, 5.0, 5.0, 1.0, 1.0]])
    y = run(backend, F.ps_roi_align_forward, x, rois, 2, 1.0, -1)
    assert not y.any()
    gx = run(backend, F.ps_roi_align_backward, np.ones_like(y), rois, x.shape, 2, 1.0, -1)
    assert not gx.any()
    y2 = run(backend, F.ps_roi_align_forward, x, rois, 2, 1.0, 2)
    np.testing.assert_allclose(y2, ps_roi_align_oracle(x, rois, (2, 2), 1.0, 2), rtol=1e-12,
                               atol=1e-12)
    assert y2[0].any()


# ---------------------------------------------------------------------- backward vs oracle
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("output_size", [(2, 2), (3, 2)])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_ps_roi_align_backward_matches_oracle(backend, dtype, scale, output_size,
                                              sampling_ratio):
    shape = make_x(dtype, 2, output_size).shape
    rois = make_rois(dtype, scale)
    g = _rand((len(rois), 2) + output_size, 5, dtype)
    gx = run(backend, F.ps_roi_align_backward, g, rois, shape, output_size, scale,
             sampling_ratio)
    want = ps_roi_align_backward_oracle(g, rois, shape, output_size, scale, sampling_ratio)
    assert gx.dtype == dtype and gx.shape == shape
    np.testing.assert_allclose(gx, want, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 0.5, 1 / 16])
@pytest.mark.parametrize("output_size", [(2, 2), (3, 2)])
def test_ps_roi_pool_backward_matches_oracle(backend, dtype, scale, output_size):
    shape = make_x(dtype, 2, output_size).shape
    rois = make_rois(dtype, scale)
    g = _rand((len(rois), 2) + output_size, 6, dtype)
    gx = run(backend, F.ps_roi_pool_backward, g, rois, shape, output_size, scale)
    want = ps_roi_pool_backward_oracle(g, rois, shape, output_size, scale)
    assert gx.dtype == dtype and gx.shape == shape
    np.testing.assert_allclose(gx, want, **tol(dtype))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("sampling_ratio", [-1, 1, 2])
def test_ps_roi_align_backward_is_the_adjoint(backend, scale, sampling_ratio):
    """<ps_roi_align(x), g> == <x, ps_roi_align_backward(g)> (float64)."""
    x = make_x(np.float64, 3, (3, 2), seed=7)
    extra = random_rois(np.float64, 10, seed=8)
    extra[:, 1:] /= scale                       # feature-map boxes -> image pixels
    rois = np.concatenate([make_rois(np.float64, scale), extra])
    y = run(backend, F.ps_roi_align_forward, x, rois, (3, 2), scale, sampling_ratio)
    g = _rand(y.shape, 9)
    gx = run(backend, F.ps_roi_align_backward, g, rois, x.shape, (3, 2), scale, sampling_ratio)
    np.testing.assert_allclose(np.vdot(y, g), np.vdot(x, gx), rtol=1e-12, atol=1e-12)
    assert np.abs(gx).sum() > 0


@pytest.mark.parametrize("scale", SCALES)
def test_ps_roi_pool_backward_is_the_adjoint(backend, scale):
    x = make_x(np.float64, 3, (3, 2), seed=10)
    rois = make_rois(np.float64, scale)
    y = run(backend, F.ps_roi_pool_forward, x, rois, (3, 2), scale)
    g = _rand(y.shape, 11)
    gx = run(backend, F.ps_roi_pool_backward, g, rois, x.shape, (3, 2), scale)
    np.testing.assert_allclose(np.vdot(y, g), np.vdot(x, gx), rtol=1e-12, atol=1e-12)
    assert np.abs(gx).sum() > 0


@pytest.mark.parametrize("sampling_ratio", [1, -1])
def test_ps_roi_align_numerical_gradient(backend, sampling_ratio):
    """Central differences in float64, RoI edges away from pixel and bin boundaries."""
    x = _rand((2, 8, 7, 8), 3)
    rois = np.array([[0, 0.3, 0.6, 5.2, 4.9], [1, 1.7, 0.4, 6.6, 5.3], [0, -0.6, 2.3, 3.4, 6.1]])

    def fwd(xx):
        return run(backend, F.ps_roi_align_forward, xx, rois, (2, 2), 1.0, sampling_ratio)

    def bwd(gy, xx):
        return (run(backend, F.ps_roi_align_backward, gy, rois, xx.shape, (2, 2), 1.0,
                    sampling_ratio),)

    check_backward(fwd, bwd, [x], rtol=1e-7, atol=1e-9)


def test_ps_roi_pool_numerical_gradient(backend):
    x = _rand((2, 8, 7, 8), 4)
    rois = np.array([[0, 0.3, 0.6, 5.2, 4.9], [1, 1.7, 0.4, 7.6, 6.3], [0, -0.6, 2.3, 3.4, 6.1]])

    def fwd(xx):
        return run(backend, F.ps_roi_pool_forward, xx, rois, (2, 2), 1.0)

    def bwd(gy, xx):
        return (run(backend, F.ps_roi_pool_backward, gy, rois, xx.shape, (2, 2), 1.0),)

    check_backward(fwd, bwd, [x], rtol=1e-7, atol=1e-9)


def test_deterministic_backward_equals_the_default(backend):
    """convkit.set_deterministic(True) (cuda: the gather kernel instead of atomics) gives the
    same gradient as the default path and the oracle, repeatably."""
    x_shape = (2, 8, 9, 11)
    rois = np.concatenate([make_rois(np.float64, 0.5), random_rois(np.float64, 12, seed=15)])
    g = _rand((len(rois), 2, 2, 2), 16)
    g[3, 1, 0, 1] = np.inf
    want = ps_roi_align_backward_oracle(g, rois, x_shape, (2, 2), 0.5, -1)
    default = run(backend, F.ps_roi_align_backward, g, rois, x_shape, 2, 0.5, -1)
    convkit.set_deterministic(True)
    try:
        det = [run(backend, F.ps_roi_align_backward, g, rois, x_shape, 2, 0.5, sr)
               for sr in (-1, -1, 2)]
        pool = run(backend, F.ps_roi_pool_backward, g, rois, x_shape, 2, 0.5)
    finally:
        convkit.set_deterministic(False)
    np.testing.assert_array_equal(det[0], det[1])
    np.testing.assert_allclose(det[0], want, rtol=1e-12, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(default, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(det[2], ps_roi_align_backward_oracle(g, rois, x_shape, (2, 2),
                                                                    0.5, 2),
                               rtol=1e-12, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(pool, ps_roi_pool_backward_oracle(g, rois, x_shape, (2, 2), 0.5),
                               rtol=1e-12, atol=1e-12, equal_nan=True)


def test_dense_grids_match_the_oracle_and_a_huge_one_stays_cheap(backend):
    """sampling_ratio 9 (81 samples a bin: cpu sums those row by row) against the oracle, with
    NaN/inf in the data and the grad, an inverted RoI included; then sampling_ratio 100000
    (10^10 samples a bin) finishes and agrees with the numpy reference."""
    x = make_x(np.float64, 2, (2, 2), H=8, W=8, seed=30)
    x[0, 1, 2, 5] = np.nan
    x[0, 6, 5, 2] = np.inf
    rois = np.array([[0, 0.5, 0.5, 7.5, 7.5], [0, 6.0, 6.5, 1.0, 2.0], [1, -3, 1, 12, 6],
                     [0, 2.2, 1.3, 6.1, 5.7]])
    g = _rand((4, 2, 2, 2), 31)
    g[3, 0, 1, 0] = np.inf
    y = run(backend, F.ps_roi_align_forward, x, rois, 2, 1.0, 9)
    np.testing.assert_allclose(y, ps_roi_align_oracle(x, rois, (2, 2), 1.0, 9), rtol=1e-12,
                               atol=1e-12, equal_nan=True)
    assert np.isnan(y[0]).any() and np.isfinite(y[1:3]).all()
    gx = run(backend, F.ps_roi_align_backward, g, rois, x.shape, 2, 1.0, 9)
    np.testing.assert_allclose(gx, ps_roi_align_backward_oracle(g, rois, x.shape, (2, 2), 1.0,
                                                                9),
                               rtol=1e-12, atol=1e-12, equal_nan=True)
    if backend == "cuda":
        pytest.skip("the GPU kernels visit every sample pair of a bin (as roi_align's do)")
    xs = np.nan_to_num(x[:, :, :6, :7], posinf=1.0)
    r = np.array([[0, 0.5, 0.5, 6.5, 5.5], [1, 1.2, 0.0, 3.3, 4.4]])
    gs = _rand((2, 2, 2, 2), 32)
    for fn, args in ((F.ps_roi_align_forward, (xs, r, 2, 1.0, 100000)),
                     (F.ps_roi_align_backward, (gs, r, xs.shape, 2, 1.0, 100000))):
        got = run(backend, fn, *args)
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, run("numpy", fn, *args), rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------- non-finite inputs
def test_nan_and_inf_in_data_propagate_as_in_the_kernel(backend):
    """A NaN/inf reaches exactly the bins whose samples (zero-weight corners included) or
    cells read it, as the loop oracle says."""
    x = make_x(np.float64, 2, (3, 3), H=8, W=8, seed=12)
    x[0, 4, 3, 3] = np.nan                       # channel of bin (1, 1), output channel 0
    x[0, 13, 4, 4] = np.inf                      # bin (1, 1), output channel 1
    x[0, 9 + 8, 6, 6] = -np.inf                  # bin (2, 2), output channel 1
    rois = np.array([[0, 0.5, 0.5, 7.5, 7.5], [0, 0.2, 0.2, 2.9, 2.9], [0, 2.0, 2.0, 5.0, 5.0]])
    for sr in (-1, 2):
        y = run(backend, F.ps_roi_align_forward, x, rois, 3, 1.0, sr)
        want = ps_roi_align_oracle(x, rois, (3, 3), 1.0, sr)
        np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12, equal_nan=True)
        assert not np.isfinite(y[0]).all() and np.isfinite(y[1]).all()
    y = run(backend, F.ps_roi_pool_forward, x, rois, 3, 1.0)
    want = ps_roi_pool_oracle(x, rois, (3, 3), 1.0)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert np.isnan(y[0, 0, 1, 1]) and np.isfinite(y[1]).all()


def test_nan_and_inf_in_grad_reach_only_their_bins(backend):
    x_shape = (1, 8, 8, 8)
    rois = np.array([[0, 0.5, 0.5, 6.5, 6.5], [0, 1.25, 2.0, 4.0, 6.0]])
    g = _rand((2, 2, 2, 2), 13)
    g[0, 1, 1, 0] = np.nan
    g[1, 0, 0, 1] = np.inf
    for sr in (-1, 2):
        gx = run(backend, F.ps_roi_align_backward, g, rois, x_shape, 2, 1.0, sr)
        want = ps_roi_align_backward_oracle(g, rois, x_shape, (2, 2), 1.0, sr)
        np.testing.assert_allclose(gx, want, rtol=1e-12, atol=1e-12, equal_nan=True)
        assert np.isnan(gx[0, 6]).any() and np.isfinite(gx[0, 0]).all()
    gx = run(backend, F.ps_roi_pool_backward, g, rois, x_shape, 2, 1.0)
    want = ps_roi_pool_backward_oracle(g, rois, x_shape, (2, 2), 1.0)
    np.testing.assert_allclose(gx, want, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_roi_gives_zeros_and_zero_grad(backend, bad):
    x = make_x(np.float64, 2, (2, 2))
    rois = make_rois(np.float64, 1.0)[:4].copy()
    rois[2, 3] = bad
    g = np.zeros((4, 2, 2, 2))
    g[2] = 1.0                                  # gradient only into the bad RoI
    for fwd, bwd, extra in ((F.ps_roi_align_forward, F.ps_roi_align_backward, (-1,)),
                            (F.ps_roi_pool_forward, F.ps_roi_pool_backward, ())):
        y = run(backend, fwd, x, rois, 2, 1.0, *extra)
        assert not y[2].any() and y[[0, 1, 3]].any()
        assert not run(backend, bwd, g, rois, x.shape, 2, 1.0, *extra).any()


def test_huge_finite_coordinates_are_safe(backend):
    x = make_x(np.float32, 2, (2, 2))
    rois = np.array([[0, 1.0, 1.0, 5.0, 6.0],
                     [1, -1e30, -1e30, 1e30, 1e30],
                     [0, 1e30, 1e30, 2e30, 2e30],
                     [1, -1e30, 2.0, 5.0, 1e30],
                     [0, 3.0, 2.0, 7.0, 8.0]], np.float32)
    keep = [0, 4]
    for sr in (-1, 2):
        y = run(backend, F.ps_roi_align_forward, x, rois, 2, 0.5, sr)
        assert np.isfinite(y).all() and np.abs(y[1:4]).max() <= 1e-6
        np.testing.assert_allclose(y[keep], ps_roi_align_oracle(x, rois[keep], (2, 2), 0.5, sr),
                                   **tol(np.float32))
        gx = run(backend, F.ps_roi_align_backward, np.ones_like(y), rois, x.shape, 2, 0.5, sr)
        assert np.isfinite(gx).all()
    y = run(backend, F.ps_roi_pool_forward, x, rois, 2, 0.5)
    np.testing.assert_allclose(y, ps_roi_pool_oracle(x, rois, (2, 2), 0.5), **tol(np.float32))
    gx = run(backend, F.ps_roi_pool_backward, np.ones_like(y), rois, x.shape, 2, 0.5)
    np.testing.assert_allclose(gx, ps_roi_pool_backward_oracle(np.ones_like(y), rois, x.shape,
                                                               (2, 2), 0.5), **tol(np.float32))


# ---------------------------------------------------------------- shapes, forms, errors
def test_empty_rois_and_empty_maps(backend):
    x = make_x(np.float32, 3, (2, 2))
    rois = np.zeros((0, 5), np.float32)
    g = np.zeros((0, 3, 2, 2), np.float32)
    for fwd, bwd, extra in ((F.ps_roi_align_forward, F.ps_roi_align_backward, (-1,)),
                            (F.ps_roi_pool_forward, F.ps_roi_pool_backward, ())):
        y = run(backend, fwd, x, rois, 2, 1.0, *extra)
        assert y.shape == (0, 3, 2, 2) and y.dtype == np.float32
        gx = run(backend, bwd, g, rois, x.shape, 2, 1.0, *extra)
        assert gx.shape == x.shape and gx.dtype == np.float32 and not gx.any()
        # N = 0 images, no RoIs; C = 0 channels
        x0 = np.zeros((0, 12, 5, 5), np.float32)
        assert run(backend, fwd, x0, rois, 2, 1.0, *extra).shape == (0, 3, 2, 2)
        assert run(backend, bwd, g, rois, x0.shape, 2, 1.0, *extra).shape == x0.shape
        r1 = np.array([[0, 1, 1, 3, 3]], np.float32)
        y = run(backend, fwd, np.zeros((1, 0, 5, 5), np.float32), r1, 2, 1.0, *extra)
        assert y.shape == (1, 0, 2, 2)


def test_list_of_boxes_and_k4_equal_k5(backend):
    x = make_x(np.float64, 2, (2, 2))
    boxes = [np.array([[1.0, 1.0, 5.0, 6.0], [0.0, 2.0, 9.5, 7.0]]),
             np.array([[2.5, 0.5, 8.0, 8.0]])]
    rois = np.array([[0, 1.0, 1.0, 5.0, 6.0], [0, 0.0, 2.0, 9.5, 7.0], [1, 2.5, 0.5, 8.0, 8.0]])
    g = _rand((3, 2, 2, 2), 14)
    for fwd, bwd, extra in ((F.ps_roi_align_forward, F.ps_roi_align_backward, (2,)),
                            (F.ps_roi_pool_forward, F.ps_roi_pool_backward, ())):
        np.testing.assert_array_equal(run(backend, fwd, x, boxes, 2, 1.0, *extra),
                                      run(backend, fwd, x, rois, 2, 1.0, *extra))
        np.testing.assert_array_equal(run(backend, bwd, g, boxes, x.shape, 2, 1.0, *extra),
                                      run(backend, bwd, g, rois, x.shape, 2, 1.0, *extra))
        np.testing.assert_array_equal(run(backend, fwd, x[:1], rois[:2, 1:], 2, 1.0, *extra),
                                      run(backend, fwd, x[:1], rois[:2], 2, 1.0, *extra))


def test_non_contiguous_input(backend):
    x = make_x(np.float64, 2, (2, 2))
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)   # same values
    rois = make_rois(np.float64, 1.0)
    for fwd, extra in ((F.ps_roi_align_forward, (-1,)), (F.ps_roi_pool_forward, ())):
        np.testing.assert_array_equal(run(backend, fwd, xt, rois, 2, 1.0, *extra),
                                      run(backend, fwd, x, rois, 2, 1.0, *extra))


@pytest.mark.parametrize("op", ["align", "pool"])
def test_errors(backend, op):
    fwd, bwd = ((F.ps_roi_align_forward, F.ps_roi_align_backward) if op == "align"
                else (F.ps_roi_pool_forward, F.ps_roi_pool_backward))
    name = f"ps_roi_{op}"
    x = make_x(np.float32, 2, (2, 2))               # C = 8
    rois = make_rois(np.float32, 1.0)[:5].copy()
    g = np.zeros((5, 2, 2, 2), np.float32)
    with pytest.raises(ValueError, match=rf"{name}_forward: x has C=8 channels.*output_size "
                                         rf"3x1 = 3"):
        run(backend, fwd, x, rois, (3, 1), 1.0)
    with pytest.raises(ValueError, match=rf"{name}_backward: input_shape has C=10 channels"
                                         rf".*output_size 2x2"):
        run(backend, bwd, g, rois, (2, 10, 9, 11), 2, 1.0)
    with pytest.raises(ValueError, match=rf"{name}_backward: grad_y"):
        run(backend, bwd, g[:, :1], rois, x.shape, 2, 1.0)
    with pytest.raises(ValueError, match=rf"{name}_forward: output_size"):
        run(backend, fwd, x, rois, 0, 1.0)
    with pytest.raises(ValueError, match=rf"{name}_forward: spatial_scale"):
        run(backend, fwd, x, rois, 2, -1.0)
    with pytest.raises(TypeError):
        run(backend, fwd, x.astype(np.int32), rois, 2, 1.0)
    with pytest.raises(TypeError):
        run(backend, fwd, x, rois.astype(np.float64), 2, 1.0)
    with pytest.raises(ValueError, match=rf"{name}_forward: x"):
        run(backend, fwd, x[0], rois, 2, 1.0)
    with pytest.raises(ValueError, match=rf"{name}_forward: rois"):
        run(backend, fwd, x, rois[:, :3], 2, 1.0)
    bad = rois.copy()
    bad[3, 0] = 2.0
    with pytest.raises(ValueError, match=r"rois\[3, 0\]"):
        run(backend, fwd, x, bad, 2, 1.0)
    with pytest.raises(ValueError, match=r"rois\[3, 0\]"):
        run(backend, bwd, g, bad, x.shape, 2, 1.0)
    bad[3, 0] = 0.5
    with pytest.raises(ValueError, match=r"rois\[3, 0\]"):
        run(backend, fwd, x, bad, 2, 1.0)


def test_sampling_ratio_over_the_workspace_limit(backend):
    x = make_x(np.float64, 1, (2, 2))
    rois = make_rois(np.float64, 1.0)
    with pytest.raises(MemoryError, match="ps_roi_align_forward: sampling_ratio"):
        run(backend, F.ps_roi_align_forward, x, rois, 2, 1.0, 2**40)
    with pytest.raises(MemoryError, match="ps_roi_align_backward: sampling_ratio"):
        run(backend, F.ps_roi_align_backward, np.zeros((9, 1, 2, 2)), rois, x.shape, 2, 1.0,
            2**40)


# ---------------------------------------------------------------------------- cpu threads
def _big_case(dtype):
    x = make_x(dtype, 5, (3, 3), N=3, H=23, W=29, seed=20)
    rois = random_rois(dtype, 150, N=3, H=23, W=29, seed=21) * [1, 1.2, 1.2, 1.2, 1.2]
    rois[:, 0] = np.random.default_rng(22).integers(0, 3, 150)
    return x, rois.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cpu_results_are_the_same_bits_for_any_thread_count(dtype):
    x, rois = _big_case(dtype)
    g = _rand((len(rois), 5, 3, 3), 23, dtype)
    results = []
    for n in (1, 2, 3):
        convkit.set_num_threads(n)
        results.append([run("cpu", F.ps_roi_align_forward, x, rois, 3, 1.0, -1),
                        run("cpu", F.ps_roi_align_backward, g, rois, x.shape, 3, 1.0, -1),
                        run("cpu", F.ps_roi_align_forward, x, rois, 3, 1.0, 2),
                        run("cpu", F.ps_roi_align_backward, g, rois, x.shape, 3, 1.0, 2),
                        run("cpu", F.ps_roi_pool_forward, x, rois, 3, 1.0),
                        run("cpu", F.ps_roi_pool_backward, g, rois, x.shape, 3, 1.0)])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)
    # and the big case agrees with the numpy reference
    for got, want in zip(results[0], [
            run("numpy", F.ps_roi_align_forward, x, rois, 3, 1.0, -1),
            run("numpy", F.ps_roi_align_backward, g, rois, x.shape, 3, 1.0, -1)]):
        np.testing.assert_allclose(got, want, **tol(dtype))


# -------------------------------------------------------------------------- emulated cuda
@pytest.mark.slow
@pytest.mark.skipif(not (os.environ.get("CXX") or __import__("shutil").which("g++")),
                    reason="no C++ compiler for the host emulation of the CUDA kernels")
@pytest.mark.skipif(convkit.backend_status("cuda")[0],
                    reason="a real GPU runs this file's cuda parametrisations directly")
def test_this_file_on_emulated_cuda():
    """This file's cuda parametrisations on the host emulation of the kernels (a subprocess:
    the stand-in cupy must be in place before conftest asks which backends load)."""
    here = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [here] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "-p", "cuda_emulation", "-k", "cuda", os.path.abspath(__file__)],
                       capture_output=True, text=True, cwd=os.path.dirname(here), timeout=900,
                       env=env)
    tail = p.stdout[-4000:] + p.stderr[-2000:]
    assert p.returncode == 0, tail
    assert " passed" in p.stdout.strip().splitlines()[-1], tail
