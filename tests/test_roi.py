"""RoI pool / RoI align on every backend against plain scalar-loop oracles written here from
torchvision's documented kernel rules, plus adjoint identities and numerical gradients.

The oracles compute box geometry with NumPy scalars of the input dtype, in the kernels' order
of operations, so float32 bins and sample points fall where torchvision's do.
"""
import math

import numpy as np
import pytest

from convkit import functional as F
from helpers import check_backward, run, tol

FLT_MAX = float(np.finfo(np.float32).max)
DTYPES = [np.float32, np.float64]


# --------------------------------------------------------------------------------- oracles
def c_round(v):
    """C round(): halves away from zero, as a Python int (exact for any finite float)."""
    t = math.trunc(v)
    return t + (int(math.copysign(1, v)) if abs(v - t) >= 0.5 else 0)


def roi_pool_oracle(x, rois, output_size, scale):
    dt = x.dtype.type
    N, C, H, W = x.shape
    oh, ow = output_size
    K = rois.shape[0]
    y = np.zeros((K, C, oh, ow), x.dtype)
    am = np.full((K, C, oh, ow), -1, np.int64)
    for k in range(K):
        b = int(rois[k, 0])
        if not np.isfinite(rois[k, 1:]).all():
            continue
        sw, sh, ew, eh = (c_round(float(dt(rois[k, i]) * dt(scale))) for i in (1, 2, 3, 4))
        roi_w, roi_h = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        bin_h, bin_w = dt(roi_h) / dt(oh), dt(roi_w) / dt(ow)
        for c in range(C):
            for ph in range(oh):
                hs = min(max(math.floor(dt(ph) * bin_h) + sh, 0), H)
                he = min(max(math.ceil(dt(ph + 1) * bin_h) + sh, 0), H)
                for pw in range(ow):
                    ws = min(max(math.floor(dt(pw) * bin_w) + sw, 0), W)
                    we = min(max(math.ceil(dt(pw + 1) * bin_w) + sw, 0), W)
                    empty = he <= hs or we <= ws
                    best, idx = (0.0 if empty else -FLT_MAX), -1
                    for h in range(hs, he):
                        for w in range(ws, we):
                            if x[b, c, h, w] > best:
                                best, idx = x[b, c, h, w], h * W + w
                    y[k, c, ph, pw], am[k, c, ph, pw] = best, idx
    return y, am


def bilinear(plane, y, x):
    """torchvision's bilinear_interpolate on one (H, W) plane, y/x NumPy scalars."""
    dt = type(y)
    H, W = plane.shape
    if y < -1 or y > H or x < -1 or x > W:
        return dt(0)
    y, x = max(y, dt(0)), max(x, dt(0))
    yl, xl = int(y), int(x)
    if yl >= H - 1:
        yh = yl = H - 1
        y = dt(yl)
    else:
        yh = yl + 1
    if xl >= W - 1:
        xh = xl = W - 1
        x = dt(xl)
    else:
        xh = xl + 1
    ly, lx = y - dt(yl), x - dt(xl)
    hy, hx = dt(1) - ly, dt(1) - lx
    with np.errstate(invalid="ignore"):        # 0 * inf = NaN, as in the kernel
        return (hy * hx * plane[yl, xl] + hy * lx * plane[yl, xh] + ly * hx * plane[yh, xl]
                + ly * lx * plane[yh, xh])


def roi_align_oracle(x, rois, output_size, scale, sampling_ratio, aligned):
    dt = x.dtype.type
    N, C, H, W = x.shape
    oh, ow = output_size
    K = rois.shape[0]
    y = np.zeros((K, C, oh, ow), x.dtype)
    off = dt(0.5) if aligned else dt(0)
    for k in range(K):
        b = int(rois[k, 0])
        if not np.isfinite(rois[k, 1:]).all():
            continue
        sw, sh = dt(rois[k, 1]) * dt(scale) - off, dt(rois[k, 2]) * dt(scale) - off
        ew, eh = dt(rois[k, 3]) * dt(scale) - off, dt(rois[k, 4]) * dt(scale) - off
        rw, rh = ew - sw, eh - sh
        if not aligned:
            rw, rh = max(rw, dt(1)), max(rh, dt(1))
        bh, bw = rh / dt(oh), rw / dt(ow)
        gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rh / dt(oh)))
        gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rw / dt(ow)))
        count = max(gh * gw, 1)
        for c in range(C):
            for ph in range(oh):
                for pw in range(ow):
                    acc = dt(0)
                    for iy in range(gh):
                        yy = sh + dt(ph) * bh + dt(iy + 0.5) * bh / dt(gh)
                        for ix in range(gw):
                            xx = sw + dt(pw) * bw + dt(ix + 0.5) * bw / dt(gw)
                            acc = acc + bilinear(x[b, c], yy, xx)
                    y[k, c, ph, pw] = acc / dt(count)
    return y


def bilinear_taps(y, x, H, W):
    """The four (row, col, weight) taps of one sample, or [] when it is out of range
    (torchvision's bilinear_interpolate_gradient)."""
    dt = type(y)
    if y < -1 or y > H or x < -1 or x > W:
        return []
    y, x = max(y, dt(0)), max(x, dt(0))
    yl, xl = int(y), int(x)
    if yl >= H - 1:
        yh = yl = H - 1
        y = dt(yl)
    else:
        yh = yl + 1
    if xl >= W - 1:
        xh = xl = W - 1
        x = dt(xl)
    else:
        xh = xl + 1
    ly, lx = y - dt(yl), x - dt(xl)
    hy, hx = dt(1) - ly, dt(1) - lx
    return [(yl, xl, hy * hx), (yl, xh, hy * lx), (yh, xl, ly * hx), (yh, xh, ly * lx)]


def roi_align_backward_oracle(g, rois, input_shape, output_size, scale, sampling_ratio,
                              aligned):
    dt = g.dtype.type
    N, C, H, W = input_shape
    oh, ow = output_size
    gx = np.zeros(input_shape, g.dtype)
    off = dt(0.5) if aligned else dt(0)
    for k in range(rois.shape[0]):
        b = int(rois[k, 0])
        if not np.isfinite(rois[k, 1:]).all():
            continue
        sw, sh = dt(rois[k, 1]) * dt(scale) - off, dt(rois[k, 2]) * dt(scale) - off
        rw = dt(rois[k, 3]) * dt(scale) - off - sw
        rh = dt(rois[k, 4]) * dt(scale) - off - sh
        if not aligned:
            rw, rh = max(rw, dt(1)), max(rh, dt(1))
        bh, bw = rh / dt(oh), rw / dt(ow)
        gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rh / dt(oh)))
        gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rw / dt(ow)))
        count = max(gh * gw, 1)
        for c in range(C):
            for ph in range(oh):
                for pw in range(ow):
                    for iy in range(gh):
                        yy = sh + dt(ph) * bh + dt(iy + 0.5) * bh / dt(gh)
                        for ix in range(gw):
                            xx = sw + dt(pw) * bw + dt(ix + 0.5) * bw / dt(gw)
                            for r, q, w in bilinear_taps(yy, xx, H, W):
                                with np.errstate(invalid="ignore"):
                                    gx[b, c, r, q] += g[k, c, ph, pw] * w / dt(count)
    return gx


# ------------------------------------------------------------------------------------ data
def make_x(dtype, shape=(2, 3, 9, 11), seed=0):
    """Distinct values (a permutation), so max/argmax have no ties."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) / n - 0.5).astype(dtype)


def make_rois(dtype, scale, N=2, H=9, W=11):
    """Boxes in image pixels (feature map * 1/scale): inside, partly outside, degenerate
    (x1 == x2), inverted (x2 < x1), tiny, and covering the whole map."""
    s = 1.0 / scale
    rows = [
        [0, 1.2, 0.7, 6.3, 5.9],
        [1, 0.0, 0.0, 10.0, 8.0],
        [0, -3.5, -2.2, 4.1, 3.3],          # partly outside, top-left
        [1, 7.6, 5.1, 14.2, 12.7],          # partly outside, bottom-right
        [0, 3.0, 2.0, 3.0, 6.0],            # x1 == x2
        [1, 6.0, 5.0, 2.5, 1.5],            # x2 < x1 and y2 < y1
        [0, 4.4, 4.4, 4.6, 4.7],            # smaller than one cell
        [1, -2.0, -2.0, 13.0, 11.0],        # covers the map
        [0, 20.0, 2.0, 25.0, 6.0],          # entirely outside
    ]
    r = np.array(rows, np.float64)
    r[:, 1:] *= s
    return r.astype(dtype)


SCALES = [1.0, 1 / 16, 0.5]


# --------------------------------------------------------------------------- roi pool fwd
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("output_size", [(3, 2), (2, 2), (4, 5)])
def test_roi_pool_forward_matches_oracle(backend, dtype, scale, output_size):
    x = make_x(dtype)
    rois = make_rois(dtype, scale)
    y, am = run(backend, F.roi_pool_forward, x, rois, output_size, scale)
    y0, am0 = roi_pool_oracle(x, rois, output_size, scale)
    assert y.dtype == dtype and am.dtype == np.int64
    assert y.shape == (len(rois), 3) + output_size
    np.testing.assert_array_equal(am, am0)
    np.testing.assert_allclose(y, y0, **tol(dtype))


def test_roi_pool_ties_take_first_in_row_major_order(backend):
    x = np.zeros((1, 2, 4, 4))
    x[0, 0, 1, 2] = x[0, 0, 2, 1] = 5.0        # (1, 2) comes first in row-major order
    rois = np.array([[0, 0, 0, 3, 3]], np.float64)
    y, am = run(backend, F.roi_pool_forward, x, rois, 1, 1.0)
    assert am[0, 0, 0, 0] == 1 * 4 + 2 and y[0, 0, 0, 0] == 5.0
    assert am[0, 1, 0, 0] == 0 and y[0, 1, 0, 0] == 0.0       # all equal: the first cell


def test_roi_pool_nan_is_skipped_like_torchvision(backend):
    """roi_pool keeps a value only if it is strictly greater, so NaN never wins (the oracle
    implements that comparison literally)."""
    x = make_x(np.float64, (1, 2, 6, 6))
    x[0, 0, 2, 3] = np.nan
    x[0, 1, :3, :3] = np.nan                      # a whole bin of NaN: -FLT_MAX, argmax -1
    rois = np.array([[0, 0, 0, 5, 5]], np.float64)
    y, am = run(backend, F.roi_pool_forward, x, rois, 2, 1.0)
    y0, am0 = roi_pool_oracle(x, rois, (2, 2), 1.0)
    np.testing.assert_array_equal(am, am0)
    np.testing.assert_array_equal(y, y0)
    assert am[0, 1, 0, 0] == -1 and y[0, 1, 0, 0] == -FLT_MAX


# -------------------------------------------------------------------------- roi align fwd
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_forward_matches_oracle(backend, dtype, scale, sampling_ratio, aligned):
    x = make_x(dtype)
    rois = make_rois(dtype, scale)
    y = run(backend, F.roi_align_forward, x, rois, (3, 2), scale, sampling_ratio, aligned)
    y0 = roi_align_oracle(x, rois, (3, 2), scale, sampling_ratio, aligned)
    assert y.dtype == dtype and y.shape == (len(rois), 3, 3, 2)
    np.testing.assert_allclose(y, y0, **tol(dtype))


def test_roi_align_degenerate_aligned_box_has_no_samples(backend):
    """aligned=True, adaptive grid, x1 == x2: grid = ceil(0) = 0 samples -> output 0, even
    though the box lies on non-zero data."""
    x = np.ones((1, 1, 5, 5))
    rois = np.array([[0, 2.0, 1.0, 2.0, 4.0]])
    y = run(backend, F.roi_align_forward, x, rois, 2, 1.0, -1, True)
    np.testing.assert_array_equal(y, 0.0)
    # without aligned the RoI is forced to 1 pixel wide and samples the ones
    y = run(backend, F.roi_align_forward, x, rois, 2, 1.0, -1, False)
    np.testing.assert_allclose(y, 1.0, rtol=1e-12)


def test_roi_align_known_values(backend):
    """Hand-computed: x[h, w] = 10*h + w is linear, so every in-range sample away from the
    clamped edges equals 10*y + x at the sample point, and a bin average is its centre."""
    H, W = 6, 7
    x = (10.0 * np.arange(H)[:, None] + np.arange(W)[None, :])[None, None]
    rois = np.array([[0, 1.0, 1.0, 3.0, 5.0]])
    y = run(backend, F.roi_align_forward, x, rois, (2, 1), 1.0, 2, False)
    # bins y in [1,3) and [3,5): centres 2 and 4; x in [1,3): centre 2
    np.testing.assert_allclose(y[0, 0, :, 0], [22.0, 42.0], rtol=1e-12)
    y = run(backend, F.roi_align_forward, x, rois, (2, 1), 1.0, 2, True)
    # aligned shifts by half a pixel: centres 1.5 and 3.5, x centre 1.5
    np.testing.assert_allclose(y[0, 0, :, 0], [16.5, 36.5], rtol=1e-12)


def test_roi_align_samples_on_the_range_edges(backend):
    """A sample exactly at y == H (or x == -1) is still in range and clamps to the edge
    pixel; one just beyond (y = H + 0.1) contributes 0.  One sample per bin (ratio 1)."""
    H, W = 4, 5
    x = (10.0 * np.arange(H)[:, None] + np.arange(W)[None, :] + 1)[None, None]
    rois = np.array([[0, 1.0, H - 1.0, 3.0, H + 1.0],     # y sample at exactly H
                     [0, -2.0, 0.0, 0.0, 2.0],            # x sample at exactly -1
                     [0, 1.0, H - 0.8, 3.0, H + 1.0],     # y sample at H + 0.1
                     [0, -2.2, 0.0, 0.0, 2.0]])           # x sample at -1.1
    y = run(backend, F.roi_align_forward, x, rois, 1, 1.0, 1, False)[:, 0, 0, 0]
    np.testing.assert_allclose(y, [x[0, 0, H - 1, 2], x[0, 0, 1, 0], 0.0, 0.0], rtol=1e-12)
    np.testing.assert_allclose(y, roi_align_oracle(x, rois, (1, 1), 1.0, 1, False)[:, 0, 0, 0],
                               rtol=1e-12)
    gx = run(backend, F.roi_align_backward, np.ones((4, 1, 1, 1)), rois, x.shape, 1, 1.0, 1,
             False)
    want = np.zeros_like(x)
    want[0, 0, H - 1, 2] = want[0, 0, 1, 0] = 1.0
    np.testing.assert_allclose(gx, want, rtol=1e-12, atol=1e-15)


def test_roi_align_nan_in_data_propagates_only_where_sampled(backend):
    x = make_x(np.float64, (1, 2, 8, 8))
    x[0, 0, 5, 5] = np.nan
    x[0, 1, 1, 6] = np.inf
    rois = np.array([[0, 0.5, 0.5, 6.5, 6.5], [0, 0.2, 0.2, 2.9, 2.9]])
    y = run(backend, F.roi_align_forward, x, rois, 3, 1.0, 2, False)
    y0 = roi_align_oracle(x, rois, (3, 3), 1.0, 2, False)
    np.testing.assert_allclose(y, y0, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert np.isnan(y[0, 0]).any() and np.isfinite(y[0, 0]).any()
    assert np.isfinite(y[1]).all()


# ------------------------------------------------------------------ shapes and rois forms
def test_empty_rois_forward_and_backward(backend):
    x = make_x(np.float32)
    rois = np.zeros((0, 5), np.float32)
    y, am = run(backend, F.roi_pool_forward, x, rois, (2, 3), 1.0)
    assert y.shape == (0, 3, 2, 3) and am.shape == (0, 3, 2, 3)
    assert y.dtype == np.float32 and am.dtype == np.int64
    ya = run(backend, F.roi_align_forward, x, rois, (2, 3), 1.0, -1, True)
    assert ya.shape == (0, 3, 2, 3) and ya.dtype == np.float32
    g = np.zeros((0, 3, 2, 3), np.float32)
    gx = run(backend, F.roi_pool_backward, g, am, x.shape, rois=rois)
    assert gx.shape == x.shape and gx.dtype == np.float32 and not gx.any()
    gx = run(backend, F.roi_align_backward, g, rois, x.shape, (2, 3), 1.0, -1, True)
    assert gx.shape == x.shape and gx.dtype == np.float32 and not gx.any()


def test_list_of_boxes_equals_k5(backend):
    x = make_x(np.float64)
    boxes = [np.array([[1.0, 1.0, 5.0, 6.0], [0.0, 2.0, 9.5, 7.0]]),
             np.array([[2.5, 0.5, 8.0, 8.0]])]
    rois = np.array([[0, 1.0, 1.0, 5.0, 6.0], [0, 0.0, 2.0, 9.5, 7.0], [1, 2.5, 0.5, 8.0, 8.0]])
    for fn, args in ((F.roi_align_forward, ((2, 2), 1.0, 2, True)),
                     (F.roi_pool_forward, ((2, 2), 1.0))):
        a = run(backend, fn, x, boxes, *args)
        b = run(backend, fn, x, rois, *args)
        for u, v in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            np.testing.assert_array_equal(u, v)
    g = np.random.default_rng(1).standard_normal((3, 3, 2, 2))
    a = run(backend, F.roi_align_backward, g, boxes, x.shape, 2, 1.0, 2, True)
    b = run(backend, F.roi_align_backward, g, rois, x.shape, 2, 1.0, 2, True)
    np.testing.assert_array_equal(a, b)


def test_k4_rois_with_one_image(backend):
    x = make_x(np.float32, (1, 3, 9, 11))
    boxes = np.array([[1.0, 1.0, 5.0, 6.0], [0.0, 2.0, 9.5, 7.0]], np.float32)
    rois = np.concatenate([np.zeros((2, 1), np.float32), boxes], axis=1)
    a = run(backend, F.roi_align_forward, x, boxes, 2, 0.5, -1, False)
    np.testing.assert_array_equal(a, run(backend, F.roi_align_forward, x, rois, 2, 0.5, -1,
                                         False))
    np.testing.assert_allclose(a, roi_align_oracle(x, rois, (2, 2), 0.5, -1, False),
                               **tol(np.float32))
    ya, ama = run(backend, F.roi_pool_forward, x, boxes, 2, 0.5)
    yb, amb = run(backend, F.roi_pool_forward, x, rois, 2, 0.5)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(ama, amb)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_roi_gives_zeros_and_zero_grad(backend, bad):
    x = make_x(np.float64)
    rois = make_rois(np.float64, 1.0)[:4].copy()
    rois[2, 3] = bad
    y, am = run(backend, F.roi_pool_forward, x, rois, 2, 1.0)
    assert not y[2].any() and (am[2] == -1).all()
    y0, am0 = roi_pool_oracle(x, rois, (2, 2), 1.0)
    np.testing.assert_array_equal(am, am0)
    np.testing.assert_allclose(y, y0, rtol=1e-12)
    g = np.zeros_like(y)
    g[2] = 1.0                                  # gradient only into the bad RoI
    gx = run(backend, F.roi_pool_backward, g, am, x.shape, rois=rois)
    assert not gx.any()
    ya = run(backend, F.roi_align_forward, x, rois, 2, 1.0, -1, False)
    assert not ya[2].any()
    np.testing.assert_allclose(ya, roi_align_oracle(x, rois, (2, 2), 1.0, -1, False),
                               rtol=1e-12, atol=1e-12)
    gx = run(backend, F.roi_align_backward, g, rois, x.shape, 2, 1.0, -1, False)
    assert not gx.any()


@pytest.mark.parametrize("value", [1.5, -1.0, 2.0, np.nan])
def test_bad_batch_index_names_the_row(backend, value):
    x = make_x(np.float32)
    rois = make_rois(np.float32, 1.0)[:5].copy()
    rois[3, 0] = value
    with pytest.raises(ValueError, match=r"rois\[3, 0\]"):
        run(backend, F.roi_pool_forward, x, rois, 2, 1.0)
    with pytest.raises(ValueError, match=r"rois\[3, 0\]"):
        run(backend, F.roi_align_forward, x, rois, 2, 1.0, -1, False)
    g = np.zeros((5, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"rois\[3, 0\]"):
        run(backend, F.roi_align_backward, g, rois, x.shape, 2, 1.0, -1, False)


def test_huge_finite_coordinates_are_safe(backend):
    """1e30 corners: no out-of-bounds index, no overflowing cast, finite outputs; the normal
    RoIs alongside are unaffected and roi_pool still matches the (exact-integer) oracle."""
    x = make_x(np.float32)
    rois = np.array([[0, 1.0, 1.0, 5.0, 6.0],
                     [1, -1e30, -1e30, 1e30, 1e30],
                     [0, 1e30, 1e30, 2e30, 2e30],
                     [1, -1e30, 2.0, 5.0, 1e30],
                     [0, 3.0, 2.0, 7.0, 8.0]], np.float32)
    y, am = run(backend, F.roi_pool_forward, x, rois, 2, 0.5)
    y0, am0 = roi_pool_oracle(x, rois, (2, 2), 0.5)
    np.testing.assert_array_equal(am, am0)
    np.testing.assert_allclose(y, y0, **tol(np.float32))
    gx = run(backend, F.roi_pool_backward, np.ones_like(y), am, x.shape, rois=rois)
    assert np.isfinite(gx).all()
    for aligned in (False, True):
        for sr in (-1, 2):
            ya = run(backend, F.roi_align_forward, x, rois, 2, 0.5, sr, aligned)
            assert np.isfinite(ya).all()
            keep = [0, 4]
            np.testing.assert_allclose(
                ya[keep], roi_align_oracle(x, rois[keep], (2, 2), 0.5, sr, aligned),
                **tol(np.float32))
            # ~1e30-wide bins hold ~1e30 samples, almost all off the map: averages vanish
            assert np.abs(ya[1:4]).max() <= 1e-6
            gx = run(backend, F.roi_align_backward, np.ones_like(ya), rois, x.shape, 2, 0.5, sr,
                     aligned)
            assert np.isfinite(gx).all() and gx.shape == x.shape


# ------------------------------------------------------------------------------ backward
def _rand(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_backward_is_the_adjoint(backend, scale, sampling_ratio, aligned):
    """<roi_align(x), g> == <x, roi_align_backward(g)> for random x and g (float64)."""
    x = _rand((2, 3, 9, 11), 0)
    rois = make_rois(np.float64, scale)
    y = run(backend, F.roi_align_forward, x, rois, (3, 2), scale, sampling_ratio, aligned)
    g = _rand(y.shape, 1)
    gx = run(backend, F.roi_align_backward, g, rois, x.shape, (3, 2), scale, sampling_ratio,
             aligned)
    np.testing.assert_allclose(np.vdot(y, g), np.vdot(x, gx), rtol=1e-12, atol=1e-12)
    assert np.abs(gx).sum() > 0


@pytest.mark.parametrize("scale", SCALES)
def test_roi_pool_backward_is_the_adjoint(backend, scale):
    """With argmax fixed, roi_pool is linear in x: y = gather(x, argmax), so
    <y, g> == <x, roi_pool_backward(g, argmax)>."""
    x = make_x(np.float64)
    rois = make_rois(np.float64, scale)
    y, am = run(backend, F.roi_pool_forward, x, rois, (3, 2), scale)
    g = _rand(y.shape, 2)
    gx = run(backend, F.roi_pool_backward, g, am, x.shape, rois=rois)
    np.testing.assert_allclose(np.vdot(y, g), np.vdot(x, gx), rtol=1e-12, atol=1e-12)
    # and the explicit scatter: every grad lands at its argmax in its RoI's image
    want = np.zeros_like(x)
    for k, c, i, j in zip(*np.nonzero(am >= 0)):
        want[int(rois[k, 0]), c].flat[am[k, c, i, j]] += g[k, c, i, j]
    np.testing.assert_allclose(gx, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1.0, 0.5])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("aligned", [False, True])
def test_roi_align_backward_matches_oracle(backend, dtype, scale, sampling_ratio, aligned):
    x = make_x(dtype)
    rois = make_rois(dtype, scale)
    g = _rand((len(rois), 3, 2, 3), 5).astype(dtype)
    gx = run(backend, F.roi_align_backward, g, rois, x.shape, (2, 3), scale, sampling_ratio,
             aligned)
    want = roi_align_backward_oracle(g, rois, x.shape, (2, 3), scale, sampling_ratio, aligned)
    assert gx.dtype == dtype
    np.testing.assert_allclose(gx, want, **tol(dtype))


def test_roi_align_backward_nan_grad_reaches_only_the_sampled_pixels(backend):
    """A NaN in one bin's grad lands on the taps of that bin's samples (zero-weight taps
    included, as the kernel multiplies), nowhere else."""
    x = make_x(np.float64, (1, 2, 8, 8))
    rois = np.array([[0, 0.5, 0.5, 6.5, 6.5], [0, 1.25, 2.0, 4.0, 6.0]])
    g = _rand((2, 2, 3, 3), 6)
    g[0, 1, 1, 2] = np.nan
    gx = run(backend, F.roi_align_backward, g, rois, x.shape, 3, 1.0, 2, False)
    want = roi_align_backward_oracle(g, rois, x.shape, (3, 3), 1.0, 2, False)
    np.testing.assert_allclose(gx, want, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert np.isnan(gx[0, 1]).any() and not np.isnan(gx[0, 1]).all()
    assert np.isfinite(gx[0, 0]).all()


def test_roi_align_numerical_gradient(backend):
    """Central differences in float64 with sampling_ratio=1 and RoI edges away from pixel and
    bin boundaries (torchvision's test_backward setting)."""
    x = _rand((2, 2, 7, 8), 3)
    rois = np.array([[0, 0.3, 0.6, 5.2, 4.9], [1, 1.7, 0.4, 6.6, 5.3], [0, -0.6, 2.3, 3.4, 6.1]])

    def fwd(xx):
        return run(backend, F.roi_align_forward, xx, rois, (3, 3), 1.0, 1, False)

    def bwd(gy, xx):
        return (run(backend, F.roi_align_backward, gy, rois, xx.shape, (3, 3), 1.0, 1, False),)

    check_backward(fwd, bwd, [x], rtol=1e-7, atol=1e-9)


def test_roi_pool_backward_needs_rois_when_n_above_1(backend):
    x = make_x(np.float64)
    rois = make_rois(np.float64, 1.0)
    y, am = run(backend, F.roi_pool_forward, x, rois, 2, 1.0)
    with pytest.raises(ValueError, match="rois"):
        run(backend, F.roi_pool_backward, np.ones_like(y), am, x.shape)
    # N = 1: rois may be omitted, and give the same as passing them
    x1 = x[:1].copy()
    r1 = rois[rois[:, 0] == 0]
    y1, am1 = run(backend, F.roi_pool_forward, x1, r1, 2, 1.0)
    g = _rand(y1.shape, 4)
    a = run(backend, F.roi_pool_backward, g, am1, x1.shape)
    b = run(backend, F.roi_pool_backward, g, am1, x1.shape, rois=r1)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.vdot(y1, g), np.vdot(x1, a), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_dtypes_follow_grad(backend, dtype):
    x = make_x(dtype)
    rois = make_rois(dtype, 0.5)
    y, am = run(backend, F.roi_pool_forward, x, rois, 2, 0.5)
    g = np.ones_like(y)
    gx = run(backend, F.roi_pool_backward, g, am, x.shape, rois=rois)
    assert gx.dtype == dtype and gx.shape == x.shape
    # every grad of 1 lands somewhere: the total is the number of non-empty bins
    assert gx.sum() == pytest.approx(float((am >= 0).sum()))
    gx = run(backend, F.roi_align_backward, g, rois, x.shape, 2, 0.5, 2, True)
    assert gx.dtype == dtype and gx.shape == x.shape
    gx64 = run(backend, F.roi_align_backward, g.astype(np.float64), rois.astype(np.float64),
               x.shape, 2, 0.5, 2, True)
    np.testing.assert_allclose(gx, gx64, **tol(dtype))


def test_detector_sized_rois_channels_independent():
    """Detector-sized work (300 RoIs on (2, 256, 50, 68)) on the reference: channels stay
    independent -- the first 4 channels of the batched result equal a run on those 4 channels
    alone -- and the gradients are finite and non-zero.  (Speed is measured in bench/, not here.)"""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 256, 50, 68)).astype(np.float32)
    K = 300
    xy = rng.uniform(-50, 1000, (K, 2))
    wh = rng.uniform(16, 600, (K, 2))
    rois = np.concatenate([rng.integers(0, 2, (K, 1)), xy, xy + wh], 1).astype(np.float32)
    ya = run("numpy", F.roi_align_forward, x, rois, 7, 1 / 16, -1, True)
    ga = run("numpy", F.roi_align_backward, ya, rois, x.shape, 7, 1 / 16, -1, True)
    yp, am = run("numpy", F.roi_pool_forward, x, rois, 7, 1 / 16)
    gp = run("numpy", F.roi_pool_backward, yp, am, x.shape, rois=rois)
    x4 = np.ascontiguousarray(x[:, :4])
    np.testing.assert_array_equal(ya[:, :4], run("numpy", F.roi_align_forward, x4, rois, 7,
                                                 1 / 16, -1, True))
    np.testing.assert_array_equal(yp[:, :4], run("numpy", F.roi_pool_forward, x4, rois, 7,
                                                 1 / 16)[0])
    assert np.isfinite(ga).all() and np.isfinite(gp).all() and np.abs(ga).sum() > 0
